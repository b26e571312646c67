package clienthello

import (
	"bytes"
	"slices"
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
// ClientHello in TLS records (helloStart) at every byte, and takes one
// as certain only once its first fields, up to the cipher suites' length,
// are those of a hello: a binary protocol's bytes pass those checks about
// once in 2^34 positions. Where a client's TLS begins in every upgrade
// (the first byte of a read, or of a line) that is enough, and the start
// is read as leniently as a TLS server reads one (any record version
// crypto/tls takes, change_cipher_spec and alert records before it);
// anywhere else (a hello written together with the request before it, as
// a MySQL client may), the record's and the hello's versions must say TLS
// too, which makes it about 2^46.
//
// A start is never held back while it is unsure: a binary protocol's
// message may end like one, and holding it would stall a client that
// waits for its answer. Only once a start is certain is the rest held,
// until the hello is whole; its fields up to there come before any
// extension, so the server has at most a hello without its name, never
// one it could act on. A start that is odd where a server would not mind
// (alerts between its records, more records than a client makes, a
// message longer than MaxHelloLen) is certain, so that what is held is
// refused rather than passed: a hello that then does not parse, or
// carries a second one in its record, is refused, as at the start of a
// connection.
//
// Upgrade does no I/O and keeps no time; its zero value is ready.
type Upgrade struct {
	// tail is the end of the bytes passed on, from the first position
	// that may still begin a hello; prev is the byte before it (a line
	// starts after '\n'), and reads are the offsets in tail where a read
	// began.
	tail  []byte
	prev  byte
	reads []int
	// held is the hello from its first byte on, and what came behind it;
	// its first sent bytes were passed on before the start was certain.
	held    []byte
	sent    int
	nreads  int
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

const (
	// startFields is how much of a hello helloStart reads: the message
	// header, legacy_version, random, the session id and its length
	// (at most 32), and the cipher suites' length.
	startFields = 4 + 2 + 32 + 1 + 32 + 2
	// maxStartRecords is how many records (the hello's, empty ones,
	// alerts) a start may take to carry those bytes before it is
	// certain: no client splits its hello so finely.
	maxStartRecords = 16
	// helloStartMax bounds the bytes helloStart reads.
	helloStartMax = MaxLeadingRecords*(recordHeaderLen+2) + maxStartRecords*recordHeaderLen + startFields
	// minHelloBody is the shortest ClientHello body: versions (2),
	// random (32), an empty session id (1), one cipher suite (4), one
	// compression method (2).
	minHelloBody = 41
	// scanBudget bounds, per byte given, the bytes helloStart may read
	// (beyond a fixed allowance): bytes built as many overlapping starts
	// would otherwise cost the relay loop a walk each. Past it the
	// current start is taken as certain, and what follows is refused
	// unless it is a hello.
	scanBudget = 8
)

// Client takes the client's next bytes b, as read, and returns what may be
// passed on now: all of b while scanning; once a hello's start is certain,
// what came before it (the rest is kept). Its state says which.
func (u *Upgrade) Client(b []byte) ([]byte, UpgradeState) {
	switch u.st {
	case HelloHeld:
		u.hold(b)
		return nil, u.st
	case HelloFound, HelloRefused:
		// The caller decides first; what comes meanwhile is kept.
		u.held = append(u.held, b...)
		return nil, u.st
	}
	defer func() { u.scanned += len(b) }()
	budget := scanBudget*len(b) + 4*helloStartMax
	// Starts that began in what was passed on come first, continued by b.
	maybe, maybePrev := -1, byte(0)
	if len(u.tail) > 0 {
		var arr [2 * helloStartMax]byte
		n := copy(arr[:], u.tail)
		n += copy(arr[n:], b)
		view := arr[:n]
		for i := range u.tail {
			prev := u.prev
			if i > 0 {
				prev = u.tail[i-1]
			}
			edge := prev == '\n' || slices.Contains(u.reads, i)
			if !mayStart(u.tail[i], edge) {
				continue
			}
			r, cost := helloStart(view[i:], edge)
			if budget -= cost; budget < 0 {
				r = startYes
			}
			switch r {
			case startYes:
				u.held = append(append(make([]byte, 0, len(u.tail)-i+len(b)), u.tail[i:]...), b...)
				u.sent = len(u.tail) - i
				u.at = u.scanned - u.sent
				u.tail, u.reads = u.tail[:0], u.reads[:0]
				u.hold(nil)
				return nil, u.st
			case startMaybe:
				if maybe < 0 {
					maybe, maybePrev = i, prev
				}
			}
		}
	}
	// Then the starts in b: at every byte of 22 (a handshake record), and
	// at a read's or line's start, a change_cipher_spec or alert record
	// too.
	hsAt, nlAt := indexFrom(b, 0, recordTypeHandshake), indexFrom(b, 0, '\n')
	first := len(b) > 0 && b[0] != recordTypeHandshake && mayStart(b[0], true)
	for {
		// The next line that starts with a change_cipher_spec or alert
		// record; then the earliest candidate of the three kinds.
		for nlAt >= 0 && (nlAt+1 == len(b) || b[nlAt+1] == recordTypeHandshake || !mayStart(b[nlAt+1], true)) {
			nlAt = indexFrom(b, nlAt+1, '\n')
		}
		var i int
		switch {
		case first:
			i, first = 0, false
		case hsAt >= 0 && (nlAt < 0 || hsAt < nlAt+1):
			i, hsAt = hsAt, indexFrom(b, hsAt+1, recordTypeHandshake)
		case nlAt >= 0:
			i, nlAt = nlAt+1, indexFrom(b, nlAt+1, '\n')
		default:
			u.keep(b, maybe, maybePrev)
			return b, Scanning
		}
		prev := u.prev
		if i > 0 {
			prev = b[i-1]
		} else if len(u.tail) > 0 {
			prev = u.tail[len(u.tail)-1]
		}
		edge := i == 0 || prev == '\n'
		r, cost := helloStart(b[i:], edge)
		if budget -= cost; budget < 0 {
			r = startYes
		}
		switch r {
		case startYes:
			u.held = append(make([]byte, 0, len(b)-i), b[i:]...)
			u.sent, u.at = 0, u.scanned+i
			u.tail, u.reads = u.tail[:0], u.reads[:0]
			u.hold(nil)
			return b[:i], u.st
		case startMaybe:
			if maybe < 0 {
				maybe, maybePrev = len(u.tail)+i, prev
			}
		}
	}
}

// keep keeps, as the tail, the bytes passed on from maybe (an offset in
// the old tail followed by b; -1 for none) on.
func (u *Upgrade) keep(b []byte, maybe int, prev byte) {
	if maybe < 0 {
		u.tail, u.reads = u.tail[:0], u.reads[:0]
		if len(b) > 0 {
			u.prev = b[len(b)-1]
		}
		return
	}
	// A start still unsure is shorter than helloStartMax.
	reads := u.reads[:0]
	if maybe < len(u.tail) {
		for _, r := range u.reads {
			if r >= maybe {
				reads = append(reads, r-maybe)
			}
		}
		reads = append(reads, len(u.tail)-maybe)
		u.tail = append(u.tail[:0], u.tail[maybe:]...)
		u.tail = append(u.tail, b...)
	} else {
		if maybe == len(u.tail) {
			reads = append(reads, 0)
		}
		u.tail = append(u.tail[:0], b[maybe-len(u.tail):]...)
	}
	u.reads, u.prev = reads, prev
}

// indexFrom is the index of c in b at or after i, or -1.
func indexFrom(b []byte, i int, c byte) int {
	if j := bytes.IndexByte(b[i:], c); j >= 0 {
		return i + j
	}
	return -1
}

// mayStart says whether a start may begin with c: a handshake record, or,
// where a client's TLS begins, a change_cipher_spec or alert record.
func mayStart(c byte, edge bool) bool {
	return c == recordTypeHandshake || edge && (c == recordTypeChangeCipher || c == recordTypeAlert)
}

// hold adds b to a held hello and sees whether it is whole.
func (u *Upgrade) hold(b []byte) {
	u.held = append(u.held, b...)
	u.nreads++
	if u.scratch == nil {
		u.scratch = make([]byte, MaxHelloLen)
	}
	msg, used, st := Reassemble(u.held, u.scratch)
	switch {
	case st == Complete && !Parse(msg, &u.info):
		u.refuse("malformed ClientHello")
	case st == Complete && Coalesced(u.held, used, len(msg)):
		u.refuse("a second handshake message packed behind the ClientHello in its record")
	case st == Complete:
		u.info.RecordVersion = RecordVersion(u.held)
		u.used, u.st = used, HelloFound
	case st == NeedMore && u.nreads > MaxHoldReads:
		u.refuse("the ClientHello came in more than " + strconv.Itoa(MaxHoldReads) + " reads")
	case st == NeedMore:
		u.st = HelloHeld
	default:
		u.refuse("malformed ClientHello")
	}
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

// helloStart reports whether x begins with the start of a ClientHello in
// TLS records, and how many bytes it read to tell. The records must be
// handshake records (empty ones are skipped) of a length up to 2^14 plus
// what a server tolerates, carrying a client_hello message whose first
// fields are a hello's: a length from minHelloBody to 192 KiB, a session
// id of at most 32 bytes, and an even cipher suites' length. Where a
// client's TLS begins (edge) change_cipher_spec and alert records may come
// first, and a record version may be anything crypto/tls takes (major
// below 0x10); elsewhere the record's and the hello's version majors must
// be 3. Alert records between the hello's records, or more records than
// maxStartRecords before its fields are read, make it certain: a lenient
// server reads on.
func helloStart(x []byte, edge bool) (answer, read int) {
	var hs [startFields]byte
	n, recs, leading, off := 0, 0, 0, 0
	need := 6 // handshake bytes to read: grows as the fields tell
	for n < need {
		if recs == maxStartRecords {
			return startYes, off
		}
		if off >= len(x) {
			return startMaybe, off
		}
		typ := x[off]
		if n == 0 && edge && (typ == recordTypeChangeCipher || typ == recordTypeAlert) && recs == 0 && leading < MaxLeadingRecords {
			// A record a server drops before the hello.
			want := 1
			if typ == recordTypeAlert {
				want = 2
			}
			if off+recordHeaderLen > len(x) {
				return startMaybe, off
			}
			if x[off+1] >= 0x10 || x[off+3] != 0 || int(x[off+4]) != want {
				return startNo, off
			}
			leading++
			off += recordHeaderLen + want
			continue
		}
		if typ == recordTypeAlert && n > 0 {
			if off+recordHeaderLen > len(x) {
				return startMaybe, off
			}
			if x[off+1] >= 0x10 || x[off+3] != 0 || x[off+4] != 2 {
				return startNo, off
			}
			return startYes, off // an alert among the hello's records
		}
		if typ != recordTypeHandshake {
			return startNo, off
		}
		if off+1 < len(x) && (x[off+1] >= 0x10 || !edge && x[off+1] != 3) {
			return startNo, off
		}
		if off+recordHeaderLen > len(x) {
			return startMaybe, off
		}
		l := int(x[off+3])<<8 | int(x[off+4])
		if l > 1<<14+2048 {
			return startNo, off
		}
		recs++
		off += recordHeaderLen
		for k := 0; k < l && n < need; k++ {
			if off >= len(x) {
				return startMaybe, off
			}
			hs[n] = x[off]
			off++
			n++
			switch n {
			case 1:
				if hs[0] != typeClientHello {
					return startNo, off
				}
			case 2:
				if hs[1] > 2 {
					return startNo, off
				}
			case 4:
				if int(hs[1])<<16|int(hs[2])<<8|int(hs[3]) < minHelloBody {
					return startNo, off
				}
			case 5:
				if !edge && hs[4] != 3 {
					return startNo, off
				}
			case 6:
				need = 4 + 2 + 32 + 1 // on to the session id's length
			case 4 + 2 + 32 + 1:
				sid := int(hs[n-1])
				if sid > 32 {
					return startNo, off
				}
				need = n + sid + 2 // the session id, then the cipher suites' length
			}
			if n == need && need > 4+2+32+1 {
				if cs := int(hs[n-2])<<8 | int(hs[n-1]); cs%2 != 0 {
					return startNo, off
				}
				return startYes, off
			}
		}
		// A record ended before the fields did: on to the next,
		// skipping what this one held past them (none: need grows
		// only within the hello's first bytes).
		if n < need {
			continue
		}
	}
	return startYes, off
}
