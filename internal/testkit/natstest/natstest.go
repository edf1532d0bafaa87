package natstest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// pollInterval is how often WaitFor re-evaluates its condition.
const pollInterval = 10 * time.Millisecond

// Option changes the options of a server started by StartServer before it
// starts.
type Option func(*server.Options)

// StartServer starts an embedded JetStream server on 127.0.0.1 with a random
// port and its store in t.TempDir, and waits until it accepts connections.
func StartServer(t testing.TB, opts ...Option) *server.Server {
	t.Helper()
	o := baseOptions(t, "natstest")
	for _, opt := range opts {
		opt(o)
	}
	return start(t, o)
}

// baseOptions are a test server's: loopback, a random port, JetStream in
// t.TempDir, no logs, no signal handlers.
func baseOptions(t testing.TB, name string) *server.Options {
	return &server.Options{
		ServerName: name,
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   t.TempDir(),
		NoLog:      true,
		NoSigs:     true,
	}
}

func start(t testing.TB, o *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatalf("natstest: new server: %v", err)
	}
	go s.Start()
	t.Cleanup(s.Shutdown)
	// Generous: a server of a cluster waits for its routes, and the machine
	// may be loaded.
	if !s.ReadyForConnections(30 * time.Second) {
		t.Fatalf("natstest: server %s not ready", o.ServerName)
	}
	return s
}

// StartCluster starts an n-server JetStream cluster in process on loopback
// and waits until it has a meta leader that sees all n peers and every
// server's meta state is current.
//
// JetStream clustering refuses to start without configured routes, so the
// route ports are reserved up front and every server gets all routes (a
// route to itself is ignored).
func StartCluster(t testing.TB, n int) []*server.Server {
	t.Helper()
	if n < 1 {
		t.Fatalf("natstest: StartCluster(%d): need at least one server", n)
	}
	routes := make([]string, n)
	ports := make([]int, n)
	for i := range ports {
		ports[i] = freePort(t)
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", ports[i])
	}
	servers := make([]*server.Server, n)
	for i := range servers {
		o := baseOptions(t, fmt.Sprintf("s%d", i+1))
		o.Cluster = server.ClusterOpts{Name: "natstest", Host: "127.0.0.1", Port: ports[i]}
		o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		servers[i] = start(t, o)
	}
	WaitFor(t, 30*time.Second, func() bool {
		leader := false
		for _, s := range servers {
			// Peers are reported by the meta leader only (nil elsewhere).
			if s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) == n {
				leader = true
			}
		}
		if !leader {
			return false
		}
		for _, s := range servers {
			if !s.JetStreamIsCurrent() {
				return false
			}
		}
		return true
	}, "JetStream cluster has a meta leader with all peers")
	return servers
}

// freePort reserves a loopback TCP port by listening on port 0 and closing
// the listener. Another process could take it before the server binds it;
// on loopback in tests that race is rare and shows up as a start failure.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("natstest: reserve port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ClientURLs returns the client URLs of servers joined by commas, the form
// nats.Connect accepts for a server pool.
func ClientURLs(servers []*server.Server) string {
	urls := make([]string, len(servers))
	for i, s := range servers {
		urls[i] = s.ClientURL()
	}
	return strings.Join(urls, ",")
}

// Connect connects to servers (all their client URLs, so the client fails
// over between them) and closes the connection on cleanup.
func Connect(t testing.TB, servers ...*server.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(ClientURLs(servers), nats.Name(t.Name()))
	if err != nil {
		t.Fatalf("natstest: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// WaitFor polls cond until it returns true and fails the test with msg if it
// does not within timeout.
func WaitFor(t testing.TB, timeout time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("natstest: timed out after %v waiting for: %s", timeout, msg)
		}
		time.Sleep(pollInterval) // poll interval of a wait with a deadline
	}
}

// StreamLeader waits until stream has a leader and returns its server among
// servers.
func StreamLeader(t testing.TB, servers []*server.Server, nc *nats.Conn, stream string) *server.Server {
	t.Helper()
	var leader *server.Server
	WaitFor(t, 10*time.Second, func() bool {
		name := streamLeaderName(nc, stream)
		for _, s := range servers {
			if name != "" && s.Name() == name {
				leader = s
				return true
			}
		}
		return false
	}, "stream "+stream+" has a leader")
	return leader
}

// streamLeaderName returns the name of the stream's leader, or "" if it has
// none or the request fails (during an election both happen).
func streamLeaderName(nc *nats.Conn, stream string) string {
	js, err := natsjs.New(nc)
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return ""
	}
	info := s.CachedInfo()
	if info == nil || info.Cluster == nil {
		return ""
	}
	return info.Cluster.Leader
}

// StepDownStream asks the leader of stream to step down and waits until
// another server leads it.
func StepDownStream(t testing.TB, nc *nats.Conn, stream string) {
	t.Helper()
	var old string
	WaitFor(t, 10*time.Second, func() bool {
		old = streamLeaderName(nc, stream)
		return old != ""
	}, "stream "+stream+" has a leader")
	resp, err := nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, nil, 5*time.Second)
	if err != nil {
		t.Fatalf("natstest: step down %s: %v", stream, err)
	}
	var r struct {
		Success bool `json:"success"`
		Error   *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		t.Fatalf("natstest: step down %s: decode %q: %v", stream, resp.Data, err)
	}
	if !r.Success {
		desc := ""
		if r.Error != nil {
			desc = r.Error.Description
		}
		t.Fatalf("natstest: step down %s refused: %s", stream, desc)
	}
	WaitFor(t, 10*time.Second, func() bool {
		name := streamLeaderName(nc, stream)
		return name != "" && name != old
	}, "stream "+stream+" has a new leader")
}

// Buffer is a bytes.Buffer safe for concurrent writers (a logger, a
// process's output) and the test reading it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// FreeAddr returns a loopback address with a port free a moment ago, for a
// process the test starts to listen on.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
