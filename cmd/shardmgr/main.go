// Command shardmgr runs a natsmesh shard manager: it watches the runners'
// registrations and keeps the shard assignment balanced by weight, moving as
// few shards as possible. Run several for availability: one leads (a KV
// lease), the others take over within the lease expiry if it dies. Runners
// keep serving the shards they hold while no shard manager runs.
//
// It is app.ShardManager; docs/configuration.md lists its settings.
package main

import "github.com/natsmesh/natsmesh/app"

var manager = app.ShardManager{Name: "shardmgr"}

func main() { manager.Main() }
