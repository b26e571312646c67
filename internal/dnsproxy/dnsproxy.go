// Package dnsproxy is egressd's DNS forwarder. Clients (or their
// resolv.conf) point at it; it forwards each query to the upstream servers
// and, for every A/AAAA answer, remembers in a namecache which client
// resolved which name to which address. That memory gives a name to
// connections that carry none (SSH, SMTP, MySQL), and backs the SNI check
// of sni_destination: verify.
//
// It can also refuse names no allow rule could match (filter) and remove
// the ech parameter from HTTPS/SVCB answers (strip ECH), so that clients
// show their real server name.
//
// What it logs, one access-log line with "kind":"dns" each: every query it
// refuses (filter), every query it answers SERVFAIL (all upstreams failed),
// the first query of each second that the rate limit drops for a source,
// and the first message of each second it cannot parse. Queries forwarded normally are counted
// in Stats, not logged: a busy resolver would drown the connection lines.
package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/fqdn"
	"github.com/egressd/egressd/internal/limit"
	"github.com/egressd/egressd/internal/listener"
	"github.com/egressd/egressd/internal/namecache"
	"github.com/egressd/egressd/internal/policy"
	updial "github.com/egressd/egressd/internal/upstream"
)

// maxInFlight bounds the queries being forwarded at once, whoever sends
// them: beyond it, queries are dropped, so a flood from many sources costs
// bounded memory and goroutines.
const maxInFlight = 1024

// maxInFlightPerSource bounds one client address's share of those, so
// that a few clients asking for names that never answer cannot take every
// slot from the others.
const maxInFlightPerSource = 64

// maxRecordedPerFamily bounds the addresses of one answer remembered in
// the namecache, per address family; the client still gets the whole
// answer. Each one takes the namecache's lock, which every connection's
// name check takes too, so an answer with thousands of addresses (a
// client's own zone can hold them) would let one client slow everyone's
// connections. Real answers carry a handful; a connection to an address
// past these is judged as if the client had not resolved it.
const maxRecordedPerFamily = 32

// Config is what the forwarder needs from the dns section (config.DNS).
// A zero Timeout, RateLimit, MaxTCPConns or MaxTCPConnsPerSource means the
// config's default for it (config.DefaultDNSTimeout and the others).
type Config struct {
	// Mark is SO_MARK on the upstream query sockets (see config mark).
	Mark      uint32
	Address   netip.AddrPort
	Upstreams []netip.AddrPort
	Remember  time.Duration // added to each answer's TTL
	Timeout   time.Duration // per upstream attempt
	Filter    bool
	StripECH  bool
	// StripH3 removes h3 from the alpn of HTTPS and SVCB answers (see
	// StripH3).
	StripH3   bool
	RateLimit int // queries per second per source
	// Clients are the sources answered; nil means those policy.Local
	// calls local (private, loopback, link-local, CGNAT).
	Clients []netip.Prefix
	// MaxTCPConns bounds the TCP connections open at once, all clients
	// together, and MaxTCPConnsPerSource those of one client address. A
	// connection over either is reset as soon as it is accepted.
	MaxTCPConns, MaxTCPConnsPerSource int
}

// Stats are the forwarder's counters since New.
type Stats struct {
	Forwarded   uint64 // answered with the upstream's answer
	Refused     uint64 // refused by the filter
	WouldRefuse uint64 // report-only: the filter would have refused, answered anyway
	Failed      uint64 // answered SERVFAIL: no upstream answered
	RateLimited uint64 // dropped by the per-source rate limit
	NotClient   uint64 // dropped: the source is not in Clients
	Overloaded  uint64 // dropped because maxInFlight queries were pending
	Malformed   uint64 // unparseable or refused by the DNS library's checks
	TCPRetries  uint64 // truncated UDP answers asked again over TCP
	ECHStripped uint64 // ech parameters removed
	H3Stripped  uint64 // h3 ALPN ids removed
	Recorded    uint64 // name -> address memories written
}

// Server is a running forwarder.
type Server struct {
	cfg    Config
	names  *namecache.Cache
	policy func() (*policy.Policy, bool)
	log    *slog.Logger
	qlog   *accesslog.Logger
	limit  *limiter
	slots  chan struct{}
	// inFlight counts each client address's queries in flight.
	inFlight limit.PerSource
	// tcpLimit counts the open TCP connections (max_tcp_connections).
	tcpLimit *tcpLimit

	udp, tcp *dns.Server
	wg       sync.WaitGroup
	ctx      context.Context // cancelled by Shutdown: pending upstream queries end
	cancel   context.CancelFunc

	forwarded, refused, wouldRefuse, failed, notClient, rateLimited, overloaded, malformed,
	tcpRetries, echStripped, h3Stripped, recorded atomic.Uint64
	// Each kind of line written for a flood, at most once a second.
	invalidLog, strayLog, tcpLog limit.EverySecond
}

// New returns a forwarder that records into names and, with cfg.Filter,
// asks pol (called per query, so a reloaded policy applies at once) for the
// policy and whether it is enforced: in report-only mode the filter logs
// what it would refuse and answers anyway. qlog
// receives the query lines, log operational messages.
func New(cfg Config, names *namecache.Cache, pol func() (*policy.Policy, bool), log *slog.Logger, qlog *accesslog.Logger) *Server {
	if cfg.RateLimit <= 0 {
		cfg.RateLimit = config.DefaultRateLimit
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = config.DefaultDNSTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, names: names, policy: pol, log: log, qlog: qlog,
		limit: newLimiter(cfg.RateLimit), slots: make(chan struct{}, maxInFlight),
		tcpLimit: newTCPLimit(cfg.MaxTCPConns, cfg.MaxTCPConnsPerSource), ctx: ctx, cancel: cancel}
}

// Start binds UDP and TCP on cfg.Address (the same port for both; with
// port 0 the UDP socket's port is reused for TCP) and serves in the
// background until Shutdown.
func (s *Server) Start() error {
	pc, ln, err := listen(s.cfg.Address)
	if err != nil {
		return err
	}
	h := dns.HandlerFunc(s.serveDNS)
	invalid := func(m []byte, err error) { s.invalid(err) }
	// Strangers are closed first, uncounted; then the TCP caps.
	ln = limitListener{clientsOnlyListener{ln, s}, s}
	// The UDP socket goes to the library as the *net.UDPConn it is: only
	// then does the library read each datagram's destination address and
	// answer from it, which a forwarder bound to a wildcard address on a
	// host with several addresses needs (a reply from another address is
	// dropped by the client). Strangers are filtered by the reader.
	s.udp = &dns.Server{PacketConn: pc, Handler: h, MsgInvalidFunc: invalid, MsgAcceptFunc: s.accept,
		DecorateReader: func(r dns.Reader) dns.Reader { return clientsOnlyReader{r, s} }}
	s.tcp = &dns.Server{Listener: ln, Handler: h, MsgInvalidFunc: invalid, MsgAcceptFunc: s.accept,
		ReadTimeout: tcpFirstQuery, IdleTimeout: func() time.Duration { return tcpIdle }}
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		s.wg.Go(func() {
			if err := srv.ActivateAndServe(); err != nil {
				s.log.Error("dns server stopped", "err", err)
			}
		})
		<-started
	}
	return nil
}

// clientsOnlyReader drops datagrams from sources the forwarder does not
// answer before the DNS library parses them: the library answers a
// malformed query (FORMERR) or an UPDATE (NOTIMP) itself, to anyone, and
// a forwarder on a public address must not answer strangers at all.
type clientsOnlyReader struct {
	dns.Reader
	s *Server
}

func (r clientsOnlyReader) ReadUDP(conn *net.UDPConn, timeout time.Duration) ([]byte, *dns.SessionUDP, error) {
	for {
		m, sess, err := r.Reader.ReadUDP(conn, timeout)
		if err != nil {
			return m, sess, err
		}
		if ua, ok := sess.RemoteAddr().(*net.UDPAddr); ok && r.s.isClient(ua.AddrPort().Addr().Unmap()) {
			return m, sess, nil
		}
		r.s.notClient.Add(1)
	}
}

// clientsOnlyListener closes TCP connections from sources the forwarder
// does not answer as soon as they are accepted.
type clientsOnlyListener struct {
	net.Listener
	s *Server
}

func (l clientsOnlyListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return c, err
		}
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok && l.s.isClient(ta.AddrPort().Addr().Unmap()) {
			return c, nil
		}
		l.s.notClient.Add(1)
		c.Close()
	}
}

// listen binds UDP and TCP on the same address. With port 0 the TCP port
// must be the one the kernel picked for UDP, which some other TCP socket
// may hold: then it tries again with a fresh port, a few times.
// Both are of addr's family only (listener.Network), and the TCP socket is
// plain TCP, as the gateway's listeners are.
func listen(addr netip.AddrPort) (net.PacketConn, net.Listener, error) {
	var lc net.ListenConfig
	for attempt := 0; ; attempt++ {
		pc, err := lc.ListenPacket(context.Background(), listener.Network("udp", addr), addr.String())
		if err != nil {
			return nil, nil, fmt.Errorf("dns: listen udp %s: %w", addr, err)
		}
		ln, err := listener.Listen(context.Background(), listener.AddrPort(pc.LocalAddr()), listener.Options{})
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if addr.Port() != 0 || attempt == 8 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, fmt.Errorf("dns: listen tcp %s: %w", pc.LocalAddr(), err)
		}
	}
}

// Addr returns the bound address (UDP and TCP share it).
func (s *Server) Addr() netip.AddrPort {
	ap, _ := netip.ParseAddrPort(s.udp.PacketConn.LocalAddr().String())
	return ap
}

// Shutdown stops both servers, cancels pending upstream queries and waits
// for the serving goroutines until ctx is done; then it closes the TCP
// connections still open, whose goroutines end at once, and waits for
// them. Without that last step a client that does not read its answers
// would hold Shutdown: the DNS library's ShutdownContext returns when ctx
// is done, but the library's serving goroutine waits for every
// connection's goroutine regardless.
func (s *Server) Shutdown(ctx context.Context) {
	s.cancel()
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		if srv != nil {
			srv.ShutdownContext(ctx)
		}
	}
	s.tcpLimit.closeAll()
	s.wg.Wait()
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	return Stats{
		Forwarded: s.forwarded.Load(), Refused: s.refused.Load(), WouldRefuse: s.wouldRefuse.Load(), Failed: s.failed.Load(),
		RateLimited: s.rateLimited.Load(), NotClient: s.notClient.Load(), Overloaded: s.overloaded.Load(), Malformed: s.malformed.Load(),
		TCPRetries: s.tcpRetries.Load(), ECHStripped: s.echStripped.Load(), H3Stripped: s.h3Stripped.Load(),
		Recorded: s.recorded.Load(),
	}
}

// accept is the DNS library's default check of a message header (one
// question, no update sections), counting what it rejects, and refusing
// NOTIFY too: a forwarder has no zone to be notified about.
func (s *Server) accept(h dns.Header) dns.MsgAcceptAction {
	a := dns.DefaultMsgAcceptFunc(h)
	if a == dns.MsgAccept && int(h.Bits>>11)&0xF != dns.OpcodeQuery {
		a = dns.MsgRejectNotImplemented
	}
	if a != dns.MsgAccept {
		s.malformed.Add(1)
	}
	return a
}

// invalid counts a message that does not parse, and logs the first one of
// each second: the library does not say who sent it, and a stream of junk
// must not become a stream of log lines.
func (s *Server) invalid(err error) {
	n := s.malformed.Add(1)
	if s.invalidLog.Allow(time.Now()) {
		s.qlog.LogDNS(&accesslog.DNSRecord{Result: "malformed",
			Reason: fmt.Sprintf("unparseable message: %v (%d malformed so far; one line per second at most)", err, n)})
	}
}

func remoteAddr(w dns.ResponseWriter) netip.AddrPort {
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		return a.AddrPort()
	case *net.TCPAddr:
		return a.AddrPort()
	}
	return netip.AddrPort{}
}

func (s *Server) serveDNS(w dns.ResponseWriter, r *dns.Msg) {
	srcPort := remoteAddr(w)
	src := srcPort.Addr().Unmap()
	q := r.Question[0] // the accept func guarantees exactly one
	rec := accesslog.DNSRecord{Src: srcPort, QName: dnsLower(q.Name), QType: dns.Type(q.Qtype).String()}

	if !s.isClient(src) {
		// Not answered at all: an open resolver is an amplifier, and a
		// REFUSED is still a reflection.
		n := s.notClient.Add(1)
		if s.strayLog.Allow(time.Now()) {
			rec.Result = "dropped"
			rec.Reason = fmt.Sprintf("%s is not in dns.clients (%d such queries so far; one line per second at most)", src, n)
			s.qlog.LogDNS(&rec)
		}
		w.Close()
		return
	}
	if ok, first := s.limit.allow(src); !ok {
		s.rateLimited.Add(1)
		if first {
			rec.Result, rec.Reason = "dropped", fmt.Sprintf("rate limit: more than %d queries per second from %s; dropping the rest of this second", s.cfg.RateLimit, src)
			s.qlog.LogDNS(&rec)
		}
		w.Close()
		return
	}
	_, udp := w.RemoteAddr().(*net.UDPAddr)
	m := s.answer(r, src, udp, &rec)
	if m == nil {
		w.Close()
		return
	}
	// Written with the query's slots given back: they bound the queries
	// being forwarded, and a TCP client that does not read would
	// otherwise hold them while its write waits (up to tcpWrite).
	w.WriteMsg(m)
}

// answer forwards r from src (or refuses it) within a query slot and
// returns what to write back, nil to drop it: maxInFlight queries are
// pending, or maxInFlightPerSource from src. udp is the transport r came
// by, which bounds the answer's size.
func (s *Server) answer(r *dns.Msg, src netip.Addr, udp bool, rec *accesslog.DNSRecord) *dns.Msg {
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
		if !s.inFlight.Acquire(src, maxInFlightPerSource) {
			s.overloaded.Add(1)
			return nil
		}
		defer s.inFlight.Release(src)
	default:
		s.overloaded.Add(1)
		return nil
	}

	q := r.Question[0]
	name, valid := fqdn.Normalize(q.Name)
	pol, enforce := s.policy()
	checkAnswer := false
	if s.cfg.Filter && !valid && q.Name != "." {
		// A name that is not an FQDN (a "!", "+", a space or any byte
		// outside a host name) matches no fqdn rule, deny rules included:
		// judged as "no name" it would slip past them, so it is refused.
		if m := s.refuse(r, rec, enforce, fmt.Sprintf("%q is not a valid host name", dnsLower(q.Name))); m != nil {
			return m
		}
	}
	if s.cfg.Filter {
		ok, byAddress := pol.MayAllow(src, name, netip.Addr{})
		addrQuery := q.Qtype == dns.TypeA || q.Qtype == dns.TypeAAAA
		if !ok && !(byAddress && addrQuery) {
			if m := s.refuse(r, rec, enforce, fmt.Sprintf("no allow rule could match %q for %s", name, src)); m != nil {
				return m
			}
		}
		checkAnswer = !ok && byAddress && addrQuery
	}

	resp, err := s.forward(r)
	if err != nil {
		s.failed.Add(1)
		rec.Rcode, rec.Result, rec.Reason = "SERVFAIL", "failed", err.Error()
		s.qlog.LogDNS(rec)
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeServerFailure)
		return m
	}
	chain := updial.Chain(resp, q.Name) // the owners that answer the name asked
	addrs := addressesIn(resp, chain)
	if s.cfg.Filter {
		for target := range chain {
			if t, ok := fqdn.Normalize(target); ok && t != name && pol.DeniedByName(src, t) {
				if m := s.refuse(r, rec, enforce, fmt.Sprintf("%q is an alias of %q, which a deny rule names", name, t)); m != nil {
					return m
				}
				break
			}
		}
	}
	if checkAnswer && !anyAllowed(pol, src, name, addrs) {
		if m := s.refuse(r, rec, enforce, fmt.Sprintf("no allow rule could match %q for %s at any of its %d addresses", name, src, len(addrs))); m != nil {
			return m
		}
	}
	if s.cfg.StripH3 {
		s.h3Stripped.Add(uint64(StripH3(resp)))
	}
	if s.cfg.StripECH {
		s.echStripped.Add(uint64(StripECH(resp)))
	} else {
		// The client gets these configurations: an outer ClientHello that
		// uses one is real ECH, not GREASE (see namecache.RecordECH).
		ttl := answerTTL(resp) + s.cfg.Remember
		for i, c := range echConfigs(resp, chain) {
			if i == maxRecordedPerFamily {
				break // as addresses: a real answer carries one or two
			}
			if pn, ok := fqdn.Normalize(c.PublicName); ok {
				s.names.RecordECH(src, pn, c.ConfigID, ttl)
			}
		}
	}
	if name != "" && resp.Rcode == dns.RcodeSuccess {
		s.record(src, name, addrs)
	}
	resp.Id = r.Id
	if udp {
		resp.Truncate(udpSize(r))
	} else {
		// Compressed if it must be to fit (the upstream's answer may fit
		// only compressed, and the library packs uncompressed by default).
		resp.Truncate(dns.MaxMsgSize)
	}
	s.forwarded.Add(1)
	return resp
}

// record remembers that src resolved name to addrs, the first
// maxRecordedPerFamily addresses of each family.
func (s *Server) record(src netip.Addr, name string, addrs []Address) {
	var v4, v6 int
	for _, a := range addrs {
		n := &v6
		if a.IP.Unmap().Is4() {
			n = &v4
		}
		if *n >= maxRecordedPerFamily {
			continue
		}
		*n++
		s.names.Record(src, name, a.IP, a.TTL+s.cfg.Remember)
		s.recorded.Add(1)
	}
}

// answerTTL is the smallest TTL of m's answer section.
func answerTTL(m *dns.Msg) time.Duration {
	ttl := uint32(0)
	for i, rr := range m.Answer {
		if t := rr.Header().Ttl; i == 0 || t < ttl {
			ttl = t
		}
	}
	return time.Duration(ttl) * time.Second
}

// isClient reports whether the forwarder answers src.
func (s *Server) isClient(src netip.Addr) bool {
	if s.cfg.Clients == nil {
		return policy.Local(src)
	}
	return policy.InPrefixes(s.cfg.Clients, src)
}

// udpSize is how large a UDP answer the client accepts (RFC 6891 §6.2.5):
// its EDNS0 buffer size, at least 512.
func udpSize(r *dns.Msg) int {
	if o := r.IsEdns0(); o != nil {
		return max(int(o.UDPSize()), dns.MinMsgSize)
	}
	return dns.MinMsgSize
}

func anyAllowed(p *policy.Policy, src netip.Addr, name string, addrs []Address) bool {
	for _, a := range addrs {
		if ok, _ := p.MayAllow(src, name, a.IP); ok {
			return true
		}
	}
	return false
}

// refuse logs why r is refused and returns the REFUSED answer; in
// report-only mode (enforce false) it only logs what it would have done
// and returns nil: the caller answers as usual.
func (s *Server) refuse(r *dns.Msg, rec *accesslog.DNSRecord, enforce bool, why string) *dns.Msg {
	if !enforce {
		s.wouldRefuse.Add(1)
		rec.Result, rec.Reason = "would-refuse", "report-only: "+why
		s.qlog.LogDNS(rec)
		return nil
	}
	s.refused.Add(1)
	rec.Rcode, rec.Result, rec.Reason = "REFUSED", "refused", why
	s.qlog.LogDNS(rec)
	m := new(dns.Msg)
	m.SetRcode(r, dns.RcodeRefused)
	return m
}

// forward asks the upstreams in order until one answers. A truncated UDP
// answer is asked again over TCP from the same upstream; a timeout, a
// network error or SERVFAIL moves on to the next upstream.
func (s *Server) forward(r *dns.Msg) (*dns.Msg, error) {
	var errs []error
	q := r.Copy()
	q.Id = dns.Id() // the upstream sees our ID, not one the client chose
	for _, up := range s.cfg.Upstreams {
		resp, err := s.exchange(q, up)
		if err == nil && resp.Rcode == dns.RcodeServerFailure {
			err = errors.New("SERVFAIL")
		}
		if err == nil {
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("upstream %s: %w", up, err))
	}
	return nil, errors.Join(errs...)
}

func (s *Server) exchange(q *dns.Msg, up netip.AddrPort) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Timeout)
	defer cancel()
	// Timeout set: the library's own default (2 s) would otherwise cap
	// dns.timeout, whatever the context allows.
	d := updial.NetDialer(s.cfg.Timeout, s.cfg.Mark)
	c := &dns.Client{Net: "udp", UDPSize: dns.DefaultMsgSize, Timeout: s.cfg.Timeout, Dialer: d}
	resp, _, err := c.ExchangeContext(ctx, q, up.String())
	if err == nil && resp.Truncated {
		s.tcpRetries.Add(1)
		c = &dns.Client{Net: "tcp", Timeout: s.cfg.Timeout, Dialer: d}
		resp, _, err = c.ExchangeContext(ctx, q, up.String())
	}
	if err == nil && !answers(resp, q) {
		err = errors.New("answer does not match the question")
	}
	return resp, err
}

// answers reports whether resp is a response to q's question. The
// library checks only the message ID; a response for another name or type
// is refused too (defence in depth against spoofed answers).
func answers(resp, q *dns.Msg) bool {
	if !resp.Response || len(resp.Question) != 1 || len(q.Question) != 1 {
		return false
	}
	a, b := resp.Question[0], q.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

// dnsLower lower-cases a query name for the log without normalising it
// further: the log shows what was asked.
func dnsLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
