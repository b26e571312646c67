// Package quic reads the TLS ClientHello out of a QUIC client's first
// datagrams, and builds the one packet egressd answers a refused client with.
// It does no I/O.
//
// It exists because a QUIC handshake names its server as readably as a TLS
// one, to anyone who knows where to look. A client's first packets are
// Initial packets (RFC 9000 §17.2.2), protected with keys derived only from
// the Destination Connection ID that the client chose and a salt that the
// RFC publishes (RFC 9001 §5.2; QUIC v2: RFC 9369 §3.3). That protection
// keeps out nobody on the path: it only stops middleboxes from ossifying the
// protocol. The gateway derives the same keys, removes the header protection
// (RFC 9001 §5.4), decrypts, collects the CRYPTO frames by offset, and hands
// the reassembled bytes to internal/clienthello, which reads the name as it
// does for TCP.
//
// The steps, each usable alone:
//   - [ParseDatagram] splits a datagram into its long-header packets
//     (coalesced packets, RFC 9000 §12.2) and says what each is: an Initial,
//     0-RTT or Handshake packet of QUIC v1 or v2, a Retry, a Version
//     Negotiation packet, a packet of a version it does not know, or the
//     short-header rest of the datagram;
//   - [ClientInitialKeys] and [Keys.Open] remove an Initial packet's
//     protection, on a copy: the datagram stays as received, to be relayed
//     unchanged if the policy allows the flow;
//   - [ReadFrame] reads the frames an Initial packet may carry;
//   - an [Assembler] takes a client's datagrams and says when the CRYPTO
//     frames hold a whole ClientHello, in any order and split, across packets
//     and datagrams, up to [clienthello.MaxHelloLen];
//   - [AppendClose] builds a server Initial packet with a CONNECTION_CLOSE,
//     which refuses the connection in QUIC's own terms ([CodeAccessDenied]).
//
// What it does not do: it decrypts nothing beyond Initial packets, whose keys
// any observer has. Handshake and 1-RTT keys come from the TLS key exchange,
// which the gateway is not party to; 0-RTT and Handshake packets are only
// skipped by their length. It sends nothing, keeps no flows and has no
// timers: the UDP listener does that.
package quic
