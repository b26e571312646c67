package policy

import (
	"fmt"
	"net/netip"
)

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
	netip.MustParsePrefix("168.63.129.16/32"),   // Azure's host endpoint (WireServer): VM agent, DHCP, DNS, health probes
	netip.MustParsePrefix("172.16.0.0/12"),      // private (RFC 1918)
	netip.MustParsePrefix("192.168.0.0/16"),     // private (RFC 1918)
	netip.MustParsePrefix("224.0.0.0/4"),        // multicast
	netip.MustParsePrefix("255.255.255.255/32"), // broadcast
	netip.MustParsePrefix("::/128"),             // unspecified
	netip.MustParsePrefix("::1/128"),            // loopback
	netip.MustParsePrefix("100::/64"),           // discard-only (RFC 6666): nothing there to reach
	netip.MustParsePrefix("fc00::/7"),           // unique local
	netip.MustParsePrefix("fe80::/10"),          // link-local
	netip.MustParsePrefix("fec0::/10"),          // site-local (RFC 3879 deprecated it; still routed where configured)
	netip.MustParsePrefix("ff00::/8"),           // multicast
}

// The IPv6 prefixes that carry an IPv4 address. A translator, relay or
// tunnel on the path turns a connection to such an address into one to the
// IPv4 address inside it, so that address is checked too: on a network with
// NAT64, 64:ff9b::a9fe:a9fe reaches 169.254.169.254. (IPv4-mapped
// ::ffff:a.b.c.d is simply unmapped: a socket dials it as IPv4.)
var (
	v4Compat   = netip.MustParsePrefix("::/96")           // IPv4-compatible ::a.b.c.d (RFC 4291 §2.5.5.1, deprecated)
	siit       = netip.MustParsePrefix("::ffff:0:0:0/96") // IPv4-translated ::ffff:0:a.b.c.d (RFC 2765 §2.1, SIIT)
	nat64      = netip.MustParsePrefix("64:ff9b::/96")    // NAT64 well-known prefix (RFC 6052 §2.1)
	nat64Local = netip.MustParsePrefix("64:ff9b:1::/48")  // NAT64 local-use prefix (RFC 8215)
	sixToFour  = netip.MustParsePrefix("2002::/16")       // 6to4 (RFC 3056 §2)
	teredo     = netip.MustParsePrefix("2001::/32")       // Teredo (RFC 4380 §4)
)

// embedded returns the IPv4 addresses a carries by any scheme above, or by
// an ISATAP interface identifier (RFC 5214 §6.1: ::0:5efe:a.b.c.d or
// ::200:5efe:a.b.c.d in any /64, which an ISATAP router tunnels to
// a.b.c.d); n says how many of out are set. a must be plain (unmapped,
// without a zone). Where a scheme's layout is not certain, every reading a
// translator could make is returned:
//   - the local-use NAT64 prefix may be used as a whole (/48: the address
//     in bytes 6-7 and 9-10, byte 8 being the u-octet, RFC 6052 §2.2) or
//     cut into /96 prefixes for several translators (the address in bytes
//     12-15); both are read, except a /96 reading of 0.0.0.0, which is what
//     the zero suffix of every /48-form address reads as, and which no
//     translator forwards to;
//   - a Teredo address names the Teredo server (bytes 4-7) and, with its
//     bits inverted, the client's NAT (bytes 12-15): either can be made to
//     receive the packets.
func embedded(a netip.Addr) (out [3]netip.Addr, n int) {
	if !a.Is6() {
		return out, 0
	}
	b := a.As16()
	at := func(i, j, k, l int) netip.Addr { return netip.AddrFrom4([4]byte{b[i], b[j], b[k], b[l]}) }
	add := func(v netip.Addr) { out[n] = v; n++ }
	switch {
	case b[0] != 0 && b[0] != 0x20:
		// In none of the prefixes: spare the common case their checks.
	case v4Compat.Contains(a), siit.Contains(a), nat64.Contains(a):
		add(at(12, 13, 14, 15))
	case nat64Local.Contains(a):
		add(at(6, 7, 9, 10))
		if v := at(12, 13, 14, 15); !v.IsUnspecified() {
			add(v)
		}
	case sixToFour.Contains(a):
		add(at(2, 3, 4, 5))
	case teredo.Contains(a):
		add(at(4, 5, 6, 7))
		add(netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]}))
	}
	if b[8]&^0x03 == 0 && b[9] == 0 && b[10] == 0x5e && b[11] == 0xfe {
		add(at(12, 13, 14, 15)) // ISATAP; the u and g bits of byte 8 may be set
	}
	return out, n
}

// Restricted reports whether egressd must not dial addr unless an allow
// rule's destinations cover it (see the ranges above). IPv4-mapped IPv6
// addresses are unmapped and a zone is ignored, so ::ffff:169.254.169.254
// and ::ffff:127.0.0.1%eth0 are restricted. An IPv6 address that embeds an
// IPv4 address (IPv4-compatible, IPv4-translated, NAT64 well-known or
// local-use, 6to4, Teredo server or client, ISATAP) is restricted when the
// embedded address is, whatever the IPv6 prefix itself: 64:ff9b::a9fe:a9fe,
// 2002:a9fe:a9fe::1 and ::ffff:0:7f00:1 are all restricted. An invalid
// address is restricted: there is nothing safe to dial.
func Restricted(addr netip.Addr) bool {
	_, r := restriction(addr)
	return r
}

// restriction is Restricted, and when addr is restricted for an IPv4
// address it embeds, that address.
func restriction(addr netip.Addr) (via netip.Addr, isRestricted bool) {
	if !addr.IsValid() {
		return netip.Addr{}, true
	}
	addr = plain(addr)
	if contains(restricted, addr) {
		return netip.Addr{}, true
	}
	out, n := embedded(addr)
	for _, v := range out[:n] {
		if contains(restricted, v) {
			return v, true
		}
	}
	return netip.Addr{}, false
}

// describe is addr for a log line, with the IPv4 address that made it
// restricted when that was an embedded one.
func describe(addr netip.Addr) string {
	if via, _ := restriction(addr); via.IsValid() {
		return fmt.Sprintf("%s (embedding %s)", addr, via)
	}
	return addr.String()
}

// Permits reports whether the decision lets egressd dial addr: the action is
// allow, and addr is not Restricted or is covered by the deciding rule's
// destinations. An allow by name alone ("github.com") therefore never
// reaches 127.0.0.1, whatever the name resolves to.
//
// Destinations match the address as it is dialled (IPv4-mapped unmapped,
// nothing else looked through): destinations 169.254.0.0/16 do not cover
// 64:ff9b::a9fe:a9fe, which stays restricted; only the restriction looks
// through embeddings, since only it must fail closed. A rule that opens
// such an address names the IPv6 form (64:ff9b::/96).
func (d Decision) Permits(addr netip.Addr) bool {
	if d.Action != Allow || !addr.IsValid() {
		return false
	}
	return !Restricted(addr) || contains(d.Destinations, plain(addr))
}

// Local reports whether addr, as a socket reports a peer, is itself in one
// of the restricted ranges: private, loopback, link-local, CGNAT. It does
// not look through embedded IPv4 addresses as Restricted does. It answers
// "is this peer on our side?" (the DNS forwarder's default clients), where
// looking through would let an internet host that picked a Teredo or 6to4
// address embedding a private IPv4 address pass for a local one.
func Local(addr netip.Addr) bool {
	return addr.IsValid() && contains(restricted, plain(addr))
}
