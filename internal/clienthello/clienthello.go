// Package clienthello reads the server name, ALPN protocols and offered
// versions out of the first bytes a TLS client sends, without decrypting
// anything and without doing any I/O, and computes the client's JA4
// fingerprint from them.
//
// It exists because the gateway decides on the destination's name before it
// dials: it peeks at the client's first bytes, and only the ClientHello says
// which name the client wants (RFC 6066 §3). The hello may arrive split over
// TCP segments and over several TLS records (RFC 8446 §5.1), so the package has
// two steps: [Reassemble] tells whether the bytes seen so far hold a whole
// hello, and [Parse] reads its fields. [Examine] runs both for the common case.
//
// The parser is deliberately no stricter than Go's crypto/tls where a field
// matters to the gateway (the fuzz test checks that every hello crypto/tls
// accepts parses to the same server name here), and it validates nothing the
// gateway does not use: the server behind the gateway does that. Where it is
// stricter, it is on purpose and documented on [Reassemble].
package clienthello

import "fmt"

// Status says what the bytes seen so far are.
type Status int

const (
	NeedMore Status = iota // a valid prefix of a ClientHello; read more bytes
	Complete               // a whole ClientHello handshake message is present
	NotTLS                 // the bytes do not start like TLS records: try HTTP, SSH, unknown
	Invalid                // looks like TLS but is malformed, or too big for MaxHelloLen
)

func (s Status) String() string {
	switch s {
	case NeedMore:
		return "NeedMore"
	case Complete:
		return "Complete"
	case NotTLS:
		return "NotTLS"
	case Invalid:
		return "Invalid"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// MaxHelloLen caps both the reassembled handshake message and the raw bytes
// examined, which is the size of the gateway's peek buffer. Real hellos are far
// smaller: a post-quantum key share brings Go's to about 1.8 KiB.
const MaxHelloLen = 16 * 1024

// Examine is the call the gateway makes each time more bytes arrive: it
// reassembles the hello from raw and, once it is complete, parses it into info,
// RecordVersion included. A complete message that [Parse] rejects is Invalid.
// used is as for [Reassemble]; info is meaningful only when st is Complete,
// and views raw or scratch (see [Info]), so both must outlive its use.
func Examine(raw, scratch []byte, info *Info) (used int, st Status) {
	msg, used, st := Reassemble(raw, scratch)
	if st != Complete {
		return used, st
	}
	if !Parse(msg, info) {
		return 0, Invalid
	}
	info.RecordVersion = RecordVersion(raw)
	return used, Complete
}
