//go:build linux

package relay

import (
	"net"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// tcpFDPair returns a connected pair of loopback TCP sockets as raw,
// non-blocking fds (duplicates; the net.Conns are closed).
func tcpFDPair(tb testing.TB) (a, b int) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	ca, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	cb, err := ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	dup := func(c net.Conn) int {
		defer c.Close()
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			tb.Fatal(err)
		}
		fd, derr := -1, error(nil)
		if err := rc.Control(func(f uintptr) { fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
			tb.Fatalf("dup: %v %v", err, derr)
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	return dup(ca), dup(cb)
}

// BenchmarkSmallMove prices moving one small message (a ClientHello's or
// an API call's size) from one socket to another: through a pooled pipe
// with two splices, or with a read into a buffer and a write. Each op
// also pays the same send into the source and read at the far end. The
// two cost about the same per move; what makes the relay copy small
// messages (copyIn) is the call a copy saves: a read that returns less
// than the buffer has emptied the socket, where a splice needs a third
// call to hear EAGAIN.
func BenchmarkSmallMove(b *testing.B) {
	for _, size := range []int{64, 1500, 16 << 10} {
		msg := make([]byte, size)
		for _, mode := range []string{"splice", "copy"} {
			b.Run(mode+"/"+strconv.Itoa(size)+"B", func(b *testing.B) {
				w, src := tcpFDPair(b)
				dst, r := tcpFDPair(b)
				buf := make([]byte, 16<<10)
				sink := make([]byte, 64<<10)
				b.SetBytes(int64(size))
				for b.Loop() {
					if n, err := writeNB(w, msg); err != nil || n != size {
						b.Fatalf("send %d of %d: %v", n, size, err)
					}
					for moved := 0; moved < size; {
						n, err := moveOnce(mode, src, dst, buf)
						if err == unix.EAGAIN {
							continue // not arrived yet
						}
						if err != nil || n == 0 {
							b.Fatalf("%s moved %d: %v", mode, n, err)
						}
						moved += n
					}
					for got := 0; got < size; {
						n, err := unix.Read(r, sink)
						if err == unix.EAGAIN {
							continue
						}
						if err != nil || n == 0 {
							b.Fatalf("read at the far end: %d, %v", n, err)
						}
						got += n
					}
				}
			})
		}
	}
}

// moveOnce moves what src holds to dst, whole: a short write would leave
// bytes behind (and, for splice, a pipe that is not empty for the pool).
func moveOnce(mode string, src, dst int, buf []byte) (int, error) {
	var n int
	if mode == "splice" {
		p, err := getPipe()
		if err != nil {
			return 0, err
		}
		defer putPipe(p)
		if n, err = spliceNB(src, p.w, pipeSize); err != nil || n == 0 {
			return n, err
		}
		for out := 0; out < n; {
			m, err := spliceNB(p.r, dst, n-out)
			if err == nil {
				out += m
			} else if err != unix.EAGAIN {
				return 0, err
			}
		}
		return n, nil
	}
	n, err := unix.Read(src, buf)
	if err != nil || n == 0 {
		return n, err
	}
	for out := 0; out < n; {
		m, err := writeNB(dst, buf[out:n])
		if err == nil {
			out += m
		} else if err != unix.EAGAIN {
			return 0, err
		}
	}
	return n, nil
}
