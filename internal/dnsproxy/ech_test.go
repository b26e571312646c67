package dnsproxy

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/egressd/egressd/internal/clienthello"
)

// echConfigList builds an ECHConfigList with one X25519 config per name.
func echConfigList(t testing.TB, ids []uint8, names ...string) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for i, name := range names {
			key, err := ecdh.X25519().GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			b.AddUint16(echVersion)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint8(ids[i])
				b.AddUint16(0x0020) // DHKEM(X25519, HKDF-SHA256)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(key.PublicKey().Bytes()) })
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					b.AddUint16(0x0001) // HKDF-SHA256
					b.AddUint16(0x0001) // AES-128-GCM
				})
				b.AddUint8(0)
				b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(name)) })
				b.AddUint16(0)
			})
		}
	})
	return b.BytesOrPanic()
}

func TestParseECHConfigList(t *testing.T) {
	two := echConfigList(t, []uint8{7, 9}, "cover.example.test", "other.example.test")
	configs, ok := ParseECHConfigList(two)
	if !ok || len(configs) != 2 || configs[0] != (ECHConfig{"cover.example.test", 7}) || configs[1] != (ECHConfig{"other.example.test", 9}) {
		t.Errorf("ParseECHConfigList(two configs) = %v, %v", configs, ok)
	}
	// The fuzz oracle works: crypto/tls sends the first config's public
	// name and config_id in its outer hello.
	var info clienthello.Info
	hello := goHelloWithECH(two)
	if _, st := clienthello.Examine(hello, make([]byte, 0, clienthello.MaxHelloLen), &info); st != clienthello.Complete ||
		!info.ECHOuter || string(info.ServerName) != "cover.example.test" || info.ECHConfigID != 7 {
		t.Errorf("crypto/tls hello with the list: %v, outer %v, SNI %q, config_id %d; want outer, cover.example.test, 7",
			st, info.ECHOuter, info.ServerName, info.ECHConfigID)
	}
	// An unknown version is skipped by its length.
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(0xfe0a)
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte("old draft")) })
		b.AddBytes(two[2:])
	})
	if configs, ok := ParseECHConfigList(b.BytesOrPanic()); !ok || len(configs) != 2 {
		t.Errorf("with an unknown version first: %v, %v; want the two known configs", configs, ok)
	}
	for _, bad := range [][]byte{nil, {0}, {0, 1}, two[:len(two)-1], append(bytes.Clone(two), 0)} {
		if configs, ok := ParseECHConfigList(bad); ok {
			t.Errorf("ParseECHConfigList(%x) = %v, ok; want malformed", bad, configs)
		}
	}
}

// FuzzECHConfigList checks ParseECHConfigList against crypto/tls: where we
// accept a list and a Go client given it sends an ECH ClientHello, the outer
// server name and config_id it sends must be a config we parsed.
func FuzzECHConfigList(f *testing.F) {
	f.Add(echConfigList(f, []uint8{7}, "cover.example.test"))
	f.Add(echConfigList(f, []uint8{1, 2}, "a.test", "b.test"))
	f.Add([]byte{0, 4, 0xfe, 0x0d, 0, 0})
	f.Fuzz(func(t *testing.T, list []byte) {
		configs, ok := ParseECHConfigList(list)
		for _, c := range configs {
			if c.PublicName == "" || len(c.PublicName) > 255 {
				t.Fatalf("config with public name %q", c.PublicName)
			}
		}
		hello := goHelloWithECH(list)
		if hello == nil {
			return // crypto/tls refused the list
		}
		var info clienthello.Info
		if _, st := clienthello.Examine(hello, make([]byte, 0, clienthello.MaxHelloLen), &info); st != clienthello.Complete || !info.ECHOuter {
			return
		}
		if !ok {
			// crypto/tls reads a config's fields past the config's declared
			// length (found by this fuzzer: testdata/fuzz/FuzzECHConfigList);
			// RFC 9849 §4 does not allow that and we refuse the list. The
			// cost is on the safe side: such a client's ECH logs as
			// ech: false, as if it were GREASE.
			return
		}
		for _, c := range configs {
			if c.PublicName == string(info.ServerName) && c.ConfigID == info.ECHConfigID {
				return
			}
		}
		t.Fatalf("crypto/tls sent outer SNI %q config_id %d; we parsed %v", info.ServerName, info.ECHConfigID, configs)
	})
}

// goHelloWithECH returns the first flight of a crypto/tls client given the
// list, or nil if it refused to start.
func goHelloWithECH(list []byte) []byte {
	c, s := net.Pipe()
	defer s.Close()
	got := make(chan []byte, 1)
	go func() {
		s.SetDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 64<<10)
		n, _ := s.Read(buf)
		got <- buf[:n]
	}()
	tc := tls.Client(c, &tls.Config{ServerName: "secret.example.test", MinVersion: tls.VersionTLS13,
		EncryptedClientHelloConfigList: list, InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(2 * time.Second))
	errc := make(chan error, 1)
	go func() { errc <- tc.Handshake() }()
	select {
	case b := <-got:
		c.Close()
		<-errc
		if len(b) == 0 {
			return nil
		}
		return b
	case <-errc:
		c.Close()
		return nil
	}
}
