package quic

import "fmt"

// Version is a QUIC version number, as on the wire (RFC 9000 §15).
type Version uint32

const (
	// Version1 is QUIC version 1 (RFC 9000).
	Version1 Version = 0x00000001
	// Version2 is QUIC version 2 (RFC 9369 §3.1), which differs from
	// version 1 only in its number, its long-header type bits, its
	// Initial salt and its HKDF labels — enough to fight ossification.
	Version2 Version = 0x6b3343cf
	// versionNegotiation marks a Version Negotiation packet (RFC 9000
	// §17.2.1).
	versionNegotiation Version = 0
)

// Known reports whether the package can open this version's Initial packets.
func (v Version) Known() bool { return v == Version1 || v == Version2 }

func (v Version) String() string {
	switch v {
	case Version1:
		return "v1"
	case Version2:
		return "v2"
	}
	return fmt.Sprintf("0x%08x", uint32(v))
}

// params are what differs between the versions the package knows.
type params struct {
	salt  []byte
	key   string // HKDF labels, without the "tls13 " prefix
	iv    string
	hp    string
	types [4]PacketType // long-header packet type by its two type bits
}

var (
	// RFC 9001 §5.2.
	paramsV1 = params{
		salt: []byte{
			0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
			0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a,
		},
		key: "quic key", iv: "quic iv", hp: "quic hp",
		// RFC 9000 §17.2, Table 5.
		types: [4]PacketType{Initial, ZeroRTT, Handshake, Retry},
	}
	// RFC 9369 §3.3.
	paramsV2 = params{
		salt: []byte{
			0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93,
			0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9,
		},
		key: "quicv2 key", iv: "quicv2 iv", hp: "quicv2 hp",
		// RFC 9369 §3.2.
		types: [4]PacketType{Retry, Initial, ZeroRTT, Handshake},
	}
)

func (v Version) params() *params {
	switch v {
	case Version1:
		return &paramsV1
	case Version2:
		return &paramsV2
	}
	return nil
}

// typeBits returns the two long-header type bits of t, which must be one of
// the four types that have them.
func (p *params) typeBits(t PacketType) byte {
	for bits, pt := range p.types {
		if pt == t {
			return byte(bits)
		}
	}
	panic("quic: no type bits for " + t.String())
}
