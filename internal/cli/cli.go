// Package cli holds what every natsmesh binary shares: NATS connection
// flags (URL, credentials, TLS) with environment fallbacks, and logging.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
)

// Conn is how a binary connects to NATS. Every field has a flag and an
// environment variable (the flag wins).
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
	Name     string // connection name shown by the server
}

// Register adds the connection flags to fs, with defaults from the
// environment.
func (c *Conn) Register(fs *flag.FlagSet) {
	env := func(k, def string) string {
		if v, ok := os.LookupEnv(k); ok {
			return v
		}
		return def
	}
	fs.StringVar(&c.URL, "nats", env("NATS_URL", nats.DefaultURL), "NATS server URLs, comma-separated (env NATS_URL)")
	fs.StringVar(&c.Creds, "creds", env("NATS_CREDS", ""), "NATS credentials file (env NATS_CREDS)")
	fs.StringVar(&c.NKey, "nkey", env("NATS_NKEY", ""), "NKey seed file (env NATS_NKEY)")
	fs.StringVar(&c.User, "user", env("NATS_USER", ""), "NATS user (env NATS_USER)")
	fs.StringVar(&c.Password, "password", env("NATS_PASSWORD", ""), "NATS password (env NATS_PASSWORD)")
	fs.StringVar(&c.Token, "token", env("NATS_TOKEN", ""), "NATS token (env NATS_TOKEN)")
	fs.StringVar(&c.TLSCA, "tls-ca", env("NATS_CA", ""), "CA certificate file for TLS (env NATS_CA)")
	fs.StringVar(&c.TLSCert, "tls-cert", env("NATS_CERT", ""), "client certificate file for TLS (env NATS_CERT)")
	fs.StringVar(&c.TLSKey, "tls-key", env("NATS_KEY", ""), "client key file for TLS (env NATS_KEY)")
}

// Validate reports conflicting or incomplete settings by flag name.
func (c *Conn) Validate() error {
	auth := 0
	for _, set := range []bool{c.Creds != "", c.NKey != "", c.User != "", c.Token != ""} {
		if set {
			auth++
		}
	}
	switch {
	case strings.TrimSpace(c.URL) == "":
		return errors.New("-nats: no server URL")
	case auth > 1:
		return errors.New("-creds, -nkey, -user and -token are exclusive: set one")
	case c.Password != "" && c.User == "":
		return errors.New("-password needs -user")
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return errors.New("-tls-cert and -tls-key go together")
	}
	for flagName, path := range map[string]string{"-creds": c.Creds, "-nkey": c.NKey, "-tls-ca": c.TLSCA, "-tls-cert": c.TLSCert, "-tls-key": c.TLSKey} {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("%s: %w", flagName, err)
		}
	}
	return nil
}

// Options returns the nats.Options for these settings.
func (c *Conn) Options() ([]nats.Option, error) {
	opts := []nats.Option{nats.MaxReconnects(-1)}
	if c.Name != "" {
		opts = append(opts, nats.Name(c.Name))
	}
	switch {
	case c.Creds != "":
		opts = append(opts, nats.UserCredentials(c.Creds))
	case c.NKey != "":
		o, err := nats.NkeyOptionFromSeed(c.NKey)
		if err != nil {
			return nil, fmt.Errorf("-nkey: %w", err)
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
	return opts, nil
}

// Connect validates the settings and connects.
func (c *Conn) Connect() (*nats.Conn, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	opts, err := c.Options()
	if err != nil {
		return nil, err
	}
	return nats.Connect(c.URL, opts...)
}

// Logger returns a text logger on stderr at the named level.
func Logger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
