package quicproxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/egressd/egressd/internal/accesslog"
	iquic "github.com/egressd/egressd/internal/quic"
	"github.com/egressd/egressd/internal/quicproxy/quictest"
)

// TestAllowed: a real QUIC client (quic-go) reaches a real server through
// the listener, a 1 MiB echo comes back intact, and the flow's line counts
// it once the flow is idle; with UDP GSO and without.
func TestAllowed(t *testing.T) {
	for _, tc := range []struct {
		v     quic.Version
		noGSO bool // send datagram by datagram, as without UDP_SEGMENT
	}{{quic.Version1, false}, {quic.Version2, false}, {quic.Version1, true}} {
		name := iquic.Version(tc.v).String()
		if tc.noGSO {
			name += " without GSO"
		}
		t.Run(name, func(t *testing.T) {
			v := tc.v
			srv := startEchoServer(t, false)
			w := newWorld(t, srv.addr, nil)
			w.s.noGSO.Store(tc.noGSO)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := w.dial(ctx, allowedName, &quic.Config{Versions: []quic.Version{v}})
			if err != nil {
				t.Fatalf("dial through the listener: %v", err)
			}
			const size = 1 << 20
			sent, got := echo(t, ctx, conn, size)
			if sent != got {
				t.Errorf("echo of %d bytes: sha256 %x came back as %x", size, sent, got)
			}
			conn.CloseWithError(0, "")
			l := w.line()
			if l.Action != accesslog.Allow || l.Protocol != "quic" || l.FQDN != allowedName || l.FQDNSource != accesslog.FromSNI ||
				l.Rule != "allowed" || l.Dst != srv.addr || l.BytesUp < size || l.BytesDown < size ||
				l.PacketsUp < size/1500 || l.PacketsDown < size/1500 || !strings.HasSuffix(l.Reason, "; closed: idle timeout") {
				t.Errorf("line %+v; want an allow of %s to %v with over %d bytes each way, ended idle", l, allowedName, srv.addr, size)
			}
			if len(l.ALPN) != 1 || l.ALPN[0] != "echo" {
				t.Errorf("alpn %q, want [echo]", l.ALPN)
			}
			t.Logf("%d bytes, %d datagrams up; %d bytes, %d datagrams down", l.BytesUp, l.PacketsUp, l.BytesDown, l.PacketsDown)
		})
	}
}

// echo writes size random bytes on a new stream and reads them back,
// returning the sha256 of both.
func echo(t *testing.T, ctx context.Context, conn *quic.Conn, size int) (sent, got [32]byte) {
	t.Helper()
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(data)
	go func() { st.Write(data); st.Close() }()
	back, err := io.ReadAll(st)
	if err != nil {
		t.Fatalf("read the echo: %v (after %d bytes)", err, len(back))
	}
	return sha256.Sum256(data), sha256.Sum256(back)
}

// TestDenied: a denied name gets CONNECTION_CLOSE with access_denied at
// once (quic-go reports the remote CRYPTO_ERROR 0x131), nothing reaches
// the server, and the flow has one deny line.
func TestDenied(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := w.dial(ctx, deniedName, nil)
	elapsed := time.Since(start)
	var te *quic.TransportError
	if !errors.As(err, &te) || !te.Remote || te.ErrorCode != iquic.CodeAccessDenied {
		t.Fatalf("dial %s: %v; want the remote transport error 0x131", deniedName, err)
	}
	if !strings.Contains(err.Error(), `denied by rule "denied"`) {
		t.Errorf("client error %q does not carry the reason phrase", err)
	}
	t.Logf("client refused after %v: %v", elapsed.Round(time.Microsecond), err)
	l := w.line()
	if l.Action != accesslog.Deny || l.FQDN != deniedName || l.Rule != "denied" || l.Protocol != "quic" || !l.Enforced {
		t.Errorf("line %+v; want a deny of %s by rule denied", l, deniedName)
	}
	if n := sk.count(300 * time.Millisecond); n != 0 {
		t.Errorf("the server got %d datagrams of a denied flow", n)
	}
	w.noLine(300 * time.Millisecond) // retransmissions are not logged again
	if st := w.s.Stats(); st.Closes == 0 {
		t.Errorf("Stats().Closes = 0, want the close counted")
	}
}

// TestDeniedDrop: with deny: drop the client hears nothing and times out.
func TestDeniedDrop(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, func(p *Params) { p.Drop = true })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := w.dial(ctx, deniedName, &quic.Config{HandshakeIdleTimeout: 700 * time.Millisecond})
	var idle *quic.IdleTimeoutError
	if !errors.As(err, &idle) {
		t.Errorf("dial %s with deny: drop: %v; want a handshake timeout", deniedName, err)
	}
	if l := w.line(); l.Action != accesslog.Deny || l.FQDN != deniedName {
		t.Errorf("line %+v; want a deny", l)
	}
	if st := w.s.Stats(); st.Closes != 0 || st.Dropped[dropDenied] == 0 {
		t.Errorf("Stats() = %+v; want no close sent and the datagrams dropped as denied", st)
	}
	if n := sk.count(100 * time.Millisecond); n != 0 {
		t.Errorf("the server got %d datagrams of a denied flow", n)
	}
}

// TestSplitShuffled: a ClientHello split over three Initial packets with
// its CRYPTO frames shuffled is read and decided, in both versions: an
// allowed name reaches a real server (which answers with its ServerHello),
// a denied one gets the CONNECTION_CLOSE.
func TestSplitShuffled(t *testing.T) {
	srv := startEchoServer(t, false)
	w := newWorld(t, srv.addr, nil)
	for i, v := range []iquic.Version{iquic.Version1, iquic.Version2} {
		for _, name := range []string{allowedName, deniedName} {
			t.Run(v.String()+" "+name, func(t *testing.T) {
				dcid := []byte("split-dcid-" + string(rune('a'+i)) + name[:1])
				c := w.udpClient()
				ds := initials(t, v, dcid, name, 3, uint64(i))
				c.send(ds...)
				// The server may acknowledge a first datagram on its own
				// before it answers the hello: read on.
				var frames []iquic.Frame
				for range 5 {
					answer := c.recv(5 * time.Second)
					if answer == nil {
						t.Fatal("no answer within 5s")
					}
					f, err := quictest.ReadServerInitial(v, dcid, answer)
					if err != nil {
						t.Fatalf("answer: %v", err)
					}
					if frames = append(frames, f...); name != allowedName || hasServerHello(frames) {
						break
					}
				}
				switch name {
				case allowedName:
					if !hasServerHello(frames) {
						t.Errorf("answer frames %+v; want the server's ServerHello", frames)
					}
				case deniedName:
					if len(frames) == 0 || frames[0].Type != iquic.FrameConnectionClose || frames[0].ErrorCode != iquic.CodeAccessDenied {
						t.Errorf("answer frames %+v; want CONNECTION_CLOSE 0x131", frames)
					}
				}
				if l := w.line(); l.FQDN != name || (l.Action == accesslog.Allow) != (name == allowedName) {
					t.Errorf("line %+v; want %s decided by its rule", l, name)
				}
			})
		}
	}
}

func initials(t testing.TB, v iquic.Version, dcid []byte, name string, n int, seed uint64) [][]byte {
	t.Helper()
	scid := []byte("cscid")
	hello, err := quictest.Hello(name, scid)
	if err != nil {
		t.Fatal(err)
	}
	c, err := quictest.NewClient(v, dcid, scid)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := c.Initials(hello, n, rand.New(rand.NewPCG(seed, 7)))
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

func hasServerHello(frames []iquic.Frame) bool {
	for _, f := range frames {
		if f.Type == iquic.FrameCrypto && f.Offset == 0 && len(f.Data) > 0 && f.Data[0] == 2 {
			return true
		}
	}
	return false
}

// TestRetry: a server that validates addresses answers the first Initial
// with a Retry; the client's new Initial, under keys of the new connection
// ID, carries its hello again, is decided again and passes.
func TestRetry(t *testing.T) {
	srv := startEchoServer(t, true)
	w := newWorld(t, srv.addr, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := w.dial(ctx, allowedName, nil)
	if err != nil {
		t.Fatalf("dial through the listener to a server that sends Retry: %v", err)
	}
	if sent, got := echo(t, ctx, conn, 64<<10); sent != got {
		t.Error("echo after a Retry came back different")
	}
	conn.CloseWithError(0, "")
	if l := w.line(); l.Action != accesslog.Allow || l.FQDN != allowedName {
		t.Errorf("line %+v; want one allow", l)
	}
}

// TestVersionNegotiation: a client that starts in QUIC v2 with a server
// that speaks only v1 gets the server's Version Negotiation packet through
// the flow, and its new v1 connection on the same flow is decided and
// passes.
func TestVersionNegotiation(t *testing.T) {
	srv := startEchoServer(t, false, quic.Version1)
	w := newWorld(t, srv.addr, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := w.dial(ctx, allowedName, &quic.Config{Versions: []quic.Version{quic.Version2, quic.Version1}})
	if err != nil {
		t.Fatalf("dial in v2 to a v1 server through the listener: %v", err)
	}
	if got := conn.ConnectionState().Version; got != quic.Version1 {
		t.Errorf("negotiated %v, want v1", got)
	}
	if sent, got := echo(t, ctx, conn, 64<<10); sent != got {
		t.Error("echo after version negotiation came back different")
	}
	conn.CloseWithError(0, "")
	if l := w.line(); l.Action != accesslog.Allow || l.FQDN != allowedName {
		t.Errorf("line %+v; want one allow", l)
	}
}

// TestSecondConnection: on the address and port of an allowed flow, a
// second connection (an Initial no decided connection's keys open) is
// held until its own hello is decided. One naming a denied server never
// reaches the server and is refused with a line of its own; one naming
// another allowed name on the same server passes; and the first
// connection's packets still pass.
func TestSecondConnection(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, nil)
	c := w.udpClient()
	first := initials(t, iquic.Version1, []byte("first-connection"), allowedName, 2, 1)
	c.send(first...)
	if n := sk.count(300 * time.Millisecond); n != 2 {
		t.Fatalf("the server got %d datagrams of the allowed connection, want 2", n)
	}

	dcid := []byte("bypass-attempt-1")
	c.send(initials(t, iquic.Version1, dcid, deniedName, 2, 2)...)
	if answer := c.recv(2 * time.Second); answer == nil {
		t.Error("no answer to the denied second connection")
	} else if frames, err := quictest.ReadServerInitial(iquic.Version1, dcid, answer); err != nil || len(frames) == 0 ||
		frames[0].Type != iquic.FrameConnectionClose || frames[0].ErrorCode != iquic.CodeAccessDenied {
		t.Errorf("answer to the second connection: %+v, %v; want CONNECTION_CLOSE 0x131", frames, err)
	}
	if n := sk.count(300 * time.Millisecond); n != 0 {
		t.Errorf("the server got %d datagrams of a second connection naming a denied server", n)
	}
	if l := w.line(); l.Action != accesslog.Deny || l.FQDN != deniedName || !strings.Contains(l.Reason, "on a flow allowed for \"allowed.test\"") {
		t.Errorf("line %+v; want a deny of the second connection", l)
	}

	c.send(initials(t, iquic.Version1, []byte("third-connection"), otherName, 2, 3)...)
	if n := sk.count(300 * time.Millisecond); n != 2 {
		t.Errorf("the server got %d datagrams of a connection to another allowed name, want 2", n)
	}
	c.send(first[0]) // a retransmission of the first connection
	if n := sk.count(300 * time.Millisecond); n != 1 {
		t.Errorf("the server got %d datagrams of the first connection's retransmission, want 1", n)
	}
	if l := w.line(); l.Action != accesslog.Allow || l.FQDN != allowedName || !strings.Contains(l.Reason, `another connection on this flow named "other.test"`) {
		t.Errorf("flow line %+v; want the allow, noting the other name", l)
	}
}

// TestDeniedFlowGivesPlaceBack: a denied flow, which holds no socket
// towards a server, gives its place in the connection budget back as soon
// as it is denied, though it stays to answer the client's retransmissions:
// kept, spoofed Initials with a denied name filled the budget TCP
// connections share. An allowed flow keeps its place until it ends.
func TestDeniedFlowGivesPlaceBack(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, nil)
	c := w.udpClient()
	c.send(initials(t, iquic.Version1, []byte("denied-connectio"), deniedName, 1, 1)...)
	if l := w.line(); l.Action != accesslog.Deny {
		t.Fatalf("line %+v, want a deny", l)
	}
	if n := w.admitted.Load(); n != 0 {
		t.Errorf("a denied flow holds %d places, want 0", n)
	}
	c2 := w.udpClient()
	c2.send(initials(t, iquic.Version1, []byte("allowed-connecti"), allowedName, 1, 2)...)
	if n := sk.count(300 * time.Millisecond); n != 1 {
		t.Fatalf("the server got %d datagrams of the allowed flow, want 1", n)
	}
	if n := w.admitted.Load(); n != 1 {
		t.Errorf("an allowed flow and a denied one hold %d places, want 1", n)
	}
}

// TestOtherNamesNotedBounded: a flow's line notes the names of other
// connections on it, a few of them: a client starting connection after
// connection on one socket does not grow the line without end.
func TestOtherNamesNotedBounded(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, nil)
	c := w.udpClient()
	c.send(initials(t, iquic.Version1, []byte("first-connection"), allowedName, 1, 1)...)
	if n := sk.count(300 * time.Millisecond); n != 1 {
		t.Fatalf("the server got %d datagrams of the allowed connection, want 1", n)
	}
	for i := range 10 {
		c.send(initials(t, iquic.Version1, fmt.Appendf(nil, "other-connect-%02d", i), otherName, 1, uint64(2+i))...)
		if n := sk.count(300 * time.Millisecond); n != 1 {
			t.Fatalf("connection %d to another allowed name: the server got %d datagrams, want 1", i, n)
		}
	}
	c.send(initials(t, iquic.Version1, []byte("first-connection"), allowedName, 1, 1)...) // ends nothing; the line comes at the flow's end
	l := w.line()
	if n := strings.Count(l.Reason, "another connection on this flow named"); n != maxOtherNotes || !strings.Contains(l.Reason, "more connections on this flow") {
		t.Errorf("flow line reason notes %d other connections (want %d, then one note for the rest): %q", n, maxOtherNotes, l.Reason)
	}
}

// TestCoalescedBehindDecided: a datagram that coalesces an Initial of
// the flow's decided connection with one of a new connection is held for
// the new one, and the new one's hello is what is decided: taking the
// decided connection's packet for the new one decided its allowed hello
// again and forwarded the datagram, the denied hello behind it included,
// each time the client sent it (a note on the line each time too).
func TestCoalescedBehindDecided(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, nil)
	c := w.udpClient()
	scid := []byte("cscid")
	// packet seals one Initial of hello, whole in one CRYPTO frame.
	packet := func(dcid []byte, hello []byte, padTo int) []byte {
		t.Helper()
		qc, err := quictest.NewClient(iquic.Version1, dcid, scid)
		if err != nil {
			t.Fatal(err)
		}
		frame := append([]byte{0x06, 0x00, 0x40 | byte(len(hello)>>8), byte(len(hello))}, hello...)
		p, err := qc.Packet(frame, padTo)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	allowed, err := quictest.Hello(allowedName, scid)
	if err != nil {
		t.Fatal(err)
	}
	denied, err := quictest.Hello(deniedName, scid)
	if err != nil {
		t.Fatal(err)
	}
	first := packet([]byte("first-connection"), allowed, 1200)
	c.send(first)
	if n := sk.count(300 * time.Millisecond); n != 1 {
		t.Fatalf("the server got %d datagrams of the allowed connection, want 1", n)
	}
	dcid := []byte("coalesced-behind")
	again := packet([]byte("first-connection"), allowed[:100], 0) // a retransmission's first piece
	behind := packet(dcid, denied, 1200-len(again))
	for range 3 {
		c.send(append(bytes.Clone(again), behind...))
		if answer := c.recv(2 * time.Second); answer == nil {
			t.Fatal("no answer to the denied connection behind the decided one's packet")
		} else if frames, err := quictest.ReadServerInitial(iquic.Version1, dcid, answer); err != nil || len(frames) == 0 ||
			frames[0].Type != iquic.FrameConnectionClose || frames[0].ErrorCode != iquic.CodeAccessDenied {
			t.Fatalf("answer: %+v, %v; want CONNECTION_CLOSE 0x131 to the coalesced connection", frames, err)
		}
		if n := sk.count(300 * time.Millisecond); n != 0 {
			t.Fatalf("the server got %d datagrams holding a denied connection's hello", n)
		}
	}
}

// TestHeldUntilDecided: no datagram of a flow leaves before its decision,
// however many the client sends meanwhile; then all go, in order.
func TestHeldUntilDecided(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, nil)
	gate := make(chan struct{})
	w.mu.Lock()
	w.gate = gate
	w.mu.Unlock()
	c := w.udpClient()
	ds := initials(t, iquic.Version1, []byte("held-connection1"), allowedName, 3, 4)
	c.send(ds...)
	c.send(ds[0], ds[1]) // retransmissions
	if n := sk.count(300 * time.Millisecond); n != 0 {
		t.Fatalf("the server got %d datagrams before the decision", n)
	}
	close(gate)
	var got [][]byte
	for range 5 {
		select {
		case d := <-sk.got:
			got = append(got, d)
		case <-time.After(2 * time.Second):
			t.Fatalf("the server got %d datagrams after the decision, want 5", len(got))
		}
	}
	for i, want := range append(ds, ds[0], ds[1]) {
		if !bytes.Equal(got[i], want) {
			t.Errorf("datagram %d is not the client's %d-th, verbatim", i, i)
		}
	}
}

// TestDropped: what is not a QUIC Initial of a known version opens no
// flow, is never relayed, and is counted.
func TestDropped(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, nil)
	c := w.udpClient()
	short := append([]byte{0x40}, make([]byte, 1200)...)                                             // a 1-RTT packet after a migration
	unknown := append([]byte{0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 4, 1, 2, 3, 4, 0}, make([]byte, 1200)...) // a grease version
	garbage := append([]byte{0xc0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0x41, 0}, make([]byte, 1200)...)
	c.send(short, unknown, garbage)
	if n := sk.count(300 * time.Millisecond); n != 0 {
		t.Errorf("the server got %d datagrams", n)
	}
	st := w.s.Stats()
	if st.Dropped[dropNotInitial] != 1 || st.Dropped[dropUnknownVersion] != 1 || st.Dropped[dropMalformed] != 1 || st.Flows != 0 {
		t.Errorf("Stats() = %+v; want one not_initial, one unknown_version, one malformed, no flow", st)
	}
	w.noLine(100 * time.Millisecond)
}

// TestHelloTimeout: a flow whose hello never completes is refused after
// client_hello with a line, and what it sent is dropped.
func TestHelloTimeout(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, func(p *Params) { p.HelloTimeout = 300 * time.Millisecond })
	c := w.udpClient()
	c.send(initials(t, iquic.Version1, []byte("slow-connection1"), allowedName, 3, 5)[0])
	l := w.line()
	if l.Action != accesslog.Deny || !l.Enforced || !strings.Contains(l.Reason, "client_hello timeout") {
		t.Errorf("line %+v; want a deny for the client_hello timeout", l)
	}
	if n := sk.count(100 * time.Millisecond); n != 0 {
		t.Errorf("the server got %d datagrams of an undecided flow", n)
	}
}

// TestLimits: a source over its flows gets no new one.
func TestLimits(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, func(p *Params) { p.MaxFlowsPerSource = 1 })
	w.udpClient().send(initials(t, iquic.Version1, []byte("flow-one-0000001"), allowedName, 1, 6)...)
	w.udpClient().send(initials(t, iquic.Version1, []byte("flow-two-0000002"), allowedName, 1, 7)...)
	if n := sk.count(300 * time.Millisecond); n != 1 {
		t.Errorf("the server got %d datagrams, want the first flow's only", n)
	}
	if st := w.s.Stats(); st.Dropped[dropLimit] != 1 || st.Flows != 1 {
		t.Errorf("Stats() = %+v; want one datagram over the limit, one flow", st)
	}
}

// TestPendingPerSource: one address whose flows never finish their hello
// holds three quarters of the pending flows (3 of 4), and a client from
// another address still starts its flow.
func TestPendingPerSource(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, func(p *Params) { p.MaxPending = 4 })
	for i := range 4 {
		first := initials(t, iquic.Version1, []byte(fmt.Sprintf("unfinished-%06d", i)), allowedName, 2, uint64(10+i))
		w.udpClientFrom(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}).send(first[0]) // half a hello
	}
	deadline := time.Now().Add(5 * time.Second)
	for st := w.s.Stats(); st.Pending+int(st.Dropped[dropLimit]) < 4 && time.Now().Before(deadline); st = w.s.Stats() {
		time.Sleep(5 * time.Millisecond)
	}
	if st := w.s.Stats(); st.Pending != 3 || st.Dropped[dropLimit] != 1 {
		t.Errorf("Stats() = %+v; want 3 pending flows of one address and the 4th dropped", st)
	}
	w.udpClientFrom(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}).send(initials(t, iquic.Version1, []byte("other-address-01"), allowedName, 1, 20)...)
	if n := sk.count(300 * time.Millisecond); n != 1 {
		t.Errorf("the server got %d datagrams from another address, want its flow's 1", n)
	}
}

// TestHeldBytesPerSource: one address that opens many flows and fills each
// with junk long-header datagrams holds at most three quarters of what
// may be held in all; another address's first Initial is still held, and
// its flow decided and relayed.
func TestHeldBytesPerSource(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, func(p *Params) {
		p.MaxPending, p.MaxFlowsPerSource, p.MaxFlows, p.HelloTimeout = 100000, 0, 100000, time.Minute
	})
	first := initials(t, iquic.Version1, []byte("held-bytes-000001"), allowedName, 2, 30)[0] // half a hello: the flow stays pending
	junk := bytes.Repeat([]byte{0xc0}, maxDatagram)                                          // a long header, opening nothing
	for range maxHeldBytes/maxHeldBytesPerFlow + 16 {
		c := w.udpClientFrom(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		c.send(first)
		for range maxHeldPerFlow - 1 {
			c.send(junk)
		}
		time.Sleep(200 * time.Microsecond) // within the socket's buffer
	}
	// Until what is held stops growing.
	for last := int64(-1); w.s.held.Load() != last; {
		last = w.s.held.Load()
		time.Sleep(50 * time.Millisecond)
	}
	if h := int(w.s.held.Load()); h > maxHeldBytesPerSource || h < maxHeldBytesPerSource/2 {
		t.Fatalf("one address holds %d bytes, want some, but at most its %d (%+v)", h, maxHeldBytesPerSource, w.s.Stats())
	}
	w.udpClientFrom(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}).send(initials(t, iquic.Version1, []byte("other-address-02"), allowedName, 1, 31)...)
	if n := sk.count(time.Second); n != 1 {
		t.Errorf("the server got %d datagrams from another address, want its flow's 1", n)
	}
}

// TestSameConnectionOtherHello: after a connection was allowed, Initial
// packets of the same connection (its connection ID, so its keys) that
// carry another ClientHello, naming a denied server, never reach the
// server: the keys of a decided connection open its packets, and its
// CRYPTO bytes must be the hello that was decided. A retransmission of
// the decided hello still passes.
func TestSameConnectionOtherHello(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, nil)
	c := w.udpClient()
	dcid := []byte("one-connection-id")
	first := initials(t, iquic.Version1, dcid, allowedName, 2, 1)
	c.send(first...)
	if n := sk.count(300 * time.Millisecond); n != 2 {
		t.Fatalf("the server got %d datagrams of the allowed connection, want 2", n)
	}
	c.send(initials(t, iquic.Version1, dcid, deniedName, 2, 2)...)
	if n := sk.count(300 * time.Millisecond); n != 0 {
		t.Errorf("the server got %d datagrams of the same connection naming %s", n, deniedName)
	}
	if st := w.s.Stats(); st.Dropped[dropChangedHello] != 2 {
		t.Errorf("Stats().Dropped = %v; want 2 %s", st.Dropped, dropChangedHello)
	}
	c.send(first[1]) // a retransmission
	if n := sk.count(300 * time.Millisecond); n != 1 {
		t.Errorf("the server got %d datagrams of the decided hello's retransmission, want 1", n)
	}
	if l := w.line(); l.Action != accesslog.Allow || l.FQDN != allowedName || !strings.Contains(l.Reason, "other ClientHello bytes") {
		t.Errorf("flow line %+v; want the allow, noting the changed hello", l)
	}
}

// cryptoFrame is a CRYPTO frame of data at off (both under 16 KiB: two-byte
// variable-length integers).
func cryptoFrame(off int, data []byte) []byte {
	return append([]byte{0x06, 0x40 | byte(off>>8), byte(off), 0x40 | byte(len(data)>>8), byte(len(data))}, data...)
}

// TestShortInitial: a client Initial in a datagram under 1200 bytes, which
// servers discard (RFC 9000 §14.1), is not decided: a hello allowed there
// and never seen by the server would leave a padded Initial of the same
// connection, with another hello, to pass on the first one's decision.
func TestShortInitial(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, nil)
	c := w.udpClient()
	scid := []byte("cscid")
	hello, err := quictest.Hello(allowedName, scid)
	if err != nil {
		t.Fatal(err)
	}
	qc, err := quictest.NewClient(iquic.Version1, []byte("short-initial-id"), scid)
	if err != nil {
		t.Fatal(err)
	}
	// The hello in two CRYPTO frames, each in an unpadded Initial.
	half := len(hello) / 2
	for _, part := range []struct {
		off  int
		data []byte
	}{{0, hello[:half]}, {half, hello[half:]}} {
		short, err := qc.Packet(cryptoFrame(part.off, part.data), 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(short) >= 1200 {
			t.Fatalf("the short Initial is %d bytes", len(short))
		}
		c.send(short)
	}
	if n := sk.count(300 * time.Millisecond); n != 0 {
		t.Errorf("the server got %d datagrams of short Initials", n)
	}
	w.noLine(300 * time.Millisecond)
	if st := w.s.Stats(); st.Dropped[dropShortInitial] != 2 {
		t.Errorf("Stats().Dropped = %v; want 2 %s", st.Dropped, dropShortInitial)
	}
}

// TestSecondHelloOverQUIC: after a decided hello, the CRYPTO stream's
// next bytes are a second ClientHello (after a HelloRetryRequest). One
// that names a denied server never reaches the server whole: the packet
// that would complete it is dropped (changed_hello), whole or in two
// packets, as is a packet with other bytes where some came before. One
// that names the first's server passes.
func TestSecondHelloOverQUIC(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, nil)
	scid := []byte("cscid")
	first, err := quictest.Hello(allowedName, scid)
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		second string
		parts  int
		passes int // datagrams of the second hello the server gets
	}{
		{deniedName, 1, 0},
		{deniedName, 2, 1}, // the first half passes: the server never holds the hello whole
		{allowedName, 1, 1},
		{allowedName, 2, 2},
	} {
		t.Run(fmt.Sprintf("%s in %d", tc.second, tc.parts), func(t *testing.T) {
			c := w.udpClient()
			qc, err := quictest.NewClient(iquic.Version1, []byte(fmt.Sprintf("second-hello-%d", i)), scid)
			if err != nil {
				t.Fatal(err)
			}
			ds, err := qc.Initials(first, 2, rand.New(rand.NewPCG(uint64(i), 3)))
			if err != nil {
				t.Fatal(err)
			}
			c.send(ds...)
			if n := sk.count(300 * time.Millisecond); n != 2 {
				t.Fatalf("the server got %d datagrams of the allowed hello, want 2", n)
			}
			second, err := quictest.Hello(tc.second, scid)
			if err != nil {
				t.Fatal(err)
			}
			cut := len(second) / tc.parts
			for p := range tc.parts {
				data := second[p*cut:]
				if p < tc.parts-1 {
					data = second[p*cut : (p+1)*cut]
				}
				pkt, err := qc.Packet(cryptoFrame(len(first)+p*cut, data), 1200)
				if err != nil {
					t.Fatal(err)
				}
				c.send(pkt)
			}
			if n := sk.count(300 * time.Millisecond); n != tc.passes {
				t.Errorf("the server got %d datagrams of the second hello, want %d", n, tc.passes)
			}
			if tc.second == deniedName && tc.parts == 2 {
				// Other bytes where the first half came: dropped too.
				other := bytes.Repeat([]byte{'x'}, cut)
				pkt, _ := qc.Packet(cryptoFrame(len(first), other), 1200)
				c.send(pkt)
				if n := sk.count(300 * time.Millisecond); n != 0 {
					t.Errorf("the server got %d datagrams rewriting bytes it had", n)
				}
			}
		})
	}
}

// TestHelloRetryOverQUIC: a real quic-go client whose key share the
// server does not take (it offers P-256 only) sends a second hello after
// the server's HelloRetryRequest: it names the same server, passes, and
// the connection echoes.
func TestHelloRetryOverQUIC(t *testing.T) {
	srv := startEchoServerCurves(t, false, []tls.CurveID{tls.CurveP256})
	w := newWorld(t, srv.addr, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := w.dial(ctx, allowedName, nil)
	if err != nil {
		t.Fatalf("dial through the listener: %v", err)
	}
	if !conn.ConnectionState().TLS.HelloRetryRequest {
		t.Error("the server asked for no second hello: the test proves nothing")
	}
	if sent, got := echo(t, ctx, conn, 64<<10); sent != got {
		t.Errorf("echo: sha256 %x came back as %x", sent, got)
	}
	conn.CloseWithError(0, "")
	if st := w.s.Stats(); st.Dropped[dropChangedHello] != 0 {
		t.Errorf("Stats().Dropped = %v: the second hello was taken for a changed one", st.Dropped)
	}
}

// TestFlowConnectionsBounded: connection after connection decided on one
// flow (one client socket) keeps the keys of the last maxFlowConnections
// only, and the newest still passes.
func TestFlowConnectionsBounded(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, nil)
	c := w.udpClient()
	n := maxFlowConnections + 8
	for i := range n {
		c.send(initials(t, iquic.Version1, []byte(fmt.Sprintf("conn-%02d-on-one-flow", i)), allowedName, 1, uint64(i))...)
		if got := sk.count(100 * time.Millisecond); got != 1 {
			t.Fatalf("connection %d: the server got %d datagrams, want 1", i, got)
		}
	}
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	for _, f := range w.s.flows {
		f.mu.Lock()
		keys := len(f.relay.keys)
		f.mu.Unlock()
		if keys != maxFlowConnections {
			t.Errorf("a flow of %d connections keeps %d connections' keys, want %d", n, keys, maxFlowConnections)
		}
	}
}
