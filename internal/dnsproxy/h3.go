package dnsproxy

import (
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// StripH3 removes HTTP/3 from the alpn SvcParam (RFC 9460 §7.1) of every
// HTTPS and SVCB record of m, in all sections: the id "h3" and its drafts
// ("h3-29", ...). It returns how many ids it removed. A browser that reads
// h3 in a site's HTTPS record starts with QUIC over UDP; without it the
// browser starts with TCP, where egressd reads the name as usual, and only
// an Alt-Svc header from the site itself (which egressd cannot see inside
// TLS) still offers HTTP/3.
//
// When no id is left the alpn parameter goes, and with it no-default-alpn,
// which needs an alpn beside it (§7.1.1), and the alpn key in mandatory
// (§8; a client ignores a record missing a mandatory key): the record then
// offers the protocol's default, http/1.1.
func StripH3(m *dns.Msg) int {
	n := 0
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if s := svcb(rr); s != nil {
				n += stripH3(s)
			}
		}
	}
	return n
}

func stripH3(s *dns.SVCB) int {
	n := 0
	empty := false
	for _, kv := range s.Value {
		a, ok := kv.(*dns.SVCBAlpn)
		if !ok {
			continue
		}
		kept := slices.DeleteFunc(slices.Clone(a.Alpn), isH3)
		n += len(a.Alpn) - len(kept)
		a.Alpn, empty = kept, len(kept) == 0
	}
	if !empty {
		return n
	}
	s.Value = slices.DeleteFunc(s.Value, func(kv dns.SVCBKeyValue) bool {
		switch kv.Key() {
		case dns.SVCB_ALPN, dns.SVCB_NO_DEFAULT_ALPN:
			return true
		case dns.SVCB_MANDATORY:
			m := kv.(*dns.SVCBMandatory)
			m.Code = slices.DeleteFunc(m.Code, func(k dns.SVCBKey) bool {
				return k == dns.SVCB_ALPN || k == dns.SVCB_NO_DEFAULT_ALPN
			})
			return len(m.Code) == 0
		}
		return false
	})
	return n
}

// isH3 reports whether an ALPN id names HTTP/3: "h3" (RFC 9114 §3.1) or
// one of its drafts, "h3-NN".
func isH3(id string) bool { return id == "h3" || strings.HasPrefix(id, "h3-") }
