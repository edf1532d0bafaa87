// Command gateway serves natsmesh entities over HTTP (package gateway):
//
//	POST /v1/{type}/{id}/{rpc}   call an entity with a JSON body, get its JSON reply (-listen)
//	GET  /openapi.json           the OpenAPI 3.1 document of the entity types the runners host
//	GET  /healthz, /readyz       liveness, and readiness (connected to NATS, not shutting down) (-http)
//	GET  /metrics                Prometheus metrics, docs/operations.md (-http)
//
//	curl localhost:8080/v1/Counter/user-123/Increment -H 'Content-Type: application/json' -d '{"amount":5}'
//
// It hosts no entity. On SIGTERM it stops being ready, finishes the requests
// in flight (up to -drain), then drains its NATS connection.
//
// It is app.Gateway; docs/configuration.md lists its settings.
package main

import "github.com/natsmesh/natsmesh/app"

var gw = app.Gateway{Name: "gateway"}

func main() { gw.Main() }
