// Package refuse tells a client no in its own protocol, so that a denied
// user sees why instead of a hang: a TLS fatal alert, an HTTP 403 naming the
// rule, or a TCP reset for protocols with no way to say it.
package refuse

import (
	"net"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// TLS alert descriptions (RFC 8446 §6).
const (
	AlertAccessDenied  = 49
	AlertInternalError = 80
	// AlertProtocolVersion (70) answers a client that speaks TLS where
	// egressd speaks plain text (an https:// proxy URL for an explicit
	// listener): nothing this listener can negotiate.
	AlertProtocolVersion = 70
)

// lingerWait bounds how long a refused connection is kept open after the
// answer, reading what the client still sends, so the kernel does not turn
// our close into a reset that could destroy the answer in flight.
const lingerWait = 2 * time.Second

// TLSAlert sends a fatal alert in one record of the client's record version
// and closes the connection. version 0 means TLS 1.2's 0x0303; versions above
// it are capped there, as TLS 1.3 records carry 0x0303 (RFC 8446 §5.1).
func TLSAlert(c net.Conn, version uint16, description byte) error {
	rec := TLSAlertRecord(version, description)
	return answer(c, rec[:])
}

// TLSAlertRecord is the record TLSAlert sends, for a caller that writes it
// itself (the relay loop, refusing a connection it relays).
func TLSAlertRecord(version uint16, description byte) [7]byte {
	if version < 0x0300 || version > 0x0303 {
		version = 0x0303
	}
	return [7]byte{21, byte(version >> 8), byte(version), 0, 2, 2 /* fatal */, description}
}

// HTTPForbidden answers 403 with a one-line body naming the rule (or the
// default) and closes.
func HTTPForbidden(c net.Conn, rule string) error {
	body := "egressd: denied by the default policy\n"
	if rule != "" {
		body = "egressd: denied by rule " + strconv.Quote(rule) + "\n"
	}
	msg := "HTTP/1.1 403 Forbidden\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n" +
		"Connection: close\r\n\r\n" + body
	return answer(c, []byte(msg))
}

// Reset closes the connection with a TCP RST (SO_LINGER 0), for protocols
// that have no refusal of their own.
func Reset(c net.Conn) error {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	return c.Close()
}

// ResetFD is Reset for a socket held as a file descriptor (a relay
// loop's, before it is a net.Conn).
func ResetFD(fd int) {
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	unix.Close(fd)
}

// answer writes msg, half-closes, and drains the client until it closes or
// lingerWait passes, then closes.
func answer(c net.Conn, msg []byte) error {
	c.SetWriteDeadline(time.Now().Add(lingerWait))
	_, err := c.Write(msg)
	if err != nil {
		c.Close()
		return err
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(lingerWait))
	var buf [512]byte
	for {
		if _, err := c.Read(buf[:]); err != nil {
			break
		}
	}
	return c.Close()
}

// Answer writes msg (a complete refusal in the client's protocol: an HTTP
// response, a SOCKS5 reply), half-closes, waits for the client to close
// for up to two seconds, and closes.
func Answer(c net.Conn, msg []byte) error { return answer(c, msg) }
