// Package socks5 is the server side of SOCKS version 5 (RFC 1928) with
// username/password authentication (RFC 1929): it reads what a client
// sends — the method greeting, the credentials, the request naming the
// destination — and writes the server's answers.
//
// The readers take an io.Reader (a *bufio.Reader over the connection in the
// gateway) and return plain values; they do no policy and no network I/O of
// their own, so they can be fuzzed, and the gateway decides what each
// request gets. Every length on the wire is one byte, so no read here is
// larger than 255 bytes.
package socks5

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Version is the first byte of every SOCKS5 greeting and request.
const Version = 5

// Authentication methods (RFC 1928 §3).
const (
	MethodNoAuth       byte = 0x00
	MethodUserPass     byte = 0x02
	MethodNoAcceptable byte = 0xFF
)

// Commands (RFC 1928 §4).
const (
	CmdConnect      byte = 0x01
	CmdBind         byte = 0x02
	CmdUDPAssociate byte = 0x03
)

// Address types (RFC 1928 §5).
const (
	atypIPv4   byte = 0x01
	atypDomain byte = 0x03
	atypIPv6   byte = 0x04
)

// Reply codes (RFC 1928 §6).
const (
	ReplySucceeded           byte = 0x00
	ReplyGeneralFailure      byte = 0x01
	ReplyNotAllowed          byte = 0x02 // connection not allowed by ruleset
	ReplyNetworkUnreachable  byte = 0x03
	ReplyHostUnreachable     byte = 0x04
	ReplyConnectionRefused   byte = 0x05
	ReplyTTLExpired          byte = 0x06
	ReplyCommandNotSupported byte = 0x07
	ReplyAddressNotSupported byte = 0x08
)

// Errors of the readers. Anything else they return is the reader's error
// (io.ErrUnexpectedEOF for a message cut short, a deadline, a reset).
var (
	ErrVersion     = errors.New("socks5: not version 5")
	ErrNoMethods   = errors.New("socks5: greeting lists no methods")
	ErrAuthVersion = errors.New("socks5: username/password subnegotiation is not version 1")
	ErrReserved    = errors.New("socks5: reserved byte is not zero")
	ErrAddrType    = errors.New("socks5: unknown address type")
	ErrEmptyDomain = errors.New("socks5: empty domain name")
	ErrZeroPort    = errors.New("socks5: port 0")
)

// ReadGreeting reads the client's version/method selection message
// (RFC 1928 §3) and returns the methods it offers.
func ReadGreeting(r io.Reader) ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, eof(err)
	}
	if hdr[0] != Version {
		return nil, ErrVersion
	}
	if hdr[1] == 0 {
		return nil, ErrNoMethods
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return nil, eof(err)
	}
	return methods, nil
}

// WriteMethod answers the greeting with the chosen method, or
// MethodNoAcceptable (after which the client must close).
func WriteMethod(w io.Writer, method byte) error {
	_, err := w.Write([]byte{Version, method})
	return err
}

// ReadUserPass reads a username/password request (RFC 1929 §2).
func ReadUserPass(r io.Reader) (user, password string, err error) {
	var ver [1]byte
	if _, err := io.ReadFull(r, ver[:]); err != nil {
		return "", "", eof(err)
	}
	if ver[0] != 1 {
		return "", "", ErrAuthVersion
	}
	if user, err = readString(r); err != nil {
		return "", "", err
	}
	if password, err = readString(r); err != nil {
		return "", "", err
	}
	return user, password, nil
}

// WriteAuthStatus answers a username/password request: 0 is success, any
// other status a failure after which the server closes (RFC 1929 §2).
func WriteAuthStatus(w io.Writer, ok bool) error {
	status := byte(1)
	if ok {
		status = 0
	}
	_, err := w.Write([]byte{1, status})
	return err
}

// Request is a client's request (RFC 1928 §4). Exactly one of Domain and
// Addr is set. Domain is as the client sent it, up to 255 arbitrary bytes:
// the caller must normalise it (fqdn.ParseHost) before any use.
type Request struct {
	Cmd    byte
	Domain string
	Addr   netip.Addr
	Port   uint16
}

// Host returns the request's destination host: the domain, or the
// address as text.
func (q Request) Host() string {
	if q.Domain != "" {
		return q.Domain
	}
	return q.Addr.String()
}

// ReadRequest reads a request. Its command is not checked: the caller
// answers an unsupported one with ReplyCommandNotSupported.
func ReadRequest(r io.Reader) (Request, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Request{}, eof(err)
	}
	switch {
	case hdr[0] != Version:
		return Request{}, ErrVersion
	case hdr[2] != 0:
		return Request{}, ErrReserved
	}
	q := Request{Cmd: hdr[1]}
	switch hdr[3] {
	case atypIPv4:
		var a [4]byte
		if _, err := io.ReadFull(r, a[:]); err != nil {
			return Request{}, eof(err)
		}
		q.Addr = netip.AddrFrom4(a)
	case atypIPv6:
		var a [16]byte
		if _, err := io.ReadFull(r, a[:]); err != nil {
			return Request{}, eof(err)
		}
		q.Addr = netip.AddrFrom16(a)
	case atypDomain:
		d, err := readString(r)
		if err != nil {
			return Request{}, err
		}
		if d == "" {
			return Request{}, ErrEmptyDomain
		}
		q.Domain = d
	default:
		return Request{}, fmt.Errorf("%w 0x%02x", ErrAddrType, hdr[3])
	}
	var port [2]byte
	if _, err := io.ReadFull(r, port[:]); err != nil {
		return Request{}, eof(err)
	}
	q.Port = binary.BigEndian.Uint16(port[:])
	if q.Port == 0 {
		return Request{}, ErrZeroPort
	}
	return q, nil
}

// AppendRequest appends q in wire form: the client side of ReadRequest,
// for tests and load generators. A Domain longer than 255 bytes is cut.
func AppendRequest(b []byte, q Request) []byte {
	b = append(b, Version, q.Cmd, 0)
	switch {
	case q.Domain != "":
		d := q.Domain[:min(len(q.Domain), 255)]
		b = append(b, atypDomain, byte(len(d)))
		b = append(b, d...)
	case q.Addr.Is4():
		a := q.Addr.As4()
		b = append(b, atypIPv4)
		b = append(b, a[:]...)
	default:
		a := q.Addr.As16()
		b = append(b, atypIPv6)
		b = append(b, a[:]...)
	}
	return binary.BigEndian.AppendUint16(b, q.Port)
}

// WriteReply sends a reply (RFC 1928 §6). bound is the address egressd
// connected from, for ReplySucceeded; others carry 0.0.0.0:0, which is what
// clients expect of a failure.
func WriteReply(w io.Writer, code byte, bound netip.AddrPort) error {
	b := make([]byte, 0, 22)
	b = append(b, Version, code, 0)
	a := bound.Addr().Unmap()
	switch {
	case a.Is6():
		s := a.As16()
		b = append(b, atypIPv6)
		b = append(b, s[:]...)
	case a.Is4():
		s := a.As4()
		b = append(b, atypIPv4)
		b = append(b, s[:]...)
	default:
		b = append(b, atypIPv4, 0, 0, 0, 0)
	}
	b = binary.BigEndian.AppendUint16(b, bound.Port())
	_, err := w.Write(b)
	return err
}

func readString(r io.Reader) (string, error) {
	var n [1]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return "", eof(err)
	}
	b := make([]byte, n[0])
	if _, err := io.ReadFull(r, b); err != nil {
		return "", eof(err)
	}
	return string(b), nil
}

// eof turns a bare io.EOF inside a message into io.ErrUnexpectedEOF: the
// message was cut short. (io.ReadFull already does so after the first byte.)
func eof(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
