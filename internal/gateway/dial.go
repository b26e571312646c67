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

// minDialShare is the least time an attempt gets while the connect timeout
// allows it (as Go's net.Dialer does): a lost SYN is sent again after 1 s,
// so an address is not given up before its second SYN had a chance.
const minDialShare = 2 * time.Second

// dialVerdict connects to v.dst with dial. When that fails and v.dst is the
// first of a name's DNS answers, it tries the next answers in their DNS
// order (IPv4 before IPv6), as a client resolving the name itself would:
// one server of several being down, or a family this host cannot reach,
// should not fail every connection to the name. Only answers the policy
// decides alike are tried (the same action by the same rule; a rule's
// destinations may tell the addresses apart), at most maxDialAttempts
// addresses in all, within the one connect timeout: each attempt gets an
// equal share of what is left (at least minDialShare, if that much is
// left), so a refused address leaves its share to the next one.
//
// v.dst becomes the address connected to, and v.Reason names each address
// that failed before it. On failure the error is the first attempt's, the
// preferred address's, as with Go's own dialer; v.Reason names the others'.
func dialVerdict[T any](ctx context.Context, v *verdict, timeout time.Duration, dial func(context.Context, netip.AddrPort, time.Duration) (T, error)) (T, error) {
	var buf [maxDialAttempts]netip.AddrPort
	addrs := v.candidates(buf[:0])
	if len(addrs) < 2 {
		return dial(ctx, v.dst, timeout) // no other address: the whole timeout
	}
	deadline := time.Now().Add(timeout)
	var first error
	for i, a := range addrs {
		left := time.Until(deadline)
		share := dialShare(left, len(addrs)-i)
		if share <= 0 {
			break // 0 would mean no timeout at all to a dialer
		}
		if i > 0 {
			v.Reason += fmt.Sprintf(", trying the next answer %s", a)
		}
		v.dst = a
		c, err := dial(ctx, a, share)
		if err == nil || ctx.Err() != nil {
			return c, err
		}
		if first == nil {
			first = err
		}
		v.Reason += fmt.Sprintf("; %s failed (%s)", a, dialCause(err))
	}
	var zero T
	return zero, first
}

// dialShare is the time an attempt gets of left when n attempts, it
// included, remain: an equal share, but at least minDialShare while left
// allows it.
func dialShare(left time.Duration, n int) time.Duration {
	return max(left/time.Duration(max(n, 1)), min(minDialShare, left))
}

// candidates appends to buf v.dst and, when it is the first of a name's
// answers, the next ones the policy decides as it decided v.dst, up to
// maxDialAttempts addresses in all.
func (v *verdict) candidates(buf []netip.AddrPort) []netip.AddrPort {
	buf = append(buf, v.dst)
	for _, a := range v.answers[min(1, len(v.answers)):] {
		if len(buf) == maxDialAttempts {
			break
		}
		in := v.in
		in.Dst = a
		if d := v.pol.Decide(in); d.Action == v.Action && d.Rule == v.Rule {
			buf = append(buf, netip.AddrPortFrom(a, v.dst.Port()))
		}
	}
	return buf
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
