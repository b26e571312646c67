//go:build linux

package relay

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// These benchmarks price a design the relay does not use: io_uring, where
// a ring of submitted operations replaces one system call per read, write
// or wait. They are a measurement for docs/performance.md ("The third
// round"), not a relay: a minimal ring over raw io_uring_setup and
// io_uring_enter, recv and send only, one goroutine, no error recovery.

// BenchmarkSyscallEntry prices entering the kernel and leaving it, with a
// call that does nothing (getppid). On bare metal it is tens of
// nanoseconds; in some virtual machines it is a microsecond, and then
// the number of calls per connection weighs more than their work.
func BenchmarkSyscallEntry(b *testing.B) {
	for b.Loop() {
		unix.RawSyscall(unix.SYS_GETPPID, 0, 0, 0)
	}
}

// ringBatch is how many connections move a message per round in
// BenchmarkRelayEpoll and BenchmarkRelayRing: the loop's batch when many
// connections are busy.
const ringBatch = 16

// BenchmarkRelayEpoll moves one 64-byte message per op from one socket to
// another as the relay loop does: epoll_wait for the batch, then a read
// that empties the source and a write. Each op also pays the peers' send
// and read, the same in both benchmarks, so compare the two, not either
// with zero.
func BenchmarkRelayEpoll(b *testing.B) {
	in, out := ringPairs(b)
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(ep)
	for i, p := range in {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(i)}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, p.proxy, &ev); err != nil {
			b.Fatal(err)
		}
	}
	buf := make([]byte, copyMax)
	events := make([]unix.EpollEvent, ringBatch)
	b.SetBytes(64)
	for n := 0; n < b.N; n += ringBatch {
		ringSend(b, in)
		for got := 0; got < ringBatch; {
			m, err := epollWaitRaw(ep, events, -1)
			if err != nil && err != unix.EINTR {
				b.Fatal(err)
			}
			for _, ev := range events[:max(m, 0)] {
				r, err := readNB(in[ev.Fd].proxy, buf)
				if err != nil || r == 0 {
					b.Fatalf("read: %d, %v", r, err)
				}
				if w, err := writeNB(out[ev.Fd].proxy, buf[:r]); err != nil || w != r {
					b.Fatalf("write %d of %d: %v", w, r, err)
				}
				got++
			}
		}
		ringReceive(b, out)
	}
}

// BenchmarkRelayRing is BenchmarkRelayEpoll through io_uring: a recv is
// always armed on each source (so it waits in the kernel as a ring-based
// relay's would), and each round's completions are answered with a send
// and a new recv, submitted together in the next io_uring_enter.
func BenchmarkRelayRing(b *testing.B) {
	in, out := ringPairs(b)
	r, err := newBenchRing(4 * ringBatch)
	if err != nil {
		b.Skipf("io_uring: %v", err)
	}
	defer r.close()
	bufs := make([][]byte, ringBatch)
	for i := range bufs {
		bufs[i] = make([]byte, copyMax)
		r.push(ringOpRecv, in[i].proxy, bufs[i], uint64(i))
	}
	if err := r.enter(0); err != nil {
		b.Fatal(err)
	}
	const sendTag = 1 << 32
	b.SetBytes(64)
	for n := 0; n < b.N; n += ringBatch {
		ringSend(b, in)
		for got := 0; got < ringBatch; {
			if err := r.enter(1); err != nil {
				b.Fatal(err)
			}
			for {
				ud, res, ok := r.next()
				if !ok {
					break
				}
				if res <= 0 {
					b.Fatalf("op %#x: %d", ud, res)
				}
				if ud&sendTag != 0 {
					continue
				}
				// In ring order: the send (completing at once, the socket
				// has room) reads bufs[ud] before the recv refills it.
				r.push(ringOpSend, out[ud].proxy, bufs[ud][:res], ud|sendTag)
				r.push(ringOpRecv, in[ud].proxy, bufs[ud], ud)
				got++
			}
		}
		if err := r.enter(0); err != nil {
			b.Fatal(err)
		}
		ringReceive(b, out)
	}
}

type ringPair struct{ peer, proxy int }

func ringPairs(b *testing.B) (in, out []ringPair) {
	for range ringBatch {
		p, q := tcpFDPair(b)
		in = append(in, ringPair{p, q})
		p, q = tcpFDPair(b)
		out = append(out, ringPair{q, p})
	}
	return in, out
}

var ringMsg = make([]byte, 64)

func ringSend(b *testing.B, in []ringPair) {
	for _, p := range in {
		if n, err := writeNB(p.peer, ringMsg); err != nil || n != len(ringMsg) {
			b.Fatalf("peer send: %d, %v", n, err)
		}
	}
}

func ringReceive(b *testing.B, out []ringPair) {
	var sink [64]byte
	for _, p := range out {
		for got := 0; got < len(sink); {
			n, err := readNB(p.peer, sink[got:])
			if err == unix.EAGAIN {
				continue
			}
			if err != nil || n == 0 {
				b.Fatalf("peer read: %d, %v", n, err)
			}
			got += n
		}
	}
}

// The kernel's io_uring ABI (include/uapi/linux/io_uring.h), as much as
// the benchmark needs.
const (
	ringOpSend      = 26 // IORING_OP_SEND
	ringOpRecv      = 27 // IORING_OP_RECV
	ringEnterGet    = 1  // IORING_ENTER_GETEVENTS
	ringOffSQEs     = 0x10000000
	ringFeatSingleM = 1 // IORING_FEAT_SINGLE_MMAP
)

type ringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  [10]uint32 // head, tail, ring_mask, ring_entries, flags, dropped, array, resv1, user_addr (u64)
	cqOff                                                                  [10]uint32 // head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1, user_addr (u64)
}

type ringSQE struct {
	opcode, flags uint8
	ioprio        uint16
	fd            int32
	off, addr     uint64
	len, opFlags  uint32
	userData      uint64
	bufIndex      uint16
	personality   uint16
	spliceFDIn    int32
	addr3, pad    uint64
}

type benchRing struct {
	fd             int
	mem, sqeMem    []byte
	sqTail, sqMask *uint32
	sqArray        unsafe.Pointer
	sqes           []ringSQE
	cqHead, cqTail *uint32
	cqMask         *uint32
	cqes           unsafe.Pointer
	pending        uint32
}

func newBenchRing(entries uint32) (*benchRing, error) {
	var p ringParams
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, e
	}
	if p.features&ringFeatSingleM == 0 {
		unix.Close(int(fd))
		return nil, unix.ENOTSUP
	}
	r := &benchRing{fd: int(fd)}
	size := max(int(p.sqOff[6])+int(p.sqEntries)*4, int(p.cqOff[5])+int(p.cqEntries)*16)
	var err error
	if r.mem, err = unix.Mmap(r.fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.close()
		return nil, err
	}
	if r.sqeMem, err = unix.Mmap(r.fd, ringOffSQEs, int(p.sqEntries)*int(unsafe.Sizeof(ringSQE{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.close()
		return nil, err
	}
	base := unsafe.Pointer(&r.mem[0])
	r.sqTail = (*uint32)(unsafe.Add(base, p.sqOff[1]))
	r.sqMask = (*uint32)(unsafe.Add(base, p.sqOff[2]))
	r.sqArray = unsafe.Add(base, p.sqOff[6])
	r.cqHead = (*uint32)(unsafe.Add(base, p.cqOff[0]))
	r.cqTail = (*uint32)(unsafe.Add(base, p.cqOff[1]))
	r.cqMask = (*uint32)(unsafe.Add(base, p.cqOff[2]))
	r.cqes = unsafe.Add(base, p.cqOff[5])
	r.sqes = unsafe.Slice((*ringSQE)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	return r, nil
}

// push queues an operation on buf. One goroutine, on amd64 and arm64
// with the kernel reading the tail only in io_uring_enter: plain stores
// suffice here (a real ring needs release/acquire ordering).
func (r *benchRing) push(op uint8, fd int, buf []byte, userData uint64) {
	tail := *r.sqTail
	i := tail & *r.sqMask
	r.sqes[i] = ringSQE{opcode: op, fd: int32(fd), addr: uint64(uintptr(unsafe.Pointer(&buf[0]))), len: uint32(len(buf)), userData: userData}
	*(*uint32)(unsafe.Add(r.sqArray, 4*uintptr(i))) = i
	*r.sqTail = tail + 1
	r.pending++
}

// enter submits what push queued and waits for wait completions.
func (r *benchRing) enter(wait uint32) error {
	n := r.pending
	r.pending = 0
	for {
		_, _, e := unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(n), uintptr(wait), ringEnterGet, 0, 0)
		switch e {
		case 0:
			return nil
		case unix.EINTR:
			n = 0 // submitted already
			continue
		}
		return e
	}
}

// next takes one completion, if there is one.
func (r *benchRing) next() (userData uint64, res int32, ok bool) {
	h := *r.cqHead
	if h == *r.cqTail {
		return 0, 0, false
	}
	c := unsafe.Add(r.cqes, 16*uintptr(h&*r.cqMask))
	userData, res = *(*uint64)(c), *(*int32)(unsafe.Add(c, 8))
	*r.cqHead = h + 1
	return userData, res, true
}

func (r *benchRing) close() {
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
	}
	if r.mem != nil {
		unix.Munmap(r.mem)
	}
	unix.Close(r.fd)
}
