package quicproxy

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	iquic "github.com/egressd/egressd/internal/quic"
	"github.com/egressd/egressd/internal/quicproxy/quictest"
)

// The tests here try to make a server read a ClientHello, or a second one,
// that egressd did not decide whole: by making egressd's view of a decided
// connection differ from the server's (a datagram egressd read but did not
// pass on), and then having the connection's further Initial packets
// decided again as another connection's.

// connection seals the Initial packets of one client connection.
type connection struct {
	t    testing.TB
	qc   *quictest.Client
	dcid []byte
}

func newConnection(t testing.TB, dcid string) *connection {
	t.Helper()
	qc, err := quictest.NewClient(iquic.Version1, []byte(dcid), []byte("cscid"))
	if err != nil {
		t.Fatal(err)
	}
	return &connection{t: t, qc: qc, dcid: []byte(dcid)}
}

// packet seals an Initial with packet number pn (its low two bytes on the
// wire) carrying frames, padded to padTo bytes.
func (c *connection) packet(pn uint64, frames []byte, padTo int) []byte {
	c.t.Helper()
	c.qc.SetPN(pn)
	p, err := c.qc.Packet(frames, padTo)
	if err != nil {
		c.t.Fatal(err)
	}
	return p
}

// undecryptable is an Initial packet of another connection that does not
// decrypt (its tag is wrong), padded to padTo bytes: servers drop it, and
// so does egressd, with the datagram it is in.
func undecryptable(t testing.TB, padTo int) []byte {
	t.Helper()
	p := newConnection(t, "undecryptable-id").packet(0, []byte{0x01}, padTo)
	p[len(p)-1] ^= 0xff
	return p
}

func hello(t testing.TB, name string) []byte {
	t.Helper()
	h, err := quictest.Hello(name, []byte("cscid"))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// upTo waits until n datagrams came or d passed, and returns how many came.
func (s *sink) upTo(n int, d time.Duration) int {
	deadline := time.After(d)
	for got := 0; ; got++ {
		if got == n {
			return got
		}
		select {
		case <-s.got:
		case <-deadline:
			return got
		}
	}
}

// TestDecidedConnectionNotRechecked: Initial packets of a connection
// already decided on the flow are judged by that connection's keys and
// hello, never decided again as a new connection's, and what egressd
// knows of a connection is what it passed on. Before, a datagram dropped
// after a decided packet in it had opened left egressd with a packet
// number the server never saw; the client's next packets, with small
// packet numbers, no longer opened with the decided keys, were rechecked
// as a new connection with another allowed hello, and filled the hole the
// dropped datagram left in the first hello at the server (which then read
// the first hello's start and the second's end, a hello nobody decided),
// or completed a second hello, after a HelloRetryRequest, half of which
// each of the connection's two key entries had seen. Forgetting the keys
// of the flow's oldest connection had the same effect.
func TestDecidedConnectionNotRechecked(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, nil)
	first := hello(t, allowedName)
	half := len(first) / 2
	ping := []byte{0x01}
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, c *udpClient, conn *connection)
	}{
		{"a packet number the server never saw", func(t *testing.T, c *udpClient, conn *connection) {
			c.send(conn.packet(0, cryptoFrame(0, first[:half]), 1200))
			// The rest of the hello behind a packet number the server
			// would go on from, in a datagram that is dropped.
			rest := conn.packet(40000, cryptoFrame(half, first[half:]), 0)
			c.send(append(rest, undecryptable(t, 1200-len(rest))...))
			if n := sk.count(300 * time.Millisecond); n != 1 {
				t.Fatalf("the server got %d datagrams of the first hello, want its first half only", n)
			}
			c.send(conn.packet(1, cryptoFrame(0, hello(t, otherName)), 1200))
			if n := sk.count(300 * time.Millisecond); n != 0 {
				t.Errorf("the server got %d datagrams of the decided connection with another hello where the first's end is missing", n)
			}
		}},
		{"a second hello across two key entries", func(t *testing.T, c *udpClient, conn *connection) {
			c.send(conn.packet(0, cryptoFrame(0, first), 1200))
			if n := sk.count(300 * time.Millisecond); n != 1 {
				t.Fatalf("the server got %d datagrams of the allowed hello, want 1", n)
			}
			ack := conn.packet(40000, ping, 0)
			c.send(append(ack, undecryptable(t, 1200-len(ack))...))
			second := hello(t, deniedName)
			h := len(second) / 2
			c.send(conn.packet(10000, cryptoFrame(len(first), second[:h]), 1200)) // both ends read 10000
			if n := sk.count(300 * time.Millisecond); n != 1 {
				t.Fatalf("the server got %d datagrams of the second hello's first half, want 1", n)
			}
			c.send(conn.packet(11, cryptoFrame(len(first)+h, second[h:]), 1200))
			c.send(conn.packet(12, cryptoFrame(0, first), 1200)) // the first hello again
			if n := sk.count(300 * time.Millisecond); n != 1 {
				t.Errorf("the server got %d datagrams after the second hello's first half, want 1 (the first hello again): the half that completes a second hello naming %s must be dropped", n, deniedName)
			}
		}},
		{"the keys forgotten", func(t *testing.T, c *udpClient, conn *connection) {
			c.send(conn.packet(0, cryptoFrame(0, first), 1200))
			if n := sk.count(300 * time.Millisecond); n != 1 {
				t.Fatalf("the server got %d datagrams of the allowed hello, want 1", n)
			}
			for i := range maxFlowConnections {
				c.send(initials(t, iquic.Version1, fmt.Appendf(nil, "later-conn-%04d", i), allowedName, 1, uint64(i))...)
				if n := sk.upTo(1, 2*time.Second); n != 1 {
					t.Fatalf("connection %d: the server got %d datagrams, want 1", i, n)
				}
			}
			c.send(conn.packet(1, cryptoFrame(0, hello(t, otherName)), 1200))
			if n := sk.count(300 * time.Millisecond); n != 0 {
				t.Errorf("the server got %d datagrams of the first connection, its keys forgotten, with another hello", n)
			}
		}},
		{"second-hello bytes of a dropped datagram", func(t *testing.T, c *udpClient, conn *connection) {
			// What egressd holds of a second hello is what the server got:
			// bytes of a datagram it dropped bind nothing.
			c.send(conn.packet(0, cryptoFrame(0, first), 1200))
			if n := sk.count(300 * time.Millisecond); n != 1 {
				t.Fatalf("the server got %d datagrams of the allowed hello, want 1", n)
			}
			dropped := hello(t, allowedName)
			h := len(dropped) / 2
			p := conn.packet(1, cryptoFrame(len(first), dropped[:h]), 0)
			c.send(append(p, undecryptable(t, 1200-len(p))...))
			second := hello(t, allowedName) // the same name: other random bytes
			c.send(conn.packet(2, cryptoFrame(len(first), second[:h]), 1200),
				conn.packet(3, cryptoFrame(len(first)+h, second[h:]), 1200))
			if n := sk.count(300 * time.Millisecond); n != 2 {
				t.Errorf("the server got %d datagrams of a second hello naming the same server, want 2", n)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, w.udpClient(), newConnection(t, "decided-"+strings.ReplaceAll(tc.name, " ", "")[:10]))
		})
	}
}

// TestPendingHeldFull: a datagram that an undecided flow cannot hold
// (over its 32 datagrams) is not read for its hello either: decided with
// it, the hello would be one the server never got whole, and the flow's
// next Initial could fill the hole with other bytes. The flow's hello
// stays incomplete, and the flow is refused when client_hello is over.
func TestPendingHeldFull(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, func(p *Params) { p.HelloTimeout = 500 * time.Millisecond })
	c := w.udpClient()
	conn := newConnection(t, "pending-held-full")
	first := hello(t, allowedName)
	half := len(first) / 2
	c.send(conn.packet(0, cryptoFrame(0, first[:half]), 1200))
	junk := bytes.Repeat([]byte{0xc0}, 1200) // a long header, opening nothing
	for range maxHeldPerFlow - 1 {
		c.send(junk)
	}
	c.send(conn.packet(1, cryptoFrame(half, first[half:]), 1200))
	if l := w.line(); l.Action == accesslog.Allow || !strings.Contains(l.Reason, "client_hello timeout") {
		t.Errorf("line %+v; want a deny for the client_hello timeout: the hello's end was never held", l)
	}
	if n := sk.count(100 * time.Millisecond); n != 0 {
		t.Errorf("the server got %d datagrams", n)
	}
	if st := w.s.Stats(); st.Dropped[dropHeldFull] != 1 {
		t.Errorf("Stats().Dropped = %v; want 1 %s", st.Dropped, dropHeldFull)
	}
}

// TestRelayedNotQUIC: on an allowed flow, a datagram that a server on the
// same port could take for another protocol's new session, naming another
// server or none (Google QUIC, whose CHLO names its server in the clear;
// a DTLS ClientHello; a STUN request), is dropped, while QUIC short-header
// packets pass, with the fixed bit set and greased (RFC 9287).
func TestRelayedNotQUIC(t *testing.T) {
	sk := startSink(t)
	w := newWorld(t, sk.addr, nil)
	c := w.udpClient()
	c.send(initials(t, iquic.Version1, []byte("not-quic-decided"), allowedName, 1, 1)...)
	if n := sk.count(300 * time.Millisecond); n != 1 {
		t.Fatalf("the server got %d datagrams of the allowed hello, want 1", n)
	}
	for _, tc := range []struct {
		name   string
		d      []byte
		passes bool
	}{
		{"Google QUIC Q043 CHLO", gquicCHLO(0x09, "Q043", "evil.example"), false},
		{"Google QUIC Q039 CHLO", gquicCHLO(0x09, "Q039", "evil.example"), false},
		{"Google QUIC CHLO, bit 0x40 set", gquicCHLO(0x49, "Q043", "evil.example"), false},
		{"DTLS 1.2 ClientHello", dtlsHello(0xfd), false},
		{"DTLS 1.0 ClientHello", dtlsHello(0xff), false},
		{"STUN binding request", stun(nil), false},
		{"STUN request with attributes", stun([]byte{0x80, 0x22, 0, 4, 't', 'e', 's', 't'}), false},
		{"too short for QUIC", []byte{0x21, 0x12}, false},
		{"short header", append([]byte{0x40}, bytes.Repeat([]byte{0x5a}, 99)...), true},
		{"short header, fixed bit greased", append([]byte{0x21}, bytes.Repeat([]byte{0x5a}, 99)...), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := w.s.Stats().Dropped[dropNotQUIC]
			c.send(tc.d)
			want := 0
			if tc.passes {
				want = 1
			}
			if n := sk.count(200 * time.Millisecond); n != want {
				t.Errorf("the server got %d datagrams, want %d", n, want)
			}
			if got := w.s.Stats().Dropped[dropNotQUIC] - before; got != uint64(1-want) {
				t.Errorf("%d more %s drops, want %d", got, dropNotQUIC, 1-want)
			}
		})
	}
}

// gquicCHLO is a Google QUIC client's first packet (Q043 and before): the
// public flags (0x09: version, 8-byte connection ID, 1-byte packet
// number), connection ID, version tag, packet number, message hash, and a
// STREAM frame on the crypto stream with a CHLO that names sni in the
// clear.
func gquicCHLO(flags byte, version, sni string) []byte {
	d := append([]byte{flags}, "gquiccid"...)
	d = append(d, version...)
	d = append(d, 1)                   // packet number
	d = append(d, make([]byte, 12)...) // FNV-1a hash of the unencrypted packet
	chlo := append([]byte("CHLO\x01\x00\x00\x00SNI\x00"), byte(len(sni)), 0, 0, 0)
	chlo = append(chlo, sni...)
	d = append(d, 0xa0, 0x01, 0, byte(len(chlo))) // STREAM, stream 1, offset 0, data length
	d = append(d, chlo...)
	return append(d, make([]byte, 1350-len(d))...) // PADDING
}

// dtlsHello is a DTLS record of a ClientHello, epoch 0, of record version
// 0xfe minor (0xfd: DTLS 1.2 and 1.3, 0xff: 1.0).
func dtlsHello(minor byte) []byte {
	body := append([]byte{0x01, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 100}, make([]byte, 100)...)
	d := []byte{0x16, 0xfe, minor, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(len(body))}
	return append(d, body...)
}

// stun is a STUN Binding request (RFC 8489) with attrs.
func stun(attrs []byte) []byte {
	d := []byte{0x00, 0x01, 0, byte(len(attrs)), 0x21, 0x12, 0xa4, 0x42}
	d = append(d, "transaction!"...)
	return append(d, attrs...)
}

// TestDecidedConnsBounded: the connections of a flow are remembered up to
// maxDecidedConns; past that, one is forgotten only if none of its Initial
// packets came for forgetAfter, and a new connection is refused otherwise.
func TestDecidedConnsBounded(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name    string
		quiet   time.Duration // since the oldest connection's last Initial
		touched bool          // the oldest had an Initial just now
		room    bool
	}{
		{"recent", forgetAfter / 2, false, false},
		{"quiet for forgetAfter", forgetAfter, false, true},
		{"old but seen just now", 2 * forgetAfter, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newDecidedConns()
			first := c.id(iquic.Version1, []byte("first-connection"))
			if !c.add(first, now.Add(-tc.quiet)) {
				t.Fatal("add(first) = false on an empty set")
			}
			for i := 1; i < maxDecidedConns; i++ {
				if !c.add(c.id(iquic.Version1, fmt.Appendf(nil, "connection-%06d", i)), now) {
					t.Fatalf("add(connection %d) = false below the bound", i)
				}
			}
			if tc.touched && !c.seen(first, now) {
				t.Fatal("seen(first) = false")
			}
			newest := c.id(iquic.Version1, []byte("one-too-many-conn"))
			if got := c.add(newest, now); got != tc.room {
				t.Fatalf("add(connection %d) = %v, want %v", maxDecidedConns+1, got, tc.room)
			}
			if got := c.seen(first, now); got == tc.room {
				t.Errorf("seen(first) = %v after the newest was added %v", got, tc.room)
			}
			if len(c.last) > maxDecidedConns {
				t.Errorf("%d connections remembered, over %d", len(c.last), maxDecidedConns)
			}
			if c.seen(c.id(iquic.Version2, []byte("first-connection")), now) {
				t.Error("the first connection ID in another version taken for the first connection")
			}
		})
	}
}
