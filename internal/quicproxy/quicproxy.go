// Package quicproxy is the UDP side of a transparent listener: it decides
// QUIC flows by the server name in their Initial packets, with the same
// policy as TCP, and relays the allowed ones datagram by datagram.
//
// It exists because a TCP-only egress gateway is walked around on UDP 443:
// browsers try HTTP/3 first. TPROXY delivers a client's datagrams to the
// listening socket with their original destination (listener.ListenUDP),
// and a flow is the client's address and port with that destination. Each
// new flow goes through these steps:
//
//   - receive: the flow's datagrams are held, not relayed, and their
//     Initial packets fed to a [quic.Assembler] until it holds a whole
//     ClientHello (at most timeouts.client_hello); a datagram that starts no
//     QUIC v1 or v2 Initial opens no flow;
//   - identify and decide: [clienthello.Parse] reads the hello, and
//     [Config.Decide] (the gateway's decision, as for a TLS connection:
//     name, ports, sources, sni_destination, restricted addresses) says
//     allow or deny; no datagram of the flow has left before;
//   - relay: an allowed flow gets two sockets, one towards the server that
//     carries egressd's mark and one bound to the original destination and
//     connected to the client (listener.DialUDPFrom), which the kernel then
//     delivers the client's further datagrams to. The held datagrams go
//     first, verbatim; then both ways in batches (recvmmsg and sendmmsg)
//     until the flow is idle for [Params.Idle];
//   - deny: each Initial datagram of a denied flow is answered with a server
//     Initial packet carrying CONNECTION_CLOSE with the TLS alert
//     access_denied ([quic.AppendClose]), at a bounded rate, or dropped
//     ([Params.Drop]); the flow is remembered for a while so that the
//     client's retransmissions are neither decided nor logged again;
//   - log: one access-log line per flow ([Config.Logged]), with protocol
//     quic, the name from the SNI, the ALPN offered, and the bytes and
//     datagrams relayed each way.
//
// Whatever is not a QUIC Initial of a known version on a flow egressd has
// not decided (a short-header packet after the client migrated, a version
// egressd cannot read) is dropped and counted, never relayed: the client's
// QUIC then fails over to TCP, where egressd decides as usual.
//
// A flow carries one decided connection, but a client may start another
// on the same address and port: after a Retry (the server asks for a new
// Destination Connection ID, and the client sends its ClientHello again
// under new keys), or a second connection from a shared socket. So an
// allowed flow still opens every Initial packet the client sends with the
// keys of the connections decided so far; an Initial that none of them
// opens is held, with everything it came with, until that connection's own
// ClientHello has been read and decided as a new flow would be (and must
// go to the same server). Only then is it relayed, or refused with a line
// of its own. One that has the version and connection ID of a decided
// connection is dropped instead: a connection is decided once
// (decidedConns). A client cannot name one server and then talk to
// another on the same flow.
package quicproxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/clienthello"
	"github.com/egressd/egressd/internal/limit"
	"github.com/egressd/egressd/internal/listener"
)

// Params are the settings a new flow takes, from the running config.
type Params struct {
	Listener string // the listener's name, for the log
	// HelloTimeout bounds how long a flow's ClientHello may take to
	// arrive (timeouts.client_hello); a denied flow is remembered as long
	// after its last datagram.
	HelloTimeout time.Duration
	// Idle ends a relayed flow with no datagram either way for this long.
	Idle time.Duration
	// Mark is SO_MARK on the sockets towards servers; 0 sets none.
	Mark uint32
	// Transparent makes the sockets that answer clients IP_TRANSPARENT, so
	// that they can bind a foreign original destination (TPROXY).
	Transparent bool
	// Drop denies by dropping the flow's datagrams instead of answering
	// with a CONNECTION_CLOSE.
	Drop bool
	// Enforce is policy.enforce: a record's enforced until the decision.
	Enforce bool
	// MaxFlows and MaxFlowsPerSource bound the flows held (each relayed
	// flow holds two sockets), MaxPending those not yet decided; 0 is no
	// limit. A datagram over a limit opens no flow and is dropped.
	MaxFlows, MaxFlowsPerSource, MaxPending int
}

// Hello is what a flow is decided on.
type Hello struct {
	Src  netip.AddrPort // the client
	Orig netip.AddrPort // where the client sent its datagrams
	// Info is the parsed ClientHello; its byte slices view the flow's
	// buffer and must not be kept past Decide.
	Info *clienthello.Info
}

// Verdict is the outcome of Decide.
type Verdict struct {
	// Allow relays the flow to Dst (report-only mode allows what it would
	// refuse); otherwise it is denied.
	Allow bool
	Dst   netip.AddrPort
	// Unreachable: the policy allowed the name but egressd has no address
	// for it. The client is told of an internal error, not access denied.
	Unreachable bool
}

// Config is what a Server needs from the gateway.
type Config struct {
	// Conn is the listening socket (listener.ListenUDP). The Server reads
	// it until Stop or Close, which close it.
	Conn *net.UDPConn
	Log  *slog.Logger
	// Params returns the settings for a new flow; called once per flow.
	Params func() Params
	// Decide decides a flow on its hello. It fills rec (name, ALPN, rule,
	// action, reason, destination, enforced), which comes with the start,
	// listener, source, original destination and protocol set. It may
	// block (a DNS look-up); ctx ends when the Server is closed.
	Decide func(ctx context.Context, rec *accesslog.Record, h *Hello) Verdict
	// Logged takes a flow's record when its line is due: write and count
	// it. It must not keep rec.
	Logged func(rec *accesslog.Record)
	// Admit, if set, is asked before a flow from src is made: a budget the
	// flows share with whatever else the process holds (the gateway's
	// TCP connections, under max_connections and its per-source share:
	// a relayed flow holds two sockets, as a connection does). It
	// reports false to refuse the flow; release gives its place back,
	// once, when the flow ends.
	Admit func(src netip.Addr) (release func(), ok bool)
}

// Bounds on what is held before a decision: per flow, and over all flows.
// A post-quantum ClientHello takes two or three datagrams; the rest is
// room for 0-RTT and retransmissions.
const (
	maxHeldPerFlow      = 32
	maxHeldBytesPerFlow = 64 << 10
	maxHeldBytes        = 32 << 20
)

// maxHeldBytesPerSource is what one source address may hold of
// maxHeldBytes.
var maxHeldBytesPerSource = limit.SourceShare(maxHeldBytes)

// maxDatagram is the largest datagram relayed. QUIC never sends one
// larger than its path allows (RFC 9000 §14); a larger one, which only a
// path MTU probe on a jumbo-frame network would send, is dropped and the
// probe counts as lost, so the connection settles below it.
const maxDatagram = 2048

// Server serves one listener's UDP socket.
type Server struct {
	cfg  Config
	conn batchConn
	v6   bool

	ctx    context.Context // ends on Close: pending decisions give up
	cancel context.CancelFunc
	wg     sync.WaitGroup // the read loop and every flow's goroutines

	mu        sync.Mutex
	flows     map[flowKey]*flow
	perSource map[netip.Addr]int
	pending   int
	// pendingPer counts the pending flows per source address: one may
	// hold three quarters of MaxPending (as a TCP peer may of the pending
	// handshakes), so that one client's unfinished hellos cannot keep
	// every other client's flows from starting.
	pendingPer map[netip.Addr]int
	closed     bool

	held atomic.Int64 // bytes held by undecided flows and connections
	// heldBy is held by source address: one may hold three quarters of
	// maxHeldBytes, so that one client's many unfinished flows cannot
	// leave no room for anyone else's first Initial.
	heldBy limit.PerSource
	noGSO  atomic.Bool // the kernel refused UDP_SEGMENT once
	closes closeLimiter
	stats  counters
}

type flowKey struct{ src, orig netip.AddrPort }

// New returns a Server for cfg; Serve starts it.
func New(cfg Config) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	v6 := cfg.Conn.LocalAddr().(*net.UDPAddr).IP.To4() == nil
	return &Server{cfg: cfg, conn: newBatchConn(cfg.Conn, v6), v6: v6, ctx: ctx, cancel: cancel,
		flows: make(map[flowKey]*flow), perSource: make(map[netip.Addr]int)}
}

// Addr is the listening socket's address.
func (s *Server) Addr() netip.AddrPort {
	ap := s.cfg.Conn.LocalAddr().(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Serve reads the listening socket until Stop or Close, and returns when
// every flow has ended too.
func (s *Server) Serve() {
	s.wg.Add(1)
	s.readLoop()
	s.wg.Wait()
}

// Stop closes the listening socket: no new flow starts. Flows still
// collecting their hello, which would get no more datagrams, and denied
// flows, which have nothing left to answer, end now; flows being decided
// or relayed run on, on their own sockets, until they are idle or Close
// ends them.
func (s *Server) Stop() {
	s.cfg.Conn.Close()
	for _, f := range s.snapshot() {
		f.mu.Lock()
		if f.st == pending || f.st == denied {
			f.endLocked(endDrained, nil)
		}
		f.mu.Unlock()
	}
}

func (s *Server) snapshot() []*flow {
	s.mu.Lock()
	defer s.mu.Unlock()
	flows := make([]*flow, 0, len(s.flows))
	for _, f := range s.flows {
		flows = append(flows, f)
	}
	return flows
}

// Close stops the Server and ends every flow now. A flow that was not
// decided yet is logged as closed by egressd; Serve returns once all are
// gone.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.Stop()
	s.cancel()
	for _, f := range s.snapshot() {
		f.end(endDrained)
	}
	return nil
}

// readLoop reads datagrams in batches and hands each to its flow.
func (s *Server) readLoop() {
	defer s.wg.Done()
	const batch = 32
	ms := make([]ipv4.Message, batch)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, maxDatagram)}
		ms[i].OOB = make([]byte, listener.OOBSize)
	}
	var backoff time.Duration
	for {
		n, err := s.conn.ReadBatch(ms, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ENOMEM, ENOBUFS, an ICMP error queued on the socket: wait a
			// little rather than spin.
			backoff = min(max(2*backoff, time.Millisecond), 100*time.Millisecond)
			s.cfg.Log.Warn("udp listener: read failed; backing off", "address", s.Addr().String(), "err", err, "backoff", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		for i := range ms[:n] {
			m := &ms[i]
			orig, ok := listener.OriginalDstUDP(m.OOB[:m.NN])
			ua, isUDP := m.Addr.(*net.UDPAddr)
			switch {
			case !ok || !isUDP:
				s.stats.drop(dropNoDestination, 1)
				continue
			case m.Flags&flagTrunc != 0:
				s.stats.drop(dropTooBig, 1)
				continue
			}
			src := ua.AddrPort()
			src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
			s.dispatch(flowKey{src, orig}, m.Buffers[0][:m.N])
		}
	}
}

// dispatch hands d to its flow, or opens one.
func (s *Server) dispatch(k flowKey, d []byte) {
	s.mu.Lock()
	f := s.flows[k]
	s.mu.Unlock()
	if f != nil {
		if f.fromListener(d) {
			return
		}
		// The flow was denied for another connection, or has just ended:
		// d starts a flow of its own.
		f.end(endReplaced)
		s.forget(f)
	}
	s.open(k, d)
}

// open starts a flow with d, its first datagram, unless d starts no QUIC
// Initial or a limit is reached.
func (s *Server) open(k flowKey, d []byte) {
	if reason := firstDatagram(d); reason != "" {
		s.stats.drop(reason, 1)
		return
	}
	p := s.cfg.Params()
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return
	case p.MaxFlows > 0 && len(s.flows) >= p.MaxFlows,
		p.MaxFlowsPerSource > 0 && s.perSource[limit.Source(k.src.Addr())] >= p.MaxFlowsPerSource,
		p.MaxPending > 0 && s.pending >= p.MaxPending,
		p.MaxPending > 0 && s.pendingPer[limit.Source(k.src.Addr())] >= limit.SourceShare(p.MaxPending):
		s.mu.Unlock()
		s.stats.drop(dropLimit, 1)
		return
	}
	s.mu.Unlock()
	// Admitted before its Initial is decrypted: at the limit, a flood of
	// Initials costs a count each, not a decryption.
	var release func()
	if s.cfg.Admit != nil {
		var ok bool
		if release, ok = s.cfg.Admit(k.src.Addr()); !ok {
			s.stats.drop(dropLimit, 1)
			return
		}
	}
	f := newFlow(s, k, p)
	f.admitted = release
	if _, err := f.asm.AddDatagram(d); f.asm.DCID() == nil {
		// Not one Initial packet opened: noise, or a client that chose a
		// connection ID too short. Nothing to decide.
		f.leave()
		s.stats.drop(dropMalformed, 1)
		s.cfg.Log.Debug("udp: no QUIC Initial opened", "src", k.src.String(), "err", err)
		return
	}
	if !f.hold(d) {
		f.leave()
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		f.releaseHeld()
		f.leave()
		return
	}
	s.flows[k] = f
	s.perSource[limit.Source(k.src.Addr())]++
	s.pending++
	if s.pendingPer == nil {
		s.pendingPer = make(map[netip.Addr]int)
	}
	s.pendingPer[limit.Source(k.src.Addr())]++
	f.pending = true
	s.wg.Add(1)
	s.mu.Unlock()
	f.checkReady()
	go f.run()
}

// forget removes f from the table; called once per flow, whoever ends it
// first.
func (s *Server) forget(f *flow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.forgotten {
		return
	}
	f.forgotten = true
	f.leave()
	if s.flows[f.key] == f {
		delete(s.flows, f.key)
	}
	decrement(s.perSource, limit.Source(f.key.src.Addr()))
	s.notPendingLocked(f)
}

// decided counts f out of the pending flows.
func (s *Server) decided(f *flow) {
	s.mu.Lock()
	s.notPendingLocked(f)
	s.mu.Unlock()
}

func (s *Server) notPendingLocked(f *flow) {
	if !f.pending {
		return
	}
	f.pending = false
	s.pending--
	decrement(s.pendingPer, limit.Source(f.key.src.Addr()))
}

// decrement counts one less for a in m, forgetting a at none.
func decrement(m map[netip.Addr]int, a netip.Addr) {
	if n := m[a]; n <= 1 {
		delete(m, a)
	} else {
		m[a] = n - 1
	}
}
