package dnsproxy

import (
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	updial "github.com/egressd/egressd/internal/upstream"
)

// Address is one address an answer gave for the question's name, directly
// or through CNAMEs, with its TTL.
type Address struct {
	IP  netip.Addr
	TTL time.Duration
}

// Addresses returns the A and AAAA records of m's answer section that
// belong to qname: owned by qname itself or by a name its CNAME chain
// leads to. Records for other owners (an upstream stuffing unrelated
// names into the answer) are ignored, so a client cannot be given a
// memory for a name it did not ask about.
func Addresses(m *dns.Msg, qname string) []Address {
	return addressesIn(m, updial.Chain(m, qname))
}

// addressesIn is Addresses for the owners in chain (upstream.Chain).
func addressesIn(m *dns.Msg, chain map[string]bool) []Address {
	var out []Address
	for _, rr := range m.Answer {
		h := rr.Header()
		if !chain[strings.ToLower(h.Name)] || h.Class != dns.ClassINET {
			continue
		}
		if ip, ok := updial.RecordAddr(rr); ok {
			out = append(out, Address{IP: ip, TTL: time.Duration(h.Ttl) * time.Second})
		}
	}
	return out
}

// StripECH removes the ech SvcParam (RFC 9460 §14.3.2, key 5) from every
// HTTPS and SVCB record of m, in all sections, and returns how many it
// removed. Without it a client that supports ECH encrypts the real server
// name and shows only the provider's public name, which the policy cannot
// see past; with it the client falls back to a ClientHello with the real
// name in the clear (RFC 9849 §6.1.3: no ECH configuration, no ECH).
func StripECH(m *dns.Msg) int {
	n := 0
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			s := svcb(rr)
			if s == nil {
				continue
			}
			kept := s.Value[:0]
			for _, kv := range s.Value {
				if kv.Key() == dns.SVCB_ECHCONFIG {
					n++
					continue
				}
				kept = append(kept, kv)
			}
			s.Value = kept
		}
	}
	return n
}
