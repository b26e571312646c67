// Package proxyheader reads the PROXY protocol header (v1 text or v2
// binary, as HAProxy specifies it) that an L4 load balancer puts before a
// client's bytes, so that egressd's rules and log see the real client.
//
// It reads exactly the header and not one byte more, and leaves the
// connection a plain *net.TCPConn: the gateway relays with splice(2), which
// a wrapping net.Conn (as go-proxyproto's own Conn is) would turn into
// copies through user space. The header's length is learned by peeking
// (MSG_PEEK), the header is then read and handed to go-proxyproto's parser.
package proxyheader

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

const (
	// maxV1 is the longest v1 header, CRLF included (spec §2.1).
	maxV1 = 107
	// v2Fixed is v2's signature, version/command, family and length.
	v2Fixed = 16
	// maxV2 bounds the v2 header egressd accepts. The format allows 64 KiB
	// of TLVs; load balancers send addresses and a few short TLVs (AWS
	// NLB's VPC endpoint ID, Azure's link ID), far below this.
	maxV2 = 4096
)

var (
	sigV1 = []byte("PROXY ")
	sigV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

// ErrNoHeader means the connection did not start with a PROXY header.
var ErrNoHeader = errors.New("no PROXY protocol header")

// Len reports how long the header at the start of b is. complete is false
// when b is a prefix of a header that may still be valid: read more.
// An error means b cannot start a header egressd accepts.
func Len(b []byte) (n int, complete bool, err error) {
	switch {
	case hasPrefix(b, sigV2):
		if len(b) < v2Fixed {
			return 0, false, nil
		}
		n = v2Fixed + (int(b[14])<<8 | int(b[15]))
		if n > maxV2 {
			return 0, false, fmt.Errorf("PROXY v2 header of %d bytes; at most %d accepted", n, maxV2)
		}
		return n, len(b) >= n, nil
	case hasPrefix(b, sigV1):
		if i := bytes.Index(b[:min(len(b), maxV1)], []byte("\r\n")); i >= 0 {
			return i + 2, true, nil
		}
		if len(b) >= maxV1 {
			return 0, false, fmt.Errorf("PROXY v1 header longer than %d bytes", maxV1)
		}
		return 0, false, nil
	}
	return 0, false, ErrNoHeader
}

// hasPrefix reports whether b starts with sig, or is a prefix of it.
func hasPrefix(b, sig []byte) bool {
	n := min(len(b), len(sig))
	return len(b) > 0 && bytes.Equal(b[:n], sig[:n])
}

// Parse parses one complete header (as Len delimited it) and returns the
// client's address. ok is false for a header that carries no address: a v2
// LOCAL command (the balancer's own health check) or v1 UNKNOWN; the peer's
// address stands then.
func Parse(hdr []byte) (src netip.AddrPort, ok bool, err error) {
	br := bufio.NewReaderSize(bytes.NewReader(hdr), max(len(hdr), 16))
	h, err := proxyproto.Read(br)
	if err != nil {
		return netip.AddrPort{}, false, fmt.Errorf("invalid PROXY header: %w", err)
	}
	if br.Buffered() != 0 {
		return netip.AddrPort{}, false, errors.New("invalid PROXY header: trailing bytes")
	}
	if h.Command.IsLocal() {
		return netip.AddrPort{}, false, nil
	}
	ta, isTCP := h.SourceAddr.(*net.TCPAddr)
	if !isTCP {
		if h.TransportProtocol == proxyproto.UNSPEC {
			return netip.AddrPort{}, false, nil
		}
		return netip.AddrPort{}, false, fmt.Errorf("PROXY header for transport %#x, not TCP", byte(h.TransportProtocol))
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true, nil
}

// Read consumes the PROXY header at the start of c, which must arrive by
// deadline, and returns the client's address (ok false: use the peer's).
// It leaves c's read deadline set; the next reader sets its own.
func Read(c *net.TCPConn, deadline time.Time) (src netip.AddrPort, ok bool, err error) {
	if err := c.SetReadDeadline(deadline); err != nil {
		return netip.AddrPort{}, false, err
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, false, err
	}
	var buf [maxV1 + 1]byte
	b := buf[:]
	var n, got int
	for {
		var perr error
		got, perr = peek(raw, b, got)
		if perr != nil {
			return netip.AddrPort{}, false, perr
		}
		if got == 0 {
			return netip.AddrPort{}, false, io.ErrUnexpectedEOF
		}
		var complete bool
		n, complete, err = Len(b[:got])
		if err != nil {
			return netip.AddrPort{}, false, err
		}
		if complete {
			break
		}
		if n > len(b) { // a v2 header with TLVs longer than buf
			b = make([]byte, n)
		}
	}
	hdr := b[:n]
	if _, err := io.ReadFull(c, hdr); err != nil {
		return netip.AddrPort{}, false, fmt.Errorf("read PROXY header: %w", err)
	}
	return Parse(hdr)
}
