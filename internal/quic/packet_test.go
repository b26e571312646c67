package quic

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"
	"testing"
)

// longHeader returns a long header's first bytes: the first byte, the
// version and the two connection IDs.
func longHeader(first byte, v Version, dcid, scid []byte) []byte {
	b := binary.BigEndian.AppendUint32([]byte{first}, uint32(v))
	b = append(append(b, byte(len(dcid))), dcid...)
	return append(append(b, byte(len(scid))), scid...)
}

func TestParseDatagram(t *testing.T) {
	dcid, scid := []byte("12345678"), []byte("abcd")
	initial := func(v Version, token []byte, rest ...byte) []byte {
		bits := v.params().typeBits(Initial)
		b := longHeader(0xc0|bits<<4, v, dcid, scid)
		b = appendVarint(b, uint64(len(token)))
		return append(append(b, token...), rest...)
	}
	withLen := func(typ PacketType, v Version, body int) []byte {
		bits := v.params().typeBits(typ)
		b := longHeader(0xc0|bits<<4, v, dcid, scid)
		if typ == Initial {
			b = append(b, 0)
		}
		b = appendVarintN(b, uint64(body), 2)
		return append(b, bytes.Repeat([]byte{0xaa}, body)...)
	}
	tests := []struct {
		name    string
		d       []byte
		want    []PacketType // the packets returned
		wantErr string       // "" for none
	}{
		{"empty", nil, nil, "empty datagram"},
		{"short header", []byte{0x40, 1, 2, 3}, []PacketType{ShortHeader}, ""},
		{"initial v1", withLen(Initial, Version1, 30), []PacketType{Initial}, ""},
		{"initial v2", withLen(Initial, Version2, 30), []PacketType{Initial}, ""},
		{"handshake v2 bits", withLen(Handshake, Version2, 30), []PacketType{Handshake}, ""},
		{"0-RTT v2 bits", withLen(ZeroRTT, Version2, 30), []PacketType{ZeroRTT}, ""},
		{"fixed bit clear (RFC 9287)", append([]byte{0x80}, withLen(Initial, Version1, 30)[1:]...), []PacketType{Initial}, ""},
		{"coalesced initial, 0-RTT, handshake, short tail",
			cat(withLen(Initial, Version1, 30), withLen(ZeroRTT, Version1, 40), withLen(Handshake, Version1, 25), []byte{0, 0, 0}),
			[]PacketType{Initial, ZeroRTT, Handshake, ShortHeader}, ""},
		{"version negotiation", cat(longHeader(0x80, 0, scid, dcid), []byte{0, 0, 0, 1, 0x6b, 0x33, 0x43, 0xcf}),
			[]PacketType{VersionNegotiation}, ""},
		{"version negotiation, partial version", cat(longHeader(0x80, 0, scid, dcid), []byte{0, 0, 0, 1, 0x6b}),
			nil, "not whole versions"},
		{"unknown version, long CIDs", cat(longHeader(0xc0, 0xff00001d, bytes.Repeat([]byte{1}, 40), nil), []byte("whatever")),
			[]PacketType{UnknownVersion}, ""},
		{"grease version after an initial", cat(withLen(Initial, Version1, 30), longHeader(0xc0, 0x1a2a3a4a, dcid, nil)),
			[]PacketType{Initial, UnknownVersion}, ""},
		{"retry", cat(longHeader(0xf0, Version1, scid, dcid), []byte("tok"), make([]byte, 16)), []PacketType{Retry}, ""},
		{"retry shorter than its tag", cat(longHeader(0xf0, Version1, scid, dcid), make([]byte, 15)), nil, "integrity tag"},

		{"one byte", []byte{0xc0}, nil, "long header truncated"},
		{"truncated version", []byte{0xc0, 0, 0, 0}, nil, "long header truncated"},
		{"DCID beyond datagram", []byte{0xc0, 0, 0, 0, 1, 8, 1, 2}, nil, "long header truncated"},
		{"no SCID length", longHeader(0xc0, Version1, dcid, nil)[:6+len(dcid)], nil, "long header truncated"},
		{"v1 DCID of 21 bytes", withLenCID(bytes.Repeat([]byte{1}, 21)), nil, "over 20"},
		{"token length missing", initial(Version1, nil)[:6+len(dcid)+1+len(scid)], nil, "token length"},
		{"token length varint truncated", cat(initial(Version1, nil)[:6+len(dcid)+1+len(scid)], []byte{0xc0, 0x01}), nil, "token length"},
		{"token beyond datagram", cat(initial(Version1, nil)[:6+len(dcid)+1+len(scid)], []byte{0x05, 1, 2}), nil, "token length"},
		{"length missing", initial(Version1, nil), nil, "length truncated"},
		{"length varint truncated", initial(Version1, nil, 0x80, 0x00), nil, "length truncated"},
		{"length beyond datagram", initial(Version1, nil, 0x40, 0x20, 1, 2, 3), nil, "beyond the datagram"},
		{"handshake length beyond datagram", withLen(Handshake, Version1, 30)[:40], nil, "beyond the datagram"},
		{"good then bad", cat(withLen(Initial, Version1, 30), []byte{0xc0, 0, 0}), []PacketType{Initial}, "packet 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := bytes.Clone(tt.d)
			pkts, err := ParseDatagram(d, nil)
			var got []PacketType
			for _, p := range pkts {
				got = append(got, p.Type)
			}
			if !slices.Equal(got, tt.want) || (err == nil) != (tt.wantErr == "") ||
				err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseDatagram(%x) = %v, %v; want %v, error containing %q", tt.d, got, err, tt.want, tt.wantErr)
			}
			checkTiling(t, d, pkts, err == nil)
		})
	}
}

func withLenCID(dcid []byte) []byte {
	return cat(longHeader(0xc0, Version1, dcid, nil), []byte{0, 0x41, 0x00}, make([]byte, 256))
}

// checkTiling checks that the packets are consecutive views of d from its
// start, and cover it all when whole is set.
func checkTiling(t *testing.T, d []byte, pkts []Packet, whole bool) {
	t.Helper()
	off := 0
	for i, p := range pkts {
		if len(p.Raw) == 0 || off+len(p.Raw) > len(d) || &p.Raw[0] != &d[off] || cap(p.Raw) != len(p.Raw) {
			t.Fatalf("packet %d (%v) is not the view d[%d:%d]", i, p.Type, off, off+len(p.Raw))
		}
		off += len(p.Raw)
	}
	if whole && off != len(d) {
		t.Fatalf("packets cover %d of %d bytes", off, len(d))
	}
}

func TestVersionNegotiationVersions(t *testing.T) {
	d := cat(longHeader(0x80, 0, []byte{1}, []byte{2, 3}), []byte{0, 0, 0, 1, 0x6b, 0x33, 0x43, 0xcf, 0x1a, 0x2a, 0x3a, 0x4a})
	pkts, err := ParseDatagram(d, nil)
	if err != nil || len(pkts) != 1 {
		t.Fatalf("ParseDatagram = %v, %v", pkts, err)
	}
	got := slices.Collect(pkts[0].Versions())
	if want := []Version{Version1, Version2, 0x1a2a3a4a}; !slices.Equal(got, want) {
		t.Errorf("Versions() = %v, want %v", got, want)
	}
}

func TestParseDatagramAllocs(t *testing.T) {
	d := loadHex(t, "rfc9001-a2-client-initial")
	pkts := make([]Packet, 0, 4)
	if n := testing.AllocsPerRun(100, func() { pkts, _ = ParseDatagram(d, pkts[:0]) }); n != 0 {
		t.Errorf("ParseDatagram allocates %v times per run, want 0", n)
	}
}

func TestOpenErrors(t *testing.T) {
	dcid := []byte("12345678")
	c := newClient(t, Version1, dcid, nil)
	good := c.packet(cryptoFrame(0, []byte{1, 0, 0, 0}), 2, 1200)
	parse := func(d []byte) *Packet {
		pkts, err := ParseDatagram(d, nil)
		if err != nil || len(pkts) == 0 {
			t.Fatalf("ParseDatagram: %v", err)
		}
		return &pkts[0]
	}
	flipped := bytes.Clone(good)
	flipped[len(flipped)-1] ^= 1 // the tag
	flippedHdr := bytes.Clone(good)
	flippedHdr[7] ^= 1 // a DCID byte: authenticated as associated data

	short := c.packet(nil, 4, 0) // the shortest packet a sample allows: no frames
	truncated := bytes.Clone(short)
	truncated[len(truncated)-21] -= 1 // Length's low byte, one less: the sample no longer fits
	truncated = truncated[:len(truncated)-1]

	hs := cat(longHeader(0xe0, Version1, dcid, nil), []byte{0x40, 0x20}, make([]byte, 0x20))

	tests := []struct {
		name    string
		p       *Packet
		wantErr string
	}{
		{"tag", parse(flipped), "authentication failed"},
		{"header byte", parse(flippedHdr), "authentication failed"},
		{"sample too short", parse(truncated), "too short for a header protection sample"},
		{"handshake packet", parse(hs), "not an Initial"},
		{"reserved bits", parse(sealWithFirstByte(t, c, 0x0c)), "reserved bits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := []byte("kept")
			out, _, err := c.keys.Open(dst, tt.p, -1)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || string(out) != "kept" {
				t.Errorf("Open = %q, %v; want %q, error containing %q", out, err, "kept", tt.wantErr)
			}
		})
	}
	if _, _, err := c.keys.Open(nil, parse(short), -1); err != nil {
		t.Errorf("Open(shortest packet) = %v", err)
	}
}

// sealWithFirstByte builds an Initial packet of c whose unprotected first
// byte has extra bits set, which appendInitial never sends: the header is
// authenticated, so the bits must be set before sealing.
func sealWithFirstByte(t *testing.T, c *client, extra byte) []byte {
	t.Helper()
	payload := append([]byte{byte(FramePing)}, make([]byte, 40)...)
	hdr := longHeader(0xc0|extra|1, c.v, c.dcid, c.scid) // 2-byte packet number
	hdr = append(hdr, 0)                                 // token length
	hdr = appendVarintN(hdr, uint64(2+len(payload)+tagLen), 2)
	pnOffset := len(hdr)
	hdr = append(hdr, 0, 0)
	var nonce [ivLen]byte
	copy(nonce[:], c.keys.iv[:])
	pkt := c.keys.aead.Seal(hdr, nonce[:], payload, hdr)
	var mask [sampleLen]byte
	c.keys.hp.Encrypt(mask[:], pkt[pnOffset+4:pnOffset+4+sampleLen])
	pkt[0] ^= mask[0] & 0x0f
	pkt[pnOffset] ^= mask[1]
	pkt[pnOffset+1] ^= mask[2]
	return pkt
}

func TestDecodePN(t *testing.T) {
	tests := []struct {
		largest   int64
		truncated uint64
		pnLen     int
		want      uint64
	}{
		{-1, 0, 1, 0},
		{-1, 2, 4, 2},
		{0xa82f30ea, 0x9b32, 2, 0xa82f9b32}, // RFC 9000 §A.3
		{255, 0x01, 1, 257},
		{300, 0xff, 1, 255},
		{1<<62 - 2, 0xff, 1, 1<<62 - 1},
	}
	for _, tt := range tests {
		if got := decodePN(tt.largest, tt.truncated, tt.pnLen); got != tt.want {
			t.Errorf("decodePN(%#x, %#x, %d) = %#x, want %#x", tt.largest, tt.truncated, tt.pnLen, got, tt.want)
		}
	}
}
