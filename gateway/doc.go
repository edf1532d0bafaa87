// Package gateway is an HTTP entry point to a natsmesh cluster: it calls
// entities for clients that speak HTTP and JSON rather than NATS, like the
// proxy and HTTP function of @effect/cluster's deployments. It hosts no
// entity; cmd/gateway runs it as a binary.
//
// # Usage
//
//	client, _ := mesh.NewClient(nc, cfg.ClientConfig)
//	gcfg := gateway.DefaultConfig()
//	gcfg.Persisted = gateway.PersistedRPCs(orders.Order) // "Order.Place", ...
//	gw, _ := gateway.New(client, gcfg)
//	http.ListenAndServe(":8080", gw)
//
// Serve it at the root of its own listener, not under an http.ServeMux:
// ServeMux cleans paths, so an entity id of ".." would be redirected.
//
// One route: POST /v1/{type}/{id}/{rpc}. Each part is one path segment,
// escaped as such (url.PathEscape, JavaScript's encodeURIComponent): an id
// "a/b c" is requested as /v1/Counter/a%2Fb%20c/Increment (see Path). Ids are
// any UTF-8 of 1 to 1024 bytes, as on the wire; an escape that decodes to
// invalid UTF-8 is refused as InvalidId. The body is the RPC's payload in
// JSON (empty for the zero value); a Content-Type, if given, must be JSON
// (application/json or */*+json). Form and text bodies are refused so that a
// web page cannot make a browser call entities without a CORS preflight.
//
//	curl localhost:8080/v1/Counter/user-123/Increment -H 'Content-Type: application/json' -d '{"amount":5}'
//	5
//
// A success is 200 with the reply in JSON. An error is a JSON object
// {"code": ..., "message": ...}, plus "failure" and "detail" for a declared
// failure, with a status by code:
//
//	Failure (a declared failure)                  422, with failure and detail
//	UnknownEntity, UnknownRpc, NotFound (route)   404
//	Malformed, InvalidId, BadRequest              400
//	PayloadTooLarge (body over MaxBodyBytes)      413
//	MailboxFull                                   429, Retry-After: 1
//	ShardUnavailable, NotServing, ShuttingDown,
//	Unavailable (no NATS)                         503, Retry-After: 1
//	Timeout                                       504
//	Defect, Error, Activation, Internal           500 (no stack is sent)
//	NotImplemented                                501
//	MethodNotAllowed (not POST)                   405, Allow: POST
//	UnsupportedMediaType                          415
//	a code this gateway does not know             502
//
// The time limit is the Mesh-Timeout header (milliseconds) or
// Config.DefaultTimeout, capped by Config.MaxTimeout; the handler's context
// gets the same deadline. A call whose shard has no runner is retried until
// then (the mesh client's backoff) and answered ShardUnavailable if none
// came.
//
// # Persisted RPCs and Idempotency-Key
//
// The gateway knows which RPCs are persisted from Config.Persisted (it
// hosts no entity and the cluster does not advertise it). A call to one of
// them is stored in the persisted-message stream, handled at least once,
// and answered from its stored reply (docs/persistence.md); the response
// carries the message id in Mesh-Msg-Id.
//
//   - With an Idempotency-Key header, the message id is derived from the
//     key and the entity's type, id and RPC (a hash: one key used for two
//     entities makes two messages). Sending the same key to the same entity
//     and RPC again, before or after the first was handled, never runs the
//     handler twice: the repeat gets the first call's stored reply (the
//     repeat's body is not compared). That holds while the stream's dedup
//     window (mesh.Config.PersistDedupWindow, 2 min) or the stored reply's
//     retention (PersistReplyRetention, 24 h) lasts, whichever is longer.
//     A 504 on such a call means the message is stored and will be
//     handled: retry with the same key to get its reply.
//   - Without the header, the gateway generates a message id: the message
//     is handled at least once, but an HTTP retry is a new message.
//   - An Idempotency-Key on an RPC not listed as persisted is refused with
//     400 BadRequest: a volatile call is at most once and the gateway could
//     not keep the promise the key makes.
//
// Keys are 1 to 256 printable characters (no control characters).
//
// # Concurrency
//
// A Gateway is safe for concurrent use; each request is one call on the
// shared mesh client.
//
// # Guarantees
//
// As the mesh client's: a volatile call is handled at most once, a
// persisted one at least once. A 429 means the call was not queued; a 503 or
// a 504 on a volatile call leaves it unknown (the last attempt may have
// reached a runner as the deadline passed), so retry only what is safe to
// repeat, or make the RPC persisted and send an Idempotency-Key. Every
// request gets a JSON answer; nothing fails silently.
package gateway
