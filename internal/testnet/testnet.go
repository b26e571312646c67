// Package testnet gives tests real sockets: the two ends of a loopback TCP
// connection, so that packages test against the kernel's behaviour (resets,
// half-closes, deadlines) rather than a mock.
package testnet

import (
	"net"
	"testing"
)

// Pair returns the client and server ends of a fresh TCP connection on
// 127.0.0.1. Both are closed when the test ends.
func Pair(tb testing.TB) (client, server *net.TCPConn) {
	tb.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan *net.TCPConn, 1)
	go func() {
		c, _ := ln.AcceptTCP()
		ch <- c
	}()
	client, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		tb.Fatal(err)
	}
	server = <-ch
	if server == nil {
		tb.Fatal("accept failed")
	}
	tb.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}
