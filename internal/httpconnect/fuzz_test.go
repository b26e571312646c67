package httpconnect

import (
	"bufio"
	"bytes"
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
