package listener

import (
	"net"
	"net/netip"
	"testing"
)

// TestOriginalDstDirect: a client that connects to the listener itself,
// not intercepted, has no NAT entry: both forms answer the socket's local
// address, not redirected (the gateway turns such a client away). The
// redirected case needs iptables and is tested end to end (e2e).
func TestOriginalDstDirect(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		ln, err := net.ListenTCP(network, nil)
		if err != nil {
			t.Logf("%s: %v", network, err)
			continue
		}
		defer ln.Close()
		c, err := net.DialTCP(network, nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		want := AddrPort(s.LocalAddr())
		dst, redirected, err := OriginalDst(s)
		if err != nil || redirected || dst != want {
			t.Errorf("%s: OriginalDst = %v, %v, %v; want %v, not redirected", network, dst, redirected, err, want)
		}
		raw, _ := s.SyscallConn()
		var fdDst netip.AddrPort
		var fdRedirected bool
		var fdErr error
		raw.Control(func(fd uintptr) { fdDst, fdRedirected, fdErr = OriginalDstFD(int(fd)) })
		if fdErr != nil || fdRedirected || fdDst != want {
			t.Errorf("%s: OriginalDstFD = %v, %v, %v; want %v, not redirected", network, fdDst, fdRedirected, fdErr, want)
		}
	}
}
