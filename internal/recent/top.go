package recent

import (
	"cmp"
	"hash/maphash"
	"slices"
)

// top counts the most frequent keys in a fixed number of slots (Metwally,
// Agrawal and El Abbadi's space-saving algorithm): a key not in a slot
// takes the one with the lowest count, inheriting that count, so a key
// counted n times is in a slot whenever n exceeds the total divided by the
// number of slots, and its count is never below its true count.
//
// The slots are scanned rather than indexed by a map, comparing hashes
// first: with a few dozen slots a scan costs little more than a map
// look-up, and a map whose keys keep changing would allocate as it
// rehashes.
type top[K comparable] struct {
	seed   maphash.Seed
	slots  []Count[K]
	hashes []uint64 // hashes[i] is slots[i].Key's
}

func newTop[K comparable](n int) top[K] {
	return top[K]{seed: maphash.MakeSeed(), slots: make([]Count[K], 0, n), hashes: make([]uint64, 0, n)}
}

// add counts one more of k.
func (t *top[K]) add(k K) {
	h := maphash.Comparable(t.seed, k)
	low, lowCount := -1, uint64(0)
	for i, sh := range t.hashes {
		s := &t.slots[i]
		if sh == h && s.Key == k {
			s.Count++
			return
		}
		if low < 0 || s.Count < lowCount {
			low, lowCount = i, s.Count
		}
	}
	if len(t.slots) < cap(t.slots) {
		t.slots = append(t.slots, Count[K]{Key: k, Count: 1})
		t.hashes = append(t.hashes, h)
		return
	}
	s := &t.slots[low]
	*s = Count[K]{Key: k, Count: s.Count + 1, Over: s.Count}
	t.hashes[low] = h
}

// sorted returns a copy of the slots, the highest count first, ties in
// the order of their guaranteed count.
func (t *top[K]) sorted() []Count[K] {
	out := slices.Clone(t.slots)
	slices.SortStableFunc(out, func(a, b Count[K]) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(b.Count-b.Over, a.Count-a.Over))
	})
	return out
}
