// Package quictest builds a QUIC client's first datagrams the way a
// browser may send them, for the tests of the UDP listener: a real
// crypto/tls ClientHello whose CRYPTO frames are split at random, shuffled
// and mixed with PING and PADDING over several Initial packets (as
// Chromium does on purpose). It also opens the server's answer. The
// packets are sealed here, independently of internal/quic, which only
// opens: the two meet in the tests.
package quictest

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/egressd/egressd/internal/quic"
)

// Hello returns the ClientHello handshake message a crypto/tls QUIC client
// writes for serverName, offering h3, with transport parameters that a
// server accepts from a client whose Source Connection ID is scid.
func Hello(serverName string, scid []byte) ([]byte, error) {
	conn := tls.QUICClient(&tls.QUICConfig{TLSConfig: &tls.Config{
		ServerName: serverName, NextProtos: []string{"h3"}, MinVersion: tls.VersionTLS13,
	}})
	// initial_source_connection_id (RFC 9000 §18.2), which servers
	// require, and initial_max_data = 1 MiB.
	params := append([]byte{0x0f, byte(len(scid))}, scid...)
	params = append(params, 0x04, 0x04, 0x80, 0x10, 0x00, 0x00)
	conn.SetTransportParameters(params)
	if err := conn.Start(context.Background()); err != nil {
		return nil, err
	}
	defer conn.Close()
	var hello []byte
	for {
		switch e := conn.NextEvent(); e.Kind {
		case tls.QUICWriteData:
			hello = append(hello, e.Data...)
		case tls.QUICNoEvent:
			return hello, nil
		}
	}
}

// Client seals the Initial packets of one client connection.
type Client struct {
	Version    quic.Version
	DCID, SCID []byte
	Token      []byte // from a Retry, for the Initial packets after it
	keys       sealer
	pn         uint64
}

// NewClient returns a client of version v (quic.Version1 or
// quic.Version2) with the given connection IDs.
func NewClient(v quic.Version, dcid, scid []byte) (*Client, error) {
	k, err := newSealer(v, dcid, "client in")
	if err != nil {
		return nil, err
	}
	return &Client{Version: v, DCID: dcid, SCID: scid, keys: k}, nil
}

// Initials returns the datagrams of hello sent as CRYPTO frames over n
// Initial packets, one a datagram, each padded to at least 1200 bytes: the stream
// cut at random into 2n pieces or more, shuffled, each packet with a PING
// somewhere among its frames.
func (c *Client) Initials(hello []byte, n int, rng *rand.Rand) ([][]byte, error) {
	pieces := 2 * n
	cuts := []int{0, len(hello)}
	for len(cuts) < pieces+1 {
		cuts = append(cuts, 1+rng.IntN(len(hello)-1))
	}
	slices.Sort(cuts)
	var frames [][]byte
	for i := 1; i < len(cuts); i++ {
		if cuts[i] > cuts[i-1] {
			frames = append(frames, cryptoFrame(uint64(cuts[i-1]), hello[cuts[i-1]:cuts[i]]))
		}
	}
	rng.Shuffle(len(frames), func(i, j int) { frames[i], frames[j] = frames[j], frames[i] })
	var out [][]byte
	for i := range n {
		var payload []byte
		ping := rng.IntN(2)
		for j, f := range frames {
			if j%n != i {
				continue
			}
			if ping == 0 {
				payload = append(payload, 0x01) // PING
			}
			ping--
			payload = append(payload, f...)
		}
		if ping >= 0 {
			payload = append(payload, 0x01)
		}
		pkt, err := c.Packet(payload, 1200)
		if err != nil {
			return nil, err
		}
		out = append(out, pkt)
	}
	return out, nil
}

// SetPN sets the packet number of the next packet Packet seals. Packet
// numbers go up by one from there; the wire carries their low two bytes,
// which a receiver completes from the largest it has opened (RFC 9000
// §17.1), so a test can send one that two receivers complete differently.
func (c *Client) SetPN(pn uint64) { c.pn = pn }

// Packet seals one Initial packet carrying payload (frames), padded with
// PADDING to padTo bytes, with a 2-byte packet number.
func (c *Client) Packet(payload []byte, padTo int) ([]byte, error) {
	const pnLen = 2
	hdr := []byte{0xc0 | c.keys.initialBits<<4 | (pnLen - 1)}
	hdr = binary.BigEndian.AppendUint32(hdr, uint32(c.Version))
	hdr = append(hdr, byte(len(c.DCID)))
	hdr = append(hdr, c.DCID...)
	hdr = append(hdr, byte(len(c.SCID)))
	hdr = append(hdr, c.SCID...)
	hdr = appendVarint(hdr, uint64(len(c.Token)))
	hdr = append(hdr, c.Token...)
	overhead := len(hdr) + 2 + pnLen + 16 // the 2-byte Length field, the tag
	if pad := padTo - overhead - len(payload); pad > 0 {
		payload = append(payload, make([]byte, pad)...)
	}
	if len(payload)+pnLen < 4+16 {
		payload = append(payload, make([]byte, 4+16-pnLen-len(payload))...) // room for the sample
	}
	length := pnLen + len(payload) + 16
	if length >= 1<<14 {
		return nil, errors.New("quictest: packet too long")
	}
	hdr = append(hdr, 0x40|byte(length>>8), byte(length))
	pnAt := len(hdr)
	hdr = append(hdr, byte(c.pn>>8), byte(c.pn))
	pkt := c.keys.seal(hdr, pnAt, pnLen, c.pn, payload)
	c.pn++
	return pkt, nil
}

// ReadServerInitial opens the first packet of d, a server's datagram to a
// client whose first Destination Connection ID was clientDCID, which must
// be an Initial packet, and returns its frames.
func ReadServerInitial(v quic.Version, clientDCID, d []byte) ([]quic.Frame, error) {
	pkts, err := quic.ParseDatagram(d, nil)
	if err != nil || len(pkts) == 0 {
		return nil, fmt.Errorf("server datagram: %v", err)
	}
	if pkts[0].Type != quic.Initial {
		return nil, fmt.Errorf("server datagram starts with a %v packet, not an Initial", pkts[0].Type)
	}
	keys, err := quic.ServerInitialKeys(v, clientDCID)
	if err != nil {
		return nil, err
	}
	payload, _, err := keys.Open(nil, &pkts[0], -1)
	if err != nil {
		return nil, err
	}
	var frames []quic.Frame
	for len(payload) > 0 {
		f, n, err := quic.ReadFrame(payload)
		if err != nil {
			return frames, err
		}
		frames = append(frames, f)
		payload = payload[n:]
	}
	return frames, nil
}

// sealer is the packet protection of one side's Initial packets (RFC 9001
// §5).
type sealer struct {
	aead        cipher.AEAD
	hp          cipher.Block
	iv          []byte
	initialBits byte // the long header's type bits of an Initial packet
}

func newSealer(v quic.Version, dcid []byte, label string) (sealer, error) {
	var salt []byte
	var prefix string
	var bits byte
	switch v {
	case quic.Version1: // RFC 9001 §5.2
		salt, prefix, bits = []byte{0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
			0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a}, "quic ", 0
	case quic.Version2: // RFC 9369 §3.3
		salt, prefix, bits = []byte{0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93,
			0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9}, "quicv2 ", 1
	default:
		return sealer{}, fmt.Errorf("quictest: version %v", v)
	}
	initial, err := hkdf.Extract(sha256.New, dcid, salt)
	if err != nil {
		return sealer{}, err
	}
	secret := expandLabel(initial, label, 32)
	block, err := aes.NewCipher(expandLabel(secret, prefix+"key", 16))
	if err != nil {
		return sealer{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return sealer{}, err
	}
	hp, err := aes.NewCipher(expandLabel(secret, prefix+"hp", 16))
	if err != nil {
		return sealer{}, err
	}
	return sealer{aead: aead, hp: hp, iv: expandLabel(secret, prefix+"iv", 12), initialBits: bits}, nil
}

// seal encrypts payload after hdr (which ends with the packet number, at
// pnAt) and protects the header.
func (s sealer) seal(hdr []byte, pnAt, pnLen int, pn uint64, payload []byte) []byte {
	nonce := make([]byte, len(s.iv))
	copy(nonce, s.iv)
	for i := range 8 {
		nonce[len(nonce)-1-i] ^= byte(pn >> (8 * i))
	}
	pkt := s.aead.Seal(hdr, nonce, payload, hdr)
	mask := make([]byte, 16)
	s.hp.Encrypt(mask, pkt[pnAt+4:pnAt+20])
	pkt[0] ^= mask[0] & 0x0f
	for i := range pnLen {
		pkt[pnAt+i] ^= mask[1+i]
	}
	return pkt
}

// expandLabel is HKDF-Expand-Label (RFC 8446 §7.1) with an empty context.
func expandLabel(secret []byte, label string, length int) []byte {
	info := []byte{byte(length >> 8), byte(length), byte(len("tls13 ") + len(label))}
	info = append(info, "tls13 "...)
	info = append(info, label...)
	info = append(info, 0)
	out, err := hkdf.Expand(sha256.New, secret, string(info), length)
	if err != nil {
		panic(err) // only for lengths SHA-256 cannot give
	}
	return out
}

func cryptoFrame(off uint64, data []byte) []byte {
	b := appendVarint([]byte{0x06}, off)
	b = appendVarint(b, uint64(len(data)))
	return append(b, data...)
}

// appendVarint appends v in QUIC's variable-length encoding (RFC 9000
// §16), in its shortest form.
func appendVarint(b []byte, v uint64) []byte {
	switch {
	case v < 1<<6:
		return append(b, byte(v))
	case v < 1<<14:
		return append(b, 0x40|byte(v>>8), byte(v))
	case v < 1<<30:
		return append(b, 0x80|byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	return binary.BigEndian.AppendUint64(b, v|0xc0<<56)
}
