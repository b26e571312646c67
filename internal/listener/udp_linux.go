package listener

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// A UDP datagram that TPROXY delivers keeps its destination: the client's
// server, not the listener. There is no connection to ask, so the kernel
// hands the original destination over with each datagram, in a control
// message (IP_RECVORIGDSTADDR), and an answer must leave from that address
// and port for the client to take it: a socket of its own, bound there with
// IP_TRANSPARENT (DialUDPFrom). IP_PKTINFO would set only the source
// address, not the port, so it is not enough when the listener's port is
// not the server's.

// ListenUDP binds a UDP socket at addr that receives each datagram with its
// original destination (OriginalDstUDP reads it from the control
// messages). With opt.TProxy the socket is IP_TRANSPARENT, as TPROXY
// needs. SO_REUSEADDR lets the sockets of DialUDPFrom bind the same address
// when a client's server is on the listener's own address and port.
func ListenUDP(ctx context.Context, addr netip.AddrPort, opt Options) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: udpControl(opt.TProxy, true)}
	pc, err := lc.ListenPacket(ctx, Network("udp", addr), addr.String())
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// DialUDPFrom returns a UDP socket bound to local, with SO_REUSEADDR (many
// clients' flows to one server share its address) and, with transparent,
// IP_TRANSPARENT (local is then any address, the server the client sent
// to), and connected to remote. Datagrams it sends reach remote from
// local; and since TPROXY looks for a connected transparent socket before
// its listener, the client's further datagrams to local arrive on this
// socket rather than on the listener's.
func DialUDPFrom(local, remote netip.AddrPort, transparent bool) (*net.UDPConn, error) {
	d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(local), Control: udpControl(transparent, false)}
	c, err := d.Dial(Network("udp", remote), remote.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

func udpControl(transparent, origDst bool) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			v6 := network == "udp6"
			set := func(level, opt int, what string) {
				if serr == nil {
					if err := unix.SetsockoptInt(int(fd), level, opt, 1); err != nil {
						serr = fmt.Errorf("set %s: %w", what, err)
					}
				}
			}
			set(unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR")
			switch {
			case transparent && v6:
				set(unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT for tproxy (needs CAP_NET_ADMIN)")
			case transparent:
				set(unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT for tproxy (needs CAP_NET_ADMIN)")
			}
			switch {
			case origDst && v6:
				set(unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, "IPV6_RECVORIGDSTADDR")
			case origDst:
				set(unix.SOL_IP, unix.IP_RECVORIGDSTADDR, "IP_RECVORIGDSTADDR")
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// OOBSize is enough control-message space for one datagram's original
// destination (a sockaddr_in6 in a cmsg).
const OOBSize = 64

// OriginalDstUDP reads a datagram's original destination from its control
// messages, as a socket of ListenUDP receives them. ok is false when there
// is none.
func OriginalDstUDP(oob []byte) (dst netip.AddrPort, ok bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, false
	}
	for _, m := range msgs {
		data := m.Data
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(data) >= unix.SizeofSockaddrInet4:
			port := binary.BigEndian.Uint16(data[2:4])
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(data[4:8])), port), true
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(data) >= unix.SizeofSockaddrInet6:
			port := binary.BigEndian.Uint16(data[2:4])
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(data[8:24])).Unmap(), port), true
		}
	}
	return netip.AddrPort{}, false
}

// SendUDPFrom sends b to remote from local, on a socket made for the one
// datagram (SO_REUSEADDR and, with transparent, IP_TRANSPARENT, as for
// DialUDPFrom). The socket is not connected, so TPROXY delivers none of
// the client's datagrams to it in the meantime.
func SendUDPFrom(local, remote netip.AddrPort, b []byte, transparent bool) error {
	lc := net.ListenConfig{Control: udpControl(transparent, false)}
	pc, err := lc.ListenPacket(context.Background(), Network("udp", local), local.String())
	if err != nil {
		return err
	}
	defer pc.Close()
	_, err = pc.(*net.UDPConn).WriteToUDPAddrPort(b, remote)
	return err
}
