package listener

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func control(opt Options) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if opt.DeferAccept {
				if serr = setDeferAccept(int(fd), true); serr != nil {
					return
				}
			}
			if !opt.TProxy {
				return
			}
			if network == "tcp6" {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
			}
			if serr != nil {
				serr = fmt.Errorf("set IP_TRANSPARENT for tproxy (needs CAP_NET_ADMIN): %w", serr)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// deferSeconds is TCP_DEFER_ACCEPT's value: the kernel turns it into one
// retransmission of the SYN-ACK, after which a silent client's connection
// is accepted anyway (and then meets the first_bytes timeout).
const deferSeconds = 1

func setDeferAccept(fd int, on bool) error {
	v := 0
	if on {
		v = deferSeconds
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, v); err != nil {
		return fmt.Errorf("set TCP_DEFER_ACCEPT: %w", err)
	}
	return nil
}

// SetDeferAccept turns TCP_DEFER_ACCEPT on or off on a listening socket
// (see Options.DeferAccept); a reload that changes a listener's mode uses
// it. Connections already in the accept queue stay there; handshakes
// still waiting for data follow the new setting from their next SYN-ACK
// retransmission.
func SetDeferAccept(ln *net.TCPListener, on bool) error {
	return withFD(ln, func(fd int) error { return setDeferAccept(fd, on) })
}

// DeferAccept reports whether TCP_DEFER_ACCEPT is on for a listening
// socket.
func DeferAccept(ln *net.TCPListener) (on bool, err error) {
	err = withFD(ln, func(fd int) error {
		v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT)
		on = v > 0
		return err
	})
	return on, err
}

// withFD runs f on ln's socket.
func withFD(ln *net.TCPListener, f func(fd int) error) error {
	raw, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := raw.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// OriginalDst returns where the client meant to connect. redirected is true
// when conntrack reported a NAT'd original destination (REDIRECT/DNAT);
// otherwise the connection's local address is returned, which is the
// original destination under TPROXY and the listener's own address for a
// client that connected to egressd directly.
func OriginalDst(c *net.TCPConn) (dst netip.AddrPort, redirected bool, err error) {
	local := AddrPort(c.LocalAddr())
	raw, err := c.SyscallConn()
	if err != nil {
		return local, false, err
	}
	cerr := raw.Control(func(fd uintptr) { dst, redirected = originalDst(int(fd), local) })
	if cerr != nil {
		return local, false, cerr
	}
	return dst, redirected, nil
}

// OriginalDstFD is OriginalDst for a socket held as a file descriptor (a
// relay loop's, see relay.Listener); it asks for the local address too.
func OriginalDstFD(fd int) (dst netip.AddrPort, redirected bool, err error) {
	local, err := LocalAddrFD(fd)
	if err != nil {
		return netip.AddrPort{}, false, err
	}
	dst, redirected = originalDst(fd, local)
	return dst, redirected, nil
}

// LocalAddrFD is a socket's own address (getsockname), an IPv4-mapped one
// unmapped, as AddrPort gives a net.Conn's.
func LocalAddrFD(fd int) (netip.AddrPort, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, err
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port)), nil
	}
	return netip.AddrPort{}, unix.EAFNOSUPPORT
}

// originalDst is OriginalDst's answer for fd, whose local address is local.
func originalDst(fd int, local netip.AddrPort) (dst netip.AddrPort, redirected bool) {
	var got netip.AddrPort
	var err error
	if local.Addr().Is4() {
		got, err = origDst4(fd)
	} else {
		got, err = origDst6(fd)
	}
	if err != nil || !got.IsValid() {
		// ENOENT: no NAT entry. That is TPROXY or a direct connection.
		return local, false
	}
	return got, got != local
}

func origDst4(fd int) (netip.AddrPort, error) {
	var sa [unix.SizeofSockaddrInet4]byte
	if err := getsockopt(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST, sa[:]); err != nil {
		return netip.AddrPort{}, err
	}
	port := binary.BigEndian.Uint16(sa[2:4])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(sa[4:8])), port), nil
}

func origDst6(fd int) (netip.AddrPort, error) {
	var sa [unix.SizeofSockaddrInet6]byte
	// IP6T_SO_ORIGINAL_DST has the same number as SO_ORIGINAL_DST (80).
	if err := getsockopt(fd, unix.SOL_IPV6, unix.SO_ORIGINAL_DST, sa[:]); err != nil {
		return netip.AddrPort{}, err
	}
	port := binary.BigEndian.Uint16(sa[2:4])
	addr := netip.AddrFrom16([16]byte(sa[8:24])).Unmap()
	return netip.AddrPortFrom(addr, port), nil
}

// getsockopt reads a socket option into buf; x/sys/unix has no typed getter
// for a sockaddr-shaped option.
func getsockopt(fd, level, opt int, buf []byte) error {
	l := uint32(len(buf))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// SetDeferAcceptFD is SetDeferAccept for a listening socket held as a
// file descriptor (a relay loop's, see relay.Listener).
func SetDeferAcceptFD(fd int, on bool) error { return setDeferAccept(fd, on) }

// DeferAcceptFD is DeferAccept for a listening socket held as a file
// descriptor.
func DeferAcceptFD(fd int) (on bool, err error) {
	v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT)
	return v > 0, err
}
