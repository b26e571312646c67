package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestLinksOf: the links a config path crosses, for the layouts operators
// use: a plain file, a ConfigMap mount, a release directory link, a
// relative and an absolute link, a missing file.
func TestLinksOf(t *testing.T) {
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mk := func(p string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ln := func(target, p string) {
		t.Helper()
		if err := os.Symlink(target, filepath.Join(root, p)); err != nil {
			t.Fatal(err)
		}
	}
	touch := func(p string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(root, p), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("plain")
	touch("plain/egressd.yaml")
	mk("cm/..2026_12_07.1")
	touch("cm/..2026_12_07.1/egressd.yaml")
	ln("..2026_12_07.1", "cm/..data")
	ln("..data/egressd.yaml", "cm/egressd.yaml")
	mk("app/releases/7")
	touch("app/releases/7/egressd.yaml")
	ln("releases/7", "app/current")
	mk("abs")
	ln(filepath.Join(root, "plain/egressd.yaml"), "abs/egressd.yaml")
	mk("missing")

	l := func(dir, name string) link { return link{filepath.Join(root, dir), name} }
	for _, tc := range []struct {
		path string
		want []link
	}{
		{"plain/egressd.yaml", []link{l("plain", "egressd.yaml")}},
		{"plain/./egressd.yaml", []link{l("plain", "egressd.yaml")}},
		{"cm/egressd.yaml", []link{l("cm", "egressd.yaml"), l("cm", "..data"), l("cm/..2026_12_07.1", "egressd.yaml")}},
		{"app/current/egressd.yaml", []link{l("app", "current"), l("app/releases/7", "egressd.yaml")}},
		{"abs/egressd.yaml", []link{l("abs", "egressd.yaml"), l("plain", "egressd.yaml")}},
		{"missing/egressd.yaml", []link{l("missing", "egressd.yaml")}},
	} {
		got := linksOf(filepath.Join(root, tc.path))
		if !slices.Equal(got, tc.want) {
			t.Errorf("linksOf(%s):\n got %v\nwant %v", tc.path, got, tc.want)
		}
	}
	// A loop of links ends the walk instead of looping.
	ln("loop2", "loop1")
	ln("loop1", "loop2")
	if got := linksOf(filepath.Join(root, "loop1/egressd.yaml")); len(got) > 41 {
		t.Errorf("a loop of links gave %d links", len(got))
	}
}

// TestWatchQuietAfterFollow: following the path again, as the watch does
// before each reload, with nothing changed, makes no event the watch takes
// for a change: it once removed and re-added the file's watch each time,
// and the kernel's IN_IGNORED for the removal started the next reload, five
// times a second for good.
func TestWatchQuietAfterFollow(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "egressd.yaml")
	if err := os.WriteFile(path, []byte("x: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := newWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer w.file.Close()
	w.follow(path)
	evs := make(chan []event, 16)
	done := make(chan struct{})
	defer close(done)
	go w.read(evs, done)
	w.follow(path)
	w.follow(path)
	timeout := time.After(300 * time.Millisecond)
	for {
		select {
		case batch := <-evs:
			for _, ev := range batch {
				if w.ours(ev) {
					t.Fatalf("following again made an event taken for a change: %+v", ev)
				}
			}
		case <-timeout:
			return
		}
	}
}
