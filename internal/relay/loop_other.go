//go:build !linux

package relay

import (
	"net"
	"time"
)

// Conn is a relayed connection. Off Linux there is no event loop: each Conn
// runs Relay on its own goroutines.
type Conn struct {
	client, upstream *net.TCPConn
	idle             time.Duration
	done             func(Result)
}

// New prepares client and upstream for Start.
func New(client, upstream *net.TCPConn, idle time.Duration, done func(Result)) (*Conn, error) {
	return &Conn{client: client, upstream: upstream, idle: idle, done: done}, nil
}

// Start relays in the background and calls done at the end.
func (c *Conn) Start() { go func() { c.done(Relay(c.client, c.upstream, c.idle)) }() }

// Close ends the relay early.
func (c *Conn) Close() error {
	c.client.Close()
	c.upstream.Close()
	return nil
}
