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
	"syscall"
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
	ja4    string // what JA4 computes for it
}

var fixtures = []fixture{{
	name:   "go-default",
	note:   "crypto/tls client, default Config, ServerName example.com, NextProtos h2 http/1.1",
	record: goHello(&tls.Config{ServerName: "example.com", NextProtos: []string{"h2", "http/1.1"}}),
	minLen: 1500, // X25519MLKEM768 key share: more than one Ethernet packet
	want: infoView{ServerName: "example.com", HasSNI: true, ALPN: []string{"h2", "http/1.1"},
		LegacyVersion: tls.VersionTLS12, RecordVersion: tls.VersionTLS10,
		Versions: []uint16{tls.VersionTLS13, tls.VersionTLS12}},
	ja4: "t13d1312h2_f57a46bbacb6_ab7e3b40a677",
}, {
	name:   "go-tls12",
	note:   "crypto/tls client, MaxVersion TLS 1.2, ServerName api.example.net",
	record: goHello(&tls.Config{ServerName: "api.example.net", MaxVersion: tls.VersionTLS12}),
	want: infoView{ServerName: "api.example.net", HasSNI: true,
		LegacyVersion: tls.VersionTLS12, RecordVersion: tls.VersionTLS10,
		Versions: []uint16{tls.VersionTLS12}},
	ja4: "t12d101000_a8cf61a50a39_a92c7c6a82fe",
}, {
	name:   "go-nosni",
	note:   "crypto/tls client, no ServerName, InsecureSkipVerify",
	record: goHello(&tls.Config{InsecureSkipVerify: true}),
	want: infoView{LegacyVersion: tls.VersionTLS12, RecordVersion: tls.VersionTLS10,
		Versions: []uint16{tls.VersionTLS13, tls.VersionTLS12}},
	ja4: "t13i131000_f57a46bbacb6_ab7e3b40a677",
}, {
	name:   "go-idn",
	note:   "crypto/tls client, ServerName xn--bcher-kva.example (bücher.example in punycode)",
	record: goHello(&tls.Config{ServerName: "xn--bcher-kva.example"}),
	want: infoView{ServerName: "xn--bcher-kva.example", HasSNI: true,
		LegacyVersion: tls.VersionTLS12, RecordVersion: tls.VersionTLS10,
		Versions: []uint16{tls.VersionTLS13, tls.VersionTLS12}},
	ja4: "t13d131100_f57a46bbacb6_ab7e3b40a677",
}, {
	name:   "go-ech",
	note:   "crypto/tls client with an ECH config for public.example, ServerName secret.example",
	record: goECHHello,
	want: infoView{ServerName: "public.example", HasSNI: true, ECH: true, ECHOuter: true, ECHConfigID: 7,
		LegacyVersion: tls.VersionTLS12, RecordVersion: tls.VersionTLS10,
		Versions: []uint16{tls.VersionTLS13}},
	ja4: "t13d030900_55b375c5d22e_75ab3bfddadf",
}, {
	name:   "openssl",
	note:   "openssl s_client -servername openssl.example -alpn h2,http/1.1",
	record: opensslHello("-servername", "openssl.example", "-alpn", "h2,http/1.1"),
	want: infoView{ServerName: "openssl.example", HasSNI: true, ALPN: []string{"h2", "http/1.1"},
		LegacyVersion: tls.VersionTLS12, RecordVersion: tls.VersionTLS10,
		Versions: []uint16{tls.VersionTLS13, tls.VersionTLS12, tls.VersionTLS11, tls.VersionTLS10}},
	ja4: "t13d3111h2_e8f1e7e78f70_1f22a2ca17c4",
}, {
	name:   "curl",
	note:   "curl https://curl.example/ (Debian's, OpenSSL)",
	record: curlHello,
	want: infoView{ServerName: "curl.example", HasSNI: true, ALPN: []string{"h2", "http/1.1"},
		LegacyVersion: tls.VersionTLS12, RecordVersion: tls.VersionTLS10,
		Versions: []uint16{tls.VersionTLS13, tls.VersionTLS12, tls.VersionTLS11, tls.VersionTLS10}},
	ja4: "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6",
}, {
	name:   "chromium",
	note:   "chromium --headless https://chromium.example/ (Debian's), fresh profile",
	record: chromiumHello,
	// Chromium sends GREASE: a random value first in supported_versions
	// and a GREASE ECH extension with a random config_id, so recording it
	// again changes those two here (and nothing in its JA4).
	want: infoView{ServerName: "chromium.example", HasSNI: true, ALPN: []string{"h2", "http/1.1"},
		LegacyVersion: tls.VersionTLS12, RecordVersion: tls.VersionTLS10,
		Versions: []uint16{0x5a5a, tls.VersionTLS13, tls.VersionTLS12},
		ECH:      true, ECHOuter: true, ECHConfigID: 63},
	ja4: "t13d1517h2_8daaf6152771_cb7bf5808d99",
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
			if got := JA4(&info, TCP); got != fx.ja4 {
				t.Errorf("JA4(%s) = %s, want %s", fx.name, got, fx.ja4)
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
	return commandHello("openssl", func(addr string) []string {
		return append([]string{"s_client", "-connect", addr}, args...)
	})
}

// curlHello records curl fetching https://curl.example/ from a local
// listener.
func curlHello(t *testing.T) []byte {
	return commandHello("curl", func(addr string) []string {
		_, port, _ := net.SplitHostPort(addr)
		return []string{"-sk", "--max-time", "10", "--resolve", "curl.example:" + port + ":127.0.0.1",
			"https://curl.example:" + port + "/"}
	})(t)
}

// chromiumHello records headless Chromium loading https://chromium.example/
// from a local listener, in a fresh profile.
func chromiumHello(t *testing.T) []byte {
	profile := t.TempDir()
	return commandHello("chromium", func(addr string) []string {
		_, port, _ := net.SplitHostPort(addr)
		return []string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--user-data-dir=" + profile, "--host-resolver-rules=MAP chromium.example 127.0.0.1",
			"--dump-dom", "https://chromium.example:" + port + "/"}
	})(t)
}

// commandHello records the first TLS record that the program sends to a
// local listener when run with args(the listener's address). The clients
// recorded this way send their hello in one record. The program runs in a
// process group of its own, ended whole afterwards: a browser has children.
func commandHello(program string, args func(addr string) []string) func(t *testing.T) []byte {
	return func(t *testing.T) []byte {
		if _, err := exec.LookPath(program); err != nil {
			t.Skipf("%s not on PATH; keeping the recorded fixture", program)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, program, args(ln.Addr().String())...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Wait()
		defer cancel()
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(20 * time.Second))
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
