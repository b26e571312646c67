package httpconnect

import (
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
)

// hopByHop are the headers that describe one connection, not the message
// (RFC 9110 §7.6.1), plus the Proxy-* credentials meant for egressd alone
// and the obsolete Proxy-Connection that some clients still send.
var hopByHop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// RemoveHopByHop deletes from h the hop-by-hop headers and every header
// that a Connection header names. Transfer-Encoding is re-applied by
// net/http from the message's own framing when it is written on.
func RemoveHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopByHop {
		h.Del(name)
	}
}

// Response returns a complete response from egressd itself: status, a
// one-line text body, Connection: close (egressd closes after any answer of
// its own) and extra header lines ("Name: value").
func Response(code int, body string, extra ...string) []byte {
	var b strings.Builder
	b.WriteString("HTTP/1.1 ")
	b.WriteString(strconv.Itoa(code))
	b.WriteByte(' ')
	b.WriteString(http.StatusText(code))
	b.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ")
	b.WriteString(strconv.Itoa(len(body)))
	b.WriteString("\r\nConnection: close\r\n")
	for _, h := range extra {
		b.WriteString(h)
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	b.WriteString(body)
	return []byte(b.String())
}

// Established is the answer to an allowed CONNECT.
var Established = []byte("HTTP/1.1 200 Connection established\r\n\r\n")

// ProxyAuthRequired is the 407 answer asking for Basic credentials.
func ProxyAuthRequired() []byte {
	return Response(http.StatusProxyAuthRequired, "egressd: proxy authentication required\n",
		`Proxy-Authenticate: Basic realm="egressd"`)
}
