package policy

import "net/netip"

// DecideName decides a connection whose destination address is not known
// yet, because it is a name that egressd would have to resolve. It reports
// whether the address could still change the answer: the decision is an
// allow (the name must be resolved to be dialled), or an allow rule with
// destinations that is tried before the deciding rule may match once the
// address is known. When resolve is false the decision stands whatever the
// name resolves to, and the gateway refuses the connection without a DNS
// query: a name the policy denies never leaves egressd, not even as a
// look-up that an attacker's name server would see (DNS exfiltration).
//
// in.Dst is ignored. Like the DNS filter's MayAllow, it allocates a little
// (the candidate list) and only on the deny path.
func (p *Policy) DecideName(in Input) (d Decision, resolve bool) {
	in.Dst = netip.Addr{}
	d = p.Decide(in)
	if d.Action == Allow {
		return d, true
	}
	limit := d.Index
	if limit < 0 {
		limit = len(p.rules)
	}
	c := conn{src: plain(in.Src), port: in.Port, user: in.User, proto: protocolBit(in.Protocol), ja4: in.JA4}
	for _, i := range p.candidates(in.FQDN) {
		if int(i) >= limit {
			break
		}
		r := &p.rules[i]
		if r.decision.Action != Allow || len(r.destinations) == 0 {
			continue
		}
		// The address is the one field left to learn: every other field
		// must match for the rule to be in play.
		if (len(r.sources) == 0 || contains(r.sources, c.src)) &&
			(len(r.ports) == 0 || inPorts(r.ports, c.port)) &&
			(len(r.users) == 0 || listed(r.users, c.user)) &&
			(r.protocols == 0 || r.protocols&c.proto != 0) &&
			(len(r.ja4) == 0 || listed(r.ja4, c.ja4)) {
			return d, true
		}
	}
	return d, false
}
