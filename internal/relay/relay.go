// Package relay copies bytes both ways between a client and its upstream
// until both sides are done, passing half-closes on and ending connections
// that stay idle. It also dials: a connection headed straight for the loop
// is connected by the loop itself (Loops.Dial), since a dial through
// net.Dialer and a hand-over cost eight more system calls; one that egressd
// must read and write first is dialled by package upstream and adopted
// (Loops.Adopt).
//
// A set of event loops (Loops: Dial or Adopt, then Attach and Start) holds
// both sockets. A direction copies its first, small messages (a TLS
// handshake's) through the loop's buffer; once a read fills it, it moves
// bytes with splice(2) through a pipe that is taken from a shared pool
// only while bytes are moving, and given back as soon as the source has
// nothing more to read. The pipes in use and pooled are bounded by a
// share of the open-files limit (setMaxPipes), since a direction whose
// destination stopped reading keeps the bytes in its pipe: past the
// bound, a direction goes on copying through the buffer, so that stalled
// readers slow others down a little rather than spend the fds every
// accept and dial needs. An idle proxied connection so holds exactly its
// two sockets: no pipe, no buffer, no goroutine. (io.Copy between two
// TCPConns splices too, but holds a pipe per direction for the
// connection's whole life: four extra fds and their kernel memory per
// idle connection, and a goroutine stack per direction.) Like the rest of
// egressd it runs on Linux only: epoll, splice(2) and eventfd have no
// portable stand-in.
package relay

import (
	"errors"
	"strconv"
	"syscall"
)

// Result is what one relayed connection moved and how it ended.
type Result struct {
	Up   int64 // client -> upstream
	Down int64 // upstream -> client
	// UpErr and DownErr are nil when the direction ended with a clean EOF
	// from its source. They say where an error surfaced, not whose doing
	// it was: a client's reset fails the write of the upstream's bytes to
	// it, in the upstream->client direction. End and By say whose.
	UpErr, DownErr error
	// End is how the connection ended, and By the side that ended it.
	End End
	By  Side
	// Why is a Watch's reason, when End is Refused.
	Why string
}

// Side is one party to a relayed connection.
type Side uint8

const (
	Local    Side = iota // egressd itself: its idle timeout, its Close, its own failure
	Client               // the accepted socket
	Upstream             // the dialled socket
)

// String returns "egressd", "client" or "upstream", as the access log
// words them.
func (s Side) String() string {
	switch s {
	case Client:
		return "client"
	case Upstream:
		return "upstream"
	}
	return "egressd"
}

// End is how a relayed connection ended.
type End uint8

const (
	// Closed: By closed first (its EOF came first) and the other side
	// followed. UpErr or DownErr is not nil when By then reset the bytes
	// that still came for it: a socket closed with data arriving answers
	// with a reset (RFC 1122 §4.2.2.13), and that is still a close.
	Closed End = iota
	// Reset: By reset the connection, read as ECONNRESET or as a write's
	// EPIPE after one.
	Reset
	// Failed: another error on By's socket (a retransmission timeout, an
	// ICMP unreachable), or egressd's own (By Local: no epoll).
	Failed
	// Idle: no byte moved either way for the idle timeout (By Local).
	Idle
	// Drained: Close ended it, as the gateway's drain does (By Local).
	Drained
	// Refused: a Watch refused what the client sent (By Client; Why
	// says what).
	Refused
)

// String names e as tests and logs print it.
func (e End) String() string {
	switch e {
	case Closed:
		return "closed"
	case Reset:
		return "reset"
	case Failed:
		return "failed"
	case Idle:
		return "idle"
	case Drained:
		return "drained"
	case Refused:
		return "refused"
	}
	return "end(" + strconv.Itoa(int(e)) + ")"
}

// isReset reports whether err, from a socket, is the peer's reset: read as
// ECONNRESET, or on a write as EPIPE once the reset was seen.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// ErrIdle ends a direction when neither direction moved a byte for the
// idle timeout.
var ErrIdle = errors.New("idle timeout")

// A Watch reads a relayed connection's first bytes each way before the
// relay writes them on (Conn.Watch), for a check the decision could not
// make before the relay began: that a TLS client's second ClientHello,
// after the server's HelloRetryRequest, names the server the first did
// (see clienthello.Retry). While a direction is watched, its bytes go
// through the loop's buffer, never spliced.
type Watch interface {
	// Client is given what each read from the client returned. It
	// returns the bytes to write to the upstream now (b, a prefix of
	// it while it holds the rest, or bytes it held with b after them)
	// and how it goes on; an error (a *Refusal) ends the connection.
	Client(b []byte) (pass []byte, st WatchState, err error)
	// Server is given what each read from the upstream returned, which
	// is written on whole. WatchOff ends the watch of the server's bytes;
	// WatchEnded ends the whole watch, the client's side too (as when
	// the server's answer leaves nothing to check in what the client
	// sends next: the Conn must not keep a Watch until the client's next
	// read, which an idle connection never makes).
	Server(b []byte) WatchState
	// Expired is the refusal of a connection whose client's held bytes
	// did not complete within the hold time Conn.Watch was given.
	Expired() error
	// Release says the relay is done with the Watch: none of its
	// methods is called after. (A Watch is made for every TLS
	// connection: its maker may reuse it.)
	Release()
}

// WatchState is how a Watch goes on after a client's bytes.
type WatchState uint8

const (
	WatchOn      WatchState = iota // watch that side's next bytes too
	WatchHolding                   // the Watch holds the client's bytes: the hold time runs
	WatchOff                       // that side's bytes are relayed unread from here
	WatchEnded                     // both sides' bytes are relayed unread from here
	// WatchBoth, from Client: watch the client's next bytes, and the
	// server's again from its next read (a Watch whose check of the
	// client's bytes now needs the server's answer, as after a
	// ClientHello found part-way through a connection).
	WatchBoth
)

// Refusal is the error with which a Watch ends a connection: Reply (a TLS
// alert) is written to the client, the upstream is reset, and the Result
// ends Refused, By Client, with Why.
type Refusal struct {
	Why   string
	Reply []byte
}

func (r *Refusal) Error() string { return r.Why }
