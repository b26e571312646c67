package dnsproxy

import (
	"github.com/miekg/dns"
	"golang.org/x/crypto/cryptobyte"
	"strings"
)

// echVersion is the ECHConfig version of RFC 9849 §4 (the extension's
// code point, also the version of the published drafts since -13).
const echVersion = 0xfe0d

// ECHConfig is what egressd needs of one ECH configuration: the public name
// an ECH client puts in its outer ClientHello, and the config_id it names.
type ECHConfig struct {
	PublicName string // as published, not normalised
	ConfigID   uint8
}

// ParseECHConfigList reads an ECHConfigList (RFC 9849 §4) as carried in the
// ech SvcParam and returns its configurations of version 0xfe0d; others
// are skipped by their length, as a client skips them. ok is false when the
// list itself is malformed, in which case no config is returned: a client
// rejects such a list too.
func ParseECHConfigList(b []byte) (configs []ECHConfig, ok bool) {
	s := cryptobyte.String(b)
	var list cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&list) || !s.Empty() {
		return nil, false
	}
	for !list.Empty() {
		var version uint16
		var contents cryptobyte.String
		if !list.ReadUint16(&version) || !list.ReadUint16LengthPrefixed(&contents) {
			return nil, false
		}
		if version != echVersion {
			continue
		}
		c, ok := parseECHConfigContents(contents)
		if !ok {
			return nil, false
		}
		configs = append(configs, c)
	}
	return configs, true
}

// parseECHConfigContents reads ECHConfigContents: HpkeKeyConfig
// (config_id, kem_id, public_key, cipher_suites), maximum_name_length,
// public_name<1..255>, extensions.
func parseECHConfigContents(s cryptobyte.String) (ECHConfig, bool) {
	var c ECHConfig
	var kem uint16
	var pub, suites, name, exts cryptobyte.String
	var maxName uint8
	if !s.ReadUint8(&c.ConfigID) || !s.ReadUint16(&kem) ||
		!s.ReadUint16LengthPrefixed(&pub) || pub.Empty() ||
		!s.ReadUint16LengthPrefixed(&suites) || len(suites) < 4 || len(suites)%4 != 0 ||
		!s.ReadUint8(&maxName) ||
		!s.ReadUint8LengthPrefixed(&name) || name.Empty() ||
		!s.ReadUint16LengthPrefixed(&exts) || !s.Empty() {
		return ECHConfig{}, false
	}
	c.PublicName = string(name)
	return c, true
}

// echConfigs returns the ECH configurations of the HTTPS and SVCB records
// in m's answer section that answer the name asked: owned by one of chain
// (upstream.Chain).
func echConfigs(m *dns.Msg, chain map[string]bool) []ECHConfig {
	var out []ECHConfig
	for _, rr := range m.Answer {
		if !chain[strings.ToLower(rr.Header().Name)] {
			continue // another owner's: no answer to the name asked
		}
		for _, kv := range svcbValues(rr) {
			if e, ok := kv.(*dns.SVCBECHConfig); ok {
				cs, _ := ParseECHConfigList(e.ECH)
				out = append(out, cs...)
			}
		}
	}
	return out
}

// svcb is the SVCB body of an SVCB or HTTPS record, nil for any other
// record.
func svcb(rr dns.RR) *dns.SVCB {
	switch r := rr.(type) {
	case *dns.SVCB:
		return r
	case *dns.HTTPS:
		return &r.SVCB
	}
	return nil
}

// svcbValues is the key=value list of an SVCB or HTTPS record, nil for any
// other record.
func svcbValues(rr dns.RR) []dns.SVCBKeyValue {
	if s := svcb(rr); s != nil {
		return s.Value
	}
	return nil
}
