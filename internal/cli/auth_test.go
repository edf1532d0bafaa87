package cli

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/internal/testkit/authtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
)

// Every authentication method and TLS setup the binaries offer, against an
// embedded server configured for it: the right credentials connect and can
// use the connection, wrong or missing ones are refused.
func TestConnAuthentication(t *testing.T) {
	pki := authtest.NewPKI(t)
	nkeyPub, nkeySeed := authtest.NKeyUser(t)
	_, otherSeed := authtest.NKeyUser(t)
	op := authtest.NewOperator(t)
	creds := op.Creds(t, "alice", nil)
	other := authtest.NewOperator(t)
	strangerCreds := other.Creds(t, "mallory", nil)

	userPass := func(o *server.Options) { o.Username, o.Password = "mesh", "s3cret" }
	token := func(o *server.Options) { o.Authorization = "t0ken" }
	nkey := func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: nkeyPub}} }
	certUser := func(o *server.Options) {
		o.TLSMap = true
		o.Users = []*server.User{{Username: "CN=" + authtest.ClientName}}
	}

	tests := []struct {
		name    string
		server  []natstest.Option
		conn    Conn
		wantErr string // substring; "" = must connect
	}{
		{"user and password", []natstest.Option{userPass}, Conn{User: "mesh", Password: "s3cret"}, ""},
		{"wrong password", []natstest.Option{userPass}, Conn{User: "mesh", Password: "guess"}, "Authorization Violation"},
		{"no credentials", []natstest.Option{userPass}, Conn{}, "Authorization Violation"},
		{"token", []natstest.Option{token}, Conn{Token: "t0ken"}, ""},
		{"wrong token", []natstest.Option{token}, Conn{Token: "guess"}, "Authorization Violation"},
		{"nkey", []natstest.Option{nkey}, Conn{NKey: nkeySeed}, ""},
		{"unknown nkey", []natstest.Option{nkey}, Conn{NKey: otherSeed}, "Authorization Violation"},
		{"credentials file", []natstest.Option{op.Server(t)}, Conn{Creds: creds}, ""},
		{"credentials of another operator", []natstest.Option{op.Server(t)}, Conn{Creds: strangerCreds}, "Authorization Violation"},
		{"tls", []natstest.Option{pki.ServerTLS(t, false)}, Conn{TLSCA: pki.CA}, ""},
		{"tls without the CA", []natstest.Option{pki.ServerTLS(t, false)}, Conn{}, "certificate"},
		{"mutual tls", []natstest.Option{pki.ServerTLS(t, true)}, Conn{TLSCA: pki.CA, TLSCert: pki.ClientCert, TLSKey: pki.ClientKey}, ""},
		{"mutual tls without a client certificate", []natstest.Option{pki.ServerTLS(t, true)}, Conn{TLSCA: pki.CA}, "tls"},
		{"mutual tls with a foreign certificate", []natstest.Option{pki.ServerTLS(t, true)}, Conn{TLSCA: pki.CA, TLSCert: pki.OtherCert, TLSKey: pki.OtherKey}, "tls"},
		{"client certificate as identity", []natstest.Option{pki.ServerTLS(t, true), certUser}, Conn{TLSCA: pki.CA, TLSCert: pki.ClientCert, TLSKey: pki.ClientKey}, ""},
		{"tls and user", []natstest.Option{pki.ServerTLS(t, true), userPass}, Conn{User: "mesh", Password: "s3cret", TLSCA: pki.CA, TLSCert: pki.ClientCert, TLSKey: pki.ClientKey}, ""},
		{"tls and credentials file", []natstest.Option{pki.ServerTLS(t, true), op.Server(t)}, Conn{Creds: creds, TLSCA: pki.CA, TLSCert: pki.ClientCert, TLSKey: pki.ClientKey}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := natstest.StartServer(t, tt.server...)
			c := tt.conn
			c.URL, c.Name = s.ClientURL(), t.Name()
			nc, err := c.Connect(context.Background(), nil)
			if tt.wantErr != "" {
				if err == nil {
					nc.Close()
					t.Fatalf("Connect(%s) succeeded, want an error containing %q", tt.name, tt.wantErr)
				}
				if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(tt.wantErr)) {
					t.Fatalf("Connect(%s) = %v, want an error containing %q", tt.name, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Connect(%s) = %v", tt.name, err)
			}
			defer nc.Close()
			// The connection works end to end, JetStream included (the mesh
			// needs it): a request to the JetStream API is answered.
			m, err := nc.Request("$JS.API.INFO", nil, 5*time.Second)
			if err != nil {
				t.Fatalf("JetStream request over %s: %v", tt.name, err)
			}
			if !strings.Contains(string(m.Data), "io.nats.jetstream.api.v1.account_info_response") {
				t.Fatalf("JetStream account info over %s: %s", tt.name, m.Data)
			}
			if tls := strings.Contains(tt.name, "tls"); tls {
				if _, err := nc.TLSConnectionState(); err != nil {
					t.Fatalf("%s: connection is not TLS: %v", tt.name, err)
				}
			}
		})
	}
}

// With -inbox-prefix a user whose permissions allow only its own inboxes
// still gets replies; without it, its requests cannot be answered.
func TestConnInboxPrefix(t *testing.T) {
	s := natstest.StartServer(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "alice", Password: "pw", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"$JS.API.INFO"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.alice.>"}},
		}}}
	})
	for _, tt := range []struct {
		prefix string
		ok     bool
	}{{"_INBOX.alice", true}, {"", false}} {
		c := Conn{URL: s.ClientURL(), User: "alice", Password: "pw", InboxPrefix: tt.prefix}
		nc, err := c.Connect(context.Background(), nil)
		if err != nil {
			t.Fatalf("Connect(inbox prefix %q) = %v", tt.prefix, err)
		}
		_, err = nc.Request("$JS.API.INFO", nil, time.Second)
		nc.Close()
		if (err == nil) != tt.ok {
			t.Fatalf("request with inbox prefix %q: %v, want success %v", tt.prefix, err, tt.ok)
		}
	}
	for _, bad := range []string{"_INBOX.", "a.*", "a..b", "a >", ">"} {
		c := Conn{URL: s.ClientURL(), InboxPrefix: bad}
		var fe *FieldError
		if err := c.Validate(); !errors.As(err, &fe) || fe.Key != "inbox-prefix" {
			t.Errorf("Validate(inbox prefix %q) = %v, want an error naming inbox-prefix", bad, err)
		}
	}
}

// The connection is checked every PingInterval (5 s by default), with
// writes bounded by the same time; 0 keeps nats.go's defaults and a value
// below 100 ms is refused, naming the setting.
func TestConnPingInterval(t *testing.T) {
	s := natstest.StartServer(t)
	for _, tt := range []struct {
		set        time.Duration
		ping, flsh time.Duration
	}{
		{DefaultPingInterval, DefaultPingInterval, DefaultPingInterval},
		{time.Second, time.Second, time.Second},
		{0, nats.DefaultPingInterval, nats.GetDefaultOptions().FlusherTimeout},
	} {
		c := Conn{URL: s.ClientURL(), PingInterval: tt.set}
		nc, err := c.Connect(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if nc.Opts.PingInterval != tt.ping || nc.Opts.MaxPingsOut != 2 || nc.Opts.FlusherTimeout != tt.flsh {
			t.Errorf("ping-interval %v: ping %v, max out %d, flusher timeout %v; want %v, 2, %v",
				tt.set, nc.Opts.PingInterval, nc.Opts.MaxPingsOut, nc.Opts.FlusherTimeout, tt.ping, tt.flsh)
		}
		nc.Close()
	}
	for _, bad := range []time.Duration{-time.Second, time.Millisecond} {
		var fe *FieldError
		if err := (&Conn{URL: s.ClientURL(), PingInterval: bad}).Validate(); !errors.As(err, &fe) || fe.Key != "ping-interval" {
			t.Errorf("Validate(ping-interval %v) = %v, want an error naming ping-interval", bad, err)
		}
	}
}
