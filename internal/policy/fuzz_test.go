package policy

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// FuzzRestricted checks Restricted against a second reading of the IPv6
// schemes that embed an IPv4 address, written on the two 64-bit halves of
// the address rather than on prefixes and bytes: an IPv6 address whose
// embedded IPv4 address (by any scheme) is restricted must be restricted,
// and a restricted IPv6 address outside the IPv6 ranges must embed a
// restricted IPv4 address (the check looks through embeddings, it does not
// invent them). The seeds in testdata/fuzz/FuzzRestricted are one address
// of each scheme.
//
//	go test -run=NONE -fuzz=FuzzRestricted -fuzztime=60s ./internal/policy/
func FuzzRestricted(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		var raw [16]byte
		copy(raw[:], b)
		a := netip.AddrFrom16(raw)
		got := Restricted(a)
		for _, v := range embeddedByHalves(raw) {
			if Restricted(v) && !got {
				t.Fatalf("Restricted(%v) = false, but it embeds restricted %v", a, v)
			}
		}
		if !got || inV6Ranges(a) {
			return
		}
		for _, v := range embeddedByHalves(raw) {
			if Restricted(v) {
				return
			}
		}
		t.Fatalf("Restricted(%v) = true, but it is in no IPv6 range and embeds no restricted IPv4 address (%v)", a, embeddedByHalves(raw))
	})
}

// embeddedByHalves is every IPv4 address raw carries: IPv4-mapped,
// IPv4-compatible, IPv4-translated, NAT64 (well-known; local-use read as a
// /48 and, unless it reads 0.0.0.0, as a /96), 6to4, Teredo (server, and
// client with its bits inverted) and ISATAP.
func embeddedByHalves(raw [16]byte) []netip.Addr {
	hi, lo := binary.BigEndian.Uint64(raw[:8]), binary.BigEndian.Uint64(raw[8:])
	var out []uint32
	switch {
	case hi == 0 && (lo>>32 == 0 || lo>>32 == 0xffff || lo>>32 == 0xffff0000):
		out = append(out, uint32(lo))
	case hi == 0x0064_ff9b_0000_0000 && lo>>32 == 0:
		out = append(out, uint32(lo))
	case hi>>16 == 0x0064_ff9b_0001:
		out = append(out, uint32(hi&0xffff)<<16|uint32(lo>>40&0xffff))
		if uint32(lo) != 0 {
			out = append(out, uint32(lo))
		}
	case hi>>48 == 0x2002:
		out = append(out, uint32(hi>>16))
	case hi>>32 == 0x2001_0000:
		out = append(out, uint32(hi), ^uint32(lo))
	}
	if lo>>32&^0x0300_0000 == 0x0000_5efe {
		out = append(out, uint32(lo))
	}
	addrs := make([]netip.Addr, len(out))
	for i, v := range out {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], v)
		addrs[i] = netip.AddrFrom4(b)
	}
	return addrs
}

// inV6Ranges reports whether a is in one of the IPv6 ranges restricted as
// such, not for an address they embed.
func inV6Ranges(a netip.Addr) bool {
	for _, s := range []string{"::/128", "::1/128", "100::/64", "fc00::/7", "fe80::/10", "ff00::/8"} {
		if netip.MustParsePrefix(s).Contains(a) {
			return true
		}
	}
	return false
}
