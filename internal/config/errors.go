package config

import (
	"fmt"
	"strings"
)

// Error is one problem in a config file, at the line of the offending YAML
// node, so that an editor can jump to it.
type Error struct {
	File string
	Line int // 1-based; 0 when the YAML library gave no position
	Msg  string
	// Warning marks a problem of the environment the file is read in, not
	// of the file, that Check lets pass (see Check).
	Warning bool
}

// Error returns "FILE:LINE: message", or "FILE: message" without a line;
// a warning's message starts with "warning: ".
func (e Error) Error() string {
	msg := e.Msg
	if e.Warning {
		msg = "warning: " + msg
	}
	if e.Line <= 0 {
		return e.File + ": " + msg
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, msg)
}

// Errors is every problem found in one config file, in line order. Parse
// reports them all at once, so that fixing a file takes one round, not one
// per mistake.
type Errors []Error

// Error returns one "FILE:LINE: message" per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}
