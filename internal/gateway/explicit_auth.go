package gateway

import (
	"fmt"
	"time"

	"github.com/egressd/egressd/internal/authguard"
)

// authenticate checks a proxy client's user name and password through the
// gateway's guard (see package authguard), so that a client sending wrong
// passwords in a loop cannot spend the CPUs every connection needs. It
// returns "" when they are right, else why not, for the log. The client
// gets the same refusal whatever the reason (HTTP 407, SOCKS5 RFC 1929
// failure); one refused unchecked comes at once, which tells a brute force
// that it is backing off, but nothing about the password.
func (x *explicitConn) authenticate(user, pass string) (why string) {
	if user == "" {
		return `authentication failed for user ""`
	}
	cfg := x.st.Config
	if !x.g.auth.BackingOff(x.src.Addr()) && x.g.rightPasswords.known(cfg, user, pass, time.Now()) {
		x.g.auth.Remembered()
		return ""
	}
	// Asked again with the slot held: a browser's burst of connections
	// with the same credentials queues together, and only the first of
	// them need be hashed.
	switch x.g.auth.Check(x.src.Addr(), func() bool {
		if x.g.rightPasswords.known(cfg, user, pass, time.Now()) {
			return true
		}
		x.g.rightPasswords.hashed.Add(1)
		return cfg.Authenticate(user, pass)
	}) {
	case authguard.OK:
		x.g.rightPasswords.add(cfg, user, pass, time.Now())
		return ""
	case authguard.Backoff:
		return fmt.Sprintf("authentication refused for user %q: too many failures from %s, backing off", user, x.src.Addr())
	case authguard.Busy:
		return fmt.Sprintf("authentication refused for user %q: too many password checks at once", user)
	}
	return fmt.Sprintf("authentication failed for user %q", user)
}

// authCounts reports the guard's results for egressd_auth_checks_total.
func (g *Gateway) authCounts() map[string]uint64 {
	c := g.auth.Counts()
	return map[string]uint64{"ok": c.OK, "wrong": c.Wrong, "backoff": c.Backoff, "busy": c.Busy}
}
