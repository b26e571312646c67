package quic

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"testing"

	"github.com/egressd/egressd/internal/clienthello"
)

// The examples of RFC 9001 Appendix A (QUIC v1) and RFC 9369 Appendix A
// (QUIC v2): one client Destination Connection ID, the keys both sides
// derive from it, and the packets they protect with them. A wrong vector
// cannot pass: every packet must decrypt, and rebuild byte for byte.

var rfcDCID = []byte{0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08}

type sideVector struct {
	secret, key, iv, hp string
	sample, mask        string // header protection of the side's example packet
}

var keyVectors = []struct {
	v              Version
	initial        string // initial_secret; RFC 9369 does not print it
	client, server sideVector
}{{
	v:       Version1,
	initial: "7db5df06e7a69e432496adedb0085192 3595221596ae2ae9fb8115c1e9ed0a44",
	client: sideVector{
		secret: "c00cf151ca5be075ed0ebfb5c80323c4 2d6b7db67881289af4008f1f6c357aea",
		key:    "1f369613dd76d5467730efcbe3b1a22d",
		iv:     "fa044b2f42a3fd3b46fb255c",
		hp:     "9f50449e04a0e810283a1e9933adedd2",
		sample: "d1b1c98dd7689fb8ec11d242b123dc9b", mask: "437b9aec36",
	},
	server: sideVector{
		secret: "3c199828fd139efd216c155ad844cc81 fb82fa8d7446fa7d78be803acdda951b",
		key:    "cf3a5331653c364c88f0f379b6067e37",
		iv:     "0ac1493ca1905853b0bba03e",
		hp:     "c206b8d9b9f0f37644430b490eeaa314",
		sample: "2cd0991cd25b0aac406a5816b6394100", mask: "2ec0d8356a",
	},
}, {
	v: Version2,
	client: sideVector{
		secret: "14ec9d6eb9fd7af83bf5a668bc17a7e2 83766aade7ecd0891f70f9ff7f4bf47b",
		key:    "8b1a0bc121284290a29e0971b5cd045d",
		iv:     "91f73e2351d8fa91660e909f",
		hp:     "45b95e15235d6f45a6b19cbcb0294ba9",
		sample: "ffe67b6abcdb4298b485dd04de806071", mask: "94a0c95e80",
	},
	server: sideVector{
		secret: "0263db1782731bf4588e7e4d93b74639 07cb8cd8200b5da55a8bd488eafc37c1",
		key:    "82db637861d55e1d011f19ea71d5d2a7",
		iv:     "dd13c276499c0249d3310652",
		hp:     "edf6d05c83121201b436e16877593c3a",
		sample: "6f05d8a4398c47089698baeea26b91eb", mask: "4dd92e91ea",
	},
}}

func TestInitialKeys(t *testing.T) {
	for _, tt := range keyVectors {
		p := tt.v.params()
		if tt.initial != "" {
			got, err := hkdf.Extract(sha256.New, rfcDCID, p.salt)
			if err != nil || !bytes.Equal(got, unhex(t, tt.initial)) {
				t.Errorf("%v initial_secret = %x, %v; want %s", tt.v, got, err, tt.initial)
			}
		}
		for _, side := range []struct {
			label string
			want  sideVector
			keys  func(Version, []byte) (*Keys, error)
		}{{"client in", tt.client, ClientInitialKeys}, {"server in", tt.server, ServerInitialKeys}} {
			t.Run(tt.v.String()+"/"+side.label, func(t *testing.T) {
				secret, err := initialSecret(p, rfcDCID, side.label)
				if err != nil || !bytes.Equal(secret, unhex(t, side.want.secret)) {
					t.Fatalf("secret = %x, %v; want %s", secret, err, side.want.secret)
				}
				for _, kv := range []struct{ label, want string }{
					{p.key, side.want.key}, {p.iv, side.want.iv}, {p.hp, side.want.hp},
				} {
					got, err := expandLabel(secret, kv.label, len(kv.want)/2)
					if err != nil || !bytes.Equal(got, unhex(t, kv.want)) {
						t.Errorf("HKDF-Expand-Label(%q) = %x, %v; want %s", kv.label, got, err, kv.want)
					}
				}
				k, err := side.keys(tt.v, rfcDCID)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(k.iv[:], unhex(t, side.want.iv)) {
					t.Errorf("Keys.iv = %x, want %s", k.iv, side.want.iv)
				}
				var mask [sampleLen]byte
				k.hp.Encrypt(mask[:], unhex(t, side.want.sample))
				if want := unhex(t, side.want.mask); !bytes.Equal(mask[:len(want)], want) {
					t.Errorf("header protection mask of sample %s = %x, want %s", side.want.sample, mask[:len(want)], side.want.mask)
				}
			})
		}
	}
}

// TestRFCClientInitial opens the example client Initial packet of each
// RFC: it carries a CRYPTO frame with a ClientHello for example.com, then
// PADDING, under packet number 2 in 4 bytes.
func TestRFCClientInitial(t *testing.T) {
	crypto := loadHex(t, "rfc9001-a2-client-crypto")
	payload := append(bytes.Clone(crypto), make([]byte, 1162-len(crypto))...)
	for _, tt := range []struct {
		v    Version
		file string
	}{{Version1, "rfc9001-a2-client-initial"}, {Version2, "rfc9369-a2-client-initial"}} {
		t.Run(tt.v.String(), func(t *testing.T) {
			datagram := loadHex(t, tt.file)
			orig := bytes.Clone(datagram)
			pkts, err := ParseDatagram(datagram, nil)
			if err != nil || len(pkts) != 1 {
				t.Fatalf("ParseDatagram = %d packets, %v; want 1, nil", len(pkts), err)
			}
			p := pkts[0]
			if p.Type != Initial || p.Version != tt.v || !bytes.Equal(p.DCID, rfcDCID) ||
				len(p.SCID) != 0 || len(p.Token) != 0 || len(p.Raw) != 1200 {
				t.Fatalf("packet = %v %v DCID %x SCID %x token %x, %d bytes", p.Type, p.Version, p.DCID, p.SCID, p.Token, len(p.Raw))
			}
			keys, err := ClientInitialKeys(tt.v, p.DCID)
			if err != nil {
				t.Fatal(err)
			}
			got, pn, err := keys.Open(nil, &p, -1)
			if err != nil || pn != 2 || !bytes.Equal(got, payload) {
				t.Fatalf("Open = %d bytes, pn %d, %v; want the %d-byte payload, pn 2", len(got), pn, err, len(payload))
			}
			if !bytes.Equal(datagram, orig) {
				t.Error("Open modified the datagram")
			}
			f, n, err := ReadFrame(got)
			if err != nil || f.Type != FrameCrypto || f.Offset != 0 || n != len(crypto) {
				t.Fatalf("ReadFrame = %v offset %d, %d bytes, %v", f.Type, f.Offset, n, err)
			}
			var info clienthello.Info
			if !clienthello.Parse(f.Data, &info) || string(info.ServerName) != "example.com" {
				t.Fatalf("clienthello.Parse(CRYPTO data) server name %q, want example.com", info.ServerName)
			}
			if alpn := info.ALPN.Strings(); len(alpn) != 1 || alpn[0] != "alpn" {
				t.Errorf("ALPN = %q, want [alpn]", alpn)
			}

			var a Assembler
			if st, err := a.AddDatagram(datagram); st != Complete || err != nil {
				t.Fatalf("AddDatagram = %v, %v; want Complete", st, err)
			}
			if !bytes.Equal(a.Hello(), f.Data) {
				t.Error("Assembler.Hello differs from the CRYPTO frame's data")
			}

			// Sealing the same payload gives the same packet, byte for byte.
			if rebuilt := keys.appendInitial(nil, tt.v, rfcDCID, nil, nil, 2, 4, payload); !bytes.Equal(rebuilt, datagram) {
				t.Errorf("appendInitial rebuilt\n%x\nwant\n%x", rebuilt, datagram)
			}
		})
	}
}

// TestRFCServerInitial opens the example server Initial packet: an ACK
// frame and a CRYPTO frame with a ServerHello, under packet number 1 in 2
// bytes, protected with the server keys of the client's DCID.
func TestRFCServerInitial(t *testing.T) {
	payload := unhex(t, "02000000000600405a020000560303ee fce7f7b37ba1d1632e96677825ddf739 88cfc79825df566dc5430b9a045a1200 130100002e00330024001d00209d3c94 0d89690b84d08a60993c144eca684d10 81287c834d5311bcf32bb9da1a002b00 020304")
	scid := unhex(t, "f067a5502a4262b5")
	for _, tt := range []struct {
		v      Version
		packet string
	}{
		{Version1, "cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a5816b6394100f37a1c69797554780bb38cc5a99f5ede4cf73c3ec2493a1839b3dbcba3f6ea46c5b7684df3548e7ddeb9c3bf9c73cc3f3bded74b562bfb19fb84022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d20398c276456cbc42158407dd074ee"},
		{Version2, "dc6b3343cf0008f067a5502a4262b5004075d92faaf16f05d8a4398c47089698baeea26b91eb761d9b89237bbf87263017915358230035f7fd3945d88965cf17f9af6e16886c61bfc703106fbaf3cb4cfa52382dd16a393e42757507698075b2c984c707f0a0812d8cd5a6881eaf21ceda98f4bd23f6fe1a3e2c43edd9ce7ca84bed8521e2e140"},
	} {
		t.Run(tt.v.String(), func(t *testing.T) {
			datagram := unhex(t, tt.packet)
			pkts, err := ParseDatagram(datagram, nil)
			if err != nil || len(pkts) != 1 || pkts[0].Type != Initial || len(pkts[0].DCID) != 0 || !bytes.Equal(pkts[0].SCID, scid) {
				t.Fatalf("ParseDatagram = %+v, %v", pkts, err)
			}
			keys, err := ServerInitialKeys(tt.v, rfcDCID)
			if err != nil {
				t.Fatal(err)
			}
			got, pn, err := keys.Open(nil, &pkts[0], -1)
			if err != nil || pn != 1 || !bytes.Equal(got, payload) {
				t.Fatalf("Open = %x, pn %d, %v; want %x, pn 1", got, pn, err, payload)
			}
			var types []FrameType
			for rest := got; len(rest) > 0; {
				f, n, err := ReadFrame(rest)
				if err != nil {
					t.Fatalf("ReadFrame: %v", err)
				}
				types = append(types, f.Type)
				if f.Type == FrameCrypto && (f.Offset != 0 || len(f.Data) != 90 || f.Data[0] != 2) {
					t.Errorf("CRYPTO frame offset %d, %d bytes, type %d; want a 90-byte ServerHello at 0", f.Offset, len(f.Data), f.Data[0])
				}
				rest = rest[n:]
			}
			if len(types) != 2 || types[0] != FrameAck || types[1] != FrameCrypto {
				t.Errorf("frames = %v, want [ACK CRYPTO]", types)
			}
			if rebuilt := keys.appendInitial(nil, tt.v, nil, scid, nil, 1, 2, payload); !bytes.Equal(rebuilt, datagram) {
				t.Errorf("appendInitial rebuilt\n%x\nwant\n%x", rebuilt, datagram)
			}
			if _, _, err := mustKeys(t)(ClientInitialKeys(tt.v, rfcDCID)).Open(nil, &pkts[0], -1); err == nil {
				t.Error("the client keys opened a server packet")
			}
		})
	}
}

// TestRFCRetry reads the example Retry packets (RFC 9001 §A.4, RFC 9369
// §A.4): recognised and reported, not verified.
func TestRFCRetry(t *testing.T) {
	for _, tt := range []struct {
		v      Version
		packet string
	}{
		{Version1, "ff000000010008f067a5502a4262b574 6f6b656e04a265ba2eff4d829058fb3f 0f2496ba"},
		{Version2, "cf6b3343cf0008f067a5502a4262b574 6f6b656ec8646ce8bfe33952d9555436 65dcc7b6"},
	} {
		pkts, err := ParseDatagram(unhex(t, tt.packet), nil)
		if err != nil || len(pkts) != 1 {
			t.Fatalf("%v: ParseDatagram = %d packets, %v", tt.v, len(pkts), err)
		}
		p := pkts[0]
		if p.Type != Retry || p.Version != tt.v || len(p.DCID) != 0 || string(p.Token) != "token" ||
			!bytes.Equal(p.SCID, unhex(t, "f067a5502a4262b5")) {
			t.Errorf("%v: Retry = %v %v DCID %x SCID %x token %q", tt.v, p.Type, p.Version, p.DCID, p.SCID, p.Token)
		}
	}
}

// mustKeys returns a function that passes on the keys a derivation returns
// and fails t on its error.
func mustKeys(t testing.TB) func(*Keys, error) *Keys {
	return func(k *Keys, err error) *Keys {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
}
