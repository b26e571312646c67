package testnet

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Serve accepts on ln until the test ends, when ln is closed. Each
// connection is handled in a goroutine of its own and closed when handle
// returns. The test servers of several packages (echo, sink, faulty
// upstreams) differ only in handle.
func Serve(tb testing.TB, ln net.Listener, handle func(net.Conn)) {
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// Listen opens a TCP listener on 127.0.0.1 on a free port.
func Listen(tb testing.TB) *net.TCPListener {
	tb.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	return ln
}

// Buffer is a bytes.Buffer that goroutines may write and read at once, as
// a gateway's access log is written while a test reads it.
type Buffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	writing atomic.Int32
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.writing.Add(1)
	defer b.writing.Add(-1)
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Stall makes writes wait until the returned release is called, as a log
// collector that stops reading does.
func (b *Buffer) Stall() (release func()) {
	b.mu.Lock()
	return b.mu.Unlock
}

// Writing reports how many writes are in progress (waiting, when stalled).
func (b *Buffer) Writing() int { return int(b.writing.Load()) }

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
