// Package e2e holds egressd's end-to-end tests: the real binary runs in a
// network namespace between a client namespace and a server namespace, and
// real clients (openssl, ssh, curl, Go's crypto/tls) reach real servers
// through it, transparently (iptables REDIRECT or TPROXY) or through the sni
// listener.
//
// The tests need root and iproute2. Without them they skip, except when the
// environment says CI=true: there a missing tool or privilege fails the run.
//
//	go test ./e2e/ -v
package e2e
