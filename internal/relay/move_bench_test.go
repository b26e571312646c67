//go:build linux

package relay

import (
	"net"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// tcpFD returns a connected pair of loopback TCP sockets as raw,
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
		rc, _ := c.(*net.TCPConn).SyscallConn()
		var fd int
		rc.Control(func(f uintptr) { fd, _ = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) })
		unix.SetNonblock(fd, true)
		tb.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	return dup(ca), dup(cb)
}

// BenchmarkSmallMove prices moving one small message (a ClientHello's or
// an API call's size) from one socket to another: through a pooled pipe
// with two splices, or with a read into a buffer and a write. Each op
// also pays the same send into the source and read at the far end.
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
					if _, err := writeNB(w, msg); err != nil {
						b.Fatal(err)
					}
					moved := 0
					for moved < size {
						switch mode {
						case "splice":
							p, _ := getPipe()
							n, err := spliceNB(src, p.w, pipeSize)
							if err == unix.EAGAIN {
								putPipe(p)
								continue
							}
							if err != nil {
								b.Fatal(err)
							}
							if _, err := spliceNB(p.r, dst, n); err != nil {
								b.Fatal(err)
							}
							putPipe(p)
							moved += n
						case "copy":
							n, err := unix.Read(src, buf)
							if err == unix.EAGAIN {
								continue
							}
							if err != nil {
								b.Fatal(err)
							}
							if _, err := writeNB(dst, buf[:n]); err != nil {
								b.Fatal(err)
							}
							moved += n
						}
					}
					for got := 0; got < size; {
						n, err := unix.Read(r, sink)
						if err == unix.EAGAIN {
							continue
						}
						if err != nil {
							b.Fatal(err)
						}
						got += n
					}
				}
			})
		}
	}
}
