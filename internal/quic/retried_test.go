package quic

import "testing"

// TestAssemblerRetried: after a Retry the client's Destination Connection
// ID is the server's choice, often shorter than 8 bytes; Retried accepts it.
func TestAssemblerRetried(t *testing.T) {
	hello := quicHello(t, "retried.example")
	pkt := newClient(t, Version1, []byte{1, 2, 3, 4}, []byte("cscid")).packet(cryptoFrame(0, hello), 2, 1200)
	var strict Assembler
	if st, err := strict.AddDatagram(pkt); st != NeedMore || err == nil {
		t.Errorf("AddDatagram(4-byte DCID) = %v, %v; want NeedMore and an error", st, err)
	}
	retried := Assembler{Retried: true}
	if st, err := retried.AddDatagram(pkt); st != Complete || err != nil {
		t.Errorf("Retried: AddDatagram(4-byte DCID) = %v, %v; want Complete", st, err)
	}
}
