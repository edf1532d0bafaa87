package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"iter"
	"mime"
	"net/http"
	"strings"

	"github.com/natsmesh/natsmesh/mesh"
)

// Streaming RPCs over HTTP (docs/operations.md, "HTTP gateway"). The
// response is one of:
//
//   - Server-Sent Events (Accept: text/event-stream): each chunk is an event
//     "data: <chunk JSON>"; a failure ends the stream with "event: error",
//     whose data is the error envelope; a stream that ends well, with
//     "event: end" and data {}.
//   - NDJSON (Accept: application/x-ndjson, and the default for an RPC the
//     runners describe as streaming): one JSON object per line,
//     {"chunk": <chunk>}, then {"end": true} or {"error": <envelope>}.
//
// A stream refused before its first chunk (unknown RPC, malformed payload,
// no runner) is answered as any call is: an error status and envelope.
// Either way a response without its final line or event was cut short.

// Media types of streamed responses.
const (
	MediaSSE    = "text/event-stream"
	MediaNDJSON = "application/x-ndjson"
)

// streamFormat returns the media type to stream the response in, or "" for
// a unary call: what the request accepts, else NDJSON for a streaming RPC.
func streamFormat(r *http.Request, kind rpcKind) string {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		switch mt {
		case MediaSSE:
			return MediaSSE
		case MediaNDJSON, "application/jsonl":
			return MediaNDJSON
		}
	}
	if kind.stream {
		return MediaNDJSON
	}
	return ""
}

// stream calls a streaming RPC and writes its chunks as they arrive. It
// returns an error to answer only when the stream failed before any chunk.
func (g *Gateway) stream(ctx context.Context, w http.ResponseWriter, call mesh.RawCall, format string) (int, *errorBody) {
	next, stop := iter.Pull2(g.client.StreamRaw(ctx, call))
	defer stop()
	chunk, err, more := next()
	if err != nil {
		status, body := errorResponse(err)
		if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		return status, body
	}
	w.Header().Set("Content-Type", format)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no") // proxies: do not hold the chunks back
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	var line bytes.Buffer
	for more {
		if err != nil {
			_, body := errorResponse(err)
			g.log.Warn("gateway stream failed", "entity", call.EntityType+"/"+call.ID, "rpc", call.RPC, "code", body.Code, "error", body.Message)
			eb, _ := json.Marshal(body)
			writeEvent(&line, format, "error", eb)
			_, _ = w.Write(line.Bytes())
			return http.StatusOK, nil
		}
		writeEvent(&line, format, "chunk", chunk)
		if _, werr := w.Write(line.Bytes()); werr != nil {
			return http.StatusOK, nil // the caller left: stop pulls the stream's cancel
		}
		_ = rc.Flush()
		chunk, err, more = next()
	}
	writeEvent(&line, format, "end", nil)
	_, _ = w.Write(line.Bytes())
	return http.StatusOK, nil
}

// writeEvent puts one event of the stream in buf: kind is chunk (data is
// the chunk's JSON), error (the envelope) or end.
func writeEvent(buf *bytes.Buffer, format, kind string, data []byte) {
	buf.Reset()
	var compact bytes.Buffer
	if len(data) > 0 && json.Compact(&compact, data) == nil {
		data = compact.Bytes() // one line, whatever the handler's encoder did
	}
	if format == MediaSSE {
		switch kind {
		case "chunk":
			buf.WriteString("data: ")
			buf.Write(data)
		case "error":
			buf.WriteString("event: error\ndata: ")
			buf.Write(data)
		default:
			buf.WriteString("event: end\ndata: {}")
		}
		buf.WriteString("\n\n")
		return
	}
	switch kind {
	case "chunk":
		buf.WriteString(`{"chunk":`)
		buf.Write(data)
		buf.WriteString("}")
	case "error":
		buf.WriteString(`{"error":`)
		buf.Write(data)
		buf.WriteString("}")
	default:
		buf.WriteString(`{"end":true}`)
	}
	buf.WriteString("\n")
}
