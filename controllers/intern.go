package controllers

import (
	"sort"
	"strings"
	"sync"
)

// interner shares one map among cached objects whose maps are equal. The pods of a
// Deployment carry identical labels (and named ports), so a cluster of 50k pods holds a
// few thousand distinct label sets: sharing them saves a map per pod (about 300 bytes,
// a sixth of a cached pod). Cached objects are never modified, which is what makes the
// sharing safe.
type interner struct {
	mu sync.Mutex
	m  map[string]map[string]string
	// max bounds the table: when full it starts over. Maps handed out before stay
	// valid; only the sharing with later objects is lost.
	max int
}

func newInterner(max int) *interner { return &interner{m: map[string]map[string]string{}, max: max} }

// intern returns a map equal to m, shared with earlier calls where possible.
func (in *interner) intern(m map[string]string) map[string]string {
	if len(m) == 0 {
		return m
	}
	key := canonical(m)
	in.mu.Lock()
	defer in.mu.Unlock()
	if shared, ok := in.m[key]; ok {
		return shared
	}
	if len(in.m) >= in.max {
		clear(in.m)
	}
	in.m[key] = m
	return m
}

// canonical is a string that equal maps, and only they, share.
func canonical(m map[string]string) string {
	keys := make([]string, 0, len(m))
	n := 0
	for k, v := range m {
		keys = append(keys, k)
		n += len(k) + len(v) + 2
	}
	sort.Strings(keys)
	var b strings.Builder
	b.Grow(n)
	for _, k := range keys {
		// Keys and values cannot contain NUL: it separates them unambiguously.
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(m[k])
		b.WriteByte(0)
	}
	return b.String()
}

// sliceInterner shares one slice among cached objects whose slices are equal, as
// interner does for maps; the caller supplies the key that equal slices share.
type sliceInterner[T any] struct {
	mu  sync.Mutex
	m   map[string][]T
	max int
}

func newSliceInterner[T any](max int) *sliceInterner[T] {
	return &sliceInterner[T]{m: map[string][]T{}, max: max}
}

// intern returns a slice equal to s (key identifies its contents), shared with earlier
// calls where possible.
func (in *sliceInterner[T]) intern(key string, s []T) []T {
	in.mu.Lock()
	defer in.mu.Unlock()
	if shared, ok := in.m[key]; ok {
		return shared
	}
	if len(in.m) >= in.max {
		clear(in.m)
	}
	in.m[key] = s
	return s
}
