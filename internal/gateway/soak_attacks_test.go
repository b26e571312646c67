package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/internal/authguard"
)

// The outside review's attacks as TestSoak runs them: all at once,
// against the one gateway the good clients use. Each runs at a bounded
// rate for at most a bounded count, stops when the attack phase ends,
// checks the bound its fix set, and returns its figures for the report.

func (s *soakWorld) attacks(ctx context.Context) []string {
	runs := []struct {
		name string
		run  func(context.Context) string
	}{
		{"1, endless response head", s.endlessHead},
		{"2, self-dial", s.selfDial},
		{"3, unique names through the resolver cache", s.nameFlood},
		{"4, wrong passwords", s.wrongPasswords},
		{"5, DNS forwarder flood", s.dnsFlood},
		{"6, silent TCP to the DNS forwarder", s.dnsSilent},
		{"7, silent and slow clients", s.crowd},
	}
	out := make([]string, len(runs))
	var wg sync.WaitGroup
	for i, r := range runs {
		wg.Go(func() { out[i] = r.name + ": " + r.run(ctx) })
	}
	wg.Wait()
	return out
}

// endlessHead: a plain-HTTP GET every 2 s to a server whose response head
// never ends. Bound: a 502 each, and at most 32 MiB (the server's socket
// buffers and the 64 KiB egressd reads ahead) out of the server into one
// connection.
func (s *soakWorld) endlessHead(ctx context.Context) string {
	target := fmt.Sprintf("good.test:%d", s.endless.port)
	head := fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: %[1]s\r\nProxy-Authorization: %s\r\n\r\n", target, s.auth)
	codes := &tally{}
	n := paced(ctx, 0.5, 1000, 2, func(int) { codes.add(s.askAuthed(endlessSrc, head, http.MethodGet)) })
	waitUntil(30*time.Second, func() bool { return s.endless.ended.Load() >= int64(n) })
	most := s.endless.most.Load()
	if most > 32<<20 {
		s.t.Errorf("endless head: the server wrote %d bytes into one connection before egressd closed it", most)
	}
	if codes.except("502") > 0 {
		s.t.Errorf("endless head: answers %v, want 502 every time", codes)
	}
	return fmt.Sprintf("%d requests, answers %v; at most %.1f MiB out of the server into one connection",
		n, codes, float64(most)/(1<<20))
}

// selfDial: once a second, CONNECT to self.test (127.0.0.1) on egressd's
// own proxy, sni and DNS ports, or a hello for loop.test to an sni
// listener whose upstream_port is its own. Bound: each refused (403, TLS
// alert) with one log line and one own_listener refusal (TestSoak checks
// the metric), never dialled.
func (s *soakWorld) selfDial(ctx context.Context) string {
	ports := []uint16{s.proxy.Port(), s.sni.Port(), s.dns.Port()}
	got := &tally{}
	before := s.log.ownListener.Load()
	n := paced(ctx, 1, 1000, 2, func(i int) {
		if i%4 == 3 {
			got.add("loop " + helloOutcome(selfSrc, s.loop, craftedHello("loop.test")))
			return
		}
		head := fmt.Sprintf("CONNECT self.test:%d HTTP/1.1\r\nHost: self.test:%[1]d\r\nProxy-Authorization: %s\r\n\r\n", ports[i%4], s.auth)
		got.add("CONNECT " + s.askAuthed(selfSrc, head, http.MethodConnect))
	})
	s.selfDials.Store(int64(n))
	waitUntil(10*time.Second, func() bool { return s.log.ownListener.Load()-before >= int64(n) })
	lines := s.log.ownListener.Load() - before
	if lines != int64(n) || got.except("CONNECT 403", "loop alert") > 0 {
		s.t.Errorf("self-dial: %d attempts answered %v with %d log lines naming egressd's own listener; want each refused, one line each", n, got, lines)
	}
	return fmt.Sprintf("%d attempts, answered %v, %d log lines", n, got, lines)
}

// nameFlood: 150 connections a second, each naming a new name: a hello
// through the sni listener, or a CONNECT, for a name under *.flood.test
// (answered, a 100.64.0.0/10 address: refused after the look-up) or under
// *.nx.test (NXDOMAIN). Bound: the resolver cache within its budget
// (TestSoak checks it every second); good.test, asked for all along,
// stays cached between its TTLs; no flood name is relayed.
func (s *soakWorld) nameFlood(ctx context.Context) string {
	got := &tally{}
	asked := s.goodAsked.Load()
	start := time.Now()
	n := paced(ctx, 150, 100_000, 16, func(i int) {
		switch i % 3 {
		case 0:
			got.add("sni " + helloOutcome(floodSrc, s.sni, craftedHello(fmt.Sprintf("f%d.flood.test", i))))
		case 1:
			got.add("CONNECT flood " + s.connectAs(floodSrc, fmt.Sprintf("f%d.flood.test:443", i)))
		case 2:
			got.add("CONNECT nx " + s.connectAs(floodSrc, fmt.Sprintf("f%d.nx.test:443", i)))
		}
	})
	if got.count("sni relayed")+got.count("CONNECT flood 200")+got.count("CONNECT nx 200") > 0 {
		s.t.Errorf("name flood: answers %v; a flood name was relayed", got)
	}
	st := s.gw.lookups.Stats()
	return fmt.Sprintf("%d connections, answered %v; resolver cache now %d entries, %.1f MiB, %d live entries evicted; good.test looked up %d times (A and AAAA, TTL 60 s) in %v",
		n, got, st.Entries, float64(st.Bytes)/(1<<20), st.Evictions, s.goodAsked.Load()-asked, time.Since(start).Round(time.Second))
}

// wrongPasswords: 30 wrong passwords a second for the bcrypt user from
// two sources, half HTTP (407), half SOCKS5 (RFC 1929 failure). Bound:
// authBound hashed per source; the rest refused unchecked.
func (s *soakWorld) wrongPasswords(ctx context.Context) string {
	target := fmt.Sprintf("good.test:%d", s.transferPort)
	got := &tally{}
	before := s.gw.auth.Counts()
	start := time.Now()
	n := paced(ctx, 30, 20_000, 8, func(i int) {
		src, pass := guessSrcs[i%2], fmt.Sprintf("guess%d", i)
		if i/2%2 == 0 {
			got.add(httpConnectAs(s.t, src, s.proxy, target, "ci-runner", pass))
		} else {
			got.add(socksLoginAs(s.t, src, s.proxy, "ci-runner", pass))
		}
	})
	c := s.gw.auth.Counts()
	hashed, bound := c.Wrong-before.Wrong, uint64(len(guessSrcs)*authBound(time.Since(start)))
	if hashed > bound || got.except("407", "socks failure") > 0 {
		s.t.Errorf("wrong passwords: %d attempts answered %v, %d hashed; want all refused, at most %d hashed", n, got, hashed, bound)
	}
	return fmt.Sprintf("%d attempts from %d sources, answered %v; %d hashed (bound %d), %d refused backing off, %d busy",
		n, len(guessSrcs), got, hashed, bound, c.Backoff-before.Backoff, c.Busy-before.Busy)
}

// authBound is how many wrong passwords one source that never stops
// guessing can have hashed in d: the failures that start its first
// back-off and, for each back-off that ends within d, the one that starts
// the next, plus those that held a check slot as a back-off began.
func authBound(d time.Duration) int {
	slots := max(1, runtime.GOMAXPROCS(0)/2)
	n := authguard.DefaultFailures + slots
	for b, at := authguard.DefaultBackoff, time.Duration(0); at < d; b = min(2*b, authguard.DefaultMaxBackoff) {
		at += b
		n += 1 + slots
	}
	return n
}

// dnsFlood: four sources (127.0.0.2-5) each ask the forwarder 100 unique
// names a second (under its rate limit, so each is answered and
// remembered), 30,000 each: more than max_entries together. Meanwhile a
// quiet client resolves its 50 names every 30 s, one of them over TCP.
// Bound: every quiet query answered, and the forwarder still remembers
// each of the quiet client's names when the flood ends.
func (s *soakWorld) dnsFlood(ctx context.Context) string {
	quiet := make([]string, 50)
	for i := range quiet {
		quiet[i] = fmt.Sprintf("q%d.quiet.test", i)
	}
	var sent, answered atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() { s.quietClient(ctx, quiet) })
	for k, src := range dnsFloodSrcs {
		wg.Go(func() {
			n, a := s.floodForwarder(ctx, src, k)
			sent.Add(n)
			answered.Add(a)
		})
	}
	wg.Wait()
	lost := 0
	for _, name := range quiet {
		if got, ok := s.gw.clientNames.Lookup(quietSrc, floodAddr(name)); !ok || got != name {
			lost++
		}
	}
	if lost > 0 {
		s.t.Errorf("DNS flood: the quiet client's memory lost %d of its %d names", lost, len(quiet))
	}
	st := s.gw.Stats()
	return fmt.Sprintf("%d queries from %d sources, %d answered; memory now %d names, %d evictions, %d rate-limited; quiet client lost %d of %d names",
		sent.Load(), len(dnsFloodSrcs), answered.Load(), st.Names.Entries, st.Names.Evictions, st.DNS.RateLimited, lost, len(quiet))
}

// floodForwarder sends unique queries from src, 100 a second, without
// waiting for the answers, which a reader counts.
func (s *soakWorld) floodForwarder(ctx context.Context, src netip.Addr, k int) (sent, answered int64) {
	c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(s.dns))
	if err != nil {
		s.t.Error(err)
		return 0, 0
	}
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			if _, err := c.Read(buf); err != nil {
				return // closed
			}
			got.Add(1)
		}
	}()
	n := paced(ctx, 100, 30_000, 1, func(i int) {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("d%d.s%d.flood.test.", i, k), dns.TypeA)
		if b, err := m.Pack(); err == nil {
			c.Write(b)
		}
	})
	time.Sleep(3 * time.Second) // the last answers
	c.Close()
	<-done
	return int64(n), got.Load()
}

// quietClient resolves names through the forwarder every 30 s until ctx
// ends, the first over TCP. A name not answered in three tries is a good
// client failing.
func (s *soakWorld) quietClient(ctx context.Context, names []string) {
	udp := &dns.Client{Timeout: 2 * time.Second,
		Dialer: &net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.UDPAddr{IP: quietSrc.AsSlice()}}}
	tcp := &dns.Client{Net: "tcp", Timeout: 5 * time.Second,
		Dialer: &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: quietSrc.AsSlice()}}}
	for {
		for i, name := range names {
			c := udp
			if i == 0 {
				c = tcp
			}
			if err := resolveVia(c, s.dns, name); err != nil {
				s.t.Errorf("quiet DNS client (%s): %s: %v", c.Net, name, err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(30 * time.Second):
		}
	}
}

// resolveVia asks server for name's A record, up to three times, and
// checks the answer is floodAddr(name).
func resolveVia(c *dns.Client, server netip.AddrPort, name string) error {
	m := new(dns.Msg)
	m.SetQuestion(name+".", dns.TypeA)
	var err error
	for range 3 {
		var r *dns.Msg
		if r, _, err = c.Exchange(m, server.String()); err != nil {
			continue
		}
		if len(r.Answer) != 1 {
			return fmt.Errorf("answer %v", r.Answer)
		}
		if a, ok := r.Answer[0].(*dns.A); !ok || a.A.String() != floodAddr(name).String() {
			return fmt.Errorf("answer %v, want %v", r.Answer[0], floodAddr(name))
		}
		return nil
	}
	return err
}

// dnsSilent: two sources each open 20 TCP connections a second to the
// forwarder and send nothing. Bound: every one closed by egressd (reset at
// accept over max_tcp_connections_per_source, or after the 2 s the first
// query may take), none left for the client's own one-minute deadline.
func (s *soakWorld) dnsSilent(ctx context.Context) string {
	var atOnce, held, ours, failed atomic.Int64
	var longest atomic.Int64
	var n atomic.Int64
	var wg sync.WaitGroup
	for _, src := range dnsSilentSrcs {
		wg.Go(func() {
			n.Add(int64(paced(ctx, 20, 5_000, 64, func(int) {
				start := time.Now()
				c, err := dialSrc(src, s.dns)
				if errors.Is(err, syscall.ECONNRESET) {
					atOnce.Add(1) // reset before the dial returned
					return
				} else if err != nil {
					failed.Add(1)
					return
				}
				defer c.Close()
				c.SetReadDeadline(start.Add(time.Minute))
				_, err = c.Read(make([]byte, 1))
				took := time.Since(start)
				for old := longest.Load(); int64(took) > old && !longest.CompareAndSwap(old, int64(took)); old = longest.Load() {
				}
				switch {
				case isTimeout(err):
					ours.Add(1)
				case took < time.Second:
					atOnce.Add(1)
				default:
					held.Add(1)
				}
			})))
		})
	}
	wg.Wait()
	if ours.Load() > 0 {
		s.t.Errorf("silent DNS TCP: %d of %d connections were still open after a minute", ours.Load(), n.Load())
	}
	return fmt.Sprintf("%d connections from %d sources: %d reset within a second (over the per-source limit), %d held then closed (longest %v), %d failed to connect, %d left open; forwarder's overloaded count %d",
		n.Load(), len(dnsSilentSrcs), atOnce.Load(), held.Load(), time.Duration(longest.Load()).Round(10*time.Millisecond), failed.Load(), ours.Load(), s.gw.Stats().DNS.Overloaded)
}

// crowd holds 100 silent and 100 slow (a byte a second) clients on the sni
// listener and as many on the explicit listener, each replaced when egressd
// closes it, at most 20,000 of each kind. Bound: egressd closes every one
// (first_bytes, client_hello), none is left for the client's own
// one-minute limit.
func (s *soakWorld) crowd(ctx context.Context) string {
	connectHead := fmt.Sprintf("CONNECT good.test:443 HTTP/1.1\r\nHost: good.test:443\r\nProxy-Authorization: %s\r\n\r\n", s.auth)
	kinds := []struct {
		name    string
		src     netip.Addr
		addr    netip.AddrPort
		trickle []byte
	}{
		{"sni silent", crowdSNISrc, s.sni, nil},
		{"sni slow", crowdSNISrc, s.sni, s.hello},
		{"explicit silent", crowdProxySrc, s.proxy, nil},
		{"explicit slow", crowdProxySrc, s.proxy, []byte(connectHead)},
	}
	out := make([]string, len(kinds))
	var wg sync.WaitGroup
	for k, kind := range kinds {
		var n, ours, failed, longest atomic.Int64
		var slots sync.WaitGroup
		for range 100 {
			slots.Go(func() {
				for ctx.Err() == nil && n.Add(1) <= 20_000 {
					took, err := stall(kind.src, kind.addr, kind.trickle)
					switch {
					case err != nil:
						failed.Add(1)
					case took < 0:
						ours.Add(1)
					}
					for old := longest.Load(); int64(took) > old && !longest.CompareAndSwap(old, int64(took)); old = longest.Load() {
					}
				}
			})
		}
		wg.Go(func() {
			slots.Wait()
			total := min(n.Load(), 20_000)
			if ours.Load() > 0 {
				s.t.Errorf("%s clients: %d of %d were still open after a minute", kind.name, ours.Load(), total)
			}
			out[k] = fmt.Sprintf("%s %d (longest held %v, %d failed to connect)",
				kind.name, total, time.Duration(longest.Load()).Round(100*time.Millisecond), failed.Load())
		})
	}
	wg.Wait()
	return strings.Join(out, "; ")
}

// stall connects from src and sends trickle a byte a second (nothing when
// it is empty) until egressd answers or closes, for at most a minute. It
// returns how long that took, negative when the minute ran out.
func stall(src netip.Addr, addr netip.AddrPort, trickle []byte) (time.Duration, error) {
	c, err := dialSrc(src, addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	start := time.Now()
	buf := make([]byte, 512)
	for i := 0; time.Since(start) < time.Minute; i++ {
		if i < len(trickle) {
			c.Write(trickle[i : i+1]) // an error shows in the read
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(buf); !isTimeout(err) {
			return time.Since(start), nil
		}
	}
	return -1, nil
}

// paced calls fn(0), fn(1), ... at most perSecond times a second and count
// times in all, on at most workers goroutines at once, until ctx ends; a
// tick that finds every worker busy is skipped. It returns how many calls
// it made, once they have all returned.
func paced(ctx context.Context, perSecond float64, count, workers int, fn func(i int)) int {
	tick := time.NewTicker(time.Duration(float64(time.Second) / perSecond))
	defer tick.Stop()
	busy := make(chan struct{}, workers)
	var wg sync.WaitGroup
	defer wg.Wait()
	n := 0
	for n < count {
		select {
		case <-ctx.Done():
			return n
		case <-tick.C:
		}
		select {
		case busy <- struct{}{}:
		default:
			continue
		}
		i := n
		n++
		wg.Go(func() {
			defer func() { <-busy }()
			fn(i)
		})
	}
	return n
}

// ask sends head from src to addr and returns the answer's status code,
// or what went wrong.
func ask(src netip.Addr, addr netip.AddrPort, head, method string) string {
	c, err := dialSrc(src, addr)
	if err != nil {
		return "dial error"
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c, head)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		return "no answer"
	}
	resp.Body.Close()
	return fmt.Sprint(resp.StatusCode)
}

// askAuthed is ask to the proxy with the good user's password in head. A
// 407 is the guard finding no check slot within a second (busy, while
// wrong passwords are hashed): it tries again, up to 5 times, as the good
// clients do.
func (s *soakWorld) askAuthed(src netip.Addr, head, method string) string {
	for try := 0; ; try++ {
		got := ask(src, s.proxy, head, method)
		if got != "407" || try == 5 {
			return got
		}
		s.authRetries.Add(1)
		time.Sleep(100 * time.Millisecond)
	}
}

// connectAs sends a CONNECT to target as the good user from src.
func (s *soakWorld) connectAs(src netip.Addr, target string) string {
	return s.askAuthed(src, fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\nProxy-Authorization: %s\r\n\r\n", target, s.auth), http.MethodConnect)
}

// helloOutcome sends hello from src to an sni listener and says what
// came back: "alert", "relayed" (a server's handshake record), "closed",
// or "no answer" within 30 s.
func helloOutcome(src netip.Addr, addr netip.AddrPort, hello []byte) string {
	c, err := dialSrc(src, addr)
	if err != nil {
		return "dial error"
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	c.Write(hello)
	var b [1]byte
	switch _, err := io.ReadFull(c, b[:]); {
	case isTimeout(err):
		return "no answer"
	case err != nil:
		return "closed"
	case b[0] == 0x15:
		return "alert"
	case b[0] == 0x16:
		return "relayed"
	}
	return fmt.Sprintf("byte %#x", b[0])
}

// tally counts outcomes.
type tally struct {
	mu sync.Mutex
	n  map[string]int
}

func (t *tally) add(outcome string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == nil {
		t.n = make(map[string]int)
	}
	t.n[outcome]++
}

func (t *tally) count(outcome string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n[outcome]
}

// except counts the outcomes other than those given.
func (t *tally) except(want ...string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for k, v := range t.n {
		if !slices.Contains(want, k) {
			n += v
		}
	}
	return n
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(t.n)) {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, t.n[k]))
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
