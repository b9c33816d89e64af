package main

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestMetricsServerOptions(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"tls.crt", "tls.key"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("secure, self-signed", func(t *testing.T) {
		o, err := metricsTLS{secure: true, certName: "tls.crt", keyName: "tls.key"}.serverOptions(":9090")
		if err != nil {
			t.Fatal(err)
		}
		if !o.SecureServing || o.FilterProvider == nil || o.BindAddress != ":9090" || o.CertDir != "" {
			t.Errorf("options %+v: want HTTPS with the authentication and authorization filter, no certificate directory", o)
		}
		cfg := &tls.Config{NextProtos: []string{"h2"}} // controller-runtime's starting point
		for _, f := range o.TLSOpts {
			f(cfg)
		}
		if !slices.Equal(cfg.NextProtos, []string{"http/1.1"}) {
			t.Errorf("ALPN %v, want http/1.1 only", cfg.NextProtos)
		}
	})
	t.Run("secure, certificate directory", func(t *testing.T) {
		o, err := metricsTLS{secure: true, certDir: dir, certName: "tls.crt", keyName: "tls.key"}.serverOptions(":9090")
		if err != nil {
			t.Fatal(err)
		}
		if o.CertDir != dir || o.CertName != "tls.crt" || o.KeyName != "tls.key" {
			t.Errorf("certificate %s/%s, key %s: want the given ones", o.CertDir, o.CertName, o.KeyName)
		}
	})
	t.Run("secure, missing key", func(t *testing.T) {
		_, err := metricsTLS{secure: true, certDir: dir, certName: "tls.crt", keyName: "other.key"}.serverOptions(":9090")
		if err == nil || !strings.Contains(err.Error(), "other.key") {
			t.Errorf("error %v, want one naming the missing key (no silent self-signed fallback)", err)
		}
	})
	t.Run("plain", func(t *testing.T) {
		o, err := metricsTLS{}.serverOptions(":9090")
		if err != nil {
			t.Fatal(err)
		}
		if o.SecureServing || o.FilterProvider != nil {
			t.Errorf("options %+v: want plain HTTP without a filter", o)
		}
	})
	t.Run("plain with a certificate", func(t *testing.T) {
		if _, err := (metricsTLS{certDir: dir}).serverOptions(":9090"); err == nil {
			t.Error("a certificate directory without --metrics-secure is accepted")
		}
	})
}
