// Package cli holds what every natsmesh binary shares: settings taken from
// flags, environment variables and a YAML file (Settings), the NATS
// connection (Conn), the mesh configuration (Mesh) and logging (Logging).
// docs/configuration.md lists every setting.
package cli

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// DefaultPingInterval is the default of Conn.PingInterval.
const DefaultPingInterval = 5 * time.Second

// DefaultConnectWait is the default of Conn.ConnectWait for the servers
// (runner, shard manager, gateway); meshctl defaults to 0.
const DefaultConnectWait = time.Minute

// Conn is how a binary connects to NATS; Register makes each field a
// setting.
type Conn struct {
	URL      string // -nats, NATS_URL
	Creds    string // -creds, NATS_CREDS: a credentials file (JWT + NKey seed)
	NKey     string // -nkey, NATS_NKEY: an NKey seed file
	User     string // -user, NATS_USER
	Password string // -password, NATS_PASSWORD
	Token    string // -token, NATS_TOKEN
	TLSCA    string // -tls-ca, NATS_CA: CA certificate file
	TLSCert  string // -tls-cert, NATS_CERT: client certificate file
	TLSKey   string // -tls-key, NATS_KEY: client key file
	// InboxPrefix (-inbox-prefix, NATS_INBOX_PREFIX) replaces "_INBOX" in
	// the subjects replies come back on, so that server permissions can let
	// each user subscribe to its own replies only (docs/security.md).
	InboxPrefix string
	// PingInterval (-ping-interval, NATS_PING_INTERVAL) is how often the
	// connection is checked: one that answers no ping for two intervals,
	// or whose socket accepts no write for one, is dropped and
	// re-established. nats.go's defaults (2 min, 1 min) leave a process
	// whose network was cut, then restored, on a dead connection for
	// minutes, serving nothing although it is healthy.
	PingInterval time.Duration
	// ConnectWait (-connect-wait, NATS_CONNECT_WAIT) is how long Connect
	// keeps trying to reach a server it cannot reach (connection refused,
	// timeout, reset) before giving up; 0 tries once. A refusal that
	// retrying cannot cure (bad credentials, a certificate not trusted)
	// fails at once whatever the setting. Processes started with or before
	// their NATS servers (docker compose, a Kubernetes rollout) or during a
	// network cut thus wait instead of exiting.
	ConnectWait time.Duration
	Name        string // connection name shown by the server
}

// Register adds the connection settings to s, for a server process
// (connect-wait defaults to DefaultConnectWait). Their environment
// variables are those of the nats CLI, so one environment serves both.
func (c *Conn) Register(s *Settings) { c.register(s, DefaultConnectWait) }

// RegisterTool is Register for a command-line tool, which should fail at
// once when NATS is unreachable: connect-wait defaults to 0.
func (c *Conn) RegisterTool(s *Settings) { c.register(s, 0) }

func (c *Conn) register(s *Settings, wait time.Duration) {
	s.String(&c.URL, nats.DefaultURL, Spec{Name: "nats", Env: "NATS_URL", Usage: "NATS server URLs, comma-separated"})
	s.String(&c.Creds, "", Spec{Name: "creds", Env: "NATS_CREDS", Usage: "NATS credentials file (JWT and NKey seed)"})
	s.String(&c.NKey, "", Spec{Name: "nkey", Env: "NATS_NKEY", Usage: "NKey seed file"})
	s.String(&c.User, "", Spec{Name: "user", Env: "NATS_USER", Usage: "NATS user"})
	s.String(&c.Password, "", Spec{Name: "password", Env: "NATS_PASSWORD", Usage: "NATS password", Secret: true})
	s.String(&c.Token, "", Spec{Name: "token", Env: "NATS_TOKEN", Usage: "NATS token", Secret: true})
	s.String(&c.TLSCA, "", Spec{Name: "tls-ca", Env: "NATS_CA", Usage: "CA certificate file for TLS"})
	s.String(&c.TLSCert, "", Spec{Name: "tls-cert", Env: "NATS_CERT", Usage: "client certificate file for TLS"})
	s.String(&c.TLSKey, "", Spec{Name: "tls-key", Env: "NATS_KEY", Usage: "client key file for TLS"})
	s.String(&c.InboxPrefix, "", Spec{Name: "inbox-prefix", Env: "NATS_INBOX_PREFIX", Usage: "subject prefix of reply inboxes instead of _INBOX (see docs/security.md)"})
	s.Duration(&c.PingInterval, DefaultPingInterval, Spec{Name: "ping-interval", Env: "NATS_PING_INTERVAL", Usage: "how often the NATS connection is checked; one silent for two intervals, or with a write blocked for one, is re-established"})
	s.Duration(&c.ConnectWait, wait, Spec{Name: "connect-wait", Env: "NATS_CONNECT_WAIT", Usage: "how long to keep trying to reach NATS at start before exiting; 0 tries once"})
	s.Check(c.Validate)
}

// Validate reports conflicting or incomplete settings as a *FieldError.
func (c *Conn) Validate() error {
	auth := 0
	for _, set := range []bool{c.Creds != "", c.NKey != "", c.User != "", c.Token != ""} {
		if set {
			auth++
		}
	}
	switch {
	case strings.TrimSpace(c.URL) == "":
		return Bad("nats", "no server URL")
	case auth > 1:
		return Bad("creds", "creds, nkey, user and token are exclusive: set one")
	case c.Password != "" && c.User == "":
		return Bad("password", "password needs user")
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return Bad("tls-cert", "tls-cert and tls-key go together")
	case c.PingInterval < 0 || (c.PingInterval > 0 && c.PingInterval < 100*time.Millisecond):
		return Bad("ping-interval", "want at least 100ms (0: nats.go's default of 2m), got %v", c.PingInterval)
	case c.ConnectWait < 0:
		return Bad("connect-wait", "want 0 or more, got %v", c.ConnectWait)
	case c.InboxPrefix != "" && !validInboxPrefix(c.InboxPrefix):
		return Bad("inbox-prefix", "want subject tokens without wildcards or white space, not ending in a dot, got %q", c.InboxPrefix)
	}
	for _, f := range []struct{ key, path string }{{"creds", c.Creds}, {"nkey", c.NKey}, {"tls-ca", c.TLSCA}, {"tls-cert", c.TLSCert}, {"tls-key", c.TLSKey}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return &FieldError{Key: f.key, Reason: err.Error(), Err: err}
		}
	}
	return nil
}

// Options returns the nats.Options for these settings.
func (c *Conn) Options() ([]nats.Option, error) {
	opts := []nats.Option{nats.MaxReconnects(-1)}
	if c.PingInterval > 0 {
		opts = append(opts, nats.PingInterval(c.PingInterval), nats.MaxPingsOutstanding(2), nats.FlusherTimeout(c.PingInterval))
	}
	if c.Name != "" {
		opts = append(opts, nats.Name(c.Name))
	}
	switch {
	case c.Creds != "":
		opts = append(opts, nats.UserCredentials(c.Creds))
	case c.NKey != "":
		o, err := nats.NkeyOptionFromSeed(c.NKey)
		if err != nil {
			return nil, &FieldError{Key: "nkey", Reason: err.Error(), Err: err}
		}
		opts = append(opts, o)
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.Token != "":
		opts = append(opts, nats.Token(c.Token))
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	if c.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(c.InboxPrefix))
	}
	return opts, nil
}

// validInboxPrefix reports whether p can start inbox subjects: literal
// tokens separated by single dots.
func validInboxPrefix(p string) bool {
	for _, tok := range strings.Split(p, ".") {
		if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n*>") {
			return false
		}
	}
	return true
}

// Connect validates the settings and connects, with extra options after
// those of the settings. While no server can be reached it retries, with a
// backoff up to 2 s and a warning logged to log every 10 s, until
// ConnectWait has passed or ctx ends; it then returns the last error. An
// error retrying cannot cure is returned at once (see ConnectWait).
func (c *Conn) Connect(ctx context.Context, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	opts, err := c.Options()
	if err != nil {
		return nil, err
	}
	opts = append(opts, extra...)
	start := time.Now()
	deadline := start.Add(c.ConnectWait)
	backoff, lastLog := 100*time.Millisecond, time.Time{}
	for attempt := 1; ; attempt++ {
		nc, err := nats.Connect(c.URL, opts...)
		if err == nil {
			if attempt > 1 && log != nil {
				log.Info("connected to NATS", "attempts", attempt, "after", time.Since(start).Round(time.Millisecond))
			}
			return nc, nil
		}
		if PermanentConnectError(err) || !time.Now().Add(backoff).Before(deadline) {
			if attempt > 1 {
				return nil, fmt.Errorf("%w (gave up after %d attempts in %v; -connect-wait)", err, attempt, time.Since(start).Round(time.Millisecond))
			}
			return nil, err
		}
		if log != nil && time.Since(lastLog) >= 10*time.Second {
			lastLog = time.Now()
			log.Warn("NATS unreachable; retrying", "url", c.URL, "err", err, "until", deadline.Format(time.RFC3339))
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (stopped waiting: %w)", err, context.Cause(ctx))
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// PermanentConnectError reports whether err, returned by nats.Connect, is
// a refusal that trying again cannot cure: the server refused the
// credentials, or TLS failed (certificate untrusted, missing or refused;
// TLS required on one side only).
func PermanentConnectError(err error) bool {
	var (
		unknownCA x509.UnknownAuthorityError
		invalid   x509.CertificateInvalidError
		host      x509.HostnameError
	)
	if errors.As(err, &unknownCA) || errors.As(err, &invalid) || errors.As(err, &host) {
		return true
	}
	msg := strings.ToLower(err.Error())
	for _, s := range []string{"authorization violation", "authentication", "tls", "x509", "certificate", "secure connection"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// Logging is the log level and format of a binary.
type Logging struct {
	Level  string
	Format string
}

// Register adds log-level and log-format to s.
func (l *Logging) Register(s *Settings) {
	s.String(&l.Level, "info", Spec{Name: "log-level", Usage: "debug, info, warn or error"})
	s.String(&l.Format, "text", Spec{Name: "log-format", Usage: "text (logfmt) or json"})
	s.Check(func() error {
		if _, err := l.level(); err != nil {
			return err
		}
		if l.Format != "text" && l.Format != "json" {
			return Bad("log-format", "want text or json, got %q", l.Format)
		}
		return nil
	})
}

func (l *Logging) level() (slog.Level, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(l.Level)); err != nil {
		return 0, Bad("log-level", "want debug, info, warn or error, got %q", l.Level)
	}
	return lv, nil
}

// Logger returns a structured logger writing to w.
func (l *Logging) Logger(w io.Writer) *slog.Logger {
	lv, err := l.level()
	if err != nil {
		lv = slog.LevelInfo // Register's check already refused it
	}
	opts := &slog.HandlerOptions{Level: lv}
	if l.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// Ops is where a binary serves /healthz, /readyz and /metrics.
type Ops struct {
	HTTP string
}

// Register adds http to s.
func (o *Ops) Register(s *Settings) {
	s.String(&o.HTTP, "", Spec{Name: "http", Usage: "listen address of /healthz, /readyz and /metrics, e.g. :8080 (empty: none)"})
	s.Check(func() error {
		if o.HTTP == "" {
			return nil
		}
		if _, _, err := net.SplitHostPort(o.HTTP); err != nil {
			return Bad("http", "want host:port or :port, got %q", o.HTTP)
		}
		return nil
	})
}

// Tracing says where a binary's spans go. Its environment variables are
// OpenTelemetry's standard ones, and the exporter reads the others it
// knows (OTEL_EXPORTER_OTLP_HEADERS, ..._CERTIFICATE, ..._TIMEOUT) itself.
type Tracing struct {
	Exporter string
	Protocol string
	Endpoint string
}

// Register adds trace-exporter, trace-protocol and trace-endpoint to s.
func (t *Tracing) Register(s *Settings) {
	s.String(&t.Exporter, "none", Spec{Name: "trace-exporter", Env: "OTEL_TRACES_EXPORTER", Usage: "where spans go: none or otlp"})
	s.String(&t.Protocol, "grpc", Spec{Name: "trace-protocol", Env: "OTEL_EXPORTER_OTLP_PROTOCOL", Usage: "OTLP transport: grpc or http/protobuf"})
	s.String(&t.Endpoint, "", Spec{Name: "trace-endpoint", Env: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", Usage: "OTLP traces URL, e.g. http://collector:4317 (empty: OTEL_EXPORTER_OTLP_ENDPOINT or localhost)"})
	s.Check(func() error {
		switch {
		case t.Exporter != "none" && t.Exporter != "otlp":
			return Bad("trace-exporter", "want none or otlp, got %q", t.Exporter)
		case t.Protocol != "grpc" && t.Protocol != "http/protobuf":
			return Bad("trace-protocol", "want grpc or http/protobuf, got %q", t.Protocol)
		}
		return nil
	})
}
