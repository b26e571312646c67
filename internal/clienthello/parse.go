package clienthello

import (
	"fmt"
	"iter"

	"golang.org/x/crypto/cryptobyte"
)

// Extension types that Parse reads (IANA TLS ExtensionType registry).
const (
	extServerName          = 0      // RFC 6066 §3
	extSignatureAlgorithms = 13     // RFC 8446 §4.2.3
	extALPN                = 16     // RFC 7301 §3.1
	extSupportedVersions   = 43     // RFC 8446 §4.2.1
	extECH                 = 0xfe0d // draft-ietf-tls-esni §5, encrypted_client_hello
)

// Info is what the gateway learns from a ClientHello.
//
// Its byte-slice fields are views of the message Parse read, not copies:
// the gateway parses every connection's hello, and copying names out of it
// would cost an allocation per name. They are valid only as long as
// that message is, which for the gateway means until peek.Release; whatever
// must outlive it (the access-log record) is copied first.
type Info struct {
	// ServerName is the host_name of the server_name extension exactly as
	// sent: not lower-cased, a trailing dot kept, any byte value allowed (NUL
	// included, as in crypto/tls). Checking and normalising it is the job of
	// internal/fqdn. It is nil when the client sent no host_name; an empty
	// host_name makes the hello invalid.
	ServerName []byte
	// HasSNI says a host_name was sent, that is len(ServerName) > 0. A
	// server_name extension holding only other name types leaves it false.
	HasSNI bool
	// ALPN is the protocol_name_list (RFC 7301 §3.1), nil when the
	// extension is absent.
	ALPN ProtocolList
	// LegacyVersion is the hello's legacy_version (client_version).
	LegacyVersion uint16
	// RecordVersion is the legacy_record_version of the first record. Only the
	// record layer knows it, so Examine sets it and Parse leaves it 0.
	RecordVersion uint16
	// Versions is the supported_versions list (RFC 8446 §4.2.1), GREASE
	// values included; nil when absent.
	Versions VersionList
	// CipherSuites is the cipher_suites list as sent, GREASE values
	// included.
	CipherSuites Uint16List
	// Extensions is the extensions block in the client's order, nil when
	// the hello has none: its types are what a fingerprint ([JA4]) counts.
	Extensions ExtensionList
	// SignatureAlgorithms is the signature_algorithms list (RFC 8446
	// §4.2.3) in the client's order, GREASE values included; nil when
	// absent.
	SignatureAlgorithms Uint16List
	// ECH says the encrypted_client_hello extension is present: ServerName
	// is then the outer, public name, not the one the client wants.
	ECH bool
	// ECHOuter says the extension is an outer ECHClientHello (type 0, RFC
	// 9849 §5), and ECHConfigID is its config_id. Real ECH and Chrome's
	// GREASE ECH (§6.2: a random config_id, random enc and payload) look
	// alike here by design; only a config_id and public name that the
	// client was really given can tell them apart (see the gateway).
	ECHOuter    bool
	ECHConfigID uint8
}

// Parse reads a complete handshake message, as Reassemble returns it, and
// reports whether it is a well-formed ClientHello. It fills info on success
// and zeroes it on failure.
//
// Every length is checked, and duplicate extensions are rejected (RFC 8446
// §4.2), but field contents are checked only where Info reports them: the
// server behind the gateway judges the rest. Like crypto/tls, Parse accepts a
// legacy_session_id longer than 32 bytes and an empty compression method list.
//
// One pass; info views msg (see [Info]), so Parse allocates nothing but an
// 8 KiB set for a hello with more than 32 extensions, which no real client
// sends.
func Parse(msg []byte, info *Info) bool {
	*info = Info{}
	if !parseHello(cryptobyte.String(msg), info) {
		*info = Info{}
		return false
	}
	return true
}

// parseHello follows the ClientHello structure of RFC 8446 §4.1.2, which
// keeps the TLS 1.2 framing (RFC 5246 §7.4.1.2).
func parseHello(s cryptobyte.String, info *Info) bool {
	var msgType uint8
	var body, skipped, suites, exts cryptobyte.String
	if !s.ReadUint8(&msgType) || msgType != typeClientHello ||
		!s.ReadUint24LengthPrefixed(&body) || !s.Empty() ||
		!body.ReadUint16(&info.LegacyVersion) ||
		!body.Skip(32) || // random
		!body.ReadUint8LengthPrefixed(&skipped) || // legacy_session_id
		!body.ReadUint16LengthPrefixed(&suites) || len(suites)%2 != 0 ||
		!body.ReadUint8LengthPrefixed(&skipped) { // legacy_compression_methods
		return false
	}
	info.CipherSuites = Uint16List(suites)
	if body.Empty() {
		return true // RFC 5246 §7.4.1.2: the extensions block may be absent
	}
	if !body.ReadUint16LengthPrefixed(&exts) || !body.Empty() {
		return false
	}
	info.Extensions = ExtensionList(exts)
	return parseExtensions(exts, info)
}

func parseExtensions(exts cryptobyte.String, info *Info) bool {
	var seen extSet
	for !exts.Empty() {
		var typ uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
			return false
		}
		if !seen.add(typ) {
			return false // RFC 8446 §4.2: at most one extension of a type
		}
		ok := true
		switch typ {
		case extServerName:
			info.ServerName, ok = parseServerName(data)
			info.HasSNI = len(info.ServerName) > 0
		case extALPN:
			info.ALPN, ok = parseALPN(data)
		case extSupportedVersions:
			info.Versions, ok = parseVersions(data)
		case extSignatureAlgorithms:
			info.SignatureAlgorithms, ok = parseSignatureAlgorithms(data)
		case extECH:
			// Its content is for the server to open; only the type and the
			// config_id are read, and a body too short for them is not an
			// error here (the server judges it).
			info.ECH = true
			var typ, id uint8
			var suite uint32
			if data.ReadUint8(&typ) && typ == 0 && data.ReadUint32(&suite) && data.ReadUint8(&id) {
				info.ECHOuter, info.ECHConfigID = true, id
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// parseServerName reads a ServerNameList (RFC 6066 §3): a non-empty list of
// (NameType, opaque<1..2^16-1>) entries, at most one per type. Only
// host_name (0) is defined; like crypto/tls, other types are read with the
// same framing and skipped.
func parseServerName(data cryptobyte.String) ([]byte, bool) {
	var list, host cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || list.Empty() || !data.Empty() {
		return nil, false
	}
	for !list.Empty() {
		var typ uint8
		var name cryptobyte.String
		if !list.ReadUint8(&typ) || !list.ReadUint16LengthPrefixed(&name) || name.Empty() {
			return nil, false
		}
		if typ != 0 {
			continue
		}
		if host != nil {
			return nil, false // a second host_name
		}
		host = name
	}
	return host, true
}

// parseALPN reads a ProtocolNameList (RFC 7301 §3.1): a non-empty list of
// opaque<1..2^8-1> names. It checks the framing once, so that the
// ProtocolList it returns, a view of the list, can be walked unchecked.
func parseALPN(data cryptobyte.String) (ProtocolList, bool) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || list.Empty() || !data.Empty() {
		return nil, false
	}
	for rest := list; !rest.Empty(); {
		var name cryptobyte.String
		if !rest.ReadUint8LengthPrefixed(&name) || name.Empty() {
			return nil, false
		}
	}
	return ProtocolList(list), true
}

// parseVersions reads the ClientHello form of supported_versions (RFC 8446
// §4.2.1): ProtocolVersion versions<2..254>.
func parseVersions(data cryptobyte.String) (VersionList, bool) {
	var list cryptobyte.String
	if !data.ReadUint8LengthPrefixed(&list) || list.Empty() || len(list)%2 != 0 || !data.Empty() {
		return nil, false
	}
	return VersionList(list), true
}

// parseSignatureAlgorithms reads SignatureSchemeList (RFC 8446 §4.2.3):
// SignatureScheme supported_signature_algorithms<2..2^16-2>, checked as
// crypto/tls checks it.
func parseSignatureAlgorithms(data cryptobyte.String) (Uint16List, bool) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || list.Empty() || len(list)%2 != 0 || !data.Empty() {
		return nil, false
	}
	return Uint16List(list), true
}

// ProtocolList is an ALPN protocol_name_list as sent, without its length
// prefix: each name is a length byte and that many bytes. Parse checked
// it, so its methods do not; other values are not meant to be built.
type ProtocolList []byte

// All yields the protocol names in the client's order, as views of the
// list.
func (l ProtocolList) All() iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for rest := l; len(rest) > 0; {
			n := int(rest[0])
			if !yield(rest[1 : 1+n : 1+n]) {
				return
			}
			rest = rest[1+n:]
		}
	}
}

// Strings returns copies of the names in the client's order, nil for a nil
// list: what outlives the message, as the access log does, keeps these.
// The lists nearly every client sends are shared, not copied: the result
// is read-only. A list of more than MaxKeptProtocols names keeps its first
// MaxKeptProtocols-1 and ends with "(N more)": a hello can carry thousands
// of one-byte names, which a relayed connection would otherwise hold as
// strings for its whole life, and write into its log line.
func (l ProtocolList) Strings() []string {
	if l == nil {
		return nil
	}
	for _, c := range commonALPN {
		if string(l) == c.wire {
			return c.names
		}
	}
	n := 0
	for range l.All() {
		n++
	}
	out := make([]string, 0, min(n, MaxKeptProtocols))
	for name := range l.All() {
		if len(out) == MaxKeptProtocols-1 && n > MaxKeptProtocols {
			return append(out, fmt.Sprintf("(%d more)", n-len(out)))
		}
		out = append(out, string(name))
	}
	return out
}

// MaxKeptProtocols bounds the ALPN names Strings keeps; clients send a few
// (h2, http/1.1; h3), browsers' GREASE values included.
const MaxKeptProtocols = 16

// commonALPN are the ALPN lists Strings shares instead of copying: a
// relayed connection keeps its line (and so its ALPN) for its whole life,
// and these are what browsers, curl, Go and most libraries send.
var commonALPN = []struct {
	wire  string
	names []string
}{
	{"\x02h2\x08http/1.1", []string{"h2", "http/1.1"}},
	{"\x08http/1.1", []string{"http/1.1"}},
	{"\x02h2", []string{"h2"}},
	{"\x02h3", []string{"h3"}},
}

// VersionList is a supported_versions list as sent, without its length
// prefix.
type VersionList = Uint16List

// Uint16List is a list of big-endian uint16 values as sent (versions,
// cipher suites, signature schemes), without its length prefix. Parse
// checked that its length is even.
type Uint16List []byte

// All yields the values in the client's order.
func (l Uint16List) All() iter.Seq[uint16] {
	return func(yield func(uint16) bool) {
		for i := 0; i+1 < len(l); i += 2 {
			if !yield(uint16(l[i])<<8 | uint16(l[i+1])) {
				return
			}
		}
	}
}

// Len returns the number of values.
func (l Uint16List) Len() int { return len(l) / 2 }

// ExtensionList is a ClientHello's extensions block as sent, without its
// length prefix: each extension a type, a length and that many bytes.
// Parse checked it; Types stops at bytes that do not frame an extension
// rather than panic, but other values are not meant to be built.
type ExtensionList []byte

// Types yields the extension types in the client's order.
func (l ExtensionList) Types() iter.Seq[uint16] {
	return func(yield func(uint16) bool) {
		for rest := l; len(rest) >= 4; {
			n := 4 + (int(rest[2])<<8 | int(rest[3]))
			if n > len(rest) || !yield(uint16(rest[0])<<8|uint16(rest[1])) {
				return
			}
			rest = rest[n:]
		}
	}
}

// extSet remembers the extension types seen. Real hellos carry about twenty,
// which a linear scan of a small array handles without allocating; a hostile
// hello may carry thousands, and past the array a 2^16-bit set keeps the
// check linear.
type extSet struct {
	small [32]uint16
	n     int
	big   []uint64
}

// add records typ and reports whether it was new.
func (s *extSet) add(typ uint16) bool {
	if s.big != nil {
		word, bit := typ/64, uint64(1)<<(typ%64)
		isNew := s.big[word]&bit == 0
		s.big[word] |= bit
		return isNew
	}
	for _, t := range s.small[:s.n] {
		if t == typ {
			return false
		}
	}
	if s.n < len(s.small) {
		s.small[s.n] = typ
		s.n++
		return true
	}
	s.big = make([]uint64, 1<<16/64)
	for _, t := range s.small {
		s.big[t/64] |= 1 << (t % 64)
	}
	return s.add(typ)
}
