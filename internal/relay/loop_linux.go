package relay

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The event loop relays connections that own no goroutine.
//
// A goroutine per direction, parked in the runtime's poller while the
// connection is idle, costs its stack: about 16 KiB per idle connection.
// Dial, Attach and Start instead hand both sockets to one of a few loops,
// each one goroutine waiting on its own epoll set, so that an idle
// connection costs its two sockets and a small struct.
//
// A loop waits in one of two ways. While events keep coming it is busy: it
// blocks in epoll_wait on its set itself, made raw, holding its P (the
// process gives every loop a P of its own, see Loops). After a quiet spell
// it parks: its set joins a second epoll set that is registered with the
// Go runtime's poller (an epoll fd is readable while it has ready items),
// and the loop waits like any goroutine on a socket, holding no P and no
// thread. Were it only ever parked, each wake-up would cost the runtime's
// epoll_wait, the loop's own and a pass through the scheduler, and every
// connection's first non-raw system call would wake the runtime's sysmon
// out of its sleep into a 20 µs polling loop; were it only ever busy, an
// idle gateway would hold a P for ever. (While a loop is busy, sysmon
// signals it every 10 ms to preempt it; the wait ends with EINTR and
// resumes.) The sockets are registered edge-triggered, once, for reading
// and their peer's FIN; EPOLLOUT joins a socket's interest only once a
// write finds it full (see interest): no epoll_ctl while bytes move.

// Loops is a set of event loops. Dial and Adopt put each new connection on
// the next loop in turn: a connection's events are handled by one
// goroutine, so with several loops the connections spread over the CPUs
// the runtime may use. The loops start on first use. Whoever makes a set
// owns it, and closes it when it dials no more.
//
// A busy loop holds a P while it waits in the kernel (see busy), so each
// loop wants a P of its own beyond those the rest of the process needs:
// egressd's run sets GOMAXPROCS to twice the CPUs it may use and makes a
// loop for each.
type Loops struct {
	n       int
	onBatch func(quiet bool) bool // see OnBatch
	start   sync.Once
	loops   []*loop
	err     error // why no loop started
	next    atomic.Uint32
	closed  atomic.Bool
	wg      sync.WaitGroup // the loops' goroutines
	// busyPoll is SetBusyPoll's spin, in nanoseconds; every loop reads it
	// before each wait.
	busyPoll atomic.Int64
}

// SetBusyPoll has every loop, before it sleeps in the kernel for events,
// ask for them without sleeping for up to d (0, the default: it sleeps at
// once). On a virtual machine a sleeping CPU may be halted and handed to
// another guest, and waking it again is most of a small message's latency
// through the gateway; a loop that polls while the next event is near
// avoids that wake-up, at the cost of a CPU busy while traffic flows. A
// quiet loop still parks after its quiet spell, so an idle gateway spends
// nothing. It may be called at any time; loops take the new value at their
// next wait.
func (ls *Loops) SetBusyPoll(d time.Duration) { ls.busyPoll.Store(max(0, int64(d))) }

// BusyPoll is the spin SetBusyPoll set last.
func (ls *Loops) BusyPoll() time.Duration { return time.Duration(ls.busyPoll.Load()) }

// NewLoops returns a set of n loops, started on first use. n <= 0 means
// one for every two Ps the process has then (GOMAXPROCS), at least one:
// as many as run makes.
func NewLoops(n int) *Loops { return &Loops{n: n} }

// OnBatch has every loop call f on its own goroutine after each batch of
// events it handled, and with quiet set when a quiet spell ended its busy
// wait, before it parks; f reports whether it made a goroutine runnable
// (see loop.readied). The gateway holds relayed connections' log lines
// until then and hands them to its writer together: woken once per
// connection, the writer's goroutine cost each connection a wake-up of
// another thread (two context switches on one CPU). f must be cheap and
// never wait long: every connection on the loop waits for it. OnBatch is
// called before the set's first use.
func (ls *Loops) OnBatch(f func(quiet bool) (readied bool)) { ls.onBatch = f }

// Close stops the loops and waits for their goroutines. Connections still
// relayed on them end as Conn.Close ends them (done reports
// net.ErrClosed); Dial and Adopt fail with net.ErrClosed from then on. The
// owner calls it once nothing dials on the set any more, as the gateway
// does when Serve ends; a second Close does nothing.
func (ls *Loops) Close() error {
	if !ls.closed.CompareAndSwap(false, true) {
		return nil
	}
	ls.start.Do(func() {}) // a set never used starts no loop now
	for _, l := range ls.loops {
		l.stop()
	}
	ls.wg.Wait()
	return nil
}

// pick starts the loops if they are not yet, and returns the next one.
func (ls *Loops) pick() (*loop, error) {
	ls.start.Do(ls.startLoops)
	if ls.closed.Load() {
		return nil, net.ErrClosed
	}
	if len(ls.loops) == 0 {
		return nil, ls.err
	}
	return ls.loops[int(ls.next.Add(1))%len(ls.loops)], nil
}

func (ls *Loops) startLoops() {
	n := ls.n
	if n <= 0 {
		n = max(1, runtime.GOMAXPROCS(0)/2)
	}
	for range n {
		l, err := newLoop()
		if err != nil {
			ls.err = err
			return
		}
		l.onBatch = ls.onBatch
		l.busyPoll = &ls.busyPoll
		ls.loops = append(ls.loops, l)
		ls.wg.Add(1)
		go ls.runLoop(l)
	}
}

// runLoop is a loop's goroutine; named, it reads well in stack dumps.
func (ls *Loops) runLoop(l *loop) {
	defer ls.wg.Done()
	l.run()
}

type loop struct {
	epfd int
	efd  int // eventfd in the set: planSweep's wake-up
	// pfd is a second epoll set, registered with the runtime's poller.
	// It holds epfd from the start, listening only while the loop is
	// parked (see run): switched with EPOLL_CTL_MOD, since an ADD of one
	// epoll fd to another makes the kernel walk every socket in it.
	pfd  int
	file *os.File // pfd's
	raw  syscall.RawConn
	// parked is true while the loop waits in the runtime's poller; tests
	// read it to see that a quiet loop gave its P back.
	parked atomic.Bool
	// stopping is set by stop: run ends the loop at its next wake-up.
	stopping atomic.Bool
	now      int64 // time of the batch of events being handled
	// buf is where a direction that carries small messages copies them
	// (see copyIn); they leave it in the same call.
	buf []byte
	// readied: the batch made a goroutine runnable (a dial's waiter, or
	// the log writer through OnBatch's f) on this loop's P, which the loop holds while it waits.
	// One woken unseen (a waiter on a mutex the loop released) is taken
	// by another P, which the wake-up starts when one is idle, or else
	// runs when sysmon preempts the loop (10 ms). The loop does not
	// also yield every millisecond: each yield wakes another thread.
	readied  bool
	onBatch  func(quiet bool) bool // Loops.OnBatch's
	busyPoll *atomic.Int64         // Loops.busyPoll

	mu   sync.Mutex
	shut bool // the loop has ended: nothing registers any more
	// listeners are the listening sockets this loop accepts on, by fd.
	listeners map[int]*Listener
	// waits are the sockets waiting for their first bytes, by fd (see
	// AwaitReadable).
	waits map[int]*readWait
	table []*side // by fd
	// gen numbers registrations: an event carries its socket's number,
	// so a stale event of a closed socket whose fd was since reused (by
	// another goroutine, between this loop's epoll_wait and its handling
	// of the event) is told apart and dropped.
	gen   int32
	conns []*Conn
	// sweepAt is when the loop next looks for idle connections (unix
	// nanoseconds; 0: none planned), under sweepMu. Another goroutine
	// that plans an earlier sweep rings efd, so that a loop already
	// waiting with a later timeout or deadline recomputes it.
	sweepMu sync.Mutex
	sweepAt int64
	// rests are the directions resting (see rest.go), in the order their
	// rests end; noRest: this kernel has no epoll_pwait2, so none rests.
	rests  []rest
	noRest bool
	// poked are the Conns whose Watch asked for another look (Poke),
	// under mu.
	poked []*Conn
	// yields are the directions that spent their turn's budget with
	// bytes still readable (see copyTurn), in the order they did; the
	// loop moves them on after the batch that queued them, and looks for
	// events without sleeping while any wait. spare is the other buffer
	// serveYields swaps in, so that queueing allocates nothing once both
	// have grown.
	yields, spare []*dir
}

func newLoop() (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(efd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &ev); err != nil {
		unix.Close(efd)
		unix.Close(epfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	pfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		unix.Close(efd)
		unix.Close(epfd)
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	pev := unix.EpollEvent{Fd: int32(epfd)} // no events: busy
	if err := unix.EpollCtl(pfd, unix.EPOLL_CTL_ADD, epfd, &pev); err != nil {
		unix.Close(pfd)
		unix.Close(efd)
		unix.Close(epfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	if err := unix.SetNonblock(pfd, true); err != nil {
		unix.Close(pfd)
		unix.Close(efd)
		unix.Close(epfd)
		return nil, err
	}
	f := os.NewFile(uintptr(pfd), "relay-epoll")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		unix.Close(efd)
		unix.Close(epfd)
		return nil, err
	}
	l := &loop{epfd: epfd, efd: efd, pfd: pfd, file: f, raw: raw, buf: make([]byte, copyMax),
		busyPoll: new(atomic.Int64)}
	l.noRest = !canRest(epfd)
	return l, nil
}

// stop asks the loop to end, from another goroutine.
func (l *loop) stop() {
	l.stopping.Store(true)
	l.ring()
}

// end ends the connections still on the loop, as Conn.Close would, and
// releases the loop's fds; run calls it once stopped.
func (l *loop) end() {
	l.mu.Lock()
	l.shut = true
	conns := slices.Clone(l.conns)
	clear(l.listeners) // their owners close them (Listener.Close)
	l.mu.Unlock()
	for _, c := range conns {
		c.aborted.Store(true)
		c.finish(net.ErrClosed, net.ErrClosed, nil, Drained, Local)
	}
	l.close()
}

// close releases the loop's fds.
func (l *loop) close() {
	unix.Close(l.efd)
	l.file.Close()
	unix.Close(l.epfd)
}

// interest is what s's socket is registered for, edge-triggered: its
// bytes and its peer's FIN unless muted, and EPOLLOUT only once a write to
// it has found it full (out), or while its connect is in progress. An
// established socket with room to write is ready for EPOLLOUT at once: in
// the interest from the start, each registration would wake the loop for
// an event that moves nothing, on one CPU a switch to the loop's thread
// and back, twice per connection. Errors and hang-ups are reported
// whatever the interest.
func (s *side) interest() uint32 {
	ev := uint32(unix.EPOLLRDHUP | unix.EPOLLET)
	if !s.muted {
		ev |= unix.EPOLLIN
	}
	if s.out {
		ev |= unix.EPOLLOUT
	}
	return ev
}

// add registers an attached Conn's client socket (its upstream is in
// already, since Dial) and turns the Conn to relaying.
func (l *loop) add(c *Conn) error {
	c.last = time.Now().UnixNano()
	// Read before the loop may pump c (a Watch's hold changes c.idle).
	idle := c.idle
	sweep := c.last + idle + idle/sweepsPerIdle
	// Under mu: the loop looks each event's socket up under mu, so it
	// cannot act on (and maybe close) this connection before all is in.
	l.mu.Lock()
	// The client socket is established and nothing is queued on it: the
	// first bytes for it go out at once, and it is registered without
	// EPOLLOUT (see interest). (Taken for unwritable, the direction would
	// mute its source and unmute it at an event: two epoll_ctl calls per
	// connection.)
	c.client.writable = true
	// Bytes or an EOF that came from the upstream before the Conn
	// relayed were only noted (see handle); the client's EPOLLOUT, ready
	// at once, then makes the loop pump them. Any later event finds the
	// Conn relaying.
	c.client.out = c.upstream.readable
	err := l.register(&c.client)
	if err == nil {
		c.relaying = true
		c.idx = len(l.conns)
		l.conns = append(l.conns, c)
	}
	l.mu.Unlock()
	if err != nil {
		l.forget(c)
		c.closeSockets()
		return err
	}
	if idle > 0 {
		l.planSweep(sweep)
	}
	return nil
}

// register puts s in the table and the epoll set; l.mu is held.
func (l *loop) register(s *side) error {
	if l.shut {
		return net.ErrClosed
	}
	for s.fd >= len(l.table) {
		l.table = append(l.table, make([]*side, len(l.table)+64)...)
	}
	l.table[s.fd] = s
	l.gen++
	for l.gen == listenerTag || l.gen == waitTag {
		l.gen++
	}
	s.gen = l.gen
	ev := unix.EpollEvent{Events: s.interest(), Fd: int32(s.fd), Pad: s.gen}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, s.fd, &ev); err != nil {
		l.table[s.fd] = nil
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// markWritable notes that s's connect is known to have finished, so that
// the first write does not wait for the loop to report it.
func (s *side) markWritable() {
	s.c.l.mu.Lock()
	s.writable = true
	s.c.l.mu.Unlock()
}

// mute takes EPOLLIN out of s's interest (on) or puts it back. A direction
// whose destination is full stops reading, but an edge-triggered socket
// would still wake the loop for every segment that arrives meanwhile: to a
// client slower than its server, the loop would wake many times for each
// time it can move bytes, and move them in small pieces. Muted, the socket
// wakes the loop again only once the destination drains and reading
// resumes. Putting EPOLLIN back reports any data
// already waiting, as a new edge.
func (l *loop) mute(s *side, on bool) error {
	was := s.muted
	s.muted = on
	if err := l.modify(s); err != nil {
		s.muted = was
		return err
	}
	if on {
		mutes.Add(1)
	}
	return nil
}

// watchOut puts EPOLLOUT into s's interest, after a write found its
// socket full; it stays there. (Space freed meanwhile is reported by the
// modification itself.)
func (l *loop) watchOut(s *side) error {
	s.out = true
	if err := l.modify(s); err != nil {
		s.out = false
		return err
	}
	return nil
}

// modify registers s's interest anew.
func (l *loop) modify(s *side) error {
	ev := unix.EpollEvent{Events: s.interest(), Fd: int32(s.fd), Pad: s.gen}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, s.fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// mutes counts mute(on) calls, for tests to see that a blocked direction
// stopped listening.
var mutes atomic.Int64

// sweepsPerIdle sets how late an idle connection may be closed: at most
// idle/sweepsPerIdle after its timeout.
const sweepsPerIdle = 8

// planSweep makes sure the loop wakes by at (unix nanoseconds), from
// another goroutine: a loop already waiting is rung to recompute its wait.
func (l *loop) planSweep(at int64) {
	if l.sweepBy(at) {
		l.ring()
	}
}

// ring wakes the loop, busy or parked, through efd.
func (l *loop) ring() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	writeNB(l.efd, one[:])
}

// sweepBy moves the next sweep to at if none is planned sooner, and
// reports whether it did.
func (l *loop) sweepBy(at int64) bool {
	l.sweepMu.Lock()
	defer l.sweepMu.Unlock()
	if l.sweepAt != 0 && at >= l.sweepAt {
		return false
	}
	l.sweepAt = at
	return true
}

// forget removes c from the loop's tables.
func (l *loop) forget(c *Conn) {
	l.mu.Lock()
	for _, s := range [2]*side{&c.client, &c.upstream} {
		if s.fd >= 0 && s.fd < len(l.table) && l.table[s.fd] == s {
			l.table[s.fd] = nil
		}
	}
	last := len(l.conns) - 1
	if c.relaying && c.idx <= last && l.conns[c.idx] == c {
		l.conns[c.idx] = l.conns[last]
		l.conns[c.idx].idx = c.idx
		l.conns[last] = nil
		l.conns = l.conns[:last]
	}
	l.mu.Unlock()
}

func (l *loop) run() {
	events := make([]unix.EpollEvent, 256)
	wait := func(uintptr) bool {
		n, err := epollWaitRaw(l.epfd, events, 0)
		if err != nil || n <= 0 {
			return false // nothing ready: park until pfd is
		}
		l.handle(events[:n])
		return true
	}
	for !l.stopping.Load() {
		// Quiet: parked in the runtime's poller, holding no P. epfd
		// listens in the set the runtime watches only now: listening
		// while the loop is busy, each event would wake the runtime's
		// poller too.
		if err := l.listen(unix.EPOLLIN); err != nil {
			// Cannot park (never seen: the sets are the loop's own).
			// Stay busy, which needs no registration, and try again.
			if l.busy(events) != nil {
				return // epfd failed: never, in a running process
			}
			continue
		}
		if at := l.nextSweep(); at != 0 {
			l.file.SetReadDeadline(time.Unix(0, at))
		} else {
			l.file.SetReadDeadline(time.Time{})
		}
		l.parked.Store(true)
		err := l.raw.Read(wait)
		l.parked.Store(false)
		l.listen(0)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			l.sweep()
			if l.onBatch != nil {
				l.onBatch(true) // what the sweep ended, before parking again
			}
			continue // a timer, not traffic: park again
		}
		if err != nil {
			return // pfd was closed: never, in a running process
		}
		if l.busy(events) != nil {
			return // epfd failed: never, in a running process
		}
	}
	l.end()
}

// listen sets what epfd's entry in pfd listens for: EPOLLIN while the loop
// is parked, nothing while it is busy.
func (l *loop) listen(events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(l.epfd)}
	return unix.EpollCtl(l.pfd, unix.EPOLL_CTL_MOD, l.epfd, &ev)
}

// busy waits in epoll_wait itself, made raw, while events keep coming.
// Through the runtime's poller every wake-up cost a second epoll_wait and
// a pass through the scheduler; waiting raw holds the loop's P in the
// kernel instead (each loop has a P of its own, see Loops), and a stop of
// the world reaches the loop by the signal that ends the wait with EINTR
// (see epollWaitRaw). After quietSpell without an event busy returns and the
// loop parks again, so that an idle gateway holds no P and the runtime's
// sysmon can sleep; or once the loop is stopping. It returns an error
// only if epfd fails.
func (l *loop) busy(events []unix.EpollEvent) error {
	for !l.stopping.Load() {
		if l.readied {
			// Let what the batch woke run on this P before the loop
			// takes it into the kernel again.
			l.readied = false
			runtime.Gosched()
		}
		at := l.nextSweep()
		msec, sweeping := waitMillis(at)
		var n int
		var err error
		yielding := len(l.yields) > 0
		if yielding {
			// Directions wait for their next turn: take the events
			// that came meanwhile, without sleeping, and serve both.
			n, err = epollWaitRaw(l.epfd, events, 0)
		} else if len(l.rests) > 0 { // the first rest ends sooner than a millisecond
			n, err = epollWait2Raw(l.epfd, events, min(max(0, l.rests[0].at-monoNow()), int64(restFor)))
		} else {
			if spin := l.busyPoll.Load(); spin > 0 && msec > 0 {
				n, err = l.poll(events, spin)
			}
			if n == 0 && err == nil {
				n, err = epollWaitRaw(l.epfd, events, msec)
			}
		}
		if err != nil && err != unix.EINTR {
			return err
		}
		if n > 0 {
			l.handle(events[:n])
		}
		l.serveYields()
		l.wakeRests()
		quiet := n == 0 && err == nil && !yielding
		if l.onBatch != nil && l.onBatch(quiet) {
			l.readied = true
		}
		// A sweep further off than a quiet spell cannot be due yet; one
		// planned earlier meanwhile rang efd, so the next wait sees it.
		if sweeping && time.Now().UnixNano() >= at {
			l.sweep()
			continue
		}
		if quiet && !sweeping && len(l.rests) == 0 && len(l.yields) == 0 {
			return nil // a quiet spell (a rest ends in microseconds: not one)
		}
	}
	return nil
}

// poll asks epfd for events without sleeping, again and again, until some
// come, the loop is stopping or spin nanoseconds have passed (see
// Loops.SetBusyPoll). A sweep due meanwhile waits for the spin's end: at
// most a millisecond (config.maxBusyPoll), well inside any timeout's
// tolerance.
func (l *loop) poll(events []unix.EpollEvent, spin int64) (int, error) {
	end := monoNow() + spin
	for {
		n, err := epollWaitRaw(l.epfd, events, 0)
		if n > 0 {
			polled.Add(1)
		}
		if n != 0 || err != nil || l.stopping.Load() || monoNow() >= end {
			return n, err
		}
	}
}

// polled counts the waits that busy polling ended with events, each a
// sleep and wake-up saved; for tests to see that it polls.
var polled atomic.Int64

// copyMax is the loop's copy buffer: a direction copies what it reads
// until one read fills it, then splices (see copyIn). A TLS record is at
// most 16 KiB and a handshake's flight a few KiB.
const copyMax = 16 << 10

// quietSpell is how long a busy loop waits for events in the kernel
// before it parks in the runtime's poller.
const quietSpell = 5 // ms

// nextSweep is sweepAt, read under its lock.
func (l *loop) nextSweep() int64 {
	l.sweepMu.Lock()
	defer l.sweepMu.Unlock()
	return l.sweepAt
}

// waitMillis is how long a busy loop may wait for events: a quiet spell,
// or less when the sweep planned at at is due sooner (sweeping: the wait
// ends for it).
func waitMillis(at int64) (msec int, sweeping bool) {
	if at == 0 {
		return quietSpell, false
	}
	d := (at - time.Now().UnixNano() + int64(time.Millisecond) - 1) / int64(time.Millisecond)
	if d < 0 {
		d = 0
	}
	if d >= quietSpell {
		return quietSpell, false
	}
	return int(d), true
}

func (l *loop) handle(events []unix.EpollEvent) {
	l.now = time.Now().UnixNano()
	for i := range events {
		ev := &events[i]
		if int(ev.Fd) == l.efd {
			var b [8]byte
			readNB(l.efd, b[:])
			l.pokes()
			continue
		}
		if ev.Pad == listenerTag {
			l.accept(int(ev.Fd))
			continue
		}
		if ev.Pad == waitTag {
			l.waited(int(ev.Fd))
			continue
		}
		relaying := false
		var then func(*Conn, error)
		l.mu.Lock()
		var s *side
		if fd := int(ev.Fd); fd < len(l.table) {
			s = l.table[fd]
		}
		if s != nil && s.gen != ev.Pad {
			s = nil // an event of the fd's previous socket
		}
		if s != nil {
			if ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				s.readable = true
			}
			if ev.Events&(unix.EPOLLRDHUP|unix.EPOLLERR) == unix.EPOLLRDHUP {
				s.rdhup = true
			}
			if ev.Events&(unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				s.hup = true
			}
			if ev.Events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				s.writable = true
				if s.c.connected != nil {
					s.c.connectErr = ev.Events&(unix.EPOLLHUP|unix.EPOLLERR) != 0
					close(s.c.connected) // the dial's connect has finished
					if w := s.c.waiting; w != nil {
						then, w.then = w.then, nil
					}
					l.readied = l.readied || then == nil // Dial's waiter
					s.c.connected = nil
				}
			}
			relaying = s.c.relaying
		}
		l.mu.Unlock()
		if then != nil {
			s.c.connectedAsync(then) // an asynchronous dial's connect ended
			continue
		}
		// A stale event of a connection closed earlier in this batch finds
		// no side; one that is still dialling only notes readiness, for
		// when it relays.
		if relaying {
			s.c.pump()
		}
	}
}

// yield queues d, which spent its turn's budget with bytes still
// readable, for a turn after the batch being handled: its source is
// registered edge-triggered, and no event would come for bytes already
// there.
func (l *loop) yield(d *dir) {
	d.yielded = true
	l.yields = append(l.yields, d)
}

// serveYields gives each direction queued before it was called another
// turn, in the order they were queued; those that spend this one too
// are queued again, for after the next batch.
func (l *loop) serveYields() {
	if len(l.yields) == 0 {
		return
	}
	due := l.yields
	l.yields = l.spare[:0]
	l.now = time.Now().UnixNano()
	for i, d := range due {
		due[i] = nil
		d.yielded = false
		if c := d.src.c; !c.closed {
			c.pump() // as for an event: it ends a Conn closed meanwhile
		}
	}
	l.spare = due[:0]
}

// sweep closes the connections that moved no byte for their idle timeout
// and plans the next sweep.
func (l *loop) sweep() {
	now := time.Now().UnixNano()
	l.sweepMu.Lock()
	l.sweepAt = 0
	l.sweepMu.Unlock()
	var expired []*Conn
	next := int64(0)
	l.mu.Lock()
	for _, c := range l.conns {
		if c.idle <= 0 {
			continue
		}
		last := c.last
		if w := c.watch; w != nil && w.holdSince != 0 {
			last = w.holdSince // a hold runs from its start, whatever the server sends meanwhile
		}
		if now-last >= c.idle {
			expired = append(expired, c)
			continue
		}
		at := last + c.idle + c.idle/sweepsPerIdle
		if next == 0 || at < next {
			next = at
		}
	}
	l.mu.Unlock()
	for _, c := range expired {
		if w := c.watch; w != nil && w.holdSince != 0 {
			c.refuse(w.w.Expired()) // the hold's time, not an idle one
			continue
		}
		c.finish(ErrIdle, ErrIdle, nil, Idle, Local)
	}
	// The next sweep, unless a connection added meanwhile planned an
	// earlier one; none if no connection has an idle timeout. Not
	// through planSweep: the loop is not waiting, so nothing to ring.
	if next != 0 {
		l.sweepBy(next)
	}
}
