package peek

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"net/textproto"
	"strings"
)

// peekText tells an HTTP/1.x request from an SSH banner and anything else.
// It reads on while the bytes can still become a request line, and not a
// byte longer: an SSH banner or a Redis command is told apart as soon as
// its first line ends. A prefix that is still open at the deadline is a
// started request that timed out (ErrHTTPTimeout), not unknown: a client
// that trickled "GET / HTTP/1.1\r\nHost: deni" must not be decided by its
// address alone.
func peekText(c net.Conn, buf []byte) Result {
	var line lineScan
	for {
		st, start, lf := line.requestLine(buf)
		switch {
		case (st == lineHTTP || st == lineOther) && lf >= maxRequestLine:
			return Result{Protocol: HTTP, Data: buf, Err: ErrHTTPLineTooLong}
		case st == lineHTTP:
			return peekHTTP(c, buf, start, lf)
		case st == lineOther:
			return peekOther(c, buf, start, lf)
		case st == lineBad:
			return Result{Protocol: HTTP, Data: buf, Err: ErrBadHTTP}
		case st == lineNot && bytes.HasPrefix(buf, []byte("SSH-")): // RFC 4253 §4.2
			return Result{Protocol: SSH, Data: buf}
		case st == lineNot && (bytes.HasPrefix(buf[start:], []byte("PROXY ")) || bytes.HasPrefix(buf, proxyV2Sig)):
			return Result{Protocol: Unknown, Data: buf, Err: ErrProxyHeader}
		case st == lineNot:
			return Result{Protocol: Unknown, Data: buf}
		case len(buf) >= maxRequestLine:
			return Result{Protocol: HTTP, Data: buf, Err: ErrHTTPLineTooLong}
		}
		var err error
		if buf, err = readMore(c, buf); err != nil {
			return httpError(buf, err)
		}
	}
}

// peekHTTP reads the rest of a request head whose line is buf[start:lf+1]
// and takes its Host.
func peekHTTP(c net.Conn, buf []byte, start, lf int) Result {
	head := headScan{lf: lf, next: lf + 1}
	for {
		if end := head.end(buf); end >= 0 {
			host, ok := httpHost(buf[start:end])
			r := Result{Protocol: HTTP, Data: buf, Host: host}
			if !ok {
				r.Err = ErrBadHTTP
			}
			return r
		}
		if len(buf) >= maxHTTPHead {
			return Result{Protocol: HTTP, Data: buf, Err: ErrHTTPTooLarge}
		}
		var err error
		if buf, err = readMore(c, buf); err != nil {
			return httpError(buf, err)
		}
	}
}

// proxyV2Sig opens a PROXY protocol v2 header.
var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

func httpError(buf []byte, err error) Result {
	if TimedOut(err) {
		err = ErrHTTPTimeout
	}
	return Result{Protocol: HTTP, Data: buf, Err: err}
}

// lineState is what the bytes read so far say about a request line.
type lineState int

const (
	linePrefix lineState = iota // can still become a request line: read more
	lineHTTP                    // a whole request line
	lineNot                     // cannot become one
	lineBad                     // not HTTP/1.x, but a request some server acts on
	lineOther                   // a whole line that ends in another protocol's version
)

// requestLine says whether buf starts with an HTTP/1.x request line,
//
//	method SP request-target SP HTTP-version CRLF   (RFC 9112 §3)
//
// with any token as the method (RFC 9110 §9.1), read as leniently as the
// servers behind the gateway read it, since what one of them takes for a
// request must be decided on its Host: empty lines before it are skipped
// (RFC 9112 §2.2), a bare LF ends it, runs of SP, HTAB, VT, FF and bare CR
// separate its parts (RFC 9112 §3), and the target is anything up to the
// last separator. The version is any last word that starts with "HTTP/", in
// any case: nginx reads HTTP/1.01 or HTTP/1.10 as HTTP/1.1, and a server
// that refuses a version a lenient one takes costs nothing when the line is
// decided on its Host, where taking it for unknown bytes would let a Host
// go unread. A line with a control byte (nginx before 1.21.1 served those)
// that ends in a version is lineBad, refused. What is left out is what no
// server reads as HTTP/1.x: a method that is not a token, a line whose
// last word is no version (HTTP/0.9 carries no Host), except an HTTP/0.9
// line with an absolute-form target, which is lineBad: nginx still serves
// it, from the virtual host that the target names. A malformed line that
// passes is refused later by httpHost; that errs on the safe side.
//
// start is where the method begins; for lineHTTP and lineOther, lf is the
// index of the line's LF.
//
// buf is the buffer of s's last call with the bytes read since appended,
// and s reads only those, up to the line's LF (see lineScan); the answer
// is what a reading of the whole of buf would say.
func (s *lineScan) requestLine(buf []byte) (st lineState, start, lf int) {
	st, lf = s.scan(buf)
	return st, s.start, lf
}

// lineScan reads a request line (requestLine) from a buffer that grows
// between reads, resuming where the last call stopped. Reading the whole
// buffer again after each read would let a client that sends a byte per
// segment make egressd examine about n²/2 bytes for an n-byte line, 32
// MiB at maxRequestLine; this way each byte is read once until the line
// ends, and the whole line once more then.
type lineScan struct {
	at    linePart // the part of the line read so far
	start int      // where the method begins (past the CRs and LFs so far)
	i     int      // the bytes before i are read, as far as at says
	sep   int      // atRest: the separator after the method
	junk  junkScan // atJunk: the bytes from start on
}

// linePart is the part of a request line lineScan has come to.
type linePart uint8

const (
	atBlank  linePart = iota // the CRs and LFs of empty lines before it
	atMethod                 // the method
	atRest                   // past the method: waiting for the LF
	atJunk                   // bytes a lenient server skips before it (junkScan)
)

// scan reads the bytes of buf from s.i on and says what they make the
// line so far: requestLine's answer but start, which is s.start.
func (s *lineScan) scan(buf []byte) (st lineState, lf int) {
	if s.at == atBlank {
		i := s.i
		for i < len(buf) && (buf[i] == '\r' || buf[i] == '\n') {
			i++
		}
		examined(i - s.i)
		s.i, s.start = i, i
		switch {
		case i == len(buf):
			return linePrefix, -1
		case isJunk(buf[i]):
			s.at = atJunk
		default:
			s.at = atMethod
		}
	}
	if s.at == atJunk {
		return s.junk.line(buf[s.start:]), -1
	}
	if s.at == atMethod {
		i := s.i
		for i < len(buf) && isTchar(buf[i]) {
			i++
		}
		examined(i - s.i)
		s.i = i
		switch {
		case i == len(buf):
			return linePrefix, -1
		case i == s.start || !isSep(buf[i]):
			return lineNot, -1
		}
		s.at, s.sep = atRest, i
	}
	n := bytes.IndexByte(buf[s.i:], '\n')
	if n < 0 {
		// Control bytes do not end the line's chances: nginx before
		// 1.21.1 served requests with them in the target, so what decides
		// is the line's end, once it comes (within maxRequestLine and
		// client_hello, as for any line).
		examined(len(buf) - s.i)
		s.i = len(buf)
		return linePrefix, -1
	}
	examined(n + 1)
	lf = s.i + n
	if st = wholeLine(buf[s.sep:lf]); st != lineHTTP && st != lineOther {
		lf = -1
	}
	return st, lf
}

// wholeLine says what a request line is, given rest, its bytes from the
// separator after its method up to its LF (see requestLine). lineHTTP
// and lineOther say its LF ends it.
func wholeLine(rest []byte) lineState {
	examined(2 * len(rest)) // for control bytes, then for the last word
	ctl := false
	for _, b := range rest {
		if (b < ' ' || b == 0x7f) && !isSep(b) {
			ctl = true
		}
	}
	for len(rest) > 0 && isSep(rest[len(rest)-1]) {
		rest = rest[:len(rest)-1]
	}
	sp := len(rest) - 1 // the last separator; -1 when only separators were
	for sp >= 0 && !isSep(rest[sp]) {
		sp--
	}
	if !isVersion(rest[sp+1:]) {
		if !ctl && isOtherVersion(rest[sp+1:]) {
			return lineOther
		}
		// An HTTP/0.9 line whose target is an absolute URI: nginx serves
		// it from the virtual host it names, and before 1.21.1 whatever
		// follows it on the line (spaces, other words, control bytes).
		target := bytes.TrimLeft(rest, " \t\v\f\r")
		if i := bytes.IndexFunc(target, func(r rune) bool { return r < 0x80 && (isSep(byte(r)) || byte(r) < ' ') }); i >= 0 {
			target = target[:i]
		}
		if isAbsolute(target) {
			return lineBad
		}
		return lineNot
	}
	if ctl {
		return lineBad // a request, to a server that reads control bytes
	}
	for _, b := range rest[:sp] {
		if !isSep(b) {
			return lineHTTP // a target
		}
	}
	return lineNot
}

// isJunk reports whether b is a byte a lenient HTTP server skips before a
// request line: Netty's decoder any ISO control character or whitespace
// (read as ISO-8859-1), Jetty's parser ':' as well, Python's str.split()
// NBSP (0xa0). CR and LF aside.
func isJunk(b byte) bool { return b <= ' ' || b == ':' || 0x7f <= b && b <= 0xa0 }

// junkScan says whether a client's bytes, which begin with junk (see
// isJunk), are a request line behind it: Netty's decoder reads one there,
// on the Host after it, where egressd's peek would call the bytes unknown
// and let them through unread. Such a line is refused (lineBad). A
// request needs only a method of capitals, as every real one is, a space
// and a target that starts as Netty's do ("/", "*", "http://" or
// "https://"); binary bytes take that shape about once in 10^9
// positions, and a text command behind a length ("SET key") does not
// take it, so a binary protocol's message that starts with control bytes
// is told apart at once, never waited on for a line's end. Bytes that are
// all junk so far are waited on only while they are whitespace: a binary
// client's first message may be all control bytes (a SOCKS5 greeting is
// 05 01 00) and waits for its answer; JunkRequest reads on behind those.
//
// It reads bytes that grow between reads: it feeds its JunkRequest only
// the bytes that came since the last call, so that bytes a client
// trickles cost one reading each (see lineScan).
type junkScan struct {
	j     JunkRequest
	n     int  // the bytes fed so far
	found bool // Feed found a request line
	black bool // a byte fed is not whitespace
}

// line reads b, the b of the last call with bytes appended.
func (s *junkScan) line(b []byte) lineState {
	fresh := b[s.n:]
	s.n = len(b)
	examined(2 * len(fresh)) // by Feed and by whitespace
	s.found = s.j.Feed(fresh) || s.found
	s.black = s.black || !whitespace(fresh)
	switch {
	case s.found:
		return lineBad
	case s.j.st == junkDone:
		return lineNot
	case s.j.st == junkSkip && s.black:
		return lineNot // all junk so far, not all whitespace
	}
	return linePrefix
}

// whitespace reports whether b is separators and line ends only.
func whitespace(b []byte) bool {
	for _, c := range b {
		if c != '\n' && !isSep(c) {
			return false
		}
	}
	return true
}

// JunkRequest follows a connection's client bytes from the first, fed in
// the order they come, for what junkScan (which reads a buffer with it)
// finds at their start: a request
// line behind bytes Netty skips. peekText finds one in a connection's
// first bytes; a client whose first bytes are control bytes alone is
// unknown at once (see junkScan), and this reads on behind them, so a
// request line in a later segment is found too. It keeps at most a
// method, a space and a scheme's worth of bytes, and once the bytes
// cannot become such a line it does nothing more.
type JunkRequest struct {
	st     junkState
	caps   int // capitals of the method so far
	scheme int // bytes of "http" matched in the target so far
	https  bool
}

type junkState uint8

const (
	junkStart  junkState = iota // nothing read yet
	junkSkip                    // junk so far
	junkMethod                  // capitals after the junk
	junkSeps                    // separators after the method
	junkScheme                  // a target that may become http:// or https://
	junkDone                    // found, or cannot be
)

// Stop ends the reading: the server has answered, and a server that
// skips such bytes before a request says nothing until the request (a
// SOCKS5 exchange, all control bytes, is answered; what the client sends
// after the answer is its tunnel's own).
func (j *JunkRequest) Stop() { j.st = junkDone }

// Feed reads b, the client's next bytes, and reports whether the bytes so
// far begin a request line behind junk. It keeps no bytes: a method or a
// run of separators of any length is followed in constant memory.
func (j *JunkRequest) Feed(b []byte) (found bool) {
	for _, c := range b {
		switch j.st {
		case junkDone:
			return false
		case junkStart:
			j.st = junkSkip
			if !isJunk(c) {
				j.st = junkDone
			}
		case junkSkip:
			if !isJunk(c) {
				j.st = junkMethod
				j.caps = 0
				if !j.method(c) {
					j.st = junkDone
				}
			}
		case junkMethod:
			switch {
			case j.method(c):
			case j.caps >= 3 && isSep(c):
				j.st = junkSeps
			default:
				j.st = junkDone
			}
		case junkSeps:
			switch {
			case isSep(c):
			case c == '/' || c == '*':
				j.st = junkDone
				return true
			case c|0x20 == 'h':
				j.st, j.scheme = junkScheme, 1
			default:
				j.st = junkDone
			}
		case junkScheme:
			if j.target(c) {
				j.st = junkDone
				return true
			}
		}
	}
	return false
}

// method counts c into the method if it is a capital.
func (j *JunkRequest) method(c byte) bool {
	if 'A' <= c && c <= 'Z' {
		j.caps++
		return true
	}
	return false
}

// target follows c, the target's next byte, against "http://" and
// "https://" in any case; it reports a whole scheme, or ends the reading
// (junkDone) when the target cannot become one.
func (j *JunkRequest) target(c byte) bool {
	const http, s = "http", "://"
	switch {
	case j.scheme < len(http):
		if c|0x20 != http[j.scheme] {
			j.st = junkDone
			return false
		}
	case j.scheme == len(http) && !j.https && c|0x20 == 's':
		j.https = true
		return false
	default:
		k := j.scheme - len(http)
		if c != s[k] {
			j.st = junkDone
			return false
		}
		if k == len(s)-1 {
			return true
		}
	}
	j.scheme++
	return false
}

// ReadsAsRequest reports whether b, a TLS connection's first bytes, also
// read as an HTTP request line to Netty's decoder: record and handshake
// headers of bytes it skips (all 0x20 or under: lengths chosen so), then
// a request line in the hello's random. A server that speaks HTTP on the
// port would act on the Host such a line names, not on the SNI that
// egressd decides. An ordinary hello's random takes that shape about once
// in 10^8, and only when its lengths are such bytes too.
func ReadsAsRequest(b []byte) bool {
	var j JunkRequest
	return len(b) > 0 && isJunk(b[0]) && j.Feed(b)
}

// isOtherVersion reports whether v, a request line's last word, is a
// version Netty takes (any "word/D.D": RTSP/1.0, SIP/2.0, FOO/1.1).
func isOtherVersion(v []byte) bool {
	name, num, ok := bytes.Cut(v, []byte("/"))
	if !ok || len(name) == 0 {
		return false
	}
	major, minor, ok := bytes.Cut(num, []byte("."))
	return ok && len(major) > 0 && len(minor) > 0 &&
		bytes.Trim(major, "0123456789") == nil && bytes.Trim(minor, "0123456789") == nil
}

// peekOther reads the head of a request whose line (buf[start:lf+1])
// ends in another protocol's version. Netty takes it for HTTP, keeps the
// connection alive after it, and routes it on its Host. It is refused
// (ErrBadHTTP) when its method is HTTP's (GET / FOO/1.1 is a request
// meant for an HTTP server, whose next request on the connection would
// go unread), or when its head has a Host line: ICAP's too (RFC 3507
// requires one), since the client writes the version, and an "ICAP/1.0"
// would let any request through. RTSP and SIP, whose methods are their
// own (OPTIONS aside, which they share) and whose heads carry no Host,
// stay unknown.
func peekOther(c net.Conn, buf []byte, start, lf int) Result {
	method, target := buf[start:lf], []byte(nil)
	if i := bytes.IndexFunc(method, func(r rune) bool { return r < 0x80 && isSep(byte(r)) }); i >= 0 {
		method, target = method[:i], bytes.TrimLeft(method[i:], " \t\v\f\r")
	}
	if httpMethods[string(method)] || !otherTarget(target) {
		return Result{Protocol: HTTP, Data: buf, Err: ErrBadHTTP}
	}
	head := headScan{lf: lf, next: lf + 1}
	for {
		if end := head.end(buf); end >= 0 {
			var later LaterRequest
			if hasHostLine(buf[lf+1:end]) || later.Feed(buf) {
				// A Host, or a request behind the head already.
				return Result{Protocol: HTTP, Data: buf, Err: ErrBadHTTP}
			}
			return Result{Protocol: Unknown, Data: buf, OtherRequest: true}
		}
		if len(buf) >= maxHTTPHead {
			return Result{Protocol: HTTP, Data: buf, Err: ErrHTTPTooLarge}
		}
		var err error
		if buf, err = readMore(c, buf); err != nil {
			return httpError(buf, err)
		}
	}
}

// otherTarget reports whether target (a request line's words after its
// method) starts as RTSP's and SIP's targets do: "*", or a URI whose
// scheme is not HTTP's (rtsp://, sip:). An origin-form target ("/x"), an
// http:// or https:// one, or any other word is a request for an HTTP
// server in another protocol's version, which Netty serves, routes on,
// and keeps the connection alive after.
func otherTarget(target []byte) bool {
	if len(target) > 0 && target[0] == '*' {
		return true
	}
	scheme, _, ok := bytes.Cut(target, []byte(":"))
	return ok && isScheme(scheme) && !bytes.EqualFold(scheme, []byte("http")) && !bytes.EqualFold(scheme, []byte("https"))
}

// httpMethods are the methods of HTTP's own (RFC 9110 §9, PATCH of RFC
// 5789) but OPTIONS, which RTSP, SIP and ICAP have too.
var httpMethods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true,
	"DELETE": true, "CONNECT": true, "TRACE": true, "PATCH": true}

// hasHostLine reports whether a head's header lines hold one named Host,
// in any case, with or without space before its colon.
func hasHostLine(hdr []byte) bool {
	for line := range bytes.Lines(hdr) {
		name, _, ok := bytes.Cut(line, []byte(":"))
		// Trimmed of every byte up to space: Netty skips Java's
		// whitespace before a name (0x1c-0x1f too), TrimSpace does not.
		if ok && bytes.EqualFold(bytes.TrimFunc(name, func(r rune) bool { return r <= ' ' }), []byte("host")) {
			return true
		}
	}
	return false
}

// isTchar reports whether b may appear in a token (RFC 9110 §5.6.2).
func isTchar(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0
}

// isSep reports whether b is whitespace a lenient server splits a request
// line on: SP, HTAB, VT, FF, or CR (RFC 9112 §3), and what Python's
// str.split() splits a line read as ISO-8859-1 on too (http.server,
// wsgiref, Django's runserver): 0x1c-0x1f, NEL (0x85) and NBSP (0xa0).
// Netty before 4.1.46 split on Java's whitespace, 0x1c-0x1f included. A
// line split so is one net/http cannot read, and its head is refused.
func isSep(b byte) bool {
	return b == ' ' || b == '\t' || b == '\v' || b == '\f' || b == '\r' || 0x1c <= b && b <= 0x1f || b == 0x85 || b == 0xa0
}

// isVersion reports whether v may be taken for an HTTP-version (RFC 9112
// §2.3, HTTP/DIGIT.DIGIT) by some server: "HTTP/" in any case, then
// anything (see requestLine).
func isVersion(v []byte) bool {
	return len(v) > len("HTTP/") && bytes.EqualFold(v[:5], []byte("HTTP/"))
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }

// isAbsolute reports whether target is one word that starts like an
// absolute URI: scheme "://" (RFC 3986 §3).
func isAbsolute(target []byte) bool {
	scheme, _, ok := bytes.Cut(target, []byte("://"))
	return ok && isScheme(scheme) && !bytes.ContainsFunc(target, func(r rune) bool { return r < 0x80 && isSep(byte(r)) })
}

// isScheme reports whether b is a URI scheme (RFC 3986 §3.1).
func isScheme(b []byte) bool {
	for i, c := range b {
		alpha := 'a' <= c|0x20 && c|0x20 <= 'z'
		if !alpha && (i == 0 || !isDigit(c) && c != '+' && c != '-' && c != '.') {
			return false
		}
	}
	return len(b) > 0
}

// headScan finds the end of a request head in a buffer that grows
// between reads, resuming where the last search stopped. Searching from
// the request line again after each read would let a client that sends a
// byte per segment make egressd examine about n²/2 bytes for an n-byte
// head, 128 MiB at maxHTTPHead; this way each byte is searched once.
type headScan struct {
	lf   int // the last LF found; the request line's at first
	next int // where the search for the LF after lf resumes
}

// end returns the end of the request head in buf, past the empty line
// that closes it (CRLF, or a bare LF as net/http also reads), or -1. buf
// is the buffer of the last call with the bytes read since appended. Only
// the LF found last may need bytes after it to decide (CR, or nothing
// yet, after it); an earlier one was decided when the next was found.
func (h *headScan) end(buf []byte) int {
	for {
		rest := buf[h.lf+1:]
		examined(min(2, len(rest)))
		switch {
		case len(rest) >= 1 && rest[0] == '\n':
			return h.lf + 2
		case len(rest) >= 2 && rest[0] == '\r' && rest[1] == '\n':
			return h.lf + 3
		}
		j := bytes.IndexByte(buf[h.next:], '\n')
		if j < 0 {
			examined(len(buf) - h.next)
			h.next = len(buf)
			return -1
		}
		examined(j + 1)
		h.lf = h.next + j
		h.next = h.lf + 1
	}
}

// scanned, set by tests only, is told how many bytes each step of the
// scans for a request line and a head's end examined, so that a test can
// hold a peek to work linear in the bytes without timing it.
var scanned func(n int)

func examined(n int) {
	if scanned != nil {
		scanned(n)
	}
}

// httpHost parses a complete request head and returns the destination host
// it names, without port: the authority of an absolute-form target, else
// the Host header. ok is false for a head net/http cannot parse, and for
// one that names two hosts, since servers differ on which one they serve:
// two Host lines (RFC 9112 §3.2 makes it a 400), or an absolute-form target
// whose host is not the Host header's (RFC 9112 §3.2.2 says to ignore the
// header; not every server does).
func httpHost(head []byte) (host string, ok bool) {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	if err != nil {
		return "", false // two Host lines included
	}
	if req.URL.Host != "" {
		// ReadRequest has dropped the Host header; read it again.
		tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(head)))
		tp.ReadLine()
		hdr, _ := tp.ReadMIMEHeader()
		if h := hdr.Get("Host"); h != "" && !strings.EqualFold(hostOnly(h), hostOnly(req.Host)) {
			return "", false
		}
	}
	host = hostOnly(req.Host)
	if !isASCII(host) {
		// egressd would decide the name's UTS-46 form (BÜCHER.test as
		// xn--bcher-kva.test), while the request goes on with Go's
		// Punycode of the raw bytes, another name: a server would read a
		// Host nobody decided. Real clients send Punycode.
		return "", false
	}
	return host, true // "" for HTTP/1.0 without Host: no name
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// hostOnly returns the host of a Host value or authority, without port or
// IPv6 brackets.
func hostOnly(h string) string {
	if hh, _, err := net.SplitHostPort(h); err == nil {
		h = hh
	}
	return strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
}
