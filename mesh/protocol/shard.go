package protocol

import (
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// ShardOf returns the shard of an entity id within a group of n shards:
// xxhash64 (XXH64, seed 0) of the id's UTF-8 bytes, modulo n. The entity type
// takes no part, as in @effect/cluster: all entities with one id in one group
// share a shard. docs/protocol.md gives test vectors.
func ShardOf(id string, n int) int {
	return int(xxhash.Sum64String(id) % uint64(n))
}

// ShardID names one shard: a group and a number in [0, shardsPerGroup).
type ShardID struct {
	Group string
	N     int
}

func (s ShardID) String() string { return s.Group + "/" + strconv.Itoa(s.N) }
