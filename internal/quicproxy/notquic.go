package quicproxy

import "encoding/binary"

// A relayed flow's datagrams without a long header pass undecided: they
// are short-header (1-RTT) packets of a connection the server already
// has, which egressd cannot open. But a server's UDP port may speak more
// than IETF QUIC, and a datagram whose first bit is 0 may start a session
// of another protocol there, naming another server or none: Google QUIC
// before Q046 (lsquic servers can still take it), whose CHLO carries the
// server name in the clear; DTLS (VPNs listen on UDP 443); STUN (a TURN
// server relays to any peer).
//
// RFC 9000 §17.3.1 has the fixed bit (0x40) of a short header set, and
// none of those has it. But a peer that advertised grease_quic_bit (RFC
// 9287) accepts it clear, and implementations then clear it at random
// (ngtcp2, lsquic). The server advertises it in its transport parameters,
// in EncryptedExtensions, under Handshake keys egressd does not have; the
// client's own are in the clear, but a client chooses them, and one that
// wants to pass another protocol advertises grease_quic_bit. So egressd
// cannot tell a greased packet from another protocol's by that bit, and
// drops what has the shape of those protocols' first datagrams instead
// (not_quic), and what is too short for a QUIC packet. The shapes are
// narrow (a version tag, a record version and epoch, a magic cookie): a
// QUIC packet matches one only where the server's connection ID happens to
// spell it, about one ID in 40 million.
func notQUIC(d []byte) bool {
	switch {
	case len(d) < minShortPacket:
		return true
	case googleQUIC(d):
		// Whatever its bit 0x40 (Q043 has it clear), since a server that
		// reads Google QUIC need not check it.
		return true
	case d[0]&0x40 != 0:
		return false // neither DTLS nor STUN has it set
	}
	return dtlsRecord(d) || stunMessage(d)
}

// minShortPacket is the shortest QUIC short-header packet: the first byte,
// and from the packet number on the 4 bytes and 16-byte sample of header
// protection (RFC 9001 §5.4.2), with a connection ID of none.
const minShortPacket = 1 + 4 + 16

// googleQUIC reports whether d starts like a Google QUIC packet with its
// version (the public header before Q046): public flags with 0x01 (version)
// set, an 8-byte connection ID if 0x08 is set, then a version tag Q0
// and two digits. Without the version no server starts a connection.
func googleQUIC(d []byte) bool {
	if d[0]&0x01 == 0 {
		return false
	}
	at := 1
	if d[0]&0x08 != 0 {
		at += 8
	}
	return len(d) >= at+4 && d[at] == 'Q' && d[at+1] == '0' && digit(d[at+2]) && digit(d[at+3])
}

func digit(c byte) bool { return '0' <= c && c <= '9' }

// dtlsRecord reports whether d starts with a DTLS record header of epoch
// 0, as a session starts (RFC 9147 §4, RFC 6347 §4.1): a content type from
// change_cipher_spec (20) to ack (26), record version DTLS 1.0 (0xfeff)
// or 1.2 (0xfefd, which DTLS 1.3 also sends in the clear), epoch 0. Later
// epochs belong to a session the server has, which no datagram of this
// flow could have started.
func dtlsRecord(d []byte) bool {
	return 20 <= d[0] && d[0] <= 26 && d[1] == 0xfe && (d[2] == 0xff || d[2] == 0xfd) && d[3] == 0 && d[4] == 0
}

// stunMessage reports whether d starts with a STUN header (RFC 8489 §5):
// its first two bits 0, the magic cookie at bytes 4 to 7.
func stunMessage(d []byte) bool {
	return d[0]&0xc0 == 0 && binary.BigEndian.Uint32(d[4:8]) == 0x2112a442
}
