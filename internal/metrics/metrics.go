// Package metrics defines egressd's Prometheus metrics and the calls the
// gateway makes to move them.
//
// Every metric lives in a registry of its own (not the process-wide default)
// so that two gateways in one test binary count separately. Label values are
// bounded: listener and rule names come from the config, action, protocol,
// fqdn_source, result and limit from fixed sets; no name or address a client
// sends ever becomes a label.
//
// The per-connection calls are on the gateway's hot path, so they allocate
// nothing once a label combination has been seen: the counter for each
// combination is looked up in a map keyed by value, not through the
// variadic WithLabelValues.
package metrics

import (
	"github.com/egressd/egressd/internal/accesslog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Limit names, as the limit label says them (the config keys).
const (
	LimitConnections          = "max_connections"
	LimitConnectionsPerSource = "max_connections_per_source"
	LimitPendingHandshakes    = "max_pending_handshakes"
	// LimitPendingPerSource: one peer address holds three quarters of
	// max_pending_handshakes already.
	LimitPendingPerSource = "max_pending_handshakes_per_source"
)

// Destination refusal reasons, as the reason label of
// egressd_destination_refusals_total says them.
const (
	// RefusedOwnListener: the destination is an address and port egressd
	// itself listens on (a listener, the admin endpoint, the DNS forwarder).
	RefusedOwnListener = "own_listener"
	// RefusedLocalAddress: the destination is an address of this host that
	// the deciding rule's destinations do not name.
	RefusedLocalAddress = "local_address"
)

// Metrics holds egressd's metrics and the registry that exposes them.
type Metrics struct {
	Registry *prometheus.Registry

	conns     *prometheus.CounterVec
	connsMu   sync.RWMutex
	connsByLV map[connLabels]prometheus.Counter

	bytesUp, bytesDown prometheus.Counter
	peekWait           prometheus.Histogram
	dialTime           prometheus.Histogram
	lifetime           prometheus.Histogram

	reloads    *prometheus.CounterVec
	reloadTime prometheus.Gauge
	configInfo *prometheus.GaugeVec
	hashMu     sync.Mutex
	hash       string // the hash configInfo shows
	limits     map[string]prometheus.Counter
	acceptErrs prometheus.Counter
	refusals   map[string]prometheus.Counter
}

// connLabels is one combination of the connection counter's labels.
type connLabels struct {
	listener, action, rule, protocol, fqdnSource string
}

// Gauges are read when scraped rather than kept up to date, so counting a
// connection in or out costs the gateway one atomic add, which it does
// anyway for its limits.
type Gauges struct {
	Active  func() float64 // connections open now
	Pending func() float64 // connections still being peeked
	// LogQueue is how many relayed connections' log lines wait to be
	// written: a log writer that falls behind shows here before the relays
	// wait for it.
	LogQueue func() float64
	// LogLost counts the access log's lines whose write failed (a full
	// disk, a log pipe whose reader is gone): egressd goes on serving.
	LogLost func() float64
	// LoopSetUps counts the connections a relay loop set up itself, from
	// the accept to the relay, with no set-up goroutine: the cheap path
	// (docs/performance.md). A counter, read when scraped.
	LoopSetUps func() float64
	// DNS, when not nil, reports the DNS forwarder's counters; it is nil
	// when no forwarder runs, and then no DNS metric is exposed.
	DNS func() DNSCounts
	// UDP, when not nil, reports the UDP sides of the listeners (QUIC
	// flows); nil when no listener has one.
	UDP func() UDPCounts
	// AuthChecks, when not nil, reports the proxy password checks by
	// result: ok, wrong (both hashed), backoff (refused unchecked, the
	// source backs off after repeated failures) and busy (refused
	// unchecked, no check slot free).
	AuthChecks func() map[string]uint64
}

// DNSCounts are the DNS forwarder's counters as a scrape reads them.
// Queries maps a result from a fixed set (forwarded, refused,
// would_refuse, failed, rate_limited, not_client, overloaded, malformed)
// to how many queries ended so; never a name from a query.
type DNSCounts struct {
	Queries   map[string]uint64
	Entries   int    // name memories held now
	Evictions uint64 // memories dropped because the cap was reached
}

var (
	dnsQueriesDesc   = prometheus.NewDesc("egressd_dns_queries_total", "DNS queries handled by egressd's forwarder, by result.", []string{"result"}, nil)
	dnsEntriesDesc   = prometheus.NewDesc("egressd_dns_memory_entries", "Name memories (client, address -> name) the DNS forwarder holds.", nil, nil)
	dnsEvictionsDesc = prometheus.NewDesc("egressd_dns_memory_evictions_total", "Name memories dropped because max_entries, or a client's max_entries_per_client, was reached.", nil, nil)
)

// UDPCounts are the counters of the listeners' UDP sides as a scrape reads
// them: flows held now (Pending of them undecided), datagrams dropped by a
// reason from a fixed set, CONNECTION_CLOSE packets sent to denied
// clients.
type UDPCounts struct {
	Flows, Pending int
	Dropped        map[string]uint64
	Closes         uint64
}

var (
	quicFlowsDesc   = prometheus.NewDesc("egressd_quic_flows", "QUIC flows (UDP) held now: undecided, relayed, or remembered as denied.", nil, nil)
	quicPendingDesc = prometheus.NewDesc("egressd_quic_pending_flows", "QUIC flows whose ClientHello is still being read or decided.", nil, nil)
	quicDroppedDesc = prometheus.NewDesc("egressd_quic_dropped_datagrams_total",
		"UDP datagrams dropped by a listener's UDP side, by reason: not_initial, unknown_version, malformed, limit, held_full, undecided, denied, too_big, no_destination, short_initial, changed_hello, not_quic.",
		[]string{"reason"}, nil)
	quicClosesDesc = prometheus.NewDesc("egressd_quic_closes_total", "CONNECTION_CLOSE packets (access_denied) sent to denied QUIC clients.", nil, nil)
)

// udpCollector reads the UDP sides' counters at scrape time.
type udpCollector func() UDPCounts

func (udpCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- quicFlowsDesc
	ch <- quicPendingDesc
	ch <- quicDroppedDesc
	ch <- quicClosesDesc
}

func (f udpCollector) Collect(ch chan<- prometheus.Metric) {
	c := f()
	ch <- prometheus.MustNewConstMetric(quicFlowsDesc, prometheus.GaugeValue, float64(c.Flows))
	ch <- prometheus.MustNewConstMetric(quicPendingDesc, prometheus.GaugeValue, float64(c.Pending))
	for reason, n := range c.Dropped {
		ch <- prometheus.MustNewConstMetric(quicDroppedDesc, prometheus.CounterValue, float64(n), reason)
	}
	ch <- prometheus.MustNewConstMetric(quicClosesDesc, prometheus.CounterValue, float64(c.Closes))
}

var authChecksDesc = prometheus.NewDesc("egressd_auth_checks_total",
	"Proxy password checks, by result: ok and wrong were hashed; backoff (the source failed too often) and busy (no check slot free) were refused unchecked.",
	[]string{"result"}, nil)

// authCollector reads the password guard's counters at scrape time. Every
// result is exposed, zero included, so that a rate over backoff or busy
// exists before the first attack.
type authCollector func() map[string]uint64

func (authCollector) Describe(ch chan<- *prometheus.Desc) { ch <- authChecksDesc }

func (f authCollector) Collect(ch chan<- prometheus.Metric) {
	c := f()
	for _, result := range []string{"ok", "wrong", "backoff", "busy"} {
		ch <- prometheus.MustNewConstMetric(authChecksDesc, prometheus.CounterValue, float64(c[result]), result)
	}
}

// dnsCollector reads the forwarder's own counters at scrape time, so that
// answering a query costs nothing extra.
type dnsCollector func() DNSCounts

func (dnsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- dnsQueriesDesc
	ch <- dnsEntriesDesc
	ch <- dnsEvictionsDesc
}

func (f dnsCollector) Collect(ch chan<- prometheus.Metric) {
	c := f()
	for result, n := range c.Queries {
		ch <- prometheus.MustNewConstMetric(dnsQueriesDesc, prometheus.CounterValue, float64(n), result)
	}
	ch <- prometheus.MustNewConstMetric(dnsEntriesDesc, prometheus.GaugeValue, float64(c.Entries))
	ch <- prometheus.MustNewConstMetric(dnsEvictionsDesc, prometheus.CounterValue, float64(c.Evictions))
}

// New registers every metric in a new registry, with the Go runtime and
// process collectors.
func New(g Gauges) *Metrics {
	reg := prometheus.NewRegistry()
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &Metrics{Registry: reg, connsByLV: map[connLabels]prometheus.Counter{}, limits: map[string]prometheus.Counter{},
		refusals: map[string]prometheus.Counter{}}
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	m.conns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "egressd_connections_total",
		Help: "Connections closed, by listener, decision, rule (empty: the default), protocol and where the FQDN came from.",
	}, []string{"listener", "action", "rule", "protocol", "fqdn_source"})
	f(m.conns)
	if g.Active != nil {
		f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "egressd_active_connections", Help: "Client connections open now."}, g.Active))
	}
	if g.Pending != nil {
		f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "egressd_pending_handshakes", Help: "Connections whose first bytes are still being read."}, g.Pending))
	}
	if g.LogQueue != nil {
		f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "egressd_access_log_queue", Help: "Relayed connections' log lines waiting to be written (relays wait when 4096 are queued)."}, g.LogQueue))
	}
	if g.LogLost != nil {
		f(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "egressd_access_log_lost_total", Help: "Access log lines that could not be written (the write failed); egressd goes on serving without them."}, g.LogLost))
	}
	if g.LoopSetUps != nil {
		f(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "egressd_loop_setups_total",
			Help: "Connections a relay loop set up itself, from accept to relay, without a set-up goroutine (sni and transparent listeners)."}, g.LoopSetUps))
	}
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "egressd_bytes_total",
		Help: "Bytes relayed; direction up is client to server.",
	}, []string{"direction"})
	f(bytes)
	m.bytesUp, m.bytesDown = bytes.WithLabelValues("up"), bytes.WithLabelValues("down")

	m.peekWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "egressd_peek_wait_seconds",
		Help:    "Time from accept until the first bytes were classified (a server-first client waits the whole first_bytes timeout).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	})
	m.dialTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "egressd_dial_seconds",
		Help:    "Time to connect to the server, failed dials included.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	})
	m.lifetime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "egressd_connection_duration_seconds",
		Help:    "Lifetime of client connections, accept to close.",
		Buckets: []float64{.001, .01, .1, 1, 10, 60, 300, 900, 3600, 14400},
	})
	f(m.peekWait)
	f(m.dialTime)
	f(m.lifetime)

	if g.DNS != nil {
		f(dnsCollector(g.DNS))
	}
	if g.AuthChecks != nil {
		f(authCollector(g.AuthChecks))
	}
	if g.UDP != nil {
		f(udpCollector(g.UDP))
	}
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "egressd_reloads_total",
		Help: "Config reloads, by result (success or failure).",
	}, []string{"result"})
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	f(m.reloads)
	m.reloadTime = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "egressd_config_last_load_timestamp_seconds",
		Help: "When the running config was loaded (start or successful reload).",
	})
	f(m.reloadTime)
	m.configInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "egressd_config_info",
		Help: "Always 1; hash identifies the running config file's contents.",
	}, []string{"hash"})
	f(m.configInfo)
	lim := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "egressd_limit_rejections_total",
		Help: "Connections reset because a limit was reached, by limit.",
	}, []string{"limit"})
	for _, l := range []string{LimitConnections, LimitConnectionsPerSource, LimitPendingHandshakes, LimitPendingPerSource} {
		m.limits[l] = lim.WithLabelValues(l)
	}
	f(lim)
	m.acceptErrs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "egressd_accept_errors_total",
		Help: "Failed accepts (EMFILE, ENFILE, ...), each followed by a back-off.",
	})
	f(m.acceptErrs)
	ref := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "egressd_destination_refusals_total",
		Help: "Connections refused because egressd would have dialled itself, by reason: own_listener (a listener, the admin endpoint or the DNS forwarder) or local_address (an address of this host the deciding rule's destinations do not name).",
	}, []string{"reason"})
	for _, r := range []string{RefusedOwnListener, RefusedLocalAddress} {
		m.refusals[r] = ref.WithLabelValues(r)
	}
	f(ref)
	return m
}

// Conn counts one ended connection (or tunnel, or forwarded request) from
// its access-log record: by listener, action, rule, protocol and name
// source, its bytes, and its lifetime.
func (m *Metrics) Conn(rec *accesslog.Record) {
	k := connLabels{rec.Listener, string(rec.Action), rec.Rule, rec.Protocol, string(rec.FQDNSource)}
	m.connsMu.RLock()
	c, ok := m.connsByLV[k]
	m.connsMu.RUnlock()
	if !ok {
		c = m.conns.WithLabelValues(k.listener, k.action, k.rule, k.protocol, k.fqdnSource)
		m.connsMu.Lock()
		m.connsByLV[k] = c
		m.connsMu.Unlock()
	}
	c.Inc()
	if rec.BytesUp > 0 {
		m.bytesUp.Add(float64(rec.BytesUp))
	}
	if rec.BytesDown > 0 {
		m.bytesDown.Add(float64(rec.BytesDown))
	}
	end := time.Now()
	if rec.End != 0 {
		end = time.Unix(0, rec.End)
	}
	m.lifetime.Observe(end.Sub(rec.Start).Seconds())
}

// PeekWait records how long classifying the first bytes took.
func (m *Metrics) PeekWait(d time.Duration) { m.peekWait.Observe(d.Seconds()) }

// Dial records how long a dial to a server took.
func (m *Metrics) Dial(d time.Duration) { m.dialTime.Observe(d.Seconds()) }

// Reload counts a reload attempt; a success also records the new config.
func (m *Metrics) Reload(ok bool, hash string) {
	if !ok {
		m.reloads.WithLabelValues("failure").Inc()
		return
	}
	m.reloads.WithLabelValues("success").Inc()
	m.Loaded(hash)
}

// Loaded records the running config's hash and load time.
func (m *Metrics) Loaded(hash string) {
	// The new series first, then the old one goes: a scrape in between
	// sees two hashes for an instant, never none.
	m.hashMu.Lock()
	defer m.hashMu.Unlock()
	m.configInfo.WithLabelValues(hash).Set(1)
	if m.hash != "" && m.hash != hash {
		m.configInfo.DeleteLabelValues(m.hash)
	}
	m.hash = hash
	m.reloadTime.SetToCurrentTime()
}

// Rejected counts a connection reset by the named limit.
func (m *Metrics) Rejected(limit string) { m.limits[limit].Inc() }

// DestinationRefused counts a connection refused for the named reason
// (RefusedOwnListener, RefusedLocalAddress).
func (m *Metrics) DestinationRefused(reason string) { m.refusals[reason].Inc() }

// AcceptError counts a failed accept.
func (m *Metrics) AcceptError() { m.acceptErrs.Inc() }
