package compiler

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestSelectorOfIsLabelSelectorAsSelector: the cached parse gives what the uncached one
// gives (selector or error), on first use and from the cache, and selectors whose
// contents differ only in how their strings split never share an entry.
func TestSelectorOfIsLabelSelectorAsSelector(t *testing.T) {
	sels := []*metav1.LabelSelector{
		nil,
		{},
		{MatchLabels: map[string]string{"a": "bc"}},
		{MatchLabels: map[string]string{"ab": "c"}},
		{MatchLabels: map[string]string{"a": "b", "c": "d"}},
		{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: metav1.LabelSelectorOpIn, Values: []string{"b", "c"}}}},
		{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: metav1.LabelSelectorOpIn, Values: []string{"bc"}}}},
		{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: metav1.LabelSelectorOpExists}}},
		{MatchLabels: map[string]string{"bad key!": "x"}},
		{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Bogus"}}},
	}
	keys := map[string]int{}
	for i, ls := range sels {
		want, wantErr := metav1.LabelSelectorAsSelector(ls)
		for pass := range 2 {
			got, err := selectorOf(ls)
			if (err != nil) != (wantErr != nil) || err != nil && err.Error() != wantErr.Error() {
				t.Fatalf("%d (pass %d): error %v, want %v", i, pass, err, wantErr)
			}
			if err == nil && got.String() != want.String() {
				t.Errorf("%d (pass %d): %q, want %q", i, pass, got.String(), want.String())
			}
		}
		if ls == nil {
			continue
		}
		k := selectorKey(ls)
		if j, ok := keys[k]; ok {
			t.Errorf("selectors %d and %d share the key %q", j, i, k)
		}
		keys[k] = i
	}
}
