package quic

import "testing"

// BenchmarkFirstInitial is the cost of a new flow's first datagram: parse
// the 1200-byte RFC 9001 client Initial, derive the client keys from its
// DCID, remove the header protection and decrypt it.
func BenchmarkFirstInitial(b *testing.B) {
	d := loadHex(b, "rfc9001-a2-client-initial")
	pkts := make([]Packet, 0, 4)
	scratch := make([]byte, 0, 2048)
	b.SetBytes(int64(len(d)))
	b.ReportAllocs()
	for b.Loop() {
		pkts, _ = ParseDatagram(d, pkts[:0])
		keys, err := ClientInitialKeys(pkts[0].Version, pkts[0].DCID)
		if err != nil {
			b.Fatal(err)
		}
		if scratch, _, err = keys.Open(scratch[:0], &pkts[0], -1); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpen is the cost of a flow's later Initial packets: the keys
// are derived already.
func BenchmarkOpen(b *testing.B) {
	d := loadHex(b, "rfc9001-a2-client-initial")
	p := mustParse(b, d)
	keys := mustKeys(b)(ClientInitialKeys(Version1, p.DCID))
	scratch := make([]byte, 0, 2048)
	b.SetBytes(int64(len(d)))
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if scratch, _, err = keys.Open(scratch[:0], p, -1); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAssembler is the whole identification of a flow whose hello fits
// one datagram: a new Assembler, the datagram in, the hello out.
func BenchmarkAssembler(b *testing.B) {
	d := loadHex(b, "rfc9001-a2-client-initial")
	b.SetBytes(int64(len(d)))
	b.ReportAllocs()
	for b.Loop() {
		var a Assembler
		if st, err := a.AddDatagram(d); st != Complete {
			b.Fatal(st, err)
		}
	}
}

// BenchmarkAppendClose is the cost of a deny.
func BenchmarkAppendClose(b *testing.B) {
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = AppendClose(buf[:0], Version1, rfcDCID, []byte{1, 2, 3, 4}, CodeAccessDenied, "access denied"); err != nil {
			b.Fatal(err)
		}
	}
}
