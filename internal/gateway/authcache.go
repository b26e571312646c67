package gateway

import (
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/internal/config"
)

// rightPasswords remembers, for a minute, the user names and passwords a
// check found right, as SHA-256 digests, so that a client that opens a
// connection per request has its password checked with bcrypt once, not
// on every connection. A right password never backs off (package
// authguard), so checked each time, one client opening connections as
// fast as it could held the check slots every other user waits for; and
// browsers open dozens of proxy connections at once, each with its
// credentials. An entry holds only for the config it was checked under:
// a reload that changes a password (or removes the user) is never
// answered from the memory. Wrong passwords are not remembered.
type rightPasswords struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]rightPassword
	// hashed counts the checks the memory did not spare (tests read it).
	hashed atomic.Int64
}

type rightPassword struct {
	cfg     *config.Config
	expires time.Time
}

const (
	rightPasswordTTL = time.Minute
	// maxRightPasswords bounds the memory: past it, it starts afresh
	// (only right passwords enter it, so a client cannot fill it).
	maxRightPasswords = 4096
)

func rightPasswordKey(user, pass string) [sha256.Size]byte {
	h := sha256.New()
	// The name's length first: no name and password can be another
	// pair's, whatever bytes they hold.
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(user))))
	h.Write([]byte(user))
	h.Write([]byte(pass))
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// known reports whether user and pass were found right under cfg within
// the last rightPasswordTTL.
func (r *rightPasswords) known(cfg *config.Config, user, pass string, now time.Time) bool {
	k := rightPasswordKey(user, pass)
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.m[k]
	return ok && e.cfg == cfg && now.Before(e.expires)
}

// add remembers that user and pass are right under cfg.
func (r *rightPasswords) add(cfg *config.Config, user, pass string, now time.Time) {
	k := rightPasswordKey(user, pass)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil || len(r.m) >= maxRightPasswords {
		r.m = make(map[[sha256.Size]byte]rightPassword)
	}
	r.m[k] = rightPassword{cfg: cfg, expires: now.Add(rightPasswordTTL)}
}
