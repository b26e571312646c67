package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// maxDialAttempts bounds how many of a name's DNS answers one connection
// tries before it gives up.
const maxDialAttempts = 3

// dialVerdict connects to v.dst with dial. When that fails and v.dst is the
// first of a name's DNS answers, it tries the next answers in their DNS
// order (IPv4 before IPv6), as a client resolving the name itself would:
// one server of several being down, or a family this host cannot reach,
// should not fail every connection to the name. Only answers the policy
// decides alike are tried (the same action by the same rule; a rule's
// destinations may tell the addresses apart), at most maxDialAttempts
// addresses in all, within the one connect timeout: each attempt gets an
// equal share of what is left, so a refused address leaves its share to
// the next one.
//
// v.dst becomes the address connected to, and v.Reason says which ones
// failed before it. On failure the error is the last attempt's, and
// v.Reason names the earlier ones.
func dialVerdict[T any](ctx context.Context, v *verdict, timeout time.Duration, dial func(context.Context, netip.AddrPort, time.Duration) (T, error)) (T, error) {
	if len(v.answers) < 2 {
		return dial(ctx, v.dst, timeout) // no other address: the whole timeout
	}
	deadline := time.Now().Add(timeout)
	left := min(len(v.answers), maxDialAttempts) // attempts still planned, this one included
	next := 1                                    // v.answers[0] is v.dst
	for {
		share := time.Until(deadline) / time.Duration(left)
		c, err := dial(ctx, v.dst, share)
		if err == nil || ctx.Err() != nil {
			return c, err
		}
		left--
		alt, ok := v.nextAnswer(&next)
		if !ok || left == 0 || time.Until(deadline) <= 0 {
			return c, err
		}
		v.Reason += fmt.Sprintf("; %s failed (%s), trying the next answer %s", v.dst, dialCause(err), alt)
		v.dst = alt
	}
}

// nextAnswer is the next of v's answers from *i on that the policy decides
// as it decided v.dst.
func (v *verdict) nextAnswer(i *int) (netip.AddrPort, bool) {
	for ; *i < len(v.answers); *i++ {
		in := v.in
		in.Dst = v.answers[*i]
		d := v.pol.Decide(in)
		if d.Action == v.Action && d.Rule == v.Rule {
			a := v.answers[*i]
			*i++
			return netip.AddrPortFrom(a, v.dst.Port()), true
		}
	}
	return netip.AddrPort{}, false
}

// dialCause is the innermost error of a failed dial, without the
// "dial tcp ADDR:" prefix the log line already says.
func dialCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}
