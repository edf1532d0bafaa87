// Package model is what the chaos suite's runner process (test/chaos/node)
// and its checker share: the Account entity's declaration, the durable
// state it keeps in a KV bucket, and the records every runner writes about
// what it activated and handled.
//
// # Usage
//
// The runner implements Account (node/entity.go); the load generator calls
// Add (volatile) and Deposit (persisted); the checker reads the records
// with Read and the final states from the bucket.
//
// # Concurrency
//
// A Writer may be used from many goroutines: each record is one write(2)
// to a file opened for appending, so records from one process never
// interleave, and a record is either wholly in the file or not at all when
// the process is killed.
//
// # Guarantees
//
// Record times are wall-clock Unix nanoseconds taken in the process that
// writes them: all processes of a chaos run share one machine and so one
// clock, which is what lets the checker merge records of different runners.
package model

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/jetstream"
)

// StateBucket is the KV bucket holding every account's state, one key per
// account (Key).
const StateBucket = "chaos_state"

// Key returns the state key of account id.
func Key(id string) string { return "a." + id }

// Amount is Add's payload.
type Amount struct {
	N int `json:"n"`
}

// Seq is Deposit's payload: the sender numbers each account's deposits
// from 1, one message id per number.
type Seq struct {
	Seq int64 `json:"seq"`
}

// The Account entity: Add is volatile (at most once), Deposit persisted (at
// least once, deduplicated by the account through its sequence numbers),
// Get reads the state.
var (
	Account = actor.NewEntity("Account")
	Add     = actor.NewRPC[Amount, int64](Account, "Add")
	Deposit = actor.NewRPC[Seq, int64](Account, "Deposit", actor.Persisted())
	Get     = actor.NewRPC[actor.Empty, State](Account, "Get")
)

// Singletons are the names of the singletons every chaos runner registers.
var Singletons = []string{"sgl-a", "sgl-b", "sgl-c"}

// State is an account's durable state. Volatile counts acknowledged and
// unacknowledged Adds that reached the store; Applied holds the deposit
// sequence numbers applied, as sorted disjoint inclusive ranges, so that a
// redelivered deposit is recognised and not applied twice.
type State struct {
	Volatile int64      `json:"v"`
	Applied  [][2]int64 `json:"p,omitempty"`
}

// Deposits returns how many deposits were applied.
func (s State) Deposits() int64 {
	var n int64
	for _, r := range s.Applied {
		n += r[1] - r[0] + 1
	}
	return n
}

// Has reports whether deposit seq was applied.
func (s State) Has(seq int64) bool {
	_, found := slices.BinarySearchFunc(s.Applied, seq, func(r [2]int64, seq int64) int {
		switch {
		case r[1] < seq:
			return -1
		case r[0] > seq:
			return 1
		}
		return 0
	})
	return found
}

// Max returns the highest applied deposit sequence number (0: none).
func (s State) Max() int64 {
	if len(s.Applied) == 0 {
		return 0
	}
	return s.Applied[len(s.Applied)-1][1]
}

// With returns s with deposit seq applied (a copy: s is not changed).
func (s State) With(seq int64) State {
	out := State{Volatile: s.Volatile, Applied: make([][2]int64, 0, len(s.Applied)+1)}
	inserted := false
	for _, r := range s.Applied {
		if !inserted && seq < r[0] {
			out.Applied = appendRange(out.Applied, [2]int64{seq, seq})
			inserted = true
		}
		out.Applied = appendRange(out.Applied, r)
	}
	if !inserted {
		out.Applied = appendRange(out.Applied, [2]int64{seq, seq})
	}
	return out
}

// appendRange appends r to sorted ranges, merging it with the last one
// when they touch.
func appendRange(rs [][2]int64, r [2]int64) [][2]int64 {
	if n := len(rs); n > 0 && rs[n-1][1]+1 >= r[0] {
		rs[n-1][1] = max(rs[n-1][1], r[1])
		return rs
	}
	return append(rs, r)
}

// Kind is a record's kind.
type Kind byte

// Record kinds. Activated and Deactivated come from the runtime's observer
// (an activation's first message is handled after its Activated, its last
// before its Deactivated); Handled is one run of a handler, with its start
// and end; Conflict is a refused write of an account's state (someone else
// wrote it since this activation read or wrote it: the state's revision is
// the fencing token); OutOfOrder is a deposit that arrived after a later
// one of its account was applied; the Singleton kinds are a singleton's run
// starting, doing its periodic work, and stopping.
const (
	Activated      Kind = 'A'
	Deactivated    Kind = 'D'
	Handled        Kind = 'H'
	Conflict       Kind = 'C'
	OutOfOrder     Kind = 'O'
	SingletonStart Kind = 'S'
	SingletonTick  Kind = 'T'
	SingletonStop  Kind = 'X'
)

// Handler outcomes (Record.Outcome of Handled records).
const (
	OK        = "ok"       // the state was written; the caller gets Value
	Duplicate = "dup"      // a deposit already applied: answered, nothing written
	Refused   = "conflict" // the write was refused (see Conflict)
	Failed    = "error"    // the write failed or its outcome is unknown
	ReadOnly  = "read"     // Get: nothing written
)

// Record is one line of a runner's record file.
type Record struct {
	Kind  Kind
	Start time.Time // the event; a handler's start
	End   time.Time // a handler's end (Handled only)
	// Addr is the account id, or the singleton's name.
	Addr string
	// Op is the RPC for Handled and Conflict records, the stop reason for
	// Deactivated.
	Op      string
	Arg     int64 // Deposit's sequence number, or Add's amount
	Outcome string
	Value   int64 // the reply; for OutOfOrder, the highest applied before
	Rev     uint64
}

// Writer appends records to a file.
type Writer struct {
	mu sync.Mutex
	f  *os.File
}

// Create opens path for appending records (creating it).
func Create(path string) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &Writer{f: f}, nil
}

// Write appends r with one write(2). An error is returned, never dropped:
// a chaos run without all its records proves nothing.
func (w *Writer) Write(r Record) error {
	var b []byte
	b = append(b, byte(r.Kind), '\t')
	b = strconv.AppendInt(b, r.Start.UnixNano(), 10)
	b = append(b, '\t')
	if !r.End.IsZero() {
		b = strconv.AppendInt(b, r.End.UnixNano(), 10)
	}
	b = append(b, '\t')
	b = strconv.AppendQuote(b, r.Addr)
	b = append(b, '\t')
	b = append(b, r.Op...)
	b = append(b, '\t')
	b = strconv.AppendInt(b, r.Arg, 10)
	b = append(b, '\t')
	b = append(b, r.Outcome...)
	b = append(b, '\t')
	b = strconv.AppendInt(b, r.Value, 10)
	b = append(b, '\t')
	b = strconv.AppendUint(b, r.Rev, 10)
	b = append(b, '\n')
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err := w.f.Write(b)
	return err
}

// Close closes the file.
func (w *Writer) Close() error { return w.f.Close() }

// ErrBadRecord is returned by Read for a line that is not a record.
var ErrBadRecord = errors.New("model: bad record")

// Read parses a record file.
func Read(r io.Reader) ([]Record, error) {
	var out []Record
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		rec, err := parse(sc.Text())
		if err != nil {
			return out, fmt.Errorf("line %d: %w", line, err)
		}
		out = append(out, rec)
	}
	return out, sc.Err()
}

func parse(s string) (Record, error) {
	f := strings.Split(s, "\t")
	if len(f) != 9 || len(f[0]) != 1 {
		return Record{}, fmt.Errorf("%w: %q", ErrBadRecord, s)
	}
	var r Record
	var err error
	nano := func(v string) time.Time {
		if v == "" || err != nil {
			return time.Time{}
		}
		var n int64
		n, err = strconv.ParseInt(v, 10, 64)
		return time.Unix(0, n)
	}
	r.Kind = Kind(f[0][0])
	r.Start, r.End = nano(f[1]), nano(f[2])
	if err == nil {
		r.Addr, err = strconv.Unquote(f[3])
	}
	r.Op, r.Outcome = f[4], f[6]
	if err == nil {
		r.Arg, err = strconv.ParseInt(f[5], 10, 64)
	}
	if err == nil {
		r.Value, err = strconv.ParseInt(f[7], 10, 64)
	}
	if err == nil {
		r.Rev, err = strconv.ParseUint(f[8], 10, 64)
	}
	if err != nil {
		return Record{}, fmt.Errorf("%w: %q: %w", ErrBadRecord, s, err)
	}
	return r, nil
}

// Encode and Decode are the state's encoding in the bucket.
func Encode(s State) []byte {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err) // a State always encodes
	}
	return b
}

// Decode decodes a state written by Encode.
func Decode(b []byte) (State, error) {
	var s State
	err := json.Unmarshal(b, &s)
	return s, err
}

// Load reads account id's state and its revision (0: never written) from
// the state stream's leader. A KV Get would do a direct get, which any
// replica may answer from behind the leader; a stale read here would only
// cost a refused write, but the checker's final read must be exact.
func Load(ctx context.Context, nc *nats.Conn, id string) (State, uint64, error) {
	m, err := jetstream.LeaderGet(ctx, nc, "KV_"+StateBucket, jetstream.GetRequest{LastBySubject: "$KV." + StateBucket + "." + Key(id)})
	if errors.Is(err, jetstream.ErrNotFound) {
		return State{}, 0, nil
	}
	if err != nil {
		return State{}, 0, fmt.Errorf("load %s: %w", id, err)
	}
	st, err := Decode(m.Data)
	if err != nil {
		return State{}, 0, fmt.Errorf("load %s: %w", id, err)
	}
	return st, m.Seq, nil
}
