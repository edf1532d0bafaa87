package mesh

import "github.com/natsmesh/natsmesh/mesh/protocol"

// ShardID names one shard: a group and a number in [0, ShardsPerGroup).
// An entity's shard is protocol.ShardOf(id, ShardsPerGroup) in its type's
// group (Client.Shard computes it).
type ShardID = protocol.ShardID
