package quic

import (
	"bytes"
	"crypto/tls"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/egressd/egressd/internal/clienthello"
)

// TestAssemblerShuffled is the property that the issue asks for: a real
// ClientHello, cut into CRYPTO frames at random offsets, some repeated or
// overlapping, shuffled with PING and PADDING among them, in 1 to 4 Initial
// packets of v1 or v2 (two of them sometimes coalesced in one datagram),
// the datagrams themselves shuffled, reassembles to the same bytes and the
// same server name — and the Assembler says Complete exactly when the last
// missing byte arrives.
func TestAssemblerShuffled(t *testing.T) {
	hellos := []struct {
		name  string
		hello []byte
	}{
		{"pq.example", quicHello(t, "pq.example")},                                      // X25519MLKEM768: two packets at least
		{"small.example", quicHello(t, "small.example", tls.X25519)},                    // fits one packet
		{"xn--bcher-kva.example", quicHello(t, "xn--bcher-kva.example", tls.CurveP256)}, // another size
	}
	if n := len(hellos[0].hello); n < 1200 {
		t.Fatalf("post-quantum hello of %d bytes; want one that needs two packets", n)
	}
	seed := uint64(rand.Uint32())
	t.Logf("seed %d", seed)
	var flights [6]int // by packets in the flight
	defer func() { t.Logf("flights of 1, 2, 3, 4, 5+ packets: %d", flights[1:]) }()
	for i := range 300 {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		h := hellos[i%len(hellos)]
		datagrams := shuffledFlight(t, rng, h.hello)
		packets := 0
		for _, d := range datagrams {
			pkts, _ := ParseDatagram(d.b, nil)
			packets += len(pkts)
		}
		flights[min(packets, 5)]++
		var a Assembler
		covered := make([]bool, len(h.hello))
		for j, d := range datagrams {
			orig := bytes.Clone(d.b)
			st, err := a.AddDatagram(d.b)
			for _, r := range d.ranges {
				for k := r[0]; k < r[1]; k++ {
					covered[k] = true
				}
			}
			want := NeedMore
			if !slices.Contains(covered, false) {
				want = Complete
			}
			if err != nil || st != want {
				t.Fatalf("case %d (seed %d): datagram %d of %d: AddDatagram = %v, %v; want %v, nil", i, seed, j+1, len(datagrams), st, err, want)
			}
			if !bytes.Equal(d.b, orig) {
				t.Fatalf("case %d: AddDatagram modified datagram %d", i, j+1)
			}
		}
		if a.Status() != Complete || !bytes.Equal(a.Hello(), h.hello) {
			t.Fatalf("case %d (seed %d): %d datagrams: status %v, hello of %d bytes; want Complete, the %d-byte hello",
				i, seed, len(datagrams), a.Status(), len(a.Hello()), len(h.hello))
		}
		var info clienthello.Info
		if !clienthello.Parse(a.Hello(), &info) || string(info.ServerName) != h.name {
			t.Fatalf("case %d: clienthello.Parse server name %q, want %q", i, info.ServerName, h.name)
		}
	}
}

// flightDatagram is a datagram of a flight, and the ranges of the hello
// that its CRYPTO frames carry.
type flightDatagram struct {
	b      []byte
	ranges [][2]int
}

// flightFrame is a frame, and the range of the hello it carries if it is a
// CRYPTO frame.
type flightFrame struct {
	b      []byte
	ranges [][2]int
}

// shuffledFlight returns datagrams carrying hello as a client such as
// Chromium might send it: see TestAssemblerShuffled.
func shuffledFlight(t *testing.T, rng *rand.Rand, hello []byte) []flightDatagram {
	const maxChunk = 900 // so that every frame fits a packet
	var cuts []int
	for n := rng.IntN(12); n > 0; n-- {
		cuts = append(cuts, 1+rng.IntN(len(hello)-1))
	}
	for off := maxChunk; off < len(hello); off += maxChunk {
		cuts = append(cuts, off)
	}
	cuts = append(cuts, 0, len(hello))
	slices.Sort(cuts)
	var frames []flightFrame
	crypto := func(from, to int) {
		frames = append(frames, flightFrame{cryptoFrame(uint64(from), hello[from:to]), [][2]int{{from, to}}})
	}
	for k := 0; k+1 < len(cuts); k++ {
		if cuts[k] < cuts[k+1] {
			crypto(cuts[k], cuts[k+1])
		}
	}
	for n := rng.IntN(4); n > 0; n-- { // repeated or overlapping ranges, same bytes
		from := rng.IntN(len(hello))
		crypto(from, min(len(hello), from+1+rng.IntN(maxChunk)))
	}
	for n := rng.IntN(5); n > 0; n-- {
		frames = append(frames, flightFrame{b: []byte{byte(FramePing)}})
	}
	for n := rng.IntN(5); n > 0; n-- {
		frames = append(frames, flightFrame{b: make([]byte, 1+rng.IntN(30))})
	}
	rng.Shuffle(len(frames), func(i, j int) { frames[i], frames[j] = frames[j], frames[i] })

	// Into packets of at most 1100 bytes of frames, 1 to 4 of them when the
	// frames allow it.
	want := 1 + rng.IntN(4)
	total := 0
	for _, f := range frames {
		total += len(f.b)
	}
	per := total/want + 1
	var payloads []flightFrame
	var cur flightFrame
	for _, f := range frames {
		if len(cur.b) > 0 && (len(cur.b)+len(f.b) > 1100 || len(cur.b) >= per) {
			payloads = append(payloads, cur)
			cur = flightFrame{}
		}
		cur.b = append(cur.b, f.b...)
		cur.ranges = append(cur.ranges, f.ranges...)
	}
	payloads = append(payloads, cur)

	v := []Version{Version1, Version2}[rng.IntN(2)]
	dcid := randBytes(rng, 8+rng.IntN(13))
	scid := randBytes(rng, rng.IntN(21))
	c := newClient(t, v, dcid, scid)
	var datagrams []flightDatagram
	for k := 0; k < len(payloads); k++ {
		p := payloads[k]
		if k+1 < len(payloads) && len(p.b)+len(payloads[k+1].b) < 1000 && rng.IntN(2) == 0 {
			q := payloads[k+1]
			first := c.packet(p.b, 1+rng.IntN(4), 0) // coalesced, unpadded: the next pads the datagram
			second := c.packet(q.b, 1+rng.IntN(4), 1200-len(first))
			datagrams = append(datagrams, flightDatagram{cat(first, second), append(p.ranges, q.ranges...)})
			k++
			continue
		}
		datagrams = append(datagrams, flightDatagram{c.packet(p.b, 1+rng.IntN(4), 1200), p.ranges})
	}
	rng.Shuffle(len(datagrams), func(i, j int) { datagrams[i], datagrams[j] = datagrams[j], datagrams[i] })
	return datagrams
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// TestAssemblerStatus walks the Assembler through packets one at a time:
// each step gives a datagram and the status and error it must produce.
func TestAssemblerStatus(t *testing.T) {
	hello := quicHello(t, "steps.example", tls.X25519)
	dcid, scid := []byte("dcid-123"), []byte("scid")
	type step struct {
		d       func(c *client) []byte
		want    Status
		wantErr string
	}
	pkt := func(frames ...[]byte) func(c *client) []byte {
		return func(c *client) []byte { return c.packet(cat(frames...), 2, 1200) }
	}
	whole := cryptoFrame(0, hello)
	tests := []struct {
		name  string
		steps []step
	}{
		{"one packet", []step{{pkt(whole), Complete, ""}}},
		{"complete stays complete", []step{{pkt(whole), Complete, ""}, {pkt([]byte{1}), Complete, ""}}},
		{"header last", []step{
			{pkt(cryptoFrame(4, hello[4:])), NeedMore, ""},
			{pkt(cryptoFrame(0, hello[:3])), NeedMore, ""},
			{pkt(cryptoFrame(3, hello[3:4])), Complete, ""}}},
		{"overlap with the same bytes", []step{
			{pkt(cryptoFrame(0, hello[:100])), NeedMore, ""},
			{pkt(cryptoFrame(50, hello[50:])), Complete, ""}}},
		{"bytes past the hello ignored", []step{
			{pkt(cryptoFrame(uint64(len(hello)), []byte("next message")), cryptoFrame(0, hello[:10])), NeedMore, ""},
			{pkt(cryptoFrame(10, append(bytes.Clone(hello[10:]), 0xff))), Complete, ""}}},
		{"data beyond the cap ignored", []step{
			{pkt(cryptoFrame(1<<40, []byte("far"))), NeedMore, ""},
			{pkt(whole), Complete, ""}}},
		{"overlap with other bytes", []step{
			{pkt(cryptoFrame(0, hello[:100])), NeedMore, ""},
			{pkt(cryptoFrame(99, []byte{hello[99] ^ 1})), Invalid, "differently"}}},
		{"invalid stays invalid", []step{
			{pkt([]byte{0x08, 0, 0}), Invalid, "in an Initial"},
			{pkt(whole), Invalid, ""}}},
		{"not a client hello", []step{{pkt(cryptoFrame(0, []byte{2})), Invalid, "not client_hello"}}},
		{"hello over the cap", []step{{pkt(cryptoFrame(0, []byte{1, 0, 0x40, 0})), Invalid, "over the 16384-byte cap"}}},
		{"hello at the cap", []step{
			{pkt(cryptoFrame(0, []byte{1, 0, 0x3f, 0xfc})), NeedMore, ""},
			{pkt(cryptoFrame(clienthello.MaxHelloLen-1, []byte{0})), NeedMore, ""}}},
		{"client closes", []step{{pkt(closeFrame(0x0a, "gave up")), Invalid, "client closed"}}},
		{"no frames", []step{{func(c *client) []byte { return c.packet(nil, 4, 0) }, Invalid, "without frames"}}},
		{"reserved bits", []step{{func(c *client) []byte { return sealWithFirstByte(t, c, 0x04) }, Invalid, "reserved bits"}}},
		{"tag failure dropped", []step{
			{func(c *client) []byte { d := pkt(whole)(c); d[len(d)-1] ^= 1; return d }, NeedMore, "authentication failed"},
			{pkt(whole), Complete, ""}}},
		{"another connection dropped", []step{
			{pkt(cryptoFrame(0, hello[:10])), NeedMore, ""},
			{func(*client) []byte { return newClient(t, Version1, []byte("other-id"), scid).packet(whole, 2, 1200) }, NeedMore, "another connection"},
			{func(*client) []byte { return newClient(t, Version2, dcid, scid).packet(whole, 2, 1200) }, NeedMore, "another connection"},
			{func(*client) []byte { return newClient(t, Version1, dcid, nil).packet(whole, 2, 1200) }, NeedMore, "another connection"},
			{pkt(cryptoFrame(10, hello[10:])), Complete, ""}}},
		{"short DCID dropped", []step{
			{func(*client) []byte { return newClient(t, Version1, []byte("short"), scid).packet(whole, 2, 1200) }, NeedMore, "under 8"}}},
		{"no initial", []step{
			{func(c *client) []byte {
				return cat(longHeader(0xe0, Version1, dcid, scid), []byte{0x40, 0x20}, make([]byte, 0x20))
			}, NeedMore, "no Initial packet"}}},
		{"unknown version", []step{
			{func(c *client) []byte { return cat(longHeader(0xc0, 0x1a2a3a4a, dcid, scid), make([]byte, 1200)) }, NeedMore, "UnknownVersion"}}},
		{"initial and handshake coalesced", []step{
			{func(c *client) []byte {
				return cat(c.packet(whole, 1, 0), longHeader(0xe0, Version1, dcid, scid), []byte{0x40, 0x20}, make([]byte, 0x20))
			}, Complete, ""}}},
		// A client coalesces at most one packet per number space: a
		// datagram of many Initials is not read (each would cost a key
		// derivation and an open).
		{"too many packets coalesced", []step{
			{func(c *client) []byte {
				var d []byte
				for range MaxCoalesced + 1 {
					d = append(d, c.packet(cryptoFrame(0, hello[:10]), 1, 0)...)
				}
				return d
			}, NeedMore, "long-header packets in one datagram"},
			{pkt(whole), Complete, ""}}},
		{"malformed after an initial", []step{
			{func(c *client) []byte { return cat(c.packet(whole, 1, 0), []byte{0xc0, 0}) }, Complete, "long header truncated"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(t, Version1, dcid, scid)
			var a Assembler
			for i, s := range tt.steps {
				st, err := a.AddDatagram(s.d(c))
				if st != s.want || (err == nil) != (s.wantErr == "") || err != nil && !strings.Contains(err.Error(), s.wantErr) {
					t.Fatalf("step %d: AddDatagram = %v, %v; want %v, error containing %q", i+1, st, err, s.want, s.wantErr)
				}
			}
			if a.Status() == Complete && !bytes.Equal(a.Hello(), hello) {
				t.Errorf("Hello() = %x, want %x", a.Hello(), hello)
			}
			if a.Status() != Complete && a.Hello() != nil {
				t.Errorf("Hello() = %x before Complete, want nil", a.Hello())
			}
		})
	}
}

func TestAssemblerAllocs(t *testing.T) {
	d := loadHex(t, "rfc9001-a2-client-initial")
	var a Assembler
	if st, err := a.AddDatagram(d); st != Complete || err != nil {
		t.Fatalf("AddDatagram = %v, %v", st, err)
	}
	// Once the keys are derived and the buffers grown, a packet costs
	// nothing: reuse an Assembler's buffers for a flow's later packets.
	keys, p := a.keys, mustParse(t, d)
	scratch := make([]byte, 0, 2048)
	if n := testing.AllocsPerRun(100, func() { scratch, _, _ = keys.Open(scratch[:0], p, -1) }); n != 0 {
		t.Errorf("Open allocates %v times per packet, want 0", n)
	}
}

func mustParse(t testing.TB, d []byte) *Packet {
	t.Helper()
	pkts, err := ParseDatagram(d, nil)
	if err != nil || len(pkts) == 0 {
		t.Fatalf("ParseDatagram = %v, %v", pkts, err)
	}
	return &pkts[0]
}
