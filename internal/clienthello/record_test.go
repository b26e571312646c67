package clienthello

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// framings re-frame a one-record hello the ways a client or middlebox may
// fragment it (RFC 8446 §5.1). Random sizes use a fixed seed.
var framings = []struct {
	name string
	size func() func() int
}{
	{"1-byte", func() func() int { return fixedSize(1) }},
	{"7-byte", func() func() int { return fixedSize(7) }},
	{"random", func() func() int {
		r := rand.New(rand.NewPCG(1, 2))
		return func() int { return 1 + r.IntN(600) }
	}},
}

func TestReassembleFramings(t *testing.T) {
	for _, fx := range fixtures {
		raw := loadFixture(t, fx.name)
		want, _, _ := Reassemble(raw, nil)
		for _, fr := range framings {
			t.Run(fx.name+"/"+fr.name, func(t *testing.T) {
				split := reframe(t, raw, fr.size())
				msg, used, st := Reassemble(split, make([]byte, 0, MaxHelloLen))
				if st != Complete || used != len(split) || !bytes.Equal(msg, want) {
					t.Fatalf("Reassemble(%d bytes) = %d bytes, %d, %v; want the %d-byte hello, %d, Complete",
						len(split), len(msg), used, st, len(want), len(split))
				}
				var info Info
				Examine(split, nil, &info)
				if diff := cmp.Diff(fx.want, view(info)); diff != "" {
					t.Errorf("Examine(%s) info mismatch (-want +got):\n%s", fr.name, diff)
				}
			})
		}
	}
}

// TestReassembleByteByByte feeds each hello as a client trickling one byte
// per segment would: every proper prefix is NeedMore, the whole is Complete.
func TestReassembleByteByByte(t *testing.T) {
	for _, fx := range fixtures {
		for _, split := range []bool{false, true} {
			raw := loadFixture(t, fx.name)
			name := fx.name + "/one-record"
			if split {
				raw, name = reframe(t, raw, fixedSize(7)), fx.name+"/7-byte"
			}
			t.Run(name, func(t *testing.T) {
				for i := range len(raw) {
					if _, _, st := Reassemble(raw[:i], nil); st != NeedMore {
						t.Fatalf("Reassemble(raw[:%d] of %d) = %v, want NeedMore", i, len(raw), st)
					}
				}
				var info Info
				if used, st := Examine(raw, nil, &info); st != Complete || used != len(raw) {
					t.Fatalf("Examine(all %d) = %d, %v, want %d, Complete", len(raw), used, st, len(raw))
				}
				if diff := cmp.Diff(fx.want, view(info)); diff != "" {
					t.Errorf("Examine info mismatch (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestReassembleStatus(t *testing.T) {
	msg := hello(exts(sni("example.com")))
	v := uint16(0x0301)
	warn := rec(21, 0x0303, []byte{1, 112}) // warning unrecognized_name
	ccs := rec(20, 0x0303, []byte{1})
	tests := []struct {
		name     string
		raw      []byte
		want     Status
		wantUsed int
	}{
		{"empty", nil, NeedMore, 0},
		{"type byte only", []byte{22}, NeedMore, 0},
		{"partial header", []byte{22, 3, 1, 0}, NeedMore, 0},
		{"partial record", rec(22, v, msg)[:20], NeedMore, 0},
		{"header of the second record missing", rec(22, v, msg[:10]), NeedMore, 0},
		{"handshake header split", cat(rec(22, v, msg[:2]), rec(22, v, msg[2:3])), NeedMore, 0},
		{"one record", rec(22, v, msg), Complete, len(msg) + 5},
		{"record version 0x0303", rec(22, 0x0303, msg), Complete, len(msg) + 5},
		{"two records", cat(rec(22, v, msg[:9]), rec(22, 0x0303, msg[9:])), Complete, len(msg) + 10},
		{"garbage after", cat(rec(22, v, msg), []byte("GET / garbage")), Complete, len(msg) + 5},
		{"early data after", cat(rec(22, v, msg), rec(23, 0x0303, []byte("early"))), Complete, len(msg) + 5},
		{"more handshake in the record", rec(22, v, cat(msg, []byte{11, 0, 0})), Complete, len(msg) + 8},
		{"warning alert first", cat(warn, rec(22, v, msg)), Complete, len(msg) + 12},
		{"change_cipher_spec first", cat(ccs, rec(22, v, msg)), Complete, len(msg) + 11},
		{"four leading records, hello in two", cat(ccs, warn, warn, ccs, rec(22, v, msg[:9]), rec(22, v, msg[9:])),
			Complete, len(msg) + 36},
		{"alert first, nothing after", warn, NeedMore, 0},
		{"alert first, partial", warn[:6], NeedMore, 0},
		{"change_cipher_spec type byte only", []byte{20}, NeedMore, 0},
		{"alert in version 0.x, partial", []byte{21, 0, 0, 0}, NeedMore, 0},

		{"http", []byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"), NotTLS, 0},
		{"ssh", []byte("SSH-2.0-OpenSSH_9.6\r\n"), NotTLS, 0},
		{"sslv2 hello", []byte{0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15}, NotTLS, 0},
		{"alert type byte, then text", []byte{21, 'A'}, NotTLS, 0},
		{"application data type byte, then text", []byte{23, 'A', 'B'}, NotTLS, 0},
		{"alert in version 0x1000", rec(21, 0x1000, []byte{1, 0}), NotTLS, 0},
		{"3-byte alert in version 0.0", rec(21, 0x0000, []byte{1, 0, 0}), NotTLS, 0},
		{"2-byte change_cipher_spec in version 0.0", rec(20, 0x0000, []byte{1, 0}), NotTLS, 0},
		{"application data in version 0.0", rec(23, 0x0000, []byte{1, 0}), NotTLS, 0},
		{"http first byte only", []byte("G"), NotTLS, 0},

		{"record version 0x0200", rec(22, 0x0200, msg), Invalid, 0},
		{"record version major 2, partial", []byte{22, 2}, NeedMore, 0},
		{"record version major 2, a hello's first byte", []byte{22, 2, 0, 0, 5, 1}, Invalid, 0},
		// A length-prefixed binary message of 22 bytes (MySQL, MongoDB)
		// whose first byte is a handshake record's type: not a client's
		// first TLS message, so not TLS.
		{"22-byte MySQL query", []byte("\x16\x00\x00\x00\x03SELECT @@tx_isolation"), NotTLS, 0},
		{"major 2, handshake type 2", rec(22, 0x0200, []byte{2, 0, 0, 1, 0}), NotTLS, 0},
		{"record length over 2^14+2048", []byte{22, 3, 1, 0x48, 0x01}, Invalid, 0},
		{"record past MaxHelloLen", []byte{22, 3, 1, 0x3f, 0xfc}, Invalid, 0},
		{"later record past MaxHelloLen", cat(rec(22, v, msg[:9]), []byte{22, 3, 1, 0x3f, 0xf7}), Invalid, 0},
		{"zero-length record", cat(rec(22, v, nil), rec(22, v, msg)), Invalid, 0},
		{"handshake type 2", rec(22, v, []byte{2, 0, 0, 1, 0}), Invalid, 0},
		{"handshake type 2, first byte", rec(22, v, []byte{2}), Invalid, 0},
		{"message over MaxHelloLen", rec(22, v, []byte{1, 0, 0x40, 0x01}), Invalid, 0},
		{"application data inside", cat(rec(22, v, msg[:9]), rec(23, v, msg[9:])), Invalid, 0},
		{"change_cipher_spec inside", cat(rec(22, v, msg[:9]), rec(20, v, []byte{1}), rec(22, v, msg[9:])), Invalid, 0},
		{"warning alert inside", cat(rec(22, v, msg[:9]), rec(21, v, []byte{1, 0}), rec(22, v, msg[9:])), Invalid, 0},
		{"bad version inside", cat(rec(22, v, msg[:9]), rec(22, 0x0200, msg[9:])), Invalid, 0},
		{"five leading records", cat(ccs, warn, warn, ccs, warn, rec(22, v, msg)), Invalid, 0},
		{"application data first", cat(rec(23, v, []byte("early")), rec(22, v, msg)), Invalid, 0},
		{"application data after an alert", cat(warn, rec(23, v, []byte("early")), rec(22, v, msg)), Invalid, 0},
		{"application data header after an alert", cat(warn, []byte{23}), Invalid, 0},
		{"alert in version 0.0", cat(rec(21, 0x0000, []byte{1, 0}), rec(22, v, msg)), Invalid, 0},
		{"change_cipher_spec in version 1.3", cat(rec(20, 0x0103, []byte{1}), rec(22, v, msg)), Invalid, 0},
		{"second alert in version 2.0", cat(warn, rec(21, 0x0200, []byte{1, 0}), rec(22, v, msg)), Invalid, 0},
		{"3-byte alert", cat(rec(21, v, []byte{1, 0, 0}), rec(22, v, msg)), Invalid, 0},
		{"empty alert", cat(rec(21, v, nil), rec(22, v, msg)), Invalid, 0},
		{"change_cipher_spec of 2", cat(rec(20, v, []byte{2}), rec(22, v, msg)), Invalid, 0},
		{"2-byte change_cipher_spec", cat(rec(20, v, []byte{1, 1}), rec(22, v, msg)), Invalid, 0},
		{"server hello after an alert", cat(warn, rec(22, v, []byte{2, 0, 0, 1, 0})), Invalid, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, used, st := Reassemble(tt.raw, nil)
			if st != tt.want || used != tt.wantUsed {
				t.Errorf("Reassemble(%q) = %d, %v, want %d, %v", tt.raw, used, st, tt.wantUsed, tt.want)
			}
		})
	}
}

// TestReassembleBuffers checks where msg lives: in raw for one record,
// in scratch otherwise, with no allocation either way.
func TestReassembleBuffers(t *testing.T) {
	raw := loadFixture(t, "go-default")
	split := reframe(t, raw, fixedSize(7))
	scratch := make([]byte, 0, MaxHelloLen)
	if msg, _, _ := Reassemble(raw, scratch); &msg[0] != &raw[recordHeaderLen] {
		t.Errorf("Reassemble(one record) copied the message, want a subslice of raw")
	}
	if msg, _, _ := Reassemble(split, scratch); &msg[0] != &scratch[:1][0] {
		t.Errorf("Reassemble(7-byte records) did not reuse scratch")
	}
	for name, in := range map[string][]byte{"one record": raw, "7-byte records": split} {
		if n := testing.AllocsPerRun(10, func() { Reassemble(in, scratch) }); n != 0 {
			t.Errorf("Reassemble(%s) allocates %v times, want 0", name, n)
		}
	}
}

func TestRecordVersion(t *testing.T) {
	tests := []struct {
		raw  []byte
		want uint16
	}{
		{nil, 0},
		{[]byte{22, 3}, 0},
		{[]byte{22, 3, 1}, 0x0301},
		{[]byte{22, 3, 3, 0, 1, 1}, 0x0303},
		{[]byte("GET / HTTP/1.1"), 0},
		{[]byte{21, 3, 3}, 0x0303},
		{cat(rec(21, 0x0303, []byte{1, 0}), []byte{22, 3}), 0x0303},
		{cat(rec(21, 0x0303, []byte{1, 0}), rec(20, 0x0302, []byte{1}), []byte{22, 3, 1}), 0x0301},
		{cat(rec(23, 0x0302, []byte("early")), []byte{22, 3, 1}), 0x0302},
	}
	for _, tt := range tests {
		if got := RecordVersion(tt.raw); got != tt.want {
			t.Errorf("RecordVersion(%q) = %#04x, want %#04x", tt.raw, got, tt.want)
		}
	}
}

func TestExamine(t *testing.T) {
	tests := []struct {
		name string
		raw  []byte
		want Status
	}{
		{"parses", rec(22, 0x0301, hello(exts(sni("example.com")))), Complete},
		{"incomplete", rec(22, 0x0301, hello(exts(sni("example.com"))))[:30], NeedMore},
		{"not tls", []byte("SSH-2.0-x\r\n"), NotTLS},
		{"complete but malformed", rec(22, 0x0301, hello(exts(sni("a"), sni("b")))), Invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var info Info
			if _, st := Examine(tt.raw, nil, &info); st != tt.want {
				t.Errorf("Examine(%q) = %v, want %v", tt.raw, st, tt.want)
			}
		})
	}
}

func BenchmarkReassembleParse(b *testing.B) {
	raw := loadFixture(b, "go-default")
	for _, bb := range []struct {
		name string
		raw  []byte
	}{
		{"one-record", raw},
		{"7-byte-records", reframe(b, raw, fixedSize(7))},
	} {
		b.Run(bb.name, func(b *testing.B) {
			scratch := make([]byte, 0, MaxHelloLen)
			var info Info
			b.ReportAllocs()
			b.SetBytes(int64(len(bb.raw)))
			for b.Loop() {
				msg, _, st := Reassemble(bb.raw, scratch)
				if st != Complete || !Parse(msg, &info) {
					b.Fatal("not a hello")
				}
			}
		})
	}
}
