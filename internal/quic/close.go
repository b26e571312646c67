package quic

import (
	"errors"
	"fmt"
)

// CodeAccessDenied is the transport error code that refuses a connection as
// TLS refuses one with the alert access_denied (49): a CRYPTO_ERROR, 0x0100
// plus the alert (RFC 9001 §4.8, RFC 9000 §20.1). A client reports it as
// the TLS alert, at once, instead of timing out.
const CodeAccessDenied = 0x0100 + 49

// maxCloseLen caps what AppendClose builds: the smallest datagram that any
// QUIC path carries (RFC 9000 §14).
const maxCloseLen = 1200

// AppendClose appends a server Initial packet that closes the connection a
// client opened with its first Initial packet: a CONNECTION_CLOSE frame
// (type 0x1c, the only kind allowed in an Initial, RFC 9000 §10.2.3) with
// code, CRYPTO (0x06) as the frame type it answers and reason as the reason
// phrase, which clients show, so keep it short and plain. Pass
// [CodeAccessDenied] to refuse.
//
// v, clientDCID and clientSCID are the version and connection IDs of the
// client's first Initial packet (see [Assembler.DCID]). The packet is what
// that client's server would send (RFC 9000 §7.2, §17.2.2):
//   - protected with the server Initial keys, which derive from clientDCID;
//   - its Destination Connection ID is clientSCID, as a server's must be;
//   - its Source Connection ID, which a server chooses, is clientDCID:
//     echoing it makes the packet a pure function of the client's, so every
//     retransmitted Initial gets the same answer, and needs no randomness;
//     the client only adopts it as the peer's ID, and closes at once;
//   - an empty token, packet number 0, and PADDING only as far as the header
//     protection sample needs. CONNECTION_CLOSE is not ack-eliciting, so the
//     1200-byte minimum of RFC 9000 §14.1 does not apply, and the packet
//     stays far below the three times the client sent that §8.1 allows.
func AppendClose(dst []byte, v Version, clientDCID, clientSCID []byte, code uint64, reason string) ([]byte, error) {
	if !v.Known() {
		return dst, fmt.Errorf("connection close: unknown version %v", v)
	}
	if len(clientDCID) > maxCIDLen || len(clientSCID) > maxCIDLen {
		return dst, errors.New("connection close: connection ID over 20 bytes")
	}
	if code > maxVarint {
		return dst, fmt.Errorf("connection close: error code 0x%x over 2^62-1", code)
	}
	keys, err := ServerInitialKeys(v, clientDCID)
	if err != nil {
		return dst, fmt.Errorf("connection close: %w", err)
	}
	var frame []byte
	frame = append(frame, byte(FrameConnectionClose))
	frame = appendVarint(frame, code)
	frame = appendVarint(frame, uint64(FrameCrypto))
	frame = appendVarint(frame, uint64(len(reason)))
	frame = append(frame, reason...)
	const pnLen = 1
	for pnLen+len(frame) < maxPNLen {
		frame = append(frame, byte(FramePadding))
	}
	out := keys.appendInitial(dst, v, clientSCID, clientDCID, nil, 0, pnLen, frame)
	if len(out)-len(dst) > maxCloseLen {
		return dst, fmt.Errorf("connection close: reason of %d bytes makes the packet too long", len(reason))
	}
	return out, nil
}

// AppendClose appends a server Initial packet that closes the Assembler's
// flow, as the function [AppendClose] does with the flow's version and
// connection IDs. The flow must have had a packet open.
func (a *Assembler) AppendClose(dst []byte, code uint64, reason string) ([]byte, error) {
	if a.keys == nil {
		return dst, errors.New("connection close: no client Initial packet opened yet")
	}
	return AppendClose(dst, a.version, a.dcid, a.scid, code, reason)
}
