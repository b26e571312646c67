package gateway

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// echList is an ECHConfigList (RFC 9849 §4) with one X25519 config.
func echList(t *testing.T, id uint8, publicName string) []byte {
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(0xfe0d)
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddUint8(id)
			b.AddUint16(0x0020)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(key.PublicKey().Bytes()) })
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(1); b.AddUint16(1) })
			b.AddUint8(0)
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(publicName)) })
			b.AddUint16(0)
		})
	})
	return b.BytesOrPanic()
}

// TestECHRealOrGrease: a crypto/tls client with an ECH config sends an outer
// hello named after the config's public name. egressd logs ech: true only
// when this client was handed that config (public name and config_id)
// through its DNS; the same hello from a client that was not, or with
// another config_id (what GREASE ECH looks like), is ech: false. Either way
// the decision is on the outer name.
func TestECHRealOrGrease(t *testing.T) {
	w := newWorld(t, records{"cover.example.test": {"127.0.0.1"}}, `dns: {address: "127.0.0.1:0", upstreams: ["127.0.0.1:9"]}
policy:
  rules:
    - {name: cover, action: allow, fqdn: [cover.example.test], destinations: [127.0.0.1/32]}
`)
	w.gw.clientNames.RecordECH(netip.MustParseAddr("127.0.0.1"), "cover.example.test", 7, time.Minute)
	for _, tc := range []struct {
		name string
		src  string
		id   uint8
		want bool
	}{
		{"config handed to this client", "127.0.0.1", 7, true},
		{"another config_id, as GREASE", "127.0.0.1", 8, false},
		{"another client", "127.0.0.2", 7, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(tc.src)}}
			raw, err := d.Dial("tcp", w.addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			raw.SetDeadline(time.Now().Add(5 * time.Second))
			// The echo server has no ECH key: the handshake fails after
			// egressd has decided, which is all this test needs.
			tls.Client(raw, &tls.Config{ServerName: "secret.example.test", MinVersion: tls.VersionTLS13,
				EncryptedClientHelloConfigList: echList(t, tc.id, "cover.example.test")}).Handshake()
			raw.Close()
			e := w.waitLog(bySrcPort(raw))
			w.want(e, map[string]any{"fqdn": "cover.example.test", "fqdn_source": "sni", "rule": "cover", "action": "allow", "ech": tc.want})
			if hasNote := strings.Contains(e["reason"].(string), "ECH: decided on the outer server name"); hasNote != tc.want {
				t.Errorf("reason %q: ECH note present %v, want %v", e["reason"], hasNote, tc.want)
			}
		})
	}
}
