package testns

import (
	"fmt"
	"testing"
)

// recordingTB records which of Skipf and Fatalf was called, with the message.
type recordingTB struct{ skipped, fatal string }

func (r *recordingTB) Helper()                           {}
func (r *recordingTB) Skipf(format string, args ...any)  { r.skipped = fmt.Sprintf(format, args...) }
func (r *recordingTB) Fatalf(format string, args ...any) { r.fatal = fmt.Sprintf(format, args...) }

func TestSkipUnlessRequired(t *testing.T) {
	for _, tc := range []struct {
		ci, require string
		wantFatal   bool
	}{
		{"", "", false},
		{"false", "0", false},
		{"true", "", true},
		{"", "1", true},
		{"no", "", false}, // not a boolean: not required
	} {
		t.Run(fmt.Sprintf("CI=%q,%s=%q", tc.ci, RequireEnv, tc.require), func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			t.Setenv(RequireEnv, tc.require)
			var r recordingTB
			SkipUnlessRequired(&r, "no %s here", "nft")
			if Required() != tc.wantFatal {
				t.Errorf("Required() = %v, want %v", Required(), tc.wantFatal)
			}
			switch {
			case tc.wantFatal && (r.skipped != "" || r.fatal != "required (CI=true or NFTPOLICY_REQUIRE_KERNEL=1), cannot run: no nft here"):
				t.Errorf("want a failure naming the requirement, got skip %q fatal %q", r.skipped, r.fatal)
			case !tc.wantFatal && (r.fatal != "" || r.skipped != "no nft here"):
				t.Errorf("want a skip, got skip %q fatal %q", r.skipped, r.fatal)
			}
		})
	}
}
