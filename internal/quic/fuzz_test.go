package quic

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/egressd/egressd/internal/clienthello"
)

var update = flag.Bool("update", false, "write the fuzz seed corpora in testdata/fuzz again")

// FuzzParseDatagram checks that no datagram makes ParseDatagram, Open or
// the Assembler panic, that the packets tile the datagram from its start as
// views of it, that the datagram is never modified, and that what opens
// reads as frames. The seeds are real packets (the RFC examples, shuffled
// flights, a server's answers), so that mutations reach past the framing:
//
//	go test -run=NONE -fuzz=FuzzParseDatagram -fuzztime=60s ./internal/quic/
func FuzzParseDatagram(f *testing.F) {
	for _, name := range []string{"rfc9001-a2-client-initial", "rfc9369-a2-client-initial"} {
		f.Add(loadHex(f, name))
	}
	f.Add([]byte{0x40, 1, 2, 3})
	f.Fuzz(func(t *testing.T, d []byte) {
		orig := bytes.Clone(d)
		pkts, err := ParseDatagram(d, nil)
		checkTiling(t, d, pkts, err == nil)
		for i := range pkts {
			p := &pkts[i]
			switch p.Type {
			case Initial, ZeroRTT, Handshake:
				if len(p.DCID) > maxCIDLen || len(p.SCID) > maxCIDLen || p.pnOffset > len(p.Raw) || !p.Version.Known() {
					t.Fatalf("packet %d: %v with DCID %d, SCID %d bytes, pn at %d of %d", i, p.Type, len(p.DCID), len(p.SCID), p.pnOffset, len(p.Raw))
				}
			case VersionNegotiation:
				n := 0
				for range p.Versions() {
					n++
				}
				if n != len(p.versions)/4 {
					t.Fatalf("Versions yields %d of %d", n, len(p.versions)/4)
				}
			}
			if p.Type != Initial {
				continue
			}
			keys, err := ClientInitialKeys(p.Version, p.DCID)
			if err != nil {
				t.Fatal(err)
			}
			payload, _, err := keys.Open(nil, p, -1)
			if err != nil {
				continue
			}
			for len(payload) > 0 {
				_, n, err := ReadFrame(payload)
				if err != nil {
					break
				}
				if n <= 0 || n > len(payload) {
					t.Fatalf("ReadFrame read %d of %d bytes", n, len(payload))
				}
				payload = payload[n:]
			}
		}
		var a Assembler
		st, _ := a.AddDatagram(d)
		if st == Complete && (len(a.Hello()) > clienthello.MaxHelloLen || a.Hello()[0] != 1) {
			t.Fatalf("Complete with a %d-byte hello", len(a.Hello()))
		}
		if !bytes.Equal(d, orig) {
			t.Fatal("the datagram was modified")
		}
	})
}

// FuzzAssembler checks the reassembly of the crypto stream against a
// second implementation, refAssembler, which follows the same rules the
// plainest way: they must agree on the status after every packet and on the
// hello. The input is decrypted packet payloads, each a 2-byte length and
// that many bytes of frames (the last one takes what is left), so that the
// fuzzer works on frames, not on ciphertext:
//
//	go test -run=NONE -fuzz=FuzzAssembler -fuzztime=60s ./internal/quic/
func FuzzAssembler(f *testing.F) {
	f.Add(packPayloads(cryptoFrame(0, []byte{1, 0, 0, 2, 3, 3})))
	f.Add(packPayloads(cryptoFrame(4, []byte{3, 3}), []byte{1}, cryptoFrame(0, []byte{1, 0, 0, 2})))
	f.Add(packPayloads(cryptoFrame(0, []byte{1, 0, 0, 2, 3, 3}), cryptoFrame(5, []byte{4})))
	f.Fuzz(func(t *testing.T, in []byte) {
		var a Assembler
		var ref refAssembler
		for i, payload := range unpackPayloads(in) {
			st, _ := a.addFrames(payload)
			ref.add(payload)
			if st != ref.st {
				t.Fatalf("payload %d (%x): Assembler says %v, the reference %v", i, payload, st, ref.st)
			}
		}
		if a.Status() == Complete && !bytes.Equal(a.Hello(), ref.hello()) {
			t.Fatalf("Hello() = %x, the reference %x", a.Hello(), ref.hello())
		}
	})
}

// packPayloads and unpackPayloads are FuzzAssembler's input format.
func packPayloads(payloads ...[]byte) []byte {
	var out []byte
	for _, p := range payloads {
		out = binary.BigEndian.AppendUint16(out, uint16(len(p)))
		out = append(out, p...)
	}
	return out
}

func unpackPayloads(in []byte) [][]byte {
	var out [][]byte
	for len(in) >= 2 {
		n := min(int(binary.BigEndian.Uint16(in)), len(in)-2)
		out = append(out, in[2:2+n])
		in = in[2+n:]
	}
	return out
}

// refAssembler is the Assembler's reassembly written the plainest way: one
// byte at a time into a map, checked after every frame.
type refAssembler struct {
	st    Status
	bytes map[uint64]byte
	end   uint64 // the hello's length with its header, 0 until known
}

func (r *refAssembler) add(payload []byte) {
	if r.st != NeedMore {
		return
	}
	if r.bytes == nil {
		r.bytes = map[uint64]byte{}
	}
	if len(payload) == 0 {
		r.st = Invalid
		return
	}
	for len(payload) > 0 {
		f, n, err := ReadFrame(payload)
		if err != nil || f.Type == FrameConnectionClose {
			r.st = Invalid
			return
		}
		payload = payload[n:]
		if f.Type != FrameCrypto {
			continue
		}
		limit := uint64(clienthello.MaxHelloLen)
		if r.end > 0 {
			limit = r.end
		}
		for i, c := range f.Data {
			off := f.Offset + uint64(i)
			if off >= limit {
				break
			}
			if old, ok := r.bytes[off]; ok && old != c {
				r.st = Invalid
				return
			}
			r.bytes[off] = c
		}
		typ, ok := r.bytes[0]
		if ok && typ != 1 {
			r.st = Invalid
			return
		}
		if r.end == 0 && r.known(4) {
			r.end = 4 + (uint64(r.bytes[1])<<16 | uint64(r.bytes[2])<<8 | uint64(r.bytes[3]))
			if r.end > clienthello.MaxHelloLen {
				r.st = Invalid
				return
			}
			for off := range r.bytes {
				if off >= r.end {
					delete(r.bytes, off)
				}
			}
		}
	}
	if r.end > 0 && r.known(r.end) {
		r.st = Complete
	}
}

// known reports whether bytes [0, n) are all in.
func (r *refAssembler) known(n uint64) bool {
	for off := range n {
		if _, ok := r.bytes[off]; !ok {
			return false
		}
	}
	return true
}

func (r *refAssembler) hello() []byte {
	out := make([]byte, r.end)
	for off := range r.end {
		out[off] = r.bytes[off]
	}
	return out
}

// TestWriteSeeds writes the seed corpora in testdata/fuzz with -update:
// flights built from real crypto/tls QUIC hellos, which differ every run.
func TestWriteSeeds(t *testing.T) {
	if !*update {
		t.Skip("run with -update to write the seed corpora again")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	hello := quicHello(t, "seed.example", tls.X25519)
	pq := quicHello(t, "pq-seed.example")
	for i := range 4 {
		h := [][]byte{hello, pq}[i%2]
		for j, d := range shuffledFlight(t, rng, h) {
			writeSeed(t, "FuzzParseDatagram", fmt.Sprintf("flight-%d-%d", i, j), d.b)
		}
		// The same crypto stream as plaintext payloads, for FuzzAssembler.
		var payloads [][]byte
		for off := 0; off < len(h); off += 400 {
			payloads = append(payloads, cat(cryptoFrame(uint64(off), h[off:min(off+400, len(h))]), []byte{1, 0, 0}))
		}
		rng.Shuffle(len(payloads), func(a, b int) { payloads[a], payloads[b] = payloads[b], payloads[a] })
		writeSeed(t, "FuzzAssembler", fmt.Sprintf("hello-%d", i), packPayloads(payloads...))
	}
	closePkt, err := AppendClose(nil, Version2, rfcDCID, []byte{1, 2}, CodeAccessDenied, "denied")
	if err != nil {
		t.Fatal(err)
	}
	writeSeed(t, "FuzzParseDatagram", "server-close-v2", closePkt)
	writeSeed(t, "FuzzParseDatagram", "version-negotiation",
		cat(longHeader(0x80, 0, []byte{1}, []byte{2, 3}), []byte{0, 0, 0, 1, 0x6b, 0x33, 0x43, 0xcf}))
	writeSeed(t, "FuzzParseDatagram", "retry-v1",
		unhex(t, "ff000000010008f067a5502a4262b5746f6b656e04a265ba2eff4d829058fb3f0f2496ba"))
	writeSeed(t, "FuzzAssembler", "acks-and-close", packPayloads(
		[]byte{2, 20, 0, 2, 1, 3, 4, 1, 2, 3, 1, 0, 0, 1, 7, 8, 9}, closeFrame(0x0a, "bye")))
}

func writeSeed(t *testing.T, target, name string, b []byte) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	seed := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
	if err := os.WriteFile(filepath.Join(dir, "seed-"+name), []byte(seed), 0o644); err != nil {
		t.Fatal(err)
	}
}
