package httpconnect

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/egressd/egressd/internal/fqdn"
)

// FuzzConnectRequest runs ReadHead and Parse on arbitrary bytes and checks
// them against net/http's own request parser: where both accept a head,
// they must agree on the method and on the host the request goes to
// (otherwise egressd would decide on one host while the server behind it
// saw another). Parse must also never accept a target it cannot dial.
func FuzzConnectRequest(f *testing.F) {
	for _, s := range []string{
		"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
		"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n",
		"CONNECT 198.51.100.7:22 HTTP/1.0\r\nProxy-Authorization: Basic eDp5\r\n\r\n",
		"GET http://a.test/x?y HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
		"GET http://a.test:8080 HTTP/1.0\nConnection: keep-alive\n\n",
		"GET http://0x7f.1/ HTTP/1.1\r\n\r\n",
		"POST http://u@a.test/ HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := Limits{RequestLine: 512, Head: 2048}
		head, err := ReadHead(bufio.NewReaderSize(bytes.NewReader(data), lim.Head), lim)
		if err != nil {
			return
		}
		if len(head) > lim.Head || !bytes.HasPrefix(data, head) {
			t.Fatalf("ReadHead(%q) = %q", data, head)
		}
		q, err := Parse(head)
		if err != nil {
			return
		}
		if q.Port == 0 || (q.Name == "") == !q.Addr.IsValid() {
			t.Fatalf("Parse(%q) = %+v: no single target", head, q)
		}
		if q.Name != "" {
			if n, ok := fqdn.Normalize(q.Name); !ok || n != q.Name {
				t.Fatalf("Parse(%q): name %q not normalised", head, q.Name)
			}
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			return
		}
		if req.Method != q.Method {
			t.Fatalf("Parse(%q) method %q, net/http %q", head, q.Method, req.Method)
		}
		host := req.Host
		if !q.Connect {
			host = req.URL.Host
			if !hasPort(host) {
				host += ":80"
			}
		}
		if !strings.EqualFold(host, q.Authority) {
			t.Fatalf("Parse(%q) authority %q, net/http %q", head, q.Authority, host)
		}
	})
}

// FuzzReadHeadCuts checks that ReadHead, whose search for the head's end
// resumes after each read, answers as the search of the whole buffer
// after every read did (readHeadWhole), for any bytes, any limits and
// reads of any sizes (cuts, as FuzzPeek's): a CRLF or a blank line split
// between reads included. At each read it also checks headScan against
// headEndWhole on the bytes so far.
//
//	go test -run=NONE -fuzz=FuzzReadHeadCuts -fuzztime=60s ./internal/httpconnect/
func FuzzReadHeadCuts(f *testing.F) {
	for _, s := range []string{
		"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\nrest",
		"CONNECT a.test:443 HTTP/1.1\nA: b\n\n",
		"CONNECT a.test:443 HTTP/1.1\r\nA: \r\r\n\r\r\n\r\n",
		"\n\n", "\r\n\r\n", "x\n\r", "GET http://a.test/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx HTTP/1.1\r\n\r\n",
	} {
		f.Add([]byte(s), []byte{0}, uint16(64<<8|255))
		f.Add([]byte(s), []byte{1, 0, 2}, uint16(16<<8|32))
	}
	f.Fuzz(func(t *testing.T, data, cuts []byte, limits uint16) {
		lim := Limits{RequestLine: 1 + int(limits>>8), Head: 1 + int(limits&0xff)}
		got, gotErr := ReadHead(bufio.NewReaderSize(&cutReader{b: data, cuts: cuts}, lim.Head), lim)
		want, wantErr := readHeadWhole(bufio.NewReaderSize(&cutReader{b: data, cuts: cuts}, lim.Head), lim)
		if !bytes.Equal(got, want) || gotErr != wantErr {
			t.Fatalf("ReadHead(%q, %+v) in reads %v = %q, %v; whole-buffer search: %q, %v", data, lim, cuts, got, gotErr, want, wantErr)
		}
		s := headScan{first: -1, lf: -1}
		r, p := &cutReader{b: data, cuts: cuts}, make([]byte, len(data))
		for n := 0; n < len(data); {
			k, _ := r.Read(p)
			n += k
			buf := data[:n]
			end, first := s.end(buf), bytes.IndexByte(buf, '\n')
			if want := headEndWhole(buf); end != want || s.first != first {
				t.Fatalf("headScan.end(%q) = %d, first LF %d; whole-buffer search: %d, %d (reads %v)", buf, end, s.first, want, first, cuts)
			}
			if end > 0 {
				break
			}
		}
	})
}

// cutReader serves b in reads of 1+cuts[i] bytes in turn (all of it at
// once when cuts is empty), then io.EOF.
type cutReader struct {
	b, cuts []byte
	i       int
}

func (r *cutReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := len(r.b)
	if len(r.cuts) > 0 {
		n = min(n, 1+int(r.cuts[r.i%len(r.cuts)]))
		r.i++
	}
	n = copy(p, r.b[:n])
	r.b = r.b[n:]
	return n, nil
}

// readHeadWhole is ReadHead as it was before headScan, searching the whole
// buffer after each read: the reference FuzzReadHeadCuts holds ReadHead to.
func readHeadWhole(br *bufio.Reader, lim Limits) ([]byte, error) {
	for {
		buf, _ := br.Peek(br.Buffered())
		if end := headEndWhole(buf); end > 0 {
			if line := bytes.IndexByte(buf, '\n'); line >= lim.RequestLine {
				return nil, ErrRequestLineTooLong
			}
			if end > lim.Head {
				return nil, ErrHeadTooLarge
			}
			return buf[:end], nil
		}
		if bytes.IndexByte(buf, '\n') < 0 && len(buf) >= lim.RequestLine {
			return nil, ErrRequestLineTooLong
		}
		if len(buf) >= lim.Head {
			return nil, ErrHeadTooLarge
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return nil, err
		}
	}
}

// headEndWhole is headEnd as it was: the length of the head in buf, or 0.
func headEndWhole(buf []byte) int {
	for i := 0; i < len(buf); i++ {
		if buf[i] != '\n' {
			continue
		}
		switch {
		case i+1 < len(buf) && buf[i+1] == '\n':
			return i + 2
		case i+2 < len(buf) && buf[i+1] == '\r' && buf[i+2] == '\n':
			return i + 3
		}
	}
	return 0
}
