// Package accesslog writes one structured line per closed connection: the
// record an operator greps when someone asks "why was I blocked?".
package accesslog

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/egressd/egressd/internal/limit"
)

// Action is what egressd did with a connection, as the log and the
// metrics word it.
type Action string

const (
	Allow Action = "allow"
	Deny  Action = "deny"
	// None: the client ended before it named a destination, so nothing
	// was decided (a browser's spare proxy connection).
	None Action = "none"
)

// NameSource is where a connection's FQDN came from.
type NameSource string

const (
	FromNone    NameSource = "none"    // no name
	FromSNI     NameSource = "sni"     // the TLS ClientHello's server name
	FromHost    NameSource = "host"    // the HTTP Host
	FromConnect NameSource = "connect" // an HTTP CONNECT target
	FromSOCKS   NameSource = "socks"   // a SOCKS5 request's domain name
	FromDNS     NameSource = "dns"     // the name this client resolved to the destination through egressd
)

// ProtocolQUIC is the protocol of a QUIC flow on a listener's UDP side:
// its lines also carry packets_up and packets_down.
const ProtocolQUIC = "quic"

// Record is everything egressd knows about one connection when it closes.
type Record struct {
	Start time.Time
	// End is when the connection ended (unix nanoseconds), set where its
	// line waits to be written (a relayed connection's is held, then
	// queued); zero: when the line is written. The line's time and
	// duration_ms are End's. (An int64, not a time.Time: every relayed
	// connection holds its Record.)
	End      int64
	Listener string
	// User is the authenticated proxy user (explicit listeners), "" for none.
	User       string
	Src        netip.AddrPort
	Dst        netip.AddrPort // where egressd connected, or would have
	FQDN       string
	FQDNSource NameSource
	Protocol   string   // tls, http, ssh, unknown, server-first
	ALPN       []string // offered, in the client's order; logged as a JSON array, [] for none
	ECH        bool     // real ECH only, not GREASE (see gateway)
	JA4        string   // the client's TLS fingerprint (clienthello.JA4), "" without a ClientHello
	Rule       string
	Action     Action
	Enforced   bool
	Reason     string
	BytesUp    int64
	BytesDown  int64
	// PacketsUp and PacketsDown count the datagrams relayed each way; they
	// are logged for QUIC flows (ProtocolQUIC) only.
	PacketsUp, PacketsDown int64
}

// Logger writes Records, one line each; a line is never split over two
// write(2) calls.
type Logger struct {
	w    io.Writer
	text *slog.Logger // nil for JSON
	// lost counts the lines whose write failed (a full disk, a log pipe
	// whose reader is gone); Lost reads it.
	lost atomic.Uint64
	// errLog, if set (SetErrorLog), hears of failed writes, at most once
	// a second (warned).
	errLog *slog.Logger
	warned limit.EverySecond
}

// SetErrorLog has failed writes reported to l, at most once a second. Call
// it before the first line.
func (lg *Logger) SetErrorLog(l *slog.Logger) { lg.errLog = l }

// Lost is how many lines could not be written. The gateway goes on serving
// when its access log cannot be written; this count (the metric
// egressd_access_log_lost_total) is how an operator learns that the log
// has gaps.
func (lg *Logger) Lost() uint64 { return lg.lost.Load() }

// write writes b, which holds lines lines, and counts them lost if the
// write fails: a failed write can have written part of b, but which lines
// made it whole is not known.
func (lg *Logger) write(b []byte, lines int) {
	if _, err := lg.w.Write(b); err != nil {
		lg.failed(err, lines)
	}
}

func (lg *Logger) failed(err error, lines int) {
	n := lg.lost.Add(uint64(lines))
	if lg.errLog != nil && lg.warned.Allow(time.Now()) {
		lg.errLog.Error("access log write failed: lines lost", "err", err, "lost_total", n)
	}
}

// New returns a Logger writing JSON (format "json") or logfmt-like text
// ("text") lines to w. Writes from concurrent connections are not
// interleaved: each line is one Write call, and w must accept concurrent
// Writes (an *os.File does).
func New(w io.Writer, format string) *Logger {
	if format == "text" {
		return &Logger{w: w, text: slog.New(slog.NewTextHandler(w, nil))}
	}
	return &Logger{w: w}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// Log writes r as one line. The JSON form is encoded by hand into a pooled
// buffer: the access log is written for every connection, and slog's
// generic handler cost more than the rest of the decision path together.
func (lg *Logger) Log(r *Record) {
	if lg.text != nil {
		lg.logText(r, r.ended(time.Now()))
		return
	}
	bp := bufPool.Get().(*[]byte)
	b := appendJSON((*bp)[:0], r, r.ended(time.Now()))
	lg.write(b, 1)
	putBuf(bp, b)
}

// LogBatch writes rs, one line each, with as few write(2) calls as whole
// lines allow: a writer that drains a queue of lines calls it with what
// has piled up, and pays one system call per several connections instead
// of one each. A write holds at most pipeBuf bytes (or one longer line), so
// that on a pipe shared with other writers (egressd's own stderr under
// 2>&1, a log shipper's fan-in) no other bytes can land inside a line.
func (lg *Logger) LogBatch(rs []*Record) {
	if lg.text != nil || len(rs) == 1 {
		for _, r := range rs {
			lg.Log(r)
		}
		return
	}
	now := time.Now()
	bp := bufPool.Get().(*[]byte)
	b := (*bp)[:0]
	lines := 0
	for _, r := range rs {
		n := len(b)
		b = appendJSON(b, r, r.ended(now))
		if len(b) > pipeBuf && n > 0 {
			lg.write(b[:n], lines)
			b = append(b[:0], b[n:]...)
			lines = 0
		}
		lines++
	}
	lg.write(b, lines)
	putBuf(bp, b)
}

// ended is r.End, or now if it is not set.
func (r *Record) ended(now time.Time) time.Time {
	if r.End == 0 {
		return now
	}
	return time.Unix(0, r.End)
}

// pipeBuf is PIPE_BUF on Linux: a write to a pipe of at most this many
// bytes is never interleaved with other writers' bytes.
const pipeBuf = 4096

func putBuf(bp *[]byte, b []byte) {
	if cap(b) <= 64<<10 {
		*bp = b
		bufPool.Put(bp)
	}
}

// appendJSON appends r as one JSON line, closed at end.
func appendJSON(b []byte, r *Record, end time.Time) []byte {
	b = append(b, `{"time":"`...)
	b = end.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"INFO","msg":"conn","listener":`...)
	b = appendString(b, r.Listener)
	b = append(b, `,"user":`...)
	b = appendString(b, clip(r.User, maxField))
	b = append(b, `,"src":"`...)
	b = appendAddr(b, r.Src)
	b = append(b, `","dst":"`...)
	b = appendAddr(b, r.Dst)
	b = append(b, `","fqdn":`...)
	b = appendString(b, clip(r.FQDN, maxField))
	b = append(b, `,"fqdn_source":`...)
	b = appendString(b, string(r.FQDNSource))
	b = append(b, `,"protocol":`...)
	b = appendString(b, r.Protocol)
	b = append(b, `,"alpn":`...)
	b = appendStrings(b, r.ALPN)
	b = append(b, `,"ech":`...)
	b = strconv.AppendBool(b, r.ECH)
	b = append(b, `,"ja4":`...)
	b = appendString(b, r.JA4)
	b = append(b, `,"rule":`...)
	b = appendString(b, r.Rule)
	b = append(b, `,"action":`...)
	b = appendString(b, string(r.Action))
	b = append(b, `,"enforced":`...)
	b = strconv.AppendBool(b, r.Enforced)
	b = append(b, `,"reason":`...)
	b = appendString(b, clip(r.Reason, maxReason))
	b = append(b, `,"bytes_up":`...)
	b = strconv.AppendInt(b, r.BytesUp, 10)
	b = append(b, `,"bytes_down":`...)
	b = strconv.AppendInt(b, r.BytesDown, 10)
	if r.Protocol == ProtocolQUIC {
		b = append(b, `,"packets_up":`...)
		b = strconv.AppendInt(b, r.PacketsUp, 10)
		b = append(b, `,"packets_down":`...)
		b = strconv.AppendInt(b, r.PacketsDown, 10)
	}
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendInt(b, end.Sub(r.Start).Milliseconds(), 10)
	return append(b, "}\n"...)
}

func (lg *Logger) logText(r *Record, end time.Time) {
	attrs := []slog.Attr{
		slog.String("listener", r.Listener),
		slog.String("user", clip(r.User, maxField)),
		slog.String("src", addrString(r.Src)),
		slog.String("dst", addrString(r.Dst)),
		slog.String("fqdn", clip(r.FQDN, maxField)),
		slog.String("fqdn_source", string(r.FQDNSource)),
		slog.String("protocol", r.Protocol),
		slog.String("alpn", string(appendStrings(nil, r.ALPN))),
		slog.Bool("ech", r.ECH),
		slog.String("ja4", r.JA4),
		slog.String("rule", r.Rule),
		slog.String("action", string(r.Action)),
		slog.Bool("enforced", r.Enforced),
		slog.String("reason", clip(r.Reason, maxReason)),
		slog.Int64("bytes_up", r.BytesUp),
		slog.Int64("bytes_down", r.BytesDown),
	}
	if r.Protocol == ProtocolQUIC {
		attrs = append(attrs, slog.Int64("packets_up", r.PacketsUp), slog.Int64("packets_down", r.PacketsDown))
	}
	attrs = append(attrs, slog.Int64("duration_ms", end.Sub(r.Start).Milliseconds()))
	rec := slog.NewRecord(end, slog.LevelInfo, "conn", 0)
	rec.AddAttrs(attrs...)
	if err := lg.text.Handler().Handle(context.Background(), rec); err != nil {
		lg.failed(err, 1)
	}
}

func addrString(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func appendAddr(b []byte, a netip.AddrPort) []byte {
	if !a.IsValid() {
		return b
	}
	return a.AppendTo(b) // digits, dots, colons, brackets: nothing to escape
}

// appendStrings appends ss as a JSON array of strings, [] for none. ALPN
// ids are opaque bytes (RFC 7301 §3.1): one may hold a comma, so a joined
// string could not tell the offer "a,b" from "a" and "b"; an array can.
func appendStrings(b []byte, ss []string) []byte {
	b = append(b, '[')
	left := maxALPN
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		n := len(b)
		b = appendString(b, clip(s, left))
		left = max(0, left-(len(b)-n-2))
	}
	return append(b, ']')
}

// What one line holds at most of the text a client chose, in bytes as
// written (escaped: a control byte takes six): a user name, a name, the
// reason, which may quote a name or a header the client sent, and the
// ALPN ids together (real offers take a few dozen). Past that, clip
// cuts, and says how much. A client that sent such text on every
// connection made each line 100 KB, the log several times faster than
// its own bytes, until the log's reader fell behind and the relay loops,
// which hand their lines to its writer, waited for it.
const (
	maxField  = 256
	maxALPN   = 1024
	maxReason = 2048
)

// clip returns s, or its longest prefix (whole characters) that takes at
// most max bytes once escaped (appendString), followed by how many bytes
// were cut.
func clip(s string, max int) string {
	n := 0
	for i := 0; i < len(s); {
		c, size, cost := s[i], 1, 1
		switch {
		case c == '"' || c == '\\':
			cost = 2
		case c < 0x20:
			cost = 6
		case c >= utf8.RuneSelf:
			var r rune
			if r, size = utf8.DecodeRuneInString(s[i:]); r == utf8.RuneError && size == 1 {
				cost = 6 // written as \ufffd
			} else {
				cost = size
			}
		}
		if n+cost > max {
			return s[:i] + "…(" + strconv.Itoa(len(s)-i) + " bytes cut)"
		}
		n += cost
		i += size
	}
	return s
}

// appendString appends s as a JSON string (RFC 8259 §7). Client-supplied
// text (ALPN names, names inside reasons) can hold any byte: control
// characters are escaped and each byte of invalid UTF-8 becomes U+FFFD, as
// encoding/json writes it (a JSON string holds text, not bytes), so every
// line stays valid JSON.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
