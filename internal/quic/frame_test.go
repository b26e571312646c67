package quic

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/cryptobyte"
)

func TestReadFrame(t *testing.T) {
	tests := []struct {
		name    string
		b       []byte
		want    Frame
		n       int
		wantErr string
	}{
		{"padding run", []byte{0, 0, 0, 1}, Frame{Type: FramePadding}, 3, ""},
		{"ping", []byte{1, 0}, Frame{Type: FramePing}, 1, ""},
		{"ack", []byte{2, 5, 0, 0, 5, 6}, Frame{Type: FrameAck}, 5, ""},
		{"ack with ranges", []byte{2, 20, 0, 2, 1, 3, 4, 1, 2}, Frame{Type: FrameAck}, 9, ""},
		{"ack to packet 0", []byte{2, 10, 0, 1, 2, 5, 1}, Frame{Type: FrameAck}, 7, ""},
		{"ack ecn", []byte{3, 1, 0, 0, 1, 7, 8, 0x40, 9}, Frame{Type: FrameAckECN}, 9, ""},
		{"crypto", cat(cryptoFrame(300, []byte("hello")), []byte{0}),
			Frame{Type: FrameCrypto, Offset: 300, Data: []byte("hello")}, 9, ""},
		{"crypto, 8-byte offset", []byte{6, 0xc0, 0, 0, 0, 0, 0, 0, 1, 1, 'x'},
			Frame{Type: FrameCrypto, Offset: 1, Data: []byte("x")}, 11, ""},
		{"connection close", closeFrame(0x0a, "bye"),
			Frame{Type: FrameConnectionClose, ErrorCode: 0x0a, Data: []byte("bye")}, 7, ""},

		{"empty", nil, Frame{}, 0, "empty payload"},
		{"truncated type", []byte{0x40}, Frame{}, 0, "truncated frame type"},
		{"ping in two bytes", []byte{0x40, 0x01}, Frame{}, 0, "2-byte type"},
		{"stream", []byte{0x08, 0, 'x'}, Frame{}, 0, "FrameType(0x8) in an Initial"},
		{"application close", []byte{0x1d, 0, 0}, Frame{}, 0, "FrameType(0x1d) in an Initial"},
		{"handshake_done", []byte{0x1e}, Frame{}, 0, "in an Initial"},
		{"new_token", []byte{0x07, 1, 'x'}, Frame{}, 0, "in an Initial"},
		{"ack truncated", []byte{2, 5, 0}, Frame{}, 0, "malformed ACK"},
		{"ack first range below 0", []byte{2, 5, 0, 0, 6}, Frame{}, 0, "malformed ACK"},
		{"ack gap below 0", []byte{2, 5, 0, 1, 2, 2, 0}, Frame{}, 0, "malformed ACK"},
		{"ack range below 0", []byte{2, 10, 0, 1, 2, 5, 2}, Frame{}, 0, "malformed ACK"},
		{"ack huge range count", []byte{2, 10, 0, 0xbf, 0xff, 0xff, 0xff, 0, 1, 1}, Frame{}, 0, "malformed ACK"},
		{"ack ecn without counts", []byte{3, 1, 0, 0, 1, 7}, Frame{}, 0, "malformed ACK_ECN"},
		{"crypto data truncated", cryptoFrame(0, []byte("hello"))[:5], Frame{}, 0, "malformed CRYPTO"},
		{"crypto length varint truncated", []byte{6, 0, 0x80, 0}, Frame{}, 0, "malformed CRYPTO"},
		{"crypto past 2^62-1", []byte{6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 'x'}, Frame{}, 0, "malformed CRYPTO"},
		{"close reason truncated", closeFrame(1, "bye")[:5], Frame{}, 0, "malformed CONNECTION_CLOSE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, n, err := ReadFrame(tt.b)
			if (err == nil) != (tt.wantErr == "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ReadFrame(%x) error = %v, want one containing %q", tt.b, err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, f); diff != "" || n != tt.n {
				t.Errorf("ReadFrame(%x) = %d bytes, want %d; frame mismatch (-want +got):\n%s", tt.b, n, tt.n, diff)
			}
		})
	}
}

func TestVarint(t *testing.T) {
	for _, v := range []uint64{0, 63, 64, 16383, 16384, 1<<30 - 1, 1 << 30, maxVarint, 151288809941952652, 494878333, 15293, 37} {
		enc := appendVarint(nil, v)
		if len(enc) != varintLen(v) {
			t.Errorf("appendVarint(%d) = %x, %d bytes, want %d", v, enc, len(enc), varintLen(v))
		}
		s := enc
		var got uint64
		if !readVarint((*cryptobyte.String)(&s), &got) || got != v || len(s) != 0 {
			t.Errorf("readVarint(%x) = %d, want %d", enc, got, v)
		}
	}
	// RFC 9000 §A.1: the examples, in their encodings (the last one not minimal).
	for enc, want := range map[string]uint64{
		"c2197c5eff14e88c": 151288809941952652, "9d7f3e7d": 494878333, "7bbd": 15293, "25": 37, "4025": 37,
	} {
		s := unhex(t, enc)
		var got uint64
		if !readVarint((*cryptobyte.String)(&s), &got) || got != want {
			t.Errorf("readVarint(%s) = %d, want %d", enc, got, want)
		}
	}
	if enc := appendVarintN(nil, 37, 2); !bytes.Equal(enc, []byte{0x40, 0x25}) {
		t.Errorf("appendVarintN(37, 2) = %x, want 4025", enc)
	}
}
