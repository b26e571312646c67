package quictest

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/egressd/egressd/internal/clienthello"
	"github.com/egressd/egressd/internal/quic"
)

// TestInitialsAssemble: internal/quic opens the packets sealed here and
// reassembles the hello, for both versions and any split.
func TestInitialsAssemble(t *testing.T) {
	scid := []byte("cscid")
	hello, err := Hello("split.test", scid)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []quic.Version{quic.Version1, quic.Version2} {
		for seed := range uint64(20) {
			rng := rand.New(rand.NewPCG(seed, 1))
			c, err := NewClient(v, []byte("client-dcid-0001"), scid)
			if err != nil {
				t.Fatal(err)
			}
			n := 1 + int(seed%4)
			ds, err := c.Initials(hello, n, rng)
			if err != nil {
				t.Fatal(err)
			}
			var a quic.Assembler
			for i, d := range ds {
				if len(d) < 1200 {
					t.Errorf("%v seed %d: datagram %d of %d bytes, want at least 1200", v, seed, i, len(d))
				}
				if _, err := a.AddDatagram(d); err != nil {
					t.Fatalf("%v seed %d: AddDatagram(%d) = %v", v, seed, i, err)
				}
			}
			if a.Status() != quic.Complete || !bytes.Equal(a.Hello(), hello) {
				t.Fatalf("%v seed %d, %d packets: status %v, hello equal %v", v, seed, n, a.Status(), bytes.Equal(a.Hello(), hello))
			}
			var info clienthello.Info
			if !clienthello.Parse(a.Hello(), &info) || string(info.ServerName) != "split.test" {
				t.Errorf("server name %q, want split.test", info.ServerName)
			}
		}
	}
}

// TestReadServerInitial reads the deny internal/quic builds.
func TestReadServerInitial(t *testing.T) {
	dcid := []byte("client-dcid-0001")
	pkt, err := quic.AppendClose(nil, quic.Version1, dcid, []byte("cscid"), quic.CodeAccessDenied, "no")
	if err != nil {
		t.Fatal(err)
	}
	frames, err := ReadServerInitial(quic.Version1, dcid, pkt)
	if err != nil || len(frames) == 0 || frames[0].Type != quic.FrameConnectionClose || frames[0].ErrorCode != quic.CodeAccessDenied {
		t.Fatalf("ReadServerInitial = %+v, %v; want a CONNECTION_CLOSE 0x131", frames, err)
	}
}
