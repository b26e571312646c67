package quic

import (
	"math/bits"

	"golang.org/x/crypto/cryptobyte"
)

// maxVarint is the largest value a variable-length integer holds (RFC 9000
// §16).
const maxVarint = 1<<62 - 1

// readVarint reads a variable-length integer (RFC 9000 §16): the two high
// bits of the first byte give the length, 1, 2, 4 or 8 bytes. Non-minimal
// encodings are valid (§16: any length the value fits in).
func readVarint(s *cryptobyte.String, out *uint64) bool {
	if len(*s) == 0 {
		return false
	}
	var b []byte
	if !s.ReadBytes(&b, 1<<((*s)[0]>>6)) {
		return false
	}
	v := uint64(b[0] & 0x3f)
	for _, c := range b[1:] {
		v = v<<8 | uint64(c)
	}
	*out = v
	return true
}

// varintLen is the length of the shortest encoding of v, which must not
// exceed maxVarint.
func varintLen(v uint64) int {
	switch {
	case v < 1<<6:
		return 1
	case v < 1<<14:
		return 2
	case v < 1<<30:
		return 4
	}
	return 8
}

// appendVarint appends v in its shortest encoding.
func appendVarint(b []byte, v uint64) []byte {
	return appendVarintN(b, v, varintLen(v))
}

// appendVarintN appends v encoded in n bytes (1, 2, 4 or 8), which must be
// enough for it.
func appendVarintN(b []byte, v uint64, n int) []byte {
	prefix := byte(bits.Len(uint(n))-1) << 6 // 1, 2, 4, 8 bytes: 00, 01, 10, 11
	for i := n - 1; i >= 0; i-- {
		c := byte(v >> (8 * i))
		if i == n-1 {
			c |= prefix
		}
		b = append(b, c)
	}
	return b
}
