package quicproxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/fqdn"
	"github.com/egressd/egressd/internal/listener"
	"github.com/egressd/egressd/internal/policy"
)

// world is a UDP listener on 127.0.0.1 with a small policy, deciding the
// way the gateway does for a transparent listener whose destination is
// the name's (here: dsts by name, or the default upstream). On loopback
// without TPROXY the original destination is the listener's own address.
type world struct {
	t      testing.TB
	s      *Server
	addr   netip.AddrPort
	params Params
	// upstream is where allowed names go unless dsts names another.
	upstream netip.AddrPort
	dsts     map[string]netip.AddrPort
	// admitted counts the places Config.Admit has given and not had back.
	admitted atomic.Int64

	mu      sync.Mutex
	lines   []accesslog.Record
	linesCh chan struct{}
	// gate, when set (under mu), holds every decision until it is closed.
	gate chan struct{}
}

const (
	allowedName = "allowed.test"
	otherName   = "other.test" // allowed too
	deniedName  = "denied.test"
)

func newWorld(t testing.TB, upstream netip.AddrPort, tweak func(*Params)) *world {
	t.Helper()
	pol, err := policy.Compile([]policy.Rule{
		{Name: "allowed", Action: policy.Allow, FQDN: []string{allowedName, otherName}, Protocols: []string{"quic"}},
		{Name: "denied", Action: policy.Deny, FQDN: []string{deniedName}},
	}, policy.Deny)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := listener.ListenUDP(context.Background(), netip.MustParseAddrPort("127.0.0.1:0"), listener.Options{})
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, upstream: upstream, dsts: map[string]netip.AddrPort{}, linesCh: make(chan struct{}, 1024),
		params: Params{Listener: "udp", HelloTimeout: 2 * time.Second, Idle: 500 * time.Millisecond, Enforce: true}}
	if tweak != nil {
		tweak(&w.params)
	}
	w.s = New(Config{
		Conn:   conn,
		Log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		Params: func() Params { return w.params },
		Decide: func(ctx context.Context, rec *accesslog.Record, h *Hello) Verdict {
			w.mu.Lock()
			gate := w.gate
			w.mu.Unlock()
			if gate != nil {
				<-gate
			}
			name, ok := fqdn.Normalize(string(h.Info.ServerName))
			if ok {
				rec.FQDN, rec.FQDNSource = name, accesslog.FromSNI
			}
			rec.ALPN = h.Info.ALPN.Strings()
			dst, ok := w.dsts[name]
			if !ok {
				dst = w.upstream
			}
			d := pol.Decide(policy.Input{Src: h.Src.Addr(), FQDN: name, Protocol: accesslog.ProtocolQUIC, Port: dst.Port(), Dst: dst.Addr()})
			rec.Rule, rec.Reason, rec.Dst = d.Rule, d.Reason, dst
			rec.Action = accesslog.Deny
			if d.Action == policy.Allow {
				rec.Action = accesslog.Allow
			}
			return Verdict{Allow: d.Action == policy.Allow, Dst: dst}
		},
		Admit: func(netip.Addr) (func(), bool) {
			w.admitted.Add(1)
			return func() { w.admitted.Add(-1) }, true
		},
		Logged: func(rec *accesslog.Record) {
			w.mu.Lock()
			w.lines = append(w.lines, *rec)
			w.mu.Unlock()
			w.linesCh <- struct{}{}
		},
	})
	w.addr = w.s.Addr()
	done := make(chan struct{})
	go func() { w.s.Serve(); close(done) }()
	t.Cleanup(func() {
		w.s.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return within 10s of Close")
		}
	})
	return w
}

// line waits for the next access-log line.
func (w *world) line() accesslog.Record {
	w.t.Helper()
	select {
	case <-w.linesCh:
	case <-time.After(10 * time.Second):
		w.t.Fatal("no access-log line within 10s")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lines[len(w.lines)-1]
}

// noLine checks that no line comes within d.
func (w *world) noLine(d time.Duration) {
	w.t.Helper()
	select {
	case <-w.linesCh:
		w.mu.Lock()
		defer w.mu.Unlock()
		w.t.Errorf("unexpected access-log line: %+v", w.lines[len(w.lines)-1])
	case <-time.After(d):
	}
}

// echoServer is a quic-go server that echoes every stream.
type echoServer struct {
	addr netip.AddrPort
	tr   *quic.Transport
}

func startEchoServer(t *testing.T, retry bool, versions ...quic.Version) *echoServer {
	t.Helper()
	return startEchoServerCurves(t, retry, nil, versions...)
}

// startEchoServerCurves is startEchoServer whose TLS offers only curves
// (nil: crypto/tls's default): P-256 alone makes crypto/tls clients retry.
func startEchoServerCurves(t *testing.T, retry bool, curves []tls.CurveID, versions ...quic.Version) *echoServer {
	t.Helper()
	if versions == nil {
		versions = []quic.Version{quic.Version1, quic.Version2}
	}
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: pc}
	if retry {
		tr.VerifySourceAddress = func(net.Addr) bool { return true }
	}
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{testCert(t)}, NextProtos: []string{"echo", "h3"}, CurvePreferences: curves},
		&quic.Config{Versions: versions})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); tr.Close() })
	go func() {
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				for {
					st, err := c.AcceptStream(context.Background())
					if err != nil {
						return
					}
					go func() { io.Copy(st, st); st.Close() }()
				}
			}()
		}
	}()
	return &echoServer{addr: pc.LocalAddr().(*net.UDPAddr).AddrPort(), tr: tr}
}

func testCert(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{allowedName, otherName, deniedName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// dial opens a quic-go connection to name through the listener, from its
// own socket.
func (w *world) dial(ctx context.Context, name string, conf *quic.Config) (*quic.Conn, error) {
	if conf == nil {
		conf = &quic.Config{}
	}
	return quic.DialAddr(ctx, w.addr.String(), &tls.Config{ServerName: name, InsecureSkipVerify: true, NextProtos: []string{"echo"}}, conf)
}

// sink is a UDP socket standing for a server: it keeps what reaches it
// and answers nothing.
type sink struct {
	pc   *net.UDPConn
	addr netip.AddrPort
	got  chan []byte
}

func startSink(t *testing.T) *sink {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	s := &sink{pc: pc, addr: pc.LocalAddr().(*net.UDPAddr).AddrPort(), got: make(chan []byte, 1024)}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := pc.Read(buf)
			if err != nil {
				return
			}
			s.got <- append([]byte(nil), buf[:n]...)
		}
	}()
	return s
}

// count drains what the sink got within d.
func (s *sink) count(d time.Duration) int {
	n := 0
	deadline := time.After(d)
	for {
		select {
		case <-s.got:
			n++
		case <-deadline:
			return n
		}
	}
}

// udpClient is a plain UDP socket of a client that sends packets built by
// quictest.
type udpClient struct {
	t  testing.TB
	pc *net.UDPConn
}

func (w *world) udpClient() *udpClient {
	w.t.Helper()
	return w.udpClientFrom(nil)
}

// udpClientFrom is udpClient from the local address laddr (nil: any).
func (w *world) udpClientFrom(laddr *net.UDPAddr) *udpClient {
	w.t.Helper()
	pc, err := net.DialUDP("udp4", laddr, net.UDPAddrFromAddrPort(w.addr))
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { pc.Close() })
	return &udpClient{t: w.t, pc: pc}
}

func (c *udpClient) send(ds ...[]byte) {
	c.t.Helper()
	for _, d := range ds {
		if _, err := c.pc.Write(d); err != nil {
			c.t.Fatal(err)
		}
	}
}

// recv returns the next datagram within d, nil if none came.
func (c *udpClient) recv(d time.Duration) []byte {
	buf := make([]byte, 65536)
	c.pc.SetReadDeadline(time.Now().Add(d))
	n, err := c.pc.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}
