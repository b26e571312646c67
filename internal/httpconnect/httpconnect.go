// Package httpconnect is the server side of an HTTP/1.x forward proxy:
// reading a CONNECT request (RFC 9110 §9.3.6) or an absolute-URI request
// (RFC 9112 §3.2.2) under size limits, handling hop-by-hop headers
// (RFC 9110 §7.6.1), and the proxy's own answers (403, 407, 502, 504...).
//
// ReadHead and Parse are separate so that parsing is pure (bytes in,
// Request out) and fuzzed, while reading enforces the limits before a byte
// is parsed. The package decides nothing: the gateway takes the Request's
// target through the policy.
package httpconnect

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/egressd/egressd/internal/fqdn"
)

// Limits bound a request head. A client that exceeds them gets 414 (request
// line) or 431 (head) and the connection is closed.
type Limits struct {
	RequestLine int // bytes, CRLF included
	Head        int // bytes, request line and headers, final CRLF included
}

// DefaultLimits are those of common servers (nginx's
// large_client_header_buffers is 8 KiB per line); a proxy request needs
// far less.
var DefaultLimits = Limits{RequestLine: 8 << 10, Head: 32 << 10}

// Errors; StatusFor maps them to the status the client gets.
var (
	ErrRequestLineTooLong = errors.New("request line too long")
	ErrHeadTooLarge       = errors.New("request head too large")
	ErrMalformed          = errors.New("malformed request")
	ErrNotProxyRequest    = errors.New("not a proxy request: want CONNECT host:port or an absolute http:// URI")
	ErrScheme             = errors.New("only http:// URIs are proxied; use CONNECT for https")
	ErrVersion            = errors.New("unsupported HTTP version")
	ErrTarget             = errors.New("invalid target host")
)

// StatusFor is the status code a client gets for an error of ReadHead or
// Parse.
func StatusFor(err error) int {
	switch {
	case errors.Is(err, ErrRequestLineTooLong):
		return http.StatusRequestURITooLong
	case errors.Is(err, ErrHeadTooLarge):
		return http.StatusRequestHeaderFieldsTooLarge
	case errors.Is(err, ErrVersion):
		return http.StatusHTTPVersionNotSupported
	}
	return http.StatusBadRequest
}

// ReadHead returns the request head at the front of br (through the empty
// line) without consuming it, reading more as needed. br's buffer must
// hold lim.Head bytes (bufio.NewReaderSize). A line may end in CRLF or, as
// RFC 9112 §2.2 lets a recipient accept, a bare LF.
func ReadHead(br *bufio.Reader, lim Limits) ([]byte, error) {
	s := headScan{first: -1, lf: -1}
	for {
		buf, _ := br.Peek(br.Buffered())
		if end := s.end(buf); end > 0 {
			if s.first >= lim.RequestLine {
				return nil, ErrRequestLineTooLong
			}
			if end > lim.Head {
				return nil, ErrHeadTooLarge
			}
			return buf[:end], nil
		}
		if s.first < 0 && len(buf) >= lim.RequestLine {
			return nil, ErrRequestLineTooLong
		}
		if len(buf) >= lim.Head {
			return nil, ErrHeadTooLarge
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return nil, err
		}
	}
}

// headScan finds the end of a head in a buffer that grows between reads
// (by appending: what was read stays as it was), resuming where the last
// search stopped. Searching the whole buffer again after each read would
// let a client that sends a byte per segment make egressd examine about
// n²/2 bytes for an n-byte head, half a gigabyte for 32 KiB; this way each
// byte is searched once.
type headScan struct {
	first int // the first LF, which ends the request line; -1 until found
	lf    int // the last LF found, -1 until found
	next  int // where the search for the LF after lf resumes
}

// end returns the length of the head in buf (through its blank line: an
// LF followed by LF or CRLF), or 0 if buf does not hold a whole head. Only
// the LF found last may need the bytes after it to decide (CR, or
// nothing yet, after it); an earlier one was decided once the next was
// found.
func (s *headScan) end(buf []byte) int {
	for {
		if i := s.lf; i >= 0 {
			examined(min(2, len(buf)-i-1))
			switch {
			case i+1 < len(buf) && buf[i+1] == '\n':
				return i + 2
			case i+2 < len(buf) && buf[i+1] == '\r' && buf[i+2] == '\n':
				return i + 3
			}
		}
		j := bytes.IndexByte(buf[s.next:], '\n')
		if j < 0 {
			examined(len(buf) - s.next)
			s.next = len(buf)
			return 0
		}
		examined(j + 1)
		s.lf = s.next + j
		s.next = s.lf + 1
		if s.first < 0 {
			s.first = s.lf
		}
	}
}

// scanned, set by tests only, is told how many bytes each step of
// headScan examined, so that a test can hold reading a head to work
// linear in its length without timing it.
var scanned func(n int)

func examined(n int) {
	if scanned != nil {
		scanned(n)
	}
}

// Request is a parsed proxy request head.
type Request struct {
	Method string
	// Connect is true for CONNECT host:port; otherwise the request was an
	// absolute http:// URI, to be forwarded.
	Connect bool
	// Authority is the target as written ("example.com:443", "[2001:db8::1]:80").
	Authority string
	// Target: exactly one of Name (normalised, fqdn.ParseHost) and Addr.
	Name string
	Addr netip.Addr
	Port uint16
	// Proto is "HTTP/1.1" or "HTTP/1.0".
	Proto string
	// ProxyAuthorization is the Proxy-Authorization header's value, "" if
	// absent.
	ProxyAuthorization string
	// Close is true when the client asked to close after this request
	// (Connection: close, or HTTP/1.0 without keep-alive).
	Close bool
}

// Parse parses a request head as ReadHead returned it. Anything a strict
// HTTP/1.1 server would refuse is refused here (obs-fold, whitespace before
// a colon, control characters), since an ambiguity between egressd and the
// server behind it is how requests are smuggled.
func Parse(head []byte) (Request, error) { return parse(head, 0) }

// ParseOrigin parses a request head sent to an origin server rather than to
// a proxy, as a client intercepted by a transparent listener, routed by an
// sni listener, or speaking inside a CONNECT or SOCKS5 tunnel sends it:
// origin-form ("/path") or asterisk-form ("*") with the target in the Host
// header, or absolute-form ("http://host/path"), whose authority must then
// agree with Host. A Host without a port gets port. A request without Host
// (HTTP/1.0) has no target: Name and Addr are both zero. CONNECT is
// refused: it means nothing to an origin server.
func ParseOrigin(head []byte, port uint16) (Request, error) { return parse(head, port) }

// parse is Parse with origin == 0, ParseOrigin otherwise.
func parse(head []byte, origin uint16) (Request, error) {
	var q Request
	lines := strings.Split(strings.TrimRight(string(head), "\r\n"), "\n")
	reqLine := strings.TrimSuffix(lines[0], "\r")
	method, rest, ok1 := strings.Cut(reqLine, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !isToken(method) || target == "" || strings.ContainsAny(target, " \t") || hasCtl(target) {
		return q, ErrMalformed
	}
	switch proto {
	case "HTTP/1.1", "HTTP/1.0":
	default:
		if strings.HasPrefix(proto, "HTTP/") {
			return q, ErrVersion
		}
		return q, ErrMalformed
	}
	q.Method, q.Proto = method, proto
	var connHeader []string
	hosts, hostValue := 0, ""
	for _, l := range lines[1:] {
		l = strings.TrimSuffix(l, "\r")
		if l == "" {
			return q, ErrMalformed // a blank line before the end
		}
		name, value, ok := strings.Cut(l, ":")
		if !ok || !isToken(name) {
			return q, ErrMalformed // also obs-fold (a line starting with SP/HTAB)
		}
		value = strings.Trim(value, " \t")
		if hasCtl(value) {
			return q, ErrMalformed
		}
		switch http.CanonicalHeaderKey(name) {
		case "Proxy-Authorization":
			if q.ProxyAuthorization != "" {
				return q, ErrMalformed
			}
			q.ProxyAuthorization = value
		case "Connection":
			connHeader = append(connHeader, value)
		case "Host":
			hosts++
			hostValue = value
		}
	}
	if hosts > 1 {
		return q, ErrMalformed // RFC 9112 §3.2
	}
	q.Close = proto == "HTTP/1.0"
	for _, v := range connHeader {
		for _, opt := range strings.Split(v, ",") {
			switch strings.ToLower(strings.TrimSpace(opt)) {
			case "close":
				q.Close = true
			case "keep-alive":
				if proto == "HTTP/1.0" {
					q.Close = false
				}
			}
		}
	}
	if origin != 0 {
		return originTarget(q, target, hostValue, origin)
	}
	if method == http.MethodConnect {
		q.Connect = true
		q.Authority = target
	} else {
		rest, ok := cutPrefixFold(target, "http://")
		switch {
		case ok:
		case hasPrefixFold(target, "https://"):
			return q, ErrScheme
		default:
			return q, ErrNotProxyRequest
		}
		q.Authority, _, _ = strings.Cut(rest, "/")
		if i := strings.IndexAny(q.Authority, "?#"); i >= 0 {
			q.Authority = q.Authority[:i]
		}
		if strings.Contains(q.Authority, "@") {
			return q, ErrTarget // userinfo is deprecated (RFC 9110 §4.2.4) and hides the host
		}
		if err := asciiHost(q.Authority); err != nil {
			return q, err
		}
		if !hasPort(q.Authority) {
			q.Authority += ":80"
		}
	}
	host, port, err := splitHostPort(q.Authority)
	if err != nil {
		return q, err
	}
	q.Port = port
	if q.Name, q.Addr, err = fqdn.ParseHost(host); err != nil {
		return q, fmt.Errorf("%w: %w", ErrTarget, err)
	}
	return q, nil
}

// originTarget fills q's target for ParseOrigin from the request target
// and the Host header.
// asciiHost refuses the host of a request egressd forwards when it holds
// non-ASCII bytes: decided as its UTS-46 form (BÜCHER.test as
// xn--bcher-kva.test), it would be written on as Go's Punycode of the raw
// bytes, another name, which a server would read. Real clients send
// Punycode. (A CONNECT's name is egressd's to dial, never sent on.)
func asciiHost(h string) error {
	for i := 0; i < len(h); i++ {
		if h[i] >= 0x80 {
			return fmt.Errorf("%w: a host of non-ASCII bytes; send its Punycode form", ErrTarget)
		}
	}
	return nil
}

func originTarget(q Request, target, host string, port uint16) (Request, error) {
	switch {
	case q.Method == http.MethodConnect:
		return q, ErrMalformed
	case target == "*" || strings.HasPrefix(target, "/"):
	default:
		rest, ok := cutPrefixFold(target, "http://")
		if !ok {
			return q, ErrMalformed
		}
		auth, _, _ := strings.Cut(rest, "/")
		if i := strings.IndexAny(auth, "?#"); i >= 0 {
			auth = auth[:i]
		}
		// RFC 9112 §3.2.2: the URI's authority wins over Host. Two
		// authorities that differ are two claims: one for egressd, one
		// for the server.
		if !strings.EqualFold(auth, host) {
			return q, fmt.Errorf("%w: request target %q and Host %q differ", ErrTarget, auth, host)
		}
	}
	if host == "" {
		return q, nil
	}
	if strings.Contains(host, "@") {
		return q, ErrTarget
	}
	if err := asciiHost(host); err != nil {
		return q, err
	}
	q.Authority = host
	if !hasPort(host) {
		q.Authority = net.JoinHostPort(strings.Trim(host, "[]"), strconv.Itoa(int(port)))
		if strings.HasPrefix(host, "[") != strings.Contains(host, ":") {
			return q, fmt.Errorf("%w: an IPv6 address must be in brackets", ErrTarget)
		}
	}
	h, p, err := splitHostPort(q.Authority)
	if err != nil {
		return q, err
	}
	q.Port = p
	if q.Name, q.Addr, err = fqdn.ParseHost(h); err != nil {
		return q, fmt.Errorf("%w: %w", ErrTarget, err)
	}
	return q, nil
}

// splitHostPort splits "host:port" and "[v6]:port"; the port is required,
// decimal, 1-65535.
func splitHostPort(a string) (string, uint16, error) {
	i := strings.LastIndexByte(a, ':')
	if i <= 0 {
		return "", 0, fmt.Errorf("%w: want host:port", ErrTarget)
	}
	host, ps := a[:i], a[i+1:]
	if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
		return "", 0, fmt.Errorf("%w: an IPv6 address must be in brackets", ErrTarget)
	}
	p, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || p == 0 || ps[0] == '+' {
		return "", 0, fmt.Errorf("%w: invalid port", ErrTarget)
	}
	return host, uint16(p), nil
}

// hasPort reports whether an authority ends in a port ("h:80", "[::1]:80"),
// not an IPv6 literal's last group.
func hasPort(a string) bool {
	i := strings.LastIndexByte(a, ':')
	return i >= 0 && i > strings.LastIndexByte(a, ']')
}

// isToken reports whether s is a non-empty RFC 9110 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// hasCtl reports control characters other than HTAB.
func hasCtl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return true
		}
	}
	return false
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if hasPrefixFold(s, prefix) {
		return s[len(prefix):], true
	}
	return s, false
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// BasicCredentials reads an RFC 7617 Basic credential from a
// Proxy-Authorization value.
func BasicCredentials(v string) (user, password string, ok bool) {
	scheme, cred, found := strings.Cut(v, " ")
	if !found || !strings.EqualFold(scheme, "Basic") {
		return "", "", false
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", "", false
	}
	return strings.Cut(string(b), ":")
}
