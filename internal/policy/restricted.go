package policy

import "net/netip"

// restricted lists the ranges egressd never dials unless an allow rule's
// destinations name them: a name on the allow list must not become a way to
// reach the gateway's own host, its private network or the cloud metadata
// service by resolving (or being made to resolve) to such an address.
var restricted = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),          // "this network"; 0.0.0.0 reaches localhost on Linux
	netip.MustParsePrefix("10.0.0.0/8"),         // private (RFC 1918)
	netip.MustParsePrefix("100.64.0.0/10"),      // carrier-grade NAT (RFC 6598)
	netip.MustParsePrefix("127.0.0.0/8"),        // loopback
	netip.MustParsePrefix("169.254.0.0/16"),     // link-local, cloud metadata (169.254.169.254)
	netip.MustParsePrefix("172.16.0.0/12"),      // private (RFC 1918)
	netip.MustParsePrefix("192.168.0.0/16"),     // private (RFC 1918)
	netip.MustParsePrefix("224.0.0.0/4"),        // multicast
	netip.MustParsePrefix("255.255.255.255/32"), // broadcast
	netip.MustParsePrefix("::/128"),             // unspecified
	netip.MustParsePrefix("::1/128"),            // loopback
	netip.MustParsePrefix("fc00::/7"),           // unique local
	netip.MustParsePrefix("fe80::/10"),          // link-local
	netip.MustParsePrefix("ff00::/8"),           // multicast
}

// nat64 is the well-known NAT64 prefix (RFC 6052): on a network with NAT64,
// 64:ff9b::a9fe:a9fe reaches 169.254.169.254, so the embedded IPv4 address
// is what is checked.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// Restricted reports whether egressd must not dial addr unless an allow
// rule's destinations cover it (see the ranges above). IPv4-mapped IPv6
// addresses are unmapped first, so ::ffff:169.254.169.254 is restricted, and
// so is an IPv4 address embedded in the NAT64 prefix. An invalid address is
// restricted: there is nothing safe to dial.
func Restricted(addr netip.Addr) bool {
	if !addr.IsValid() {
		return true
	}
	addr = plain(addr)
	if nat64.Contains(addr) {
		b := addr.As16()
		addr = netip.AddrFrom4([4]byte(b[12:]))
	}
	return contains(restricted, addr)
}

// Permits reports whether the decision lets egressd dial addr: the action is
// allow, and addr is not Restricted or is covered by the deciding rule's
// destinations. An allow by name alone ("github.com") therefore never
// reaches 127.0.0.1, whatever the name resolves to.
func (d Decision) Permits(addr netip.Addr) bool {
	if d.Action != Allow || !addr.IsValid() {
		return false
	}
	return !Restricted(addr) || contains(d.Destinations, plain(addr))
}
