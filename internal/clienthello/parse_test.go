package clienthello

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/cryptobyte"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		msg  []byte
		ok   bool
		want infoView
	}{
		{"no extensions block", hello(nil), true, infoView{LegacyVersion: 0x0303}},
		{"empty extensions block", hello(exts()), true, infoView{LegacyVersion: 0x0303}},
		{"sni", hello(exts(sni("example.com"))), true,
			infoView{LegacyVersion: 0x0303, ServerName: "example.com", HasSNI: true}},
		{"sni as sent", hello(exts(sni("WWW.Example.COM."))), true,
			infoView{LegacyVersion: 0x0303, ServerName: "WWW.Example.COM.", HasSNI: true}},
		{"sni with NUL kept for fqdn to judge", hello(exts(sni("a\x00b"))), true,
			infoView{LegacyVersion: 0x0303, ServerName: "a\x00b", HasSNI: true}},
		{"server_name of another type only", hello(exts(serverNames(nameEntry(1, "x")))), true,
			infoView{LegacyVersion: 0x0303}},
		{"host_name beside another type", hello(exts(serverNames(nameEntry(1, "x"), nameEntry(0, "a.example")))), true,
			infoView{LegacyVersion: 0x0303, ServerName: "a.example", HasSNI: true}},
		{"alpn", hello(exts(alpn("h2", "http/1.1"))), true,
			infoView{LegacyVersion: 0x0303, ALPN: []string{"h2", "http/1.1"}}},
		{"supported_versions", hello(exts(versions(0x0a0a, 0x0304, 0x0303))), true,
			infoView{LegacyVersion: 0x0303, Versions: []uint16{0x0a0a, 0x0304, 0x0303}}},
		{"ech present, empty", hello(exts(ext{extECH, nil})), true, infoView{LegacyVersion: 0x0303, ECH: true}},
		{"ech grease-like", hello(exts(sni("public.example"), ext{extECH, []byte{0, 0, 1, 0, 1, 7, 0, 0, 0, 0}})), true,
			infoView{LegacyVersion: 0x0303, ServerName: "public.example", HasSNI: true, ECH: true, ECHOuter: true, ECHConfigID: 7}},
		{"ech inner type", hello(exts(ext{extECH, []byte{1}})), true, infoView{LegacyVersion: 0x0303, ECH: true}},
		{"unknown extensions skipped", hello(exts(ext{0x1234, []byte("anything")}, sni("a.example"))), true,
			infoView{LegacyVersion: 0x0303, ServerName: "a.example", HasSNI: true}},
		{"many distinct extensions", hello(exts(manyExts(100, 0x2000)...)), true, infoView{LegacyVersion: 0x0303}},
		{"long session id, as crypto/tls", helloWith(0x0303, 255, 2, 1, nil), true, infoView{LegacyVersion: 0x0303}},
		{"no compression methods, as crypto/tls", helloWith(0x0303, 0, 2, 0, nil), true, infoView{LegacyVersion: 0x0303}},

		{"empty", nil, false, infoView{}},
		{"handshake type 2", retype(hello(nil), 2), false, infoView{}},
		{"handshake length short", relen(hello(nil), -1), false, infoView{}},
		{"trailing garbage inside message", relen(cat(hello(exts(sni("a"))), []byte{0}), 0), false, infoView{}},
		{"trailing garbage after no extensions", relen(cat(hello(nil), []byte{0}), 0), false, infoView{}},
		{"truncated random", relen(hello(nil)[:20], 0), false, infoView{}},
		{"odd cipher suites", helloWith(0x0303, 0, 3, 1, nil), false, infoView{}},
		{"truncated extensions", relen(hello(exts(sni("example.com")))[:60], 0), false, infoView{}},
		{"extension longer than block", hello(rawExts(0, 0, 0, 9, 1)), false, infoView{}},
		{"duplicate extension", hello(exts(alpn("h2"), alpn("h2"))), false, infoView{}},
		{"duplicate unknown extension", hello(exts(ext{0x1234, nil}, sni("a"), ext{0x1234, nil})), false, infoView{}},
		{"duplicate past 32 extensions", hello(exts(append(manyExts(40, 0x2000), ext{0x2001, nil})...)), false, infoView{}},
		{"two host_name entries", hello(exts(serverNames(nameEntry(0, "a"), nameEntry(0, "b")))), false, infoView{}},
		{"empty host_name", hello(exts(sni(""))), false, infoView{}},
		{"empty server name list", hello(exts(serverNames())), false, infoView{}},
		{"server_name trailing bytes", hello(exts(ext{extServerName, cat(sni("a").data, []byte{0})})), false, infoView{}},
		{"empty alpn list", hello(exts(alpn())), false, infoView{}},
		{"empty alpn name", hello(exts(alpn("h2", ""))), false, infoView{}},
		{"empty supported_versions", hello(exts(versions())), false, infoView{}},
		{"odd supported_versions", hello(exts(ext{extSupportedVersions, []byte{3, 3, 4, 3}})), false, infoView{}},
		{"empty signature_algorithms", hello(exts(sigAlgs())), false, infoView{}},
		{"odd signature_algorithms", hello(exts(ext{extSignatureAlgorithms, []byte{0, 3, 4, 3, 1}})), false, infoView{}},
		{"signature_algorithms trailing bytes", hello(exts(ext{extSignatureAlgorithms, []byte{0, 2, 4, 3, 0}})), false, infoView{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info := Info{ServerName: []byte("stale"), RecordVersion: 0x0301}
			if ok := Parse(tt.msg, &info); ok != tt.ok {
				t.Fatalf("Parse(%x) = %v, want %v", tt.msg, ok, tt.ok)
			}
			if diff := cmp.Diff(tt.want, view(info)); diff != "" {
				t.Errorf("Parse(%x) info mismatch (-want +got):\n%s", tt.msg, diff)
			}
		})
	}
}

// TestParseAllocs checks that Parse allocates nothing, since Info
// views the message, whether or not the hello carries a server name, ALPN
// or supported_versions. Only a hello with more than 32 extensions would.
func TestParseAllocs(t *testing.T) {
	var names []string
	for _, fx := range fixtures {
		names = append(names, fx.name)
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			msg, _, st := Reassemble(loadFixture(t, name), nil)
			var info Info
			if st != Complete || !Parse(msg, &info) {
				t.Fatalf("%s is not a hello", name)
			}
			if n := testing.AllocsPerRun(10, func() { Parse(msg, &info) }); n != 0 {
				t.Errorf("Parse(%s) allocates %v times per run, want 0", name, n)
			}
		})
	}
}

// keptProtocols is what Strings keeps of names (see MaxKeptProtocols).
func keptProtocols(names []string) []string {
	if len(names) <= MaxKeptProtocols {
		return names
	}
	return append(slices.Clone(names[:MaxKeptProtocols-1]), fmt.Sprintf("(%d more)", len(names)-MaxKeptProtocols+1))
}

// TestProtocolListKept: a hello with thousands of one-byte ALPN names (it
// fits in 16 KiB) is kept as its first names and a count, not as thousands
// of strings a relayed connection would hold for its whole life.
func TestProtocolListKept(t *testing.T) {
	var names []string
	for i := range 8000 {
		names = append(names, string(rune('a'+i%26)))
	}
	msg := hello(exts(alpn(names...)))
	var info Info
	if !Parse(msg, &info) {
		t.Fatal("Parse failed")
	}
	got := info.ALPN.Strings()
	if len(got) != MaxKeptProtocols || got[len(got)-1] != "(7985 more)" || !slices.Equal(got[:MaxKeptProtocols-1], names[:MaxKeptProtocols-1]) {
		t.Errorf("Strings() of 8000 names = %q, want the first %d and (7985 more)", got, MaxKeptProtocols-1)
	}
	n := 0
	for range info.ALPN.All() {
		n++
	}
	if n != 8000 {
		t.Errorf("All() yields %d names, want every one of the 8000", n)
	}
}

// TestProtocolList checks the views of an ALPN list against the names sent,
// and that Strings copies them, as what outlives the message needs.
func TestProtocolList(t *testing.T) {
	tests := []struct {
		name   string
		protos []string
	}{
		{"one", []string{"h2"}},
		{"two", []string{"h2", "http/1.1"}},
		{"longest name", []string{strings.Repeat("x", 255), "h3"}},
		{"any bytes", []string{"\x00", "\xff\xfe"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := hello(exts(alpn(tt.protos...)))
			var info Info
			if !Parse(msg, &info) {
				t.Fatalf("Parse(%x) failed", msg)
			}
			var viewed []string
			for p := range info.ALPN.All() {
				viewed = append(viewed, string(p))
			}
			got := info.ALPN.Strings()
			if !slices.Equal(viewed, tt.protos) || !slices.Equal(got, tt.protos) {
				t.Fatalf("ALPN.All() = %q, ALPN.Strings() = %q, want %q", viewed, got, tt.protos)
			}
			clear(msg)
			if !slices.Equal(got, tt.protos) {
				t.Errorf("ALPN.Strings() = %q after the message was overwritten, want %q kept", got, tt.protos)
			}
		})
	}
	if got := ProtocolList(nil).Strings(); got != nil {
		t.Errorf("ProtocolList(nil).Strings() = %q, want nil", got)
	}
	// The common lists are shared: no copy per connection.
	for _, c := range commonALPN {
		l := ProtocolList(c.wire)
		var viewed []string
		for p := range l.All() {
			viewed = append(viewed, string(p))
		}
		if got := l.Strings(); !slices.Equal(got, viewed) {
			t.Errorf("Strings(%q) = %q, want %q", c.wire, got, viewed)
		}
		if n := testing.AllocsPerRun(10, func() { _ = l.Strings() }); n != 0 {
			t.Errorf("Strings(%q) allocates %v times, want 0", c.wire, n)
		}
	}
}

// infoView is Info with its views copied out, so that test tables state
// names as strings and versions as numbers.
type infoView struct {
	ServerName    string
	HasSNI        bool
	ALPN          []string
	LegacyVersion uint16
	RecordVersion uint16
	Versions      []uint16
	ECH           bool
	ECHOuter      bool
	ECHConfigID   uint8
}

func view(i Info) infoView {
	return infoView{
		ServerName: string(i.ServerName), HasSNI: i.HasSNI, ALPN: i.ALPN.Strings(),
		LegacyVersion: i.LegacyVersion, RecordVersion: i.RecordVersion,
		Versions: slices.Collect(i.Versions.All()),
		ECH:      i.ECH, ECHOuter: i.ECHOuter, ECHConfigID: i.ECHConfigID,
	}
}

// The helpers below build ClientHellos (RFC 8446 §4.1.2) field by field, so
// that each test case states only what differs.

type ext struct {
	typ  uint16
	data []byte
}

// hello returns a ClientHello with one cipher suite, the null compression
// method and the given extensions block (nil for none).
func hello(extBlock []byte) []byte { return helloWith(0x0303, 0, 2, 1, extBlock) }

// helloWith returns a ClientHello with fields of the given sizes.
func helloWith(vers uint16, sessionLen, suitesLen, compLen int, extBlock []byte) []byte {
	var b cryptobyte.Builder
	b.AddUint8(typeClientHello)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(vers)
		b.AddBytes(make([]byte, 32)) // random
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(make([]byte, sessionLen)) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(bytes.Repeat([]byte{0x13}, suitesLen)) })
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(make([]byte, compLen)) })
		b.AddBytes(extBlock)
	})
	return b.BytesOrPanic()
}

// exts returns an extensions block holding es.
func exts(es ...ext) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, e := range es {
			b.AddUint16(e.typ)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.data) })
		}
	})
	return b.BytesOrPanic()
}

// rawExts returns an extensions block whose content is body as given.
func rawExts(body ...byte) []byte { return cat([]byte{0, byte(len(body))}, body) }

func manyExts(n int, first uint16) []ext {
	es := make([]ext, n)
	for i := range es {
		es[i] = ext{first + uint16(i), nil}
	}
	return es
}

func sni(name string) ext { return serverNames(nameEntry(0, name)) }

func nameEntry(typ uint8, name string) []byte {
	return cat([]byte{typ, byte(len(name) >> 8), byte(len(name))}, []byte(name))
}

func serverNames(entries ...[]byte) ext {
	list := cat(entries...)
	return ext{extServerName, cat([]byte{byte(len(list) >> 8), byte(len(list))}, list)}
}

func alpn(protos ...string) ext {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, p := range protos {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p)) })
		}
	})
	return ext{extALPN, b.BytesOrPanic()}
}

func versions(vs ...uint16) ext {
	data := []byte{byte(2 * len(vs))}
	for _, v := range vs {
		data = append(data, byte(v>>8), byte(v))
	}
	return ext{extSupportedVersions, data}
}

// rec returns one TLS record (RFC 8446 §5.1).
func rec(typ byte, vers uint16, frag []byte) []byte {
	return cat([]byte{typ, byte(vers >> 8), byte(vers), byte(len(frag) >> 8), byte(len(frag))}, frag)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// retype returns msg with handshake type typ.
func retype(msg []byte, typ byte) []byte { return cat([]byte{typ}, msg[1:]) }

// relen returns msg with its uint24 length set to len(msg)-4+delta.
func relen(msg []byte, delta int) []byte {
	n := len(msg) - handshakeHeaderLen + delta
	return cat([]byte{msg[0], byte(n >> 16), byte(n >> 8), byte(n)}, msg[handshakeHeaderLen:])
}
