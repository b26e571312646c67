package dnsproxy

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

func TestStripH3Records(t *testing.T) {
	for _, tt := range []struct {
		rr, want string
		removed  int
	}{
		{`a.test. 60 IN HTTPS 1 . alpn="h3,h2"`, `a.test.	60	IN	HTTPS	1 . alpn="h2"`, 1},
		{`a.test. 60 IN HTTPS 1 . alpn="h3-29,h3,h2,http/1.1" port=443`, `a.test.	60	IN	HTTPS	1 . alpn="h2,http/1.1" port="443"`, 2},
		{`a.test. 60 IN HTTPS 1 . alpn="h2"`, `a.test.	60	IN	HTTPS	1 . alpn="h2"`, 0},
		// Nothing left: alpn goes, and what needs it.
		{`a.test. 60 IN HTTPS 1 . mandatory=alpn,port alpn="h3" no-default-alpn port=8443`, `a.test.	60	IN	HTTPS	1 . mandatory="port" port="8443"`, 1},
		{`a.test. 60 IN HTTPS 1 . mandatory=alpn alpn="h3"`, `a.test.	60	IN	HTTPS	1 .`, 1},
		{`_443._https.a.test. 60 IN SVCB 1 b.test. alpn="h3"`, `_443._https.a.test.	60	IN	SVCB	1 b.test.`, 1},
		// "h3x" is not HTTP/3.
		{`a.test. 60 IN HTTPS 1 . alpn="h3x,h3"`, `a.test.	60	IN	HTTPS	1 . alpn="h3x"`, 1},
	} {
		rr, err := dns.NewRR(tt.rr)
		if err != nil {
			t.Fatalf("dns.NewRR(%q): %v", tt.rr, err)
		}
		m := &dns.Msg{Answer: []dns.RR{rr}}
		if n := StripH3(m); n != tt.removed || m.Answer[0].String() != tt.want {
			t.Errorf("StripH3(%s) = %d, %s; want %d, %s", tt.rr, n, m.Answer[0], tt.removed, tt.want)
		}
		// What is left is a record a client can use: it packs.
		if _, err := m.Pack(); err != nil {
			t.Errorf("StripH3(%s): %s does not pack: %v", tt.rr, m.Answer[0], err)
		}
	}
}

// TestStripH3 asks the forwarder, with and without strip_h3, for an HTTPS
// record that offers h3.
func TestStripH3(t *testing.T) {
	up := startUpstream(t, false, `svc.example.test. 60 IN HTTPS 1 . alpn="h3,h2"`)
	for _, strip := range []bool{false, true} {
		t.Run(fmt.Sprint("strip_h3=", strip), func(t *testing.T) {
			p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr}, StripH3: strip})
			r := ask(t, "udp", p.Addr(), "svc.example.test.", dns.TypeHTTPS)
			if len(r.Answer) != 1 {
				t.Fatalf("answer = %v, want one HTTPS record", r.Answer)
			}
			var alpn []string
			for _, kv := range r.Answer[0].(*dns.HTTPS).Value {
				if a, ok := kv.(*dns.SVCBAlpn); ok {
					alpn = a.Alpn
				}
			}
			want := []string{"h3", "h2"}
			if strip {
				want = []string{"h2"}
			}
			if !slices.Equal(alpn, want) {
				t.Errorf("alpn = %q, want %q", alpn, want)
			}
			if got, want := p.Stats().H3Stripped, map[bool]uint64{false: 0, true: 1}[strip]; got != want {
				t.Errorf("Stats().H3Stripped = %d, want %d", got, want)
			}
		})
	}
}
