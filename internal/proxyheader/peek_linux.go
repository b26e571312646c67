package proxyheader

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// peek copies what the socket holds into b without consuming it, once it
// holds more than prev bytes (or b's worth, or the client closed). A header
// split over TCP segments is thus peeked again when the next segment
// arrives, not in a busy loop: returning false parks the goroutine in the
// runtime's poller, under the read deadline, until the socket has news.
func peek(raw syscall.RawConn, b []byte, prev int) (int, error) {
	var n int
	var serr error
	err := raw.Read(func(fd uintptr) bool {
		n, _, serr = unix.Recvfrom(int(fd), b, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case serr == unix.EAGAIN || serr == unix.EINTR:
			return false
		case serr == nil && n > 0 && n <= prev && n < len(b):
			return false // nothing new since the last look
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	return n, serr
}
