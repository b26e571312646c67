package clienthello

import (
	"bytes"
	"strconv"
)

// A connection decided without a ClientHello (a server-first protocol, or
// one whose first bytes are no TLS and no HTTP) may turn into TLS later:
// SMTP, IMAP, POP3, FTP, NNTP and Sieve after STARTTLS (or STLS, AUTH
// TLS), LDAP after its StartTLS request, XMPP after <starttls/>, MySQL
// after its SSL request, TDS inside PRELOGIN. The ClientHello that then
// comes names a server as any other does, and a server that routes or
// picks its certificate on that name would act on it unread. Upgrade
// finds that hello in the client's bytes, wherever it starts, so that it
// is decided before the server has it whole.
//
// It knows no protocol's commands: it looks for the start of a
// ClientHello in TLS records (helloStart) at every byte. How much of a
// start it takes depends on where it is:
//   - where a client's TLS begins in every upgrade (the first byte of a
//     read, or of a line), the record header and the handshake message's
//     type and length suffice;
//   - anywhere else (a hello sent in one write with the request before
//     it, as a MySQL client may), the record's and the message's versions
//     must say TLS too, so that bytes of a binary protocol are not taken
//     for a hello once in 2^32 positions but in about 2^48.
//
// A start is never held back while it is incomplete: a binary protocol's
// message may end in a byte of 22, and holding it would stall a client
// that waits for the answer. Only once a start is certain is the rest
// held, until the hello is whole: the server has at most its first
// bytes, never a hello it could act on. A hello that then does not parse
// is refused, as at the start of a connection.
//
// Upgrade does no I/O and keeps no time; its zero value is ready.
type Upgrade struct {
	// tail is the end of the bytes passed on, from the first position
	// that may still begin a hello (at most helloStartMax bytes); prev
	// is the byte before it (a line start is after '\n'), readStart says
	// tail[0] began a read.
	tail      []byte
	tailArr   [helloStartMax]byte
	prev      byte
	readStart bool
	// held is the hello from its first byte on, and what came behind it;
	// its first sent bytes were passed on before the start was certain.
	held    []byte
	sent    int
	reads   int
	used    int
	info    Info
	scratch []byte
	st      UpgradeState
	why     string
	scanned int // bytes given so far
	at      int // the hello's offset in the client's bytes
}

// UpgradeState is where an Upgrade stands.
type UpgradeState uint8

const (
	// Scanning: no hello has begun; the bytes given were passed on.
	Scanning UpgradeState = iota
	// HelloHeld: a hello has begun and is held until it is whole.
	HelloHeld
	// HelloFound: a whole hello is held: Hello reads it, Release gives
	// what is to be passed on if it is allowed.
	HelloFound
	// HelloRefused: what was held is no hello a gateway may pass (Why).
	HelloRefused
)

// helloStartMax bounds the bytes helloStart reads: six handshake bytes
// in as many one-byte records, behind up to four two-byte alerts.
const helloStartMax = 6*(recordHeaderLen+1) + 4*(recordHeaderLen+2)

// Client takes the client's next bytes b, as read, and returns what may be
// passed on now: all of b while scanning; while a hello is held, nothing
// (its bytes are kept). Its state says which.
func (u *Upgrade) Client(b []byte) ([]byte, UpgradeState) {
	switch u.st {
	case HelloHeld:
		u.hold(b)
		return nil, u.st
	case HelloFound, HelloRefused:
		// Not to be called: the caller decides first. Keep what comes.
		u.held = append(u.held, b...)
		return nil, u.st
	}
	defer func() { u.scanned += len(b) }()
	// The first start that is certain wins; the first that may still
	// become one is kept as the tail, to be looked at again with the
	// next bytes. Starts that began in what was passed on come first.
	maybe, maybePrev, maybeRead := -1, byte(0), false
	if len(u.tail) > 0 {
		var arr [2 * helloStartMax]byte
		n := copy(arr[:], u.tail)
		n += copy(arr[n:], b)
		view := arr[:n]
		for i := 0; i < len(u.tail); i++ {
			if u.tail[i] != recordTypeHandshake {
				continue
			}
			prev := u.prev
			if i > 0 {
				prev = u.tail[i-1]
			}
			readStart := u.readStart && i == 0
			switch helloStart(view[i:], readStart || prev == '\n') {
			case startYes:
				u.held = append(append(make([]byte, 0, len(u.tail)-i+len(b)), u.tail[i:]...), b...)
				u.sent = len(u.tail) - i
				u.at = u.scanned - u.sent
				u.tail = nil
				u.hold(nil)
				return nil, u.st
			case startMaybe:
				if maybe < 0 {
					maybe, maybePrev, maybeRead = i, prev, readStart
				}
			}
		}
	}
	for i := 0; i < len(b); i++ {
		j := bytes.IndexByte(b[i:], recordTypeHandshake)
		if j < 0 {
			break
		}
		i += j
		prev := u.prev
		if i > 0 {
			prev = b[i-1]
		} else if len(u.tail) > 0 {
			prev = u.tail[len(u.tail)-1]
		}
		switch helloStart(b[i:], i == 0 || prev == '\n') {
		case startYes:
			u.held = append(make([]byte, 0, len(b)-i), b[i:]...)
			u.sent, u.at = 0, u.scanned+i
			u.tail = nil
			u.hold(nil)
			return b[:i], u.st
		case startMaybe:
			if maybe < 0 {
				maybe, maybePrev, maybeRead = len(u.tail)+i, prev, i == 0
			}
		}
	}
	switch {
	case maybe < 0:
		u.tail = u.tail[:0]
	case maybe < len(u.tail):
		// Shorter than helloStartMax, or it would have been decided.
		u.tail = append(append(u.tailArr[:0:helloStartMax], u.tail[maybe:]...), b...)
	default:
		u.tail = append(u.tailArr[:0], b[maybe-len(u.tail):]...)
	}
	if maybe >= 0 {
		u.prev, u.readStart = maybePrev, maybeRead
	} else if len(b) > 0 {
		u.prev = b[len(b)-1]
	}
	return b, Scanning
}

// hold adds b to a held hello and sees whether it is whole.
func (u *Upgrade) hold(b []byte) {
	u.held = append(u.held, b...)
	u.reads++
	used, st := Examine(u.held, u.scratchBuf(), &u.info)
	switch {
	case st == Complete:
		u.used, u.st = used, HelloFound
	case st == NeedMore && u.reads > MaxHoldReads:
		u.refuse("the ClientHello came in more than " + strconv.Itoa(MaxHoldReads) + " reads")
	case st == NeedMore:
		u.st = HelloHeld
	default:
		u.refuse("malformed ClientHello")
	}
}

func (u *Upgrade) scratchBuf() []byte {
	if u.scratch == nil {
		u.scratch = make([]byte, MaxHelloLen)
	}
	return u.scratch
}

func (u *Upgrade) refuse(why string) {
	u.st, u.why = HelloRefused, why
}

// Why says why a hello was refused.
func (u *Upgrade) Why() string { return u.why }

// Hello returns the whole hello found (HelloFound); it views the
// Upgrade's buffers.
func (u *Upgrade) Hello() *Info { return &u.info }

// Release returns what is to be passed on once the hello found is allowed:
// the hello's bytes not yet passed on, and what the client sent behind it
// (behind is the part of it after the hello, for a Retry).
func (u *Upgrade) Release() (pass, behind []byte) {
	return u.held[u.sent:], u.held[u.used:]
}

// HeldBytes is how many bytes are held: a caller bounds them.
func (u *Upgrade) HeldBytes() int { return len(u.held) }

// Offset is how many bytes the client had sent before the hello began.
func (u *Upgrade) Offset() int { return u.at }

// The answers of helloStart.
const (
	startNo    = iota // no hello begins here
	startMaybe        // the bytes end before it can tell
	startYes          // a hello begins here
)

const (
	// minHelloBody is the shortest ClientHello body: versions (2),
	// random (32), an empty session id (1), one cipher suite (4), one
	// compression method (2).
	minHelloBody = 41
)

// helloStart reports whether x begins with the start of a ClientHello in
// TLS records: a handshake record (a legacy_record_version below 0x1000,
// which crypto/tls takes, and a length from 1 to 2^14 plus the expansion
// a server tolerates), carrying a client_hello message of a plausible
// length. The message's first bytes may be spread over several records,
// with warning alerts between them as crypto/tls reads them. Away from a
// read's or line's start (edge false), the record and message versions
// must have major 3 too.
func helloStart(x []byte, edge bool) int {
	var hs [6]byte
	n, alerts := 0, 0
	for first := true; n < len(hs); first = false {
		if len(x) == 0 {
			return startMaybe
		}
		switch {
		case x[0] == recordTypeAlert && !first && alerts < 4:
			alerts++
			if len(x) < recordHeaderLen {
				return startMaybe
			}
			if x[3] != 0 || x[4] != 2 {
				return startNo
			}
			if len(x) < recordHeaderLen+2 {
				return startMaybe
			}
			x = x[recordHeaderLen+2:]
			continue
		case x[0] != recordTypeHandshake:
			return startNo
		}
		if len(x) < 2 {
			return startMaybe
		}
		if x[1] >= 0x10 || !edge && x[1] != 3 {
			return startNo
		}
		if len(x) < recordHeaderLen {
			return startMaybe
		}
		l := int(x[3])<<8 | int(x[4])
		if l == 0 || l > 1<<14+2048 {
			return startNo
		}
		body := x[recordHeaderLen:]
		for k := 0; k < l && n < len(hs); k++ {
			if k == len(body) {
				return startMaybe
			}
			hs[n] = body[k]
			n++
			switch n {
			case 1:
				if hs[0] != typeClientHello {
					return startNo
				}
			case 2:
				if hs[1] != 0 {
					return startNo
				}
			case 4:
				if m := int(hs[2])<<8 | int(hs[3]); m < minHelloBody || m > MaxHelloLen-4 {
					return startNo
				}
			case 5:
				if !edge && hs[4] != 3 {
					return startNo
				}
			}
		}
		if len(body) < l {
			if n == len(hs) {
				break
			}
			return startMaybe
		}
		x = body[l:]
	}
	return startYes
}
