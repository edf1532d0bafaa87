package model

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestStateWith(t *testing.T) {
	tests := []struct {
		seqs []int64
		want [][2]int64
	}{
		{nil, nil},
		{[]int64{1, 2, 3}, [][2]int64{{1, 3}}},
		{[]int64{3, 1, 2}, [][2]int64{{1, 3}}},
		{[]int64{1, 3, 5}, [][2]int64{{1, 1}, {3, 3}, {5, 5}}},
		{[]int64{5, 1, 3, 4}, [][2]int64{{1, 1}, {3, 5}}},
	}
	for _, tt := range tests {
		var s State
		for _, seq := range tt.seqs {
			prev := s
			s = s.With(seq)
			if prev.Has(seq) || !s.Has(seq) {
				t.Fatalf("With(%d) on %v: Has before %v, after %v", seq, prev.Applied, prev.Has(seq), s.Has(seq))
			}
		}
		if !reflect.DeepEqual(s.Applied, tt.want) || s.Deposits() != int64(len(tt.seqs)) {
			t.Fatalf("applying %v = %v (%d), want %v (%d)", tt.seqs, s.Applied, s.Deposits(), tt.want, len(tt.seqs))
		}
		if got, err := Decode(Encode(s)); err != nil || !reflect.DeepEqual(got, s) {
			t.Fatalf("Decode(Encode(%v)) = %v, %v", s, got, err)
		}
	}
}

func TestRecordsRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.log")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(0, time.Now().UnixNano())
	in := []Record{
		{Kind: Activated, Start: now, Addr: "a-1"},
		{Kind: Handled, Start: now, End: now.Add(time.Millisecond), Addr: "id with\ttab \"q\"", Op: "Deposit", Arg: 7, Outcome: OK, Value: 3, Rev: 42},
		{Kind: Deactivated, Start: now, Addr: "a-1", Op: "partition closed"},
	}
	for _, r := range in {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Read(bytes.NewReader(b))
	if err != nil || !reflect.DeepEqual(out, in) {
		t.Fatalf("Read = %+v, %v; want %+v", out, err, in)
	}
	if _, err := Read(bytes.NewReader([]byte("A\t1\n"))); err == nil {
		t.Fatal("Read of a truncated record: want an error")
	}
}
