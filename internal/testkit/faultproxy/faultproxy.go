// Package faultproxy is a TCP proxy for tests that injects network faults
// between a client and a server: a partition that keeps connections open
// (Blackhole), a hard disconnect (Cut) and added latency (Delay). Tests put
// it between one NATS client and the server to see what a process does when
// its network fails while it keeps running (STYLE.md rule 20).
//
// # Usage
//
//	p := faultproxy.New(t, srv.Addr().String())
//	nc, _ := nats.Connect(p.URL(), nats.MaxReconnects(-1))
//	p.Blackhole() // TCP stays up, nothing gets through either way
//	p.Restore()   // bytes held meanwhile are delivered, in order
//	p.Cut()       // connections are closed, new ones refused
//	p.Restore()   // new connections are accepted again
//
// # Concurrency
//
// All methods are safe for concurrent use. Each proxied connection runs a
// reader and a writer goroutine per direction, and the first direction to
// end closes both sockets; the accept loop runs one more goroutine. Close,
// called by t.Cleanup, stops them all and waits for them.
//
// # Guarantees
//
// Bytes are forwarded in order per direction and never altered or dropped
// while a connection lives: a blackhole holds them, it does not drop them.
// That is what a real partition under TCP does: the sender's kernel keeps
// retransmitting, and when the network heals the receiver gets everything,
// late. Dropping bytes instead would cut a byte stream in the middle of a
// protocol message, which no network does to a live TCP connection, and the
// receiver would see garbage rather than a partition. A process that must
// survive lost data sees it through Cut, which drops whatever was held.
//
// While blackholed, the proxy stops reading (a read already waiting for
// bytes completes, and its chunk is held), so bytes queue in the kernel's
// socket buffers and, once those are full, the sender's writes block: TCP
// flow control pushes back as it would in a real partition, where unacked
// bytes wait in the sender's send buffer. A write to a socket already under
// way when Blackhole is called completes; nothing read after Blackhole
// returns is written before Restore.
package faultproxy

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// window is how many chunks a direction reads ahead of what it has
// forwarded; chunkSize bounds one read.
const (
	window    = 16
	chunkSize = 32 << 10
	dialWait  = 5 * time.Second
)

// Proxy forwards TCP connections from a loopback listener to a target and
// injects faults on command. Create one with New.
type Proxy struct {
	t      testing.TB
	target string
	ln     net.Listener
	wg     sync.WaitGroup

	mu         sync.Mutex
	blackholed bool
	cut        bool
	delay      time.Duration
	changed    chan struct{} // closed and replaced on every change of the above
	links      map[*link]struct{}
	closed     bool
}

// New starts a proxy on 127.0.0.1 (random port) forwarding to target
// (host:port) and closes it on t.Cleanup. It fails the test if it cannot
// listen.
func New(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("faultproxy: listen: %v", err)
	}
	p := &Proxy{t: t, target: target, ln: ln, changed: make(chan struct{}), links: map[*link]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr returns the proxy's listening address, host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL returns the proxy's address as a NATS URL.
func (p *Proxy) URL() string { return "nats://" + p.Addr() }

// Blackhole stops forwarding in both directions on every connection,
// current and new, while keeping them open: a partition in which both
// processes keep running and neither hears that anything is wrong. New
// connections are accepted (and dialled through) but get no bytes either.
// Bytes sent meanwhile are held and delivered after Restore.
func (p *Proxy) Blackhole() {
	p.update(func() { p.blackholed = true })
}

// Cut closes every current connection (both sides see the connection end,
// and bytes held by a blackhole are dropped) and refuses new ones, by
// closing them as soon as they are accepted, until Restore.
func (p *Proxy) Cut() {
	var links []*link
	p.update(func() {
		p.cut = true
		for l := range p.links {
			links = append(links, l)
		}
	})
	for _, l := range links {
		l.close()
	}
}

// Restore lifts Blackhole and Cut: held bytes are delivered in order and
// new connections are accepted. The delay set by Delay stays.
func (p *Proxy) Restore() {
	p.update(func() { p.blackholed, p.cut = false, false })
}

// Delay adds d of latency to every byte in each direction, measured from
// when the proxy read it; 0 removes it. Bytes keep their order, and
// throughput is not limited.
func (p *Proxy) Delay(d time.Duration) {
	p.update(func() { p.delay = max(d, 0) })
}

// Close closes the listener and every connection and waits for the proxy's
// goroutines. It is idempotent; New registers it with t.Cleanup.
func (p *Proxy) Close() {
	var links []*link
	p.update(func() {
		p.closed = true
		for l := range p.links {
			links = append(links, l)
		}
	})
	_ = p.ln.Close()
	for _, l := range links {
		l.close()
	}
	p.wg.Wait()
}

// update changes the proxy's state under its lock and wakes every waiting
// forwarder to look at it again.
func (p *Proxy) update(f func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f()
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.t.Logf("faultproxy: accept: %v", err)
			}
			return
		}
		p.mu.Lock()
		refuse := p.cut || p.closed
		p.mu.Unlock()
		if refuse {
			_ = c.Close()
			continue
		}
		// Dial in the background: a slow target must not hold up other
		// connections (Close waits for the dial, at most dialWait).
		p.wg.Add(1)
		go p.connect(c)
	}
}

func (p *Proxy) connect(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.target, dialWait)
	if err != nil {
		_ = client.Close()
		return
	}
	l := &link{client: client, server: server, done: make(chan struct{})}
	p.mu.Lock()
	if p.cut || p.closed {
		p.mu.Unlock()
		l.close()
		return
	}
	p.links[l] = struct{}{}
	p.wg.Add(3)
	p.mu.Unlock()
	up, down := make(chan chunk, window), make(chan chunk, window)
	go p.read(l, client, up)
	go p.read(l, server, down)
	go func() {
		defer p.wg.Done()
		upDone := make(chan struct{})
		go func() { defer close(upDone); p.write(l, server, up) }()
		p.write(l, client, down)
		<-upDone
		p.mu.Lock()
		delete(p.links, l)
		p.mu.Unlock()
	}()
}

// link is one proxied connection.
type link struct {
	client, server net.Conn
	done           chan struct{} // closed by close
	once           sync.Once
}

func (l *link) close() {
	l.once.Do(func() {
		close(l.done)
		_ = l.client.Close()
		_ = l.server.Close()
	})
}

type chunk struct {
	data []byte
	at   time.Time // when it was read
}

// read reads from src into out until src fails, then closes out.
func (p *Proxy) read(l *link, src net.Conn, out chan<- chunk) {
	defer p.wg.Done()
	defer close(out)
	for {
		// While blackholed, leave the bytes in the kernel: once its buffers
		// fill, the sender's writes block, as in a real partition.
		if !p.readable(l) {
			return
		}
		buf := make([]byte, chunkSize)
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case out <- chunk{data: buf[:n], at: time.Now()}:
			case <-l.done:
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// readable waits until the proxy is not blackholed; it returns false if the
// link closes first.
func (p *Proxy) readable(l *link) bool {
	for {
		p.mu.Lock()
		hold, changed := p.blackholed, p.changed
		p.mu.Unlock()
		if !hold {
			return true
		}
		select {
		case <-l.done:
			return false
		case <-changed:
		}
	}
}

// write forwards the chunks of in to dst when the proxy lets them through.
// When in ends (its source closed) or a write fails, the whole link is
// closed: the other side sees the end as it would have without the proxy,
// but only once the bytes before it got through.
func (p *Proxy) write(l *link, dst net.Conn, in <-chan chunk) {
	defer l.close()
	for c := range in {
		if !p.wait(l, c.at) {
			return
		}
		if _, err := dst.Write(c.data); err != nil {
			return
		}
	}
	// Flow-controlled end of stream: hold the close back while blackholed,
	// as the FIN would be.
	p.wait(l, time.Time{})
}

// wait blocks until a chunk read at `at` may be written: not blackholed and
// its delay passed. It returns false if the link closes first.
func (p *Proxy) wait(l *link, at time.Time) bool {
	for {
		p.mu.Lock()
		hold, delay, changed := p.blackholed, p.delay, p.changed
		p.mu.Unlock()
		if hold {
			select {
			case <-l.done:
				return false
			case <-changed:
				continue
			}
		}
		d := time.Until(at.Add(delay))
		if at.IsZero() || d <= 0 {
			return true
		}
		t := time.NewTimer(d)
		select {
		case <-l.done:
			t.Stop()
			return false
		case <-changed: // a blackhole or a new delay: look again
			t.Stop()
		case <-t.C: // look again: a blackhole may have started meanwhile
		}
	}
}
