//go:build chaos && linux

package chaos_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/natsmesh/natsmesh/test/chaos/internal/check"
)

// Fault kinds.
const (
	killRunner      = "kill-runner"      // SIGKILL, restart later as a new incarnation
	pauseRunner     = "pause-runner"     // SIGSTOP past the lease expiry, then SIGCONT
	blipRunner      = "blip-runner"      // SIGSTOP shorter than the lease's local validity
	blackholeRunner = "blackhole-runner" // its proxies hold every byte, past the lease expiry
	cutRunner       = "cut-runner"       // its proxies close its connections and refuse new ones
	restartNATS     = "restart-nats"     // SIGTERM a server (leaders hand over), restart it
	killNATS        = "kill-nats"        // SIGKILL a server, restart it
	killManager     = "kill-manager"     // SIGKILL a shard manager, restart it
	scaleOut        = "scale-out"        // start one more runner
	scaleIn         = "scale-in"         // SIGTERM a runner (graceful), not restarted
)

// weights is how often each kind is drawn.
var weights = []struct {
	kind string
	w    int
}{
	{killRunner, 3}, {pauseRunner, 3}, {blipRunner, 1}, {blackholeRunner, 2}, {cutRunner, 2},
	{restartNATS, 1}, {killNATS, 1}, {killManager, 1}, {scaleOut, 1}, {scaleIn, 1},
}

// chaos draws faults from a seeded generator and runs each as an episode
// (inject, hold, heal) in its own goroutine; episodes overlap within
// limits that keep the cluster able to recover: one NATS server down at a
// time (R3 keeps its quorum), one manager, at most two impaired runners,
// never all of them.
type chaos struct {
	c   *cluster
	rng *rand.Rand // used by the scheduling goroutine only
	wg  sync.WaitGroup
	log *os.File

	mu        sync.Mutex
	natsBusy  bool
	mgrBusy   bool
	impaired  int // runners killed (until restarted), paused or cut off
	counts    map[string]int
	schedule  []string
	lastFault map[string]time.Time
	events    []event // every injection, for the summary
}

type event struct {
	at     time.Time
	kind   string
	target string
}

func newChaos(c *cluster, seed uint64, logPath string) (*chaos, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	return &chaos{c: c, rng: rand.New(rand.NewPCG(seed, 0x5eed)), log: f, counts: map[string]int{}, lastFault: map[string]time.Time{}}, nil
}

// between draws a duration uniformly in [lo, hi).
func (ch *chaos) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(ch.rng.Int64N(int64(hi-lo)))
}

func (ch *chaos) draw() string {
	total := 0
	for _, w := range weights {
		total += w.w
	}
	n := ch.rng.IntN(total)
	for _, w := range weights {
		if n -= w.w; n < 0 {
			return w.kind
		}
	}
	panic("unreachable")
}

// record logs an injection or a step of an episode.
func (ch *chaos) record(kind, target, format string, args ...any) {
	now := time.Now()
	line := fmt.Sprintf("%s %-16s %-6s %s", now.Format("15:04:05.000"), kind, target, fmt.Sprintf(format, args...))
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.schedule = append(ch.schedule, line)
	fmt.Fprintln(ch.log, line)
}

func (ch *chaos) injected(kind, target string) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.counts[kind]++
	ch.events = append(ch.events, event{time.Now(), kind, target})
}

// run injects faults until deadline, then waits for every episode to heal.
func (ch *chaos) run(deadline time.Time) {
	o := ch.c.opt
	for time.Now().Before(deadline) {
		wait := ch.between(o.gapMin, o.gapMax)
		time.Sleep(min(wait, time.Until(deadline))) // the schedule's pace, not synchronization
		if !time.Now().Before(deadline) {
			break
		}
		for try := 0; try < 10; try++ {
			if ch.start(ch.draw()) {
				break
			}
		}
	}
	ch.wg.Wait()
	ch.log.Close()
}

// pick draws one runner among rs.
func (ch *chaos) pick(rs []*runner) *runner { return rs[ch.rng.IntN(len(rs))] }

// start begins an episode of kind if the limits allow it now; every random
// choice is drawn here, on the scheduling goroutine.
func (ch *chaos) start(kind string) bool {
	c, o := ch.c, ch.c.opt
	ups := c.running(up)
	ch.mu.Lock()
	defer ch.mu.Unlock()
	canImpair := ch.impaired < 2 && len(ups) >= 2
	switch kind {
	case killRunner:
		if !canImpair {
			return false
		}
		r, down := ch.pick(ups), ch.between(500*time.Millisecond, 2*o.lease)
		ch.impaired++
		c.setState(r, killed)
		ch.wg.Go(func() { ch.killRunner(r, down) })
	case pauseRunner, blipRunner:
		if !canImpair {
			return false
		}
		r := ch.pick(ups)
		d := ch.between(o.lease+500*time.Millisecond, o.lease+4*time.Second)
		if kind == blipRunner {
			d = ch.between(100*time.Millisecond, o.lease-o.margin-o.refresh)
		}
		ch.impaired++
		c.setState(r, paused)
		ch.wg.Go(func() { ch.pauseRunner(kind, r, d) })
	case blackholeRunner, cutRunner:
		if !canImpair {
			return false
		}
		r, d := ch.pick(ups), ch.between(o.lease+time.Second, o.lease+5*time.Second)
		ch.impaired++
		c.setState(r, partitioned)
		ch.wg.Go(func() { ch.partitionRunner(kind, r, d) })
	case restartNATS, killNATS:
		if ch.natsBusy || !c.healthy() {
			return false
		}
		s, down := c.servers[ch.rng.IntN(len(c.servers))], ch.between(500*time.Millisecond, 5*time.Second)
		ch.natsBusy = true
		ch.wg.Go(func() { ch.restartServer(kind, s, down) })
	case killManager:
		if ch.mgrBusy {
			return false
		}
		i, down := ch.rng.IntN(len(c.managers)), ch.between(500*time.Millisecond, 5*time.Second)
		ch.mgrBusy = true
		ch.wg.Go(func() { ch.killManager(i, down) })
	case scaleOut:
		if len(c.running()) >= o.maxRunners {
			return false
		}
		ch.wg.Go(func() {
			r := c.startRunner("")
			ch.injected(scaleOut, r.inc.ID)
			ch.record(scaleOut, r.inc.ID, "started")
		})
	case scaleIn:
		if len(c.running()) <= o.runners || len(ups) < 2 || ch.impaired > 0 {
			return false
		}
		r := ch.pick(ups)
		c.setState(r, stopping)
		ch.wg.Go(func() { ch.scaleIn(r) })
	default:
		panic("unknown fault " + kind)
	}
	return true
}

func (ch *chaos) heal() {
	ch.mu.Lock()
	ch.impaired--
	ch.mu.Unlock()
}

func (ch *chaos) killRunner(r *runner, down time.Duration) {
	c := ch.c
	ch.injected(killRunner, r.inc.ID)
	ch.record(killRunner, r.inc.ID, "SIGKILL; restart in %v", down.Round(time.Millisecond))
	c.signal(r, syscall.SIGKILL)
	<-r.proc.Done()
	time.Sleep(down) // the fault's duration, not synchronization
	n := c.startRunner(r.slot)
	ch.record(killRunner, n.inc.ID, "restarted")
	ch.heal()
}

func (ch *chaos) pauseRunner(kind string, r *runner, d time.Duration) {
	c := ch.c
	ch.injected(kind, r.inc.ID)
	from := c.pause(r)
	ch.record(kind, r.inc.ID, "SIGSTOP for %v", d.Round(time.Millisecond))
	time.Sleep(d) // the fault's duration
	c.resume(r, from)
	c.setState(r, up)
	ch.record(kind, r.inc.ID, "SIGCONT")
	ch.heal()
}

func (ch *chaos) partitionRunner(kind string, r *runner, d time.Duration) {
	c := ch.c
	ch.injected(kind, r.inc.ID)
	from := time.Now()
	for _, p := range r.proxies {
		if kind == cutRunner {
			p.Cut()
		} else {
			p.Blackhole()
		}
	}
	ch.record(kind, r.inc.ID, "for %v", d.Round(time.Millisecond))
	time.Sleep(d) // the fault's duration
	for _, p := range r.proxies {
		p.Restore()
	}
	c.mu.Lock()
	r.inc.Partitions = append(r.inc.Partitions, check.Span{From: from, To: time.Now()})
	if r.state == partitioned {
		r.state = up
	}
	c.mu.Unlock()
	ch.record(kind, r.inc.ID, "restored")
	ch.heal()
}

func (ch *chaos) restartServer(kind string, s *server, down time.Duration) {
	c := ch.c
	sig := syscall.SIGTERM
	if kind == killNATS {
		sig = syscall.SIGKILL
	}
	ch.injected(kind, s.name)
	ch.record(kind, s.name, "%v; restart in %v", sig, down.Round(time.Millisecond))
	s.mu.Lock()
	s.down = true
	p := s.proc
	s.mu.Unlock()
	_ = p.Signal(sig)
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		c.problem(processExit, s.name, "still running 30 s after %v", sig)
		_ = p.Signal(syscall.SIGKILL)
		<-p.Done()
	}
	if sig == syscall.SIGTERM && p.Err() != nil {
		c.problem(processExit, s.name, "exited with %s after SIGTERM", p.Status())
	}
	time.Sleep(down) // the fault's duration
	var routes []string
	for _, o := range c.servers {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", o.clusterPort))
	}
	c.startServer(s, strings.Join(routes, ","))
	// Hold the NATS slot until the restarted server has caught up: a second
	// server lost before that would cost the quorum.
	deadline := time.Now().Add(2 * time.Minute)
	healthy := c.healthy()
	for !healthy && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond) // poll interval of a wait with a deadline
		healthy = c.healthy()
	}
	if !healthy {
		c.problem(check.Availability, s.name, "NATS cluster not healthy 2 min after restarting %s", s.name)
		ch.record(kind, s.name, "restarted, not healthy after 2 min")
	} else {
		ch.record(kind, s.name, "restarted and healthy")
	}
	ch.mu.Lock()
	ch.natsBusy = false
	ch.mu.Unlock()
}

func (ch *chaos) killManager(i int, down time.Duration) {
	c := ch.c
	m := c.managers[i]
	m.mu.Lock()
	m.down = true
	p := m.proc
	m.mu.Unlock()
	ch.injected(killManager, p.Name())
	ch.record(killManager, p.Name(), "SIGKILL; restart in %v", down.Round(time.Millisecond))
	_ = p.Signal(syscall.SIGKILL)
	<-p.Done()
	time.Sleep(down) // the fault's duration
	c.startManager(i)
	ch.record(killManager, fmt.Sprintf("m%d", i+1), "restarted")
	ch.mu.Lock()
	ch.mgrBusy = false
	ch.mu.Unlock()
}

func (ch *chaos) scaleIn(r *runner) {
	c := ch.c
	ch.injected(scaleIn, r.inc.ID)
	ch.record(scaleIn, r.inc.ID, "SIGTERM")
	c.signal(r, syscall.SIGTERM)
	select {
	case <-r.proc.Done():
		ch.record(scaleIn, r.inc.ID, "exited: %s", r.proc.Status())
	case <-time.After(2 * time.Minute):
		c.problem(processExit, r.inc.ID, "still running 2 min after SIGTERM (graceful shutdown hung)")
		c.signal(r, syscall.SIGKILL)
	}
}
