// Package security_test runs the permission blocks of docs/security.md,
// exactly as written there, on an embedded server: each role of a cluster
// works with its block alone (no permission violation while it serves,
// leads, calls or inspects), and a client cannot do what the document says
// it cannot.
package security_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

var (
	ledger = actor.NewEntity("Ledger")
	post   = actor.NewRPC[int, int](ledger, "Post", actor.Persisted())
)

func ledgerBehavior() *actor.Behavior {
	return actor.Implement(ledger, func(*actor.Instance) ([]actor.Handler, error) {
		total := 0
		return []actor.Handler{actor.Handle(post, func(_ context.Context, n int) (int, error) {
			total += n
			return total, nil
		})}, nil
	})
}

// Users of the documented accounts block, with their inbox prefixes; bob
// is a second client user made from alice's block.
var users = map[string]string{
	"mesh-runner":  "_INBOX.mesh-runner",
	"mesh-manager": "_INBOX.mesh-manager",
	"alice":        "_INBOX.alice",
	"bob":          "_INBOX.bob",
	"gateway":      "_INBOX.gateway",
	"meshctl":      "_INBOX.meshctl",
}

// docConfig returns the configuration blocks of docs/security.md, with a
// second client user, bob, made from alice's block as the document says.
func docConfig(t testing.TB) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```conf\n# role: ([^\n]*)\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	roles := map[string]string{}
	for _, b := range blocks {
		roles[b[1]] = b[2]
	}
	for _, want := range []string{"runner", "shard manager", "client alice", "gateway", "meshctl", "accounts"} {
		if roles[want] == "" {
			t.Fatalf("docs/security.md has no conf block for role %q", want)
		}
	}
	var out strings.Builder
	for _, b := range blocks {
		out.WriteString(b[2])
		if b[1] == "client alice" {
			out.WriteString(strings.ReplaceAll(strings.ReplaceAll(b[2], "alice", "bob"), "ALICE", "BOB"))
		}
	}
	conf := out.String()
	aliceUser := regexp.MustCompile(`(?m)^.*\{user: alice,.*$`).FindString(conf)
	if aliceUser == "" {
		t.Fatal("docs/security.md: the accounts block has no user alice")
	}
	bobUser := strings.ReplaceAll(strings.ReplaceAll(aliceUser, "alice", "bob"), "ALICE", "BOB")
	return strings.Replace(conf, aliceUser, aliceUser+"\n"+bobUser, 1)
}

// startServer starts an embedded server with the documented blocks; every
// user's password is its name.
func startServer(t *testing.T) *server.Server {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(path, []byte(docConfig(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	for env, user := range map[string]string{
		"MESH_RUNNER_PASSWORD": "mesh-runner", "MESH_MANAGER_PASSWORD": "mesh-manager", "ALICE_PASSWORD": "alice",
		"BOB_PASSWORD": "bob", "GATEWAY_PASSWORD": "gateway", "MESHCTL_PASSWORD": "meshctl",
	} {
		t.Setenv(env, user)
	}
	parsed, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("docs/security.md's configuration: %v", err)
	}
	return natstest.StartServer(t, func(o *server.Options) {
		p := *parsed
		p.ServerName, p.Host, p.Port, p.JetStream, p.StoreDir, p.NoLog, p.NoSigs = o.ServerName, o.Host, o.Port, true, o.StoreDir, true, true
		*o = p
	})
}

// conn is a user's connection that records the permission violations the
// server reports to it.
type conn struct {
	*nats.Conn
	user string

	mu         sync.Mutex
	violations []string
}

func connect(t *testing.T, s *server.Server, user string) *conn {
	t.Helper()
	c := &conn{user: user}
	nc, err := nats.Connect(s.ClientURL(), nats.UserInfo(user, user), nats.CustomInboxPrefix(users[user]), nats.Name(user),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.violations = append(c.violations, err.Error())
		}))
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	c.Conn = nc
	return c
}

// clean fails the test if the server refused the user anything.
func (c *conn) clean(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.violations) > 0 {
		t.Errorf("%s, with its documented permissions, was refused:\n  %s", c.user, strings.Join(c.violations, "\n  "))
	}
}

// refused waits until the server reports refusing subject to the user.
func (c *conn) refused(t *testing.T, subject string) {
	t.Helper()
	natstest.WaitFor(t, 5*time.Second, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, v := range c.violations {
			if strings.Contains(strings.ToLower(v), "permissions violation") && strings.Contains(v, `"`+subject+`"`) {
				return true
			}
		}
		return false
	}, c.user+" refused "+subject)
}

func config() mesh.Config {
	cfg := mesh.DefaultConfig().FastFailover()
	cfg.ShardsPerGroup = 4
	cfg.CallTimeout = 15 * time.Second
	return cfg
}

// cluster is a shard manager and runners, each on its own documented user.
type cluster struct {
	t        *testing.T
	srv      *server.Server
	cfg      mesh.Config
	managers []*conn
	runners  map[string]*mesh.Runner
	rconns   map[string]*conn
}

func newCluster(t *testing.T) *cluster {
	c := &cluster{t: t, srv: startServer(t), cfg: config(), runners: map[string]*mesh.Runner{}, rconns: map[string]*conn{}}
	m := c.manager()
	natstest.WaitFor(t, 10*time.Second, m.IsLeader, "the shard manager leading with its documented permissions")
	return c
}

// manager starts a shard manager.
func (c *cluster) manager() *mesh.ShardManager {
	mc := connect(c.t, c.srv, "mesh-manager")
	m, err := mesh.NewShardManager(mc.Conn, c.cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	c.t.Cleanup(func() { cancel(); <-done })
	c.managers = append(c.managers, mc)
	return m
}

func (c *cluster) runner(id string) *mesh.Runner {
	t := c.t
	rc := connect(t, c.srv, "mesh-runner")
	cfg := c.cfg
	cfg.RunnerID = id
	r, err := mesh.NewRunner(rc.Conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []*actor.Behavior{meshtest.MemoryCounter(), ledgerBehavior()} {
		if err := r.Register(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatalf("runner %s with its documented permissions: %v", id, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.Shutdown(ctx)
	})
	c.runners[id], c.rconns[id] = r, rc
	return r
}

// served waits until the runners together serve every shard.
func (c *cluster) served(what string) {
	natstest.WaitFor(c.t, 20*time.Second, func() bool {
		n := 0
		for _, r := range c.runners {
			n += len(r.Shards())
		}
		return n == c.cfg.ShardsPerGroup
	}, what)
}

func (c *cluster) client(user string) (*mesh.Client, *conn) {
	cn := connect(c.t, c.srv, user)
	cl, err := mesh.NewClient(cn.Conn, c.cfg.ClientConfig)
	if err != nil {
		c.t.Fatal(err)
	}
	return cl, cn
}

// Every role works with exactly its documented permissions: runners serve
// volatile, streamed and persisted calls and take a crashed runner's
// shards (leases, registrations, consumers), the shard manager leads and
// rebalances, clients and the gateway call, meshctl inspects and re-drives.
func TestRolesWork(t *testing.T) {
	c := newCluster(t)
	// A second shard manager campaigns (and reads the leader's lease) in
	// vain.
	standby := c.manager()
	c.runner("r1")
	c.served("runner r1 serving every shard")
	ctx := context.Background()
	alice, aliceConn := c.client("alice")

	t.Run("client", func(t *testing.T) {
		if v, err := mesh.Call(ctx, alice, counter.Increment, "a-1", counter.Amount{Amount: 2}); err != nil || v != 2 {
			t.Fatalf("volatile call = %d, %v", v, err)
		}
		reply, err := aliceConn.RequestMsg(&nats.Msg{Subject: "mesh.v1.entity.Counter.GetValue", Header: nats.Header{protocol.HeaderID: {"a-1"}}}, 10*time.Second)
		if err != nil || string(reply.Data) != "2" {
			t.Fatalf("call on the route subject = %v, %v", reply, err)
		}
		if v, err := mesh.Call(ctx, alice, post, "l-1", 5); err != nil || v != 5 {
			t.Fatalf("persisted call = %d, %v", v, err)
		}
		if err := mesh.Send(ctx, alice, post, "l-1", 1, mesh.MessageID("alice-later"), mesh.DeliverAt(time.Now().Add(1100*time.Millisecond))); err != nil {
			t.Fatalf("persisted send with DeliverAt: %v", err)
		}
		if v, err := mesh.Reply(ctx, alice, post, "alice-later"); err != nil || v != 6 {
			t.Fatalf("reply of the delayed send = %d, %v", v, err)
		}
		var got []int
		for v, err := range mesh.Stream(ctx, alice, counter.Countdown, "a-1", 3*mesh.DefaultStreamWindow) {
			if err != nil {
				t.Fatalf("stream: %v", err)
			}
			got = append(got, v)
		}
		if len(got) != 3*mesh.DefaultStreamWindow {
			t.Fatalf("stream yielded %d chunks, want %d (acknowledged along the way)", len(got), 3*mesh.DefaultStreamWindow)
		}
	})

	t.Run("gateway", func(t *testing.T) {
		gw, _ := c.client("gateway")
		if _, err := gw.CallRaw(ctx, mesh.RawCall{EntityType: "Counter", ID: "g-1", RPC: "Increment", Codec: protocol.CodecJSON, Payload: []byte(`{"amount":1}`)}); err != nil {
			t.Fatalf("gateway volatile call: %v", err)
		}
		out, err := gw.CallRaw(ctx, mesh.RawCall{EntityType: "Ledger", ID: "g-1", RPC: "Post", Codec: protocol.CodecJSON, Payload: []byte(`3`), Persisted: true, MessageID: "gw-1"})
		if err != nil || string(out) != "3" {
			t.Fatalf("gateway persisted call = %s, %v", out, err)
		}
		// Sent again with its id (a retry, or an HTTP client re-attaching):
		// answered from the stored reply.
		out, err = gw.CallRaw(ctx, mesh.RawCall{EntityType: "Ledger", ID: "g-1", RPC: "Post", Codec: protocol.CodecJSON, Payload: []byte(`3`), Persisted: true, MessageID: "gw-1"})
		if err != nil || string(out) != "3" {
			t.Fatalf("gateway persisted call sent again = %s, %v", out, err)
		}
	})

	t.Run("meshctl", func(t *testing.T) {
		// A dead letter to look at and re-drive: a persisted call to an rpc
		// no runner has.
		_, err := alice.CallRaw(ctx, mesh.RawCall{EntityType: "Ledger", ID: "l-2", RPC: "Missing", Codec: protocol.CodecJSON, Payload: []byte(`1`), Persisted: true, MessageID: "dead-1"})
		if err == nil {
			t.Fatal("persisted call to a missing rpc succeeded")
		}
		ctl := connect(t, c.srv, "meshctl")
		st, err := mesh.Inspect(ctx, ctl.Conn, c.cfg)
		if err != nil || st.Manager == "" || len(st.Runners) != 1 {
			t.Fatalf("Inspect = %+v, %v", st, err)
		}
		dls, err := mesh.DeadLetters(ctx, ctl.Conn, c.cfg.ClientConfig, 0, 10)
		if err != nil || len(dls) != 1 || dls[0].MsgID != "dead-1" {
			t.Fatalf("DeadLetters = %+v, %v", dls, err)
		}
		if err := mesh.Redrive(ctx, ctl.Conn, c.cfg.ClientConfig, dls[0].Seq); err != nil {
			t.Fatalf("Redrive: %v", err)
		}
		reply, err := ctl.Request("mesh.v1.entity.Counter.GetValue", nil, 10*time.Second)
		if err != nil || reply.Header.Get(protocol.HeaderError) != protocol.CodeBadRequest {
			t.Fatalf("meshctl call without an id: %v, want a BadRequest reply", err)
		}
		ctl.clean(t)
	})

	t.Run("rebalance and crash", func(t *testing.T) {
		c.runner("r2")
		natstest.WaitFor(t, 20*time.Second, func() bool {
			return len(c.runners["r1"].Shards()) == 2 && len(c.runners["r2"].Shards()) == 2
		}, "two runners sharing the shards")
		// On the route subject, a runner forwards the calls of shards the
		// other one serves.
		for i := range 16 {
			id := fmt.Sprint("routed-", i)
			reply, err := aliceConn.RequestMsg(&nats.Msg{Subject: "mesh.v1.entity.Counter.Increment", Data: []byte(`{"amount":1}`),
				Header: nats.Header{protocol.HeaderID: {id}, protocol.HeaderCodec: {protocol.CodecJSON}}}, 10*time.Second)
			if err != nil || string(reply.Data) != "1" {
				t.Fatalf("routed call for %s = %v, %v", id, reply, err)
			}
		}
		// r1 crashes: its connection goes, its durable consumer stays with
		// its shards' filters until r2 takes them.
		c.rconns["r1"].clean(t)
		c.rconns["r1"].Close()
		delete(c.runners, "r1")
		c.served("r2 serving every shard after r1 crashed")
		for i := range 8 {
			id := fmt.Sprintf("after-crash-%d", i)
			if v, err := mesh.Call(ctx, alice, post, id, i); err != nil || v != i {
				t.Fatalf("persisted call to %s after the crash = %d, %v", id, v, err)
			}
		}
	})

	if standby.IsLeader() {
		t.Error("the standby shard manager leads too")
	}
	aliceConn.clean(t)
	for _, mc := range c.managers {
		mc.clean(t)
	}
	for id, rc := range c.rconns {
		if id != "r1" {
			rc.clean(t)
		}
	}
}

// What docs/security.md says a client cannot do, it cannot: each attempt is
// refused by the server and changes nothing.
func TestClientLimits(t *testing.T) {
	c := newCluster(t)
	c.runner("r1")
	c.served("runner r1 serving every shard")
	ctx := context.Background()
	bob, _ := c.client("bob")
	mallory := connect(t, c.srv, "alice") // alice's permissions, probing
	admin := connect(t, c.srv, "meshctl")
	holder := func() string {
		st, err := mesh.Inspect(ctx, admin.Conn, c.cfg)
		if err != nil {
			t.Fatalf("Inspect: %v", err)
		}
		return st.Shards[0].Holder
	}

	t.Run("subscribe to shard, route or ping subjects", func(t *testing.T) {
		var subs []*nats.Subscription
		for _, subj := range []string{"mesh.v1.call.>", "mesh.v1.call.default.0.>", "mesh.v1.entity.*.*", "mesh.v1.runner.*.ping", ">"} {
			sub, err := mallory.SubscribeSync(subj)
			if err != nil {
				t.Fatal(err)
			}
			subs = append(subs, sub)
			mallory.refused(t, subj)
		}
		for i := range 8 {
			if _, err := mesh.Call(ctx, bob, counter.Increment, fmt.Sprint("b-", i), counter.Amount{Amount: 1}); err != nil {
				t.Fatalf("bob's call while mallory listens: %v", err)
			}
		}
		for _, sub := range subs {
			if n, _, _ := sub.Pending(); n != 0 {
				t.Fatalf("%s received %d of bob's calls", sub.Subject, n)
			}
		}
	})

	t.Run("read other users' replies", func(t *testing.T) {
		var subs []*nats.Subscription
		for _, subj := range []string{"_INBOX.>", "_INBOX.bob.>", "_INBOX.mesh-runner.>", "_INBOX.*.*"} {
			sub, err := mallory.SubscribeSync(subj)
			if err != nil {
				t.Fatal(err)
			}
			subs = append(subs, sub)
			mallory.refused(t, subj)
		}
		if _, err := mesh.Call(ctx, bob, counter.Increment, "b-1", counter.Amount{Amount: 1}); err != nil {
			t.Fatal(err)
		}
		if _, err := mesh.Call(ctx, bob, post, "b-1", 1); err != nil {
			t.Fatal(err)
		}
		for v, err := range mesh.Stream(ctx, bob, counter.Countdown, "b-1", 3) {
			if err != nil {
				t.Fatalf("bob's stream: %v (%d)", err, v)
			}
		}
		for _, sub := range subs {
			if n, _, _ := sub.Pending(); n != 0 {
				t.Fatalf("%s received %d of bob's replies", sub.Subject, n)
			}
		}
	})

	t.Run("write or read coordination state", func(t *testing.T) {
		before := holder()
		for _, subj := range []string{
			"$KV.mesh_leases.shard.default.0", "$KV.mesh_leases.manager", "$KV.mesh_runners.r1", "$KV.mesh_assignments.default",
			"$JS.API.DIRECT.GET.KV_mesh_leases.$KV.mesh_leases.shard.default.0", "$JS.API.STREAM.MSG.GET.KV_mesh_leases",
			"$JS.API.CONSUMER.CREATE.KV_mesh_assignments.spy",
			// the runners' inbox, where their JetStream API replies arrive
			"_INBOX.mesh-runner.forged",
		} {
			if err := mallory.Publish(subj, []byte("mallory")); err != nil {
				t.Fatal(err)
			}
			mallory.refused(t, subj)
		}
		if got := holder(); got != before || got != "r1" {
			t.Fatalf("shard 0's lease holder = %q, was %q", got, before)
		}
	})

	t.Run("touch the persisted stream, replies or dead letters", func(t *testing.T) {
		for _, subj := range []string{
			"$JS.API.STREAM.DELETE.mesh_persist", "$JS.API.STREAM.PURGE.mesh_persist", "$JS.API.STREAM.UPDATE.mesh_persist",
			"$JS.API.CONSUMER.CREATE.mesh_persist.spy", "$JS.API.CONSUMER.DURABLE.CREATE.mesh_persist.spy",
			"$JS.API.CONSUMER.MSG.NEXT.mesh_persist.runner-r1", "$JS.API.STREAM.DELETE.KV_mesh_replies",
			"$KV.mesh_replies.k.forged", "mesh.v1.dead.default.0", "$JS.API.STREAM.MSG.DELETE.mesh_deadletters",
		} {
			if err := mallory.Publish(subj, []byte("{}")); err != nil {
				t.Fatal(err)
			}
			mallory.refused(t, subj)
		}
		// The runner still consumes: the stream and its consumer are intact.
		if v, err := mesh.Call(ctx, bob, post, "b-2", 4); err != nil || v != 4 {
			t.Fatalf("persisted call after the attempts = %d, %v", v, err)
		}
	})
}

// A caller cannot make a runner publish its reply onto the mesh's own
// state: a call whose reply subject (or persisted Mesh-Reply-To) is a lease
// key must leave the lease alone, and the shard served.
func TestReplySubjectConfinedToInboxes(t *testing.T) {
	c := newCluster(t)
	c.runner("r1")
	c.served("runner r1 serving every shard")
	ctx := context.Background()
	alice, aliceConn := c.client("alice")
	admin := connect(t, c.srv, "meshctl")
	id := "victim"
	shard := protocol.ShardOf(id, c.cfg.ShardsPerGroup)
	lease := fmt.Sprintf("$KV.mesh_leases.shard.default.%d", shard)
	for _, tt := range []struct {
		name string
		msg  *nats.Msg
	}{
		{"reply subject", &nats.Msg{
			Subject: fmt.Sprintf("mesh.v1.call.default.%d.Counter.GetValue", shard), Reply: lease,
			Header: nats.Header{protocol.HeaderID: {id}, protocol.HeaderCodec: {protocol.CodecJSON}},
		}},
		{"Mesh-Reply-To", &nats.Msg{
			Subject: fmt.Sprintf("mesh.v1.persist.default.%d.Ledger.Post", shard), Data: []byte("1"),
			Header: nats.Header{protocol.HeaderID: {id}, protocol.HeaderCodec: {protocol.CodecJSON}, protocol.HeaderMsgID: {"deputy"}, protocol.HeaderReplyTo: {lease}},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.msg.Reply != "" {
				if err := aliceConn.PublishMsg(tt.msg); err != nil {
					t.Fatal(err)
				}
			} else if _, err := aliceConn.RequestMsg(tt.msg, 10*time.Second); err != nil {
				t.Fatalf("store the persisted message: %v", err)
			}
			// The runner has handled it once a later call of the same
			// entity is answered (one mailbox, in order) and, for the
			// persisted one, once its reply is stored.
			if _, err := mesh.Call(ctx, alice, counter.GetValue, id, actor.Empty{}); err != nil {
				t.Fatal(err)
			}
			if tt.msg.Reply == "" {
				if _, err := mesh.Reply(ctx, alice, post, "deputy"); err != nil {
					t.Fatal(err)
				}
			}
			st, err := mesh.Inspect(ctx, admin.Conn, c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if h := st.Shards[shard].Holder; h != "r1" {
				t.Fatalf("after a call replying to %s, shard %d's lease names %q, not r1", lease, shard, h)
			}
			if _, err := mesh.Call(ctx, alice, counter.Increment, id, counter.Amount{Amount: 1}); err != nil {
				t.Fatalf("shard %d after the call: %v", shard, err)
			}
		})
	}
}
