// Package protocol is natsmesh's wire protocol, version 1, as Go names:
// the subjects calls and persisted messages travel on, their headers, the
// payload codecs, the error envelope and its codes, the shard hash, and the
// format of stored replies. docs/protocol.md is the normative description,
// for clients in any language; this package is its Go spelling, shared by
// the mesh, the gateway, the tools and the packages that store entity
// state. It does no I/O.
//
// # Usage
//
//	s := protocol.Subjects{Prefix: "mesh"}
//	shard := protocol.ShardID{Group: "default", N: protocol.ShardOf("user-123", 300)}
//	m := nats.NewMsg(s.Call(shard, "Counter", "Increment"))
//	protocol.SetID(m.Header, "user-123")
//	m.Header.Set(protocol.HeaderCodec, protocol.CodecJSON)
//
// # Guarantees
//
// Every parser here accepts exactly what its builder produces (fuzzed:
// parse(build(x)) == x, and what parses builds back to itself), so a
// subject or header value means one thing.
package protocol
