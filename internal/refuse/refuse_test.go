package refuse

import (
	"bytes"
	"crypto/tls"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

func TestTLSAlertBytes(t *testing.T) {
	for _, tc := range []struct {
		version uint16
		want    []byte
	}{
		{0x0301, []byte{21, 3, 1, 0, 2, 2, 49}},
		{0x0303, []byte{21, 3, 3, 0, 2, 2, 49}},
		{0x0304, []byte{21, 3, 3, 0, 2, 2, 49}}, // TLS 1.3 records say 1.2
		{0, []byte{21, 3, 3, 0, 2, 2, 49}},
	} {
		c, s := testnet.Pair(t)
		go TLSAlert(s, tc.version, AlertAccessDenied)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(c)
		if !bytes.Equal(got, tc.want) {
			t.Errorf("TLSAlert(%#x) sent % x, want % x", tc.version, got, tc.want)
		}
	}
}

// TestTLSAlertSeenByCryptoTLS checks a real TLS client reports the alert.
func TestTLSAlertSeenByCryptoTLS(t *testing.T) {
	c, s := testnet.Pair(t)
	go func() {
		s.Read(make([]byte, 4096)) // the hello
		TLSAlert(s, 0x0301, AlertAccessDenied)
	}()
	tc := tls.Client(c, &tls.Config{ServerName: "x.test", InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	err := tc.Handshake()
	if err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Errorf("Handshake() = %v, want access denied", err)
	}
}

func TestHTTPForbidden(t *testing.T) {
	for _, tc := range []struct{ rule, body string }{
		{"ads", "egressd: denied by rule \"ads\"\n"},
		{"", "egressd: denied by the default policy\n"},
	} {
		c, s := testnet.Pair(t)
		go HTTPForbidden(s, tc.rule)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(c)
		head, body, _ := strings.Cut(string(got), "\r\n\r\n")
		if !strings.HasPrefix(head, "HTTP/1.1 403 Forbidden\r\n") || body != tc.body {
			t.Errorf("HTTPForbidden(%q) = %q", tc.rule, got)
		}
	}
}

func TestReset(t *testing.T) {
	c, s := testnet.Pair(t)
	Reset(s)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	if err == nil || !strings.Contains(err.Error(), "reset") {
		t.Errorf("read after Reset = %v, want connection reset", err)
	}
}
