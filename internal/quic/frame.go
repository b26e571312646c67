package quic

import (
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// FrameType is a QUIC frame type (RFC 9000 §12.4, Table 3). Only those an
// Initial packet may carry have names here.
type FrameType uint64

const (
	FramePadding         FrameType = 0x00 // RFC 9000 §19.1
	FramePing            FrameType = 0x01 // §19.2
	FrameAck             FrameType = 0x02 // §19.3
	FrameAckECN          FrameType = 0x03 // §19.3, with ECN counts
	FrameCrypto          FrameType = 0x06 // §19.6
	FrameConnectionClose FrameType = 0x1c // §19.19, the transport-error variant
)

func (t FrameType) String() string {
	switch t {
	case FramePadding:
		return "PADDING"
	case FramePing:
		return "PING"
	case FrameAck:
		return "ACK"
	case FrameAckECN:
		return "ACK_ECN"
	case FrameCrypto:
		return "CRYPTO"
	case FrameConnectionClose:
		return "CONNECTION_CLOSE"
	}
	return fmt.Sprintf("FrameType(0x%x)", uint64(t))
}

// Frame is one frame of an Initial packet's payload, as [ReadFrame] read
// it. Data is a view of the payload.
type Frame struct {
	Type FrameType
	// Offset is a CRYPTO frame's offset in the crypto stream.
	Offset uint64
	// Data is a CRYPTO frame's data, or a CONNECTION_CLOSE frame's reason
	// phrase.
	Data []byte
	// ErrorCode and CloseFrameType are a CONNECTION_CLOSE frame's error code
	// and the type of the frame that caused it (0 if unknown).
	ErrorCode      uint64
	CloseFrameType uint64
}

// ReadFrame reads the frame at the start of an Initial packet's payload and
// returns it and its length. A run of PADDING bytes is read as one frame. An
// ACK frame is checked and skipped: its fields are of no use here.
//
// Initial packets may carry only PADDING, PING, ACK, CRYPTO and
// CONNECTION_CLOSE of type 0x1c (RFC 9000 §12.4, §17.2.2); any other frame
// type, or one of those in a longer encoding than needed (§12.4 allows
// treating it so), is a protocol violation, as is a malformed frame (a
// FRAME_ENCODING_ERROR).
func ReadFrame(b []byte) (f Frame, n int, err error) {
	if len(b) == 0 {
		return Frame{}, 0, errors.New("read frame: empty payload")
	}
	if b[0] == byte(FramePadding) {
		for n < len(b) && b[n] == 0 {
			n++
		}
		return Frame{Type: FramePadding}, n, nil
	}
	s := cryptobyte.String(b)
	var typ uint64
	if !readVarint(&s, &typ) {
		return Frame{}, 0, errors.New("read frame: truncated frame type")
	}
	f.Type = FrameType(typ)
	if len(b)-len(s) != 1 { // every type allowed here is below 64: one byte
		return Frame{}, 0, fmt.Errorf("read frame: %v (%d-byte type) in an Initial packet: %w", f.Type, len(b)-len(s), errViolation)
	}
	ok := true
	switch f.Type {
	case FramePing:
	case FrameAck, FrameAckECN:
		ok = skipAck(&s, f.Type == FrameAckECN)
	case FrameCrypto:
		var length uint64
		ok = readVarint(&s, &f.Offset) && readVarint(&s, &length) &&
			length <= uint64(len(s)) && f.Offset+length <= maxVarint // §19.6
		if ok {
			f.Data = cap3(s[:length])
			s = s[length:]
		}
	case FrameConnectionClose:
		var length uint64
		ok = readVarint(&s, &f.ErrorCode) && readVarint(&s, &f.CloseFrameType) &&
			readVarint(&s, &length) && length <= uint64(len(s))
		if ok {
			f.Data = cap3(s[:length])
			s = s[length:]
		}
	default:
		return Frame{}, 0, fmt.Errorf("read frame: %v in an Initial packet: %w", f.Type, errViolation)
	}
	if !ok {
		return Frame{}, 0, fmt.Errorf("read frame: malformed %v frame: %w", f.Type, errViolation)
	}
	return f, len(b) - len(s), nil
}

// skipAck reads past the fields of an ACK frame after its type (RFC 9000
// §19.3), checking that no range reaches below packet number 0, which the
// RFC calls a FRAME_ENCODING_ERROR. Each range takes at least two bytes,
// so a huge ACK Range Count ends with the payload.
func skipAck(s *cryptobyte.String, ecn bool) bool {
	var largest, delay, count, first uint64
	if !readVarint(s, &largest) || !readVarint(s, &delay) || !readVarint(s, &count) ||
		!readVarint(s, &first) || first > largest {
		return false
	}
	smallest := largest - first
	for range count {
		var gap, length uint64
		if !readVarint(s, &gap) || !readVarint(s, &length) || gap+2 > smallest {
			return false
		}
		largest = smallest - gap - 2 // §19.3.1
		if length > largest {
			return false
		}
		smallest = largest - length
	}
	if ecn {
		var ect0, ect1, ce uint64
		return readVarint(s, &ect0) && readVarint(s, &ect1) && readVarint(s, &ce)
	}
	return true
}
