package suggest

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/policy"
)

// randomLog writes n lines an access log could hold, and some it should
// not: names of every kind (under a few registrable domains, public
// suffixes, IDNs in Unicode, odd bytes, IP literals, too long), sources
// and destinations of both families (restricted ones too, IPv4-mapped,
// with zones), ports, users, protocols, actions and reasons of every kind,
// and garbage.
func randomLog(r *rand.Rand, n int) []byte {
	pick := func(s ...string) string { return s[r.IntN(len(s))] }
	name := func() string {
		switch r.IntN(12) {
		case 0:
			return pick("", "com", "co.uk", "github.io", "1.2.3.4", "[::1]", "2001:db8::1", "0x7f.1", "a..b", ".", "*.x.com")
		case 1:
			return pick("Bücher.Example", "ÄÖÜ.de", "пример.рф", "☃.net", "a.ß.de", "xn--bcher-kva.example", "ﬀ.example")
		case 2:
			b := make([]byte, r.IntN(12))
			for i := range b {
				b[i] = byte(r.IntN(256))
			}
			return string(b)
		case 3:
			return strings.Repeat("a", r.IntN(70)) + ".example.com"
		case 4:
			return fmt.Sprintf("h%d.%s", r.IntN(5), pick("co.uk", "github.io", "com", "s3.amazonaws.com", "test"))
		}
		return fmt.Sprintf("%s.%s", pick("a", "b", "c", "d", "www", "API", "x.y", "_sip._tcp"),
			pick("example.com", "example.co.uk", "example.org.", "corp.test", "bücher.example", "example.COM"))
	}
	addr := func() string {
		switch r.IntN(8) {
		case 0:
			return fmt.Sprintf("2001:db8:%x::%x", r.IntN(3), r.IntN(300))
		case 1:
			return pick("::ffff:10.0.0.1", "fe80::1%eth0", "169.254.169.254", "127.0.0.1", "::1", "fd00::5", "0.0.0.0")
		}
		return fmt.Sprintf("%d.%d.%d.%d", pick4(r, 10, 198, 203), r.IntN(3), r.IntN(3), r.IntN(256))
	}
	ap := func() string {
		a := netip.MustParseAddr(addr())
		return netip.AddrPortFrom(a, uint16(r.IntN(4)*r.IntN(65536))).String()
	}
	var out bytes.Buffer
	base := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	for range n {
		if r.IntN(15) == 0 {
			out.WriteString(pick("garbage\n", "{\"msg\":\"dns\",\"kind\":\"dns\"}\n", "{\"msg\":\"conn\",\"src\":5}\n", "\xff\xfe\n", "{}\n", "time=x level=INFO msg=conn\n"))
			continue
		}
		l := map[string]any{
			"time":        base.Add(time.Duration(r.IntN(1e6)) * time.Second).Format(time.RFC3339Nano),
			"level":       "INFO",
			"msg":         "conn",
			"listener":    pick("t", "proxy", ""),
			"user":        pick("", "", "", "alice", "bob", "mallory", "ünï", "a\"b"),
			"src":         ap(),
			"dst":         pick(ap(), ap(), ""),
			"fqdn":        pick(name(), name(), ""),
			"fqdn_source": pick("sni", "host", "connect", "socks", "dns", "dns", "none", "weird"),
			"protocol":    pick(slices.Concat(policy.ProtocolNames, []string{"socks5", "quic", "", "TLS"})...),
			"rule":        pick("", "", "old", "x y"),
			"action":      pick("allow", "deny", "deny", "none"),
			"enforced":    r.IntN(2) == 0,
			"reason":      pick("no rule matched: default deny", "matched rule \"old\"", "client reset the connection during peek", "resolve x: no such host; no rule matched: default deny"),
			"bytes_up":    r.Int64N(1 << 40),
			"bytes_down":  r.Int64N(1<<40) - 5,
		}
		b, _ := json.Marshal(l)
		out.Write(b)
		out.WriteByte('\n')
	}
	return out.Bytes()
}

func pick4(r *rand.Rand, s ...int) int { return s[r.IntN(len(s))] }

// included reports whether a suggestion must allow c.
func included(c *Conn) bool {
	in := c.Input()
	return c.Decided() && (in.FQDN != "" || in.Dst.IsValid()) && !(in.Dst.IsValid() && policy.Restricted(in.Dst))
}

// TestSuggestProperty: whatever the log holds, the suggestion loads with
// the real parser and compiles (egressd check passes it), with and without
// a current config, allows every connection it was made from, and does not
// depend on the order of the lines.
func TestSuggestProperty(t *testing.T) {
	for seed := range uint64(60) {
		r := rand.New(rand.NewPCG(seed, 21))
		log := randomLog(r, 1+r.IntN(400))
		opts := Options{Collapse: r.IntN(5)}
		var cur []byte
		if seed%2 == 1 {
			cur = []byte(current)
			opts.Users = []string{"alice"}
		}
		out, conns := suggestFrom(t, log, opts, cur)
		cfg, err := config.Parse("suggested.yaml", out)
		if err != nil {
			t.Fatalf("seed %d: the suggestion does not load: %v\n%s", seed, err, out)
		}
		pol, err := cfg.Compile()
		if err != nil {
			t.Fatalf("seed %d: the suggestion does not compile: %v", seed, err)
		}
		checked := 0
		for _, c := range conns {
			if !included(c) {
				continue
			}
			checked++
			in := c.Input()
			if d := pol.Decide(in); d.Action != policy.Allow {
				t.Fatalf("seed %d: Decide(%+v) = %v (%s), want allow: the suggestion leaves out a connection it saw\n%s", seed, in, d.Action, d.Reason, out)
			}
			if d := pol.DecideDial(in); in.Dst.IsValid() && d.Action != policy.Allow {
				t.Fatalf("seed %d: DecideDial(%+v) = %v (%s), want allow", seed, in, d.Action, d.Reason)
			}
		}
		// The same lines in another order, gzip-compressed: the same file.
		lines := bytes.SplitAfter(log, []byte("\n"))
		r.Shuffle(len(lines), func(i, j int) { lines[i], lines[j] = lines[j], lines[i] })
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		for _, l := range lines {
			zw.Write(l)
			if !bytes.HasSuffix(l, []byte("\n")) {
				zw.Write([]byte("\n"))
			}
		}
		zw.Close()
		if again, _ := suggestFrom(t, gz.Bytes(), opts, cur); !bytes.Equal(out, again) {
			t.Fatalf("seed %d: the lines in another order make another suggestion:\n%s\n---\n%s", seed, out, again)
		}
		if seed == 0 {
			t.Logf("seed 0: %d lines, %d connections checked, %d rules", bytes.Count(log, []byte("\n")), checked, len(cfg.Policy.Rules))
		}
	}
}

// suggestFrom runs the whole suggestion as egressd suggest does.
func suggestFrom(t *testing.T, log []byte, opts Options, cur []byte) ([]byte, []*Conn) {
	t.Helper()
	b := NewBuilder(opts)
	var conns []*Conn
	sum := Summary{Collapse: opts.Collapse}
	if _, err := Read(bytes.NewReader(log), func(c *Conn) {
		conns = append(conns, c)
		b.Add(c)
		sum.Count(c)
	}); err != nil {
		t.Fatal(err)
	}
	sum.Left = b.Left()
	var section bytes.Buffer
	WritePolicy(&section, b.Rules(), false, sum)
	out, err := Document("suggested.yaml", cur, section.Bytes())
	if err != nil {
		t.Fatalf("Document: %v\n%s", err, section.Bytes())
	}
	return out, conns
}

// FuzzSuggest: any bytes as a log make a suggestion that loads.
func FuzzSuggest(f *testing.F) {
	f.Add(randomLog(rand.New(rand.NewPCG(1, 2)), 20))
	f.Add([]byte(line("10.0.0.1:1", "198.51.100.1:443", "a.example.com", "sni", "tls", "")))
	f.Fuzz(func(t *testing.T, log []byte) {
		out, _ := suggestFrom(t, log, Options{Collapse: 2}, nil)
		if _, err := config.Parse("suggested.yaml", out); err != nil {
			t.Fatalf("the suggestion does not load: %v\n%s", err, out)
		}
	})
}
