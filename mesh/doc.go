// Package mesh puts natsmesh's entities on NATS: any process can call any
// entity by its address, wherever it runs.
//
// # Usage
//
// A runner hosts entities; a client calls them. A runner takes a Config, a
// client the ClientConfig part of it: every process of a cluster must agree
// on the prefix, the shard groups and their sizes. What is not a setting
// (a logger, an Observer) is an Option:
//
//	cfg := mesh.DefaultConfig()
//	runner, _ := mesh.NewRunner(nc, cfg, mesh.WithLogger(log))
//	runner.Register(behavior)           // counter.New(ctx, store): the example Counter
//	runner.Start(ctx)                    // joins the cluster run by a ShardManager
//
//	client, _ := mesh.NewClient(nc2, cfg.ClientConfig) // client-only: hosts nothing
//	v, err := mesh.Call(ctx, client, counter.Increment, "user-123", counter.Amount{Amount: 5})
//
// Call waits for the reply, Send fires and forgets, Stream reads a streaming
// RPC's chunks as they come. Payloads are msgpack by default or JSON
// (ClientConfig.Codec); a runner answers in the codec it was asked in. The
// wire protocol's names (subjects, headers, codes, codecs) are in package
// mesh/protocol.
//
// # Cluster
//
// Runners register in a JetStream KV bucket; a ShardManager (one leads,
// others stand by) assigns shards to them by weight, moving as few as
// possible; a runner serves a shard only while it holds the shard's lease,
// renewed in KV, and stops serving it by its own clock before the lease could
// expire (fencing). Shards move gracefully when runners join or leave and
// are recovered after a crash within the lease expiry. Singletons
// (RegisterSingleton) run with the shard their name hashes to. Inspect shows
// runners, shards, leases and singletons. With Config.Standalone a single
// runner serves every shard with no coordination. docs/operations.md
// describes the protocol and its timing settings.
//
// # Persisted messages
//
// An RPC declared actor.Persisted is stored in a JetStream stream before
// delivery, handled at least once in order per entity by the shard's owner,
// deduplicated by message id (MessageID), and answered from a stored reply
// (Reply re-attaches by id); DeliverAt delays it; messages that cannot
// succeed go to a dead-letter stream (DeadLetters, Redrive).
// docs/persistence.md has the guarantees.
//
// # Routing
//
// An entity id maps to a shard, protocol.ShardOf(id, ShardsPerGroup) =
// xxhash64(id) mod n, and each shard is a NATS subject that only its owner
// subscribes to. A call
// that finds no subscriber (the shard is unowned or moving) gets NATS's "no
// responders" at once, and the client retries with backoff until its
// deadline, then returns ErrShardUnavailable. The wire protocol is in
// docs/protocol.md: any NATS client can call an entity with JSON, hashing the
// id itself or using the route subject that needs no hashing.
//
// # Concurrency
//
// Runner and Client are safe for concurrent use. A runner's shard
// subscriptions feed one dispatcher goroutine, which only hands messages to
// entity mailboxes (the actor runtime), so a slow entity never holds up its
// shard's other entities. A successful unary reply, and a persisted
// message's reply and acknowledgement, go from the entity's goroutine to
// one publishing goroutine that sends a burst in one socket write
// (replies.go); error replies and stream chunks are published from the
// goroutine that has them. docs/design.md follows a call through the code.
//
// # Guarantees
//
// Volatile calls are at most once: a call is handled once or not at all.
// Retries happen only on answers that guarantee the message was not run (no
// responders, NotServing, ShuttingDown); a fenced runner stays silent rather
// than answer NotServing, since the shard's new owner may have received the
// same call. At most one runner activates an entity address at a time. Calls from one client to one entity
// are handled in the order they were sent when the client waits for each
// reply; messages published by one connection without waiting (Send) keep
// their publish order too. Errors cross the wire typed: declared failures and
// *actor.Defect arrive as themselves, everything else as *Error matching the
// actor sentinels with errors.Is; CodeOf gives any outcome's wire code.
package mesh
