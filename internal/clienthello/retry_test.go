package clienthello

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testnet"
)

func TestHelloRetryRandom(t *testing.T) {
	if helloRetryRandom != sha256.Sum256([]byte("HelloRetryRequest")) {
		t.Fatal("helloRetryRandom is not SHA-256(\"HelloRetryRequest\") (RFC 8446 §4.1.3)")
	}
}

// exchange is a real crypto/tls handshake's first bytes each way, cut at
// TLS records: the client's first hello, then what each side sent next.
type exchange struct {
	hello1  []byte   // the client's first flight
	server  [][]byte // the server's records, in order, up to the client's next flight
	client2 [][]byte // the client's records after the server's first flight
}

// recordTLS runs a crypto/tls client for sni against a server that offers
// only the groups in serverGroups (P-256 makes Go's default client retry),
// and records the records each way until the client's second flight.
func recordTLS(t *testing.T, sni string, serverGroups []tls.CurveID) exchange {
	t.Helper()
	// Two loopback TCP connections, whose buffers let each side write
	// without waiting for the other; the test forwards between them.
	ca, cb := tcpPair(t) // the client's
	sa, sb := tcpPair(t) // the server's
	for _, c := range []net.Conn{ca, cb, sa, sb} {
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	cert := testnet.Cert(t, "good.test")
	go tls.Server(sa, &tls.Config{Certificates: []tls.Certificate{cert}, CurvePreferences: serverGroups}).Handshake()
	go tls.Client(ca, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()

	var ex exchange
	readRec := func(c net.Conn) []byte {
		var hdr [5]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			t.Fatal(err)
		}
		rec := make([]byte, 5+(int(hdr[3])<<8|int(hdr[4])))
		copy(rec, hdr[:])
		if _, err := io.ReadFull(c, rec[5:]); err != nil {
			t.Fatal(err)
		}
		return rec
	}
	ex.hello1 = readRec(cb)
	sb.Write(ex.hello1)
	// The server's first record: a retry (crypto/tls sends a
	// change_cipher_spec after it), or its ServerHello.
	first := readRec(sb)
	ex.server = append(ex.server, first)
	cb.Write(first)
	if first[5] == 2 && [32]byte(first[11:43]) == helloRetryRandom {
		ccs := readRec(sb)
		ex.server = append(ex.server, ccs)
		cb.Write(ccs)
		for len(ex.client2) == 0 || ex.client2[len(ex.client2)-1][0] != recordTypeHandshake {
			ex.client2 = append(ex.client2, readRec(cb))
		}
	}
	return ex
}

// tcpPair is a connected pair of loopback TCP sockets.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

// flat joins records.
func flat(recs [][]byte) []byte { return bytes.Join(recs, nil) }

// feed gives the client's bytes to r in pieces of size (all at once for
// 0), and returns what r passed on and its last verdict.
func feed(r *Retry, b []byte, size int) ([]byte, Verdict) {
	if size == 0 {
		size = len(b)
	}
	var out []byte
	v := Watching
	for len(b) > 0 {
		n := min(size, len(b))
		var pass []byte
		pass, v = r.Client(b[:n])
		out = append(out, pass...)
		b = b[n:]
		if v == Refuse {
			break
		}
	}
	return out, v
}

func TestRetry(t *testing.T) {
	retry := recordTLS(t, "good.test", []tls.CurveID{tls.CurveP256})
	if len(retry.client2) == 0 {
		t.Fatal("the server did not ask for a second hello")
	}
	plain := recordTLS(t, "good.test", nil)
	evil := recordTLS(t, "evil.test", []tls.CurveID{tls.CurveP256})
	noName := recordTLS(t, "", []tls.CurveID{tls.CurveP256})
	h1 := parsed(t, retry.hello1)

	t.Run("a real retry passes whole, however split", func(t *testing.T) {
		// Pieces of 100 bytes: 19 reads of Go's 1.9 KiB hello; 60 is the
		// most reads MaxHoldReads lets a hello of this size come in.
		for _, size := range []int{0, 60, 100, 1000} {
			r := NewRetry(h1)
			for _, rec := range retry.server {
				if v := r.Server(rec); v != Watching {
					t.Fatalf("server record: %v, want Watching until the second hello", v)
				}
			}
			want := flat(retry.client2)
			got, v := feed(r, want, size)
			if v != Done || !bytes.Equal(got, want) {
				t.Fatalf("pieces of %d: %v, passed %d of %d bytes", size, v, len(got), len(want))
			}
			if pass, v := r.Client([]byte{23, 3, 3, 0, 1, 0}); v != Done || len(pass) != 6 {
				t.Fatalf("after: %v", v)
			}
		}
	})
	t.Run("a server that answers ends the watch", func(t *testing.T) {
		r := NewRetry(parsed(t, plain.hello1))
		for _, size := range []int{1, 3, 5, 6, 40, len(plain.server[0])} {
			r = NewRetry(parsed(t, plain.hello1))
			var v Verdict
			for b := plain.server[0]; len(b) > 0 && v == Watching; b = b[min(size, len(b)):] {
				v = r.Server(b[:min(size, len(b))])
			}
			if v != Done {
				t.Fatalf("pieces of %d: %v", size, v)
			}
		}
		// TLS 1.2's plain-text handshake records then pass.
		if _, v := r.Client([]byte{22, 3, 3, 0, 1, 11}); v != Done {
			t.Fatalf("client handshake record after the answer: %v", v)
		}
	})
	t.Run("an alert or an empty handshake record ends the watch", func(t *testing.T) {
		for _, b := range [][]byte{{21, 3, 3, 0, 2, 2, 40}, {22, 3, 3, 0, 0}} {
			if v := NewRetry(h1).Server(b); v != Done {
				t.Errorf("%q: %v", b, v)
			}
		}
	})

	refused := []struct {
		name   string
		client []byte // after the server's retry
		why    string
	}{
		{"another name", flat(evil.client2), `names "evil.test", the first "good.test"`},
		{"no name", flat(noName.client2), `names no name`},
		{"a first hello again, for another name", evil.hello1, `"evil.test"`},
		{"not a hello", []byte{22, 3, 3, 0, 4, 20, 0, 0, 0}, "malformed"},
		{"garbage in the hello's records", append([]byte{22, 3, 3, 0, 5, 1, 0, 0, 9, 3}, 21, 3, 3, 0, 2, 1, 0), "malformed"},
	}
	for _, tc := range refused {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			for _, size := range []int{0, 100} {
				r := NewRetry(h1)
				for _, rec := range retry.server {
					r.Server(rec)
				}
				got, v := feed(r, tc.client, size)
				if v != Refuse {
					t.Fatalf("pieces of %d: %v, want Refuse", size, v)
				}
				// Only the records before the hello (a change_cipher_spec) may pass.
				if bytes.Contains(got, []byte{22, 3}) {
					t.Errorf("passed the hello's bytes on: %x", got)
				}
				if !bytes.Contains([]byte(r.Why()), []byte(tc.why)) {
					t.Errorf("why %q, want it to say %q", r.Why(), tc.why)
				}
			}
		})
	}

	t.Run("a pipelined second hello is refused before any answer", func(t *testing.T) {
		r := NewRetry(h1)
		// Early data and a change_cipher_spec pass; the hello does not.
		early := []byte{20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 3, 1, 2, 3}
		if pass, v := r.Client(early); v != Watching || !bytes.Equal(pass, early) {
			t.Fatalf("early data: %v, passed %x", v, pass)
		}
		pass, v := r.Client(append(append([]byte{23, 3, 3, 0, 2}, 9, 9), flat(evil.client2)...))
		if v != Refuse || pass != nil {
			t.Fatalf("%v, passed %x", v, pass)
		}
	})
	t.Run("early data split anywhere keeps the record walk", func(t *testing.T) {
		early := []byte{23, 3, 3, 0, 4, 22, 22, 22, 22, 20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 0}
		for size := 1; size <= len(early); size++ {
			r := NewRetry(h1)
			got, v := feed(r, early, size)
			if v != Watching || !bytes.Equal(got, early) {
				t.Fatalf("pieces of %d: %v", size, v)
			}
		}
	})
	t.Run("bytes that are no TLS record end the client's watch", func(t *testing.T) {
		for _, retried := range []bool{false, true} {
			r := NewRetry(h1)
			if retried {
				for _, rec := range retry.server {
					r.Server(rec)
				}
			}
			plain := []byte("D\x00\x00\x00\x00\x00\x00\x10\x00 and then anything: \x16\x03\x03")
			got, v := feed(r, append([]byte{23, 3, 3, 0, 1, 0}, plain...), 3)
			if v != Done || !bytes.HasSuffix(got, plain) {
				t.Errorf("retried=%v: %v, passed %q", retried, v, got)
			}
		}
	})
	t.Run("a hello in too many pieces is refused", func(t *testing.T) {
		r := NewRetry(h1)
		for _, rec := range retry.server {
			r.Server(rec)
		}
		if _, v := feed(r, flat(retry.client2), 1); v != Refuse || !strings.Contains(r.Why(), "pieces") {
			t.Fatalf("a hello a byte a read: %v (%s)", v, r.Why())
		}
	})
	t.Run("a second message in the second hello's record is refused", func(t *testing.T) {
		r := NewRetry(h1)
		for _, rec := range retry.server {
			r.Server(rec)
		}
		hello := parsedMsg(t, flat(retry.client2)[6:]) // past the change_cipher_spec
		both := append(bytes.Clone(hello), hello...)
		rec := append([]byte{22, 3, 3, byte(len(both) >> 8), byte(len(both))}, both...)
		if _, v := r.Client(rec); v != Refuse || !strings.Contains(r.Why(), "own record") {
			t.Fatalf("%v (%s)", v, r.Why())
		}
	})
	t.Run("server bytes that are no TLS record keep the client's side watched", func(t *testing.T) {
		r := NewRetry(h1)
		if v := r.Server([]byte("S")); v != Watching || !r.Answered() {
			t.Fatalf("after an S: %v, answered %v", v, r.Answered())
		}
		// The HRR that follows is not read; a hello after it is refused.
		if _, v := r.Client(flat(evil.client2)); v != Refuse {
			t.Fatalf("a second hello after unframed server bytes: %v", v)
		}
		r = NewRetry(h1)
		r.Server([]byte("HTTP/1.1 400 Bad Request\r\n"))
		if _, v := r.Client([]byte{23, 3, 3, 0, 1, 0, 'x'}); v != Done {
			t.Fatalf("the client's own plain bytes after them: %v", v)
		}
	})
	t.Run("a held hello is bounded", func(t *testing.T) {
		r := NewRetry(h1)
		for _, rec := range retry.server {
			r.Server(rec)
		}
		huge := []byte{22, 3, 3, 0x40, 0, 1, 0, 0x40, 0}
		if _, v := r.Client(huge); v != Refuse {
			t.Fatalf("a hello longer than MaxHelloLen: %v", v)
		}
	})
}

// parsedMsg is the handshake message of the one-record hello rec.
func parsedMsg(t *testing.T, rec []byte) []byte {
	t.Helper()
	msg, _, st := Reassemble(rec, nil)
	if st != Complete {
		t.Fatalf("hello: %v", st)
	}
	return msg
}

// parsed is the hello in rec, parsed.
func parsed(t *testing.T, rec []byte) *Info {
	t.Helper()
	var h Info
	if _, st := Examine(rec, nil, &h); st != Complete {
		t.Fatalf("hello: %v", st)
	}
	return &h
}

// FuzzRetry checks that whatever the server and the client send, in
// whatever pieces, Retry never panics, passes on only the client's bytes
// in their order (a prefix of them, all of them once Done), passes nothing
// more once it refused, and never holds more than MaxHelloLen bytes and
// one read.
//
//	go test -run=NONE -fuzz=FuzzRetry -fuzztime=60s -fuzzminimizetime=2s ./internal/clienthello/
func FuzzRetry(f *testing.F) {
	hrr := append([]byte{22, 3, 3, 0, 40, 2, 0, 0, 36, 3, 3}, helloRetryRandom[:]...)
	hrr = append(hrr, 0, 0)
	for _, fx := range fixtures {
		raw := loadFixture(f, fx.name)
		f.Add(hrr, append([]byte{20, 3, 3, 0, 1, 1}, raw...), raw, uint8(0), uint8(0))
		f.Add(hrr, raw, raw, uint8(7), uint8(1))
		f.Add([]byte{22, 3, 3, 0, 4, 2, 0, 0, 0}, raw, raw, uint8(3), uint8(2))
	}
	f.Add([]byte{}, []byte{23, 3, 3, 0, 2, 22, 22, 22, 3, 3}, []byte{}, uint8(1), uint8(1))
	f.Fuzz(func(t *testing.T, server, client, first []byte, cut, scut uint8) {
		var h Info
		if _, st := Examine(first, nil, &h); st != Complete {
			h = Info{}
		}
		r := NewRetry(&h)
		orig := client
		size, ssize := int(cut)+1, int(scut)+1
		var passed []byte
		v := Watching
		for len(server) > 0 || len(client) > 0 {
			if len(server) > 0 {
				n := min(ssize, len(server))
				v = r.Server(server[:n])
				server = server[n:]
			}
			if len(client) > 0 && v != Refuse {
				n := min(size, len(client))
				var pass []byte
				pass, v = r.Client(client[:n])
				passed = append(passed, pass...)
				client = client[n:]
				if v == Refuse && pass != nil {
					t.Fatalf("Refuse passed %d bytes", len(pass))
				}
			}
			if len(r.held) > MaxHelloLen+size {
				t.Fatalf("holds %d bytes", len(r.held))
			}
			if v == Refuse {
				break
			}
		}
		if !bytes.HasPrefix(orig, passed) {
			t.Fatal("passed bytes the client did not send, or out of order")
		}
		if v == Done && !bytes.Equal(passed, orig) {
			t.Fatalf("Done, but passed %d of %d bytes", len(passed), len(orig))
		}
	})
}

// BenchmarkRetryAnswered is what the watch costs a TLS connection whose
// server answers without a retry, as nearly all do: made for the decided
// hello, given the server's first record, done.
func BenchmarkRetryAnswered(b *testing.B) {
	var h Info
	if _, st := Examine(loadFixture(b, "go-default"), nil, &h); st != Complete {
		b.Fatal(st)
	}
	sh := append([]byte{22, 3, 3, 0, 90, 2, 0, 0, 86, 3, 3}, make([]byte, 88)...)
	b.ReportAllocs()
	for b.Loop() {
		r := NewRetry(&h)
		if r.Server(sh) != Done {
			b.Fatal("not done")
		}
	}
}
