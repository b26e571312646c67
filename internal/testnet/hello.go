package testnet

import "golang.org/x/crypto/cryptobyte"

// ClientHello is a TLS record carrying a ClientHello for name whose
// cipher_suites and compression_methods fields hold suites and comp as
// they are, well-formed or not: for tests of what a server reads the
// name past (an odd suites' length, no compression methods) or of a
// hello hidden inside another's fields.
func ClientHello(name string, suites, comp []byte) []byte {
	var b cryptobyte.Builder
	b.AddUint8(22) // handshake
	b.AddUint16(0x0301)
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint8(1) // client_hello
		b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddUint16(0x0303)
			b.AddBytes(make([]byte, 32)) // random
			b.AddUint8(0)                // no session id
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(suites) })
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(comp) })
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint16(0) // server_name
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
						b.AddUint8(0) // host_name
						b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(name)) })
					})
				})
			})
		})
	})
	return b.BytesOrPanic()
}
