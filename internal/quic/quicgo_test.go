package quic

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/clienthello"
	"github.com/quic-go/quic-go"
)

// TestQuicGoDenied plays the gateway against a real QUIC client, quic-go:
// the Assembler reads the name from the client's Initial datagrams (its
// post-quantum hello spans two packets), and the deny packet makes the
// client fail at once with the remote CRYPTO_ERROR access_denied rather
// than time out.
func TestQuicGoDenied(t *testing.T) {
	for _, v := range []quic.Version{quic.Version1, quic.Version2} {
		t.Run(Version(v).String(), func(t *testing.T) {
			pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			dialed := make(chan error, 1)
			go func() {
				conn, err := quic.DialAddr(ctx, pc.LocalAddr().String(),
					&tls.Config{ServerName: "denied.example", NextProtos: []string{"h3"}},
					&quic.Config{Versions: []quic.Version{v}})
				if err == nil {
					conn.CloseWithError(0, "")
				}
				dialed <- err
			}()

			var a Assembler
			buf := make([]byte, 64<<10)
			var client *net.UDPAddr
			datagrams := 0
			for a.Status() == NeedMore {
				pc.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, addr, err := pc.ReadFromUDP(buf)
				if err != nil {
					t.Fatalf("after %d datagrams: %v", datagrams, err)
				}
				client, datagrams = addr, datagrams+1
				if st, err := a.AddDatagram(buf[:n]); err != nil {
					t.Fatalf("datagram %d (%d bytes): AddDatagram = %v, %v", datagrams, n, st, err)
				}
			}
			if a.Status() != Complete {
				t.Fatalf("status %v after %d datagrams", a.Status(), datagrams)
			}
			var info clienthello.Info
			if !clienthello.Parse(a.Hello(), &info) || string(info.ServerName) != "denied.example" {
				t.Fatalf("clienthello.Parse: server name %q, want denied.example", info.ServerName)
			}
			t.Logf("%v: %d-byte hello in %d datagrams, ALPN %q", a.Version(), len(a.Hello()), datagrams, info.ALPN.Strings())

			pkt, err := a.AppendClose(nil, CodeAccessDenied, "access denied by egress policy")
			if err != nil {
				t.Fatal(err)
			}
			sent := time.Now()
			if _, err := pc.WriteToUDP(pkt, client); err != nil {
				t.Fatal(err)
			}
			err = <-dialed
			elapsed := time.Since(sent)
			var te *quic.TransportError
			if !errors.As(err, &te) || !te.Remote || te.ErrorCode != CodeAccessDenied {
				t.Fatalf("DialAddr error = %v; want the remote transport error 0x131", err)
			}
			if elapsed > time.Second {
				t.Errorf("the client took %v to give up, want under a second", elapsed)
			}
			t.Logf("client error after %v: %v", elapsed.Round(time.Microsecond), err)
		})
	}
}

// TestQuicGoServer sends client Initial packets built here to a real QUIC
// server, quic-go, and reads what it answers, as the gateway sees a
// server's datagrams when it relays an allowed flow: its Initial with the
// ServerHello coalesced with Handshake packets, a Retry when it validates
// addresses, a Version Negotiation packet for a version it lacks.
func TestQuicGoServer(t *testing.T) {
	dcid, scid := []byte("client-dcid-0001"), []byte("cscid")
	// initial_source_connection_id (RFC 9000 §7.3), which servers require.
	params := append([]byte{0x0f, byte(len(scid))}, scid...)
	hello := cryptoFrame(0, quicHelloParams(t, "server.example", params, tls.X25519))
	for _, v := range []Version{Version1, Version2} {
		t.Run(v.String(), func(t *testing.T) {
			t.Run("handshake", func(t *testing.T) {
				answer := askQuicGo(t, false, newClient(t, v, dcid, scid).packet(hello, 2, 1200))
				pkts, err := ParseDatagram(answer, nil)
				if err != nil || len(pkts) < 2 || pkts[0].Type != Initial || pkts[1].Type != Handshake {
					t.Fatalf("first answer = %v, %v; want an Initial and a Handshake packet coalesced", types(pkts), err)
				}
				p := pkts[0]
				if p.Version != v || !slices.Equal(p.DCID, scid) {
					t.Errorf("server Initial %v DCID %q, want %v %q", p.Version, p.DCID, v, scid)
				}
				payload, _, err := mustKeys(t)(ServerInitialKeys(v, dcid)).Open(nil, &p, -1)
				if err != nil {
					t.Fatalf("Open(server Initial) = %v", err)
				}
				var sawHello bool
				for rest := payload; len(rest) > 0; {
					f, n, err := ReadFrame(rest)
					if err != nil {
						t.Fatalf("ReadFrame: %v", err)
					}
					sawHello = sawHello || f.Type == FrameCrypto && f.Offset == 0 && len(f.Data) > 0 && f.Data[0] == 2
					rest = rest[n:]
				}
				if !sawHello {
					t.Error("no ServerHello in the server's Initial packet")
				}
			})
			t.Run("retry", func(t *testing.T) {
				answer := askQuicGo(t, true, newClient(t, v, dcid, scid).packet(hello, 2, 1200))
				pkts, err := ParseDatagram(answer, nil)
				if err != nil || len(pkts) != 1 || pkts[0].Type != Retry || pkts[0].Version != v ||
					!slices.Equal(pkts[0].DCID, scid) || len(pkts[0].Token) == 0 {
					t.Fatalf("answer = %v, %v; want a Retry to %q with a token", types(pkts), err, scid)
				}
			})
		})
	}
	t.Run("version negotiation", func(t *testing.T) {
		d := append(longHeader(0xc0, 0x1a2a3a4a, dcid, scid), make([]byte, 1200)...)
		answer := askQuicGo(t, false, d)
		pkts, err := ParseDatagram(answer, nil)
		if err != nil || len(pkts) != 1 || pkts[0].Type != VersionNegotiation || !slices.Equal(pkts[0].DCID, scid) {
			t.Fatalf("answer = %v, %v; want a Version Negotiation packet to %q", types(pkts), err, scid)
		}
		offered := slices.Collect(pkts[0].Versions())
		if !slices.Contains(offered, Version1) || !slices.Contains(offered, Version2) {
			t.Errorf("offered versions %v, want v1 and v2 among them", offered)
		}
	})
}

// askQuicGo sends d to a new quic-go server and returns the first datagram
// it answers with.
func askQuicGo(t *testing.T, retry bool, d []byte) []byte {
	t.Helper()
	server, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: server}
	if retry {
		tr.VerifySourceAddress = func(net.Addr) bool { return true }
	}
	defer tr.Close()
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{selfSigned(t)}, NextProtos: []string{"h3"}},
		&quic.Config{Versions: []quic.Version{quic.Version1, quic.Version2}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	conn, err := net.DialUDP("udp", nil, server.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(d); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64<<10)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no answer from quic-go: %v", err)
	}
	return buf[:n]
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"server.example"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func types(pkts []Packet) []PacketType {
	var out []PacketType
	for _, p := range pkts {
		out = append(out, p.Type)
	}
	return out
}
