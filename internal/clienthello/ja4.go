package clienthello

import (
	"crypto/sha256"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync/atomic"
)

// JA4 returns the fingerprint of a hello that Parse accepted and that came
// over the transport t; it costs one allocation, the string.
//
// JA4 fingerprints a client by its ClientHello as FoxIO's JA4
// specification defines it (github.com/FoxIO-LLC/ja4, technical_details/
// JA4.md), so that the log can say which client build made a connection
// and a rule can allow a name only to the builds expected to use it. A
// fingerprint is three parts joined by "_", e.g.
//
//	t13d1516h2_8daaf6152771_e5627efa2ab1
//
// a: the transport ("t" TCP, "q" QUIC); the TLS version, the highest in supported_versions, else
// the legacy version ("13", "12", "11", "10", "s3", "s2", "00" for any
// other); "d" when the server_name extension is present, "i" when not; the
// numbers of cipher suites and of extensions, two digits each, at most 99;
// the first and last characters of the first ALPN protocol, "00" for none
// (the first and last hex digits of the protocol's bytes when either end
// is not an ASCII letter or digit).
//
// b: the first 12 hex digits of the SHA-256 of the cipher suites, sorted,
// as 4-digit hex joined by ",".
//
// c: the same of the extension types, sorted, without server_name (0) and
// ALPN (16), then "_" and the signature algorithms in the client's order;
// without the "_" part when the hello has none.
//
// GREASE values (RFC 8701) are left out everywhere: they change from one
// connection to the next. A list that is empty hashes to "000000000000".
// Extensions are sorted, so clients that shuffle them (Chrome) keep one
// fingerprint.
func JA4(info *Info, t Transport) string {
	var buf [JA4Len]byte
	return string(AppendJA4(buf[:0], info, t))
}

// Transport is how a hello travelled, the first character of its JA4.
type Transport byte

const (
	TCP  Transport = 't'
	QUIC Transport = 'q' // in QUIC Initial packets (RFC 9001 §4.1.3)
)

// JA4Len is the length of every JA4 fingerprint.
const JA4Len = 36

// AppendJA4 appends the JA4 fingerprint of info (see [JA4]) to b. It
// allocates nothing for hellos of up to 64 cipher suites, extensions and
// signature algorithms each, which every real client stays within.
func AppendJA4(b []byte, info *Info, t Transport) []byte {
	var buf [ja4InputCap]byte
	return appendJA4(b, ja4Input(buf[:0], info, t))
}

// ja4InputCap holds the input of a hello of up to 64 cipher suites,
// extensions and signature algorithms each without allocating.
const ja4InputCap = 10 + 3*64*5 + 1

// ja4Input appends to b what a JA4 is made of (see [JA4]): part a, then
// the text whose hash is part b, a '|', and the text whose hash is part
// c. Two hellos with the same input have the same fingerprint.
func ja4Input(b []byte, info *Info, t Transport) []byte {
	var suiteBuf, extBuf, sigBuf [64]uint16
	suites := appendNotGREASE(suiteBuf[:0], info.CipherSuites)
	sigs := appendNotGREASE(sigBuf[:0], info.SignatureAlgorithms)
	exts, nExts, sni := extBuf[:0], 0, false
	for typ := range info.Extensions.Types() {
		if grease(typ) {
			continue
		}
		nExts++
		switch typ {
		case extServerName:
			sni = true
		case extALPN:
		default:
			exts = append(exts, typ)
		}
	}
	b = append(b, byte(t))
	b = append(b, versionCode(info)...)
	if sni {
		b = append(b, 'd')
	} else {
		b = append(b, 'i')
	}
	b = appendCount(b, len(suites))
	b = appendCount(b, nExts)
	b = appendALPN(b, info.ALPN)
	slices.Sort(suites)
	b = append(appendHexList(b, suites), '|')
	slices.Sort(exts)
	b = appendHexList(b, exts)
	if len(sigs) > 0 {
		b = appendHexList(append(b, '_'), sigs)
	}
	return b
}

// appendJA4 appends the fingerprint whose input (ja4Input) is in.
func appendJA4(b, in []byte) []byte {
	a, texts := in[:10], in[10:]
	bar := slices.Index(texts, '|')
	b = appendHash(append(append(b, a...), '_'), texts[:bar])
	return appendHash(append(b, '_'), texts[bar+1:])
}

// JA4Memo remembers the fingerprints of the hellos it saw last, so that
// a gateway does not hash every connection's hello twice with SHA-256:
// a fleet's clients send a handful of distinct hellos, over and over.
// The input of a fingerprint (ja4Input: sorting and hex, cheap) is
// made every time and compared whole, so an answer is the one JA4 would
// give; only the hashing is saved. A hello not seen recently costs what
// JA4 costs. The memo is direct-mapped with a fixed number of slots, so a
// client that sends ever-new hellos can only replace entries, never grow
// it. It is safe for concurrent use; the zero value is not: use
// NewJA4Memo.
type JA4Memo struct {
	seed  maphash.Seed
	slots [ja4Slots]atomic.Pointer[ja4Entry]
}

// ja4Slots bounds the memo: at most this many inputs of about 1 KiB at
// worst (ja4InputCap) and their fingerprints.
const ja4Slots = 256

type ja4Entry struct{ in, ja4 string }

// NewJA4Memo returns an empty memo.
func NewJA4Memo() *JA4Memo { return &JA4Memo{seed: maphash.MakeSeed()} }

// JA4 returns [JA4](info, t), from the memo when the same input was
// fingerprinted last in its slot; it allocates only when it was not.
func (m *JA4Memo) JA4(info *Info, t Transport) string {
	var buf [ja4InputCap]byte
	in := ja4Input(buf[:0], info, t)
	slot := &m.slots[maphash.Bytes(m.seed, in)%ja4Slots]
	if e := slot.Load(); e != nil && e.in == string(in) {
		return e.ja4
	}
	var out [JA4Len]byte
	e := &ja4Entry{in: string(in), ja4: string(appendJA4(out[:0], in))}
	slot.Store(e)
	return e.ja4
}

// grease reports whether v is one of the GREASE values of RFC 8701 §2
// (0x0a0a, 0x1a1a, ... 0xfafa), which clients send to keep servers
// tolerant and which mean nothing.
func grease(v uint16) bool { return v&0x0f0f == 0x0a0a && v>>8 == v&0xff }

func appendNotGREASE(dst []uint16, l Uint16List) []uint16 {
	for v := range l.All() {
		if !grease(v) {
			dst = append(dst, v)
		}
	}
	return dst
}

// versionCode names the highest version the client offers: the largest
// value of supported_versions but GREASE (RFC 8446 §4.2.1), or the legacy
// version when there is none.
func versionCode(info *Info) string {
	v := uint16(0)
	for x := range info.Versions.All() {
		if !grease(x) {
			v = max(v, x)
		}
	}
	if v == 0 {
		v = info.LegacyVersion
	}
	switch v {
	case 0x0304:
		return "13"
	case 0x0303:
		return "12"
	case 0x0302:
		return "11"
	case 0x0301:
		return "10"
	case 0x0300:
		return "s3"
	case 0x0002:
		return "s2"
	}
	return "00"
}

func appendCount(b []byte, n int) []byte {
	n = min(n, 99)
	return append(b, byte('0'+n/10), byte('0'+n%10))
}

const hexDigits = "0123456789abcdef"

// appendALPN appends the first ALPN protocol's first and last characters,
// or, when either is not an ASCII letter or digit, the first and last
// digits of the protocol in hex: 0xab 0xcd gives "ad", "0" 0xab gives "3b".
func appendALPN(b []byte, l ProtocolList) []byte {
	for p := range l.All() {
		first, last := p[0], p[len(p)-1]
		if alnum(first) && alnum(last) {
			return append(b, first, last)
		}
		return append(b, hexDigits[first>>4], hexDigits[last&0xf])
	}
	return append(b, '0', '0')
}

func alnum(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// appendHash appends the first 12 hex digits of the SHA-256 of text, or
// 12 zeros when text is empty (a JA4 part whose lists are all empty).
func appendHash(b, text []byte) []byte {
	if len(text) == 0 {
		return append(b, "000000000000"...)
	}
	sum := sha256.Sum256(text)
	for _, c := range sum[:6] {
		b = append(b, hexDigits[c>>4], hexDigits[c&0xf])
	}
	return b
}

func appendHexList(b []byte, vs []uint16) []byte {
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, hexDigits[v>>12], hexDigits[v>>8&0xf], hexDigits[v>>4&0xf], hexDigits[v&0xf])
	}
	return b
}

// CheckJA4 reports whether s is written as JA4 writes fingerprints, so that
// a rule listing a mistyped one is refused when the config is read rather
// than never matching.
func CheckJA4(s string) error {
	const example = "t13d1516h2_8daaf6152771_e5627efa2ab1"
	parts := strings.Split(s, "_")
	if len(s) != JA4Len || len(parts) != 3 || len(parts[0]) != 10 {
		return fmt.Errorf("%q is not a JA4 fingerprint; want 36 characters like %s", s, example)
	}
	a := parts[0]
	switch {
	case !strings.ContainsRune("tqd", rune(a[0])):
		return fmt.Errorf("JA4 %q: protocol %q is not t (TCP), q (QUIC) or d (DTLS)", s, a[:1])
	case !slices.Contains([]string{"13", "12", "11", "10", "s3", "s2", "d1", "d2", "d3", "00"}, a[1:3]):
		return fmt.Errorf("JA4 %q: unknown TLS version %q", s, a[1:3])
	case a[3] != 'd' && a[3] != 'i':
		return fmt.Errorf("JA4 %q: SNI flag %q is not d or i", s, a[3:4])
	case !digits(a[4:8]):
		return fmt.Errorf("JA4 %q: %q are not two 2-digit counts", s, a[4:8])
	case !alnum(a[8]) || !alnum(a[9]):
		return fmt.Errorf("JA4 %q: ALPN %q is not two letters or digits", s, a[8:])
	}
	for _, h := range parts[1:] {
		if len(h) != 12 || strings.Trim(h, hexDigits) != "" {
			return fmt.Errorf("JA4 %q: hash %q is not 12 lowercase hex digits", s, h)
		}
	}
	return nil
}

func digits(s string) bool { return strings.Trim(s, "0123456789") == "" }
