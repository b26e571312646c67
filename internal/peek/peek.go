// Package peek reads a client's first bytes under deadlines and says what
// protocol they start: a TLS ClientHello (reassembled across TCP segments
// and TLS records), an HTTP request, an SSH banner, something unknown, or
// nothing at all — a server-first protocol whose client waits to be spoken
// to. The bytes read are kept so the gateway can forward them verbatim.
//
// Every answer is a decision the gateway acts on, so the classes are
// defined by what the servers behind it would accept, not by what common
// clients send: TLS by its record layer, whatever record comes first (a
// change_cipher_spec or alert before the hello is skipped, see
// clienthello.Reassemble); HTTP by the shape of its request line, whatever
// the method. Bytes that can still become either are read on until the
// deadline, and then refused as a started hello or request, never let
// through as unknown with the name unseen; bytes that cannot are unknown at
// once.
package peek

import (
	"bytes"
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"github.com/egressd/egressd/internal/clienthello"
)

// Protocol names, as logged.
const (
	TLS         = "tls"
	HTTP        = "http"
	SSH         = "ssh"
	Unknown     = "unknown"
	ServerFirst = "server-first"
)

// MaxBytes bounds what is read before a decision: a ClientHello, with its
// record headers, may take clienthello.MaxHelloLen raw bytes; an HTTP
// request head as much.
const MaxBytes = clienthello.MaxHelloLen

// maxHTTPHead bounds an HTTP request head; maxRequestLine its first line,
// as internal/httpconnect does.
const (
	maxHTTPHead    = 16 << 10
	maxRequestLine = 8 << 10
)

// Result is what the first bytes said.
type Result struct {
	Protocol string
	// Data holds every byte read from the client, to be forwarded first.
	Data []byte
	// Hello is the parsed ClientHello when Protocol is TLS and HelloOK. Its
	// byte slices view Data, or the reassembly buffer for a hello split over
	// records, so like Data they must not be used after Release. When
	// Protocol is TLS without HelloOK, only Hello.RecordVersion is set: the
	// version to refuse in with an alert.
	Hello   clienthello.Info
	HelloOK bool
	// HelloEnd, with HelloOK, is where the records that carry the hello
	// end in Data: the bytes after it (early data) were sent behind it.
	HelloEnd int
	// Host is the HTTP Host (port stripped) when Protocol is HTTP.
	Host string
	// Preamble: the bytes (Protocol Unknown) are exactly a PostgreSQL
	// SSLRequest or GSSENCRequest, after whose answer the client sends a
	// ClientHello (or another of them): the caller watches what follows.
	Preamble bool
	// OtherRequest: the bytes (Protocol Unknown) are a request head in
	// another protocol's version and with no Host (RTSP's, SIP's), which
	// Netty's HTTP decoder serves and keeps the connection alive after:
	// the caller reads the client's later bytes for an HTTP request
	// (LaterRequest).
	OtherRequest bool
	// Err says why the bytes could not be classified completely: a
	// malformed hello, a client that stopped mid-hello, an oversized head.
	Err error

	// scratch is the reassembly buffer Hello views when the hello was split
	// over records; Release returns it to its pool.
	scratch *[]byte
}

// Errors a Result can carry.
var (
	ErrMalformedHello = errors.New("malformed TLS ClientHello")
	// ErrHelloCoalesced: the hello's own record carries handshake bytes
	// after it (clienthello.Coalesced).
	ErrHelloCoalesced  = errors.New("handshake bytes after the ClientHello in its own record")
	ErrHelloTimeout    = errors.New("client_hello timeout: ClientHello incomplete")
	ErrHelloTooLarge   = errors.New("ClientHello larger than 16 KiB")
	ErrHTTPTimeout     = errors.New("client_hello timeout: HTTP request head incomplete")
	ErrHTTPTooLarge    = errors.New("HTTP request head larger than 16 KiB")
	ErrHTTPLineTooLong = errors.New("HTTP request line longer than 8 KiB")
	ErrBadHTTP         = errors.New("malformed HTTP request head")
	// ErrProxyHeader: a client's first bytes are a PROXY protocol header.
	// A server that accepts one takes the source it names for the
	// client's, and reads what follows it (a request, a ClientHello) as
	// the first bytes egressd would have decided: refused.
	ErrProxyHeader = errors.New("PROXY protocol header from the client")
	// ErrPipelined: bytes sent behind a PostgreSQL SSLRequest or
	// GSSENCRequest before the server answered it. They would be a
	// ClientHello the server reads unread by egressd; PostgreSQL refuses
	// them too (CVE-2021-23214).
	ErrPipelined = errors.New("bytes sent behind a PostgreSQL SSLRequest before its answer")
)

// Deadlines for one connection, absolute.
type Deadlines struct {
	FirstBytes time.Time // nothing read by then: server-first
	Complete   time.Time // a started hello or request head must be whole by then
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// Peek reads from c until the protocol is known. It leaves a read deadline
// set: whoever reads next (relay, refuse) sets its own. Release must be
// called with the Result once its Data has been forwarded.
func Peek(c net.Conn, dl Deadlines) Result {
	return PeekAfter(c, dl, Buffer())
}

// Buffer returns an empty peek buffer from the pool, for a first read
// made elsewhere (a relay loop's) and handed to Whole or PeekAfter, which
// take it over.
func Buffer() []byte {
	bp := bufPool.Get().(*[]byte)
	return (*bp)[:0]
}

// PeekAfter is Peek for a connection whose first bytes were read already
// into buf (a Buffer; empty if none were): they count as Peek's first
// read, and the result owns buf.
func PeekAfter(c net.Conn, dl Deadlines, buf []byte) Result {
	if len(buf) == 0 {
		c.SetReadDeadline(dl.FirstBytes)
		var err error
		buf, err = readMore(c, buf)
		if len(buf) == 0 {
			r := Result{Protocol: ServerFirst, Data: buf}
			if err != nil && !TimedOut(err) {
				r.Err = err // EOF or reset before a byte: the caller logs it
			}
			return r
		}
	}
	c.SetReadDeadline(dl.Complete)
	if isTLSRecord(buf[0]) {
		return peekTLS(c, buf)
	}
	if buf[0] == 0 {
		return peekPostgres(c, buf)
	}
	return peekText(c, buf)
}

// The PostgreSQL requests for an encrypted connection (PostgreSQL's
// protocol, "SSLRequest" and "GSSENCRequest"): an Int32 length of 8 and a
// code. The server answers with one byte; after "S" the client sends a
// ClientHello.
var (
	pgSSLRequest    = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}
	pgGSSENCRequest = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30}
)

// peekPostgres classifies bytes that start with a zero byte: a PostgreSQL
// request for TLS is read whole, however it was split, and marked as a
// Preamble; anything else is what peekText finds (at once unknown, unless
// a request line follows the zero bytes).
func peekPostgres(c net.Conn, buf []byte) Result {
	for {
		n := min(len(buf), len(pgSSLRequest))
		if !bytes.Equal(buf[:n], pgSSLRequest[:n]) && !bytes.Equal(buf[:n], pgGSSENCRequest[:n]) {
			return peekText(c, buf) // a request line behind NULs is still one (junkScan)
		}
		switch {
		case len(buf) > len(pgSSLRequest):
			return Result{Protocol: Unknown, Data: buf, Err: ErrPipelined}
		case len(buf) == len(pgSSLRequest):
			return Result{Protocol: Unknown, Data: buf, Preamble: true}
		}
		var err error
		if buf, err = readMore(c, buf); err != nil {
			if TimedOut(err) {
				err = ErrHelloTimeout
			}
			return Result{Protocol: Unknown, Data: buf, Err: err}
		}
	}
}

// isTLSRecord reports whether b is a TLS record's content type (RFC 8446
// §5.1).
func isTLSRecord(b byte) bool { return b >= 20 && b <= 23 }

// Whole classifies bytes read already (buf, a Buffer) when they hold a
// whole ClientHello that parses, as Peek would; ok is false when they do
// not yet, or are anything else, and then buf is still the caller's (for
// PeekAfter). more tells the first case: the bytes begin a TLS handshake
// whose hello needs more of them (a hello bigger than a segment, as
// post-quantum ones are). With ok, the result owns buf.
func Whole(buf []byte) (r Result, ok, more bool) {
	if len(buf) == 0 || !isTLSRecord(buf[0]) {
		return Result{}, false, false
	}
	var ra clienthello.Reassembly
	r, more = examineTLS(buf, &ra)
	if more || r.Protocol != TLS || !r.HelloOK {
		Release(&Result{scratch: r.scratch}) // only the reassembly buffer, if any
		return Result{}, false, more
	}
	return r, true, false
}

// Ended is what PeekAfter would have found for a client that sent buf (a
// Buffer, perhaps empty) and whose stream then ended with err (io.EOF, a
// reset, or ErrHelloTimeout), for a relay loop that reads without a
// net.Conn. buf, if not empty, begins a TLS record (Whole said more). The
// result owns buf.
func Ended(buf []byte, err error) Result {
	if len(buf) == 0 {
		return Result{Protocol: ServerFirst, Data: buf, Err: err}
	}
	return tlsError(buf, err)
}

// Release returns r's buffers to their pools; r.Data and the views in
// r.Hello must not be used after, and Release clears them so that a use
// finds nothing rather than another connection's bytes. A second call does
// nothing.
func Release(r *Result) {
	r.Hello.ServerName, r.Hello.ALPN, r.Hello.Versions = nil, nil, nil
	r.Hello.CipherSuites, r.Hello.Extensions, r.Hello.SignatureAlgorithms = nil, nil, nil
	if r.scratch != nil {
		scratchPool.Put(r.scratch)
		r.scratch = nil
	}
	if cap(r.Data) == 0 || cap(r.Data) > MaxBytes {
		return
	}
	b := r.Data[:0]
	r.Data = nil
	bufPool.Put(&b)
}

// scratchPool holds reassembly buffers for hellos split over several TLS
// records; a one-record hello is parsed where it lies, in the peek buffer.
var scratchPool = sync.Pool{New: func() any { b := make([]byte, 0, clienthello.MaxHelloLen); return &b }}

// peekTLS reads until the TLS stream that buf begins is classified. The
// reassembly lives across the reads, so that each examines only the records
// the new bytes complete: a hello cut into 1-byte records and sent a byte per
// segment would otherwise cost a walk over every record header per read,
// quadratic in the hello's size.
func peekTLS(c net.Conn, buf []byte) Result {
	var ra clienthello.Reassembly // on the stack: nothing allocated per connection
	for {
		r, more := examineTLS(buf, &ra)
		if !more {
			return r
		}
		var err error
		if buf, err = readMore(c, buf); err != nil {
			if TimedOut(err) {
				err = ErrHelloTimeout
			}
			return tlsError(buf, err)
		}
	}
}

// examineTLS classifies buf as a TLS stream once; more says the hello is
// not whole yet and buf may grow. ra is the reassembly of buf's earlier
// examinations, before it grew (a zero one for a first).
func examineTLS(buf []byte, ra *clienthello.Reassembly) (r Result, more bool) {
	// The scratch buffer is held only while examining, never while
	// waiting for the client: a client trickling its hello must not pin
	// 16 KiB (TestSilentAndSlowCrowd measures it). Once the hello is
	// whole, r.Hello views the buffer the message is in, so one that
	// was reassembled in scratch keeps it until Release.
	sp := scratchPool.Get().(*[]byte)
	msg, used, st := ra.Next(buf, (*sp)[:0])
	invalid := ErrMalformedHello
	switch {
	case st != clienthello.Complete:
	case !clienthello.Parse(msg, &r.Hello):
		st = clienthello.Invalid
	case clienthello.Coalesced(buf, used, len(msg)):
		st, invalid = clienthello.Invalid, ErrHelloCoalesced
	}
	if st == clienthello.Complete && &msg[0] == &(*sp)[:1][0] {
		r.scratch = sp
	} else {
		scratchPool.Put(sp)
	}
	switch st {
	case clienthello.Complete:
		r.Hello.RecordVersion = clienthello.RecordVersion(buf)
		r.Protocol, r.Data, r.HelloOK, r.HelloEnd = TLS, buf, true, used
		return r, false
	case clienthello.NotTLS: // a first byte of 20 to 23 that is not: nothing we know
		return Result{Protocol: Unknown, Data: buf}, false
	case clienthello.Invalid:
		return tlsError(buf, invalid), false
	}
	if len(buf) >= clienthello.MaxHelloLen {
		return tlsError(buf, ErrHelloTooLarge), false
	}
	return Result{}, true
}

// tlsError is a TLS stream the gateway refuses, with the record version to
// answer in should it send an alert.
func tlsError(buf []byte, err error) Result {
	r := Result{Protocol: TLS, Data: buf, Err: err}
	r.Hello.RecordVersion = clienthello.RecordVersion(buf)
	return r
}

// readMore appends one read's worth of bytes to buf, growing it up to
// MaxBytes.
func readMore(c net.Conn, buf []byte) ([]byte, error) {
	if len(buf) == cap(buf) {
		n := min(max(2*cap(buf), 4096), MaxBytes)
		if n <= len(buf) {
			return buf, ErrHelloTooLarge
		}
		nb := make([]byte, len(buf), n)
		copy(nb, buf)
		buf = nb
	}
	n, err := c.Read(buf[len(buf):cap(buf)])
	buf = buf[:len(buf)+n]
	if n > 0 {
		return buf, nil
	}
	if err == nil {
		err = errors.New("empty read")
	}
	return buf, err
}

// TimedOut reports whether err, from a read, is its deadline passing: the
// client said nothing in time. It is the one test of a read deadline for
// the packages that read the client with one (peek, the gateway).
func TimedOut(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
