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
// It knows no protocol's commands. At every byte of 22 (a handshake
// record's type) it starts a walker that follows the bytes as TLS records
// carrying a ClientHello, as leniently as a TLS server reads them (any
// record version crypto/tls takes, records of any size, empty ones), and
// takes the start as certain only once the hello's fields up to its
// extensions' length fit the message's length exactly, as crypto/tls and
// OpenSSL require: a binary protocol's bytes do that about once in 2^44
// positions. Until then a walker holds nothing back: a binary message may
// end like a start, and its client waits for the answer. Once a start is
// certain, the rest is held until the hello is whole; the fields read so
// far come before any extension, so the server has at most a hello
// without its name, never one it could act on. (A hello with no
// extensions at all has no name either.)
//
// What a lenient server reads on and Reassemble does not (an alert
// between the hello's records, more than maxStartRecords records, a
// message over MaxHelloLen) is certain at once, so that it is held and
// refused, not passed; so is a hello that does not parse, or carries a
// second message in its record. When a start is certain while an earlier
// one is still being followed, the hold begins at the earlier: a client
// cannot hide its hello behind a made-up one inside its own fields.
//
// Upgrade does no I/O and keeps no time; its zero value is ready.
type Upgrade struct {
	// walkers follow the starts not yet told apart, oldest first; hist
	// is the bytes passed on from histAt on, kept while a walker may
	// need them for the hello it would hold.
	walkers []walker
	hist    []byte
	histAt  int
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
	// maxStartRecords is how many records a start may take before its
	// fields are read: no client splits its hello so finely.
	maxStartRecords = 16
	// maxWalkers bounds the starts followed at once: bytes built as
	// many overlapping starts would otherwise cost a walk each.
	maxWalkers = 8
	// minHelloBody is the shortest ClientHello body a server parses:
	// versions (2), random (32), and the three lengths of empty lists
	// (session id, cipher suites, compression methods).
	minHelloBody = 38
	// maxRecordLen is the longest record a walker follows: 2^14 and
	// the expansion a server tolerates.
	maxRecordLen = 1<<14 + 2048
	// scanBudget bounds the walkers' steps per byte given (beyond a
	// fixed allowance): a start that costs more is taken as certain, and
	// what follows refused unless it is a hello. Bytes of other
	// protocols end a walker in a step or two.
	scanBudget = 8
	// maxIdleHist is the most of hist's array kept while no walker needs
	// it (keepHist).
	maxIdleHist = 4 << 10
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
	certain, why := false, ""
	budget := scanBudget*len(b) + 1024
	// The starts followed from earlier bytes, then those in b.
	live := u.walkers[:0]
	for _, w := range u.walkers {
		r, steps := w.feed(b)
		budget -= steps
		switch r {
		case startYes:
			certain = true
			live = append(live, w)
		case startMaybe:
			live = append(live, w)
		}
	}
	u.walkers = live
	for i := 0; !certain && i < len(b); i++ {
		j := bytes.IndexByte(b[i:], recordTypeHandshake)
		if j < 0 {
			break
		}
		i += j
		w := walker{at: u.scanned + i}
		r, steps := w.feed(b[i:])
		if budget -= steps; budget < 0 && r == startNo {
			r = startMaybe // kept, and refused below
		}
		switch r {
		case startYes:
			certain = true
			u.walkers = append(u.walkers, w)
		case startMaybe:
			switch {
			case len(u.walkers) == maxWalkers:
				certain, why = true, "bytes shaped as many ClientHello starts at once"
			case budget < 0:
				certain, why = true, "bytes shaped as many overlapping ClientHello starts"
			}
			u.walkers = append(u.walkers, w)
		}
	}
	if certain {
		// The hold begins at the oldest start still followed.
		first := u.walkers[0]
		off := max(first.at-u.scanned, 0) // in b
		var pass []byte = b[:off]
		switch {
		case why != "":
			u.refuse(why)
		case first.big():
			u.refuse("a ClientHello longer than " + strconv.Itoa(MaxHelloLen) + " bytes")
		default:
			u.held = make([]byte, 0, u.scanned-first.at+len(b)-off+len(b[off:]))
			if first.at < u.scanned {
				u.held = append(u.held, u.hist[first.at-u.histAt:]...)
			}
			u.sent = len(u.held)
			u.held = append(u.held, b[off:]...)
			u.at = first.at
			u.hold(nil)
		}
		u.walkers, u.hist = nil, nil
		u.scanned += len(b)
		return pass, u.st
	}
	u.keepHist(b)
	u.scanned += len(b)
	return b, Scanning
}

// keepHist keeps, of the bytes passed on with b, those a walker still
// followed may need.
//
// The array is kept for reuse only while it is small (maxIdleHist): a
// walker that a long field kept alive grows it to some 16 KiB, and an
// upgrade watch lives as long as its connection, so an array kept after
// the walker died would hold that much for every such connection, for
// nothing.
func (u *Upgrade) keepHist(b []byte) {
	from := -1
	for _, w := range u.walkers {
		if !w.big() {
			from = w.at
			break
		}
	}
	end := u.scanned + len(b)
	switch {
	case from < 0:
		u.hist, u.histAt = u.hist[:0], end
	case from >= u.scanned:
		if cap(u.hist) > maxIdleHist {
			u.hist = nil // append sizes a new array to what is kept
		}
		u.hist = append(u.hist[:0], b[from-u.scanned:]...)
		u.histAt = from
	default:
		k := copy(u.hist, u.hist[from-u.histAt:])
		u.hist = append(u.hist[:k], b...)
		u.histAt = from
	}
	if cap(u.hist) > maxIdleHist && len(u.hist) <= maxIdleHist/2 {
		// The walker that grew it died, or moved on: a small array for
		// what is left, none for nothing.
		u.hist = bytes.Clone(u.hist)
		if len(u.hist) == 0 {
			u.hist = nil
		}
	}
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

// refuse ends the scan: nothing is read any more, so the buffers only
// reading needs are let go (held stays, for the caller).
func (u *Upgrade) refuse(why string) {
	u.st, u.why = HelloRefused, why
	u.walkers, u.hist, u.scratch = nil, nil, nil
}

// Why says why a hello was refused.
func (u *Upgrade) Why() string { return u.why }

// Hello returns the whole hello found (HelloFound); it views the
// Upgrade's buffers.
func (u *Upgrade) Hello() *Info { return &u.info }

// Release returns what is to be passed on once the hello found is allowed:
// the hello's bytes not yet passed on, and what the client sent behind it
// (behind is the part of it after the hello, for a Retry). ok is false if
// the hello ended in bytes passed on already, which Upgrade does not let
// happen: the caller then refuses.
func (u *Upgrade) Release() (pass, behind []byte, ok bool) {
	if u.used < u.sent {
		return nil, nil, false
	}
	return u.held[u.sent:], u.held[u.used:], true
}

// Held returns the bytes held: the hello from its first byte, and what
// came behind it. They view the Upgrade's buffer.
func (u *Upgrade) Held() []byte { return u.held }

// HeldBytes is how many bytes are held: a caller bounds them.
func (u *Upgrade) HeldBytes() int { return len(u.held) }

// Offset is how many bytes the client had sent before the hello began.
func (u *Upgrade) Offset() int { return u.at }

// The answers of a walker.
const (
	startNo    = iota // no hello begins here
	startMaybe        // the bytes ended before it could tell
	startYes          // a hello begins here
)

// walker follows one possible start of a ClientHello in TLS records,
// through as many reads as it takes to tell (feed). It reads the record
// headers, and of the handshake message its header, then skips
// legacy_version and random, reads the session id's length and skips it,
// and so on up to the extensions' length, which must end the message.
type walker struct {
	at int // offset of its first byte in the client's bytes
	// The record layer: the header being read, and the body bytes left
	// in the current record.
	hdr  [recordHeaderLen]byte
	hdrN int
	left int
	recs int
	// The message: step is the field being read (steps), need how many
	// of its bytes are still to come, val the value read so far; n the
	// message bytes seen, m its length once known (-1 before).
	step, need, val, n, m int
}

// The message fields a walker reads (r) or skips (s), in order.
const (
	stepType    = iota // r 1: client_hello
	stepLength         // r 3: minHelloBody..192 KiB
	stepFixed          // s 34: legacy_version, random
	stepSIDLen         // r 1
	stepSID            // s
	stepCSLen          // r 2: even, fits
	stepCS             // s
	stepCompLen        // r 1: at least one, fits
	stepComp           // s
	stepExtLen         // r 2: ends the message (or the message ended)
)

// big says the walker's message is known to be longer than MaxHelloLen:
// refused once certain, so its bytes need not be kept.
func (w *walker) big() bool { return w.step > stepLength && w.m+handshakeHeaderLen > MaxHelloLen }

// feed takes the next bytes and says whether the start is told, and how
// many steps it took (header bytes and fields read, for Upgrade's
// budget).
func (w *walker) feed(b []byte) (r, steps int) {
	r = startMaybe
	steps = w.walk(b, &r)
	return r, steps
}

// walk is feed's loop; it sets *r when the start is told.
func (w *walker) walk(b []byte, r *int) (steps int) {
	if w.step == 0 && w.need == 0 && w.n == 0 && w.recs == 0 && w.hdrN == 0 {
		w.need, w.m = 1, -1
	}
	for i := 0; i < len(b); {
		if w.left == 0 {
			steps++
			w.hdr[w.hdrN] = b[i]
			w.hdrN++
			i++
			switch w.hdrN {
			case 1:
				switch typ := w.hdr[0]; {
				case typ == recordTypeHandshake:
				case typ == recordTypeAlert && w.recs > 0:
				default:
					*r = startNo
					return steps
				}
			case 2:
				if w.hdr[1] >= 0x10 {
					*r = startNo
					return steps
				}
			case recordHeaderLen:
				l := int(w.hdr[3])<<8 | int(w.hdr[4])
				w.hdrN = 0
				switch {
				case w.hdr[0] == recordTypeAlert && l == 2:
					*r = startYes // an alert among the hello's records: a lenient server reads on
					return steps
				case w.hdr[0] == recordTypeAlert, l > maxRecordLen:
					*r = startNo
					return steps
				}
				if w.recs++; w.recs > maxStartRecords {
					*r = startYes
					return steps
				}
				w.left = l
			}
			continue
		}
		k := min(w.left, len(b)-i)
		used, fields, res := w.message(b[i : i+k])
		w.left -= used
		i += used
		steps += fields
		if res != startMaybe {
			*r = res
			return steps
		}
	}
	return steps
}

// message takes body bytes of the hello's records, and says how many it
// used and whether the start is told.
func (w *walker) message(b []byte) (used, fields, r int) {
	i := 0
	for i < len(b) {
		fields++
		if w.isSkip() {
			k := min(w.need, len(b)-i)
			w.need -= k
			w.n += k
			i += k
		} else {
			w.val = w.val<<8 | int(b[i])
			w.need--
			w.n++
			i++
		}
		if w.need > 0 {
			continue
		}
		if r := w.next(); r != startMaybe {
			return i, fields, r
		}
	}
	return i, fields, startMaybe
}

func (w *walker) isSkip() bool {
	switch w.step {
	case stepFixed, stepSID, stepCS, stepComp:
		return true
	}
	return false
}

// next checks the field just read and moves on to the next one.
func (w *walker) next() int {
	v, end := w.val, w.m+handshakeHeaderLen
	w.val = 0
	fits := func(k int) bool { return w.n+k <= end }
	switch w.step {
	case stepType:
		if v != typeClientHello {
			return startNo
		}
		w.step, w.need = stepLength, 3
	case stepLength:
		if v < minHelloBody || v > 3<<16-1 {
			return startNo
		}
		w.m = v
		w.step, w.need = stepFixed, 34
	case stepFixed:
		w.step, w.need = stepSIDLen, 1
	case stepSIDLen:
		if !fits(v + 2) {
			return startNo
		}
		w.step, w.need = stepSID, v
	case stepSID:
		w.step, w.need = stepCSLen, 2
	case stepCSLen:
		// No parity check: OpenSSL's client_hello_cb reads the name
		// before it checks that.
		if !fits(v + 1) {
			return startNo
		}
		w.step, w.need = stepCS, v
	case stepCS:
		w.step, w.need = stepCompLen, 1
	case stepCompLen:
		// An empty list too: crypto/tls calls GetConfigForClient with
		// the name before it checks compression.
		if !fits(v) {
			return startNo
		}
		w.step, w.need = stepComp, v
	case stepComp:
		switch {
		case w.n == end:
			return startYes // no extensions: a hello, with no name
		case !fits(2):
			return startNo
		}
		w.step, w.need = stepExtLen, 2
	case stepExtLen:
		if w.n+v != end {
			return startNo
		}
		return startYes
	}
	if w.need == 0 {
		return w.next() // an empty field (a session id of none)
	}
	return startMaybe
}
