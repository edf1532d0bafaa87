//go:build chaos && linux

package chaos_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
	"github.com/natsmesh/natsmesh/test/chaos/internal/check"
	"github.com/natsmesh/natsmesh/test/chaos/internal/model"
)

const (
	// workers share the accounts; many, so that the ones waiting on a call
	// to a shard in failover hold up few accounts and the rate holds.
	workers = 200
	// addTimeout bounds a volatile Add; a failover (lease expiry plus the
	// health check) fits in it, so mostly calls lost in flight fail.
	addTimeout = 8 * time.Second
	// sendTimeout bounds each attempt to store a deposit; sendAttempts
	// attempts are made with one message id before its outcome is called
	// unknown.
	sendTimeout  = 4 * time.Second
	sendAttempts = 4
	// depositCallTimeout bounds a persisted Call (stored and handled).
	depositCallTimeout = 10 * time.Second
)

// account is the load's view of one account; only its worker touches it
// while the load runs.
type account struct {
	check.Account
	shard        int
	seq          int64 // last deposit sequence number sent
	unknownSince int64 // unknown Adds since the last answered one
}

// load calls Add and sends or calls Deposit on every account at a steady
// total rate, account a only from worker a % workers, one operation at a
// time, so each account's operations are sequential.
type load struct {
	client *mesh.Client
	accts  []*account
	rate   float64
	quit   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once

	mu      sync.Mutex
	log     *bufio.Writer
	logFile *os.File
	lastOK  map[int]time.Time // shard -> start of its last answered Add
	errs    map[string]int    // failed operations by error class

	adds, addsOK, deposits, depositsAcked, depositCalls atomic.Int64
}

func accountID(i int) string { return fmt.Sprintf("acct-%05d", i) }

func startLoad(c *cluster, n int, rate float64, seed uint64, logPath string) (*load, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	l := &load{client: c.client, rate: rate, quit: make(chan struct{}), log: bufio.NewWriter(f), logFile: f,
		lastOK: map[int]time.Time{}, errs: map[string]int{}}
	for i := range n {
		id := accountID(i)
		l.accts = append(l.accts, &account{Account: check.Account{ID: id}, shard: protocol.ShardOf(id, c.cfg.ShardsPerGroup)})
	}
	for w := range workers {
		rng := rand.New(rand.NewPCG(seed, uint64(w)))
		l.wg.Go(func() { l.work(w, rng) })
	}
	return l, nil
}

// logOp writes one operation to the load's log: start and end (wall
// clock, as the runners' records), account, operation, argument, result.
func (l *load) logOp(start, end time.Time, a *account, op string, arg int64, v int64, err error) {
	res := strconv.FormatInt(v, 10)
	if err != nil {
		res = "error: " + err.Error()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.log, "%s %s %s %s %d %s\n", start.Format("15:04:05.000000"), end.Format("15:04:05.000000"), a.ID, op, arg, res)
}

func (l *load) work(w int, rng *rand.Rand) {
	var mine []*account
	for i := w; i < len(l.accts); i += workers {
		mine = append(mine, l.accts[i])
	}
	if len(mine) == 0 {
		return
	}
	// Each worker paces itself at its share of the rate (pacing, not
	// synchronization).
	tick := time.NewTicker(time.Duration(float64(time.Second) * workers / l.rate))
	defer tick.Stop()
	for {
		select {
		case <-l.quit:
			return
		case <-tick.C:
		}
		a := mine[rng.IntN(len(mine))]
		switch p := rng.Float64(); {
		case p < 0.55:
			l.add(a)
		case p < 0.85:
			l.deposit(a, false)
		default:
			l.deposit(a, true)
		}
	}
}

func (l *load) add(a *account) {
	l.adds.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), addTimeout)
	start := time.Now()
	v, err := mesh.Call(ctx, l.client, model.Add, a.ID, model.Amount{N: 1})
	end := time.Now()
	cancel()
	l.logOp(start, end, a, "Add", 1, v, err)
	if err != nil {
		a.AddUnknown++
		a.unknownSince++
		l.failed("Add", err)
		return
	}
	l.addsOK.Add(1)
	a.AddOK++
	a.Replies = append(a.Replies, check.Reply{Value: v, UnknownPrev: a.unknownSince, At: start})
	a.unknownSince = 0
	l.mu.Lock()
	l.lastOK[a.shard] = start
	l.mu.Unlock()
}

// deposit sends the account's next deposit, by persisted Call (waiting for
// it to be handled) or Send (waiting for it to be stored); a failed
// attempt is sent again with the same message id (deduplicated), so the
// deposit's outcome is unknown only if every attempt failed.
func (l *load) deposit(a *account, call bool) {
	l.deposits.Add(1)
	a.seq++
	seq := a.seq
	msgID := fmt.Sprintf("dep-%s-%d", a.ID, seq)
	first := time.Now()
	if call {
		l.depositCalls.Add(1)
		ctx, cancel := context.WithTimeout(context.Background(), depositCallTimeout)
		start := time.Now()
		v, err := mesh.Call(ctx, l.client, model.Deposit, a.ID, model.Seq{Seq: seq}, mesh.MessageID(msgID))
		cancel()
		l.logOp(start, time.Now(), a, "DepositCall", seq, v, err)
		if err == nil {
			l.depositsAcked.Add(1)
			a.Acked = append(a.Acked, check.Sent{Seq: seq, From: first, At: time.Now()})
			return
		}
		l.failed("Deposit call", err)
	}
	for range sendAttempts {
		ctx, cancel := context.WithTimeout(context.Background(), sendTimeout)
		start := time.Now()
		err := mesh.Send(ctx, l.client, model.Deposit, a.ID, model.Seq{Seq: seq}, mesh.MessageID(msgID))
		cancel()
		l.logOp(start, time.Now(), a, "DepositSend", seq, 0, err)
		if err == nil {
			l.depositsAcked.Add(1)
			a.Acked = append(a.Acked, check.Sent{Seq: seq, From: first, At: time.Now()})
			return
		}
		l.failed("Deposit send", err)
	}
	a.Unknown = append(a.Unknown, seq)
}

func (l *load) failed(op string, err error) {
	class := "other"
	var me *mesh.Error
	switch {
	case errors.Is(err, mesh.ErrShardUnavailable):
		class = "shard unavailable"
	case errors.Is(err, context.DeadlineExceeded):
		class = "deadline"
	case errors.As(err, &me):
		class = me.Code
	default:
		class = err.Error()
		if len(class) > 60 {
			class = class[:60]
		}
	}
	l.mu.Lock()
	l.errs[op+": "+class]++
	l.mu.Unlock()
}

// allAnsweredSince reports whether every shard answered an Add started
// after t.
func (l *load) allAnsweredSince(t time.Time, shards int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for s := range shards {
		if at, ok := l.lastOK[s]; !ok || at.Before(t) {
			return false
		}
	}
	return true
}

func (l *load) stop() {
	l.once.Do(func() {
		close(l.quit)
		l.wg.Wait()
		l.mu.Lock()
		_ = l.log.Flush()
		_ = l.logFile.Close()
		l.mu.Unlock()
	})
	l.wg.Wait()
}

// probes call Get on one account of each shard every probeEvery (1 s
// deadline) and keep the end of each answered call: a shard's
// unavailability windows are the gaps between them. Get writes nothing, so
// probes cost little, and their runs are checked like every other.
type probes struct {
	quit     chan struct{}
	wg       sync.WaitGroup
	once     sync.Once
	answered []([]time.Time) // by shard; written by its probe only until stop
}

const (
	probeEvery   = 250 * time.Millisecond
	probeTimeout = time.Second
)

func startProbes(c *cluster) *probes {
	n := c.cfg.ShardsPerGroup
	p := &probes{quit: make(chan struct{}), answered: make([][]time.Time, n)}
	for s := range n {
		id := ""
		for k := 0; id == ""; k++ {
			if cand := fmt.Sprintf("probe-%d-%d", s, k); protocol.ShardOf(cand, n) == s {
				id = cand
			}
		}
		p.wg.Go(func() {
			tick := time.NewTicker(probeEvery) // pacing, not synchronization
			defer tick.Stop()
			for {
				ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
				_, err := mesh.Call(ctx, c.client, model.Get, id, actor.Empty{})
				cancel()
				if err == nil {
					p.answered[s] = append(p.answered[s], time.Now())
				}
				select {
				case <-p.quit:
					return
				case <-tick.C:
				}
			}
		})
	}
	return p
}

func (p *probes) stop() {
	p.once.Do(func() { close(p.quit) })
	p.wg.Wait()
}

// windows returns every shard's longest unavailability window, longest
// first; call after stop.
func (p *probes) windows() []check.Window {
	m := map[int][]time.Time{}
	for s, a := range p.answered {
		m[s] = a
	}
	return check.Unavailability(m)
}
