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
	shared *keyedInterner[map[string]string]
}

func newInterner(max int) *interner {
	return &interner{shared: newKeyedInterner[map[string]string](max)}
}

// intern returns a map equal to m, shared with earlier calls where possible.
func (in *interner) intern(m map[string]string) map[string]string {
	if len(m) == 0 {
		return m
	}
	return in.shared.intern(canonical(m), m)
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

// keyedInterner shares one value among those whose key is equal (the caller's key
// identifies the contents): the table behind interner (maps) and the pods' port lists.
type keyedInterner[V any] struct {
	mu sync.Mutex
	m  map[string]V
	// max bounds the table: when full it starts over. Values handed out before stay
	// valid; only the sharing with later objects is lost.
	max int
}

func newKeyedInterner[V any](max int) *keyedInterner[V] {
	return &keyedInterner[V]{m: map[string]V{}, max: max}
}

// intern returns a value equal to v (key identifies its contents), shared with earlier
// calls where possible.
func (in *keyedInterner[V]) intern(key string, v V) V {
	in.mu.Lock()
	defer in.mu.Unlock()
	if shared, ok := in.m[key]; ok {
		return shared
	}
	if len(in.m) >= in.max {
		clear(in.m)
	}
	in.m[key] = v
	return v
}
