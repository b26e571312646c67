package gateway

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/relay"
	"github.com/egressd/egressd/internal/testnet"
)

// faultServer is an upstream that reads the client's hello and then
// misbehaves as told.
func faultServer(t *testing.T, behave func(c *net.TCPConn)) uint16 {
	t.Helper()
	ln := testnet.Listen(t)
	testnet.Serve(t, ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if readRecord(c) != nil {
			return
		}
		behave(c.(*net.TCPConn))
	})
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

func readRecord(r io.Reader) error {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	_, err := io.CopyN(io.Discard, r, int64(binary.BigEndian.Uint16(hdr[3:])))
	return err
}

// blackhole returns a port whose SYNs go unanswered: a listener that never
// accepts and whose accept queue is already full.
func blackhole(t *testing.T) uint16 {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	port := sa.(*syscall.SockaddrInet4).Port
	// Fill the queue; Linux then drops further SYNs, so connects time out.
	for i := 0; i < 4; i++ {
		d := net.Dialer{Timeout: 200 * time.Millisecond}
		if c, err := d.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	d := net.Dialer{Timeout: 300 * time.Millisecond}
	if c, err := d.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
		c.Close()
		t.Skip("this kernel answers SYNs on a full accept queue; no blackhole to test with")
	}
	return uint16(port)
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// TestFaults drives each way an upstream or a client can fail mid-way and
// checks both sides end, the log names the reason, and nothing leaks.
func TestFaults(t *testing.T) {
	const timeouts = "{first_bytes: 200ms, client_hello: 2s, connect: 500ms, idle: 500ms}"
	baseG, baseFD := runtime.NumGoroutine(), openFDs(t)
	hello := craftedHello("good.test")

	type clientView struct {
		data string // what the client read before the end
		err  error  // how its read ended
	}
	// talk sends the hello (and then after, if any), reads until the end,
	// and resets instead of closing when reset is set.
	talk := func(t *testing.T, w *world, after string, reset bool) (clientView, net.Conn) {
		c, err := net.Dial("tcp", w.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write(hello)
		if after != "" {
			time.Sleep(20 * time.Millisecond)
			c.Write([]byte(after))
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var v clientView
		buf := make([]byte, 64)
		for {
			n, err := c.Read(buf)
			v.data += string(buf[:n])
			if reset && len(v.data) > 0 {
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
				return v, c
			}
			if err != nil {
				v.err = err
				break
			}
		}
		c.Close()
		return v, c
	}

	serverSaw := make(chan string, 8)
	cases := []struct {
		name     string
		port     func(t *testing.T) uint16
		after    string // the client sends this after the hello
		reset    bool   // the client resets once it has read something
		wantData string
		wantErr  func(error) bool
		reason   string
		server   string // what the server must report, if anything
	}{
		{
			name:     "upstream refuses",
			port:     closedPort,
			wantData: "\x15\x03\x01\x00\x02\x02\x50", // internal_error, in the client hello's record version
			wantErr:  isEOForReset, reason: "connection refused",
		},
		{
			name: "upstream blackholes", port: blackhole,
			wantData: "\x15\x03\x01\x00\x02\x02\x50",
			wantErr:  isEOForReset, reason: "timeout",
		},
		{
			name: "upstream resets mid-stream",
			port: func(t *testing.T) uint16 {
				return faultServer(t, func(c *net.TCPConn) {
					c.Write([]byte("partial"))
					time.Sleep(50 * time.Millisecond)
					c.SetLinger(0)
				})
			},
			wantData: "partial", wantErr: isReset, reason: "upstream reset the connection",
		},
		{
			name: "upstream stalls",
			port: func(t *testing.T) uint16 {
				return faultServer(t, func(c *net.TCPConn) {
					_, err := c.Read(make([]byte, 1))
					serverSaw <- errString(err)
				})
			},
			wantErr: isEOForReset, reason: "idle timeout", server: "EOF",
		},
		{
			name: "upstream closes half-way",
			port: func(t *testing.T) uint16 {
				return faultServer(t, func(c *net.TCPConn) {
					c.Write([]byte("half"))
					c.CloseWrite()
					b, err := io.ReadAll(c)
					serverSaw <- string(b) + "|" + errString(err)
				})
			},
			after:    "more",
			wantData: "half", wantErr: isEOF, server: "more|",
		},
		{
			name: "client resets mid-stream",
			port: func(t *testing.T) uint16 {
				return faultServer(t, func(c *net.TCPConn) {
					c.Write([]byte("data"))
					_, err := io.ReadAll(c)
					serverSaw <- errString(err)
				})
			},
			reset: true, wantData: "data", reason: "client reset the connection", server: "connection reset by peer",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorldTimeouts(t, baseRecords, basePolicy, tc.port(t), timeouts)
			v, c := talk(t, w, tc.after, tc.reset)
			if v.data != tc.wantData {
				t.Errorf("client read %q, want %q", v.data, tc.wantData)
			}
			if tc.wantErr != nil && !tc.wantErr(v.err) {
				t.Errorf("client's read ended with %v", v.err)
			}
			if tc.server != "" {
				select {
				case got := <-serverSaw:
					if !strings.Contains(got, tc.server) {
						t.Errorf("server saw %q, want %q", got, tc.server)
					}
				case <-time.After(10 * time.Second):
					t.Errorf("server never saw the end of the connection")
				}
			}
			e := w.waitLog(bySrcPort(c))
			w.want(e, map[string]any{"action": "allow", "rule": "good"})
			if r, _ := e["reason"].(string); !strings.Contains(r, tc.reason) {
				t.Errorf("log reason %q, want it to contain %q", r, tc.reason)
			}
			// The line is written as the connection ends; untracking follows.
			for deadline := time.Now().Add(5 * time.Second); w.liveConns() != 0; {
				if time.Now().After(deadline) {
					t.Errorf("%d connections still tracked 5 s after the log line", w.liveConns())
					break
				}
				time.Sleep(time.Millisecond)
			}
		})
	}

	// Every world is torn down by now (subtest cleanups ran): what the
	// gateways started must be gone.
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The relay keeps a bounded pool of idle splice pipes (two fds each)
		// for the next connection; those are not leaks.
		g, fd := runtime.NumGoroutine(), openFDs(t)-2*relay.IdlePipes()
		if g <= baseG && fd <= baseFD {
			t.Logf("goroutines %d -> %d, fds %d -> %d", baseG, g, baseFD, fd)
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("leak: goroutines %d -> %d, fds %d -> %d\n%s", baseG, g, baseFD, fd, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func isEOF(err error) bool   { return errors.Is(err, io.EOF) }
func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }
func isEOForReset(err error) bool {
	return isEOF(err) || isReset(err)
}
