package accesslog

import (
	"context"
	"log/slog"
	"net/netip"
	"time"
)

// DNSRecord is one DNS query egressd's forwarder refused, failed or dropped
// (see dnsproxy for which queries are logged). It goes to the same output
// as the connection lines, with "msg":"dns" and "kind":"dns" so the two can
// be told apart.
type DNSRecord struct {
	Src    netip.AddrPort
	QName  string // as asked, lower-cased
	QType  string // "A", "AAAA", "HTTPS"...
	Rcode  string // what the client got: "REFUSED", "SERVFAIL", "" when dropped
	Result string // refused | would-refuse (report-only) | failed | dropped | malformed
	Reason string
}

// LogDNS writes r as one line.
func (lg *Logger) LogDNS(r *DNSRecord) {
	now := time.Now()
	if lg.text != nil {
		rec := slog.NewRecord(now, slog.LevelInfo, "dns", 0)
		rec.AddAttrs(
			slog.String("kind", "dns"),
			slog.String("src", addrString(r.Src)),
			slog.String("qname", r.QName),
			slog.String("qtype", r.QType),
			slog.String("rcode", r.Rcode),
			slog.String("result", r.Result),
			slog.String("reason", r.Reason),
		)
		if err := lg.text.Handler().Handle(context.Background(), rec); err != nil {
			lg.failed(err, 1)
		}
		return
	}
	bp := bufPool.Get().(*[]byte)
	b := (*bp)[:0]
	b = append(b, `{"time":"`...)
	b = now.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"INFO","msg":"dns","kind":"dns","src":"`...)
	b = appendAddr(b, r.Src)
	b = append(b, `","qname":`...)
	b = appendString(b, r.QName)
	b = append(b, `,"qtype":`...)
	b = appendString(b, r.QType)
	b = append(b, `,"rcode":`...)
	b = appendString(b, r.Rcode)
	b = append(b, `,"result":`...)
	b = appendString(b, r.Result)
	b = append(b, `,"reason":`...)
	b = appendString(b, r.Reason)
	b = append(b, "}\n"...)
	lg.write(b, 1)
	if cap(b) <= 64<<10 {
		*bp = b
		bufPool.Put(bp)
	}
}
