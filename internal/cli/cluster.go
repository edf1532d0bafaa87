package cli

import (
	"flag"
	"log/slog"

	"github.com/natsmesh/natsmesh/mesh"
)

// Cluster holds the flags every process of one cluster must agree on, and
// the logging level.
type Cluster struct {
	Prefix   string
	Shards   int
	Replicas int
	Fast     bool
	LogLevel string
}

// Register adds the cluster flags to fs.
func (c *Cluster) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.Prefix, "prefix", "mesh", "subject prefix of the cluster")
	fs.IntVar(&c.Shards, "shards", 300, "shards per group")
	fs.IntVar(&c.Replicas, "replicas", 1, "replicas of the KV buckets and streams: 1, or 3 on a NATS cluster")
	fs.BoolVar(&c.Fast, "fast-failover", false, "2 s leases renewed every 500 ms (see docs/operations.md)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
}

// Config returns the mesh configuration and logger for these flags; edit
// the configuration further, then Validate it.
func (c *Cluster) Config() (mesh.Config, *slog.Logger, error) {
	log, err := Logger(c.LogLevel)
	if err != nil {
		return mesh.Config{}, nil, err
	}
	cfg := mesh.DefaultConfig()
	if c.Fast {
		cfg = cfg.FastFailover()
	}
	cfg.Prefix, cfg.ShardsPerGroup, cfg.StorageReplicas, cfg.Logger = c.Prefix, c.Shards, c.Replicas, log
	return cfg, log, nil
}
