package quic

import (
	"encoding/binary"
	"errors"
	"fmt"
)

const (
	sampleLen    = 16   // header protection sample (RFC 9001 §5.4.2)
	maxPNLen     = 4    // a packet number is 1 to 4 bytes on the wire (RFC 9000 §17.1)
	reservedBits = 0x0c // of a long header's first byte, once unprotected (RFC 9000 §17.2)
	pnLenBits    = 0x03 // the packet number length minus one
)

// errViolation marks what RFC 9000 calls a PROTOCOL_VIOLATION in a packet
// that decrypted: the server would close the connection on it, so the
// Assembler gives up on the flow rather than drop one packet.
var errViolation = errors.New("protocol violation")

// Open removes the protection of p, an Initial packet protected with k, and
// appends its plaintext payload (frames) to dst: it removes the header
// protection (RFC 9001 §5.4), decodes the packet number (RFC 9000 §17.1) and
// decrypts and authenticates the payload (RFC 9001 §5.3).
//
// The datagram is not modified: the work is done on a copy in dst's spare
// capacity, so that the datagram can still be relayed as it came. Reuse the
// returned slice (out[:0]) and a flow's packets cost no allocation.
//
// largest is the largest packet number opened so far in the connection's
// Initial packet number space, -1 before the first; it serves only to
// recover the full packet number, which the nonce needs.
//
// A packet that fails authentication is an error that leaves out == dst: RFC
// 9001 §5.5 has the receiver drop it. Non-zero reserved bits in a packet
// that authenticates are a protocol violation (RFC 9000 §17.2).
func (k *Keys) Open(dst []byte, p *Packet, largest int64) (out []byte, pn uint64, err error) {
	if p.Type != Initial {
		return dst, 0, fmt.Errorf("open: %v packet, not an Initial", p.Type)
	}
	raw := p.Raw
	sampleAt := p.pnOffset + maxPNLen // RFC 9001 §5.4.2: as if the packet number were 4 bytes
	if p.pnOffset == 0 || len(raw) < sampleAt+sampleLen {
		return dst, 0, fmt.Errorf("open: packet of %d bytes too short for a header protection sample", len(raw))
	}

	// dst grows by [mask 16 | nonce 12 | copy of the packet], and ends as
	// the plaintext moved down to where the mask was.
	start := len(dst)
	out = append(dst, make([]byte, sampleLen+ivLen)...)
	out = append(out, raw...)
	mask := out[start : start+sampleLen]
	nonce := out[start+sampleLen : start+sampleLen+ivLen]
	pkt := out[start+sampleLen+ivLen:]

	k.hp.Encrypt(mask, raw[sampleAt:sampleAt+sampleLen])
	pkt[0] ^= mask[0] & 0x0f // long header: the low four bits (RFC 9001 §5.4.1)
	pnLen := int(pkt[0]&pnLenBits) + 1
	var truncated uint64
	for i := range pnLen {
		pkt[p.pnOffset+i] ^= mask[1+i]
		truncated = truncated<<8 | uint64(pkt[p.pnOffset+i])
	}
	pn = decodePN(largest, truncated, pnLen)

	hdr := pkt[:p.pnOffset+pnLen]
	ciphertext := pkt[len(hdr):]
	k.nonce(nonce, pn)
	plain, err := k.aead.Open(ciphertext[:0], nonce, ciphertext, hdr)
	if err != nil {
		return dst, 0, fmt.Errorf("open: initial packet %d: %w", pn, err)
	}
	if pkt[0]&reservedBits != 0 {
		return dst, 0, fmt.Errorf("open: initial packet %d: reserved bits set: %w", pn, errViolation)
	}
	n := copy(out[start:], plain)
	return out[:start+n], pn, nil
}

// nonce writes the AEAD nonce of packet number pn: the IV XOR the packet
// number, left-padded with zeros (RFC 9001 §5.3).
func (k *Keys) nonce(nonce []byte, pn uint64) {
	copy(nonce, k.iv[:])
	for i := range 8 {
		nonce[ivLen-1-i] ^= byte(pn >> (8 * i))
	}
}

// decodePN recovers a full packet number from its truncated pnLen-byte
// encoding: the candidate closest to largest+1 (RFC 9000 §A.3).
func decodePN(largest int64, truncated uint64, pnLen int) uint64 {
	expected := uint64(largest + 1)
	win := uint64(1) << (8 * pnLen)
	hwin, mask := win/2, win-1
	candidate := expected&^mask | truncated
	switch {
	case candidate+hwin <= expected && candidate < 1<<62-win:
		return candidate + win
	case candidate > expected+hwin && candidate >= win:
		return candidate - win
	}
	return candidate
}

// appendInitial appends an Initial packet of version v carrying payload,
// protected with k (RFC 9001 §5.3, §5.4), with packet number pn in pnLen
// bytes. The Length field takes two bytes, as in the examples of RFC 9001
// Appendix A, or four for payloads of 16 KiB and more. The payload must
// make pnLen+len(payload) at least 4, which the header protection sample
// needs: the caller pads it.
func (k *Keys) appendInitial(dst []byte, v Version, dcid, scid, token []byte, pn uint64, pnLen int, payload []byte) []byte {
	if pnLen+len(payload) < maxPNLen {
		panic("quic: initial payload too short for a header protection sample")
	}
	start := len(dst)
	out := append(dst, 0xc0|v.params().typeBits(Initial)<<4|byte(pnLen-1))
	out = binary.BigEndian.AppendUint32(out, uint32(v))
	out = append(out, byte(len(dcid)))
	out = append(out, dcid...)
	out = append(out, byte(len(scid)))
	out = append(out, scid...)
	out = appendVarint(out, uint64(len(token)))
	out = append(out, token...)
	length := uint64(pnLen + len(payload) + tagLen)
	if length < 1<<14 {
		out = appendVarintN(out, length, 2)
	} else {
		out = appendVarintN(out, length, 4)
	}
	pnOffset := len(out) - start
	for i := pnLen - 1; i >= 0; i-- {
		out = append(out, byte(pn>>(8*i)))
	}
	var nonce [ivLen]byte
	k.nonce(nonce[:], pn)
	out = k.aead.Seal(out, nonce[:], payload, out[start:])

	pkt := out[start:]
	var mask [sampleLen]byte
	sampleAt := pnOffset + maxPNLen
	k.hp.Encrypt(mask[:], pkt[sampleAt:sampleAt+sampleLen])
	pkt[0] ^= mask[0] & 0x0f
	for i := range pnLen {
		pkt[pnOffset+i] ^= mask[1+i]
	}
	return out
}
