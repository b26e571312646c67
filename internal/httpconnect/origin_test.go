package httpconnect

import (
	"errors"
	"net/netip"
	"testing"
)

func TestParseOrigin(t *testing.T) {
	tests := []struct {
		head      string
		name      string
		addr      string
		port      uint16
		authority string
		err       error
	}{
		{"GET / HTTP/1.1\r\nHost: Example.COM\r\n\r\n", "example.com", "", 80, "Example.COM:80", nil},
		{"PROPFIND /d HTTP/1.1\r\nHost: dav.test:8080\r\n\r\n", "dav.test", "", 8080, "dav.test:8080", nil},
		{"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n", "a.test", "", 80, "a.test:80", nil},
		{"GET /x HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n", "", "2001:db8::1", 80, "[2001:db8::1]:80", nil},
		{"GET /x HTTP/1.1\r\nHost: 192.0.2.1\r\n\r\n", "", "192.0.2.1", 80, "192.0.2.1:80", nil},
		{"GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n", "a.test", "", 80, "a.test:80", nil},
		{"GET / HTTP/1.0\r\n\r\n", "", "", 0, "", nil},
		// Two claims: the URI for the server, Host for egressd.
		{"GET http://denied.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n", "", "", 0, "", ErrTarget},
		{"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", "", "", 0, "", ErrMalformed},
		{"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", "", "", 0, "", ErrMalformed},
		{"GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n", "", "", 0, "", ErrTarget},
		{"GET / HTTP/1.1\r\nHost: ::1\r\n\r\n", "", "", 0, "", ErrTarget},
		{"GET https://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", "", "", 0, "", ErrMalformed},
	}
	for _, tt := range tests {
		q, err := ParseOrigin([]byte(tt.head), 80)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("ParseOrigin(%q) error = %v, want %v", tt.head, err, tt.err)
			}
			continue
		}
		var addr netip.Addr
		if tt.addr != "" {
			addr = netip.MustParseAddr(tt.addr)
		}
		if err != nil || q.Name != tt.name || q.Addr != addr || q.Port != tt.port || q.Authority != tt.authority {
			t.Errorf("ParseOrigin(%q) = %q %v %d %q, %v; want %q %v %d %q", tt.head, q.Name, q.Addr, q.Port, q.Authority, err,
				tt.name, addr, tt.port, tt.authority)
		}
	}
}
