package bench

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	cnp "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/controllers"
	"github.com/nftpolicy/nftpolicy/internal/testns"
	"github.com/nftpolicy/nftpolicy/test/lab"
)

func TestLinearFit(t *testing.T) {
	s, b := linearFit([]float64{25, 50, 100, 200}, []float64{1 + 0.01*25, 1 + 0.01*50, 1 + 0.01*100, 1 + 0.01*200})
	if math.Abs(s-0.01) > 1e-12 || math.Abs(b-1) > 1e-9 {
		t.Errorf("linearFit = %v, %v; want 0.01, 1", s, b)
	}
	if s, b := linearFit([]float64{3, 3}, []float64{1, 2}); s != 0 || b != 1.5 {
		t.Errorf("constant x: %v, %v", s, b)
	}
}

func TestRequestKind(t *testing.T) {
	for url, want := range map[string]string{
		"/api/v1/pods?watch=true&sendInitialEvents=true":                              "pods watch",
		"/api/v1/pods?limit=500":                                                      "pods list",
		"/apis/networking.k8s.io/v1/networkpolicies?allowWatchBookmarks=true&watch=1": "networkpolicies watch",
		"/api/v1/namespaces/ns/pods?watch=true":                                       "pods watch",
		"/apis/policy.networking.k8s.io/v1beta1/clusternetworkpolicies?watch=true":    "clusternetworkpolicies watch",
		"/apis/networking.k8s.io/v1":                                                  "discovery get",
		"/api":                                                                        "discovery get",
	} {
		r := httptest.NewRequest(http.MethodGet, url, nil)
		if got := requestKind(r); got != want {
			t.Errorf("%s: %q, want %q", url, got, want)
		}
	}
}

func TestFitSlopes(t *testing.T) {
	// 2 µs of API server CPU per (event × watcher) over 1 ms per event; 100 KB per
	// watcher; agents of 1 MB + 2 KB per pod.
	var pts []FanoutPoint
	for _, pods := range []int{1000, 5000} {
		for _, n := range []int{25, 100} {
			pts = append(pts, FanoutPoint{Impl: FanoutNFTProtobuf, Pods: pods, Clients: n,
				ChurnWrites: 400, ChurnAPICPUms: 500 * (1 + 0.002*float64(n)),
				APIRSSBefore: 1e8, APIRSSAfter: 1e8 + int64(n)*1e5, APIHeapBefore: 5e7, APIHeapAfter: 5e7 + int64(n)*4e4,
				HeapBefore: 1e7, HeapAfter: 1e7 + uint64(n)*(1e6+uint64(pods)*2000),
				PodEvents: 500, PodWatchBytes: 500 * 1500, ChurnConnBytes: 500 * 1600})
		}
	}
	r := &FanoutReport{Points: pts, Slopes: fitSlopes(pts)}
	check := func(name string, want float64) {
		t.Helper()
		s, ok := r.slope(FanoutNFTProtobuf, name, 0)
		if !ok || math.Abs(s.Value-want) > want*1e-6 {
			t.Errorf("%s = %+v (found %v), want %v", name, s, ok, want)
		}
	}
	check(slopeAPICPU, 2)
	check(slopeAPICPUBase, 1)
	check(slopeAPIRSS, 1e5)
	check(slopeAPIHeap, 4e4)
	check(slopeEventBytes, 1500)
	check(slopeEventWire, 1600)
	check(slopeAgentHeap, 2000)
	check(slopeAgentHeapFix, 1e6)
	if s, _ := r.slope(FanoutNFTProtobuf, slopeAPICPU, 0); s.Pods != 5000 {
		t.Errorf("the largest size is reported: %+v", s)
	}
}

func TestParseHeapAlloc(t *testing.T) {
	prof := "heap profile: 1: 2 [3: 4] @ heap/1048576\n# runtime.MemStats\n# Alloc = 123\n# TotalAlloc = 999\n# HeapAlloc = 123456\n# HeapSys = 7\n"
	if v, err := parseHeapAlloc(prof); err != nil || v != 123456 {
		t.Errorf("parseHeapAlloc = %v, %v", v, err)
	}
	if _, err := parseHeapAlloc("nothing"); err == nil {
		t.Error("a profile without HeapAlloc accepted")
	}
}

func TestBuiltinProtobuf(t *testing.T) {
	pb := map[string]int64{"application/vnd.kubernetes.protobuf;stream=watch": 1}
	r := &FanoutReport{Wire: map[string]wireStream{
		"pods watch": {ContentTypes: pb}, "namespaces watch": {ContentTypes: pb}, "nodes watch": {ContentTypes: pb},
		"networkpolicies watch": {ContentTypes: map[string]int64{"application/json;stream=watch": 1}},
	}}
	if n, detail := r.builtinProtobuf(); n != 3 || !strings.Contains(detail, "networkpolicies: application/json;stream=watch") {
		t.Errorf("builtinProtobuf = %d, %q", n, detail)
	}
}

// startEnvtest starts an API server from bin/k8s (or $KUBEBUILDER_ASSETS) with the
// chart's ClusterNetworkPolicy CRD installed.
func startEnvtest(t *testing.T) *envtest.Environment {
	t.Helper()
	dir, err := lab.ControlPlaneDir("")
	if err != nil {
		testns.SkipUnlessRequired(t, "no control plane: %v", err)
	}
	root, err := lab.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{BinaryAssetsDirectory: dir,
		CRDInstallOptions: envtest.CRDInstallOptions{Paths: []string{filepath.Join(root, lab.CNPCRDFile("standard"))}, ErrorIfPathMissing: true}}
	if _, err := env.Start(); err != nil {
		t.Fatalf("starting the API server: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping the API server: %v", err)
		}
	})
	return env
}

// TestAgentWireFormat checks on the wire what the agent's manager receives: its cache
// options (controllers.CacheOptions, what cmd/nftpolicy-agent passes) over a
// rest.Config without ContentType, as kubeconfigs and the in-cluster configuration
// give it. Pods, Namespaces, Nodes and NetworkPolicies must arrive as protobuf, the
// ClusterNetworkPolicy CRD as JSON (it has no protobuf form) and still be decoded.
// The same with ContentType JSON (the fan-out's baseline) must show JSON, so that the
// meter is seen to tell them apart.
func TestAgentWireFormat(t *testing.T) {
	env := startEnvtest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "wire-node"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.NetworkingV1().NetworkPolicies("default").Create(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "wire"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	scheme, err := fanScheme()
	if err != nil {
		t.Fatal(err)
	}
	k8s, err := client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, &cnp.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "wire"},
		Spec: cnp.ClusterNetworkPolicySpec{Tier: cnp.AdminTier, Priority: 10,
			Subject: cnp.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}}}}); err != nil {
		t.Fatalf("creating a ClusterNetworkPolicy: %v", err)
	}

	for _, tc := range []struct {
		name        string
		contentType string // of the rest.Config
		builtin     string // the watch responses of the built-in kinds
	}{
		{"agent (ContentType unset)", "", "application/vnd.kubernetes.protobuf;stream=watch"},
		{"ContentType JSON", "application/json", "application/json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newWireMeter()
			cfg := m.instrument(env.Config)
			cfg.ContentType = tc.contentType
			mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme, Logger: logr.Discard(),
				Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
				Cache: controllers.CacheOptions(logr.Discard())})
			if err != nil {
				t.Fatal(err)
			}
			mctx, stop := context.WithCancel(ctx)
			defer stop()
			var policies, pods toolscache.Store
			for _, obj := range []client.Object{&corev1.Pod{}, &corev1.Namespace{}, &corev1.Node{}, &networkingv1.NetworkPolicy{}, &cnp.ClusterNetworkPolicy{}} {
				inf, err := mgr.GetCache().GetInformer(mctx, obj)
				if err != nil {
					t.Fatalf("informer for %T: %v", obj, err)
				}
				switch obj.(type) {
				case *cnp.ClusterNetworkPolicy:
					policies = inf.(toolscache.SharedIndexInformer).GetStore()
				case *corev1.Pod:
					pods = inf.(toolscache.SharedIndexInformer).GetStore()
				}
			}
			done := make(chan error, 1)
			go func() { done <- mgr.Start(mctx) }()
			defer func() {
				stop()
				if err := <-done; err != nil {
					t.Errorf("manager: %v", err)
				}
			}()
			if !mgr.GetCache().WaitForCacheSync(mctx) {
				t.Fatal("caches did not sync")
			}
			if len(policies.List()) != 1 {
				t.Fatalf("the ClusterNetworkPolicy was not decoded: %d in the cache", len(policies.List()))
			}
			// A pod event on the open watch, then read the headers.
			name := "wire-" + strings.ToLower(strings.ReplaceAll(tc.name[:5], " ", ""))
			if _, err := cs.CoreV1().Pods("default").Create(ctx, fanPod(name, "default", "wire-node", 1), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(30 * time.Second)
			for {
				if _, ok, _ := pods.GetByKey("default/" + name); ok {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the pod never reached the cache")
				}
				time.Sleep(10 * time.Millisecond) // polling the store: it has no notification to await here
			}
			if m.Body("pods watch") == 0 {
				t.Error("no pod watch bytes counted")
			}
			for _, res := range []string{"pods", "namespaces", "nodes", "networkpolicies"} {
				if got := m.ContentTypes(res + " watch"); len(got) != 1 || got[0] != tc.builtin {
					t.Errorf("%s watch: Content-Type %v, want %s", res, got, tc.builtin)
				}
			}
			if got := m.ContentTypes("clusternetworkpolicies watch"); len(got) != 1 || !strings.HasPrefix(got[0], "application/json") {
				t.Errorf("clusternetworkpolicies watch: Content-Type %v, want JSON", got)
			}
			t.Logf("received: %+v", m.Snapshot())
		})
	}
}

// TestSmokeFanout runs the fan-out group at its tiny size: a few emulated agents of
// every implementation, two cluster sizes, a few pod lifecycles. It needs root (the
// lab's API server) and takes about half a minute.
func TestSmokeFanout(t *testing.T) {
	lab.SkipUnlessCluster(t)
	out := t.TempDir()
	opts := &Options{Profile: TinyProfile(), Groups: []string{GroupFanout}, OutDir: out, Progress: lab.TestLog(t)}
	rep := runLogged(t, opts)
	f := rep.Fanout
	want := 0
	for _, cs := range opts.Profile.Fanout.Clients {
		want += len(cs) * len(opts.Profile.Fanout.Pods)
	}
	if f == nil || len(f.Points) != want {
		t.Fatalf("want %d points, got %+v", want, f)
	}
	for _, p := range f.Points {
		// Five events per lifecycle of four writes.
		if p.PodEvents != float64(opts.Profile.Fanout.ChurnWrites)*5/4 || p.PodWatchBytes == 0 || p.StartConnBytes == 0 || p.ChurnAPICPUms < 0 {
			t.Errorf("point %s × %d at %d pods: %+v", p.Impl, p.Clients, p.Pods, p)
		}
		wantCT := "application/vnd.kubernetes.protobuf;stream=watch"
		if p.Impl == FanoutNFTJSON {
			wantCT = "application/json"
		}
		if got := p.ContentTypes["pods watch"]; len(got) != 1 || got[0] != wantCT {
			t.Errorf("%s: pods watch Content-Type %v, want %s", p.Impl, got, wantCT)
		}
	}
	for _, tg := range rep.Targets {
		if !strings.HasPrefix(tg.Name, "fan-out") {
			continue
		}
		if tg.Missing {
			t.Errorf("target %q was not measured", tg.Name)
		}
		if strings.Contains(tg.Name, "protobuf (of 4)") && !tg.Pass {
			t.Errorf("%s: %v (%s)", tg.Name, tg.Value, tg.Detail)
		}
	}
	pb, _ := f.slope(FanoutNFTProtobuf, slopeEventBytes, 0)
	js, _ := f.slope(FanoutNFTJSON, slopeEventBytes, 0)
	if pb.Value <= 0 || pb.Value >= js.Value {
		t.Errorf("bytes per pod event: protobuf %v, JSON %v", pb.Value, js.Value)
	}
	if _, err := os.Stat(filepath.Join(out, "fanout-logs", "kube-apiserver.log")); err != nil {
		t.Errorf("the fan-out's API server log: %v", err)
	}
}
