package fqdn

import (
	"errors"
	"net/netip"
	"strings"
)

// ErrOddAddress is returned for a host that inet_aton or a browser would
// read as an IPv4 address but that is not written as four decimal octets
// ("127.1", "0x7f.0.0.1", "017.0.0.1", "2130706433"): egressd neither
// guesses what such a spelling means nor treats it as a name.
var ErrOddAddress = errors.New("not a name and not a dotted-decimal IPv4 address; write the address as four decimal numbers")

// ParseHost reads the host a client asks an explicit proxy for (the host of
// a CONNECT authority, an absolute URI or a SOCKS5 domain). It returns either
// the normalised name or the address, never both:
//   - "198.51.100.7", "[2001:db8::1]" and "2001:db8::1" are addresses
//     (IPv4-mapped IPv6 unmapped, so the policy sees one spelling);
//   - an address with a zone ("fe80::1%eth0") is refused: a zone names an
//     interface of egressd's host, not a destination;
//   - odd IPv4 spellings are refused with ErrOddAddress;
//   - anything else must be an FQDN (see Normalize).
func ParseHost(s string) (name string, addr netip.Addr, err error) {
	if inner, ok := strings.CutPrefix(s, "["); ok {
		inner, ok = strings.CutSuffix(inner, "]")
		a, err := netip.ParseAddr(inner)
		if !ok || err != nil || !a.Is6() {
			return "", netip.Addr{}, errors.New("invalid bracketed IPv6 address")
		}
		s = inner
	}
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return "", netip.Addr{}, errors.New("an IPv6 address with a zone is not a destination")
		}
		return "", a.Unmap(), nil
	}
	n, problem := normalize(s)
	switch problem {
	case "":
		return n, netip.Addr{}, nil
	case problemIP:
		return "", netip.Addr{}, ErrOddAddress
	}
	return "", netip.Addr{}, errors.New("invalid host name: " + problem)
}
