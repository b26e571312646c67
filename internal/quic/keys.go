package quic

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
)

// Keys protect the Initial packets that one side of a connection sends:
// AES-128-GCM for the payload and AES-128 for the header protection, the
// cipher suite of Initial packets (RFC 9001 §5.3). They are safe for
// concurrent use.
type Keys struct {
	aead cipher.AEAD
	hp   cipher.Block
	iv   [ivLen]byte
}

const (
	secretLen = sha256.Size // Initial secrets (RFC 9001 §5.2)
	keyLen    = 16          // AEAD_AES_128_GCM key, and the header protection key
	ivLen     = 12          // AEAD nonce
	tagLen    = 16          // AEAD tag
)

// ClientInitialKeys derives the keys of the Initial packets a client sends,
// from the Destination Connection ID of its first Initial packet (RFC 9001
// §5.2). Anyone who sees that packet can derive them, which is the point of
// this package.
func ClientInitialKeys(v Version, clientDCID []byte) (*Keys, error) {
	return initialKeys(v, clientDCID, "client in")
}

// ServerInitialKeys derives the keys of the Initial packets a server sends
// in answer, from the same client Destination Connection ID.
func ServerInitialKeys(v Version, clientDCID []byte) (*Keys, error) {
	return initialKeys(v, clientDCID, "server in")
}

func initialKeys(v Version, clientDCID []byte, label string) (*Keys, error) {
	p := v.params()
	if p == nil {
		return nil, fmt.Errorf("initial keys: unknown version %v", v)
	}
	secret, err := initialSecret(p, clientDCID, label)
	if err != nil {
		return nil, err
	}
	return newKeys(p, secret)
}

// initialSecret is client_initial_secret or server_initial_secret (RFC 9001
// §5.2): HKDF-Extract with the version's salt, then HKDF-Expand-Label.
func initialSecret(p *params, clientDCID []byte, label string) ([]byte, error) {
	initial, err := hkdf.Extract(sha256.New, clientDCID, p.salt)
	if err != nil {
		return nil, fmt.Errorf("initial secret: %w", err)
	}
	return expandLabel(initial, label, secretLen)
}

// newKeys expands a secret into the packet protection key, IV and header
// protection key (RFC 9001 §5.1), with the version's labels.
func newKeys(p *params, secret []byte) (*Keys, error) {
	key, err := expandLabel(secret, p.key, keyLen)
	if err != nil {
		return nil, err
	}
	iv, err := expandLabel(secret, p.iv, ivLen)
	if err != nil {
		return nil, err
	}
	hpKey, err := expandLabel(secret, p.hp, keyLen)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("initial keys: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("initial keys: %w", err)
	}
	hp, err := aes.NewCipher(hpKey)
	if err != nil {
		return nil, fmt.Errorf("initial keys: %w", err)
	}
	k := &Keys{aead: aead, hp: hp}
	copy(k.iv[:], iv)
	return k, nil
}

// expandLabel is HKDF-Expand-Label of TLS 1.3 (RFC 8446 §7.1) with an
// empty context, as QUIC uses it (RFC 9001 §5.1): the info is the HkdfLabel
// struct, whose label gets the "tls13 " prefix.
func expandLabel(secret []byte, label string, length int) ([]byte, error) {
	const prefix = "tls13 "
	info := make([]byte, 0, 2+1+len(prefix)+len(label)+1)
	info = append(info, byte(length>>8), byte(length), byte(len(prefix)+len(label)))
	info = append(info, prefix...)
	info = append(info, label...)
	info = append(info, 0) // context<0..255>, empty
	out, err := hkdf.Expand(sha256.New, secret, string(info), length)
	if err != nil {
		return nil, fmt.Errorf("hkdf expand %q: %w", label, err)
	}
	return out, nil
}
