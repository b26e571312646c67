package httpconnect

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name, head string
		want       Request
		err        error
	}{
		{"connect name", "CONNECT Example.COM.:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
			Request{Method: "CONNECT", Connect: true, Authority: "Example.COM.:443", Name: "example.com", Port: 443, Proto: "HTTP/1.1"}, nil},
		{"connect ipv4", "CONNECT 198.51.100.7:22 HTTP/1.1\r\n\r\n",
			Request{Method: "CONNECT", Connect: true, Authority: "198.51.100.7:22", Addr: netip.MustParseAddr("198.51.100.7"), Port: 22, Proto: "HTTP/1.1"}, nil},
		{"connect ipv6", "CONNECT [2001:db8::1]:443 HTTP/1.1\n\n",
			Request{Method: "CONNECT", Connect: true, Authority: "[2001:db8::1]:443", Addr: netip.MustParseAddr("2001:db8::1"), Port: 443, Proto: "HTTP/1.1"}, nil},
		{"connect auth", "CONNECT a.test:443 HTTP/1.1\r\nProxy-Authorization: Basic Y2k6cw==\r\n\r\n",
			Request{Method: "CONNECT", Connect: true, Authority: "a.test:443", Name: "a.test", Port: 443, Proto: "HTTP/1.1", ProxyAuthorization: "Basic Y2k6cw=="}, nil},
		{"absolute", "GET http://a.test/x?y HTTP/1.1\r\nHost: a.test\r\n\r\n",
			Request{Method: "GET", Authority: "a.test:80", Name: "a.test", Port: 80, Proto: "HTTP/1.1"}, nil},
		{"absolute port query", "POST HTTP://a.test:8080?q HTTP/1.1\r\nConnection: close\r\n\r\n",
			Request{Method: "POST", Authority: "a.test:8080", Name: "a.test", Port: 8080, Proto: "HTTP/1.1", Close: true}, nil},
		{"absolute ipv6 no port", "GET http://[2001:db8::1]/ HTTP/1.0\r\n\r\n",
			Request{Method: "GET", Authority: "[2001:db8::1]:80", Addr: netip.MustParseAddr("2001:db8::1"), Port: 80, Proto: "HTTP/1.0", Close: true}, nil},
		{"1.0 keep-alive", "GET http://a.test/ HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
			Request{Method: "GET", Authority: "a.test:80", Name: "a.test", Port: 80, Proto: "HTTP/1.0"}, nil},
		{"origin form", "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", Request{}, ErrNotProxyRequest},
		{"https uri", "GET https://a.test/ HTTP/1.1\r\n\r\n", Request{}, ErrScheme},
		{"connect no port", "CONNECT a.test HTTP/1.1\r\n\r\n", Request{}, ErrTarget},
		{"connect port 0", "CONNECT a.test:0 HTTP/1.1\r\n\r\n", Request{}, ErrTarget},
		{"connect port big", "CONNECT a.test:65536 HTTP/1.1\r\n\r\n", Request{}, ErrTarget},
		{"connect bare ipv6", "CONNECT 2001:db8::1:443 HTTP/1.1\r\n\r\n", Request{}, ErrTarget},
		{"octal ip", "CONNECT 0177.0.0.1:443 HTTP/1.1\r\n\r\n", Request{}, ErrTarget},
		{"short ip", "CONNECT 127.1:443 HTTP/1.1\r\n\r\n", Request{}, ErrTarget},
		{"hex ip", "GET http://0x7f000001/ HTTP/1.1\r\n\r\n", Request{}, ErrTarget},
		{"userinfo", "GET http://good.test@evil.test/ HTTP/1.1\r\n\r\n", Request{}, ErrTarget},
		{"non-ASCII host", "GET http://BÜCHER.test/ HTTP/1.1\r\nHost: BÜCHER.test\r\n\r\n", Request{}, ErrTarget},
		{"zone", "CONNECT [fe80::1%25eth0]:443 HTTP/1.1\r\n\r\n", Request{}, ErrTarget},
		{"http2", "PRI * HTTP/2.0\r\n\r\n", Request{}, ErrVersion},
		{"no version", "CONNECT a.test:443\r\n\r\n", Request{}, ErrMalformed},
		{"obs-fold", "CONNECT a.test:443 HTTP/1.1\r\nX: a\r\n b\r\n\r\n", Request{}, ErrMalformed},
		{"space before colon", "CONNECT a.test:443 HTTP/1.1\r\nHost : a\r\n\r\n", Request{}, ErrMalformed},
		{"two hosts", "GET http://a.test/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Request{}, ErrMalformed},
		{"ctl in value", "CONNECT a.test:443 HTTP/1.1\r\nX: a\x00b\r\n\r\n", Request{}, ErrMalformed},
		{"two credentials", "CONNECT a.test:443 HTTP/1.1\r\nProxy-Authorization: a\r\nProxy-Authorization: b\r\n\r\n", Request{}, ErrMalformed},
		{"garbage", "\x16\x03\x01\x00\x05hello\r\n\r\n", Request{}, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.head))
			if !errors.Is(err, tt.err) {
				t.Fatalf("Parse(%q) error = %v, want %v", tt.head, err, tt.err)
			}
			if err == nil && got != tt.want {
				t.Errorf("Parse(%q) =\n%+v\nwant\n%+v", tt.head, got, tt.want)
			}
		})
	}
}

func TestReadHead(t *testing.T) {
	lim := Limits{RequestLine: 64, Head: 256}
	tests := []struct {
		name, in string
		want     string
		err      error
	}{
		{"crlf", "CONNECT a:1 HTTP/1.1\r\nA: b\r\n\r\nrest", "CONNECT a:1 HTTP/1.1\r\nA: b\r\n\r\n", nil},
		{"lf", "CONNECT a:1 HTTP/1.1\nA: b\n\nrest", "CONNECT a:1 HTTP/1.1\nA: b\n\n", nil},
		{"long line", "GET http://a/" + strings.Repeat("x", 100) + " HTTP/1.1\r\n\r\n", "", ErrRequestLineTooLong},
		{"long line unfinished", strings.Repeat("x", 100), "", ErrRequestLineTooLong},
		{"large head", "CONNECT a:1 HTTP/1.1\r\n" + strings.Repeat("X: y\r\n", 60) + "\r\n", "", ErrHeadTooLarge},
		{"large head unfinished", "CONNECT a:1 HTTP/1.1\r\n" + strings.Repeat("X: y\r\n", 60), "", ErrHeadTooLarge},
		{"eof", "CONNECT a:1 HTTP/1.1\r\n", "", io.EOF},
	}
	for _, tt := range tests {
		br := bufio.NewReaderSize(strings.NewReader(tt.in), lim.Head)
		got, err := ReadHead(br, lim)
		if !errors.Is(err, tt.err) || string(got) != tt.want {
			t.Errorf("%s: ReadHead = %q, %v; want %q, %v", tt.name, got, err, tt.want, tt.err)
		}
		if err == nil && br.Buffered() < len(got) {
			t.Errorf("%s: ReadHead consumed the head", tt.name)
		}
	}
}

func TestStatusFor(t *testing.T) {
	for err, want := range map[error]int{
		ErrRequestLineTooLong: 414, ErrHeadTooLarge: 431, ErrVersion: 505, ErrMalformed: 400, ErrTarget: 400,
	} {
		if got := StatusFor(err); got != want {
			t.Errorf("StatusFor(%v) = %d, want %d", err, got, want)
		}
	}
}

func TestRemoveHopByHop(t *testing.T) {
	h := http.Header{
		"Connection":          {"close, X-Secret"},
		"X-Secret":            {"1"},
		"Proxy-Authorization": {"Basic eA=="},
		"Proxy-Connection":    {"keep-alive"},
		"Keep-Alive":          {"timeout=5"},
		"Te":                  {"trailers"},
		"Upgrade":             {"websocket"},
		"Accept":              {"*/*"},
	}
	RemoveHopByHop(h)
	if len(h) != 1 || h.Get("Accept") != "*/*" {
		t.Errorf("RemoveHopByHop left %v, want only Accept", h)
	}
}

func TestBasicCredentials(t *testing.T) {
	u, p, ok := BasicCredentials("Basic Y2ktcnVubmVyOnMzYzpyZXQ=") // ci-runner:s3c:ret
	if !ok || u != "ci-runner" || p != "s3c:ret" {
		t.Errorf("BasicCredentials = %q %q %v", u, p, ok)
	}
	for _, v := range []string{"", "Bearer x", "Basic !!!", "Basic eA=="} {
		if _, _, ok := BasicCredentials(v); ok {
			t.Errorf("BasicCredentials(%q) ok", v)
		}
	}
}

func TestResponse(t *testing.T) {
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(ProxyAuthRequired()))), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 407 || resp.Header.Get("Proxy-Authenticate") != `Basic realm="egressd"` || !resp.Close {
		t.Errorf("407 response = %+v", resp)
	}
}
