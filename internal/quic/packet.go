package quic

import (
	"errors"
	"fmt"
	"iter"

	"golang.org/x/crypto/cryptobyte"
)

// PacketType says what a packet of a datagram is.
type PacketType uint8

const (
	Initial            PacketType = iota + 1 // RFC 9000 §17.2.2
	ZeroRTT                                  // §17.2.3
	Handshake                                // §17.2.4
	Retry                                    // §17.2.5
	VersionNegotiation                       // §17.2.1: version 0
	UnknownVersion                           // a long header of a version the package does not know
	ShortHeader                              // §17.3: a 1-RTT packet, or whatever follows the last long-header packet
)

func (t PacketType) String() string {
	switch t {
	case Initial:
		return "Initial"
	case ZeroRTT:
		return "0-RTT"
	case Handshake:
		return "Handshake"
	case Retry:
		return "Retry"
	case VersionNegotiation:
		return "VersionNegotiation"
	case UnknownVersion:
		return "UnknownVersion"
	case ShortHeader:
		return "ShortHeader"
	}
	return fmt.Sprintf("PacketType(%d)", uint8(t))
}

// maxCIDLen is the longest connection ID of QUIC v1 and v2 (RFC 9000
// §17.2); other versions may use up to 255 bytes (RFC 8999 §5.1).
const maxCIDLen = 20

// retryTagLen is the length of a Retry packet's integrity tag (RFC 9001
// §5.8).
const retryTagLen = 16

// Packet is one packet of a datagram, as [ParseDatagram] found it. Its byte
// slices are views of the datagram, which must outlive them.
type Packet struct {
	Type PacketType
	// Version is the long header's version: 0 for a VersionNegotiation
	// packet, and for a ShortHeader packet, which carries none.
	Version Version
	// DCID and SCID are the Destination and Source Connection IDs of a long
	// header. A short header has no SCID, and the length of its DCID is
	// known only to the endpoint that chose it, so both are nil there.
	DCID, SCID []byte
	// Token is the token of an Initial packet (empty unless the server gave
	// one in a Retry or a NEW_TOKEN frame), or the Retry Token of a Retry.
	Token []byte
	// Raw is the whole packet: header, packet number and payload, and for a
	// Retry its integrity tag.
	Raw []byte

	pnOffset int    // Initial, 0-RTT, Handshake: where the packet number starts in Raw
	versions []byte // VersionNegotiation: the Supported Version fields
}

// Versions yields the versions a VersionNegotiation packet offers, nothing
// for other packets.
func (p *Packet) Versions() iter.Seq[Version] {
	return func(yield func(Version) bool) {
		for s := cryptobyte.String(p.versions); !s.Empty(); {
			var v uint32
			if !s.ReadUint32(&v) || !yield(Version(v)) {
				return
			}
		}
	}
}

// ParseDatagram appends the packets of d, the payload of one UDP datagram,
// to pkts in the order they come, and returns the extended slice. Pass a
// reused pkts[:0] and it allocates nothing.
//
// A datagram may carry several long-header packets back to back (RFC 9000
// §12.2). Those of QUIC v1 and v2 with a Length field (Initial, 0-RTT,
// Handshake) end where it says; anything else takes the rest of the
// datagram: a Retry, a Version Negotiation packet, a packet of an unknown
// version (whose fields past the connection IDs RFC 8999 does not define),
// and a short-header packet or trailing bytes whose first bit is 0.
//
// Nothing is decrypted, so only the framing is checked: the lengths, the
// connection ID lengths of v1 and v2 (at most 20 bytes), and that a Version
// Negotiation packet lists whole versions. The fixed bit is not checked:
// RFC 9287 lets a client clear it even in an Initial packet.
//
// On a malformed packet ParseDatagram returns the packets before it with
// the error: each coalesced packet stands on its own (RFC 9000 §12.2).
func ParseDatagram(d []byte, pkts []Packet) ([]Packet, error) {
	if len(d) == 0 {
		return pkts, errors.New("empty datagram")
	}
	for len(d) > 0 {
		if d[0]&0x80 == 0 { // header form bit (RFC 9000 §17.3)
			return append(pkts, Packet{Type: ShortHeader, Raw: d[:len(d):len(d)]}), nil
		}
		p, n, err := parseLong(d)
		if err != nil {
			return pkts, fmt.Errorf("packet %d of the datagram: %w", len(pkts)+1, err)
		}
		pkts = append(pkts, p)
		d = d[n:]
	}
	return pkts, nil
}

// parseLong reads the long-header packet at the start of d (RFC 9000
// §17.2) and returns it and its length.
func parseLong(d []byte) (Packet, int, error) {
	s := cryptobyte.String(d)
	var first uint8
	var version uint32
	var dcid, scid cryptobyte.String
	if !s.ReadUint8(&first) || !s.ReadUint32(&version) ||
		!s.ReadUint8LengthPrefixed(&dcid) || !s.ReadUint8LengthPrefixed(&scid) {
		return Packet{}, 0, errors.New("long header truncated")
	}
	p := Packet{Version: Version(version), DCID: cap3(dcid), SCID: cap3(scid), Raw: d[:len(d):len(d)]}
	switch {
	case p.Version == versionNegotiation:
		if len(s)%4 != 0 {
			return Packet{}, 0, fmt.Errorf("version negotiation list of %d bytes, not whole versions", len(s))
		}
		p.Type, p.versions = VersionNegotiation, cap3(s)
		return p, len(d), nil
	case !p.Version.Known():
		p.Type = UnknownVersion
		return p, len(d), nil
	case len(dcid) > maxCIDLen || len(scid) > maxCIDLen:
		return Packet{}, 0, fmt.Errorf("%v connection ID of %d and %d bytes, over %d", p.Version, len(dcid), len(scid), maxCIDLen)
	}
	p.Type = p.Version.params().types[first>>4&0b11]
	switch p.Type {
	case Retry:
		if len(s) < retryTagLen {
			return Packet{}, 0, errors.New("retry packet shorter than its integrity tag")
		}
		p.Token = cap3(s[:len(s)-retryTagLen])
		return p, len(d), nil
	case Initial:
		var tokenLen uint64
		if !readVarint(&s, &tokenLen) || tokenLen > uint64(len(s)) {
			return Packet{}, 0, errors.New("initial packet: token length truncated or beyond the datagram")
		}
		p.Token = cap3(s[:tokenLen])
		s = s[tokenLen:]
	}
	var length uint64
	if !readVarint(&s, &length) || length > uint64(len(s)) {
		return Packet{}, 0, fmt.Errorf("%v packet: length truncated or beyond the datagram", p.Type)
	}
	p.pnOffset = len(d) - len(s)
	n := p.pnOffset + int(length)
	p.Raw = d[:n:n]
	return p, n, nil
}

// cap3 returns b with its capacity cut to its length, so that no append to
// a view can write into the datagram.
func cap3(b []byte) []byte { return b[:len(b):len(b)] }
