package clienthello

import (
	"bytes"
	"testing"
)

// paddedHello returns a ClientHello message (handshake header included) of
// exactly n bytes, with a server name and a padding extension (RFC 7685)
// to make up the size.
func paddedHello(t testing.TB, n int) []byte {
	t.Helper()
	const extPadding = 21
	base := len(hello(exts(sni("a.example"), ext{extPadding, nil})))
	if n < base {
		t.Fatalf("paddedHello(%d): the smallest is %d bytes", n, base)
	}
	return hello(exts(sni("a.example"), ext{extPadding, make([]byte, n-base)}))
}

// inRecords returns msg as handshake records of size bytes each (the last
// one shorter), in record version 0x0301.
func inRecords(msg []byte, size int) []byte {
	var out []byte
	for len(msg) > 0 {
		k := min(size, len(msg))
		out = append(out, rec(recordTypeHandshake, 0x0301, msg[:k])...)
		msg = msg[k:]
	}
	return out
}

// trickle gives in to a Reassembly a byte more per call, as the reads of a
// client that sends a byte per segment, until the answer is not NeedMore
// or in ends, and returns the last answer, at what length of in it came,
// and how many record headers the calls examined in all.
func trickle(in []byte) (msg []byte, used int, st Status, at, work int) {
	walked = func() { work++ }
	defer func() { walked = nil }()
	var a Reassembly
	scratch := make([]byte, 0, MaxHelloLen)
	for at = 1; at <= len(in); at++ {
		if msg, used, st = a.Next(in[:at], scratch); st != NeedMore {
			break
		}
	}
	return msg, used, st, min(at, len(in)), work
}

// TestReassemblyLinear holds the reassembly of a hello trickled a byte per
// read to work linear in its size. A client may cut its hello into
// records of one byte (crypto/tls and OpenSSL accept a handshake message
// split over any number of records) and send a byte per segment: a walk
// over every record header from the start at each read then costs
// reads × records, about (6n)²/12 steps for a hello of n bytes, and one
// source may hold many such handshakes pending. The work is counted in
// record headers examined (the walked hook), not timed.
func TestReassemblyLinear(t *testing.T) {
	ccs := rec(recordTypeChangeCipher, 0x0303, []byte{1})
	warn := rec(recordTypeAlert, 0x0303, []byte{1, 112})
	tests := []struct {
		name string
		n    int // the smaller hello, in message bytes; the larger is 2n
		in   func(msg []byte) []byte
		want Status
	}{
		{"1-byte records", 1200, func(msg []byte) []byte { return inRecords(msg, 1) }, Complete},
		{"1-byte records behind ccs and alert", 1200, func(msg []byte) []byte {
			return cat(ccs, warn, inRecords(msg, 1))
		}, Complete},
		{"2-byte records, early data behind", 1200, func(msg []byte) []byte {
			return cat(inRecords(msg, 2), rec(recordTypeApplicationData, 0x0303, []byte("early")))
		}, Complete},
		{"7-byte records", 4000, func(msg []byte) []byte { return inRecords(msg, 7) }, Complete},
		{"one record", 5000, func(msg []byte) []byte { return inRecords(msg, len(msg)) }, Complete},
		{"1-byte records, unfinished", 1200, func(msg []byte) []byte {
			return inRecords(msg[:len(msg)-1], 1)
		}, NeedMore},
		{"1-byte records, then application data", 1200, func(msg []byte) []byte {
			return cat(inRecords(msg[:len(msg)-1], 1), rec(recordTypeApplicationData, 0x0303, msg[len(msg)-1:]))
		}, Invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var work [2]int
			for i, n := range []int{tt.n, 2 * tt.n} {
				in := tt.in(paddedHello(t, n))
				msg, used, st, at, w := trickle(in)
				wantMsg, wantUsed, wantSt := Reassemble(in[:at], nil)
				if st != tt.want || st != wantSt || used != wantUsed || !bytes.Equal(msg, wantMsg) {
					t.Fatalf("Reassembly.Next(%d of %d bytes, a byte per call) = %d bytes, %d, %v; want %d bytes, %d, %v (Reassemble's), %v",
						at, len(in), len(msg), used, st, len(wantMsg), wantUsed, wantSt, tt.want)
				}
				if w > 3*len(in) {
					t.Errorf("Reassembly.Next(%d bytes, a byte per call) examined %d record headers, want at most %d",
						len(in), w, 3*len(in))
				}
				work[i] = w
			}
			t.Logf("examined %d record headers for %d, %d for %d", work[0], tt.n, work[1], 2*tt.n)
			if 2*work[1] > 5*work[0] {
				t.Errorf("Reassembly.Next examined %d record headers for %d, %d for %d: want at most 2.5 times as many for twice the bytes",
					work[0], tt.n, work[1], 2*tt.n)
			}
		})
	}
}

// FuzzReassembly checks that resuming agrees with walking from the start:
// the stream is given to a Reassembly in reads whose sizes cuts gives (a
// byte more than each, in turn; all at once if cuts is empty), and at every
// read Next must answer as Reassemble, and as the walk Reassemble made before
// Reassembly (reassembleFromStart), answer on the bytes so far: the same
// status, message and used. Calls go on after a Complete or Invalid, which
// must then stay the same. Until the first of them, the work must be linear:
// at most the steps of skipping leading records and of one partial record
// per read, plus two per record (of six bytes at least) completed and
// gathered.
//
//	go test -run=NONE -fuzz=FuzzReassembly -fuzztime=60s -fuzzminimizetime=5s ./internal/clienthello/
func FuzzReassembly(f *testing.F) {
	for _, name := range []string{"go-tls12", "openssl"} {
		raw := loadFixture(f, name)
		f.Add(raw, []byte{})
		f.Add(reframe(f, raw, fixedSize(3)), []byte{0})
		f.Add(append(reframe(f, raw, fixedSize(500)), "garbage"...), []byte{4, 200, 0})
	}
	msg := hello(exts(sni("a.example")))
	f.Add(cat(rec(20, 0x0303, []byte{1}), rec(21, 0x0303, []byte{1, 112}), inRecords(msg, 1)), []byte{0, 1, 2})
	f.Add(cat(inRecords(msg[:9], 1), rec(23, 0x0303, msg[9:])), []byte{0})
	f.Add([]byte{22, 4, 0, 0, 1, 2}, []byte{0})
	// Answers that must hold as more bytes come: Complete with records
	// behind, Invalid for a message of another type.
	f.Add(cat(inRecords(msg, 2), inRecords(msg, 2)), []byte{0})
	f.Add(cat(inRecords(retype(msg, 2), 1), []byte("garbage")), []byte{0})
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		work, counting := 0, false
		walked = func() {
			if counting {
				work++
			}
		}
		defer func() { walked = nil }()
		var a Reassembly
		scratch := make([]byte, 0, MaxHelloLen)
		reads, settled := 0, false
		for end := 0; end < len(stream); {
			n := len(stream) - end
			if len(cuts) > 0 {
				n = min(n, 1+int(cuts[reads%len(cuts)]))
			}
			end += n
			reads++
			counting = !settled
			msg, used, st := a.Next(stream[:end], scratch)
			counting = false
			wantMsg, wantUsed, wantSt := Reassemble(stream[:end], nil)
			if st != wantSt || used != wantUsed || !bytes.Equal(msg, wantMsg) {
				t.Fatalf("read %d, %d bytes: Reassembly.Next = %d bytes, %d, %v; Reassemble = %d bytes, %d, %v",
					reads, end, len(msg), used, st, len(wantMsg), wantUsed, wantSt)
			}
			oldMsg, oldUsed, oldSt := reassembleFromStart(stream[:end], nil)
			if st != oldSt || used != oldUsed || !bytes.Equal(msg, oldMsg) {
				t.Fatalf("read %d, %d bytes: Reassembly.Next = %d bytes, %d, %v; the walk from the start = %d bytes, %d, %v",
					reads, end, len(msg), used, st, len(oldMsg), oldUsed, oldSt)
			}
			if !settled && work > 6*reads+2*end/6+1 {
				t.Fatalf("%d reads of %d bytes examined %d record headers, want at most %d",
					reads, end, work, 6*reads+2*end/6+1)
			}
			settled = settled || st != NeedMore
		}
	})
}

// reassembleFromStart is Reassemble as it was before Reassembly: a walk over
// every record from the start of raw. FuzzReassembly keeps it as a second
// implementation to agree with.
func reassembleFromStart(raw, scratch []byte) (msg []byte, used int, st Status) {
	start, st := skipLeading(raw)
	if st != Complete {
		return nil, 0, st
	}
	var hdr [handshakeHeaderLen]byte
	seen := 0
	for off := start; ; {
		frag, st := record(raw, off)
		if st != Complete {
			return nil, 0, st
		}
		off += recordHeaderLen + len(frag)
		if seen < handshakeHeaderLen {
			copy(hdr[seen:], frag)
		}
		seen += len(frag)
		if hdr[0] != typeClientHello {
			return nil, 0, Invalid
		}
		if seen < handshakeHeaderLen {
			continue
		}
		total := handshakeHeaderLen + (int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3]))
		if total > MaxHelloLen {
			return nil, 0, Invalid
		}
		if seen >= total {
			return gather(raw[start:], scratch, total), off, Complete
		}
	}
}
