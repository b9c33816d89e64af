package compiler

import (
	"slices"
	"strconv"
	"strings"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// selectors caches parsed label selectors by their content. Parsing validates every key
// and value with regular expressions, and the same few selectors recur across the
// policies of a cluster (every Deployment's pods carry the same labels, and policies
// repeat them): the agent's first sync parses every policy twice (the engine's and
// Validate's), 20k parses at 100k pods. A labels.Selector is never modified, so one
// value serves every policy with the same selector.
var selectors = struct {
	sync.Mutex
	m map[string]selectorResult
}{m: map[string]selectorResult{}}

type selectorResult struct {
	sel labels.Selector
	err error
}

// maxCachedSelectors bounds the cache; when full it starts over.
const maxCachedSelectors = 1 << 14

// selectorOf is metav1.LabelSelectorAsSelector, cached.
func selectorOf(ls *metav1.LabelSelector) (labels.Selector, error) {
	if ls == nil {
		return metav1.LabelSelectorAsSelector(ls)
	}
	key := selectorKey(ls)
	selectors.Lock()
	r, ok := selectors.m[key]
	selectors.Unlock()
	if ok {
		return r.sel, r.err
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	selectors.Lock()
	if len(selectors.m) >= maxCachedSelectors {
		clear(selectors.m)
	}
	selectors.m[key] = selectorResult{sel, err}
	selectors.Unlock()
	return sel, err
}

// selectorKey encodes a selector's content injectively: every string is prefixed with
// its length, so no content can pass for another (invalid selectors included, whose
// error is cached too). matchLabels are sorted (a map); matchExpressions keep their
// order, as parsing does.
func selectorKey(ls *metav1.LabelSelector) string {
	var b strings.Builder
	put := func(s string) {
		b.WriteString(strconv.Itoa(len(s)))
		b.WriteByte(':')
		b.WriteString(s)
	}
	keys := make([]string, 0, len(ls.MatchLabels))
	for k := range ls.MatchLabels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b.WriteString("L")
	b.WriteString(strconv.Itoa(len(keys)))
	for _, k := range keys {
		put(k)
		put(ls.MatchLabels[k])
	}
	b.WriteString("E")
	b.WriteString(strconv.Itoa(len(ls.MatchExpressions)))
	for _, e := range ls.MatchExpressions {
		put(e.Key)
		put(string(e.Operator))
		b.WriteString(strconv.Itoa(len(e.Values)))
		for _, v := range e.Values {
			put(v)
		}
	}
	return b.String()
}
