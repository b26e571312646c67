package e2e

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/internal/testnet"
)

// ALPN protocols of the Go TLS server: hashProto selects the bulk exchange,
// anything else (or none) the greeting.
const (
	hashProto  = "egressd-hash"
	greetProto = "egressd-greet"
)

// tlsServer is a TLS server in srv. On every accepted connection it records
// the raw bytes that arrived until the handshake completed, so a test can see
// how the ClientHello was framed when it reached the server. Then it either
// greets ("hello sni=... local=... version=...") and closes, or, with ALPN
// hashProto, runs the bulk exchange (see bulk).
type tlsServer struct {
	cfg     *tls.Config
	accepts atomic.Int64

	mu      sync.Mutex
	events  []serverEvent
	changed chan struct{}
}

// serverEvent is what the TLS server saw of one connection.
type serverEvent struct {
	Local, SNI, ALPN string
	Version          uint16
	HelloLen         int  // bytes of the ClientHello message, header included
	HelloRecords     int  // TLS records it arrived in
	HRR              bool // the server asked for a second hello (a HelloRetryRequest)
	Err              error

	// Bulk exchange only.
	Received int64
	RecvSHA  string
	SawFIN   bool // the TCP half-close after close_notify reached the server
	Sent     int64
	SentSHA  string
}

// startTLSServer serves on every address in addrs.
func startTLSServer(t testing.TB, ns *netns, cert tls.Certificate, addrs ...string) *tlsServer {
	t.Helper()
	s := &tlsServer{
		cfg:     &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{hashProto, greetProto}},
		changed: make(chan struct{}),
	}
	var lns []net.Listener
	for _, addr := range addrs {
		lns = append(lns, ns.listen(t, addr))
	}
	var wg sync.WaitGroup
	var live liveConns
	t.Cleanup(func() {
		for _, ln := range lns {
			ln.Close()
		}
		live.closeAll()
		wg.Wait()
	})
	for _, ln := range lns {
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil || !live.add(c) {
					return
				}
				s.accepts.Add(1)
				wg.Go(func() { defer live.remove(c); s.serve(c) })
			}
		})
	}
	return s
}

func (s *tlsServer) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	rec := &recordingConn{Conn: c}
	tc := tls.Server(rec, s.cfg)
	ev := serverEvent{Local: c.LocalAddr().String()}
	err := tc.Handshake()
	ev.HelloRecords, ev.HelloLen = helloFraming(rec.bytes())
	if err != nil {
		ev.Err = err
		s.record(ev)
		return
	}
	st := tc.ConnectionState()
	ev.SNI, ev.ALPN, ev.Version, ev.HRR = st.ServerName, st.NegotiatedProtocol, st.Version, st.HelloRetryRequest
	if ev.ALPN == hashProto {
		s.bulk(tc, c, &ev)
		return
	}
	s.record(ev)
	io.WriteString(tc, "hello sni="+ev.SNI+" local="+ev.Local+" version="+tls.VersionName(ev.Version)+"\n")
	tc.Close()
}

// bulkSize is what each side sends in the bulk exchange.
const bulkSize = 50 << 20

// bulk reads the client's data to close_notify, checks that the TCP FIN
// followed, then sends bulkSize bytes of its own and closes.
func (s *tlsServer) bulk(tc *tls.Conn, raw net.Conn, ev *serverEvent) {
	h := sha256.New()
	ev.Received, ev.Err = io.Copy(h, tc)
	ev.RecvSHA = hex.EncodeToString(h.Sum(nil))
	if ev.Err == nil {
		var b [1]byte
		_, err := raw.Read(b[:])
		ev.SawFIN = errors.Is(err, io.EOF)
		h.Reset()
		ev.Sent, ev.Err = io.CopyN(io.MultiWriter(tc, h), stream(2), bulkSize)
		ev.SentSHA = hex.EncodeToString(h.Sum(nil))
	}
	s.record(*ev)
	tc.Close()
}

// stream is a deterministic pseudo-random byte stream.
func stream(seed byte) io.Reader { return rand.NewChaCha8([32]byte{seed}) }

func (s *tlsServer) record(ev serverEvent) {
	s.mu.Lock()
	s.events = append(s.events, ev)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// mark is the position of the next event; pass it to next.
func (s *tlsServer) mark() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}

// next waits for the event at position i.
func (s *tlsServer) next(t testing.TB, i int) serverEvent {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		s.mu.Lock()
		if i < len(s.events) {
			ev := s.events[i]
			s.mu.Unlock()
			return ev
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("the TLS server saw no connection within 15s")
		}
	}
}

// recordingConn keeps the first bytes read from a connection.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	buf []byte
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	if len(c.buf) < 64<<10 {
		c.buf = append(c.buf, p[:n]...)
	}
	c.mu.Unlock()
	return n, err
}

func (c *recordingConn) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf
}

// helloFraming reads the TLS records at the start of b and returns how many
// records the first handshake message (the ClientHello) spans and its length;
// 0, 0 if b does not start with a complete one.
func helloFraming(b []byte) (records, msgLen int) {
	var hs []byte
	for len(b) >= 5 && b[0] == 22 {
		n := int(b[3])<<8 | int(b[4])
		if len(b) < 5+n {
			return 0, 0
		}
		hs = append(hs, b[5:5+n]...)
		b = b[5+n:]
		records++
		if len(hs) >= 4 {
			if want := 4 + (int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])); len(hs) >= want {
				return records, want
			}
		}
	}
	return 0, 0
}

// liveConns is a server's open connections, closed at cleanup so that no
// handler outlives its test.
type liveConns struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// add tracks c; after closeAll it closes c and returns false.
func (l *liveConns) add(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return false
	}
	if l.conns == nil {
		l.conns = make(map[net.Conn]struct{})
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *liveConns) remove(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

func (l *liveConns) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for c := range l.conns {
		c.Close()
	}
}

// greeter is a server-first service (SMTP-like): it says "220 ready" as soon
// as a client connects, answers "QUIT" with "221 bye" and closes.
type greeter struct {
	accepts atomic.Int64
}

func startGreeter(t testing.TB, ns *netns, addr string) *greeter {
	t.Helper()
	g := &greeter{}
	ln := ns.listen(t, addr)
	var wg sync.WaitGroup
	var live liveConns
	t.Cleanup(func() { ln.Close(); live.closeAll(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil || !live.add(c) {
				return
			}
			g.accepts.Add(1)
			wg.Go(func() {
				defer live.remove(c)
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				io.WriteString(c, "220 ready\r\n")
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil && strings.TrimSpace(line) == "QUIT" {
					io.WriteString(c, "221 bye\r\n")
				}
			})
		}
	})
	return g
}

// dnsRecords is what the tests' DNS server answers: A records for the IPv4
// addresses, AAAA records for the IPv6 ones; every other name is NXDOMAIN.
// A world with ipv6 adds dnsRecords6.
var dnsRecords = map[string][]string{
	"allowed.test.":         {srvAddr},
	"www.allowed.test.":     {srvAddr},
	"x.ads.test.":           {srvAddr},
	"private.allowed.test.": {labAddr},
	"mixed.allowed.test.":   {srvAddr, labAddr},
	// silentAddr drops every packet (TestSNIListener): egressd's dial must
	// time out there and go on to the second answer.
	"silent.allowed.test.": {silentAddr, srvAddr},
}

// dnsRecords6 are the AAAA records of an ipv6 world. The resolving
// listeners (sni, tproxy with sni_destination: resolve) run in such worlds
// too: egressd dials the A answer first, so a dual-stack name must reach
// the IPv4 server every time.
var dnsRecords6 = map[string][]string{
	"allowed.test.": {srvAddr6},
}

// startDNS serves records (name: addresses, see dnsRecords) over UDP and TCP
// on addr in ns.
func startDNS(t testing.TB, ns *netns, addr string, records map[string][]string) {
	t.Helper()
	var pc net.PacketConn
	if err := ns.do(func() (err error) { pc, err = net.ListenPacket("udp4", addr); return err }); err != nil {
		t.Fatalf("dns: listen udp %s: %v", addr, err)
	}
	ln := ns.listen(t, addr)
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) { answer(w, r, records) })
	testnet.ServeDNSOn(t, pc, ln, handler)
}

func answer(w dns.ResponseWriter, r *dns.Msg, records map[string][]string) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	for _, q := range r.Question {
		addrs, ok := records[strings.ToLower(q.Name)]
		if !ok {
			m.Rcode = dns.RcodeNameError
			continue
		}
		if q.Qclass != dns.ClassINET {
			continue // NODATA
		}
		for _, a := range addrs {
			ip := net.ParseIP(a)
			hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 60}
			switch {
			case q.Qtype == dns.TypeA && ip.To4() != nil:
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: ip.To4()})
			case q.Qtype == dns.TypeAAAA && ip.To4() == nil:
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: ip})
			}
		}
	}
	w.WriteMsg(m)
}
