package controllers

import (
	"fmt"
	"reflect"
	"testing"
)

func TestInternerSharesEqualMaps(t *testing.T) {
	in := newInterner(3)
	a := in.intern(map[string]string{"app": "web", "tier": "1"})
	b := in.intern(map[string]string{"tier": "1", "app": "web"})
	if reflect.ValueOf(a).Pointer() != reflect.ValueOf(b).Pointer() {
		t.Error("equal maps are not shared")
	}
	// Keys and values that concatenate alike must not collide.
	c := in.intern(map[string]string{"app": "webtier", "": "1"})
	d := in.intern(map[string]string{"ap": "pweb", "tier": "1"})
	for _, m := range []map[string]string{c, d} {
		if reflect.ValueOf(m).Pointer() == reflect.ValueOf(a).Pointer() {
			t.Errorf("%v shared with %v", m, a)
		}
	}
	if got := in.intern(nil); got != nil {
		t.Errorf("nil map interned as %v", got)
	}
	// The table is bounded: full, it starts over, and the maps handed out stay intact.
	for i := range 10 {
		in.intern(map[string]string{"n": fmt.Sprint(i)})
	}
	if len(in.shared.m) > 3 {
		t.Errorf("table holds %d maps, bound 3", len(in.shared.m))
	}
	if a["app"] != "web" || a["tier"] != "1" || len(a) != 2 {
		t.Errorf("a shared map changed: %v", a)
	}
}
