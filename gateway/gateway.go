package gateway

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// ErrInvalidOption wraps every rejected Config field (a *mesh.FieldError)
// or option; it is mesh.ErrInvalidOption.
var ErrInvalidOption = mesh.ErrInvalidOption

// Headers the gateway reads or writes, besides the standard ones.
const (
	// HeaderTimeout is the caller's time budget in milliseconds, as on the
	// wire (docs/protocol.md): a positive decimal integer, capped by
	// Config.MaxTimeout.
	HeaderTimeout = "Mesh-Timeout"
	// HeaderIdempotencyKey names a persisted call's message id.
	HeaderIdempotencyKey = "Idempotency-Key"
	// HeaderMsgID is set on the response of every persisted call: the
	// message id it was stored under (the Idempotency-Key, or a generated
	// one), to send again as Idempotency-Key to re-attach to it.
	HeaderMsgID = "Mesh-Msg-Id"
)

// Codes of errors the gateway answers itself, besides the wire codes of
// package mesh (docs/protocol.md).
const (
	CodeNotFound             = "NotFound"             // no such route (404)
	CodeMethodNotAllowed     = "MethodNotAllowed"     // not POST (405)
	CodeUnsupportedMediaType = "UnsupportedMediaType" // a Content-Type other than JSON (415)
	CodeShardUnavailable     = "ShardUnavailable"     // no runner answered for the shard before the deadline (503)
	CodeUnavailable          = "Unavailable"          // the gateway cannot reach NATS (503)
	CodeInternal             = "Internal"             // anything else (500)
)

// MaxIdempotencyKey is the longest Idempotency-Key accepted, in bytes.
const MaxIdempotencyKey = 256

// Caller is what the gateway needs of a mesh client: *mesh.Client.
type Caller interface {
	CallRaw(ctx context.Context, call mesh.RawCall) ([]byte, error)
	StreamRaw(ctx context.Context, call mesh.RawCall) iter.Seq2[[]byte, error]
}

// Config configures a Gateway. Start from DefaultConfig.
type Config struct {
	// Persisted lists RPCs declared persisted, as "Type.Rpc" (see
	// PersistedRPCs), besides those the runners' type descriptions declare
	// (WithTypes): a call to a persisted RPC goes through the
	// persisted-message stream, a call to any other RPC by request/reply.
	// Without WithTypes, only those listed here are persisted.
	Persisted []string
	// MaxBodyBytes bounds a request body; larger bodies get 413. The NATS
	// server's max_payload bounds it too.
	MaxBodyBytes int64
	// DefaultTimeout applies to requests without a Mesh-Timeout header.
	DefaultTimeout time.Duration
	// MaxTimeout caps Mesh-Timeout.
	MaxTimeout time.Duration
}

// DefaultConfig returns a 1 MiB body limit, a 10 s default timeout and a
// 60 s maximum.
func DefaultConfig() Config {
	return Config{
		MaxBodyBytes:   1 << 20,
		DefaultTimeout: 10 * time.Second,
		MaxTimeout:     time.Minute,
	}
}

// Validate reports the first bad field as a *mesh.FieldError.
func (c *Config) Validate() error {
	switch {
	case c.MaxBodyBytes <= 0:
		return &mesh.FieldError{Field: "MaxBodyBytes", Value: c.MaxBodyBytes, Reason: "want > 0"}
	case c.DefaultTimeout <= 0:
		return &mesh.FieldError{Field: "DefaultTimeout", Value: c.DefaultTimeout, Reason: "want > 0"}
	case c.MaxTimeout < c.DefaultTimeout:
		return &mesh.FieldError{Field: "MaxTimeout", Value: c.MaxTimeout, Reason: fmt.Sprintf("want >= DefaultTimeout %v", c.DefaultTimeout)}
	}
	for _, p := range c.Persisted {
		typ, rpc, ok := strings.Cut(p, ".")
		if !ok || typ == "" || rpc == "" || strings.Contains(rpc, ".") {
			return &mesh.FieldError{Field: "Persisted", Value: fmt.Sprintf("%q", p), Reason: "want Type.Rpc"}
		}
	}
	return nil
}

// Option configures a Gateway beyond its Config.
type Option func(*Gateway) error

// WithLogger sends one line per failed request to l (server errors at warn,
// client errors at debug); without it they are discarded.
func WithLogger(l *slog.Logger) Option {
	return func(g *Gateway) error {
		if l == nil {
			return fmt.Errorf("%w: WithLogger(nil)", ErrInvalidOption)
		}
		g.log = l
		return nil
	}
}

// PersistedRPCs returns the persisted RPCs of the given entity types in the
// form Config.Persisted wants.
func PersistedRPCs(entities ...*actor.Entity) []string {
	var out []string
	for _, e := range entities {
		for _, rpc := range e.RPCs() {
			if rpc.Persisted() {
				out = append(out, e.Name()+"."+rpc.Name())
			}
		}
	}
	return out
}

// Gateway is an http.Handler that calls entities: POST /v1/{type}/{id}/{rpc}.
type Gateway struct {
	client    Caller
	cfg       Config
	persisted map[string]bool
	types     *typeCache // nil without WithTypes
	log       *slog.Logger
}

// New returns a gateway calling entities through client (a *mesh.Client).
// It returns an error wrapping ErrInvalidOption for a bad configuration or
// option.
func New(client Caller, cfg Config, opts ...Option) (*Gateway, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: nil client", ErrInvalidOption)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	g := &Gateway{client: client, cfg: cfg, persisted: map[string]bool{}, log: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		if err := opt(g); err != nil {
			return nil, err
		}
	}
	for _, p := range cfg.Persisted {
		g.persisted[p] = true
	}
	return g, nil
}

// Path returns the request path that calls rpc on the entity (entityType,
// id): each part is escaped as one path segment, so ids may hold '/', '%',
// '?', spaces or anything else. An id "." or ".." is escaped as %2E and
// %2E%2E, which curl and Go's client send as is (unlike a literal dot
// segment, which they resolve away).
func Path(entityType, id, rpc string) string {
	seg := func(s string) string {
		if s == "." || s == ".." {
			return strings.ReplaceAll(s, ".", "%2E")
		}
		return url.PathEscape(s)
	}
	return "/v1/" + seg(entityType) + "/" + seg(id) + "/" + seg(rpc)
}

// errorBody is the JSON body of every error response.
type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Failure and Detail describe a declared failure (code Failure).
	Failure string          `json:"failure,omitempty"`
	Detail  json.RawMessage `json:"detail,omitempty"`
}

// ServeHTTP serves POST /v1/{type}/{id}/{rpc}, and GET /openapi.json.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == OpenAPIPath {
		g.serveOpenAPI(w, r)
		return
	}
	start := time.Now()
	call, status, body := g.serve(w, r)
	if body == nil {
		return
	}
	if status >= 500 {
		g.log.Warn("gateway call failed", "entity", call.EntityType+"/"+call.ID, "rpc", call.RPC,
			"status", status, "code", body.Code, "error", body.Message, "duration", time.Since(start))
	} else {
		g.log.Debug("gateway call refused", "entity", call.EntityType+"/"+call.ID, "rpc", call.RPC,
			"status", status, "code", body.Code, "error", body.Message)
	}
	writeJSONError(w, status, body)
}

// serve handles one request. It writes a success itself and returns the
// error to write otherwise.
func (g *Gateway) serve(w http.ResponseWriter, r *http.Request) (mesh.RawCall, int, *errorBody) {
	call, status, eb := route(r)
	if eb != nil {
		if status == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", http.MethodPost)
		}
		return call, status, eb
	}
	kind := g.kind(r.Context(), call)
	timeout, status, eb := g.options(w, r, &call, kind)
	if eb != nil {
		return call, status, eb
	}
	if call.Payload, status, eb = g.body(w, r); eb != nil {
		return call, status, eb
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	if format := streamFormat(r, kind); format != "" {
		status, eb := g.stream(ctx, w, call, format)
		return call, status, eb
	}
	reply, err := g.client.CallRaw(ctx, call)
	if err != nil {
		status, body := errorResponse(err)
		if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		return call, status, body
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(reply)
	return call, http.StatusOK, nil
}

// route reads the call's entity type, id and RPC from the request's path
// and checks its method and the id.
func route(r *http.Request) (mesh.RawCall, int, *errorBody) {
	call := mesh.RawCall{Codec: protocol.CodecJSON}
	// The path is split before unescaping, so an escaped '/' stays in its
	// segment. The router of net/http is not used: it cleans paths, which
	// would turn an id of ".." into a redirect.
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), "/v1/")
	parts := strings.Split(rest, "/")
	if !ok || len(parts) != 3 {
		return call, http.StatusNotFound, &errorBody{Code: CodeNotFound, Message: "no such route: want POST /v1/{type}/{id}/{rpc}, each part path-escaped"}
	}
	for i, dst := range []*string{&call.EntityType, &call.ID, &call.RPC} {
		s, err := url.PathUnescape(parts[i])
		if err != nil {
			return call, http.StatusBadRequest, &errorBody{Code: protocol.CodeBadRequest, Message: fmt.Sprintf("path segment %d: %v", i+1, err)}
		}
		*dst = s
	}
	if r.Method != http.MethodPost {
		return call, http.StatusMethodNotAllowed, &errorBody{Code: CodeMethodNotAllowed, Message: r.Method + " not allowed: entities are called with POST"}
	}
	if err := actor.ValidateID(call.ID); err != nil {
		return call, http.StatusBadRequest, &errorBody{Code: protocol.CodeInvalidID, Message: err.Error()}
	}
	return call, 0, nil
}

// options reads the request's headers into call: its content type, time
// budget (returned) and, for a persisted RPC, its idempotency key (the
// message id, generated when there is none, is set on the response).
func (g *Gateway) options(w http.ResponseWriter, r *http.Request, call *mesh.RawCall, kind rpcKind) (time.Duration, int, *errorBody) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return 0, http.StatusUnsupportedMediaType, &errorBody{Code: CodeUnsupportedMediaType, Message: fmt.Sprintf("Content-Type %q: want application/json", ct)}
		}
	}
	timeout := g.cfg.DefaultTimeout
	if v := r.Header.Get(HeaderTimeout); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms <= 0 {
			return 0, http.StatusBadRequest, &errorBody{Code: protocol.CodeBadRequest, Message: fmt.Sprintf("%s %q: want a positive number of milliseconds", HeaderTimeout, v)}
		}
		timeout = g.cfg.MaxTimeout
		if ms < int64(g.cfg.MaxTimeout/time.Millisecond) {
			timeout = time.Duration(ms) * time.Millisecond
		}
	}
	persisted := g.persisted[call.EntityType+"."+call.RPC] || kind.persisted
	if key, ok := r.Header[http.CanonicalHeaderKey(HeaderIdempotencyKey)]; ok {
		if !persisted {
			return 0, http.StatusBadRequest, &errorBody{Code: protocol.CodeBadRequest, Message: fmt.Sprintf(
				"%s given for %s.%s, which is not a persisted RPC: its calls are at most once and cannot be deduplicated", HeaderIdempotencyKey, call.EntityType, call.RPC)}
		}
		if len(key) != 1 || !validIdempotencyKey(key[0]) {
			return 0, http.StatusBadRequest, &errorBody{Code: protocol.CodeBadRequest, Message: fmt.Sprintf(
				"%s: want one value of 1 to %d printable characters", HeaderIdempotencyKey, MaxIdempotencyKey)}
		}
		call.MessageID = messageID(call.EntityType, call.RPC, call.ID, key[0])
	}
	if persisted {
		call.Persisted = true
		if call.MessageID == "" {
			// Generated here rather than by the client so the caller
			// learns it and can re-attach after a timeout.
			call.MessageID = rand.Text()
		}
		w.Header().Set(HeaderMsgID, call.MessageID)
	}
	return timeout, 0, nil
}

// kind returns what the runners' type descriptions say of call's RPC.
func (g *Gateway) kind(ctx context.Context, call mesh.RawCall) rpcKind {
	if g.types == nil {
		return rpcKind{}
	}
	key := call.EntityType + "." + call.RPC
	_, kinds := g.types.get(ctx, key)
	return kinds[key]
}

// body reads the request's body, bounded by Config.MaxBodyBytes.
func (g *Gateway) body(w http.ResponseWriter, r *http.Request) ([]byte, int, *errorBody) {
	payload, err := io.ReadAll(http.MaxBytesReader(w, r.Body, g.cfg.MaxBodyBytes))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, http.StatusRequestEntityTooLarge, &errorBody{Code: protocol.CodePayloadTooLarge, Message: fmt.Sprintf("body over %d bytes", g.cfg.MaxBodyBytes)}
		}
		return nil, http.StatusBadRequest, &errorBody{Code: protocol.CodeBadRequest, Message: "read body: " + err.Error()}
	}
	// Checked here so a body that is not JSON at all gets a clear message;
	// one of the wrong shape is refused by the runner as Malformed too.
	if len(payload) > 0 && !json.Valid(payload) {
		return nil, http.StatusBadRequest, &errorBody{Code: protocol.CodeMalformed, Message: "body is not valid JSON"}
	}
	return payload, 0, nil
}

// statusOf maps the wire error codes to HTTP statuses.
var statusOf = map[string]int{
	protocol.CodeFailure:         http.StatusUnprocessableEntity,
	protocol.CodeError:           http.StatusInternalServerError,
	protocol.CodeDefect:          http.StatusInternalServerError,
	protocol.CodeActivation:      http.StatusInternalServerError,
	protocol.CodeMailboxFull:     http.StatusTooManyRequests,
	protocol.CodeUnknownEntity:   http.StatusNotFound,
	protocol.CodeUnknownRPC:      http.StatusNotFound,
	protocol.CodeNotImplemented:  http.StatusNotImplemented,
	protocol.CodeMalformed:       http.StatusBadRequest,
	protocol.CodeInvalidID:       http.StatusBadRequest,
	protocol.CodeBadRequest:      http.StatusBadRequest,
	protocol.CodePayloadTooLarge: http.StatusRequestEntityTooLarge,
	protocol.CodeTimeout:         http.StatusGatewayTimeout,
	protocol.CodeCanceled:        499, // the client went away (nginx's convention); nobody reads it
	protocol.CodeNotServing:      http.StatusServiceUnavailable,
	protocol.CodeShuttingDown:    http.StatusServiceUnavailable,
	CodeShardUnavailable:         http.StatusServiceUnavailable,
	CodeUnavailable:              http.StatusServiceUnavailable,
}

// errorResponse maps an error of CallRaw to a status and body.
func errorResponse(err error) (int, *errorBody) {
	body := &errorBody{Message: err.Error()}
	var e *mesh.Error
	switch {
	case errors.As(err, &e):
		body.Code, body.Message, body.Failure = e.Code, e.Message, e.Failure
		if len(e.Detail) > 0 && json.Valid(e.Detail) {
			body.Detail = e.Detail
		}
	case errors.Is(err, mesh.ErrBadRequest): // a type or RPC name that is not a subject token
		body.Code = protocol.CodeBadRequest
	case errors.Is(err, mesh.ErrShardUnavailable):
		// Before the deadline check: it wraps the deadline too.
		body.Code = CodeShardUnavailable
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionDraining),
		errors.Is(err, nats.ErrNoServers), errors.Is(err, nats.ErrDisconnected):
		body.Code = CodeUnavailable
	default:
		body.Code = mesh.CodeOf(err)
	}
	if status, ok := statusOf[body.Code]; ok {
		return status, body
	}
	if body.Code != "" {
		// A code from a newer runner: it is the cluster's answer.
		return http.StatusBadGateway, body
	}
	body.Code = CodeInternal
	return http.StatusInternalServerError, body
}

func writeJSONError(w http.ResponseWriter, status int, body *errorBody) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// messageID derives a persisted message's id from its Idempotency-Key and
// its address, so that two callers using one key for different entities or
// RPCs never share a stored reply (the mesh keys replies by message id
// alone). Hashed to keep the id short whatever the id's and key's length.
func messageID(entityType, rpc, id, key string) string {
	h := sha256.New()
	for _, s := range []string{entityType, rpc, id, key} {
		// Length-prefixed: ids may hold any byte, so no separator would do.
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(s))))
		h.Write([]byte(s))
	}
	return "gw-" + hex.EncodeToString(h.Sum(nil)[:16])
}

// validIdempotencyKey reports whether an Idempotency-Key is acceptable: printable
// UTF-8 (it travels in NATS headers, which cannot carry control
// characters), not too long.
func validIdempotencyKey(s string) bool {
	if len(s) == 0 || len(s) > MaxIdempotencyKey || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
