// Package mesh puts natsmesh's entities on NATS: any process can call any
// entity by its address, wherever it runs.
//
// # Usage
//
// A runner hosts entities; a client calls them. Both take a *nats.Conn and
// the same Config (every process of a cluster must agree on the prefix, the
// shard groups and their sizes):
//
//	cfg := mesh.DefaultConfig()
//	runner, _ := mesh.NewRunner(nc, cfg)
//	runner.Register(counter.Behavior(nil))
//	runner.Start(ctx)                    // standalone: serves every shard
//
//	client, _ := mesh.NewClient(nc2, cfg) // client-only: hosts nothing
//	v, err := mesh.Call(ctx, client, counter.Increment, "user-123", counter.Amount{Amount: 5})
//
// Call waits for the reply, Send fires and forgets, Stream reads a streaming
// RPC's chunks as they come. Payloads are msgpack by default or JSON
// (Config.Codec); a runner answers in the codec it was asked in.
//
// # Routing
//
// An entity id maps to a shard, ShardOf(id, ShardsPerGroup) = xxhash64(id) mod
// n, and each shard is a NATS subject that only its owner subscribes to. A call
// that finds no subscriber (the shard is unowned or moving) gets NATS's "no
// responders" at once, and the client retries with backoff until its
// deadline, then returns ErrShardUnavailable. The wire protocol is in
// docs/protocol.md: any NATS client can call an entity with JSON, hashing the
// id itself or using the route subject that needs no hashing.
//
// # Concurrency
//
// Runner and Client are safe for concurrent use. A runner's shard
// subscriptions only hand messages to entity mailboxes (the actor runtime),
// so a slow entity never holds up its shard's other entities. Replies are
// published from the entity's goroutine.
//
// # Guarantees
//
// Calls are at most once: a call is handled once or not at all. Retries
// happen only on answers that guarantee the message was not run (no
// responders, NotServing, ShuttingDown). Calls from one client to one entity
// are handled in the order they were sent when the client waits for each
// reply; messages published by one connection without waiting (Send) keep
// their publish order too. Errors cross the wire typed: declared failures and
// *actor.Defect arrive as themselves, everything else as *Error matching the
// actor sentinels with errors.Is.
package mesh
