// Package policy decides, for one connection, whether egressd lets it through.
//
// The policy is an ordered list of rules; the first rule whose every given
// field matches decides, and when none does the default action decides. A deny
// is data, not an error: Decide returns a Decision saying which rule decided
// and why, so the gateway can refuse in the client's protocol and log the
// reason, and `egressd explain` can print it without touching the network.
//
// Decide runs on every connection, with policies of up to about 100,000 name
// patterns, so Compile indexes the rules by name: a decision costs time in
// proportion to the labels of the name, not to the number of rules, and does
// not allocate.
package policy

import (
	"fmt"
	"net/netip"
)

// Action is what a rule, or the default, does with a connection.
type Action uint8

const (
	Deny Action = iota
	Allow
)

// String returns "deny" or "allow", the words used in the config file.
func (a Action) String() string {
	switch a {
	case Deny:
		return "deny"
	case Allow:
		return "allow"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// PortRange is an inclusive range of destination ports; a single port has Lo == Hi.
type PortRange struct{ Lo, Hi uint16 }

// Rule is one entry of the policy as written. A field left empty is not
// checked; a rule with no field at all matches every connection.
type Rule struct {
	Name   string
	Action Action
	// FQDN holds name patterns as written ("example.com", "*.example.com",
	// "*"); see fqdn.ParsePattern. A rule with FQDN never matches a
	// connection without a name.
	FQDN         []string
	Destinations []netip.Prefix
	Sources      []netip.Prefix
	Ports        []PortRange
	// Users are the proxy users (explicit listeners with authentication)
	// the rule applies to. A rule with Users never matches a connection
	// without an authenticated user: transparent and sni connections, or an
	// explicit listener without users configured.
	Users []string
	// Protocols are protocol names as the gateway classifies connections
	// (see ProtocolNames); a rule with Protocols never matches a connection
	// whose protocol is not known.
	Protocols []string
	// JA4 are client fingerprints (clienthello.JA4), compared exactly: a
	// rule with JA4 matches only TLS connections whose ClientHello was
	// fingerprinted as one of them, so that a name can be allowed only to
	// the client builds expected to use it. It never matches a connection
	// without a fingerprint: not TLS, or decided before the hello (a
	// CONNECT or SOCKS5 request is decided on the request).
	JA4 []string
}

// ProtocolNames are the protocols a rule may list, as the gateway logs them:
// a TLS ClientHello, an HTTP request, an SSH banner, a client that sent
// nothing within first_bytes, anything else, and a QUIC flow (UDP) whose
// Initial packets carried a ClientHello.
var ProtocolNames = []string{"tls", "http", "ssh", "server-first", "unknown", "quic"}

// protocolBit maps a protocol name to its bit in a compiled rule's set; 0
// for a name that is not one of ProtocolNames. A switch, not a map, keeps
// Decide free of allocations and hashing.
func protocolBit(name string) uint8 {
	switch name {
	case "tls":
		return 1 << 0
	case "http":
		return 1 << 1
	case "ssh":
		return 1 << 2
	case "server-first":
		return 1 << 3
	case "unknown":
		return 1 << 4
	case "quic":
		return 1 << 5
	}
	return 0
}

// Input is what egressd knows about a connection when it decides.
type Input struct {
	Src netip.Addr
	// Dst is the destination address, invalid when not known yet (sni mode
	// before resolution); a rule with Destinations then does not match.
	Dst netip.Addr
	// Port is the destination port, 0 when unknown; a rule with Ports then
	// does not match.
	Port uint16
	// FQDN is the destination name normalised by fqdn.Normalize, "" when
	// there is none. A name that is not normalised matches no pattern.
	FQDN string
	// User is the authenticated proxy user, "" when there is none.
	User string
	// Protocol is the connection's protocol, one of ProtocolNames, "" when
	// not known; a rule with Protocols then does not match.
	Protocol string
	// JA4 is the client's TLS fingerprint, "" when there is none; a rule
	// with JA4 then does not match.
	JA4 string
}

// Decision is the outcome of Decide. It is precomputed per rule at Compile
// time, so returning it costs nothing.
type Decision struct {
	Action Action
	Rule   string // the deciding rule's name, "" for the default
	Index  int    // the deciding rule's index, -1 for the default
	// Reason is a human-readable account for logs, e.g. `matched rule "github"`.
	Reason string
	// Destinations are the deciding rule's destinations (shared with the
	// policy: read-only), nil for the default. Permits uses them.
	Destinations []netip.Prefix
	// ByFQDN reports whether the deciding rule has an fqdn field, that is,
	// whether the name is what decided. The gateway must then make sure the
	// address it dials belongs to that name.
	ByFQDN bool
	// Hard marks a deny that report-only mode must not waive: destination
	// safety, as opposed to policy. Set by DecideDial.
	Hard bool
}

// Enforced reports whether egressd acts on d, rather than only logging it:
// with enforce (policy.enforce) every decision binds. Report-only mode
// (enforce false) waives a deny of policy, but not a Hard one, since
// destination safety binds in report-only mode too, and not one without a
// destination (haveDst false: no name resolved, no address given), since
// letting it through would leave nowhere to dial. The gateway's refusals,
// the access log's enforced and `egressd explain` all ask this one
// function, so they cannot drift apart.
func (d Decision) Enforced(enforce, haveDst bool) bool {
	return enforce || d.Action == Deny && (d.Hard || !haveDst)
}
