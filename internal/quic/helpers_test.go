package quic

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// unhex decodes hex digits, ignoring spaces, as RFC examples print them.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatalf("unhex(%q): %v", s, err)
	}
	return b
}

// loadHex reads testdata/NAME.hex: '#' lines are notes, the rest hex digits.
func loadHex(t testing.TB, name string) []byte {
	t.Helper()
	text, err := os.ReadFile(filepath.Join("testdata", name+".hex"))
	if err != nil {
		t.Fatal(err)
	}
	var digits strings.Builder
	for line := range strings.Lines(string(text)) {
		if !strings.HasPrefix(line, "#") {
			digits.WriteString(strings.TrimSpace(line))
		}
	}
	return unhex(t, digits.String())
}

// quicHello returns the ClientHello handshake message that a crypto/tls QUIC
// client (the TLS stack of quic-go) writes at the Initial level for
// serverName: a real hello, with crypto/tls's default post-quantum key
// share unless curves says otherwise.
func quicHello(t testing.TB, serverName string, curves ...tls.CurveID) []byte {
	t.Helper()
	// Any well-formed transport parameters: initial_max_data = 1 MiB.
	return quicHelloParams(t, serverName, []byte{0x04, 0x04, 0x80, 0x10, 0x00, 0x00}, curves...)
}

// quicHelloParams is quicHello with the given transport parameters (RFC
// 9000 §18), for a hello that a real server will accept.
func quicHelloParams(t testing.TB, serverName string, params []byte, curves ...tls.CurveID) []byte {
	t.Helper()
	conn := tls.QUICClient(&tls.QUICConfig{TLSConfig: &tls.Config{
		ServerName:       serverName,
		NextProtos:       []string{"h3"},
		MinVersion:       tls.VersionTLS13,
		CurvePreferences: curves,
	}})
	conn.SetTransportParameters(params)
	if err := conn.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var hello []byte
	for {
		switch e := conn.NextEvent(); e.Kind {
		case tls.QUICWriteData:
			if e.Level != tls.QUICEncryptionLevelInitial {
				t.Fatalf("crypto/tls wrote at level %v before any answer", e.Level)
			}
			hello = append(hello, e.Data...)
		case tls.QUICNoEvent:
			return hello
		}
	}
}

// client builds the Initial packets of one client connection, as a QUIC
// stack would, with this package's own sealing (which the RFC vectors
// check byte for byte).
type client struct {
	v          Version
	dcid, scid []byte
	keys       *Keys
	pn         uint64
}

func newClient(t testing.TB, v Version, dcid, scid []byte) *client {
	t.Helper()
	keys, err := ClientInitialKeys(v, dcid)
	if err != nil {
		t.Fatal(err)
	}
	return &client{v: v, dcid: dcid, scid: scid, keys: keys}
}

// packet returns the next Initial packet carrying frames, with a packet
// number of pnLen bytes, padded with PADDING frames to a packet of padTo
// bytes if it is shorter.
func (c *client) packet(frames []byte, pnLen, padTo int) []byte {
	overhead := 1 + 4 + 1 + len(c.dcid) + 1 + len(c.scid) + 1 + 2 + pnLen + tagLen
	if n := padTo - overhead - len(frames); n > 0 {
		frames = append(frames, make([]byte, n)...)
	}
	for pnLen+len(frames) < maxPNLen {
		frames = append(frames, 0)
	}
	pkt := c.keys.appendInitial(nil, c.v, c.dcid, c.scid, nil, c.pn, pnLen, frames)
	c.pn++
	return pkt
}

func cryptoFrame(off uint64, data []byte) []byte {
	b := append([]byte{byte(FrameCrypto)}, appendVarint(nil, off)...)
	b = appendVarint(b, uint64(len(data)))
	return append(b, data...)
}

func closeFrame(code uint64, reason string) []byte {
	b := appendVarint([]byte{byte(FrameConnectionClose)}, code)
	b = appendVarint(b, 0)
	b = appendVarint(b, uint64(len(reason)))
	return append(b, reason...)
}

func cat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}
