package suggest

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/egressd/egressd/internal/config"
)

// DefaultDocument is a whole config file around a policy section, for a
// suggestion made without the operator's config: egressd's built-in
// listeners and admin endpoint (config.Default), so that the file loads as
// it is and `egressd check` passes it.
func DefaultDocument(policySection []byte) []byte {
	def := config.Default()
	var b strings.Builder
	b.WriteString("# egressd's config, suggested by egressd suggest from an access log.\n")
	b.WriteString("# The listeners and the admin endpoint are egressd's built-in defaults: replace\n")
	b.WriteString("# them with yours, or run egressd suggest --config YOUR_FILE to keep your file's.\n")
	b.WriteString("listeners:\n")
	for _, l := range def.Listeners {
		fmt.Fprintf(&b, "  - name: %s\n    mode: %s\n    address: %s\n", quote(l.Name), l.Mode, quote(l.Address.String()))
		switch l.Mode {
		case config.ModeTransparent:
			fmt.Fprintf(&b, "    sni_destination: %s\n", l.SNIDestination)
		case config.ModeSNI:
			fmt.Fprintf(&b, "    upstream_port: %d\n", l.UpstreamPort)
		case config.ModeExplicit:
			fmt.Fprintf(&b, "    tunnel_sni: %s\n", l.TunnelSNI)
		}
	}
	if def.Admin.Address.IsValid() {
		fmt.Fprintf(&b, "admin:\n  address: %s\n", quote(def.Admin.Address.String()))
	}
	b.Write(policySection)
	return []byte(b.String())
}

// ReplacePolicy returns the config file current with its policy section
// replaced by policySection (a top-level "policy:" mapping), or added when
// it has none. Everything else stays as written, comments included: the
// lines from "policy:" to the next top-level key are replaced, keeping the
// comments that head that key. A file whose top level is not a block
// mapping is rewritten from its parsed form instead, without comments.
func ReplacePolicy(current, policySection []byte) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(current, &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("the config's top level is not a mapping")
	}
	root := doc.Content[0]
	if root.Style&yaml.FlowStyle != 0 {
		return replaceNode(&doc, policySection)
	}
	lines := bytes.SplitAfter(current, []byte("\n"))
	if n := len(lines); n > 0 && len(lines[n-1]) == 0 {
		lines = lines[:n-1]
	}
	start, end := -1, len(lines)
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value != "policy" {
			continue
		}
		start = root.Content[i].Line - 1
		if i+2 < len(root.Content) {
			end = root.Content[i+2].Line - 1
			// The comments and blank lines before the next key are its.
			for end > start+1 && topComment(lines[end-1]) {
				end--
			}
		}
		break
	}
	var out bytes.Buffer
	if start < 0 {
		out.Write(current)
		if len(current) > 0 && !bytes.HasSuffix(current, []byte("\n")) {
			out.WriteByte('\n')
		}
		out.Write(policySection)
		return out.Bytes(), nil
	}
	if start >= len(lines) || end > len(lines) || start > end {
		return replaceNode(&doc, policySection)
	}
	for _, l := range lines[:start] {
		out.Write(l)
	}
	out.Write(policySection)
	for _, l := range lines[end:] {
		out.Write(l)
	}
	return out.Bytes(), nil
}

// topComment reports whether a line is blank or a comment at the top level.
func topComment(line []byte) bool {
	t := bytes.TrimRight(line, "\r\n")
	return len(bytes.TrimSpace(t)) == 0 || t[0] == '#'
}

// replaceNode replaces the policy in the parsed document and writes it
// out again.
func replaceNode(doc *yaml.Node, policySection []byte) ([]byte, error) {
	var p yaml.Node
	if err := yaml.Unmarshal(policySection, &p); err != nil {
		return nil, err
	}
	value := p.Content[0].Content[1]
	root := doc.Content[0]
	root.Style = 0
	found := false
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "policy" {
			root.Content[i+1], found = value, true
		}
	}
	if !found {
		root.Content = append(root.Content, p.Content[0].Content[0], value)
	}
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	enc.Close()
	return out.Bytes(), nil
}

// Document returns current (the config file named name; nil for none) with
// its policy replaced by policySection, checked as `egressd check` checks
// it: it parses and its policy compiles. A problem the current file has as
// well (a password_env variable not set here) is the environment's, not the
// suggestion's, and passes.
func Document(name string, current, policySection []byte) ([]byte, error) {
	if current == nil {
		out := DefaultDocument(policySection)
		return out, verify(name, out, nil)
	}
	out, err := ReplacePolicy(current, policySection)
	if err == nil {
		if err = verify(name, out, current); err == nil {
			return out, nil
		}
	}
	// The lines could not be cut cleanly (an anchor, an odd layout): write
	// the document from its parsed form.
	var doc yaml.Node
	if uerr := yaml.Unmarshal(current, &doc); uerr != nil || len(doc.Content) == 0 {
		return nil, fmt.Errorf("%s: %w", name, errors.Join(err, uerr))
	}
	if out, err = replaceNode(&doc, policySection); err != nil {
		return nil, err
	}
	return out, verify(name, out, current)
}

// verify parses out as a config and compiles its policy.
func verify(name string, out, current []byte) error {
	cfg, err := config.Parse(name, out)
	if err == nil {
		_, err = cfg.Compile()
		return err
	}
	var outErrs, curErrs config.Errors
	if current == nil || !errors.As(err, &outErrs) {
		return err
	}
	if _, cerr := config.Parse(name, current); !errors.As(cerr, &curErrs) {
		return err
	}
	known := make(map[string]bool)
	for _, e := range curErrs {
		known[e.Msg] = true
	}
	for _, e := range outErrs {
		if !known[e.Msg] {
			return err
		}
	}
	return nil
}
