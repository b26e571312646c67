package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The watch's timing. A change is read once debounce has passed without
// another event for the config (an editor's save or a ConfigMap update is
// several), and while nobody has the file open for writing, but never
// later than maxWait after the change's first event: a file rewritten
// without end, or held open by a writer that never closes it, is read
// then anyway.
const (
	debounce = 200 * time.Millisecond
	maxWait  = 5 * time.Second
)

// dirMask is what the watch hears of a directory: names replaced,
// created, deleted, and writes closed. Not each write (IN_MODIFY): a log
// file written beside the config would wake the watch at every line.
const dirMask = unix.IN_CLOSE_WRITE | unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_TO |
	unix.IN_MOVED_FROM | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// fileMask is what it hears of the config file itself: each write, which
// says a writer is at work, and the close that says it is done.
const fileMask = unix.IN_MODIFY | unix.IN_CLOSE_WRITE

// link is one name on the way from the config path to its file: the file
// itself, or a symbolic link, whether to the file (Kubernetes mounts a
// ConfigMap's key as egressd.yaml -> ..data/egressd.yaml) or to a directory
// on the way (a release's "current" link). Replacing any of them changes
// what the path reads; they are all in directories that can be watched.
type link struct{ dir, name string }

// linksOf follows path one name at a time, as the kernel does, and returns
// every link it crosses and the file it ends at, each as a real directory
// and a name. Names that do not exist end the walk where they are: the
// config's directory is still watched for the file to come back.
func linksOf(path string) []link {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil
	}
	var out []link
	dir := "/"
	names := strings.Split(abs, "/")
	for hops := 0; len(names) > 0 && hops < 40; {
		name := names[0]
		names = names[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			dir = filepath.Dir(dir)
			continue
		}
		next := filepath.Join(dir, name)
		if len(names) == 0 {
			out = append(out, link{dir, name})
		}
		fi, err := os.Lstat(next)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			dir = next
			continue
		}
		target, err := os.Readlink(next)
		if err != nil {
			dir = next
			continue
		}
		if len(names) > 0 {
			out = append(out, link{dir, name})
		}
		hops++
		if filepath.IsAbs(target) {
			dir = "/"
		}
		names = append(strings.Split(target, "/"), names...)
	}
	return out
}

// watcher watches, with inotify, the directories that hold the config
// path's links (see linksOf) and tells which events are for one of them.
// A directory also holds other files, an access log kept beside the
// config among them: their events are read and dropped, so that a file
// written more often than debounce cannot put a reload off.
type watcher struct {
	fd    int
	file  *os.File       // fd's, read through the runtime's poller
	dirs  map[int]string // by watch descriptor
	wds   map[string]int
	links map[link]bool
	// conf is the watch on the config file's inode, for its writes (see
	// fileMask); confLink is the file's link. -1: none (no file).
	conf     int
	confLink link
}

func newWatcher() (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, err
	}
	return &watcher{fd: fd, file: os.NewFile(uintptr(fd), "inotify"),
		dirs: map[int]string{}, wds: map[string]int{}, links: map[link]bool{}, conf: -1}, nil
}

// follow watches the directories of path's links as they are now, and
// stops watching those it no longer crosses (a ConfigMap's previous
// version, a release no longer current). It returns the directories it
// could not watch.
func (w *watcher) follow(path string) (watched []string, failed map[string]error) {
	links := map[link]bool{}
	keep := map[string]bool{}
	chain := linksOf(path)
	for _, l := range chain {
		links[l] = true
		keep[l.dir] = true
	}
	w.links = links
	// The file the path leads to now: an editor's save replaced the inode
	// watched before. The same inode gives the same watch, which stays;
	// one no longer the config's is removed (the kernel answers with
	// IN_IGNORED, which ours does not take for a change).
	wd := -1
	if len(chain) > 0 {
		last := chain[len(chain)-1]
		if d, err := unix.InotifyAddWatch(w.fd, filepath.Join(last.dir, last.name), fileMask); err == nil {
			wd, w.confLink = d, last
		}
	}
	if w.conf >= 0 && w.conf != wd {
		unix.InotifyRmWatch(w.fd, uint32(w.conf))
	}
	w.conf = wd
	for dir, wd := range w.wds {
		if !keep[dir] {
			unix.InotifyRmWatch(w.fd, uint32(wd))
			delete(w.wds, dir)
			delete(w.dirs, wd)
		}
	}
	for dir := range keep {
		wd, err := unix.InotifyAddWatch(w.fd, dir, dirMask)
		if err != nil {
			if failed == nil {
				failed = map[string]error{}
			}
			failed[dir] = err
			continue
		}
		w.wds[dir] = wd
		w.dirs[wd] = dir
		watched = append(watched, dir)
	}
	return watched, failed
}

// event is what the watch needs of an inotify event.
type event struct {
	wd   int
	mask uint32
	name string
}

// read reads events into evs until the file is closed or done is.
func (w *watcher) read(evs chan<- []event, done <-chan struct{}) error {
	buf := make([]byte, 64<<10)
	for {
		n, err := w.file.Read(buf)
		if err != nil {
			return err
		}
		var batch []event
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			raw := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := buf[off+unix.SizeofInotifyEvent : min(n, off+unix.SizeofInotifyEvent+int(raw.Len))]
			batch = append(batch, event{int(raw.Wd), raw.Mask, strings.TrimRight(string(name), "\x00")})
			off += unix.SizeofInotifyEvent + int(raw.Len)
		}
		select {
		case evs <- batch:
		case <-done:
			return os.ErrClosed
		}
	}
}

// ours says whether ev changes what the config path reads: an event for
// one of its links, the loss of a watched directory, or events lost to a
// full queue.
func (w *watcher) ours(ev event) bool {
	// IN_IGNORED is not one: it answers a watch's removal, follow's own
	// included; a watched directory that goes away says IN_DELETE_SELF or
	// IN_MOVE_SELF first.
	if ev.mask&(unix.IN_Q_OVERFLOW|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
		return true
	}
	_, ok := w.linkOf(ev)
	return ok
}

// linkOf is the link ev is about: the config file for its own watch, or
// the name in a watched directory.
func (w *watcher) linkOf(ev event) (link, bool) {
	if ev.wd == w.conf && ev.name == "" {
		return w.confLink, true
	}
	dir, ok := w.dirs[ev.wd]
	l := link{dir, ev.name}
	return l, ok && w.links[l]
}

// watch reloads when the config changes (see watcher for what it watches,
// debounce and maxWait for when).
func (r *reloader) watch(ctx context.Context) {
	w, err := newWatcher()
	if err != nil {
		r.log.Error("cannot watch the config file; reload with SIGHUP", "err", err)
		return
	}
	defer w.file.Close() // ends the reading goroutine
	watched, failed := w.follow(r.path)
	for dir, err := range failed {
		r.log.Error("cannot watch a directory of the config path; reload with SIGHUP", "dir", dir, "err", err)
	}
	if len(watched) == 0 {
		return
	}
	r.log.Info("watching the config file for changes", "dirs", watched)
	evs := make(chan []event, 16)
	go func() {
		if err := w.read(evs, ctx.Done()); !errors.Is(err, os.ErrClosed) {
			r.log.Warn("config watch ended; reload with SIGHUP", "err", err)
		}
	}()
	timer := time.NewTimer(0)
	<-timer.C
	var first time.Time        // the pending change's first event; zero: none
	writing := map[link]bool{} // links modified and not yet closed
	for {
		select {
		case <-ctx.Done():
			return
		case batch := <-evs:
			for _, ev := range batch {
				if !w.ours(ev) {
					continue
				}
				if l, ok := w.linkOf(ev); ok {
					switch {
					case ev.mask&unix.IN_MODIFY != 0:
						writing[l] = true
					case ev.mask&(unix.IN_CLOSE_WRITE|unix.IN_DELETE|unix.IN_MOVED_FROM) != 0:
						delete(writing, l)
					case ev.mask&unix.IN_CREATE != 0:
						// A file created in place (rm, then a copy) is
						// written next: its writes are heard on a watch
						// of its own, and it is read once closed.
						if fi, err := os.Lstat(filepath.Join(l.dir, l.name)); err == nil && fi.Mode().IsRegular() {
							writing[l] = true
							w.follow(r.path)
						}
					}
				}
				if first.IsZero() {
					first = time.Now()
				}
				timer.Reset(debounce)
			}
		case <-timer.C:
			if len(writing) > 0 && time.Since(first) < maxWait {
				timer.Reset(debounce) // a writer has the file open: wait for its close
				continue
			}
			first = time.Time{}
			clear(writing)
			// Links may have moved (a new ConfigMap version, a new
			// release): watch where the path leads now, then read it.
			if _, failed := w.follow(r.path); len(failed) > 0 {
				for dir, err := range failed {
					r.log.Warn("cannot watch a directory of the config path", "dir", dir, "err", err)
				}
			}
			r.reload("file changed", false)
		}
	}
}
