package quic

import (
	"bytes"
	"errors"
	"fmt"
	"math/bits"

	"github.com/egressd/egressd/internal/clienthello"
)

// Status says what an Assembler has seen so far.
type Status int

const (
	NeedMore Status = iota // no whole ClientHello yet; give it more datagrams
	Complete               // the crypto stream holds a whole ClientHello: see Hello
	Invalid                // the flow cannot carry a ClientHello the gateway accepts; give up on it
)

func (s Status) String() string {
	switch s {
	case NeedMore:
		return "NeedMore"
	case Complete:
		return "Complete"
	case Invalid:
		return "Invalid"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// minClientDCIDLen is the shortest Destination Connection ID a client may
// choose for its first Initial packet (RFC 9000 §7.2).
const minClientDCIDLen = 8

// handshakeHeaderLen is the msg_type and uint24 length of a TLS handshake
// message (RFC 8446 §4).
const handshakeHeaderLen = 4

// An Assembler collects the ClientHello of one client flow from its Initial
// packets: the CRYPTO frames may come in any order, split anywhere, repeated
// or overlapping, in several packets and datagrams (Chromium shuffles them
// on purpose, and a post-quantum key share needs two packets).
//
// The flow is the connection of the first Initial packet that opens: its
// version and Destination Connection ID, from which the keys come. Initial
// packets of another connection ID or version are dropped, as RFC 9000
// §12.2 says of coalesced packets; 0-RTT and Handshake packets are skipped.
//
// The hello is capped at [clienthello.MaxHelloLen] bytes, as on the TCP
// path. Crypto stream bytes past the hello, which only a client answering a
// HelloRetryRequest sends, are ignored.
//
// It only reads. The gateway that relays an allowed flow must still keep
// out of the relay any Initial packet of another Destination Connection ID
// from the same address (a second connection, which may name another
// server), and decide it with an Assembler of its own.
//
// The zero Assembler is ready to use. An Assembler is not safe for
// concurrent use; it keeps about 2 KiB plus the hello.
type Assembler struct {
	// Retried accepts a first Destination Connection ID of any length, as
	// a client's Initial packets carry after a Retry: the server chose it,
	// and RFC 9000 §7.2 holds only the client's own choice to 8 bytes or
	// more. Set it before the first packet.
	Retried bool

	st      Status
	version Version
	dcid    []byte // the client's Destination Connection ID: the keys come from it
	scid    []byte
	keys    *Keys
	next    int64 // the largest packet number opened, plus one

	buf  []byte                               // crypto stream bytes from offset 0
	have [clienthello.MaxHelloLen / 64]uint64 // which bytes of buf arrived
	end  int                                  // length of the hello with its header, once known

	scratch []byte   // decrypted payloads
	pkts    []Packet // parsed datagrams
}

// Status returns what the Assembler has seen so far.
func (a *Assembler) Status() Status { return a.st }

// Hello returns the ClientHello handshake message, with its 4-byte header,
// as [clienthello.Parse] takes it, once the status is Complete; nil before.
// It is the Assembler's buffer: copy what must outlive the Assembler.
func (a *Assembler) Hello() []byte {
	if a.st != Complete {
		return nil
	}
	return a.buf[:a.end:a.end]
}

// Version, DCID and SCID describe the flow's connection once a packet has
// opened: its version and the Destination and Source Connection IDs of its
// first Initial packet, which [AppendClose] needs. DCID and SCID are the
// Assembler's copies.
func (a *Assembler) Version() Version { return a.version }
func (a *Assembler) DCID() []byte     { return a.dcid }
func (a *Assembler) SCID() []byte     { return a.scid }

// MaxCoalesced bounds the long-header packets of a client's datagram that
// are read: a datagram with more is not. A client coalesces the packets
// of one connection, one per packet number space it has something to send
// in (Initial, 0-RTT, Handshake: RFC 9000 §12.2), so three, and one for
// slack. Without the bound, a 1,200-byte datagram packs some 40 Initial
// packets of 30 bytes, each of which costs a key derivation and an open
// (or, on a relayed flow, a try with every decided connection's keys).
const MaxCoalesced = 4

// LongPackets counts pkts' long-header packets.
func LongPackets(pkts []Packet) int {
	n := 0
	for i := range pkts {
		if pkts[i].Type != ShortHeader {
			n++
		}
	}
	return n
}

// AddDatagram adds the Initial packets of d, a datagram from the client, and
// returns the status after them. d is not modified, and not kept.
//
// err says why a packet of d was not used (the first such), whatever the
// status: a datagram with no Initial packet, a packet that is malformed,
// fails authentication or belongs to another connection. Those are dropped,
// as RFC 9000 §12.2 and RFC 9001 §5.5 have a server do, and the status
// stays NeedMore. When the status turns Invalid, err says why.
func (a *Assembler) AddDatagram(d []byte) (Status, error) {
	if a.st != NeedMore {
		return a.st, nil
	}
	pkts, parseErr := ParseDatagram(d, a.pkts[:0])
	defer func() { clear(pkts); a.pkts = pkts[:0] }() // keep no views of d
	if n := LongPackets(pkts); n > MaxCoalesced {
		return a.st, fmt.Errorf("%d long-header packets in one datagram, more than a client coalesces (%d): not read", n, MaxCoalesced)
	}
	var first error
	initials := 0
	for i := range pkts {
		if pkts[i].Type != Initial {
			continue // 0-RTT and Handshake, or a short-header tail: not ours
		}
		initials++
		if _, err := a.AddPacket(&pkts[i]); err != nil && first == nil {
			first = err
		}
		if a.st != NeedMore {
			break
		}
	}
	if first == nil {
		first = parseErr
	}
	if first == nil && initials == 0 {
		first = fmt.Errorf("no Initial packet in the datagram (a %v packet first)", pkts[0].Type)
	}
	return a.st, first
}

// AddPacket adds one Initial packet from the client, as [ParseDatagram]
// returns it, and returns the status after it; err is as for AddDatagram.
func (a *Assembler) AddPacket(p *Packet) (Status, error) {
	if a.st != NeedMore {
		return a.st, nil
	}
	if p.Type != Initial {
		return a.st, fmt.Errorf("%v packet, not an Initial", p.Type)
	}
	keys := a.keys
	if keys == nil {
		if len(p.DCID) < minClientDCIDLen && !a.Retried {
			return a.st, fmt.Errorf("client's destination connection ID of %d bytes, under %d", len(p.DCID), minClientDCIDLen)
		}
		var err error
		if keys, err = ClientInitialKeys(p.Version, p.DCID); err != nil {
			return a.st, err
		}
	} else if p.Version != a.version || !bytes.Equal(p.DCID, a.dcid) || !bytes.Equal(p.SCID, a.scid) {
		return a.st, fmt.Errorf("initial packet of another connection (%v %x, not %v %x)", p.Version, p.DCID, a.version, a.dcid)
	}
	payload, pn, err := keys.Open(a.scratch[:0], p, a.next-1)
	if err != nil {
		if errors.Is(err, errViolation) {
			return a.fail(err)
		}
		return a.st, err
	}
	a.scratch = payload[:0]
	if a.keys == nil { // the first packet that opens names the connection
		a.keys, a.version = keys, p.Version
		a.dcid, a.scid = bytes.Clone(p.DCID), bytes.Clone(p.SCID)
	}
	a.next = max(a.next, int64(pn)+1)
	return a.addFrames(payload)
}

// addFrames adds the CRYPTO frames of a decrypted payload. A packet that
// holds no frame, or a frame an Initial may not hold, is a protocol
// violation (RFC 9000 §12.4).
func (a *Assembler) addFrames(payload []byte) (Status, error) {
	if a.st != NeedMore {
		return a.st, nil
	}
	if len(payload) == 0 {
		return a.fail(fmt.Errorf("initial packet without frames: %w", errViolation))
	}
	for len(payload) > 0 {
		f, n, err := ReadFrame(payload)
		if err != nil {
			return a.fail(err)
		}
		payload = payload[n:]
		switch f.Type {
		case FrameCrypto:
			if err := a.addCrypto(f.Offset, f.Data); err != nil {
				return a.fail(err)
			}
		case FrameConnectionClose:
			return a.fail(fmt.Errorf("client closed the connection: error 0x%x: %q", f.ErrorCode, f.Data))
		}
	}
	if a.end > 0 && a.filled(a.end) {
		a.st = Complete
	}
	return a.st, nil
}

func (a *Assembler) fail(err error) (Status, error) {
	a.st = Invalid
	return a.st, err
}

// addCrypto stores the crypto stream bytes data at offset off. Bytes already
// stored must come again unchanged (RFC 9000 §2.2): otherwise the gateway
// and the server could read different hellos.
func (a *Assembler) addCrypto(off uint64, data []byte) error {
	limit := uint64(clienthello.MaxHelloLen) // no hello reaches past it
	if a.end > 0 {
		limit = uint64(a.end)
	}
	if off >= limit {
		return nil
	}
	data = data[:min(uint64(len(data)), limit-off)]
	start := int(off)
	if end := start + len(data); end > len(a.buf) {
		a.grow(end)
	}
	for i, c := range data {
		j := start + i
		word, bit := j/64, uint64(1)<<(j%64)
		if a.have[word]&bit == 0 {
			a.have[word] |= bit
			a.buf[j] = c
		} else if a.buf[j] != c {
			return fmt.Errorf("crypto stream byte %d sent twice, differently: %w", j, errViolation)
		}
	}
	if a.end == 0 && a.have[0]&0b1111 == 0b1111 {
		return a.readHeader()
	}
	if a.have[0]&1 != 0 && a.buf[0] != 1 {
		return fmt.Errorf("crypto stream starts with handshake message type %d, not client_hello", a.buf[0])
	}
	return nil
}

// readHeader reads the hello's handshake header once its 4 bytes are in,
// and forgets any byte stored past the end it gives.
func (a *Assembler) readHeader() error {
	if a.buf[0] != 1 { // HandshakeType client_hello (RFC 8446 §4)
		return fmt.Errorf("crypto stream starts with handshake message type %d, not client_hello", a.buf[0])
	}
	n := handshakeHeaderLen + (int(a.buf[1])<<16 | int(a.buf[2])<<8 | int(a.buf[3]))
	if n > clienthello.MaxHelloLen {
		return fmt.Errorf("client hello of %d bytes, over the %d-byte cap", n, clienthello.MaxHelloLen)
	}
	a.end = n
	for j := n; j < len(a.buf); j++ {
		a.have[j/64] &^= 1 << (j % 64)
	}
	if len(a.buf) > n {
		a.buf = a.buf[:n]
	}
	return nil
}

// grow makes buf n bytes long, n at most MaxHelloLen, doubling its
// capacity so that a hello in many frames is copied few times.
func (a *Assembler) grow(n int) {
	if n <= cap(a.buf) {
		a.buf = a.buf[:n]
		return
	}
	buf := make([]byte, n, min(max(n, 2*cap(a.buf), 2048), clienthello.MaxHelloLen))
	copy(buf, a.buf)
	a.buf = buf
}

// filled reports whether bytes [0, n) of the stream have all arrived.
func (a *Assembler) filled(n int) bool {
	full := n / 64
	for _, w := range a.have[:full] {
		if w != ^uint64(0) {
			return false
		}
	}
	rest := n % 64
	return rest == 0 || bits.TrailingZeros64(^a.have[full]) >= rest
}
