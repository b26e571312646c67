// Package config reads egressd's YAML configuration into checked values.
//
// Everything the gateway is told lives in one file, and a mistake in it
// either stops the gateway from starting or, on reload, is refused while the
// running config stays in place. So the loader is strict and thorough: an
// unknown key is an error rather than a silently ignored typo, every problem
// in the file is reported in one pass, and each carries the file and line of
// the offending YAML node ("egressd.yaml:12: ...").
//
// The package does no network I/O, so `egressd check` and `egressd explain`
// run anywhere.
package config

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/egressd/egressd/internal/policy"
)

// Mode is how a listener learns where a client wants to go.
type Mode string

const (
	// ModeTransparent: the network redirected the client's packets to
	// egressd (iptables REDIRECT or TPROXY); the original destination is
	// read from the socket.
	ModeTransparent Mode = "transparent"
	// ModeSNI: the destination is the TLS server name, resolved by DNS, on
	// the listener's UpstreamPort.
	ModeSNI Mode = "sni"
	// ModeExplicit: the client was configured to use egressd as its proxy
	// and names its destination itself, with HTTP CONNECT, an absolute-URI
	// HTTP request or SOCKS5, all on one port.
	ModeExplicit Mode = "explicit"
)

// TunnelSNI says, for an explicit listener, what to do when the TLS server
// name (or HTTP Host) inside a CONNECT or SOCKS5 tunnel is not the name the
// client asked the proxy for.
type TunnelSNI string

const (
	// TunnelMatch refuses the tunnel: the client lied about where it goes
	// (domain fronting, or a policy bypass).
	TunnelMatch TunnelSNI = "match"
	// TunnelLog relays it and notes the mismatch in the access log.
	TunnelLog TunnelSNI = "log"
	// TunnelIgnore does not look inside the tunnel at all.
	TunnelIgnore TunnelSNI = "ignore"
)

// SNIDestination says, for a transparent listener, how the original
// destination address and the TLS server name are reconciled.
type SNIDestination string

const (
	// Verify dials the original destination only if the server name
	// resolves to it, so a client cannot claim an allowed name while
	// connecting to another address.
	Verify SNIDestination = "verify"
	// Resolve dials what the server name resolves to, ignoring the
	// original destination.
	Resolve SNIDestination = "resolve"
	// Trust dials the original destination and believes the server name.
	Trust SNIDestination = "trust"
)

// QUICDeny says how a transparent listener's UDP side refuses a QUIC flow
// the policy denies.
type QUICDeny string

const (
	// QUICClose answers each Initial packet of the flow with a server
	// Initial packet carrying a CONNECTION_CLOSE with the TLS alert
	// access_denied: the client fails at once, saying why.
	QUICClose QUICDeny = "close"
	// QUICDrop drops the flow's packets silently: the client times out
	// (or falls back to TCP, where egressd refuses in TLS).
	QUICDrop QUICDeny = "drop"
)

// Listener is one address egressd accepts connections on.
type Listener struct {
	Name    string
	Mode    Mode
	Address netip.AddrPort
	// SNIDestination applies to transparent listeners only (default
	// Verify); it is "" for others.
	SNIDestination SNIDestination
	// UpstreamPort is the port dialled on the resolved server name; sni
	// listeners only (default 443), 0 for others.
	UpstreamPort uint16
	// TProxy sets IP_TRANSPARENT on the listening socket, for iptables
	// TPROXY rather than REDIRECT; transparent listeners only.
	TProxy bool
	// UDP also serves QUIC on the listener's address: UDP datagrams that
	// TPROXY delivers there are decided by the name in their Initial
	// packets and relayed flow by flow (internal/quicproxy). Transparent
	// listeners with TProxy only.
	UDP bool
	// QUICDeny is how the UDP side refuses a denied flow (default
	// QUICClose); "" without UDP.
	QUICDeny QUICDeny
	// TunnelSNI applies to explicit listeners only (default TunnelMatch);
	// it is "" for others.
	TunnelSNI TunnelSNI
	// ProxyProtocol expects a PROXY protocol v1 or v2 header (from an L4
	// load balancer) at the start of every connection; its source address
	// replaces the peer's for rules and the log. A connection without a
	// valid header is reset.
	ProxyProtocol bool
	// ProxyProtocolFrom, when not empty, lists the balancers whose PROXY
	// headers are believed: a connection from any other peer is reset
	// before a byte is read, so that a client that can reach the listener
	// directly cannot name itself any source it likes. Empty: every peer
	// is believed (the listener must then be reachable only through the
	// balancer).
	ProxyProtocolFrom []netip.Prefix
	Line              int // where the listener is defined
}

// Timeouts bound each phase of a connection.
type Timeouts struct {
	// FirstBytes is how long a client may stay silent before the
	// connection is treated as server-first (SMTP, MySQL, ...).
	FirstBytes time.Duration
	// ClientHello is how long a client that started TLS may take to send
	// its whole ClientHello.
	ClientHello time.Duration
	// Connect bounds the dial to the server.
	Connect time.Duration
	// Idle closes a relayed connection with no traffic either way.
	Idle time.Duration
}

// Log says where the per-connection log lines go.
type Log struct {
	Format string // "json" or "text"
	Output string // "stdout", "stderr" or a file path, as written
}

// Policy is the policy section. Rules are kept as written (patterns not yet
// compiled) so that `egressd explain` can show them; Config.Compile builds
// the policy.Policy that decides.
type Policy struct {
	// Enforce false is report-only: decisions are logged, nothing is denied.
	Enforce   bool
	Default   policy.Action
	Rules     []policy.Rule
	RuleLines []int // RuleLines[i] is the line of Rules[i]
}

// DNS is the dns section: egressd's own DNS forwarder, which remembers per
// client which names resolved to which addresses so that connections
// without a name of their own (SSH, SMTP, ...) can be decided by FQDN.
// The zero value (no dns section) runs no forwarder.
type DNS struct {
	// Address is where the forwarder listens, UDP and TCP; invalid when
	// there is no dns section.
	Address netip.AddrPort
	// Upstreams are tried in order: on a timeout or error, the next one.
	Upstreams []netip.AddrPort
	// Remember is how long a name -> IP memory outlives the answer's TTL
	// (default 10m): clients keep using an address after its TTL.
	Remember time.Duration
	// Filter refuses (REFUSED) queries for names no allow rule could match
	// for the querying client. On unless the config says filter: false.
	Filter bool
	// StripECH removes the ech SvcParam from HTTPS and SVCB answers, so
	// that clients send their real server name in the clear.
	StripECH bool
	// StripH3 removes "h3" and its drafts ("h3-29", ...) from the alpn
	// SvcParam of HTTPS and SVCB answers, so that clients do not start
	// with HTTP/3 (QUIC) where a site keeps QUIC off.
	StripH3 bool
	// MaxEntries caps the name memory (default 100000); when it is full,
	// a client over its fair share loses its oldest entry (namecache
	// states the rule and what each client is guaranteed to keep).
	MaxEntries int
	// MaxEntriesPerClient caps one client's share of the name memory
	// (default a quarter of MaxEntries): past it the client's own oldest
	// entry is dropped, so that one client cannot push out the others'.
	MaxEntriesPerClient int
	// Timeout bounds one query to one upstream (default 2s).
	Timeout time.Duration
	// RateLimit is the queries per second one client address may send
	// (default 200); beyond it queries are dropped for the rest of the
	// second.
	RateLimit int
	// Clients are the source ranges the forwarder answers; nil means the
	// private, loopback, link-local and CGNAT ranges (policy.Restricted),
	// so that a forwarder bound to a public address is not an open
	// resolver. Queries from elsewhere are dropped.
	Clients []netip.Prefix
	// MaxTCPConns bounds the forwarder's TCP connections open at once
	// (default 512), MaxTCPConnsPerSource those of one client address
	// (default 16): a client that opens connections and sends nothing
	// would otherwise hold a descriptor each. Over either, a new
	// connection is reset as soon as it is accepted.
	MaxTCPConns, MaxTCPConnsPerSource int
	Line                              int // where the section is, 0 when absent
}

// Enabled reports whether a dns section configured the forwarder.
func (d DNS) Enabled() bool { return d.Address.IsValid() }

// Config is a loaded and checked configuration.
type Config struct {
	Path      string // the file it was read from, for messages
	Listeners []Listener
	// Resolver is the DNS server egressd asks, each query for at most
	// DefaultResolverTimeout; the zero value means the system's resolver.
	// Written "host" alone, the port is 53.
	Resolver netip.AddrPort
	// Mark is the SO_MARK put on egressd's upstream sockets so that the
	// redirect rules can exempt them; 0 means none.
	Mark     uint32
	Timeouts Timeouts
	Log      Log
	Policy   Policy
	// Users are the proxy users; when there are any, explicit listeners
	// serve only clients that authenticate as one of them.
	Users []User
	DNS   DNS

	Admin  Admin
	Limits Limits
	// ShutdownGrace is how long live connections may run after
	// SIGTERM/SIGINT before they are closed.
	ShutdownGrace time.Duration
	// ShutdownDelay is how long the listeners keep accepting after
	// SIGTERM/SIGINT while /readyz already fails: a load balancer, or a
	// Kubernetes Service whose endpoints take a moment to update, still
	// sends new connections for a while, and a closed listener would
	// refuse them. 0: the listeners close at once.
	ShutdownDelay time.Duration
	// BusyPoll is how long a relay loop keeps asking the kernel for
	// events without sleeping before it sleeps (0: it sleeps at once).
	// Off by default: it trades CPU for latency (docs/performance.md,
	// "Busy polling").
	BusyPoll time.Duration
	// Hash identifies the file's contents (see Hash), so that an operator
	// can tell which version each instance runs.
	Hash string
}

// DefaultResolverTimeout bounds one query to Resolver. No key sets it; it
// lives here with the other defaults.
const DefaultResolverTimeout = 3 * time.Second

// Load reads and parses the config file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse parses a config file's contents; name is the file name used in
// messages and stored as Path. When anything is wrong, the error is an
// Errors listing every problem found.
func Parse(name string, data []byte) (*Config, error) {
	c, _, err := parse(name, data, false)
	return c, err
}

// Check is Load for a file checked where its secrets are not, as CI checks
// a config: a password_env variable that is not set or empty here is a
// warning, returned with the config, not an error. When there are errors,
// the warnings are among them, in line order. The config is for reading:
// a user whose variable was missing has no password.
func Check(path string) (*Config, Errors, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	return parse(path, data, true)
}

func parse(name string, data []byte, secretsElsewhere bool) (*Config, Errors, error) {
	d := &decoder{file: name, userLines: map[string]int{}, secretsElsewhere: secretsElsewhere}
	c := &Config{
		Path:     name,
		Timeouts: Timeouts{FirstBytes: 300 * time.Millisecond, ClientHello: 5 * time.Second, Connect: 5 * time.Second, Idle: 15 * time.Minute},
		Log:      Log{Format: "json", Output: "stdout"},
		Policy:   Policy{Enforce: true, Default: policy.Deny},

		ShutdownGrace: 30 * time.Second,
		Hash:          Hash(data),
	}
	if root := d.document(data); root != nil {
		d.config(root, c)
	}
	if d.failed() {
		return nil, nil, d.sorted()
	}
	return c, d.sorted(), nil
}

// Hash identifies a config file's contents: the first 16 hex digits of
// their SHA-256.
func Hash(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:8])
}

//go:embed default.yaml
var defaultYAML []byte

// Default returns the built-in configuration (default.yaml in this package):
// an sni listener on 127.0.0.1:8443 and an explicit proxy listener on
// 127.0.0.1:3128, in report-only mode, so that a first run
// shows what egressd would do without breaking anything.
func Default() *Config {
	c, err := Parse("(built-in default)", defaultYAML)
	if err != nil {
		panic("config: built-in default.yaml is invalid:\n" + err.Error())
	}
	return c
}

// Compile builds the decision structure from the policy section. A config
// returned by Parse always compiles; the error is for configs built by hand.
func (c *Config) Compile() (*policy.Policy, error) {
	p, err := policy.Compile(c.Policy.Rules, c.Policy.Default)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Path, err)
	}
	return p, nil
}
