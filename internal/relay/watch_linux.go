package relay

import (
	"errors"
	"sync"
	"time"
)

// watching is a Conn's Watch while it reads either direction.
type watching struct {
	w              Watch
	client, server bool  // the client's, the server's bytes are still watched
	hold           int64 // how long held bytes may wait for the rest
	// holdSince is when the Watch began to hold the client's bytes (loop
	// time), 0 when it holds none; idle is the Conn's own idle timeout,
	// put back when the hold ends (a hold shortens it to hold).
	holdSince, idle int64
	why             string // the refusal, once there is one
}

// watchings holds watching values between connections: one is taken for
// every TLS connection and let go once its server has answered, and
// garbage made per connection shows in an idle gateway's memory until
// the next collection (an idle connection costs egressd under 2 KiB).
var watchings = sync.Pool{New: func() any { return new(watching) }}

// Watch has w read the connection's first bytes each way until it has
// done with both (see Watch); bytes it holds wait at most hold for the
// rest. Call it before Start.
func (c *Conn) Watch(w Watch, hold time.Duration) {
	ws := watchings.Get().(*watching)
	*ws = watching{w: w, client: true, server: true, hold: int64(hold)}
	c.watch = ws
}

// Holding says the Watch given to Watch holds client bytes already (read
// before the Conn relayed): its hold runs from now, not from the
// client's next bytes, which may never come. Call it after Watch, before
// Start.
func (c *Conn) Holding() {
	w := c.watch
	w.holdSince, w.idle, c.idle = time.Now().UnixNano(), c.idle, w.hold
}

// unwatch lets the Watch and its state go (Watch.Release).
func (c *Conn) unwatch() {
	ws := c.watch
	c.watch = nil
	ws.w.Release()
	*ws = watching{}
	watchings.Put(ws)
}

// watched gives b, just read for d, to the Watch. It returns the bytes to
// write on, whether d is still watched (and so must not splice), and false
// when the Watch refused the connection, which has then ended.
func (c *Conn) watched(d *dir, b []byte) (pass []byte, on, ok bool) {
	w := c.watch
	if d == &c.down {
		if w.server {
			switch w.w.Server(b) {
			case WatchOff:
				w.server = false
			case WatchEnded:
				w.server, w.client = false, false
				c.endHold()
			}
		}
		on = w.server
	} else if w.client {
		var st WatchState
		var err error
		if b, st, err = w.w.Client(b); err != nil {
			c.refuse(err)
			return nil, false, false
		}
		switch st {
		case WatchHolding:
			if w.holdSince == 0 {
				w.holdSince, w.idle, c.idle = c.l.now, c.idle, w.hold
				c.l.sweepBy(c.l.now + w.hold + w.hold/sweepsPerIdle)
			}
			// The hold runs from its start: a client trickling the rest
			// does not stretch it.
			c.last = w.holdSince
		case WatchOff:
			w.client = false
			c.endHold()
		case WatchBoth:
			c.endHold()
			if d := &c.down; d.restMuted {
				// A rest took EPOLLIN away: the buffer's reads, which
				// stop at EAGAIN, would wait for an edge that never comes.
				d.restMuted = false
				if err := c.l.mute(d.src, false); err != nil {
					c.fail(d, nil, err, nil)
					return nil, false, false
				}
			}
			if !w.server {
				w.server = true
				// The server's next bytes go through the buffer, where
				// the Watch sees them; a pipe that holds none goes back.
				c.down.splicing = false
				if p := c.down.p; p != nil && c.down.pending == 0 {
					putPipe(p)
					c.down.p = nil
				}
			}
		}
		on = w.client
	}
	if !w.client && !w.server {
		c.unwatch() // an idle relayed connection keeps nothing of it
	}
	return b, on, true
}

// endHold puts the Conn's own idle timeout back, if a hold shortened it.
func (c *Conn) endHold() {
	if w := c.watch; w.holdSince != 0 {
		c.idle, w.holdSince = w.idle, 0
	}
}

// refuse ends the connection on a Watch's error: its reply to the client
// (best effort: a few bytes on a socket that has sent nothing yet of this
// exchange), a reset to the upstream, which must not act on a half-sent
// hello, and a Result that says why.
func (c *Conn) refuse(err error) {
	r, ok := errors.AsType[*Refusal](err)
	if !ok {
		r = &Refusal{Why: err.Error()}
	}
	if len(r.Reply) > 0 {
		writeNB(c.client.fd, r.Reply)
	}
	c.watch.why = r.Why
	c.finish(err, err, &c.upstream, Refused, Client)
}

// why is a refused connection's reason for its Result.
func (c *Conn) why() string {
	if c.watch == nil {
		return ""
	}
	return c.watch.why
}

// Poke has the loop give c's Watch another look at the client's bytes it
// holds (Watch.Client with none), from any goroutine: for a Watch that
// holds them while something it must not wait for on the loop (a name's
// look-up) is done elsewhere. A Conn that has ended, or holds nothing,
// ignores it.
func (c *Conn) Poke() {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.shut {
		return // its eventfd is closed, and its number maybe another's
	}
	l.poked = append(l.poked, c)
	l.ring()
}

// pokes runs the pokes the loop was rung for.
func (l *loop) pokes() {
	l.mu.Lock()
	ps := l.poked
	l.poked = nil
	l.mu.Unlock()
	for _, c := range ps {
		c.resume()
	}
}

// resume gives the Watch another look at what it holds, writes on what
// it lets go, and goes on relaying.
func (c *Conn) resume() {
	if c.closed || c.watch == nil || c.watch.holdSince == 0 {
		return
	}
	d := &c.up
	b, _, ok := c.watched(d, nil)
	if !ok || c.closed {
		return
	}
	if len(b) > 0 {
		if c.out(d) {
			if !c.forward(d, b) {
				return
			}
		} else if c.closed {
			return
		} else {
			// The upstream is full: b waits behind what does.
			if !d.copied {
				d.n += int64(len(b)) // head's first bytes are not counted; these are
			}
			d.head = append(d.head, b...)
		}
	}
	c.pump()
}
