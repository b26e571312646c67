package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestSlowClients: a client that says nothing and one whose ClientHello
// stalls halfway are closed by egressd's timeouts (first_bytes, then
// client_hello, here 1 s), each with its access-log line, while a good
// client connecting meanwhile is served.
func TestSlowClients(t *testing.T) {
	w := newWorld(t, worldOptions{intercept: redirect, clientHello: time.Second})
	from := w.log.mark()

	// Silent, to a destination no rule allows: decided server-first, denied,
	// reset.
	silent, err := w.cli.dial("", srvAddr+":9999")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	// Half a ClientHello, then nothing.
	stalled, err := w.cli.dial("", srvAddr+":443")
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	hello := clientHello(t, w.tlsConfig("allowed.test"))
	if _, err := stalled.Write(hello[:len(hello)/2]); err != nil {
		t.Fatal(err)
	}

	type outcome struct {
		how  string
		data []byte
	}
	silentDone, stalledDone := make(chan outcome, 1), make(chan outcome, 1)
	go func() { how, b := readOutcome(silent, 20*time.Second); silentDone <- outcome{how, b} }()
	go func() { how, b := readOutcome(stalled, 20*time.Second); stalledDone <- outcome{how, b} }()

	good, err := w.cli.dial("", srvAddr+":443")
	if err != nil {
		t.Fatal(err)
	}
	goodSrc := good.LocalAddr().String()
	if _, greeting, err := greet(good, w.tlsConfig("allowed.test")); err != nil || !strings.HasPrefix(greeting, "hello sni=allowed.test") {
		t.Errorf("good client: %v, greeting %q", err, greeting)
	}

	if o := <-silentDone; o.how != "reset" || len(o.data) > 0 {
		t.Errorf("silent client: connection ended with %s after %d bytes, want reset after none", o.how, len(o.data))
	}
	if o := <-stalledDone; (o.how != "reset" && o.how != "eof") || len(o.data) > 0 {
		t.Errorf("stalled ClientHello: connection ended with %s after %d bytes, want closed (reset or eof) with nothing sent", o.how, len(o.data))
	}

	w.log.expect(t, from, "silent client", bySrc(silent.LocalAddr().String()), want{
		listener: "transparent", dst: srvAddr + ":9999", fqdnSource: "none", protocol: []string{"server-first"},
		rule: rule(""), action: "deny",
	})
	line := w.log.expect(t, from, "stalled ClientHello", bySrc(stalled.LocalAddr().String()), want{
		listener: "transparent", dst: srvAddr + ":443", protocol: []string{"tls"}, action: "deny",
	})
	t.Logf("stalled ClientHello: reason %q", line.Reason)
	w.log.expect(t, from, "good client", bySrc(goodSrc), want{fqdn: "allowed.test", rule: rule("allowed"), action: "allow", bytes: 1})
}
