package mesh

import "sync"

// seqSet remembers the last n stream sequences added (FIFO).
type seqSet struct {
	mu   sync.Mutex
	set  map[uint64]struct{}
	fifo []uint64
	next int
	max  int
}

func newSeqSet(n int) *seqSet { return &seqSet{set: map[uint64]struct{}{}, max: n} }

func (s *seqSet) add(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.set[seq]; ok {
		return
	}
	if len(s.fifo) < s.max {
		s.fifo = append(s.fifo, seq)
	} else {
		delete(s.set, s.fifo[s.next])
		s.fifo[s.next] = seq
		s.next = (s.next + 1) % len(s.fifo)
	}
	s.set[seq] = struct{}{}
}

func (s *seqSet) has(seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.set[seq]
	return ok
}
