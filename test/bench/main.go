// Command bench measures the mesh's call path against raw NATS request/reply
// on the same embedded server in the same run, and prints each figure with
// its ratio to raw NATS. `make bench` runs it. Figures, not assertions:
// docs/benchmarks.md records them with the date and machine.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
	"github.com/natsmesh/natsmesh/workflow"
)

type Amount struct {
	Amount int `json:"amount"`
}

// Doc is the 1 KiB payload of the codec comparison.
type Doc struct {
	ID    string   `json:"id"`
	Tags  []string `json:"tags"`
	Score float64  `json:"score"`
	Body  string   `json:"body"`
}

var (
	Counter   = actor.NewEntity("Counter")
	Increment = actor.NewRPC[Amount, int](Counter, "Increment")
	EchoDoc   = actor.NewRPC[Doc, Doc](Counter, "EchoDoc")
	// Deposit is Increment, persisted.
	Deposit = actor.NewRPC[Amount, int](Counter, "Deposit", actor.Persisted())
)

var deposits atomic.Int64

var behavior = actor.Implement(Counter, func(*actor.Instance) ([]actor.Handler, error) {
	n := 0
	return []actor.Handler{
		actor.Handle(Increment, func(_ context.Context, a Amount) (int, error) { n += a.Amount; return n, nil }),
		actor.Handle(EchoDoc, func(_ context.Context, d Doc) (Doc, error) { return d, nil }),
		actor.Handle(Deposit, func(_ context.Context, a Amount) (int, error) { deposits.Add(1); n += a.Amount; return n, nil }),
	}, nil
})

var (
	seqCalls = flag.Int("seq", 20000, "sequential calls per latency measurement")
	duration = flag.Duration("duration", 3*time.Second, "duration of each throughput measurement")
	cpuProf  = flag.String("cpuprofile", "", "write a CPU profile of the mesh throughput run")
	only     = flag.String("only", "", "run one part: persist, workflow")
	runners  = flag.Int("runners", 1, "runners sharing the shards (more than 1: a cluster with a shard manager, in this process)")
)

func main() {
	flag.Parse()
	dir, err := os.MkdirTemp("", "natsmesh-bench")
	check(err)
	defer os.RemoveAll(dir)
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true, JetStream: true, StoreDir: dir})
	check(err)
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		log.Fatal("server not ready")
	}
	defer s.Shutdown()
	url := s.ClientURL()
	connect := func() *nats.Conn { nc, err := nats.Connect(url); check(err); return nc }

	fmt.Printf("natsmesh bench: %s, GOMAXPROCS=%d, %s, nats-server on TCP loopback\n\n",
		runtime.Version(), runtime.GOMAXPROCS(0), time.Now().UTC().Format("2006-01-02"))

	// Raw NATS: a responder replying with a fixed payload.
	rawResp, rawReq := connect(), connect()
	reply := []byte("1")
	_, err = rawResp.Subscribe("raw.echo", func(m *nats.Msg) { _ = m.Respond(reply) })
	check(err)
	check(rawResp.Flush())
	payload := []byte(`{"amount":1}`)
	rawCall := func() error { _, err := rawReq.Request("raw.echo", payload, 5*time.Second); return err }

	// The mesh: runners and a client on their own connections.
	clientNC := connect()
	cfg := mesh.DefaultConfig()
	cfg.Standalone = *runners <= 1
	var rs []*mesh.Runner
	if !cfg.Standalone {
		m, err := mesh.NewShardManager(connect(), cfg)
		check(err)
		mctx, stopManager := context.WithCancel(context.Background())
		defer stopManager()
		go func() { check(m.Run(mctx)) }()
	}
	for i := range max(*runners, 1) {
		rcfg := cfg
		rcfg.RunnerID = fmt.Sprintf("bench-%d", i+1)
		r, err := mesh.NewRunner(connect(), rcfg)
		check(err)
		check(r.Register(behavior))
		eng, err := workflow.New(context.Background(), r.Client(), workflowConfig())
		check(err)
		defineWorkflows(eng, r.Client())
		check(eng.Install(r))
		check(r.Start(context.Background()))
		rs = append(rs, r)
	}
	for deadline := time.Now().Add(time.Minute); ; {
		served, ready := 0, true
		for _, r := range rs {
			served += len(r.Shards())
			ready = ready && r.Ready()
		}
		if served == cfg.ShardsPerGroup && ready {
			break
		}
		if time.Now().After(deadline) {
			log.Fatalf("runners serve %d of %d shards after a minute", served, cfg.ShardsPerGroup)
		}
		time.Sleep(50 * time.Millisecond) // poll interval while the runners take their shards
	}
	fmt.Printf("%d runner(s), %d shards\n\n", len(rs), cfg.ShardsPerGroup)
	client, err := mesh.NewClient(clientNC, cfg.ClientConfig)
	check(err)
	jcfg := cfg
	jcfg.Codec = protocol.CodecJSON
	jclient, err := mesh.NewClient(clientNC, jcfg.ClientConfig)
	check(err)
	ctx := context.Background()
	meshCall := func(id string) func() error {
		return func() error { _, err := mesh.Call(ctx, client, Increment, id, Amount{1}); return err }
	}

	// 1. Sequential latency, one client, one entity.
	raw := latency(rawCall)
	m := latency(meshCall("bench-1"))
	fmt.Println("Sequential calls, one client, one entity (p50 / p99, calls/s)")
	row("raw NATS request/reply", raw, raw)
	row("mesh.Call (msgpack)", m, raw)
	fmt.Printf("  ratio p50 mesh/raw: %.2fx (target <= 1.25x)\n\n", m.p50.Seconds()/raw.p50.Seconds())

	// 2. Throughput, 256 in flight.
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = "entity-" + strconv.Itoa(i)
	}
	rawT := throughput(256, func(int) error { return rawCall() })
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		check(err)
		check(pprof.StartCPUProfile(f))
	}
	meshT := throughput(256, func(i int) error {
		_, err := mesh.Call(ctx, client, Increment, ids[i%len(ids)], Amount{1})
		return err
	})
	if *cpuProf != "" {
		pprof.StopCPUProfile()
	}
	fmt.Println("Throughput, 256 calls in flight (mesh: spread over 1,000 entities)")
	fmt.Printf("  %-34s %s\n", "raw NATS request/reply", rawT)
	fmt.Printf("  %-34s %s\n", "mesh.Call (msgpack)", meshT)
	fmt.Printf("  ratio mesh/raw: %.2fx (target >= 0.7x)\n\n", meshT.rate/rawT.rate)

	// 3. Codecs with a 1 KiB payload.
	doc := Doc{ID: "doc-1", Tags: []string{"alpha", "beta", "gamma"}, Score: 0.75}
	for len(fmt.Sprint(doc.Body)) < 900 {
		doc.Body += "lorem ipsum dolor sit amet "
	}
	mp, _ := protocol.Msgpack.Marshal(doc)
	js, _ := protocol.JSON.Marshal(doc)
	fmt.Printf("Codecs, 1 KiB payload (msgpack %d bytes, JSON %d bytes)\n", len(mp), len(js))
	for _, c := range []struct {
		name   string
		codec  actor.Codec
		client *mesh.Client
	}{{"msgpack", protocol.Msgpack, client}, {"json", protocol.JSON, jclient}} {
		enc := perOp(func() { _, _ = c.codec.Marshal(doc) })
		b, _ := c.codec.Marshal(doc)
		dec := perOp(func() { var d Doc; _ = c.codec.Unmarshal(b, &d) })
		l := latency(func() error { _, err := mesh.Call(ctx, c.client, EchoDoc, "doc", doc); return err })
		fmt.Printf("  %-8s encode %6.0f ns  decode %6.0f ns  call p50 %6.1f µs  p99 %6.1f µs\n",
			c.name, enc, dec, us(l.p50), us(l.p99))
	}
	var sendRate float64
	if *only == "" || *only == "persist" || *only == "workflow" {
		sendRate = persisted(ctx, connect, client, len(rs), cfg.ShardsPerGroup)
	}
	if *only == "" || *only == "workflow" {
		eng, err := workflow.New(ctx, client, workflowConfig())
		check(err)
		js, err := natsjs.New(clientNC)
		check(err)
		workflows(ctx, client, defineWorkflows(eng, client), js, sendRate)
	}
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for _, r := range rs {
		check(r.Shutdown(sctx))
	}
}

// persisted compares persisted calls with raw JetStream in the same run.
func persisted(ctx context.Context, connect func() *nats.Conn, client *mesh.Client, runners, shards int) (sendRate float64) {
	nc := connect()
	js, err := natsjs.New(nc)
	check(err)
	st, err := js.CreateStream(ctx, natsjs.StreamConfig{Name: "RAW", Subjects: []string{"raw.>"}, Retention: natsjs.WorkQueuePolicy, Storage: natsjs.FileStorage})
	check(err)
	cons, err := st.CreateConsumer(ctx, natsjs.ConsumerConfig{Durable: "raw", AckPolicy: natsjs.AckExplicitPolicy})
	check(err)
	payload, _ := protocol.Msgpack.Marshal(Amount{1})

	// Sequential: store, consume, ack; one at a time.
	raw := latency(func() error {
		if _, err := js.Publish(ctx, "raw.seq", payload, natsjs.WithMsgID(nuid.Next())); err != nil {
			return err
		}
		b, err := cons.Fetch(1, natsjs.FetchMaxWait(5*time.Second))
		if err != nil {
			return err
		}
		for m := range b.Messages() {
			if err := m.DoubleAck(ctx); err != nil {
				return err
			}
		}
		return b.Error()
	})
	m := latency(func() error { _, err := mesh.Call(ctx, client, Deposit, "acct-1", Amount{1}); return err })
	fmt.Println("\nPersisted calls, sequential (store, consume, handle, store reply, ack, answer)")
	row("raw JetStream publish+fetch+ack", raw, raw)
	row("mesh.Call (persisted)", m, raw)
	fmt.Printf("  ratio calls/s mesh/raw: %.2fx (target >= 0.5x)\n", m.rate/raw.rate)

	// Pipelined: 256 senders; count until every message is handled.
	const n = 50000
	rawRate := rawPipelined(ctx, js, payload, n, 1, 0)
	var shardedRate float64
	if runners > 1 {
		// The runners' consumers each filter on their shards' subjects, and
		// the server checks those filters on every publish and every ack
		// (work-queue retention): the same in raw JetStream, for comparison.
		shardedRate = rawPipelined(ctx, js, payload, n, runners, shards)
	}

	if *cpuProf != "" {
		f, err := os.Create(*cpuProf + ".persist")
		check(err)
		check(pprof.StartCPUProfile(f))
		defer pprof.StopCPUProfile()
	}
	base := deposits.Load()
	start := time.Now()
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 256 {
		wg.Go(func() {
			for i := next.Add(1); i <= n; i = next.Add(1) {
				check(mesh.Send(ctx, client, Deposit, "acct-"+strconv.Itoa(int(i%1000)), Amount{1}))
			}
		})
	}
	wg.Wait()
	for deposits.Load() < base+n {
		time.Sleep(time.Millisecond) // poll interval while the runner catches up
	}
	meshRate := float64(n) / time.Since(start).Seconds()
	fmt.Println("Persisted sends, 256 senders over 1,000 entities, until all handled")
	fmt.Printf("  %-34s %10.0f msgs/s\n", "raw JetStream publish + consume", rawRate)
	if shardedRate > 0 {
		fmt.Printf("  %-34s %10.0f msgs/s\n", fmt.Sprintf("raw, %d consumers x %d filters", runners, shards/runners), shardedRate)
	}
	fmt.Printf("  %-34s %10.0f msgs/s  (%.2fx raw, target >= 0.5x)\n", "mesh.Send (persisted)", meshRate, meshRate/rawRate)
	if shardedRate > 0 {
		fmt.Printf("  ratio mesh/raw with the runners' filters: %.2fx\n", meshRate/shardedRate)
	}
	return meshRate
}

// rawPipelined publishes n messages from 256 goroutines to a work-queue
// stream and returns messages/s until every one is consumed and acked.
// With consumers > 1, messages go to subjects raw.pipe.<k> for k in
// [0, shards) and consumer i filters on the subjects of every shard k with
// k % consumers == i, one filter each, as the runners' consumers do.
func rawPipelined(ctx context.Context, js natsjs.JetStream, payload []byte, n, consumers, shards int) float64 {
	name := fmt.Sprintf("RAWPIPE%d", consumers)
	st, err := js.CreateStream(ctx, natsjs.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Retention: natsjs.WorkQueuePolicy, Storage: natsjs.FileStorage})
	check(err)
	defer func() { check(js.DeleteStream(ctx, name)) }()
	var consumed atomic.Int64
	for i := range consumers {
		cfg := natsjs.ConsumerConfig{Durable: fmt.Sprintf("c%d", i), AckPolicy: natsjs.AckExplicitPolicy}
		for k := i; consumers > 1 && k < shards; k += consumers {
			cfg.FilterSubjects = append(cfg.FilterSubjects, fmt.Sprintf("%s.%d.>", name, k))
		}
		cons, err := st.CreateConsumer(ctx, cfg)
		check(err)
		cc, err := cons.Consume(func(m natsjs.Msg) { _ = m.Ack(); consumed.Add(1) })
		check(err)
		defer cc.Stop()
	}
	subjects := []string{name + ".0.x"}
	if consumers > 1 {
		subjects = make([]string, shards)
		for k := range subjects {
			subjects[k] = fmt.Sprintf("%s.%d.x", name, k)
		}
	}
	start := time.Now()
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 256 {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				if _, err := js.Publish(ctx, subjects[int(i)%len(subjects)], payload, natsjs.WithMsgID(nuid.Next())); err != nil {
					log.Fatal(err)
				}
			}
		})
	}
	wg.Wait()
	for consumed.Load() < int64(n) {
		time.Sleep(time.Millisecond) // poll interval while the consumers catch up
	}
	return float64(n) / time.Since(start).Seconds()
}

type lat struct {
	p50, p99 time.Duration
	rate     float64
}

func latency(call func() error) lat {
	for range 1000 { // warm up
		check(call())
	}
	d := make([]time.Duration, *seqCalls)
	start := time.Now()
	for i := range d {
		t := time.Now()
		check(call())
		d[i] = time.Since(t)
	}
	total := time.Since(start)
	slices.Sort(d)
	return lat{p50: d[len(d)/2], p99: d[len(d)*99/100], rate: float64(len(d)) / total.Seconds()}
}

// tput is a throughput figure with the process's read and write system
// calls per call (server, runner and client all run in this process):
// on loopback, writes cost most of the CPU, so how well each side batches
// its messages into writes decides throughput.
type tput struct {
	rate          float64
	reads, writes float64
}

func (t tput) String() string {
	return fmt.Sprintf("%10.0f calls/s  (%.2f writes, %.2f reads per call)", t.rate, t.writes, t.reads)
}

// syscalls returns the process's read and write system calls so far
// (/proc/self/io; zeros where it is missing).
func syscalls() (r, w float64) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ": ")
		n, _ := strconv.ParseFloat(v, 64)
		switch k {
		case "syscr":
			r = n
		case "syscw":
			w = n
		}
	}
	return r, w
}

func throughput(inFlight int, call func(i int) error) tput {
	var n atomic.Int64
	var wg sync.WaitGroup
	r0, w0 := syscalls()
	stop := time.Now().Add(*duration)
	start := time.Now()
	for w := range inFlight {
		wg.Go(func() {
			for i := w; time.Now().Before(stop); i += inFlight {
				check(call(i))
				n.Add(1)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	r1, w1 := syscalls()
	calls := float64(n.Load())
	return tput{rate: calls / el.Seconds(), reads: (r1 - r0) / calls, writes: (w1 - w0) / calls}
}

func perOp(f func()) float64 {
	const n = 20000
	start := time.Now()
	for range n {
		f()
	}
	return float64(time.Since(start).Nanoseconds()) / n
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

func row(name string, l, raw lat) {
	fmt.Printf("  %-34s p50 %6.1f µs (%.2fx)  p99 %6.1f µs (%.2fx)  %8.0f calls/s\n",
		name, us(l.p50), l.p50.Seconds()/raw.p50.Seconds(), us(l.p99), l.p99.Seconds()/raw.p99.Seconds(), l.rate)
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
