// Package jetstream holds the durable NATS primitives natsmesh builds on,
// each a thin layer over nats.go's jetstream package (imported as natsjs)
// that knows nothing of entities or shards, and the JetStream idioms the
// rest of the project would otherwise write again:
//
//   - a lease store (Leases, Keeper, Watcher): shard leases, singleton
//     locks and runner registrations are all keys in a KV bucket that a
//     holder keeps alive;
//   - reads that decide what to do next, from the stream's leader
//     (LeaderGet), and ranges of a subject from any replica, checked
//     against a sequence the leader gave (ReadSubject);
//   - conditional appends whose unanswered attempts are told apart from
//     conflicts (Append), and the check for a refused expected sequence
//     (WrongLastSequence);
//   - start-up steps retried with short attempts (Setup, Final), and
//     streams and buckets created without touching an existing one's
//     configuration (EnsureStream, EnsureKeyValue, EnsureObjectStore);
//   - any string as one subject token and KV key (Token, ParseToken).
//
// Its configuration structs follow nats.go's convention: a zero field
// takes its default (LeaseConfig, like natsjs.KeyValueConfig).
//
// # Usage
//
//	leases, err := jetstream.OpenLeases(ctx, js, jetstream.LeaseConfig{
//		Bucket: "shard-leases", Replicas: 3, TTL: 35 * time.Second,
//	})
//	l, err := leases.Acquire(ctx, "default.17", runnerID)
//	if errors.Is(err, jetstream.ErrLeaseHeld) { ... }
//	k := leases.Keep(ctx, l, 0) // renews every TTL/3
//	go serveShard(k.Lease().Revision) // the revision is the fencing token
//	<-k.Lost()                        // stop serving the shard at once
//	...
//	err = k.Release(ctx)              // on orderly shutdown
//
// A runner registry is the same thing on another bucket: the runner
// acquires its own id with WithMeta(record) and keeps it; readers Watch the
// bucket and see registrations come, get renewed, and go (released or
// expired).
//
// Holder ids must be unique per process incarnation (e.g. a random suffix
// per start): Acquire takes over a key that already names its holder, which
// is only safe if no other live process can use the same id.
//
// # Concurrency
//
// Leases, Keeper and Watcher are safe for concurrent use. A Lease is a
// value; Renew returns a new one, and two goroutines must not renew the
// same lease (a Keeper is the one place that renews it). A Keeper runs one
// goroutine and a Watcher one; Stop (and Keeper.Release) waits for it to
// exit, and both are idempotent. No context is stored: the one passed to
// Keep or Watch bounds the goroutine's life.
//
// # Guarantees
//
// Ownership comes from compare-and-set writes only. Acquire is a create
// that succeeds only if the key is absent or its last revision is a delete
// or expiry marker; Renew and Release succeed only at the holder's last
// revision. Revisions are stream sequences: they strictly increase and are
// never reused, so a lease's Revision is a fencing token that orders
// holders. Reads (Holder, Watch) are observations for routing and
// monitoring; they may be outdated by the time they arrive and never decide
// ownership.
//
// Fencing. A lease is locally valid until the time its last confirmed
// write was *sent*, plus TTL, minus Margin, measured on the monotonic
// clock. The server starts the key's TTL when it stores the write, which is
// after it was sent, so the holder's validity ends at least Margin before
// the server can expire the key and let another holder Acquire it. A Keeper
// closes Lost at that deadline by its own clock, whether or not it can
// reach the server; it never waits for the server to say the lease is
// gone. Validity is extended only by a write the server confirmed.
//
// The TTL/Update trap. KV keys get their TTL from a Nats-TTL header on
// each write. KeyValue.Update cannot carry one (nats.go v1.55.0) and the
// write it makes replaces the key without a TTL, so a lease renewed with
// Update never expires and a crashed holder would keep it forever
// (nats-io/nats.go#1994). Renew therefore publishes to $KV.<bucket>.<key>
// itself with Nats-Expected-Last-Subject-Sequence and Nats-TTL headers. TTLs
// are whole seconds (the server truncates), and the bucket sets
// LimitMarkerTTL so the server writes a marker when a key expires: without
// it per-key TTLs are refused and watchers never see expiries.
//
// Stale reads. KeyValue.Get is a Direct Get that any replica close enough
// to the leader may answer, so it can miss the latest write. Every read
// this package makes to decide what to do next goes to the stream leader
// ($JS.API.STREAM.MSG.GET.KV_<bucket>, answered by the leader only).
//
// Unknown outcomes. During a stream leader election a write may time out
// or find no responder while it was in fact committed. Retrying the same
// CAS then fails with a revision mismatch because of our own write. Every
// operation disambiguates a mismatch or unknown outcome with a leader-only
// read of the key: a newer revision naming the same holder is our write.
// Renew adopts such a revision but not a longer validity (it cannot know
// which attempt landed when), and immediately renews again at it to get a
// confirmed write. On a replicated bucket the server also refuses a CAS
// with 10164 "wrong last sequence" while an earlier write to the same key
// is still being applied (seen on back-to-back renewals; the key is in
// fact at the expected revision), so a mismatch is never taken as a loss
// without that read. Operations retry for as long as they are allowed (the
// lease's validity for Renew, the context or a 5 s default for the others)
// and give up on a closed connection or a request the server refuses.
//
// Leader loss. Server.Shutdown hands stream leadership over first, and
// renewals resume within a few hundred milliseconds. A leader that crashes
// or is cut off is replaced only after the Raft election timeout (4 to 9 s
// in nats-server 2.15), so TTL minus Margin must exceed that plus a renewal
// interval for leases to survive it (the 35 s default does; do not go much
// below 15 s on a replicated bucket).
//
// Expiry is late, never early: the server expires a key up to about a
// second after its TTL (timer granularity), so a lost holder's key becomes
// free within TTL plus about a second of its last write.
package jetstream
