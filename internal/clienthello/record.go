package clienthello

const (
	recordHeaderLen           = 5  // type, legacy_record_version, length (RFC 8446 §5.1)
	recordTypeChangeCipher    = 20 // ContentType change_cipher_spec (RFC 8446 §5)
	recordTypeAlert           = 21 // ContentType alert
	recordTypeHandshake       = 22 // ContentType handshake
	recordTypeApplicationData = 23 // ContentType application_data
	handshakeHeaderLen        = 4  // msg_type, uint24 length (RFC 8446 §4)
	typeClientHello           = 1  // HandshakeType client_hello (RFC 8446 §4)
)

// MaxLeadingRecords is how many change_cipher_spec and alert records may come
// before the hello. Some TLS stacks drop such records before the first
// handshake message (crypto/tls drops warning alerts, up to 16 useless
// records); no client needs more than a few, and a bound keeps the walk short.
const MaxLeadingRecords = 4

// Reassemble examines raw, the bytes read from the client so far (TLS records
// from the first byte), and says whether they hold a whole ClientHello.
//
// When st is Complete, msg is the handshake message (type 1, uint24 length,
// body): a subslice of raw when the message sits in its first record, else
// appended to scratch[:0]. Pass a scratch with capacity MaxHelloLen and no call
// allocates. used is the length of the records that carry the hello, and of
// the records skipped before it; the bytes after them (early data, garbage)
// are not part of it. Complete is reported only once the record holding the
// hello's last byte is whole, as crypto/tls reads whole records.
//
// Reassemble keeps no state: each call walks raw from the start, in time linear
// in len(raw), which MaxHelloLen bounds. A caller that calls again at every
// read uses a [Reassembly], which resumes where the last call stopped.
//
// TLS is recognised by its record layer, not by a first byte of 22: a client
// may send change_cipher_spec or alert records before its hello, and a server
// that drops them reads the hello after them, so Reassemble must too, or a
// gateway would not see the name the server acts on. Classification, and
// where it is stricter than crypto/tls on purpose:
//   - raw is NotTLS unless it starts like a record: content type 22 with
//     legacy_record_version major 3, or with another major before a first
//     byte of client_hello (a binary protocol's message of 22 bytes starts
//     like a record of type 22, and is not a TLS client's); 20, 21
//     or 23 with legacy_record_version major 3, or a change_cipher_spec or
//     alert record of the right length in any version below 0x1000, which
//     crypto/tls's record layer reads before the hello (the version is then
//     Invalid, below).
//     An SSLv2-compatible hello (high bit set, RFC 5246 Appendix E.2), which
//     carries no extensions and so no server name, is NotTLS;
//   - up to MaxLeadingRecords change_cipher_spec records (one byte, 1) and
//     alert records (two bytes) are skipped before the first handshake record;
//     any other leading record, more of them, or a record version with major
//     other than 3 is Invalid. crypto/tls takes any record version below
//     0x1000 before the hello and up to 16 warning alerts; we call both
//     Invalid;
//   - every record carrying the hello must be a non-empty handshake record
//     (RFC 8446 §5.1) with legacy_record_version major 3; any minor is
//     accepted. crypto/tls skips warning alerts among the hello's records; we
//     call that Invalid;
//   - a handshake message type other than client_hello is Invalid;
//   - a message longer than MaxHelloLen, or records that would end past
//     MaxHelloLen bytes of raw, are Invalid as soon as a header says so. That
//     cap is below the 2^14-byte record limit of RFC 8446 §5.1, which it
//     therefore also enforces.
func Reassemble(raw, scratch []byte) (msg []byte, used int, st Status) {
	var a Reassembly
	return a.Next(raw, scratch)
}

// Reassembly is [Reassemble] for bytes that arrive a read at a time. A client
// may cut its hello into records of one byte (crypto/tls and OpenSSL accept a
// handshake message split over any number of records) and send them a byte
// per segment; a walk over every record header from the start at each read
// then costs reads × records, quadratic in the hello: about 22 million steps
// for one connection's 16 KiB. A Reassembly remembers the records it has
// walked, so that each call walks only those its new bytes complete, and the
// calls for one hello cost time linear in its bytes in all.
//
// It keeps offsets and the message header, not bytes: the reassembled
// message is gathered from raw once it is whole, so nothing (a pooled scratch
// buffer) is held while the client is waited for. Its zero value is ready,
// and it is small enough to live on the caller's stack.
type Reassembly struct {
	// off is where the next record to walk begins, 0 while the records
	// before the hello's first are not yet known for certain; start is
	// where that first record begins. seen counts the handshake bytes in
	// the records walked, hdr holds the first of them: the message header,
	// which records may split too.
	off, start, seen int
	hdr              [handshakeHeaderLen]byte
}

// Next is Reassemble(raw, scratch) for raw that begins with the bytes given
// to the previous call on a, as a peek buffer grows read by read (it may have
// moved: a Reassembly keeps no pointer into it). The answers are Reassemble's
// at every length of raw; a raw shorter than the records walked so far is
// taken as a new stream.
//
// What a keeps is a point that the walk over every longer raw passes the
// same: past the records before the hello once they are whole, then where
// the walk stopped at a record not whole yet (or one it refused). A call
// that answers Complete, or Invalid for the message's header, keeps no
// record it walked, so that a later call walks the records that decided
// it again, and answers the same.
func (a *Reassembly) Next(raw, scratch []byte) (msg []byte, used int, st Status) {
	if len(raw) < a.off {
		*a = Reassembly{}
	}
	if a.off == 0 {
		start, st := skipLeading(raw)
		if st != Complete {
			return nil, 0, st
		}
		// The records skipped are whole, so any longer raw skips the
		// same. A start of 0 leaves off 0: recordStart, which may need up
		// to six bytes to judge the first record, judges it again.
		a.off, a.start = start, start
	}
	// The walk runs on locals, and a is updated once, where it stops.
	off, seen, hdr := a.off, a.seen, a.hdr
	for {
		frag, st := record(raw, off)
		if st != Complete {
			a.off, a.seen, a.hdr = off, seen, hdr
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
			return gather(raw[a.start:], scratch, total), off, Complete
		}
	}
}

// Coalesced reports whether the records that carry a complete hello in raw
// (the used bytes Reassemble returned, of a message msgLen bytes long) carry
// handshake bytes after it: a second message in the hello's own record.
// No client sends one (RFC 8446 §5.1 has a message before a key change end
// on a record boundary, and a hello is followed by one, or by the
// server's answer), but a server that reads on (OpenSSL) would take a
// second ClientHello there, after its HelloRetryRequest, for the one to
// act on: the gateway refuses it.
func Coalesced(raw []byte, used, msgLen int) bool {
	off, st := skipLeading(raw)
	if st != Complete {
		return false
	}
	seen := 0
	for off+recordHeaderLen <= used {
		step()
		n := int(raw[off+3])<<8 | int(raw[off+4])
		seen += n
		off += recordHeaderLen + n
	}
	return seen > msgLen
}

// recordStart says whether raw starts like a TLS record: NotTLS, NeedMore
// while its first bytes do not tell, else Complete. It judges by the fewest
// bytes it can, so that other protocols are told apart at once.
func recordStart(raw []byte) Status {
	switch {
	case len(raw) == 0:
		return NeedMore
	case raw[0] == recordTypeHandshake && (len(raw) < 2 || raw[1] == 3):
		return Complete
	case raw[0] == recordTypeHandshake && len(raw) < recordHeaderLen+1:
		return NeedMore
	case raw[0] == recordTypeHandshake:
		// A record version crypto/tls also takes before the hello (any
		// below 0x1000), so a hello in it is TLS; but a first message
		// that is no client_hello is no TLS client's: a length-prefixed
		// binary protocol's message of 22 bytes (MySQL, MongoDB) starts
		// the same way, and is not refused as a malformed hello.
		if raw[recordHeaderLen] == typeClientHello {
			return Complete
		}
		return NotTLS
	case raw[0] < recordTypeChangeCipher || raw[0] > recordTypeApplicationData:
		return NotTLS
	case len(raw) < 2:
		return NeedMore
	case raw[1] == 3:
		return Complete
	case raw[0] == recordTypeApplicationData || raw[1] >= 0x10:
		return NotTLS
	case len(raw) < recordHeaderLen:
		return NeedMore
	case raw[3] == 0 && int(raw[4]) == skippedLen(raw[0]):
		return Complete
	}
	return NotTLS
}

// skippedLen is the length of the change_cipher_spec or alert record that
// may come before a hello: the single byte 1 (RFC 5246 §7.1, RFC 8446 §5);
// AlertLevel and AlertDescription (RFC 8446 §6).
func skippedLen(typ byte) int {
	if typ == recordTypeChangeCipher {
		return 1
	}
	return 2
}

// skipLeading returns the offset of the first handshake record in raw, past
// the change_cipher_spec and alert records before it, with Complete; or
// NeedMore, NotTLS or Invalid.
func skipLeading(raw []byte) (off int, st Status) {
	if st := recordStart(raw); st != Complete {
		return 0, st
	}
	for n := 0; ; n++ {
		step()
		h := raw[off:]
		switch {
		case len(h) == 0:
			return 0, NeedMore
		case h[0] == recordTypeHandshake:
			return off, Complete
		case n == MaxLeadingRecords, h[0] != recordTypeChangeCipher && h[0] != recordTypeAlert:
			return 0, Invalid
		case len(h) >= 2 && h[1] != 3:
			return 0, Invalid
		case len(h) < recordHeaderLen:
			return 0, NeedMore
		}
		want := skippedLen(h[0])
		switch {
		case int(h[3])<<8|int(h[4]) != want:
			return 0, Invalid
		case len(h) < recordHeaderLen+want:
			return 0, NeedMore
		case h[0] == recordTypeChangeCipher && h[recordHeaderLen] != 1:
			return 0, Invalid
		}
		off += recordHeaderLen + want
	}
}

// record returns the fragment of the record at raw[off:] once it is whole.
// It judges a partial header by the bytes it has, so that a stream that cannot
// become a hello is refused at once rather than after MaxHelloLen bytes.
func record(raw []byte, off int) (frag []byte, st Status) {
	step()
	h := raw[off:]
	switch {
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
		step()
		n := int(raw[off+3])<<8 | int(raw[off+4])
		frag := raw[off+recordHeaderLen : off+recordHeaderLen+n]
		msg = append(msg, frag[:min(n, total-len(msg))]...)
		off += recordHeaderLen + n
	}
	return msg
}

// RecordVersion returns the legacy_record_version of the record that starts
// the hello, past any change_cipher_spec and alert records before it; while
// that record's header is not there, or when raw is Invalid before it, that of
// the first record. It is 0 when raw does not start with the header of a
// record (fewer than 3 bytes, a first byte other than 20 to 23). The gateway
// answers a refused hello with an alert in a record of this version; it may
// be any value with major 3, or anything at all when raw is Invalid, so the
// caller picks a fallback for what it will not echo.
func RecordVersion(raw []byte) uint16 {
	if len(raw) < 3 || raw[0] < recordTypeChangeCipher || raw[0] > recordTypeApplicationData {
		return 0
	}
	at := 0
	if off, st := skipLeading(raw); st == Complete && len(raw) >= off+3 {
		at = off
	}
	return uint16(raw[at+1])<<8 | uint16(raw[at+2])
}

// walked, set by tests only, is told of each record header a walk over the
// records examines, so that a test can hold reassembly to work linear in
// the bytes without timing it.
var walked func()

func step() {
	if walked != nil {
		walked()
	}
}
