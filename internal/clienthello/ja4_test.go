package clienthello

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"
)

// The documented example of FoxIO's JA4 specification (technical_details/
// JA4.md): a Chrome hello whose sorted lists are these, fingerprinted as
// t13d1516h2_8daaf6152771_e5627efa2ab1. The hellos below send them in
// another order, with GREASE mixed in.
var (
	docSuites = []uint16{0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8,
		0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035}
	docSigAlgs = []uint16{0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601}
)

const (
	docJA4     = "t13d1516h2_8daaf6152771_e5627efa2ab1"
	docJA4Hash = "e5627efa2ab1" // the c part, which SNI and ALPN do not enter
)

// docExts returns the example's extensions in Chrome's style: GREASE first
// and last, the rest shuffled; without server_name and ALPN, which the
// caller adds.
func docExts(extra ...ext) []ext {
	es := []ext{{0x1a1a, nil}}
	es = append(es, extra...)
	return append(es,
		ext{0x0023, nil}, ext{0x0033, []byte{0, 0}}, ext{0x4469, nil}, ext{0x002d, []byte{1, 1}},
		ext{0x000b, []byte{1, 0}}, ext{0x0017, nil}, sigAlgs(docSigAlgs...), ext{0x0012, nil},
		ext{0x001b, []byte{2, 0, 2}}, ext{0x0005, []byte{1, 0, 0, 0, 0}}, ext{0x000a, []byte{0, 2, 0, 0x1d}},
		ext{0xff01, []byte{0}}, versions(0x7a7a, 0x0304, 0x0303), ext{0x0015, make([]byte, 7)},
		ext{0x4a4a, []byte{0}})
}

func TestJA4(t *testing.T) {
	withGREASE := append([]uint16{0x0a0a}, docSuites...)
	many := make([]uint16, 150)
	for i := range many {
		many[i] = 0x1000 + uint16(i)
	}
	// c of a hello whose only extension besides SNI and ALPN is
	// supported_versions, and of one with supported_groups too.
	versOnly, versGroups := h12("002b"), h12("000a,002b")
	tests := []struct {
		name string
		msg  []byte
		want string
	}{
		{"FoxIO's documented example", suiteHello(0x0303, withGREASE,
			docExts(sni("example.com"), alpn("h2", "http/1.1"))...), docJA4},
		{"example without SNI", suiteHello(0x0303, withGREASE, docExts(alpn("h2"))...),
			"t13i1515h2_8daaf6152771_" + docJA4Hash},
		{"example without ALPN", suiteHello(0x0303, withGREASE, docExts(sni("a.example"))...),
			"t13d151500_8daaf6152771_" + docJA4Hash},
		{"server_name without host_name still d", suiteHello(0x0303, docSuites,
			docExts(serverNames(nameEntry(1, "x")))...), "t13d151500_8daaf6152771_" + docJA4Hash},
		{"GREASE signature algorithm left out", suiteHello(0x0303, docSuites,
			ext{0x000d, sigAlgs(append([]uint16{0xaaaa}, docSigAlgs...)...).data}, versions(0x0304)),
			"t13i150200_8daaf6152771_" + h12("000d,002b_0403,0804,0401,0503,0805,0501,0806,0601")},
		{"signature algorithms kept in order", suiteHello(0x0303, docSuites,
			sigAlgs(0x0601, 0x0403), versions(0x0304)),
			"t13i150200_8daaf6152771_" + h12("000d,002b_0601,0403")},

		{"TLS 1.2 only, no supported_versions", suiteHello(0x0303, []uint16{0xc02f}, ext{0x000a, nil}),
			"t12i010100_" + h12("c02f") + "_" + h12("000a")},
		{"supported_versions 1.2", suiteHello(0x0303, []uint16{0xc02f}, versions(0x0303)),
			"t12i010100_" + h12("c02f") + "_" + versOnly},
		{"legacy TLS 1.0", suiteHello(0x0301, []uint16{0x002f}), "t10i010000_" + h12("002f") + "_000000000000"},
		{"legacy SSL 3.0", suiteHello(0x0300, []uint16{0x002f}), "ts3i010000_" + h12("002f") + "_000000000000"},
		{"highest version, not the first", suiteHello(0x0303, nil, versions(0x0302, 0x0304, 0x0303)),
			"t13i000100_000000000000_" + versOnly},
		{"only GREASE versions: legacy version", suiteHello(0x0303, nil, versions(0x2a2a)),
			"t12i000100_000000000000_" + versOnly},
		{"unknown highest version", suiteHello(0x0303, nil, versions(0x7f1c, 0x0304)),
			"t00i000100_000000000000_" + versOnly},

		{"nothing offered", suiteHello(0x0303, nil), "t12i000000_000000000000_000000000000"},
		{"only GREASE offered", suiteHello(0x0303, []uint16{0x0a0a, 0xfafa}, ext{0x3a3a, nil}),
			"t12i000000_000000000000_000000000000"},
		{"only SNI and ALPN", suiteHello(0x0303, nil, sni("a.example"), alpn("h2")),
			"t12d0002h2_000000000000_000000000000"},
		{"counts capped at 99", suiteHello(0x0303, many, manyExts(120, 0x2000)...), fmt.Sprintf("t12i999900_%s_%s",
			h12(hexList(many)), h12(hexList(slices.Collect(Uint16List(manyExtTypes(120, 0x2000)).All()))))},

		{"ALPN http/1.1", alpnHello("http/1.1", "h2"), "t13i0103h1_" + h12("1301") + "_" + versGroups},
		{"ALPN of one character", alpnHello("h"), "t13i0103hh_" + h12("1301") + "_" + versGroups},
		{"ALPN upper case kept", alpnHello("H2"), "t13i0103H2_" + h12("1301") + "_" + versGroups},
		// The specification's own examples of the hex form.
		{"ALPN 0xab", alpnHello("\xab"), "t13i0103ab_" + h12("1301") + "_" + versGroups},
		{"ALPN 0xab 0xcd", alpnHello("\xab\xcd"), "t13i0103ad_" + h12("1301") + "_" + versGroups},
		{"ALPN 0x30 0xab", alpnHello("0\xab"), "t13i01033b_" + h12("1301") + "_" + versGroups},
		{"ALPN 0x30 0x31 0xab 0xcd", alpnHello("01\xab\xcd"), "t13i01033d_" + h12("1301") + "_" + versGroups},
		{"ALPN 0x30 0xab 0x31", alpnHello("0\xab1"), "t13i010301_" + h12("1301") + "_" + versGroups},
		{"ALPN with a slash at the end", alpnHello("x/"), "t13i01037f_" + h12("1301") + "_" + versGroups},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var info Info
			if !Parse(tt.msg, &info) {
				t.Fatalf("Parse(%x) failed", tt.msg)
			}
			if got := JA4(&info, TCP); got != tt.want {
				t.Errorf("JA4 = %s, want %s", got, tt.want)
			}
			if err := CheckJA4(tt.want); err != nil {
				t.Errorf("CheckJA4(%s) = %v, want nil", tt.want, err)
			}
		})
	}
}

// TestJA4QUIC checks that the transport is the first character and nothing
// else: the same hello in QUIC Initial packets.
func TestJA4QUIC(t *testing.T) {
	var info Info
	msg := suiteHello(0x0303, docSuites, docExts(sni("example.com"), alpn("h2"))...)
	if !Parse(msg, &info) {
		t.Fatalf("Parse(%x) failed", msg)
	}
	if got, want := JA4(&info, QUIC), "q"+docJA4[1:]; got != want {
		t.Errorf("JA4(QUIC) = %s, want %s", got, want)
	}
}

// TestParseFingerprintFields checks the lists JA4 reads: as sent, in the
// client's order, GREASE kept.
func TestParseFingerprintFields(t *testing.T) {
	suites := append([]uint16{0x0a0a}, docSuites...)
	es := docExts(sni("a.example"))
	var info Info
	if msg := suiteHello(0x0303, suites, es...); !Parse(msg, &info) {
		t.Fatalf("Parse(%x) failed", msg)
	}
	var types []uint16
	for _, e := range es {
		types = append(types, e.typ)
	}
	if got := slices.Collect(info.CipherSuites.All()); !slices.Equal(got, suites) || info.CipherSuites.Len() != len(suites) {
		t.Errorf("CipherSuites = %04x (Len %d), want %04x", got, info.CipherSuites.Len(), suites)
	}
	if got := slices.Collect(info.Extensions.Types()); !slices.Equal(got, types) {
		t.Errorf("Extensions.Types() = %04x, want %04x", got, types)
	}
	if got := slices.Collect(info.SignatureAlgorithms.All()); !slices.Equal(got, docSigAlgs) {
		t.Errorf("SignatureAlgorithms = %04x, want %04x", got, docSigAlgs)
	}
	if !Parse(hello(nil), &info) || info.Extensions != nil || info.SignatureAlgorithms != nil {
		t.Errorf("hello without extensions: Extensions = %x, SignatureAlgorithms = %x, want nil", info.Extensions, info.SignatureAlgorithms)
	}
}

// TestJA4Parts checks the parts of the documented example on their own:
// its raw lists, as the specification prints them, hash to its b and c.
func TestJA4Parts(t *testing.T) {
	if got := h12("002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9"); got != "8daaf6152771" {
		t.Errorf("b = %s, want 8daaf6152771", got)
	}
	c := "0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601"
	if got := h12(c); got != docJA4Hash {
		t.Errorf("c = %s, want %s", got, docJA4Hash)
	}
}

func TestCheckJA4(t *testing.T) {
	for _, s := range []string{docJA4, "q13d0312h3_55b375c5d22e_06cda9e17597", "t12i000000_000000000000_000000000000", "ts3d9999ad_0123456789ab_cdef01234567"} {
		if err := CheckJA4(s); err != nil {
			t.Errorf("CheckJA4(%q) = %v, want nil", s, err)
		}
	}
	for _, tc := range []struct{ s, want string }{
		{"", "not a JA4 fingerprint"},
		{"t13d1516h2_8daaf6152771", "not a JA4 fingerprint"},
		{docJA4 + "0", "not a JA4 fingerprint"},
		{"t13d1516h2_8daaf6152771e_5627efa2ab1", "hash"},
		{"t13d1516h2-8daaf6152771-e5627efa2ab1", "not a JA4 fingerprint"},
		{"x13d1516h2_8daaf6152771_e5627efa2ab1", "protocol"},
		{"t14d1516h2_8daaf6152771_e5627efa2ab1", "version"},
		{"t13x1516h2_8daaf6152771_e5627efa2ab1", "SNI"},
		{"t13d15a6h2_8daaf6152771_e5627efa2ab1", "counts"},
		{"t13d1516h/_8daaf6152771_e5627efa2ab1", "ALPN"},
		{"t13d1516h2_8DAAF6152771_e5627efa2ab1", "lowercase hex"},
		{"t13d1516h2_8daaf6152771_e5627efa2abg", "lowercase hex"},
	} {
		if err := CheckJA4(tc.s); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckJA4(%q) = %v, want an error about %s", tc.s, err, tc.want)
		}
	}
}

// TestJA4Allocs checks the cost the gateway pays per TLS connection:
// AppendJA4 allocates nothing for real hellos, JA4 only its string.
func TestJA4Allocs(t *testing.T) {
	for _, fx := range fixtures {
		t.Run(fx.name, func(t *testing.T) {
			var info Info
			if _, st := Examine(loadFixture(t, fx.name), nil, &info); st != Complete {
				t.Fatalf("%s is not a hello", fx.name)
			}
			buf := make([]byte, 0, JA4Len)
			if n := testing.AllocsPerRun(10, func() { AppendJA4(buf[:0], &info, TCP) }); n != 0 {
				t.Errorf("AppendJA4(%s) allocates %v times per run, want 0", fx.name, n)
			}
			if n := testing.AllocsPerRun(10, func() { _ = JA4(&info, TCP) }); n != 1 {
				t.Errorf("JA4(%s) allocates %v times per run, want 1", fx.name, n)
			}
		})
	}
}

// TestJA4Memo checks that the memo answers what JA4 answers: on a miss,
// on a hit (without allocating), and when the slot holds another hello's
// input, which must be recomputed, not returned.
func TestJA4Memo(t *testing.T) {
	m := NewJA4Memo()
	for _, fx := range fixtures {
		t.Run(fx.name, func(t *testing.T) {
			var info Info
			if _, st := Examine(loadFixture(t, fx.name), nil, &info); st != Complete {
				t.Fatalf("%s is not a hello", fx.name)
			}
			want := JA4(&info, TCP)
			for i, what := range []string{"miss", "hit"} {
				if got := m.JA4(&info, TCP); got != want {
					t.Fatalf("%s (%d): memo says %s, JA4 %s", what, i, got, want)
				}
			}
			if n := testing.AllocsPerRun(10, func() { _ = m.JA4(&info, TCP) }); n != 0 {
				t.Errorf("a hit allocates %v times per run, want 0", n)
			}
			// Another input in the same slot: a different transport.
			var buf [ja4InputCap]byte
			in := ja4Input(buf[:0], &info, TCP)
			slot := &m.slots[maphash.Bytes(m.seed, in)%ja4Slots]
			slot.Store(&ja4Entry{in: string(ja4Input(nil, &info, QUIC)), ja4: "wrong"})
			if got := m.JA4(&info, TCP); got != want {
				t.Fatalf("after a collision: memo says %s, JA4 %s", got, want)
			}
			if got, want := m.JA4(&info, QUIC), JA4(&info, QUIC); got != want {
				t.Fatalf("QUIC: memo says %s, JA4 %s", got, want)
			}
		})
	}
}

// BenchmarkJA4 measures the fingerprint of Chromium's hello, the largest
// fixture in lists, beside the parse it follows.
func BenchmarkJA4(b *testing.B) {
	msg, _, st := Reassemble(loadFixture(b, "chromium"), nil)
	var info Info
	if st != Complete || !Parse(msg, &info) {
		b.Fatal("chromium fixture is not a hello")
	}
	b.Run("Parse", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Parse(msg, &info)
		}
	})
	b.Run("JA4", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = JA4(&info, TCP)
		}
	})
	b.Run("memo", func(b *testing.B) {
		m := NewJA4Memo()
		b.ReportAllocs()
		for b.Loop() {
			_ = m.JA4(&info, TCP)
		}
	})
}

// h12 is a JA4 hash written out: the first 12 hex digits of SHA-256.
func h12(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:6])
}

func hexList(vs []uint16) string {
	var parts []string
	for _, v := range vs {
		parts = append(parts, fmt.Sprintf("%04x", v))
	}
	return strings.Join(parts, ",")
}

func manyExtTypes(n int, first uint16) []byte {
	var out []byte
	for i := range n {
		out = append(out, byte((first+uint16(i))>>8), byte(first+uint16(i)))
	}
	return out
}

// suiteHello returns a ClientHello with the given legacy version, cipher
// suites and extensions (no extensions block when there are none).
func suiteHello(vers uint16, suites []uint16, es ...ext) []byte {
	var b cryptobyte.Builder
	b.AddUint8(typeClientHello)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(vers)
		b.AddBytes(make([]byte, 32)) // random
		b.AddUint8(0)                // legacy_session_id
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, s := range suites {
				b.AddUint16(s)
			}
		})
		b.AddBytes([]byte{1, 0}) // the null compression method
		if len(es) > 0 {
			b.AddBytes(exts(es...))
		}
	})
	return b.BytesOrPanic()
}

// alpnHello is a TLS 1.3 hello offering protos, with supported_groups
// before ALPN and supported_versions after it.
func alpnHello(protos ...string) []byte {
	return suiteHello(0x0303, []uint16{0x1301}, ext{0x000a, []byte{0, 2, 0, 0x1d}}, alpn(protos...), versions(0x0304))
}

func sigAlgs(vs ...uint16) ext {
	data := []byte{byte(2 * len(vs) >> 8), byte(2 * len(vs))}
	for _, v := range vs {
		data = append(data, byte(v>>8), byte(v))
	}
	return ext{extSignatureAlgorithms, data}
}
