package quicproxy

import (
	"bytes"

	"github.com/egressd/egressd/internal/clienthello"
	"github.com/egressd/egressd/internal/quic"
)

// A QUIC server that answers a ClientHello with a HelloRetryRequest reads
// the client's second hello from the same CRYPTO stream of Initial
// packets, after the first. Not every TLS stack holds it to the first's
// name (RFC 8446 §4.1.2 requires it; OpenSSL's does not check), so a
// decided connection's CRYPTO bytes past its first hello are gathered
// (secondHello), and a packet whose bytes would let the server read a
// second hello that names another server, other ALPN protocols or another
// encrypted_client_hello is dropped (changed_hello), as is one that sends
// other bytes where some already came: the server keeps the first of
// overlapping bytes or the last, and either way holds only what egressd
// checked.

// secondHello is what came of a decided connection's CRYPTO stream past
// its first hello: buf from the hello's end, have which of its bytes came.
type secondHello struct {
	buf     []byte
	have    []uint64
	filled  int  // how many of buf's bytes came
	checked bool // the whole second hello came and was the same
}

// sameCrypto reports whether the packet whose frames are payload may pass:
// where its CRYPTO frames overlap the decided hello they carry its bytes,
// and past it they agree with what came before and do not complete a
// second hello that differs from the first (see above). A payload that
// does not parse may not.
func (k *knownKeys) sameCrypto(payload []byte) bool {
	base := uint64(len(k.hello))
	for len(payload) > 0 {
		f, n, err := quic.ReadFrame(payload)
		if err != nil {
			return false
		}
		payload = payload[n:]
		if f.Type != quic.FrameCrypto {
			continue
		}
		end := f.Offset + uint64(len(f.Data))
		if f.Offset < base {
			upTo := min(end, base)
			if !bytes.Equal(f.Data[:upTo-f.Offset], k.hello[f.Offset:upTo]) {
				return false
			}
		}
		if end <= base {
			continue
		}
		if end-base > clienthello.MaxHelloLen {
			return false // no hello of ours is this long
		}
		if k.second == nil {
			k.second = &secondHello{}
		}
		s := k.second
		from := max(f.Offset, base)
		if !s.add(int(from-base), f.Data[from-f.Offset:]) {
			return false
		}
	}
	s := k.second
	if s == nil || s.checked {
		return true
	}
	msg := s.whole()
	if msg == nil {
		return true
	}
	var first, second clienthello.Info
	if !clienthello.Parse(k.hello, &first) || !clienthello.Parse(msg, &second) {
		return false
	}
	if clienthello.SecondDiffers(&first, &second) != "" {
		return false
	}
	s.checked = true
	return true
}

// add puts data at off, and reports false if a byte differs from one that
// came before at its offset.
func (s *secondHello) add(off int, data []byte) bool {
	if need := off + len(data); need > len(s.buf) {
		s.buf = append(s.buf, make([]byte, need-len(s.buf))...)
		if words := (need + 63) / 64; words > len(s.have) {
			s.have = append(s.have, make([]uint64, words-len(s.have))...)
		}
	}
	for i, b := range data {
		at := off + i
		if s.have[at/64]&(1<<(at%64)) != 0 {
			if s.buf[at] != b {
				return false
			}
			continue
		}
		s.buf[at] = b
		s.have[at/64] |= 1 << (at % 64)
		s.filled++
	}
	return true
}

// whole returns the second hello's handshake message once every byte of
// it came, nil before.
func (s *secondHello) whole() []byte {
	const hdr = 4 // msg_type, uint24 length
	if s.filled < hdr || !s.came(hdr) {
		return nil
	}
	total := hdr + (int(s.buf[1])<<16 | int(s.buf[2])<<8 | int(s.buf[3]))
	if total > len(s.buf) || s.filled < total || !s.came(total) {
		return nil
	}
	return s.buf[:total]
}

// came reports whether bytes [0, to) all came, a word of them at a time:
// a client that sends all but one byte, again and again, costs a scan of
// at most MaxHelloLen/64 words a packet.
func (s *secondHello) came(to int) bool {
	if to > len(s.buf) {
		return false
	}
	full := to / 64
	for _, w := range s.have[:full] {
		if w != ^uint64(0) {
			return false
		}
	}
	if rest := to % 64; rest > 0 {
		mask := uint64(1)<<rest - 1
		return s.have[full]&mask == mask
	}
	return true
}
