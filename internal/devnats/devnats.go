// Package devnats runs an embedded nats-server with JetStream for development
// mode and examples: one process, no install, data in a local folder.
package devnats

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options configure the embedded server.
type Options struct {
	// Listen is host:port for clients; empty means no TCP listener (only
	// in-process connections).
	Listen string
	// StoreDir holds JetStream data; empty means a fresh temporary folder,
	// removed when the server shuts down.
	StoreDir string
	// Name is the server name.
	Name string
}

// Start starts an embedded server and waits until it accepts connections.
func Start(o Options) (*server.Server, error) {
	so := &server.Options{
		ServerName: o.Name,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		NoLog:      true,
	}
	if so.ServerName == "" {
		so.ServerName = "natsmesh-dev"
	}
	if o.Listen == "" {
		so.DontListen = true
	} else {
		host, port, err := net.SplitHostPort(o.Listen)
		if err != nil {
			return nil, fmt.Errorf("listen address %q: %w", o.Listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("listen port %q: %w", port, err)
		}
		so.Host, so.Port = host, p
	}
	temp := ""
	if o.StoreDir == "" {
		// Not the server's default folder (shared by every server without
		// one): a fresh one, so nothing survives this server.
		var err error
		if temp, err = os.MkdirTemp("", "natsmesh-dev-"); err != nil {
			return nil, err
		}
		so.StoreDir = temp
	}
	s, err := server.NewServer(so)
	if err != nil {
		if temp != "" {
			_ = os.RemoveAll(temp)
		}
		return nil, fmt.Errorf("nats-server: %w", err)
	}
	if temp != "" {
		go func() {
			s.WaitForShutdown()
			_ = os.RemoveAll(temp)
		}()
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("nats-server did not start within 10s (is %s in use?)", o.Listen)
	}
	return s, nil
}
