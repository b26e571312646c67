package recent

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/accesslog"
)

func record(name, rule string, action accesslog.Action, src string) *accesslog.Record {
	return &accesslog.Record{Start: time.Unix(1, 0), Listener: "t", Src: netip.MustParseAddrPort(src + ":1000"),
		Dst: netip.MustParseAddrPort("198.51.100.1:443"), FQDN: name, FQDNSource: accesslog.FromSNI, Protocol: "tls",
		Rule: rule, Action: action, Enforced: true}
}

func TestRing(t *testing.T) {
	r := New()
	for i := range RingSize + 10 {
		r.Add(record(fmt.Sprintf("n%d.test", i), "a", accesslog.Allow, "10.0.0.1"))
	}
	r.Add(record("", "", accesslog.None, "10.0.0.1")) // nothing decided: not recorded
	s := r.Snapshot()
	if len(s.Recent) != RingSize || s.Total != RingSize+10 {
		t.Fatalf("Snapshot: %d recent of %d, want %d of %d", len(s.Recent), s.Total, RingSize, RingSize+10)
	}
	if got, want := s.Recent[0].FQDN, fmt.Sprintf("n%d.test", RingSize+9); got != want {
		t.Errorf("newest = %s, want %s", got, want)
	}
	if got, want := s.Recent[RingSize-1].FQDN, "n10.test"; got != want {
		t.Errorf("oldest = %s, want %s", got, want)
	}
	if s.Rules["a"] != RingSize+10 {
		t.Errorf("rule a counted %d, want %d", s.Rules["a"], RingSize+10)
	}
}

// TestTopKeepsHeavyHitters: a name denied often stays on the list however
// many names are denied once, and its count is never below the truth.
func TestTopKeepsHeavyHitters(t *testing.T) {
	r := New()
	for i := range 20000 {
		r.Add(record(fmt.Sprintf("once%d.test", i), "", accesslog.Deny, "10.0.0.2"))
		if i%50 == 0 {
			r.Add(record("often.test", "", accesslog.Deny, "10.0.0.3"))
		}
	}
	s := r.Snapshot()
	if len(s.Names) != TopSize {
		t.Fatalf("%d names on the list, want %d", len(s.Names), TopSize)
	}
	var often *Count[string]
	for i := range s.Names {
		if s.Names[i].Key == "often.test" {
			often = &s.Names[i]
		}
	}
	if often == nil || often.Count < 400 {
		t.Errorf("often.test (denied 400 times among 20000 names) = %+v, want on the list with a count of at least 400", often)
	}
	if s.Sources[0].Key != netip.MustParseAddr("10.0.0.2") || s.Sources[0].Count != 20000 {
		t.Errorf("top source = %+v, want 10.0.0.2 with 20000", s.Sources[0])
	}
	if s.Defaults[accesslog.Deny] != 20400 {
		t.Errorf("default denies = %d, want 20400", s.Defaults[accesslog.Deny])
	}
}

func TestRulesBounded(t *testing.T) {
	r := New()
	for i := range MaxRules + 100 {
		r.Add(record("a.test", fmt.Sprint(i), accesslog.Allow, "10.0.0.1"))
	}
	r.Add(record("a.test", "0", accesslog.Allow, "10.0.0.1"))
	if s := r.Snapshot(); len(s.Rules) != MaxRules || s.Rules["0"] != 2 {
		t.Errorf("%d rules counted (rule 0: %d), want %d (2)", len(s.Rules), s.Rules["0"], MaxRules)
	}
}

func TestNilRecorder(t *testing.T) {
	var r *Recorder
	r.Add(record("a.test", "a", accesslog.Allow, "10.0.0.1"))
}

// TestAddAllocates nothing on the gateway's hot path: not for an allow by
// a rule seen before, not for a deny of a name never seen.
func TestAddAllocatesNothing(t *testing.T) {
	r := New()
	allow := record("a.test", "a", accesslog.Allow, "10.0.0.1")
	r.Add(allow)
	denies := make([]*accesslog.Record, 1000)
	for i := range denies {
		denies[i] = record(fmt.Sprintf("d%d.test", i), "", accesslog.Deny, fmt.Sprintf("10.0.%d.%d", i/256, i%256))
	}
	i := 0
	if n := testing.AllocsPerRun(5000, func() {
		r.Add(allow)
		r.Add(denies[i%len(denies)])
		i++
	}); n != 0 {
		t.Errorf("Add allocates %v times per call, want 0", n)
	}
}

func BenchmarkAdd(b *testing.B) {
	r := New()
	allow := record("a.test", "a", accesslog.Allow, "10.0.0.1")
	b.ReportAllocs()
	for b.Loop() {
		r.Add(allow)
	}
}

// BenchmarkAddDenyChurn: every deny a new name and source, the top lists
// full: the worst case, a scan of every slot.
func BenchmarkAddDenyChurn(b *testing.B) {
	r := New()
	denies := make([]*accesslog.Record, 4096)
	for i := range denies {
		denies[i] = record(fmt.Sprintf("d%d.test", i), "", accesslog.Deny, fmt.Sprintf("10.0.%d.%d", i/256, i%256))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		r.Add(denies[i%len(denies)])
		i++
	}
}

func BenchmarkAddParallel(b *testing.B) {
	r := New()
	allow := record("a.test", "a", accesslog.Allow, "10.0.0.1")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.Add(allow)
		}
	})
}
