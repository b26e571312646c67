package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that no input makes the loader panic, that every refusal
// is a list of located problems, and that whatever it accepts compiles: the
// loader must check everything policy.Compile checks, with line numbers.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add(defaultYAML)
	for _, tt := range brokenFiles {
		f.Add([]byte(tt.yaml))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("Parse(%q) = %v, want Errors", data, err)
			}
			for _, e := range errs {
				if e.Line < 1 || e.Msg == "" {
					t.Errorf("Parse(%q): problem without a line or message: %+v", data, e)
				}
			}
			return
		}
		if len(c.Listeners) == 0 {
			t.Errorf("Parse(%q) accepted a config without listeners", data)
		}
		if _, err := c.Compile(); err != nil {
			t.Errorf("Parse(%q) accepted a config that does not compile: %v", data, err)
		}
	})
}
