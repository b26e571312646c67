package peek

import (
	"bytes"
	"testing"
)

func TestLaterRequest(t *testing.T) {
	const rtsp = "OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n"
	for _, tc := range []struct {
		name, in string
		want     bool
	}{
		{"rtsp", rtsp + "DESCRIBE rtsp://cam.test/s RTSP/1.0\r\nCSeq: 2\r\nAccept: application/sdp\r\n\r\n", false},
		{"rtsp long method", rtsp + "GET_PARAMETER rtsp://cam.test/s RTSP/1.0\r\n\r\n", false},
		{"sip", "INVITE sip:bob@b.test SIP/2.0\r\nVia: SIP/2.0/TCP c.test\r\nContent-Length: 30\r\n\r\nv=0\r\no=- 1 1 IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n", false},
		{"sip response from the client", "SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\n\r\n", false},
		{"rtsp response from the client", "RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n", false},
		{"a header naming a request", rtsp + "X-Note: GET / HTTP/1.1\r\n\r\n", false},
		{"hosts header", rtsp + "Hosts: other.test\r\n", false},
		{"host behind a space", rtsp + " Host: other.test\r\n", true},
		{"host behind VT", rtsp + "OPTIONS * RTSP/1.0\r\nCSeq: 2\r\n\vHost: other.test\r\n", true},
		{"host behind a file separator", rtsp + "\x1cHost: other.test\r\n", true},
		{"http version alone", rtsp + "GET / HTTP/\r\n", false},
		{"http/0.9 origin", rtsp + "GET /x\r\n", false},
		{"binary", "\x24\x00\x01\x00" + "\xff\x00GET\n\x01", false},

		{"http request", rtsp + "GET /x HTTP/1.1\r\n", true},
		{"http request, any method", rtsp + "FOO * http/1.0\n", true},
		{"http request, bare LF, tabs", rtsp + "GET\t/x\tHTTP/1.1\n", true},
		{"http request behind control bytes", rtsp + "\x00\x01 GET /x HTTP/1.1\r\n", true},
		{"http request behind a colon", rtsp + ":GET /x HTTP/1.1\r\n", true},
		{"host line", rtsp + "Host: other.test\r\n", true},
		{"host line, any case", rtsp + "hOsT:other.test\r\n", true},
		{"host line, space before colon", rtsp + "host \t: other.test\r\n", true},
		{"http method, other version", rtsp + "GET rtsp://x/ FOO/1.1\r\n", true},
		{"origin-form, other version", rtsp + "DESCRIBE /x RTSP/1.0\r\n", true},
		{"http target, other version", rtsp + "DESCRIBE HTTPS://other.test/ RTSP/1.0\r\n", true},
		{"http/0.9 absolute", rtsp + "GET http://other.test/\r\n", true},
		{"http/0.9 absolute, a word behind", rtsp + "GET http://other.test/ x\r\n", true},
		{"more words", rtsp + "GET /a b HTTP/1.1\r\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l LaterRequest
			if got := l.Feed([]byte(tc.in)); got != tc.want {
				t.Errorf("Feed(%q) = %v, want %v", tc.in, got, tc.want)
			}
			// A byte at a time, as segments may cut it anywhere.
			var one LaterRequest
			got := false
			for i := range len(tc.in) {
				got = one.Feed([]byte{tc.in[i]}) || got
			}
			if got != tc.want {
				t.Errorf("a byte at a time: %v, want %v", got, tc.want)
			}
		})
	}
}

// laterReference is LaterRequest's rule written over whole lines, as
// requestLine reads a first line.
func laterReference(b []byte) bool {
	lines := bytes.Split(b, []byte("\n"))
	for k, line := range lines {
		if name, _, ok := bytes.Cut(trimLeftJunk(line), []byte(":")); ok &&
			bytes.EqualFold(trimRightSep(name), []byte("host")) {
			return true // a Host line is one at its colon
		}
		if k == len(lines)-1 {
			break // a request line is one at its end
		}
		i := 0
		for i < len(line) && isJunk(line[i]) {
			i++
		}
		j := i
		for j < len(line) && isTchar(line[j]) {
			j++
		}
		if j == i || j < len(line) && !isSep(line[j]) {
			continue
		}
		method := line[i:j]
		words := bytes.FieldsFunc(line[j:], func(r rune) bool { return r < 0x80 && isSep(byte(r)) })
		if len(words) == 0 {
			continue
		}
		target := words[0]
		httpTarget := len(target) >= 7 && (bytes.EqualFold(target[:7], []byte("http://")) ||
			len(target) >= 8 && bytes.EqualFold(target[:8], []byte("https://")))
		if httpTarget {
			return true
		}
		if len(words) == 1 {
			continue
		}
		v := words[len(words)-1]
		if isVersion(v) {
			return true
		}
		if isOtherVersion(v) && (target[0] == '/' || httpTarget || httpMethods[string(method)]) {
			return true
		}
	}
	return false
}

// trimLeftJunk is b without the bytes (isJunk) it starts with.
func trimLeftJunk(b []byte) []byte {
	for len(b) > 0 && isJunk(b[0]) {
		b = b[1:]
	}
	return b
}

// trimRightSep is b without the separators (isSep) it ends in.
func trimRightSep(b []byte) []byte {
	for len(b) > 0 && isSep(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

func FuzzLaterRequest(f *testing.F) {
	for _, s := range []string{
		"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
		"INVITE sip:bob@b.test SIP/2.0\r\nVia: SIP/2.0/TCP c.test\r\n\r\n",
		"\x00GET http://a/\n", "host :x\n", "DESCRIBE /x RTSP/1.0\n",
	} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, b []byte, cut uint8) {
		var l LaterRequest
		k := int(cut) % (len(b) + 1)
		got := l.Feed(b[:k])
		got = l.Feed(b[k:]) || got
		if want := laterReference(b); got != want {
			t.Fatalf("Feed(%q) in two parts at %d: %v, the whole-line reading says %v", b, k, got, want)
		}
	})
}
