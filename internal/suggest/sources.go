package suggest

import (
	"net/netip"
	"slices"
)

// SourceBits are the widest prefixes a rule's sources are widened to, by
// family: the sources seen within one /24 (IPv4) or /64 (IPv6) become the
// smallest prefix holding them all, and sources in different such subnets
// stay apart. 10.0.1.5 and 10.0.1.9 make 10.0.1.0/28; 10.0.1.5 and
// 10.0.2.5 make 10.0.1.5/32 and 10.0.2.5/32. A subnet is usually one
// network segment of like workloads; two subnets are not.
var SourceBits = struct{ V4, V6 int }{V4: 24, V6: 64}

// Covering returns the smallest prefixes holding addrs: for each subnet of
// SourceBits holding some of them, the longest prefix that holds all of
// those. addrs must be sorted and plain (unmapped, no zone); the result is
// sorted.
func Covering(addrs []netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for i := 0; i < len(addrs); {
		bits := SourceBits.V4
		if addrs[i].Is6() {
			bits = SourceBits.V6
		}
		subnet, _ := addrs[i].Prefix(bits)
		j := i + 1
		for j < len(addrs) && subnet.Contains(addrs[j]) {
			j++
		}
		// Sorted: the first and the last of the subnet bound the rest.
		lo, hi := addrs[i], addrs[j-1]
		p := netip.PrefixFrom(lo, lo.BitLen())
		for b := lo.BitLen(); b >= bits; b-- {
			if q, _ := lo.Prefix(b); q.Contains(hi) {
				p = q
				break
			}
		}
		out = append(out, p)
		i = j
	}
	slices.SortFunc(out, comparePrefixes)
	return out
}
