package clienthello

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/cryptobyte"
)

var update = flag.Bool("update", false, "record the ClientHello fixtures in testdata again from real clients")

// fixture is a ClientHello recorded from a real client into testdata/NAME.hex,
// with what Examine must find in it. The recording is not reproducible (random,
// key shares), so tests read the file; -update records it again.
type fixture struct {
	name   string
	note   string                    // how it was recorded, kept in the file
	record func(t *testing.T) []byte // the client's first flight
	minLen int                       // the hello is at least this long
	want   infoView
}

var fixtures = []fixture{{
	name:   "go-default",
	note:   "crypto/tls client, default Config, ServerName example.com, NextProtos h2 http/1.1",
	record: goHello(&tls.Config{ServerName: "example.com", NextProtos: []string{"h2", "http/1.1"}}),
	minLen: 1500, // X25519MLKEM768 key share: more than one Ethernet packet
	want: infoView{ServerName: "example.com", HasSNI: true, ALPN: []string{"h2", "http/1.1"},
		LegacyVersion: tls.VersionTLS12, RecordVersion: tls.VersionTLS10,
		Versions: []uint16{tls.VersionTLS13, tls.VersionTLS12}},
}, {
	name:   "go-tls12",
	note:   "crypto/tls client, MaxVersion TLS 1.2, ServerName api.example.net",
	record: goHello(&tls.Config{ServerName: "api.example.net", MaxVersion: tls.VersionTLS12}),
	want: infoView{ServerName: "api.example.net", HasSNI: true,
		LegacyVersion: tls.VersionTLS12, RecordVersion: tls.VersionTLS10,
		Versions: []uint16{tls.VersionTLS12}},
}, {
	name:   "go-nosni",
	note:   "crypto/tls client, no ServerName, InsecureSkipVerify",
	record: goHello(&tls.Config{InsecureSkipVerify: true}),
	want: infoView{LegacyVersion: tls.VersionTLS12, RecordVersion: tls.VersionTLS10,
		Versions: []uint16{tls.VersionTLS13, tls.VersionTLS12}},
}, {
	name:   "go-idn",
	note:   "crypto/tls client, ServerName xn--bcher-kva.example (bücher.example in punycode)",
	record: goHello(&tls.Config{ServerName: "xn--bcher-kva.example"}),
	want: infoView{ServerName: "xn--bcher-kva.example", HasSNI: true,
		LegacyVersion: tls.VersionTLS12, RecordVersion: tls.VersionTLS10,
		Versions: []uint16{tls.VersionTLS13, tls.VersionTLS12}},
}, {
	name:   "go-ech",
	note:   "crypto/tls client with an ECH config for public.example, ServerName secret.example",
	record: goECHHello,
	want: infoView{ServerName: "public.example", HasSNI: true, ECH: true, ECHOuter: true, ECHConfigID: 7,
		LegacyVersion: tls.VersionTLS12, RecordVersion: tls.VersionTLS10,
		Versions: []uint16{tls.VersionTLS13}},
}, {
	name:   "openssl",
	note:   "openssl s_client -servername openssl.example -alpn h2,http/1.1",
	record: opensslHello("-servername", "openssl.example", "-alpn", "h2,http/1.1"),
	want: infoView{ServerName: "openssl.example", HasSNI: true, ALPN: []string{"h2", "http/1.1"},
		LegacyVersion: tls.VersionTLS12, RecordVersion: tls.VersionTLS10,
		Versions: []uint16{tls.VersionTLS13, tls.VersionTLS12, tls.VersionTLS11, tls.VersionTLS10}},
}}

func TestFixtures(t *testing.T) {
	for _, fx := range fixtures {
		t.Run(fx.name, func(t *testing.T) {
			if *update {
				writeFixture(t, fx, fx.record(t))
			}
			raw := loadFixture(t, fx.name)
			if len(raw) < fx.minLen {
				t.Errorf("len(%s) = %d, want at least %d", fx.name, len(raw), fx.minLen)
			}
			var info Info
			used, st := Examine(raw, nil, &info)
			if st != Complete || used != len(raw) {
				t.Fatalf("Examine(%s) = %d, %v, want %d, Complete", fx.name, used, st, len(raw))
			}
			if diff := cmp.Diff(fx.want, view(info)); diff != "" {
				t.Errorf("Examine(%s) info mismatch (-want +got):\n%s", fx.name, diff)
			}
		})
	}
}

// loadFixture reads a hex fixture: '#' lines are notes, the rest hex digits.
func loadFixture(t testing.TB, name string) []byte {
	t.Helper()
	text, err := os.ReadFile(filepath.Join("testdata", name+".hex"))
	if err != nil {
		t.Fatal(err)
	}
	var digits strings.Builder
	for line := range strings.Lines(string(text)) {
		if !strings.HasPrefix(line, "#") {
			digits.WriteString(strings.TrimSpace(line))
		}
	}
	raw, err := hex.DecodeString(digits.String())
	if err != nil {
		t.Fatalf("%s.hex: %v", name, err)
	}
	return raw
}

func writeFixture(t *testing.T, fx fixture, raw []byte) {
	var out bytes.Buffer
	fmt.Fprintf(&out, "# %s\n# recorded with %s by go test -update; %d bytes\n", fx.note, runtime.Version(), len(raw))
	for line := range slices.Chunk(raw, 32) {
		fmt.Fprintf(&out, "%x\n", line)
	}
	if err := os.WriteFile(filepath.Join("testdata", fx.name+".hex"), out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	writeSeed(t, fx.name, raw)
}

// pipeConn is a net.Conn that serves in to reads, then io.EOF, and keeps what
// is written: enough to run one flight of a crypto/tls handshake against fixed
// bytes, with no goroutine and nothing that can hang.
type pipeConn struct {
	in  []byte
	out bytes.Buffer
}

func (c *pipeConn) Read(p []byte) (int, error) {
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.in)
	c.in = c.in[n:]
	return n, nil
}

func (c *pipeConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *pipeConn) Close() error                     { return nil }
func (c *pipeConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *pipeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *pipeConn) SetDeadline(time.Time) error      { return nil }
func (c *pipeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *pipeConn) SetWriteDeadline(time.Time) error { return nil }

// goHello records what a crypto/tls client writes before it waits for the
// server: the ClientHello, as tcpproxy's tests record a client.
func goHello(cfg *tls.Config) func(t *testing.T) []byte {
	return func(t *testing.T) []byte {
		conn := &pipeConn{}
		if err := tls.Client(conn, cfg).Handshake(); err == nil {
			t.Fatal("handshake against EOF succeeded")
		}
		return conn.out.Bytes()
	}
}

// goECHHello records a client that has an ECH config (draft-ietf-tls-esni
// §4) for a made-up X25519 key: its outer hello names public.example and
// carries encrypted_client_hello.
func goECHHello(t *testing.T) []byte {
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { // ECHConfigList
		b.AddUint16(extECH) // version
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddUint8(7)       // config_id
			b.AddUint16(0x0020) // DHKEM(X25519, HKDF-SHA256)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(key.PublicKey().Bytes()) })
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint16(0x0001) // HKDF-SHA256
				b.AddUint16(0x0001) // AES-128-GCM
			})
			b.AddUint8(0) // maximum_name_length
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte("public.example")) })
			b.AddUint16(0) // extensions
		})
	})
	return goHello(&tls.Config{
		ServerName:                     "secret.example",
		MinVersion:                     tls.VersionTLS13,
		EncryptedClientHelloConfigList: b.BytesOrPanic(),
	})(t)
}

// opensslHello records the first record that openssl s_client sends to a
// local listener. OpenSSL sends its hello in one record.
func opensslHello(args ...string) func(t *testing.T) []byte {
	return func(t *testing.T) []byte {
		if _, err := exec.LookPath("openssl"); err != nil {
			t.Skip("openssl not on PATH; keeping the recorded fixture")
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "openssl",
			append([]string{"s_client", "-connect", ln.Addr().String()}, args...)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Wait()
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
		conn, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		hdr := make([]byte, recordHeaderLen)
		if _, err := io.ReadFull(conn, hdr); err != nil {
			t.Fatal(err)
		}
		rec := make([]byte, int(hdr[3])<<8|int(hdr[4]))
		if _, err := io.ReadFull(conn, rec); err != nil {
			t.Fatal(err)
		}
		return append(hdr, rec...)
	}
}
