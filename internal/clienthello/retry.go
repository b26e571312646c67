package clienthello

import (
	"bytes"
	"fmt"
	"strconv"
)

// A server that cannot use any key share a TLS 1.3 ClientHello offers
// answers it with a HelloRetryRequest: a ServerHello whose random is the
// SHA-256 of "HelloRetryRequest" (RFC 8446 §4.1.3, §4.1.4). The client
// then sends a second ClientHello, and the server acts on that one. The
// gateway decided the first. RFC 8446 §4.1.2 says the second must be the
// first but for its key_share, early_data, cookie, pre_shared_key and
// padding, yet not every server checks (Go's does; OpenSSL takes the
// second hello's server_name), and a client can force the retry (an empty
// key_share). So a client could be decided on an allowed name and served
// for a denied one by a server that routes on the name. Retry closes that.

// helloRetryRandom is the random of a HelloRetryRequest.
var helloRetryRandom = [32]byte{
	0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
	0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
}

const typeServerHello = 2 // HandshakeType server_hello (RFC 8446 §4)

// Verdict is what Retry makes of the bytes it was given so far.
type Verdict uint8

const (
	// Watching: pass the bytes on and give Retry the next ones.
	Watching Verdict = iota
	// Holding: a second ClientHello has begun and is not whole; Retry
	// keeps its bytes (they are not to be written on yet).
	Holding
	// Done: nothing more to watch; the rest of the connection is
	// relayed unread.
	Done
	// Refuse: end the connection; Why says why.
	Refuse
)

// Retry follows a TLS connection from the moment its first ClientHello was
// decided and sent on, until that hello is answered: it reads the start
// of the server's answer, and walks the client's records meanwhile.
//   - A server whose answer is not a HelloRetryRequest (a ServerHello, an
//     alert) ends the watch: no client sends another ClientHello in the
//     clear after that, and a server would not take one. Server bytes that
//     are no TLS record end the watch of the server's side only: what
//     follows them cannot be framed, so the client's side stays as before
//     an answer.
//   - Before the answer, the client's change_cipher_spec, alert and
//     application_data records (early data) pass; a handshake record is
//     refused, since no TLS client sends one before the server has
//     answered, and a client that pipelines its second hello must not get
//     it past the watch. Bytes that are no TLS record end the client's
//     watch: a TLS server ends the connection at them.
//   - After a HelloRetryRequest, the client's next handshake record starts
//     the second hello: it is held until whole (MaxHelloLen, as the first)
//     and passes only if it names the same server, offers the same ALPN
//     protocols and the same encrypted_client_hello as the first, in at
//     most MaxHoldReads reads, with nothing after it in its record.
//
// Retry does no I/O and keeps no time: the relay feeds it, holds the
// connection's bytes as told, and bounds a hold's wait. Its zero value is
// not usable: see NewRetry.
type Retry struct {
	// first: the first hello's server name, ALPN list and ECH, what a
	// second must repeat (SecondDiffers); its slices view buf, a copy.
	first             Info
	buf               []byte
	answered, retried bool // the server answered; with a HelloRetryRequest
	checked           bool // the second hello passed
	untracked         bool // the client sent bytes that are no TLS record
	// unframed: the server's first bytes were no TLS record (an
	// unread byte of a protocol's own before the hello's answer, such as
	// PostgreSQL's "S"): its answer cannot be told, so the client's
	// side stays as before an answer, where a handshake record is refused.
	unframed bool
	why      string

	srv    walk                              // the server's records, until answered
	srvMsg [handshakeHeaderLen + 2 + 32]byte // its first message: type, length, legacy_version, random
	srvN   int
	cli    walk   // the client's records
	held   []byte // a second hello's records, from their first byte
	// holdReads: the reads held has come in
	holdReads int
}

// walk follows a stream's TLS record framing across reads.
type walk struct {
	hdr  [recordHeaderLen]byte
	hdrN int // bytes of the next record's header read so far
	left int // bytes of the current record's body not yet read
}

// header takes bytes of a record header from b and returns how many;
// once the header is whole, left is its body's length and hdrN is 0.
func (w *walk) header(b []byte) int {
	k := copy(w.hdr[w.hdrN:], b)
	w.hdrN += k
	if w.hdrN == recordHeaderLen {
		w.hdrN = 0
		w.left = int(w.hdr[3])<<8 | int(w.hdr[4])
	}
	return k
}

// MaxHoldReads bounds the reads a second hello may come in: each one
// re-walks the hello's records on the relay loop, which every relayed
// connection shares. A real hello comes in one to four.
const MaxHoldReads = 32

// NewRetry watches the connection whose first ClientHello was first.
func NewRetry(first *Info) *Retry {
	r := new(Retry)
	r.Init(first)
	return r
}

// Init makes r watch the connection whose first ClientHello was first, as
// NewRetry does, for a Retry held inside another value.
func (r *Retry) Init(first *Info) {
	buf := r.buf[:0] // a reused Retry's buffer, unless a big one
	if cap(buf) > 512 {
		buf = nil
	}
	buf = append(append(buf, first.ServerName...), first.ALPN...)
	*r = Retry{buf: buf}
	r.first.ECH, r.first.ECHOuter, r.first.ECHConfigID = first.ECH, first.ECHOuter, first.ECHConfigID
	n := len(first.ServerName)
	if first.ServerName != nil { // nil and empty differ: none, or a bad hello
		r.first.ServerName = buf[:n:n]
	}
	if first.ALPN != nil {
		r.first.ALPN = buf[n:]
	}
}

// Answered says the server's answer to the first hello has been read, or
// cannot be: nothing more of the server's is watched.
func (r *Retry) Answered() bool { return r.answered || r.unframed }

// Untracked says the client sent bytes that are no TLS record: whatever
// the connection is now, it is not the TLS its hello began.
func (r *Retry) Untracked() bool { return r.untracked }

// Why says why the connection is refused, once a call returned Refuse.
// Names the client sent are quoted (Go syntax) and cut at 255 bytes.
func (r *Retry) Why() string { return r.why }

// verdict is Done once nothing is left to watch, else Watching.
func (r *Retry) verdict() Verdict {
	switch {
	case r.why != "":
		return Refuse
	case r.answered && (!r.retried || r.checked):
		return Done
	}
	return Watching
}

// Server takes the next bytes the server sent, and says whether to go on.
// It never holds them.
func (r *Retry) Server(b []byte) Verdict {
	for off := 0; off < len(b) && !r.answered && !r.unframed; {
		if r.srv.left == 0 {
			if r.srv.hdrN == 0 && b[off] != recordTypeHandshake {
				if b[off] < recordTypeChangeCipher || b[off] > recordTypeApplicationData {
					r.unframed = true
				} else {
					r.answered = true // an alert: no retry
				}
				break
			}
			off += r.srv.header(b[off:])
			r.answered = r.srv.hdrN == 0 && r.srv.left == 0 // an empty handshake record: malformed
			continue
		}
		k := copy(r.srvMsg[r.srvN:], b[off:min(len(b), off+r.srv.left)])
		r.srvN += k
		r.srv.left -= k
		off += k
		switch {
		case r.srvMsg[0] != typeServerHello:
			r.answered = true
		case r.srvN == len(r.srvMsg):
			r.answered = true
			r.retried = [32]byte(r.srvMsg[handshakeHeaderLen+2:]) == helloRetryRandom
		}
	}
	return r.verdict()
}

// Client takes the next bytes the client sent. It returns those to write to
// the server now: a prefix of b while watching or holding (the rest is
// kept), b, or a held hello with b after it once the hello passed. They
// are nil with Refuse. The returned bytes are valid until the next call.
func (r *Retry) Client(b []byte) ([]byte, Verdict) {
	switch v := r.verdict(); {
	case v == Refuse:
		return nil, v
	case v == Done, r.untracked:
		return b, Done
	case r.held != nil:
		r.held = append(r.held, b...)
		r.holdReads++
		if v := r.judge(r.held); v != Done {
			return nil, v
		}
		pass := r.held
		r.held = nil
		return pass, Done
	}
	for off := 0; off < len(b); {
		if r.cli.left > 0 {
			k := min(r.cli.left, len(b)-off)
			r.cli.left -= k
			off += k
			continue
		}
		if r.cli.hdrN == 0 {
			switch typ := b[off]; typ {
			case recordTypeChangeCipher, recordTypeAlert, recordTypeApplicationData:
			case recordTypeHandshake:
				if !r.retried {
					return nil, r.refuse("a handshake record before the server answered the ClientHello")
				}
				switch v := r.judge(b[off:]); v {
				case Holding:
					r.held = append(make([]byte, 0, 2*(len(b)-off)), b[off:]...)
					r.holdReads = 1
					return b[:off], Holding
				case Done:
					return b, Done
				default:
					return nil, v
				}
			default:
				// Not a TLS record: a TLS server ends the connection
				// here (an unexpected_message alert, RFC 8446 §5), so no
				// hello after these bytes can be read by one. They are
				// a protocol of their own behind a hello-shaped start
				// (the peer benchmark's raw mode): relayed unread.
				r.untracked = true
				return b, Done
			}
		}
		off += r.cli.header(b[off:])
	}
	return b, Watching
}

// judge examines raw, the client's records from the first byte of its
// second hello: Holding while it is not whole, Done when it passed,
// Refuse otherwise.
func (r *Retry) judge(raw []byte) Verdict {
	var h Info
	msg, used, st := Reassemble(raw, nil)
	switch {
	case st == NeedMore && r.holdReads < MaxHoldReads:
		return Holding
	case st == NeedMore:
		return r.refuse("a second ClientHello (after a HelloRetryRequest) in more than " + strconv.Itoa(MaxHoldReads) + " pieces")
	case st != Complete, !Parse(msg, &h):
		return r.refuse("a malformed second ClientHello (after a HelloRetryRequest)")
	case Coalesced(raw, used, len(msg)):
		return r.refuse("handshake bytes after the second ClientHello in its own record")
	}
	if why := SecondDiffers(&r.first, &h); why != "" {
		return r.refuse(why)
	}
	r.checked = true
	return Done
}

// SecondDiffers says how second, a client's ClientHello after a
// HelloRetryRequest, differs from first where RFC 8446 §4.1.2 requires it
// not to and a decision depends on it: the server name, the ALPN
// protocols, the encrypted_client_hello extension. "" when it does not.
func SecondDiffers(first, second *Info) string {
	switch {
	case (second.ServerName != nil) != (first.ServerName != nil) || !bytes.Equal(second.ServerName, first.ServerName):
		return fmt.Sprintf("the second ClientHello (after a HelloRetryRequest) names %s, the first %s", quoteName(second.ServerName), quoteName(first.ServerName))
	case (second.ALPN != nil) != (first.ALPN != nil) || !bytes.Equal(second.ALPN, first.ALPN):
		return "the second ClientHello (after a HelloRetryRequest) offers other ALPN protocols than the first"
	case second.ECH != first.ECH || second.ECHOuter != first.ECHOuter || second.ECHConfigID != first.ECHConfigID:
		return "the second ClientHello (after a HelloRetryRequest) changes its encrypted_client_hello"
	}
	return ""
}

func (r *Retry) refuse(why string) Verdict {
	r.why = why
	r.held = nil
	return Refuse
}

// quoteName quotes a server name for Why: "no name" for none, else in Go
// syntax, cut at 255 bytes (a name's longest).
func quoteName(b []byte) string {
	if b == nil {
		return "no name"
	}
	return strconv.Quote(string(b[:min(len(b), 255)]))
}
