package peek

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"strings"
)

// httpHost parses a complete request head and returns the destination host
// it names, without port: the authority of an absolute-form target, else
// the Host header. ok is false for a head net/http cannot parse.
func httpHost(head []byte) (host string, ok bool) {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	if err != nil {
		return "", false
	}
	h := req.Host // net/http prefers the absolute URI's host over the header
	if h == "" {
		return "", true // HTTP/1.0 without Host: no name
	}
	if hh, _, err := net.SplitHostPort(h); err == nil {
		h = hh
	}
	return strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), true
}
