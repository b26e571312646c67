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
}

// Error returns "FILE:LINE: message", or "FILE: message" without a line.
func (e Error) Error() string {
	if e.Line <= 0 {
		return e.File + ": " + e.Msg
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
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
