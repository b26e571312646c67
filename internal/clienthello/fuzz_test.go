package clienthello

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// FuzzParse checks agreement with crypto/tls: whenever a crypto/tls server
// accepts the bytes as a ClientHello, warning alerts before it included,
// Reassemble and Parse must accept them too, with the same server name and
// ALPN protocols. It also checks that nothing panics, that a
// message never exceeds MaxHelloLen, and that used marks a prefix that is
// itself complete.
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
	f.Fuzz(func(t *testing.T, raw []byte) {
		var info Info
		msg, used, st := Reassemble(raw, make([]byte, 0, MaxHelloLen))
		if st == Complete {
			checkComplete(t, raw, msg, used)
		}
		ok := st == Complete && Parse(msg, &info)
		name, protos, accepted := tlsServerName(raw)
		if !accepted || stricterThanTLS(raw) {
			return
		}
		if !ok {
			t.Fatalf("crypto/tls accepts hello with server name %q; Reassemble = %v, Parse ok = %v", name, st, ok)
		}
		if string(info.ServerName) != name {
			t.Fatalf("ServerName = %q, crypto/tls says %q", info.ServerName, name)
		}
		if got := info.ALPN.Strings(); !slices.Equal(got, protos) {
			t.Fatalf("ALPN = %q, crypto/tls says %q", got, protos)
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
			name, _, accepted := tlsServerName(in)
			if !accepted || name != fx.want.ServerName || stricterThanTLS(in) {
				t.Errorf("tlsServerName(%s, %d bytes) = %q, %v; stricter = %v; want %q, true; false",
					fx.name, len(in), name, accepted, stricterThanTLS(in), fx.want.ServerName)
			}
		}
	}
}

var errStop = errors.New("stop after the hello")

// tlsServerName runs a crypto/tls server on raw and reports the server name
// and ALPN protocols of the hello if it got as far as GetConfigForClient,
// which is called once the hello has been read and parsed.
func tlsServerName(raw []byte) (name string, protos []string, accepted bool) {
	cfg := &tls.Config{GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		name, protos, accepted = hello.ServerName, hello.SupportedProtos, true
		return nil, errStop
	}}
	tls.Server(&pipeConn{in: raw}, cfg).Handshake()
	return name, protos, accepted
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
