package upstream

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Dialer opens egressd's connections to servers.
type Dialer struct {
	Timeout time.Duration
	// Mark is put on every upstream socket (SO_MARK) so that iptables or
	// nftables rules can leave egressd's own traffic alone; 0 sets none.
	Mark uint32
}

// NetDialer is a net.Dialer for egressd's other upstream sockets (DNS
// queries, UDP and the TCP retries of truncated answers): with mark set
// they carry SO_MARK like the proxied connections, so that the
// interception rules that exempt marked traffic exempt them too.
func NetDialer(timeout time.Duration, mark uint32) *net.Dialer {
	return &net.Dialer{Timeout: timeout, Control: markControl(mark), KeepAlive: -1}
}

// Dial connects to addr, an address that was already checked: it is never
// re-resolved here.
func (d *Dialer) Dial(ctx context.Context, addr netip.AddrPort) (*net.TCPConn, error) {
	// KeepAlive off, as on the client side: the idle timeout ends dead
	// connections without four setsockopt(2) calls per dial.
	nd := net.Dialer{Timeout: d.Timeout, Control: markControl(d.Mark), KeepAlive: -1}
	// Not Dialer.DialTCP: given no local address it still binds 0.0.0.0:0,
	// an extra syscall that also takes the ephemeral port for every
	// destination at once, which runs a busy gateway out of ports.
	c, err := nd.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return c.(*net.TCPConn), nil
}
