package faultproxy_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/natsmesh/natsmesh/internal/testkit/faultproxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer echoes every connection and counts the bytes it received.
type echoServer struct {
	ln       net.Listener
	received atomic.Int64
	wg       sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn
}

func startEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{ln: ln}
	e.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.conns = append(e.conns, c)
			e.mu.Unlock()
			e.wg.Go(func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					e.received.Add(int64(n))
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		e.mu.Lock()
		for _, c := range e.conns {
			_ = c.Close()
		}
		e.mu.Unlock()
		e.wg.Wait()
	})
	return e
}

func dial(t *testing.T, p *faultproxy.Proxy) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial proxy: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// roundTrip writes msg and reads it back within a generous deadline.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	expect(t, c, msg)
}

func expect(t *testing.T, c net.Conn, want string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
		t.Fatalf("read = %q, %v; want %q", got, err, want)
	}
}

// silent checks that nothing arrives on c for a while: the one property
// that can only be observed by waiting.
func silent(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read during blackhole = %q, %v; want nothing until the deadline", buf[:n], err)
	}
}

// closedByPeer checks that c is (or becomes) closed from the other side.
func closedByPeer(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 64))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after cut = %d bytes, %v; want the connection closed", n, err)
	}
}

func TestForward(t *testing.T) {
	e := startEcho(t)
	p := faultproxy.New(t, e.ln.Addr().String())
	if want := "nats://" + p.Addr(); p.URL() != want {
		t.Fatalf("URL() = %q, want %q", p.URL(), want)
	}
	c := dial(t, p)
	roundTrip(t, c, "hello")
	// A large write crosses several chunks and keeps its order.
	big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	go func() { _, _ = c.Write(big) }()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(big))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("1 MiB echo: equal %v, err %v", bytes.Equal(got, big), err)
	}
}

func TestBlackholeHoldsThenRestoreDelivers(t *testing.T) {
	e := startEcho(t)
	p := faultproxy.New(t, e.ln.Addr().String())
	c := dial(t, p)
	roundTrip(t, c, "before")
	base := e.received.Load()

	p.Blackhole()
	if _, err := c.Write([]byte("during")); err != nil {
		t.Fatalf("write during blackhole: %v (the connection must stay up)", err)
	}
	// A connection made during the blackhole is accepted but hears nothing.
	c2 := dial(t, p)
	if _, err := c2.Write([]byte("new")); err != nil {
		t.Fatalf("write on a new connection during blackhole: %v", err)
	}
	silent(t, c, 200*time.Millisecond)
	silent(t, c2, 10*time.Millisecond)
	if got := e.received.Load(); got != base {
		t.Fatalf("server received %d bytes during the blackhole, want 0", got-base)
	}

	p.Restore()
	expect(t, c, "during") // held, not dropped
	expect(t, c2, "new")
	roundTrip(t, c, "after")
}

func TestCut(t *testing.T) {
	e := startEcho(t)
	p := faultproxy.New(t, e.ln.Addr().String())
	c := dial(t, p)
	roundTrip(t, c, "before")

	p.Cut()
	closedByPeer(t, c)
	// New connections are refused (accepted, then closed at once) until
	// Restore.
	closedByPeer(t, dial(t, p))

	p.Restore()
	roundTrip(t, dial(t, p), "after")
}

func TestCutDuringBlackholeDropsHeldBytes(t *testing.T) {
	e := startEcho(t)
	p := faultproxy.New(t, e.ln.Addr().String())
	c := dial(t, p)
	roundTrip(t, c, "before")
	base := e.received.Load()
	p.Blackhole()
	if _, err := c.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	p.Cut()
	closedByPeer(t, c)
	p.Restore()
	roundTrip(t, dial(t, p), "after")
	if got := e.received.Load() - base; got != int64(len("after")) {
		t.Fatalf("server received %d bytes after the blackhole, want only the %d of the new connection", got, len("after"))
	}
}

func TestDelay(t *testing.T) {
	e := startEcho(t)
	p := faultproxy.New(t, e.ln.Addr().String())
	c := dial(t, p)
	roundTrip(t, c, "warm")
	const d = 50 * time.Millisecond
	p.Delay(d)
	start := time.Now()
	roundTrip(t, c, "slow")
	// Each direction adds d: a lower bound only, never an upper one.
	if took := time.Since(start); took < 2*d {
		t.Fatalf("round trip with Delay(%v) took %v, want at least %v", d, took, 2*d)
	}
	p.Delay(0)
	roundTrip(t, c, "fast")
}

func TestCloseEndsEverything(t *testing.T) {
	e := startEcho(t)
	p := faultproxy.New(t, e.ln.Addr().String())
	c := dial(t, p)
	roundTrip(t, c, "hello")
	p.Blackhole() // a forwarder waiting on the blackhole must end too
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	p.Close()
	closedByPeer(t, c)
	if c2, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		_ = c2.Close()
		t.Fatal("dial after Close succeeded")
	}
	p.Close() // idempotent
}

// A blackhole pushes back: once the kernel's buffers are full the sender's
// writes block, and after Restore every byte arrives, in order.
func TestBlackholeBackpressure(t *testing.T) {
	e := startEcho(t)
	p := faultproxy.New(t, e.ln.Addr().String())
	c := dial(t, p)
	roundTrip(t, c, "before")
	p.Blackhole()
	block := bytes.Repeat([]byte{'x'}, 1<<20)
	var sent int
	_ = c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	for {
		n, err := c.Write(block)
		sent += n
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("write during blackhole: %v", err)
		}
		if sent > 512<<20 {
			t.Fatalf("wrote %d MiB into a blackhole without blocking", sent>>20)
		}
	}
	_ = c.SetWriteDeadline(time.Time{})
	t.Logf("a blackholed connection took %d KiB before blocking", sent>>10)
	p.Restore()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, sent)
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{'x'}, sent)) {
		t.Fatalf("read back %d bytes after Restore: %v", sent, err)
	}
	roundTrip(t, c, "after")
}
