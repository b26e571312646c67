package peek

// LaterRequest follows the client's bytes of a connection whose first
// request was in another protocol's version and had no Host (Result's
// OtherRequest: RTSP's, SIP's), for a later line that an HTTP server
// reading the connection would act on. Netty's decoder serves such a
// first request as HTTP and keeps the connection alive, so the next
// request it reads is routed on a Host that egressd never decided. Found
// is any line that is
//
//   - a header line named Host, in any case, with or without
//     whitespace (or any byte Netty skips) before its name or its colon;
//   - a request line (a token, a target, at least one more word) whose
//     last word starts "HTTP/" in any case, or is another "word/D.D"
//     while the method is HTTP's own or the target is HTTP's (origin-form
//     "/x", http:// or https://), as peekOther refuses a first line;
//   - a line whose target is http:// or https://, whatever follows it,
//     which nginx serves (as HTTP/0.9 if no version ends it, and before
//     1.21.1 with other words or control bytes behind) from the virtual
//     host it names;
//
// behind any bytes Netty skips before a request line (see isJunk). The
// RTSP and SIP messages that such a connection carries are none of
// these: their targets are "*" or their own schemes, their methods their
// own, their heads without Host, and their bodies (SDP) lines of
// "x=value". It reads every byte and keeps none: a line of any length is
// followed in constant memory.
type LaterRequest struct {
	st laterState
	// method holds the line's first word, up to len(method) bytes (n in
	// all); host counts the bytes of "host" it matched from the line's
	// first byte, -1 once it cannot.
	method [8]byte
	n      int
	host   int
	// target is what the target's start says (targetOther until it
	// proves HTTP's); scheme follows "http://" or "https://" in it.
	target targetKind
	scheme int
	https  bool
	// words counts the words after the target; last is the version shape
	// of the latest one, ver of the one being read.
	words int
	last  versionShape
	ver   versionShape
}

type laterState uint8

const (
	laterStart  laterState = iota // a line's first byte
	laterSkip                     // bytes Netty skips before a request line
	laterMethod                   // the method (or a header's name)
	laterHostSp                   // "host" and spaces: a colon makes it a Host line
	laterSep1                     // separators after the method
	laterTarget                   // the target
	laterSepN                     // separators after the target or a later word
	laterWord                     // a word after the target
	laterRest                     // nothing more to find on this line
	laterFound                    // found: everything after is refused anyway
)

type targetKind uint8

const (
	targetOther  targetKind = iota // "*", another scheme, or not yet known
	targetOrigin                   // "/x"
	targetHTTP                     // http:// or https://
)

// versionShape follows a word as an HTTP-version and as another
// protocol's ("word/D.D"), a byte at a time.
type versionShape struct {
	http  int  // bytes of "HTTP/" matched; -1 once it cannot be
	long  bool // more than "HTTP/" alone
	other uint8
}

// other's states: a name, "/", major digits, ".", minor digits.
const (
	otherName0 uint8 = iota
	otherName
	otherMajor0
	otherMajor
	otherMinor0
	otherMinor
	otherNot
)

// Feed reads b, the client's next bytes, and reports whether the bytes so
// far hold such a line (once found, always).
func (l *LaterRequest) Feed(b []byte) (found bool) {
	for _, c := range b {
		if l.st == laterFound {
			return true
		}
		if c == '\n' {
			if l.lineEnds() {
				l.st = laterFound
				return true
			}
			l.st = laterStart
			continue
		}
		l.step(c)
	}
	return l.st == laterFound
}

// step reads c, a byte that does not end the line.
func (l *LaterRequest) step(c byte) {
	switch l.st {
	case laterStart, laterSkip:
		if isJunk(c) {
			l.st = laterSkip
			return
		}
		if !isTchar(c) {
			l.st = laterRest
			return
		}
		// A Host line may start behind whitespace too: Netty skips any
		// (VT, FF, CR, 0x1c-0x1f) before a header's name, unless it is
		// a continuation, which a refusal errs on the safe side of.
		l.host = 0
		l.st, l.n = laterMethod, 0
		l.target, l.scheme, l.https, l.words = targetOther, 0, false, 0
		l.method0(c)
	case laterMethod:
		switch {
		case isTchar(c):
			l.method0(c)
		case l.host == len("host") && isSep(c):
			l.st = laterHostSp
		case l.host == len("host") && c == ':':
			l.st = laterFound
		case isSep(c):
			l.st = laterSep1
		default:
			l.st = laterRest
		}
	case laterHostSp:
		switch {
		case c == ':':
			l.st = laterFound
		case isSep(c):
		default:
			l.st = laterTarget // "host x": a method and a target after all
			l.targetByte(c, true)
		}
	case laterSep1:
		if !isSep(c) {
			l.st = laterTarget
			l.targetByte(c, true)
		}
	case laterTarget:
		if isSep(c) {
			l.st = laterSepN
			return
		}
		l.targetByte(c, false)
	case laterSepN:
		if !isSep(c) {
			l.st, l.ver = laterWord, versionShape{}
			l.ver.feed(c)
		}
	case laterWord:
		if isSep(c) {
			l.st, l.last = laterSepN, l.ver
			l.words++
			return
		}
		l.ver.feed(c)
	}
}

// method0 takes c, a token byte, into the method and the Host match.
func (l *LaterRequest) method0(c byte) {
	if l.n < len(l.method) {
		l.method[l.n] = c
	}
	l.n++
	if l.host >= 0 && l.host < len("host") && c|0x20 == "host"[l.host] {
		l.host++
	} else {
		l.host = -1
	}
}

// targetByte follows the target's bytes for an origin-form or an
// http(s):// start.
func (l *LaterRequest) targetByte(c byte, first bool) {
	if first {
		switch {
		case c == '/':
			l.target = targetOrigin
		case c|0x20 == 'h':
			l.scheme = 1
		default:
			l.scheme = -1
		}
		return
	}
	if l.scheme <= 0 {
		return
	}
	const http, s = "http", "://"
	switch {
	case l.scheme < len(http):
		if c|0x20 != http[l.scheme] {
			l.scheme = -1
			return
		}
	case l.scheme == len(http) && !l.https && c|0x20 == 's':
		l.https = true
		return
	default:
		if c != s[l.scheme-len(http)] {
			l.scheme = -1
			return
		}
		if l.scheme-len(http) == len(s)-1 {
			l.target, l.scheme = targetHTTP, -1
			return
		}
	}
	l.scheme++
}

// lineEnds reports whether the line just ended is one to refuse.
func (l *LaterRequest) lineEnds() bool {
	switch l.st {
	case laterWord:
		l.last = l.ver
		l.words++
	case laterTarget:
		return l.target == targetHTTP // HTTP/0.9
	case laterSepN:
	default:
		return false
	}
	if l.target == targetHTTP || l.words == 0 {
		return l.target == targetHTTP // whatever follows: nginx before 1.21.1 serves HTTP/0.9 so
	}
	switch {
	case l.last.http == len("HTTP/") && l.last.long:
		return true
	case l.last.other != otherMinor:
		return false
	}
	return l.target != targetOther || l.n <= len(l.method) && httpMethods[string(l.method[:l.n])]
}

// feed reads c, the word's next byte.
func (v *versionShape) feed(c byte) {
	switch {
	case v.http < 0:
	case v.http == len("HTTP/"):
		v.long = true
	case v.http < len("http") && c|0x20 == "http"[v.http], v.http == len("http") && c == '/':
		v.http++
	default:
		v.http = -1
	}
	switch v.other {
	case otherName0, otherName:
		switch {
		case c != '/':
			v.other = otherName
		case v.other == otherName:
			v.other = otherMajor0
		default:
			v.other = otherNot // no name before the slash
		}
	case otherMajor0, otherMajor:
		switch {
		case isDigit(c):
			v.other = otherMajor
		case c == '.' && v.other == otherMajor:
			v.other = otherMinor0
		default:
			v.other = otherNot
		}
	case otherMinor0, otherMinor:
		if isDigit(c) {
			v.other = otherMinor
		} else {
			v.other = otherNot
		}
	}
}
