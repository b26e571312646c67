package policy

import (
	"fmt"
	"net/netip"
)

// DecideDial decides a connection that egressd would dial at in.Dst and
// applies destination safety to it: every address in answers (the name's
// DNS answers, in.Dst among them; none means just in.Dst) must be outside
// the restricted ranges or covered by the deciding rule's destinations. A
// name whose answers mix public and restricted addresses is refused as a
// whole, so it cannot slip through on its public half.
//
// Safety binds in report-only mode too: a refusal for a restricted address
// is Hard, and so is any deny whose address is restricted and not covered
// by the rule — report-only relaxes policy, never reaches metadata.
//
// The gateway and `egressd explain` both decide through this function, so
// they cannot disagree.
func (p *Policy) DecideDial(in Input, answers ...netip.Addr) Decision {
	resolved := len(answers) > 0
	if !resolved {
		answers = []netip.Addr{in.Dst}
	}
	d := p.Decide(in)
	for _, a := range answers {
		if !Restricted(a) || contains(d.Destinations, plain(a)) {
			continue
		}
		d.Hard = true
		if d.Action == Allow {
			d.Action = Deny
			if resolved {
				d.Reason = fmt.Sprintf("%s resolves to restricted address %s, not covered by rule %q destinations", in.FQDN, describe(a), d.Rule)
			} else {
				d.Reason = fmt.Sprintf("destination %s is restricted, not covered by rule %q destinations", describe(a), d.Rule)
			}
		}
		return d
	}
	return d
}
