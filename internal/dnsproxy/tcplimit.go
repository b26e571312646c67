package dnsproxy

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/limit"
)

// DNS over TCP holds a socket (and a goroutine) per connection for as long
// as the client keeps it open, so a client that opens connections and
// sends nothing could hold thousands of descriptors. These bound it.
const (
	// tcpFirstQuery is how long a new connection may take to send its
	// first whole query, and tcpIdle how long it may stay silent between
	// queries; then it is closed (RFC 7766 §6.2.3 lets a server close
	// idle connections; clients reconnect).
	tcpFirstQuery = 2 * time.Second
	tcpIdle       = 2 * time.Second
)

// tcpLimit counts open TCP connections, in all and per client address.
type tcpLimit struct {
	max, perSource int

	mu    sync.Mutex
	total int
	bySrc limit.PerSource
}

func newTCPLimit(max, perSource int) *tcpLimit {
	if max <= 0 {
		max = config.DefaultMaxTCPConns
	}
	if perSource <= 0 {
		perSource = config.DefaultMaxTCPConnsPerSource
	}
	return &tcpLimit{max: max, perSource: perSource}
}

// acquire counts one more connection from src, unless a cap is reached.
func (l *tcpLimit) acquire(src netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= l.max || !l.bySrc.Acquire(src, l.perSource) {
		return false
	}
	l.total++
	return true
}

func (l *tcpLimit) release(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	l.bySrc.Release(src)
}

// open returns the connections open from src, or in all for the zero Addr.
func (l *tcpLimit) open(src netip.Addr) int {
	if src.IsValid() {
		return l.bySrc.Open(src)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// limitListener hands the DNS library only connections within the caps;
// one over a cap is reset as soon as it is accepted and counted as
// overloaded. An admitted connection gives its place back when it is
// closed, which the library does on a read timeout.
type limitListener struct {
	net.Listener
	s *Server
}

func (l limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return c, err
		}
		var src netip.Addr
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			src = ta.AddrPort().Addr().Unmap()
		}
		if l.s.tcpLimit.acquire(src) {
			return &limitedConn{Conn: c, l: l.s.tcpLimit, src: src}, nil
		}
		l.s.overloaded.Add(1)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // a reset: no FIN handshake, no TIME_WAIT kept here
		}
		c.Close()
		l.s.logOverTCP(src)
	}
}

// limitedConn releases its place in the tcpLimit once, when closed.
type limitedConn struct {
	net.Conn
	l    *tcpLimit
	src  netip.Addr
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.src) })
	return err
}

// logOverTCP logs a TCP connection closed over the caps, at most once a
// second: a flood must not become a flood of log lines.
func (s *Server) logOverTCP(src netip.Addr) {
	if s.tcpLog.Allow(time.Now()) {
		s.log.Warn("dns: TCP connection limit reached: closing new connections at once",
			"max_tcp_connections", s.tcpLimit.max, "max_tcp_connections_per_source", s.tcpLimit.perSource,
			"example_src", src.String())
	}
}
