// Command node is the chaos suite's process (test/chaos): one binary that
// runs as a NATS server or as a runner, so that the suite can kill, pause
// and restart each as an OS process (the shard managers are cmd/shardmgr).
//
//	node nats   -name s1 -port P -cluster-port C -http-port H -routes R -store DIR
//	node runner -id r1-1 -records FILE -nats URLS [the settings of cmd/runner]
//
// The runner hosts the Account entity (model.Account), whose state lives in
// the KV bucket model.StateBucket and is written with compare-and-set on
// its revision, and the singletons model.Singletons; it records every
// activation, handler run and singleton run in its record file
// (model.Writer) for the checker.
//
// Every role exits 0 on SIGTERM after a graceful stop, and non-zero on any
// error, including a record it could not write.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: node nats|runner [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch role, args := os.Args[1], os.Args[2:]; role {
	case "nats":
		err = runNATS(ctx, args, os.Stderr)
	case "runner":
		err = runRunner(ctx, args, os.Stderr)
	default:
		err = fmt.Errorf("unknown role %q: want nats or runner", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		os.Exit(1)
	}
}

// runNATS runs one server of a JetStream cluster until ctx ends, then shuts
// it down gracefully (its Raft leaderships are handed over first).
func runNATS(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("nats", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		name        = fs.String("name", "", "server name, unique in the cluster")
		port        = fs.Int("port", 0, "client port")
		clusterPort = fs.Int("cluster-port", 0, "route port")
		httpPort    = fs.Int("http-port", 0, "monitoring port (/healthz)")
		routes      = fs.String("routes", "", "routes to every server, comma-separated nats-route:// URLs")
		store       = fs.String("store", "", "JetStream folder")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" || *port == 0 || *clusterPort == 0 || *store == "" || *routes == "" {
		return errors.New("nats: -name, -port, -cluster-port, -routes and -store are required")
	}
	opts := &server.Options{
		ServerName: *name,
		Host:       "127.0.0.1",
		Port:       *port,
		HTTPHost:   "127.0.0.1",
		HTTPPort:   *httpPort,
		JetStream:  true,
		StoreDir:   *store,
		// The suite puts fault-injecting proxies between runners and
		// servers: clients must not learn the servers' real addresses.
		Cluster:            server.ClusterOpts{Name: "chaos", Host: "127.0.0.1", Port: *clusterPort, NoAdvertise: true},
		Routes:             server.RoutesFromStr(*routes),
		NoSigs:             true,
		Logtime:            true,
		JetStreamMaxMemory: 1 << 30,
		JetStreamMaxStore:  8 << 30,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return err
	}
	s.ConfigureLogger()
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return fmt.Errorf("nats %s: not ready", *name)
	}
	<-ctx.Done()
	s.Shutdown()
	s.WaitForShutdown()
	return nil
}
