package e2e

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// greet completes a TLS handshake over c and reads the Go TLS server's
// greeting to the end.
func greet(c net.Conn, cfg *tls.Config) (tls.ConnectionState, string, error) {
	c.SetDeadline(time.Now().Add(20 * time.Second))
	tc := tls.Client(c, cfg)
	defer tc.Close()
	if err := tc.Handshake(); err != nil {
		return tls.ConnectionState{}, "", fmt.Errorf("handshake: %w", err)
	}
	b, err := io.ReadAll(tc)
	return tc.ConnectionState(), string(b), err
}

// bulkResult is the client's side of the bulk exchange.
type bulkResult struct {
	sentSHA, recvSHA string
	received         int64
}

// bulk runs the client side of tlsServer.bulk: send bulkSize bytes, send
// close_notify and half-close the TCP connection, then read the server's
// bulkSize bytes to the end.
func bulk(c *net.TCPConn, cfg *tls.Config) (bulkResult, error) {
	var r bulkResult
	c.SetDeadline(time.Now().Add(60 * time.Second))
	tc := tls.Client(c, cfg)
	defer tc.Close()
	if err := tc.Handshake(); err != nil {
		return r, fmt.Errorf("handshake: %w", err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != hashProto {
		return r, fmt.Errorf("negotiated ALPN %q, want %q", p, hashProto)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(tc, h), stream(1), bulkSize); err != nil {
		return r, fmt.Errorf("send: %w", err)
	}
	r.sentSHA = hex.EncodeToString(h.Sum(nil))
	if err := tc.CloseWrite(); err != nil {
		return r, fmt.Errorf("close_notify: %w", err)
	}
	if err := c.CloseWrite(); err != nil {
		return r, fmt.Errorf("tcp half-close: %w", err)
	}
	h.Reset()
	n, err := io.Copy(h, tc)
	r.received, r.recvSHA = n, hex.EncodeToString(h.Sum(nil))
	if err != nil {
		return r, fmt.Errorf("receive after %d bytes: %w", n, err)
	}
	return r, nil
}

// tinyRecordConn re-frames the client's first flight: every handshake record
// written is split into TLS records of one byte each, and every record goes
// out in its own write (TCP_NODELAY is on, so in its own segment as far as
// the kernel allows). Later writes pass through.
type tinyRecordConn struct {
	net.Conn
	once sync.Once
}

func (c *tinyRecordConn) Write(b []byte) (int, error) {
	first := false
	c.once.Do(func() { first = true })
	if !first {
		return c.Conn.Write(b)
	}
	for rest := b; len(rest) > 0; {
		if len(rest) < 5 {
			return 0, errors.New("tinyRecordConn: partial record header")
		}
		n := int(rest[3])<<8 | int(rest[4])
		if len(rest) < 5+n {
			return 0, errors.New("tinyRecordConn: partial record")
		}
		for _, p := range rest[5 : 5+n] {
			if _, err := c.Conn.Write([]byte{rest[0], rest[1], rest[2], 0, 1, p}); err != nil {
				return 0, err
			}
		}
		rest = rest[5+n:]
	}
	return len(b), nil
}

// clientHello returns the first flight a crypto/tls client with cfg writes:
// its ClientHello record(s).
func clientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	client, server := net.Pipe()
	defer client.Close()
	go tls.Client(client, cfg).Handshake()
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(server, hdr); err != nil {
		t.Fatalf("capture ClientHello: %v", err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(server, body); err != nil {
		t.Fatalf("capture ClientHello: %v", err)
	}
	server.Close()
	return append(hdr, body...)
}

// readOutcome reads from c until it ends and names how it ended: "reset",
// "eof" or "timeout" (nothing within the deadline), with what arrived.
func readOutcome(c net.Conn, within time.Duration) (string, []byte) {
	c.SetReadDeadline(time.Now().Add(within))
	b, err := io.ReadAll(c)
	var ne net.Error
	switch {
	case err == nil:
		return "eof", b
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout", b
	case isReset(err):
		return "reset", b
	}
	return "error: " + err.Error(), b
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }
