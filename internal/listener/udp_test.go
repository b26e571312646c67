package listener

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// TestUDPOriginalDst: a datagram comes with its destination, and an answer
// from a DialUDPFrom socket bound there reaches the client, whose next
// datagram then arrives on that socket, not on the listener. On loopback
// without TPROXY the destination is the listener's own address.
func TestUDPOriginalDst(t *testing.T) {
	ln, err := ListenUDP(context.Background(), netip.MustParseAddrPort("127.0.0.1:0"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	laddr := ln.LocalAddr().(*net.UDPAddr).AddrPort()
	client, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(laddr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}

	ms := []ipv4.Message{{Buffers: [][]byte{make([]byte, 100)}, OOB: make([]byte, OOBSize)}}
	ln.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := ipv4.NewPacketConn(ln).ReadBatch(ms, 0); err != nil || n != 1 {
		t.Fatalf("ReadBatch = %d, %v", n, err)
	}
	dst, ok := OriginalDstUDP(ms[0].OOB[:ms[0].NN])
	if !ok || dst != laddr {
		t.Fatalf("OriginalDstUDP = %v, %v; want %v", dst, ok, laddr)
	}
	src := ms[0].Addr.(*net.UDPAddr).AddrPort()

	flow, err := DialUDPFrom(dst, netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), false)
	if err != nil {
		t.Fatal(err)
	}
	defer flow.Close()
	if _, err := flow.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := client.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "answer" || from != laddr {
		t.Fatalf("client read %q from %v, %v; want \"answer\" from %v", buf[:n], from, err, laddr)
	}
	if _, err := client.Write([]byte("second")); err != nil {
		t.Fatal(err)
	}
	flow.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := flow.Read(buf); err != nil || string(buf[:n]) != "second" {
		t.Fatalf("flow socket read %q, %v; want \"second\"", buf[:n], err)
	}
}

func TestOriginalDstUDPGarbage(t *testing.T) {
	for _, oob := range [][]byte{nil, {1, 2, 3}, make([]byte, OOBSize)} {
		if dst, ok := OriginalDstUDP(oob); ok {
			t.Errorf("OriginalDstUDP(%x) = %v, true", oob, dst)
		}
	}
}
