// Package listener binds egressd's listening sockets and recovers where a
// transparently intercepted connection was going.
//
// Two Linux mechanisms deliver foreign connections to a local socket:
// iptables/nftables REDIRECT rewrites the destination and conntrack keeps the
// original, which SO_ORIGINAL_DST returns; TPROXY leaves the packet alone and
// hands it to a socket with IP_TRANSPARENT, whose local address then is the
// original destination. OriginalDst handles both.
package listener

import (
	"context"
	"net"
	"net/netip"
)

// Options shape a listening socket.
type Options struct {
	// TProxy sets IP_TRANSPARENT (and IPV6_TRANSPARENT) so the socket can
	// accept connections addressed to other hosts (needs CAP_NET_ADMIN).
	TProxy bool
	// DeferAccept sets TCP_DEFER_ACCEPT: the kernel hands a connection
	// over only once the client has sent bytes, or after about a second
	// of silence. For protocols where the client speaks first (TLS, HTTP
	// CONNECT, SOCKS5) that saves each connection a read that would find
	// nothing and a wake-up. Never for a listener that may see
	// server-first protocols (SSH, SMTP): they would wait that second.
	DeferAccept bool
}

// Listen binds a TCP listener at addr.
func Listen(ctx context.Context, addr netip.AddrPort, opt Options) (*net.TCPListener, error) {
	// No TCP keepalive on accepted sockets: the gateway's idle timeout ends
	// dead connections, and keepalive would cost four setsockopt(2) calls
	// per connection.
	lc := net.ListenConfig{Control: control(opt), KeepAlive: -1}
	// Plain TCP, not Go's default Multipath TCP: an MPTCP socket does not
	// answer SO_ORIGINAL_DST, so a REDIRECTed client's destination would
	// be lost, and every accept would go through the MPTCP layer, even for
	// clients that fall back to TCP. A client that offers MPTCP gets plain
	// TCP.
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, Network("tcp", addr), addr.String())
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

// Network is "tcp4" or "tcp6" (for proto "tcp"; "udp4" or "udp6" for
// "udp") as addr's family asks. Never plain "tcp": Go would bind 0.0.0.0
// as [::] with IPV6_V6ONLY off, and a socket meant for IPv4 would answer
// IPv6 too, past a firewall written for IPv4 only.
func Network(proto string, addr netip.AddrPort) string {
	if addr.Addr().Is6() && !addr.Addr().Is4In6() {
		return proto + "6"
	}
	return proto + "4"
}

// AddrPort returns a net.Addr as netip.AddrPort with IPv4-mapped addresses
// unmapped.
func AddrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
