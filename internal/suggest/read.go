package suggest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
	"github.com/egressd/egressd/internal/fqdn"
	"github.com/egressd/egressd/internal/policy"
)

// Conn is one connection line of the access log (docs/access-log.md).
type Conn struct {
	Time       time.Time // when the line was written: when the connection closed
	Listener   string
	User       string
	Src        netip.AddrPort
	Dst        netip.AddrPort // invalid when the line has none
	FQDN       string         // as logged
	FQDNSource accesslog.NameSource
	Protocol   string
	Rule       string
	Action     accesslog.Action
	Enforced   bool
	Reason     string
	BytesUp    int64
	BytesDown  int64
}

// defaultReason starts the reason of a decision no rule made (policy's
// fallback, "no rule matched: default deny"); the reason may carry more
// before and after it.
const defaultReason = "no rule matched: default "

// Decided reports whether the policy decided c: an allow or a deny that
// names its rule or the default. Other lines are of connections refused
// before there was anything to decide (a client that sent nothing
// readable, a limit, a PROXY header from the wrong peer) or that ended
// before it (action none); no rule would change them.
func (c *Conn) Decided() bool {
	return (c.Action == accesslog.Allow || c.Action == accesslog.Deny) &&
		(c.Rule != "" || strings.Contains(c.Reason, defaultReason))
}

// Input is what the gateway decided c with, as far as its line tells: the
// name normalised as the gateway normalises it ("" when the logged name
// is not an FQDN: then it was decided without one), the destination it
// dialled, its port, the user and the protocol.
func (c *Conn) Input() policy.Input {
	name, ok := fqdn.Normalize(c.FQDN)
	if !ok {
		name = ""
	}
	return policy.Input{
		Src:      plain(c.Src.Addr()),
		Dst:      plain(c.Dst.Addr()),
		Port:     c.Dst.Port(),
		FQDN:     name,
		User:     c.User,
		Protocol: c.Protocol,
	}
}

// plain is a as rules compare it: unmapped, without a zone.
func plain(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }

// ReadStats counts what Read saw.
type ReadStats struct {
	Conns   int // connection lines
	DNS     int // the DNS forwarder's lines, skipped
	Garbage int // lines that are not egressd's JSON lines, skipped
}

// Add adds o's counts to s.
func (s *ReadStats) Add(o ReadStats) {
	s.Conns += o.Conns
	s.DNS += o.DNS
	s.Garbage += o.Garbage
}

// maxLine bounds one line; egressd's lines are well under a kilobyte.
const maxLine = 1 << 20

// Read reads an access log, plain or gzip-compressed (told by gzip's magic
// bytes, so a rotated access.log.1.gz needs no flag), and calls each for
// every connection line. The DNS forwarder's lines are skipped, and so is
// every line that is not one of egressd's JSON lines (counted as garbage):
// a log that went through other hands may hold anything. The error is a
// read or decompression error; what was read before it was passed on.
func Read(r io.Reader, each func(*Conn)) (ReadStats, error) {
	var st ReadStats
	br := bufio.NewReaderSize(r, 64<<10)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return st, fmt.Errorf("gzip: %w", err)
		}
		defer zr.Close()
		br = bufio.NewReaderSize(zr, 64<<10)
	}
	var long []byte // a line longer than the reader's buffer, pieced together
	for {
		chunk, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if len(long)+len(chunk) <= maxLine {
				long = append(long, chunk...)
			} else {
				long = long[:0:0]
				// Drop the rest of the line: it is garbage however it ends.
				for errors.Is(err, bufio.ErrBufferFull) {
					_, err = br.ReadSlice('\n')
				}
				st.Garbage++
				if err != nil {
					return st, readErr(err)
				}
			}
			continue
		}
		line := chunk
		if len(long) > 0 {
			line = append(long, chunk...)
			long = long[:0]
		}
		if len(bytes.TrimSpace(line)) > 0 {
			st.line(line, each)
		}
		if err != nil {
			return st, readErr(err)
		}
	}
}

func readErr(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// logLine is the part of an access-log line Read decodes.
type logLine struct {
	Time       string `json:"time"`
	Msg        string `json:"msg"`
	Kind       string `json:"kind"`
	Listener   string `json:"listener"`
	User       string `json:"user"`
	Src        string `json:"src"`
	Dst        string `json:"dst"`
	FQDN       string `json:"fqdn"`
	FQDNSource string `json:"fqdn_source"`
	Protocol   string `json:"protocol"`
	Rule       string `json:"rule"`
	Action     string `json:"action"`
	Enforced   bool   `json:"enforced"`
	Reason     string `json:"reason"`
	BytesUp    int64  `json:"bytes_up"`
	BytesDown  int64  `json:"bytes_down"`
}

// line decodes one line and counts it.
func (st *ReadStats) line(b []byte, each func(*Conn)) {
	var l logLine
	if err := json.Unmarshal(b, &l); err != nil {
		st.Garbage++
		return
	}
	if l.Msg == "dns" || l.Kind == "dns" {
		st.DNS++
		return
	}
	c, ok := l.conn()
	if !ok {
		st.Garbage++
		return
	}
	st.Conns++
	each(c)
}

// conn checks a decoded line: a connection line has a time, a source and
// one of the three actions; its destination may be empty.
func (l *logLine) conn() (*Conn, bool) {
	if l.Msg != "conn" {
		return nil, false
	}
	t, err := time.Parse(time.RFC3339Nano, l.Time)
	if err != nil {
		return nil, false
	}
	src, err := netip.ParseAddrPort(l.Src)
	if err != nil {
		return nil, false
	}
	var dst netip.AddrPort
	if l.Dst != "" {
		if dst, err = netip.ParseAddrPort(l.Dst); err != nil {
			return nil, false
		}
	}
	switch a := accesslog.Action(l.Action); a {
	case accesslog.Allow, accesslog.Deny, accesslog.None:
	default:
		return nil, false
	}
	return &Conn{
		Time: t.UTC(), Listener: l.Listener, User: l.User, Src: src, Dst: dst,
		FQDN: l.FQDN, FQDNSource: accesslog.NameSource(l.FQDNSource), Protocol: l.Protocol,
		Rule: l.Rule, Action: accesslog.Action(l.Action), Enforced: l.Enforced, Reason: l.Reason,
		BytesUp: max(l.BytesUp, 0), BytesDown: max(l.BytesDown, 0),
	}, true
}
