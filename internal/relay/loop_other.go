//go:build !linux

package relay

import (
	"context"
	"net"
	"net/netip"
	"time"
)

// Conn is a relayed connection. Off Linux there is no event loop: each Conn
// runs Relay on its own goroutines.
type Conn struct {
	client, upstream *net.TCPConn
	idle             time.Duration
	done             func(Result)
}

// Start relays in the background and calls done at the end.
func (c *Conn) Start() { go func() { c.done(Relay(c.client, c.upstream, c.idle)) }() }

// Close ends the relay early.
func (c *Conn) Close() error {
	c.client.Close()
	c.upstream.Close()
	return nil
}

// Dial connects to dst for Attach and Start.
func Dial(ctx context.Context, dst netip.AddrPort, mark uint32, timeout time.Duration, dataFollows bool) (*Conn, error) {
	d := net.Dialer{Timeout: timeout, KeepAlive: -1}
	c, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return nil, err
	}
	return &Conn{upstream: c.(*net.TCPConn)}, nil
}

// Attach writes first to the upstream and takes client as the other half.
func (c *Conn) Attach(client *net.TCPConn, first []byte, idle time.Duration, done func(Result)) error {
	if _, err := c.upstream.Write(first); err != nil {
		c.upstream.Close()
		return err
	}
	c.client, c.idle, c.done = client, idle, done
	return nil
}

// UpstreamLocal is the dialled upstream socket's own address.
func (c *Conn) UpstreamLocal() netip.AddrPort {
	return c.upstream.LocalAddr().(*net.TCPAddr).AddrPort()
}

// Abandon closes a dialled upstream that will not be relayed.
func (c *Conn) Abandon() { c.upstream.Close() }

// Adopt makes an established upstream the upstream half of a Conn.
func Adopt(upstream *net.TCPConn) (*Conn, error) { return &Conn{upstream: upstream}, nil }
