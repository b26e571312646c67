package quic

import (
	"bytes"
	"strings"
	"testing"
)

// TestAppendClose opens the deny packet with the server Initial keys, as the
// client does, and reads its frame.
func TestAppendClose(t *testing.T) {
	const reason = "access denied by egress policy"
	tests := []struct {
		name       string
		v          Version
		dcid, scid []byte
	}{
		{"v1", Version1, rfcDCID, []byte{0xf0, 0x67}},
		{"v2", Version2, rfcDCID, []byte{0xf0, 0x67}},
		{"empty client SCID, as Chromium sends", Version1, rfcDCID, nil},
		{"20-byte IDs", Version2, bytes.Repeat([]byte{7}, 20), bytes.Repeat([]byte{9}, 20)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt, err := AppendClose([]byte("prefix"), tt.v, tt.dcid, tt.scid, CodeAccessDenied, reason)
			if err != nil || !bytes.HasPrefix(pkt, []byte("prefix")) {
				t.Fatalf("AppendClose = %q, %v", pkt, err)
			}
			pkt = pkt[len("prefix"):]
			pkts, err := ParseDatagram(pkt, nil)
			if err != nil || len(pkts) != 1 {
				t.Fatalf("ParseDatagram = %d packets, %v", len(pkts), err)
			}
			p := pkts[0]
			if p.Type != Initial || p.Version != tt.v || !bytes.Equal(p.DCID, tt.scid) || !bytes.Equal(p.SCID, tt.dcid) || len(p.Token) != 0 {
				t.Fatalf("packet = %v %v DCID %x SCID %x token %x; want Initial %v DCID %x SCID %x, no token",
					p.Type, p.Version, p.DCID, p.SCID, p.Token, tt.v, tt.scid, tt.dcid)
			}
			if _, _, err := mustKeys(t)(ClientInitialKeys(tt.v, tt.dcid)).Open(nil, &p, -1); err == nil {
				t.Error("the client keys opened the server's packet")
			}
			payload, pn, err := mustKeys(t)(ServerInitialKeys(tt.v, tt.dcid)).Open(nil, &p, -1)
			if err != nil || pn != 0 {
				t.Fatalf("Open with the server keys = pn %d, %v; want 0, nil", pn, err)
			}
			f, n, err := ReadFrame(payload)
			if err != nil || n != len(payload) || f.Type != FrameConnectionClose ||
				f.ErrorCode != 0x0131 || f.CloseFrameType != uint64(FrameCrypto) || string(f.Data) != reason {
				t.Errorf("frame = %+v, %d of %d bytes, %v; want CONNECTION_CLOSE 0x131 for CRYPTO, %q", f, n, len(payload), err, reason)
			}
			if len(pkt) > 120 {
				t.Errorf("packet of %d bytes, want a small one", len(pkt))
			}
		})
	}
}

// TestAppendCloseShort checks the padding the header protection sample
// needs, with the shortest frame AppendClose can build.
func TestAppendCloseShort(t *testing.T) {
	pkt, err := AppendClose(nil, Version1, rfcDCID, nil, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	p := mustParse(t, pkt)
	payload, _, err := mustKeys(t)(ServerInitialKeys(Version1, rfcDCID)).Open(nil, p, -1)
	if err != nil {
		t.Fatal(err)
	}
	if f, _, err := ReadFrame(payload); err != nil || f.Type != FrameConnectionClose || f.ErrorCode != 0 {
		t.Errorf("ReadFrame = %+v, %v", f, err)
	}
}

func TestAppendCloseErrors(t *testing.T) {
	tests := []struct {
		name       string
		v          Version
		dcid, scid []byte
		code       uint64
		reason     string
		wantErr    string
	}{
		{"unknown version", 0xff00001d, rfcDCID, nil, CodeAccessDenied, "", "unknown version"},
		{"long DCID", Version1, make([]byte, 21), nil, CodeAccessDenied, "", "over 20 bytes"},
		{"long SCID", Version1, rfcDCID, make([]byte, 21), CodeAccessDenied, "", "over 20 bytes"},
		{"code too big", Version1, rfcDCID, nil, 1 << 62, "", "over 2^62-1"},
		{"reason too long", Version1, rfcDCID, nil, CodeAccessDenied, strings.Repeat("x", 1200), "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := AppendClose([]byte("kept"), tt.v, tt.dcid, tt.scid, tt.code, tt.reason)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || string(out) != "kept" {
				t.Errorf("AppendClose = %q, %v; want %q, error containing %q", out, err, "kept", tt.wantErr)
			}
		})
	}
	var a Assembler
	if _, err := a.AppendClose(nil, CodeAccessDenied, ""); err == nil {
		t.Error("Assembler.AppendClose before any packet succeeded")
	}
}

// TestAssemblerAppendClose answers the flow the Assembler saw: the packet
// goes to the client's SCID and opens with the keys of its DCID.
func TestAssemblerAppendClose(t *testing.T) {
	var a Assembler
	if st, err := a.AddDatagram(loadHex(t, "rfc9369-a2-client-initial")); st != Complete || err != nil {
		t.Fatalf("AddDatagram = %v, %v", st, err)
	}
	if a.Version() != Version2 || !bytes.Equal(a.DCID(), rfcDCID) || len(a.SCID()) != 0 {
		t.Fatalf("flow = %v %x %x", a.Version(), a.DCID(), a.SCID())
	}
	pkt, err := a.AppendClose(nil, CodeAccessDenied, "denied")
	if err != nil {
		t.Fatal(err)
	}
	p := mustParse(t, pkt)
	if _, _, err := mustKeys(t)(ServerInitialKeys(Version2, rfcDCID)).Open(nil, p, -1); err != nil || len(p.DCID) != 0 {
		t.Errorf("Open = %v, DCID %x; want nil, empty", err, p.DCID)
	}
}
