package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// decoder walks the YAML node tree rather than unmarshalling into structs:
// the tree keeps every value's line, and walking it by hand lets one pass
// report every problem instead of stopping at the first.
type decoder struct {
	file string
	errs Errors
	// userLines holds the users section's names and lines; rules that name
	// users are checked against it.
	userLines map[string]int
	// secretsElsewhere: the file is checked where its secrets are not
	// (Check), so a password_env variable that is not set is a warning.
	secretsElsewhere bool
}

func (d *decoder) errorf(n *yaml.Node, format string, args ...any) {
	d.errs = append(d.errs, Error{File: d.file, Line: n.Line, Msg: fmt.Sprintf(format, args...)})
}

// warnf records a warning: a problem that Check reports and lets pass.
func (d *decoder) warnf(n *yaml.Node, format string, args ...any) {
	d.errs = append(d.errs, Error{File: d.file, Line: n.Line, Msg: fmt.Sprintf(format, args...), Warning: true})
}

// failed reports whether any problem recorded is more than a warning.
func (d *decoder) failed() bool {
	return slices.ContainsFunc(d.errs, func(e Error) bool { return !e.Warning })
}

// sorted returns the errors in line order (the walk visits sections in a
// fixed order, not the file's).
func (d *decoder) sorted() Errors {
	slices.SortStableFunc(d.errs, func(a, b Error) int { return a.Line - b.Line })
	return d.errs
}

var (
	yamlLine    = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	yamlAnchor  = regexp.MustCompile(`^yaml: unknown anchor '(.*)' referenced$`)
	yamlProblem = map[string]bool{ // parser (not scanner) problems, see syntaxError
		"did not find expected ',' or ']'":       true,
		"did not find expected ',' or '}'":       true,
		"did not find expected '-' indicator":    true,
		"did not find expected <document start>": true,
		"did not find expected <stream-start>":   true,
		"did not find expected key":              true,
		"did not find expected node content":     true,
		"found duplicate %TAG directive":         true,
		"found duplicate %YAML directive":        true,
		"found incompatible YAML document":       true,
		"found undefined tag handle":             true,
	}
)

// document parses data as exactly one YAML document and returns its top
// node, or nil (with the problem recorded) when there is nothing to walk.
func (d *decoder) document(data []byte) *yaml.Node {
	const empty = "empty config: at least one listener is required"
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	switch err := dec.Decode(&doc); {
	case errors.Is(err, io.EOF):
		d.errs = append(d.errs, Error{File: d.file, Line: 1, Msg: empty})
		return nil
	case err != nil:
		d.syntaxError(err, data)
		return nil
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		d.syntaxError(err, data)
	default:
		d.errorf(&next, "a second YAML document; the config is one document")
	}
	if len(doc.Content) == 0 || isNull(doc.Content[0]) {
		d.errs = append(d.errs, Error{File: d.file, Line: 1, Msg: empty})
		return nil
	}
	return deref(doc.Content[0])
}

// syntaxError records a YAML parse error at the line yaml names, in its
// words. yaml counts lines from 0 in its parser's errors (from 1 in its
// scanner's), so those are moved down one; it names no line for problems on
// the first line, for bytes it cannot read (reported at the first bad byte)
// and for undefined aliases (reported at the first use).
func (d *decoder) syntaxError(err error, data []byte) {
	msg := err.Error()
	line := 1
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = "yaml: " + m[2]
		if yamlProblem[m[2]] {
			line++
		}
	} else if m := yamlAnchor.FindStringSubmatch(msg); m != nil {
		if i := bytes.Index(data, []byte("*"+m[1])); i >= 0 {
			line += bytes.Count(data[:i], []byte("\n"))
		}
	} else {
		line = badByteLine(data)
	}
	d.errs = append(d.errs, Error{File: d.file, Line: line, Msg: msg})
}

// badByteLine returns the line of the first byte that is not printable
// UTF-8 text (as yaml's reader requires), or 1.
func badByteLine(data []byte) int {
	line := 1
	for len(data) > 0 {
		r, size := utf8.DecodeRune(data)
		switch {
		case r == utf8.RuneError && size <= 1, r < 0x20 && r != '\t' && r != '\n' && r != '\r', r == 0x7f:
			return line
		case r == '\n':
			line++
		}
		data = data[size:]
	}
	return 1
}

// deref follows an alias (*name) to its anchored value, keeping the alias's
// line, so that an error points where the value is used.
func deref(n *yaml.Node) *yaml.Node {
	if n.Kind != yaml.AliasNode || n.Alias == nil {
		return n
	}
	v := *n.Alias
	v.Line, v.Column = n.Line, n.Column
	return &v
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what a node is, for "want X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "nothing"
		case "!!str":
			return strconv.Quote(n.Value)
		}
		return n.Value
	}
	return "an unexpected YAML node"
}

// field prefixes a message with where it is in the file's structure.
func field(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func item(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

// mapping checks that n is a mapping whose keys are all allowed and returns
// its values by key (aliases followed). Unknown and repeated keys are errors
// at the key's line.
func (d *decoder) mapping(n *yaml.Node, path string, allowed ...string) (map[string]*yaml.Node, bool) {
	if n.Kind != yaml.MappingNode {
		if path == "" {
			path = "config"
		}
		d.errorf(n, "%s: want a mapping, got %s", path, describe(n))
		return nil, false
	}
	where := "at the top level"
	if path != "" {
		where = "in " + path
	}
	values := make(map[string]*yaml.Node, len(n.Content)/2)
	lines := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := deref(n.Content[i])
		switch first, seen := lines[k.Value]; {
		case k.Kind != yaml.ScalarNode:
			d.errorf(k, "%s: want a key name, got %s", path, describe(k))
		case !slices.Contains(allowed, k.Value):
			d.errorf(k, "unknown key %q %s; allowed: %s", k.Value, where, strings.Join(allowed, ", "))
		case seen:
			d.errorf(k, "%s: repeated (first at line %d)", field(path, k.Value), first)
		default:
			lines[k.Value] = k.Line
			values[k.Value] = deref(n.Content[i+1])
		}
	}
	return values, true
}

// list checks that n is a list and returns its items, aliases followed.
func (d *decoder) list(n *yaml.Node, path, what string) ([]*yaml.Node, bool) {
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, "%s: want a list of %s, got %s", path, what, describe(n))
		return nil, false
	}
	items := make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		items[i] = deref(c)
	}
	return items, true
}

// matchList is list for a rule's match fields, where an empty list is
// refused: it reads as "match nothing" to some and as "no restriction" to
// others.
func (d *decoder) matchList(n *yaml.Node, path, what string) []*yaml.Node {
	items, ok := d.list(n, path, what)
	if ok && len(items) == 0 {
		d.errorf(n, "%s: empty list; list at least one of %s or leave the key out", path, what)
	}
	return items
}

// scalar returns n's text when n is a scalar with the given YAML tag.
func (d *decoder) scalar(n *yaml.Node, path, tag, want string) (string, bool) {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == tag {
		return n.Value, true
	}
	d.errorf(n, "%s: want %s, got %s", path, want, describe(n))
	return "", false
}

func (d *decoder) str(n *yaml.Node, path string) (string, bool) {
	s, ok := d.scalar(n, path, "!!str", "a string")
	if ok && s == "" {
		d.errorf(n, "%s: empty string", path)
		return "", false
	}
	return s, ok
}

func (d *decoder) boolean(n *yaml.Node, path string) (bool, bool) {
	s, ok := d.scalar(n, path, "!!bool", "true or false")
	if !ok {
		return false, false
	}
	switch strings.ToLower(s) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	d.errorf(n, "%s: want true or false, got %q", path, s)
	return false, false
}

// oneOf returns n's text when it is one of values.
func (d *decoder) oneOf(n *yaml.Node, path, what string, values ...string) (string, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return "", false
	}
	if !slices.Contains(values, s) {
		d.errorf(n, "%s: unknown %s %q; want %s", path, what, s, strings.Join(values, " or "))
		return "", false
	}
	return s, true
}

// duration reads a positive Go duration ("300ms", "5s", "15m").
func (d *decoder) duration(n *yaml.Node, path string) (time.Duration, bool) {
	if n.Kind == yaml.ScalarNode && (n.ShortTag() == "!!int" || n.ShortTag() == "!!float") {
		d.errorf(n, "%s: %s has no unit; write e.g. 300ms, 5s or 15m", path, n.Value)
		return 0, false
	}
	s, ok := d.str(n, path)
	if !ok {
		return 0, false
	}
	v, err := time.ParseDuration(s)
	switch {
	case err != nil:
		d.errorf(n, "%s: invalid duration %q; write e.g. 300ms, 5s or 15m", path, s)
		return 0, false
	case v <= 0:
		d.errorf(n, "%s: duration %s must be positive", path, s)
		return 0, false
	}
	return v, true
}

// port reads a port number, 1 to 65535.
func (d *decoder) port(n *yaml.Node, path string) (uint16, bool) {
	s, ok := d.scalar(n, path, "!!int", "a port number")
	if !ok {
		return 0, false
	}
	p, err := parsePort(s)
	if err != nil {
		d.errorf(n, "%s: %v", path, err)
		return 0, false
	}
	return p, true
}

func parsePort(s string) (uint16, error) {
	s = strings.TrimSpace(s)
	v, err := strconv.ParseUint(s, 10, 64)
	switch {
	case err != nil && errors.Is(err, strconv.ErrRange), err == nil && (v == 0 || v > 65535):
		return 0, fmt.Errorf("port %s out of range 1-65535", s)
	case err != nil:
		return 0, fmt.Errorf("invalid port %q", s)
	}
	return uint16(v), nil
}

// uint32Value reads a decimal or 0x-hex integer that fits in 32 bits.
func (d *decoder) uint32Value(n *yaml.Node, path string) (uint32, bool) {
	s, ok := d.scalar(n, path, "!!int", "an integer")
	if !ok {
		return 0, false
	}
	base, digits := 10, s
	if h, ok := strings.CutPrefix(strings.ToLower(s), "0x"); ok {
		base, digits = 16, h
	}
	v, err := strconv.ParseUint(digits, base, 32)
	if err != nil {
		d.errorf(n, "%s: want a decimal or 0x-hex integer from 0 to 4294967295, got %s", path, s)
		return 0, false
	}
	return uint32(v), true
}
