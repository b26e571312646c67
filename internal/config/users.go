package config

import (
	"crypto/sha256"
	"crypto/subtle"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/bcrypt"
)

// User is one proxy user of the explicit listeners. Exactly one of Hash
// (a bcrypt hash, from password_hash) and Env (the name of the environment
// variable that held the password, from password_env) is set.
type User struct {
	Name string
	Hash []byte
	Env  string
	// envSum is SHA-256 of the password read from Env at load time;
	// comparing digests of equal length lets subtle.ConstantTimeCompare
	// take the same time whatever the password's length.
	envSum [32]byte
	// noPassword: Env was not set where the config was checked (Check);
	// no password is the user's.
	noPassword bool
	Line       int
}

// Check reports whether password is the user's. bcrypt compares in
// constant time; so does the digest comparison for password_env.
func (u *User) Check(password string) bool {
	if u.Hash != nil {
		return bcrypt.CompareHashAndPassword(u.Hash, []byte(password)) == nil
	}
	if u.noPassword {
		return false
	}
	sum := sha256.Sum256([]byte(password))
	return subtle.ConstantTimeCompare(sum[:], u.envSum[:]) == 1
}

// dummyHash is a bcrypt hash (cost 10) of a password nobody sends: an
// unknown user name is checked against it, so that a refusal takes as long
// for a name that does not exist as for a wrong password, and timing does
// not tell which names exist.
var dummyHash = []byte("$2a$10$wrkWBbJZHf2nawI5VYSiUexsNfVxbqWcjq5.WjoMQkPuJu87fGZ5C")

// Authenticate reports whether name and password are those of a configured
// user.
func (c *Config) Authenticate(name, password string) bool {
	for i := range c.Users {
		if u := &c.Users[i]; u.Name == name {
			return u.Check(password)
		}
	}
	bcrypt.CompareHashAndPassword(dummyHash, []byte(password))
	return false
}

// users reads the users section. Names must be unique, without ':' (HTTP
// Basic splits user and password at the first colon) and at most 255 bytes
// (the SOCKS5 user name field, RFC 1929).
func (d *decoder) users(n *yaml.Node) []User {
	items, ok := d.list(n, "users", "users")
	if !ok {
		return nil
	}
	var out []User
	for i, it := range items {
		path := item("users", i)
		f, ok := d.mapping(it, path, "name", "password_hash", "password_env")
		if !ok {
			continue
		}
		u := User{Line: it.Line}
		v, ok := f["name"]
		if !ok {
			d.errorf(it, "%s: missing key %q", path, "name")
			continue
		}
		if u.Name, ok = d.str(v, field(path, "name")); !ok {
			continue
		}
		switch first, dup := d.userLines[u.Name]; {
		case dup:
			d.errorf(v, "%s: user %q already defined at line %d", field(path, "name"), u.Name, first)
		case strings.Contains(u.Name, ":"):
			d.errorf(v, "%s: a user name cannot contain ':'", field(path, "name"))
		case len(u.Name) > 255:
			d.errorf(v, "%s: user name longer than 255 bytes", field(path, "name"))
		}
		d.userLines[u.Name] = v.Line
		hv, hasHash := f["password_hash"]
		ev, hasEnv := f["password_env"]
		switch {
		case hasHash && hasEnv:
			d.errorf(ev, "%s: give password_hash or password_env, not both", path)
		case hasHash:
			if s, ok := d.str(hv, field(path, "password_hash")); ok {
				if _, err := bcrypt.Cost([]byte(s)); err != nil {
					d.errorf(hv, "%s: not a bcrypt hash (%v); make one with e.g. htpasswd -nbBC 10 USER PASSWORD", field(path, "password_hash"), err)
				}
				u.Hash = []byte(s)
			}
		case hasEnv:
			if s, ok := d.str(ev, field(path, "password_env")); ok {
				u.Env = s
				pw, set := os.LookupEnv(s)
				switch {
				case set && pw != "":
				case d.secretsElsewhere:
					d.warnf(ev, "%s: environment variable %s is not set or empty here; egressd run needs it", field(path, "password_env"), s)
					u.noPassword = true
				default:
					d.errorf(ev, "%s: environment variable %s is not set or empty", field(path, "password_env"), s)
				}
				u.envSum = sha256.Sum256([]byte(pw))
			}
		default:
			d.errorf(it, "%s: missing key %q or %q", path, "password_hash", "password_env")
		}
		out = append(out, u)
	}
	return out
}

// ruleUsers reads a rule's users list; every name must be a defined user,
// so that a typo cannot make a rule silently match nobody.
func (d *decoder) ruleUsers(n *yaml.Node, path string) []string {
	var out []string
	for i, it := range d.matchList(n, path, "user names") {
		s, ok := d.str(it, item(path, i))
		if !ok {
			continue
		}
		if _, known := d.userLines[s]; !known {
			d.errorf(it, "%s: unknown user %q; define it under users", item(path, i), s)
			continue
		}
		out = append(out, s)
	}
	return out
}
