package clienthello

const (
	recordHeaderLen     = 5  // type, legacy_record_version, length (RFC 8446 §5.1)
	recordTypeHandshake = 22 // ContentType handshake (RFC 8446 §5.1)
	handshakeHeaderLen  = 4  // msg_type, uint24 length (RFC 8446 §4)
	typeClientHello     = 1  // HandshakeType client_hello (RFC 8446 §4)
)

// Reassemble examines raw, the bytes read from the client so far (TLS records
// from the first byte), and says whether they hold a whole ClientHello.
//
// When st is Complete, msg is the handshake message (type 1, uint24 length,
// body): a subslice of raw when the message sits in the first record, else
// appended to scratch[:0]. Pass a scratch with capacity MaxHelloLen and no call
// allocates. used is the length of the records that carry the hello; the bytes
// after them (early data, garbage) are not part of it. Complete is reported
// only once the record holding the hello's last byte is whole, as crypto/tls
// reads whole records.
//
// Reassemble keeps no state: each call walks raw from the start, in time linear
// in len(raw), which MaxHelloLen bounds.
//
// Classification, and where it is stricter than crypto/tls on purpose:
//   - a first byte other than 22 (handshake) is NotTLS. That includes an
//     SSLv2-compatible hello (high bit set, RFC 5246 Appendix E.2), which
//     carries no extensions and so no server name, and a leading alert record;
//   - every record carrying the hello must be a non-empty handshake record
//     (RFC 8446 §5.1) with legacy_record_version major 3; any minor is
//     accepted. crypto/tls skips warning alerts among the hello's records and
//     takes any record version below 0x1000; we call both Invalid;
//   - a handshake message type other than client_hello is Invalid;
//   - a message longer than MaxHelloLen, or records that would end past
//     MaxHelloLen bytes of raw, are Invalid as soon as a header says so. That
//     cap is below the 2^14-byte record limit of RFC 8446 §5.1, which it
//     therefore also enforces.
func Reassemble(raw, scratch []byte) (msg []byte, used int, st Status) {
	var hdr [handshakeHeaderLen]byte // the message header, which records may split too
	seen := 0                        // handshake bytes in the records walked so far
	for off := 0; ; {
		frag, st := record(raw, off)
		if st != Complete {
			return nil, 0, st
		}
		off += recordHeaderLen + len(frag)
		if seen < handshakeHeaderLen {
			copy(hdr[seen:], frag)
		}
		seen += len(frag)
		if hdr[0] != typeClientHello {
			return nil, 0, Invalid
		}
		if seen < handshakeHeaderLen {
			continue
		}
		total := handshakeHeaderLen + (int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3]))
		if total > MaxHelloLen {
			return nil, 0, Invalid
		}
		if seen >= total {
			return gather(raw, scratch, total), off, Complete
		}
	}
}

// record returns the fragment of the record at raw[off:] once it is whole.
// It judges a partial header by the bytes it has, so that a stream that cannot
// become a hello is refused at once rather than after MaxHelloLen bytes.
func record(raw []byte, off int) (frag []byte, st Status) {
	h := raw[off:]
	switch {
	case len(h) >= 1 && h[0] != recordTypeHandshake && off == 0:
		return nil, NotTLS
	case len(h) >= 1 && h[0] != recordTypeHandshake:
		return nil, Invalid
	case len(h) >= 2 && h[1] != 3:
		return nil, Invalid
	case len(h) < recordHeaderLen:
		return nil, NeedMore
	}
	n := int(h[3])<<8 | int(h[4])
	switch {
	case n == 0: // RFC 8446 §5.1: no zero-length handshake fragments
		return nil, Invalid
	case off+recordHeaderLen+n > MaxHelloLen:
		return nil, Invalid
	case len(h) < recordHeaderLen+n:
		return nil, NeedMore
	}
	return h[recordHeaderLen : recordHeaderLen+n], Complete
}

// gather returns the first total handshake bytes of the records in raw, which
// Reassemble has checked: a subslice when the first record holds them all,
// else a copy into scratch.
func gather(raw, scratch []byte, total int) []byte {
	if n := int(raw[3])<<8 | int(raw[4]); n >= total {
		return raw[recordHeaderLen : recordHeaderLen+total : recordHeaderLen+total]
	}
	msg := scratch[:0]
	for off := 0; len(msg) < total; {
		n := int(raw[off+3])<<8 | int(raw[off+4])
		frag := raw[off+recordHeaderLen : off+recordHeaderLen+n]
		msg = append(msg, frag[:min(n, total-len(msg))]...)
		off += recordHeaderLen + n
	}
	return msg
}

// RecordVersion returns the legacy_record_version of the first record in raw,
// or 0 when raw does not start with the header of a handshake record. The
// gateway answers a refused hello with an alert in a record of this version;
// it may be any value with major 3, or anything at all when raw is Invalid, so
// the caller picks a fallback for what it will not echo.
func RecordVersion(raw []byte) uint16 {
	if len(raw) < 3 || raw[0] != recordTypeHandshake {
		return 0
	}
	return uint16(raw[1])<<8 | uint16(raw[2])
}
