// Package accesslog writes one structured line per closed connection: the
// record an operator greps when someone asks "why was I blocked?".
package accesslog

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"time"
)

// Record is everything egressd knows about one connection when it closes.
type Record struct {
	Start      time.Time
	Listener   string
	Src        netip.AddrPort
	Dst        netip.AddrPort // where egressd connected, or would have
	FQDN       string
	FQDNSource string // "sni", "host" or "none"
	Protocol   string // tls, http, ssh, unknown, server-first
	ALPN       []string
	ECH        bool
	Rule       string
	Action     string // allow | deny
	Enforced   bool
	Reason     string
	BytesUp    int64
	BytesDown  int64
}

// Logger writes Records.
type Logger struct{ l *slog.Logger }

// New returns a Logger writing JSON (format "json") or logfmt-like text
// ("text") lines to w.
func New(w io.Writer, format string) *Logger {
	opts := &slog.HandlerOptions{}
	var h slog.Handler
	if format == "text" {
		h = slog.NewTextHandler(w, opts)
	} else {
		h = slog.NewJSONHandler(w, opts)
	}
	return &Logger{l: slog.New(h)}
}

// Log writes r as one line.
func (lg *Logger) Log(r *Record) {
	end := time.Now()
	alpn := ""
	if len(r.ALPN) > 0 {
		alpn = r.ALPN[0]
		for _, p := range r.ALPN[1:] {
			alpn += "," + p
		}
	}
	lg.l.LogAttrs(context.Background(), slog.LevelInfo, "conn",
		slog.String("listener", r.Listener),
		slog.String("src", addrString(r.Src)),
		slog.String("dst", addrString(r.Dst)),
		slog.String("fqdn", r.FQDN),
		slog.String("fqdn_source", r.FQDNSource),
		slog.String("protocol", r.Protocol),
		slog.String("alpn", alpn),
		slog.Bool("ech", r.ECH),
		slog.String("rule", r.Rule),
		slog.String("action", r.Action),
		slog.Bool("enforced", r.Enforced),
		slog.String("reason", r.Reason),
		slog.Int64("bytes_up", r.BytesUp),
		slog.Int64("bytes_down", r.BytesDown),
		slog.Int64("duration_ms", end.Sub(r.Start).Milliseconds()),
	)
}

func addrString(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
