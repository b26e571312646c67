package clienthello

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzParse checks agreement with crypto/tls: whenever a crypto/tls server
// accepts the bytes as a ClientHello, warning alerts before it included,
// Reassemble and Parse must accept them too, with the same server name and
// ALPN protocols, and JA4 must fingerprint them as a plain JA4 written
// over crypto/tls's ClientHelloInfo does. It also checks that nothing
// panics, that a message never exceeds MaxHelloLen, that used marks a
// prefix that is itself complete, and that every parsed hello has a JA4
// that CheckJA4 accepts.
//
// Real hellos are 1.5 KiB, and the fuzzer spends up to a minute minimizing
// each new input of that size; cap that when fuzzing for a short time:
//
//	go test -run=NONE -fuzz=FuzzParse -fuzztime=60s -fuzzminimizetime=5s ./internal/clienthello/
func FuzzParse(f *testing.F) {
	// Seeds stay a few KiB at most: the fuzzer minimizes each input that finds
	// new coverage, and that takes long on a hello in 1-byte records.
	for _, fx := range fixtures {
		raw := loadFixture(f, fx.name)
		f.Add(raw)
		f.Add(reframe(f, raw, fixedSize(7)))
		f.Add(append(reframe(f, raw, fixedSize(500)), "garbage"...))
		if len(raw) < 500 {
			f.Add(reframe(f, raw, fixedSize(1)))
		}
	}
	small := hello(exts(sni("a.example"), alpn("h2"), versions(0x0304), ext{extECH, nil}))
	f.Add(rec(22, 0x0301, small))
	f.Add(cat(rec(22, 0x0301, small[:3]), rec(22, 0x0303, small[3:])))
	warn := rec(21, 0x0303, []byte{1, 112}) // warning unrecognized_name, which crypto/tls skips
	f.Add(cat(warn, rec(22, 0x0301, small)))
	f.Add(cat(warn, warn, rec(20, 0x0303, []byte{1}), rec(22, 0x0301, small[:3]), rec(22, 0x0303, small[3:])))
	memo := NewJA4Memo() // shared by the inputs, as a gateway's is by its clients
	f.Fuzz(func(t *testing.T, raw []byte) {
		var info Info
		msg, used, st := Reassemble(raw, make([]byte, 0, MaxHelloLen))
		if st == Complete {
			checkComplete(t, raw, msg, used)
		}
		ok := st == Complete && Parse(msg, &info)
		if ok {
			if fp := JA4(&info, TCP); CheckJA4(fp) != nil {
				t.Fatalf("JA4 = %q: %v", fp, CheckJA4(fp))
			} else if m := memo.JA4(&info, TCP); m != fp {
				t.Fatalf("JA4Memo says %s, JA4 %s", m, fp)
			}
		}
		hi := tlsHello(raw)
		if hi == nil || stricterThanTLS(raw) {
			return
		}
		if !ok {
			t.Fatalf("crypto/tls accepts hello with server name %q; Reassemble = %v, Parse ok = %v", hi.ServerName, st, ok)
		}
		if string(info.ServerName) != hi.ServerName {
			t.Fatalf("ServerName = %q, crypto/tls says %q", info.ServerName, hi.ServerName)
		}
		if got, want := info.ALPN.Strings(), keptProtocols(hi.SupportedProtos); !slices.Equal(got, want) {
			t.Fatalf("ALPN = %q, crypto/tls says %q", got, hi.SupportedProtos)
		}
		if got, want := comparableJA4(JA4(&info, TCP), hi), comparableJA4(tlsJA4(hi), hi); got != want {
			t.Fatalf("JA4 = %s, over crypto/tls's ClientHelloInfo %s", got, want)
		}
	})
}

func checkComplete(t *testing.T, raw, msg []byte, used int) {
	t.Helper()
	if len(msg) > MaxHelloLen || used > len(raw) || used > MaxHelloLen {
		t.Fatalf("Reassemble: len(msg) = %d, used = %d, len(raw) = %d", len(msg), used, len(raw))
	}
	again, againUsed, st := Reassemble(raw[:used], nil)
	if st != Complete || againUsed != used || !bytes.Equal(again, msg) {
		t.Fatalf("Reassemble(raw[:%d]) = %d, %v; want the same hello", used, againUsed, st)
	}
	if _, _, st := Reassemble(raw[:used-1], nil); st != NeedMore {
		t.Fatalf("Reassemble(raw[:%d]) = %v, want NeedMore", used-1, st)
	}
}

// TestTLSServerName checks the fuzz oracle itself: crypto/tls must accept
// every fixture, however framed, or FuzzParse would check nothing.
func TestTLSServerName(t *testing.T) {
	for _, fx := range fixtures {
		raw := loadFixture(t, fx.name)
		for _, in := range [][]byte{raw, reframe(t, raw, fixedSize(1))} {
			hi := tlsHello(in)
			if hi == nil || hi.ServerName != fx.want.ServerName || stricterThanTLS(in) {
				t.Errorf("tlsHello(%s, %d bytes) = %+v; stricter = %v; want server name %q; false",
					fx.name, len(in), hi, stricterThanTLS(in), fx.want.ServerName)
				continue
			}
			if got := tlsJA4(hi); got != fx.ja4 {
				t.Errorf("tlsJA4(%s) = %s, want %s", fx.name, got, fx.ja4)
			}
		}
	}
}

var errStop = errors.New("stop after the hello")

// tlsHello runs a crypto/tls server on raw and returns what it read of the
// hello if it got as far as GetConfigForClient, which is called once the
// hello has been read and parsed; nil if not.
func tlsHello(raw []byte) *tls.ClientHelloInfo {
	var got *tls.ClientHelloInfo
	cfg := &tls.Config{GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		got = hello
		return nil, errStop
	}}
	tls.Server(&pipeConn{in: raw}, cfg).Handshake()
	return got
}

// tlsJA4 is the JA4 definition written plainly over crypto/tls's reading
// of a hello: the second implementation FuzzParse compares JA4 with. Only
// the version may differ (see comparableJA4).
func tlsJA4(hi *tls.ClientHelloInfo) string {
	hash := func(s string) string {
		if s == "" {
			return "000000000000"
		}
		sum := sha256.Sum256([]byte(s))
		return hex.EncodeToString(sum[:6])
	}
	var sigs []uint16
	for _, s := range hi.SignatureSchemes {
		sigs = append(sigs, uint16(s))
	}
	suites, exts := hexNotGREASE(hi.CipherSuites), hexNotGREASE(hi.Extensions)
	vers := map[uint16]string{0x0002: "s2", 0x0300: "s3", 0x0301: "10", 0x0302: "11", 0x0303: "12", 0x0304: "13"}[slices.Max(append(notGREASE(hi.SupportedVersions), 0))]
	if vers == "" {
		vers = "00"
	}
	sni := "i"
	if slices.Contains(exts, "0000") {
		sni = "d"
	}
	alpn := "00"
	if len(hi.SupportedProtos) > 0 {
		p := hi.SupportedProtos[0]
		if first, last := rune(p[0]), rune(p[len(p)-1]); isAlnum(first) && isAlnum(last) {
			alpn = string(first) + string(last)
		} else {
			h := hex.EncodeToString([]byte(p))
			alpn = h[:1] + h[len(h)-1:]
		}
	}
	var hashed []string
	for _, e := range exts {
		if e != "0000" && e != "0010" {
			hashed = append(hashed, e)
		}
	}
	slices.Sort(suites)
	slices.Sort(hashed)
	c := strings.Join(hashed, ",")
	if s := hexNotGREASE(sigs); len(s) > 0 {
		c += "_" + strings.Join(s, ",")
	}
	return fmt.Sprintf("t%s%s%02d%02d%s_%s_%s", vers, sni, min(len(suites), 99), min(len(exts), 99), alpn,
		hash(strings.Join(suites, ",")), hash(c))
}

// comparableJA4 hides the version of a hello without a supported_versions
// value but GREASE: crypto/tls reports its legacy version only as the
// versions it would accept up to it.
func comparableJA4(fp string, hi *tls.ClientHelloInfo) string {
	if len(fp) < 3 || slices.Contains(hi.Extensions, extSupportedVersions) && len(notGREASE(hi.SupportedVersions)) > 0 {
		return fp
	}
	return fp[:1] + "??" + fp[3:]
}

func notGREASE(vs []uint16) []uint16 {
	var out []uint16
	for _, v := range vs {
		if v&0x0f0f != 0x0a0a || v>>8 != v&0xff {
			out = append(out, v)
		}
	}
	return out
}

func hexNotGREASE(vs []uint16) []string {
	var out []string
	for _, v := range notGREASE(vs) {
		out = append(out, fmt.Sprintf("%04x", v))
	}
	return out
}

func isAlnum(r rune) bool {
	return '0' <= r && r <= '9' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z'
}

// stricterThanTLS reports inputs where Reassemble refuses, on purpose, what
// crypto/tls lets through: a record version with major other than 3 (it checks
// only that the version is below 0x1000), a non-handshake record among the
// hello's (it skips warning alerts), more than MaxLeadingRecords records before
// the hello (it skips up to 16 warning alerts), or more than MaxHelloLen bytes.
// It looks at every record, so it excuses a little more than it needs to.
func stricterThanTLS(raw []byte) bool {
	if len(raw) > MaxHelloLen {
		return true
	}
	leading, inHello := 0, false
	for off := 0; off+recordHeaderLen <= len(raw); {
		switch {
		case raw[off+1] != 3:
			return true
		case raw[off] == recordTypeHandshake:
			inHello = true
		case inHello:
			return true
		default:
			if leading++; leading > MaxLeadingRecords {
				return true
			}
		}
		off += recordHeaderLen + (int(raw[off+3])<<8 | int(raw[off+4]))
	}
	return false
}

// fixedSize returns a record size source for reframe.
func fixedSize(n int) func() int { return func() int { return n } }

// reframe returns the hello in raw again as records of the sizes next
// returns, with the first record's version: the same hello, as a client that
// fragments its handshake (RFC 8446 §5.1) would send it.
func reframe(t testing.TB, raw []byte, next func() int) []byte {
	t.Helper()
	msg, _, st := Reassemble(raw, nil)
	if st != Complete {
		t.Fatalf("Reassemble = %v, want Complete", st)
	}
	vers := RecordVersion(raw)
	var out []byte
	for len(msg) > 0 {
		n := min(next(), len(msg))
		out = append(out, recordTypeHandshake, byte(vers>>8), byte(vers), byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// writeSeed keeps the hello, in records of 7 bytes, in the seed corpus.
func writeSeed(t *testing.T, name string, raw []byte) {
	path := filepath.Join("testdata", "fuzz", "FuzzParse", "seed-"+name+"-7")
	seed := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", reframe(t, raw, fixedSize(7)))
	if err := os.WriteFile(path, []byte(seed), 0o644); err != nil {
		t.Fatal(err)
	}
}
