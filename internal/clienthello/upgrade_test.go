package clienthello

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/egressd/egressd/internal/testnet"
)

// feedUpgrade gives stream to u in pieces of the sizes next returns, and
// returns what it passed on, and its state once a hello was found, refused,
// or the stream ended.
func feedUpgrade(u *Upgrade, stream []byte, next func() int) ([]byte, UpgradeState) {
	var out []byte
	st := Scanning
	for len(stream) > 0 {
		n := min(max(next(), 1), len(stream))
		var pass []byte
		pass, st = u.Client(stream[:n])
		out = append(out, pass...)
		stream = stream[n:]
		if st == HelloFound || st == HelloRefused {
			break
		}
	}
	return out, st
}

// TestUpgradeFindsHello: a ClientHello after an upgrade is found however
// the client's bytes before it are made and however they and the hello
// are split into reads and records; what was passed on before it was
// found is never the whole hello, and with Release it is the stream.
func TestUpgradeFindsHello(t *testing.T) {
	hello := loadFixture(t, "go-default")
	mysqlSSL := append([]byte{32, 0, 0, 1, 0x85, 0xae, 0xff, 0x19}, make([]byte, 28)...)
	cases := []struct {
		name   string
		before []byte
		hello  []byte
	}{
		{"smtp", []byte("EHLO client.test\r\nSTARTTLS\r\n"), hello},
		{"imap", []byte("a001 CAPABILITY\r\na002 STARTTLS\r\n"), hello},
		{"ftp, hello in one-byte records", []byte("AUTH TLS\r\n"), reframe(t, hello, fixedSize(1))},
		{"xmpp", []byte("<stream:stream to='good.test'><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"), hello},
		{"mysql ssl request", mysqlSSL, hello},
		{"binary with record-like bytes before", []byte{22, 3, 1, 0, 5, 2, 0, 0, 22, 3, 3, 0, 4, 22, 3, 22}, hello},
		{"hello in 7-byte records", []byte("STLS\r\n"), reframe(t, hello, fixedSize(7))},
		{"none before", nil, hello},
	}
	for _, tc := range cases {
		stream := append(append([]byte(nil), tc.before...), tc.hello...)
		stream = append(stream, 23, 3, 3, 0, 1, 0) // early data behind it
		// Two reads, split at every byte up to well into the hello; then
		// reads of a fixed size.
		var splits []func() int
		for k := 1; k < len(tc.before)+100; k++ {
			first := true
			splits = append(splits, func() int {
				if first {
					first = false
					return k
				}
				return 1 << 20
			})
		}
		splits = append(splits, fixedSize(700), fixedSize(1<<20))
		for size, next := range splits {
			var u Upgrade
			passed, st := feedUpgrade(&u, stream, next)
			if st != HelloFound {
				t.Fatalf("%s, split %d: state %v (%s), want HelloFound", tc.name, size, st, u.Why())
			}
			if len(u.Hello().ServerName) == 0 {
				t.Fatalf("%s, split %d: hello found without its name", tc.name, size)
			}
			if len(passed) >= len(tc.before)+len(tc.hello) {
				t.Fatalf("%s, split %d: %d bytes passed before the hello was found, the hello ends at %d", tc.name, size, len(passed), len(tc.before)+len(tc.hello))
			}
			if u.Offset() != len(tc.before) {
				t.Errorf("%s, split %d: hello at %d, want %d", tc.name, size, u.Offset(), len(tc.before))
			}
			pass, behind, ok := u.Release()
			whole := append(append([]byte(nil), passed...), pass...)
			if !ok || !bytes.HasPrefix(stream, whole) || len(whole) < len(tc.before)+len(tc.hello) {
				t.Fatalf("%s, split %d: passed and released bytes are not the stream's start", tc.name, size)
			}
			if !bytes.HasPrefix(behind, []byte{23, 3, 3}) && len(behind) != 0 {
				t.Errorf("%s, split %d: behind the hello: % x", tc.name, size, behind[:min(8, len(behind))])
			}
		}
	}
}

// TestUpgradeLetsBytesThrough: bytes that hold no hello are passed on at
// once, whole, even when they end as a hello could begin (a binary
// message ending in 22, 3): holding them would stall a client waiting for
// its answer.
func TestUpgradeLetsBytesThrough(t *testing.T) {
	cases := map[string][]byte{
		"text":                               []byte("EHLO client.test\r\nMAIL FROM:<a@b>\r\n"),
		"ends in a record type":              {1, 2, 3, 22},
		"ends in a header":                   {1, 2, 3, 22, 3, 1, 0},
		"a 22-byte message":                  append([]byte{22, 0, 0, 0}, make([]byte, 22)...),
		"handshake not a hello":              {22, 3, 3, 0, 40, 2, 0, 0, 36, 3, 3},
		"legacy version not 3 inside a read": append([]byte("xx"), 22, 3, 1, 0, 60, 1, 0, 0, 56, 0, 0),
	}
	for name, b := range cases {
		var u Upgrade
		pass, st := u.Client(b)
		if st != Scanning || !bytes.Equal(pass, b) {
			t.Errorf("%s: passed %d of %d bytes, state %v", name, len(pass), len(b), st)
		}
	}
	// Random bytes, in reads of random sizes: nothing is taken for a
	// hello (each position would need about 48 bits to match).
	r := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	var u Upgrade
	passed, st := feedUpgrade(&u, data, func() int { return 1 + r.IntN(3000) })
	if st != Scanning || !bytes.Equal(passed, data) {
		t.Fatalf("random bytes: state %v after %d of %d bytes", st, len(passed), len(data))
	}
}

// TestUpgradeRefuses: a hello that began and is then malformed, or comes
// in too many reads, is refused: the server has not had it whole.
func TestUpgradeRefuses(t *testing.T) {
	hello := loadFixture(t, "go-default")
	var u Upgrade
	// Hellos a lenient server reads and Examine does not: each is held
	// and refused, never passed whole (the review's ways past a first
	// version of Upgrade).
	big := bigHello(20000)
	alerts := func(h []byte) []byte {
		out := append([]byte(nil), h[:5+1]...) // a record of the first byte
		out[3], out[4] = 0, 1
		for range 5 {
			out = append(out, 21, 3, 3, 0, 2, 1, 42)
		}
		rest := h[6:]
		return append(append(out, 22, h[1], h[2], byte(len(rest)>>8), byte(len(rest))), rest...)
	}
	withVersion := func(h []byte, major byte) []byte {
		h = append([]byte(nil), h...)
		h[1] = major
		return h
	}
	coalesced := func(h []byte) []byte {
		second := h[5:]
		out := append([]byte(nil), h...)
		n := len(h) - 5 + len(second)
		out[3], out[4] = byte(n>>8), byte(n)
		return append(out, second...)
	}
	mid := append([]byte("STARTTLS\r\n"), 22, 3, 1, 0) // a start left unsure at a read's end
	for name, stream := range map[string][][]byte{
		"longer than MaxHelloLen":                                   {[]byte("STARTTLS\r\n"), big},
		"five alerts between its records":                           {[]byte("STARTTLS\r\n"), alerts(hello)},
		"a second hello in its record":                              {[]byte("STARTTLS\r\n"), coalesced(hello)},
		"an alert, then record version 0.1":                         {[]byte("STARTTLS\r\n\x15\x03\x03\x00\x02\x01\x00"), withVersion(hello, 0)},
		"an empty record first":                                     {[]byte("STARTTLS\r\n\x16\x03\x01\x00\x00"), hello},
		"record version 0.1 at a read's start behind an unsure one": {mid, withVersion(hello, 0)},
	} {
		u = Upgrade{}
		var passed []byte
		st := Scanning
		for _, b := range stream {
			var p []byte
			p, st = u.Client(b)
			passed = append(passed, p...)
		}
		total := 0
		for _, b := range stream {
			total += len(b)
		}
		if st != HelloRefused || len(passed) >= total-len(stream[len(stream)-1])+40 {
			t.Errorf("%s: state %v (%s), %d of %d bytes passed", name, st, u.Why(), len(passed), total)
		}
	}
	// Hellos a lenient server acts on, found (and then decided) however
	// they are placed: a session id longer than 32 bytes (crypto/tls
	// reads it), legacy_version 4.3 with record version 0.1 written in
	// one read behind a binary request, after five leading alerts.
	odd := withVersions(hello, 0x0001, 0x0403)
	for name, stream := range map[string][]byte{
		"a 40-byte session id after a line":    append([]byte("STARTTLS\r\n"), withSessionID(hello, 40)...),
		"odd versions behind a binary request": append(append([]byte{32, 0, 0, 1, 0x85, 0xae, 0xff, 0x19}, make([]byte, 28)...), odd...),
		"five leading alerts":                  append(append([]byte("STARTTLS\r\n"), bytes.Repeat([]byte{21, 3, 3, 0, 2, 1, 90}, 5)...), odd...),
		"no compression methods":               append([]byte("STARTTLS\r\n"), testnet.ClientHello("bad.example", []byte{0x13, 0x01}, nil)...),
		"an odd cipher suites' length":         append([]byte("STARTTLS\r\n"), testnet.ClientHello("bad.example", []byte{0x13, 0x01, 0x13}, []byte{0})...),
	} {
		u = Upgrade{}
		passed, st := feedUpgrade(&u, stream, fixedSize(1<<20))
		if st != HelloFound && st != HelloRefused || len(passed) >= len(stream)-40 {
			t.Errorf("%s: state %v (%s), %d of %d bytes passed", name, st, u.Why(), len(passed), len(stream))
		}
	}
	// A MySQL COM_STMT_EXECUTE of 22 bytes for statement 65537 at a
	// read's start looks like a record and a hello's header: it ends
	// before a hello's fields would, and is passed on, whole.
	stmt := append([]byte{22, 0, 0, 0, 0x17, 1, 0, 1, 0, 0, 1, 0, 0, 0}, make([]byte, 12)...)
	u = Upgrade{}
	if pass, st := u.Client(stmt); st != Scanning || len(pass) != len(stmt) {
		t.Errorf("a MySQL statement: %v, %d of %d bytes passed", st, len(pass), len(stmt))
	}
	u = Upgrade{}
	if _, st := feedUpgrade(&u, append([]byte("STARTTLS\r\n"), hello...), fixedSize(1)); st != HelloRefused || u.Why() == "" {
		t.Errorf("a hello one byte per read: %v %q, want refused for too many reads", st, u.Why())
	}
}

// FuzzUpgrade: whatever the bytes and however they are split, what is
// passed on is the stream's start, in order; a hello found is released
// whole; and when nothing was found, no offset of the stream holds a
// whole ClientHello that parses (Reassemble, Parse: a server would read
// its name) — nor one with a record version crypto/tls takes and
// Reassemble does not, made of the same bytes with major 3.
func FuzzUpgrade(f *testing.F) {
	hello := loadFixture(f, "go-default")
	f.Add(append([]byte("EHLO x\r\nSTARTTLS\r\n"), hello...), uint64(7))
	f.Add(append([]byte{32, 0, 0, 1}, hello...), uint64(1))
	f.Add(append([]byte{22, 0, 1}, hello[3:]...), uint64(2))
	f.Add([]byte{22, 3, 1, 0, 1, 1, 22, 3, 1, 0, 1, 0}, uint64(3))
	f.Fuzz(func(t *testing.T, stream []byte, seed uint64) {
		r := rand.New(rand.NewPCG(seed, seed>>7))
		var u Upgrade
		passed, st := feedUpgrade(&u, stream, func() int { return 1 + r.IntN(9) })
		if !bytes.HasPrefix(stream, passed) {
			t.Fatal("passed bytes are not the stream's start")
		}
		switch st {
		case HelloFound:
			pass, behind, ok := u.Release()
			whole := append(append([]byte(nil), passed...), pass...)
			if !ok || !bytes.HasPrefix(stream, whole) {
				t.Fatal("released bytes do not follow the passed ones")
			}
			if !bytes.HasSuffix(whole, behind) {
				t.Fatal("the bytes behind the hello are not the released ones' end")
			}
		case Scanning:
			if len(passed) != len(stream) {
				t.Fatalf("scanning, yet %d of %d bytes passed", len(passed), len(stream))
			}
			var info Info
			for i := range stream {
				if stream[i] != recordTypeHandshake {
					continue
				}
				x := stream[i:]
				if len(x) > 1 && x[1] < 0x10 {
					x = append([]byte{x[0], 3}, x[2:]...) // as crypto/tls takes any major
				}
				if msg, _, st := Reassemble(x, nil); st == Complete && Parse(msg, &info) {
					t.Fatalf("a ClientHello at %d was passed on whole", i)
				}
			}
		}
	})
}

// bigHello is a ClientHello message of n bytes (legacy fields, one cipher
// suite, padding as an extension) in records of 2^14 bytes.
func bigHello(n int) []byte {
	body := []byte{3, 3}
	body = append(body, make([]byte, 32)...)
	body = append(body, 0, 0, 2, 0x13, 0x01, 1, 0)
	pad := n - 4 - len(body) - 2 - 4
	body = append(body, byte((pad+4)>>8), byte(pad+4), 0, 21, byte(pad>>8), byte(pad))
	body = append(body, make([]byte, pad)...)
	msg := append([]byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	var out []byte
	for len(msg) > 0 {
		k := min(len(msg), 1<<14)
		out = append(out, 22, 3, 1, byte(k>>8), byte(k))
		out = append(out, msg[:k]...)
		msg = msg[k:]
	}
	return out
}

// withSessionID returns the hello h (one record) with a session id of n
// bytes.
func withSessionID(h []byte, n int) []byte {
	const sidAt = 5 + 4 + 2 + 32
	old := int(h[sidAt])
	out := append([]byte(nil), h[:sidAt]...)
	out = append(out, byte(n))
	out = append(out, bytes.Repeat([]byte{7}, n)...)
	out = append(out, h[sidAt+1+old:]...)
	d := n - old
	rec := int(h[3])<<8 | int(h[4]) + d
	out[3], out[4] = byte(rec>>8), byte(rec)
	msg := int(h[6])<<16 | int(h[7])<<8 | int(h[8]) + d
	out[6], out[7], out[8] = byte(msg>>16), byte(msg>>8), byte(msg)
	return out
}

// withVersions returns the hello h with the record and legacy versions
// given.
func withVersions(h []byte, record, legacy uint16) []byte {
	out := append([]byte(nil), h...)
	out[1], out[2] = byte(record>>8), byte(record)
	out[9], out[10] = byte(legacy>>8), byte(legacy)
	return out
}

// TestUpgradeHistFreed: the bytes kept for a walker that a long field
// kept alive are let go once it dies, array and all: an upgrade watch
// lives as long as its connection, and a client that shaped some 15 KiB
// as a hello's cipher suites would otherwise leave it holding them.
func TestUpgradeHistFreed(t *testing.T) {
	const csLen = 15000
	body := []byte{3, 3}
	body = append(body, make([]byte, 32)...) // random
	body = append(body, 0)                   // session id
	body = append(body, csLen>>8, csLen&0xff)
	body = append(body, make([]byte, csLen)...)
	body = append(body, 1, 0, 0, 0) // compression methods, extensions' length
	msg := append([]byte{1, 0, byte(len(body) >> 8), byte(len(body))}, body...)
	rec := append([]byte{22, 3, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...)
	// The walker lives through the cipher suites; a compression methods
	// length of 0 where it reads one ends it.
	kill := len(rec) - 4
	stream := append([]byte("STARTTLS\r\n"), rec[:kill]...)
	stream = append(stream, 0)
	stream = append(stream, []byte("more of a binary protocol")...)

	for _, tc := range []struct {
		name string
		read int
	}{
		{"1000-byte reads", 1000},
		{"one read past the field", len(stream) - 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var u Upgrade
			out, st := feedUpgrade(&u, stream, func() int { return tc.read })
			if st != Scanning || !bytes.Equal(out, stream) {
				t.Fatalf("state %v, %d of %d bytes passed; want all passed while scanning", st, len(out), len(stream))
			}
			if len(u.walkers) != 0 {
				t.Fatalf("%d walkers live after the field's end", len(u.walkers))
			}
			if c := u.histCap(); c > maxIdleHist {
				t.Errorf("cap(hist) = %d with no walker live, want at most %d", c, maxIdleHist)
			}
		})
	}
}

func (u *Upgrade) histCap() int { return cap(u.hist) }
