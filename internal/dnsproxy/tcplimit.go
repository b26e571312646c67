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
	// tcpWrite is how long one write of an answer to a client may take.
	// The write blocks only once the client has stopped reading and both
	// socket buffers are full: a client that pipelines queries with large
	// answers and never reads would otherwise hold the serving goroutine,
	// its TCP place and Shutdown for ever. An answer is at most 64 KiB,
	// which a client that reads at all takes in far less.
	tcpWrite = 5 * time.Second
)

// tcpLimit counts open TCP connections, in all and per client address,
// and keeps them so that Shutdown can close those still open when its
// grace period ends: the DNS library's ShutdownContext only sets read
// deadlines, then waits for every connection's goroutine, which may be
// writing an answer (up to tcpWrite for each of the queries the client
// pipelined).
type tcpLimit struct {
	max, perSource int

	mu     sync.Mutex
	total  int
	bySrc  limit.PerSource
	conns  map[*limitedConn]struct{}
	closed bool // closeAll was called: admit nothing more
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

// admit counts c, a connection from src, and returns it wrapped to give
// its place back when closed; it reports false if a cap is reached or
// closeAll was called.
func (l *tcpLimit) admit(c net.Conn, src netip.Addr) (*limitedConn, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.total >= l.max || !l.bySrc.Acquire(src, l.perSource) {
		return nil, false
	}
	l.total++
	lc := &limitedConn{Conn: c, l: l, src: src}
	if l.conns == nil {
		l.conns = make(map[*limitedConn]struct{})
	}
	l.conns[lc] = struct{}{}
	return lc, true
}

func (l *tcpLimit) release(c *limitedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	l.bySrc.Release(c.src)
	delete(l.conns, c)
}

// closeAll closes every connection open and admits no more.
func (l *tcpLimit) closeAll() {
	l.mu.Lock()
	l.closed = true
	open := make([]*limitedConn, 0, len(l.conns))
	for c := range l.conns {
		open = append(open, c)
	}
	l.mu.Unlock()
	for _, c := range open {
		c.Close() // outside the lock: Close releases
	}
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
		if lc, ok := l.s.tcpLimit.admit(c, src); ok {
			return lc, nil
		}
		l.s.overloaded.Add(1)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // a reset: no FIN handshake, no TIME_WAIT kept here
		}
		c.Close()
		l.s.logOverTCP(src)
	}
}

// limitedConn releases its place in the tcpLimit once, when closed, and
// gives each write tcpWrite to complete. Every write to a client's TCP
// connection goes through it, the DNS library's own (FORMERR, NOTIMP)
// included.
type limitedConn struct {
	net.Conn
	l    *tcpLimit
	src  netip.Addr
	once sync.Once
}

// Write writes b within tcpWrite. A write that fails closes the
// connection: part of a message may have gone out, so what followed would
// be misframed, and the serving goroutine's next read then ends it.
func (c *limitedConn) Write(b []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(tcpWrite)); err != nil {
		c.Close()
		return 0, err
	}
	n, err := c.Conn.Write(b)
	if err != nil {
		c.Close()
	}
	return n, err
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c) })
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
