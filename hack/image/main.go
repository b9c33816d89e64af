// Command image builds a single-layer container image from static binaries without a
// container engine and writes it as an OCI image-layout archive (or a docker-archive)
// that `ctr images import`, `skopeo copy oci-archive:…` and `docker load` read.
//
// The layer is what `FROM gcr.io/distroless/static-debian12` plus `COPY` gives the
// Dockerfile, cut to what a static binary uses: /etc/passwd and /etc/group with root,
// nobody and nonroot (65532), /etc/nsswitch.conf, a world-writable /tmp, the host's CA
// bundle when there is one, and the files given with -file. Every entry has a fixed
// owner and modification time, so the same inputs give the same digest.
//
//	image -ref docker.io/nftpolicy/agent:dev -file bin/nftpolicy-agent:/nftpolicy-agent \
//	      -entrypoint /nftpolicy-agent -label org.opencontainers.image.title=nftpolicy-agent \
//	      -out _out/image/nftpolicy-agent.oci.tar
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type options struct {
	ref        string
	out        string
	format     string
	files      listFlag
	layers     listFlag
	labels     listFlag
	env        listFlag
	entrypoint listFlag
	cmd        listFlag
	user       string
	workdir    string
	created    time.Time
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	var o options
	fs.StringVar(&o.ref, "ref", "", "image reference to name the image with, e.g. docker.io/nftpolicy/agent:dev (required)")
	fs.StringVar(&o.out, "out", "", "archive to write (required)")
	fs.StringVar(&o.format, "format", "oci", "archive format: oci (OCI image layout) or docker (docker save)")
	fs.Var(&o.files, "file", "SRC:DEST[:MODE] a file to put in the image (repeatable); MODE is octal, default 0755")
	fs.Var(&o.layers, "layer", "TAR a root file system tar to put under the files, e.g. from mmdebstrap (repeatable, bottom first); with it the image is that system plus -file, without the distroless-like base")
	fs.Var(&o.labels, "label", "KEY=VALUE image label (repeatable)")
	fs.Var(&o.env, "env", "KEY=VALUE environment variable (repeatable); PATH is always set")
	fs.Var(&o.entrypoint, "entrypoint", "entrypoint argument (repeatable, in order)")
	fs.Var(&o.cmd, "cmd", "default argument after the entrypoint (repeatable, in order)")
	fs.StringVar(&o.user, "user", "0:0", "user (UID:GID) the entrypoint runs as")
	fs.StringVar(&o.workdir, "workdir", "/", "working directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (a flag value with a space needs quoting)", fs.Arg(0))
	}
	if o.ref == "" || o.out == "" || len(o.files) == 0 {
		fs.Usage()
		return errors.New("-ref, -out and at least one -file are required")
	}
	for _, l := range o.layers {
		if _, err := os.Stat(l); err != nil {
			return fmt.Errorf("-layer: %w", err)
		}
	}
	if o.format != "oci" && o.format != "docker" {
		return fmt.Errorf("-format %q: want oci or docker", o.format)
	}
	// SOURCE_DATE_EPOCH (reproducible-builds.org) dates the image; default the epoch.
	o.created = time.Unix(0, 0).UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", s, err)
		}
		o.created = time.Unix(sec, 0).UTC()
	}
	ref, err := name.ParseReference(o.ref)
	if err != nil {
		return fmt.Errorf("-ref %q: %w", o.ref, err)
	}
	img, err := build(&o)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return err
	}
	if o.format == "docker" {
		tag, ok := ref.(name.Tag)
		if !ok {
			return fmt.Errorf("-ref %q: a docker archive needs a tag, not a digest", o.ref)
		}
		if err := tarball.WriteToFile(o.out, tag, img); err != nil {
			return fmt.Errorf("writing %s: %w", o.out, err)
		}
	} else if err := writeOCIArchive(o.out, ref, img); err != nil {
		return fmt.Errorf("writing %s: %w", o.out, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s\n", o.out, containerdName(ref), digest)
	return nil
}

func build(o *options) (v1.Image, error) {
	layerTar, err := layerContents(o)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("compressing the layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, path := range o.layers {
		base, err := tarball.LayerFromFile(path, tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.BestSpeed))
		if err != nil {
			return nil, fmt.Errorf("-layer %s: %w", path, err)
		}
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:     base,
			History:   v1.History{Created: v1.Time{Time: o.created}, CreatedBy: "hack/image -layer", Comment: filepath.Base(path)},
			MediaType: types.OCILayer,
		})
		if err != nil {
			return nil, fmt.Errorf("appending -layer %s: %w", path, err)
		}
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		History:   v1.History{Created: v1.Time{Time: o.created}, CreatedBy: "hack/image", Comment: "static binary on a distroless-like base"},
		MediaType: types.OCILayer,
	})
	if err != nil {
		return nil, fmt.Errorf("appending the layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS = "linux"
	cfg.Architecture = runtime.GOARCH
	cfg.Created = v1.Time{Time: o.created}
	cfg.Config.Entrypoint = o.entrypoint
	cfg.Config.Cmd = o.cmd
	cfg.Config.User = o.user
	cfg.Config.WorkingDir = o.workdir
	cfg.Config.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, o.env...)
	cfg.Config.Labels = map[string]string{}
	for _, l := range o.labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("-label %q: want KEY=VALUE", l)
		}
		cfg.Config.Labels[k] = v
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("setting the image config: %w", err)
	}
	return mutate.CreatedAt(img, v1.Time{Time: o.created})
}

func distrolessBase() map[string]entry {
	entries := map[string]entry{
		"etc":               {mode: fs.ModeDir | 0o755},
		"etc/passwd":        {mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		"etc/group":         {mode: 0o644, data: []byte("root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n")},
		"etc/nsswitch.conf": {mode: 0o644, data: []byte("hosts: files dns\n")},
		"home":              {mode: fs.ModeDir | 0o755},
		"home/nonroot":      {mode: fs.ModeDir | 0o700},
		"root":              {mode: fs.ModeDir | 0o700},
		"tmp":               {mode: fs.ModeDir | fs.ModeSticky | 0o777},
		// Mount points the runtime fills; present so a read-only root needs no mkdir.
		"dev":  {mode: fs.ModeDir | 0o755},
		"proc": {mode: fs.ModeDir | 0o755},
		"sys":  {mode: fs.ModeDir | 0o755},
	}
	if ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		entries["etc/ssl"] = entry{mode: fs.ModeDir | 0o755}
		entries["etc/ssl/certs"] = entry{mode: fs.ModeDir | 0o755}
		entries["etc/ssl/certs/ca-certificates.crt"] = entry{mode: 0o644, data: ca}
	}
	return entries
}

// entry is one file or directory of the layer.
type entry struct {
	mode fs.FileMode // permission bits; fs.ModeDir for directories
	data []byte
}

func layerContents(o *options) ([]byte, error) {
	entries := map[string]entry{}
	if len(o.layers) == 0 {
		entries = distrolessBase()
	}
	for _, f := range o.files {
		parts := strings.Split(f, ":")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || !strings.HasPrefix(parts[1], "/") {
			return nil, fmt.Errorf("-file %q: want SRC:/DEST[:MODE]", f)
		}
		mode := fs.FileMode(0o755)
		if len(parts) == 3 {
			m, err := strconv.ParseUint(parts[2], 8, 32)
			if err != nil {
				return nil, fmt.Errorf("-file %q: mode: %w", f, err)
			}
			mode = fs.FileMode(m)
		}
		data, err := os.ReadFile(parts[0])
		if err != nil {
			return nil, fmt.Errorf("-file %q: %w", f, err)
		}
		dest := strings.TrimPrefix(path.Clean(parts[1]), "/")
		for dir := path.Dir(dest); dir != "."; dir = path.Dir(dir) {
			if _, ok := entries[dir]; !ok {
				entries[dir] = entry{mode: fs.ModeDir | 0o755}
			}
		}
		entries[dest] = entry{mode: mode, data: data}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names) // parents sort before their children
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := entries[n]
		h := &tar.Header{Name: n, Mode: int64(e.mode.Perm()), ModTime: o.created, Format: tar.FormatPAX}
		if e.mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		if e.mode.IsDir() {
			h.Typeflag, h.Name = tar.TypeDir, n+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if n == "home/nonroot" {
			h.Uid, h.Gid = 65532, 65532
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeOCIArchive writes img as a tar of an OCI image layout. The manifest carries both
// the OCI ref-name annotation (the tag) and containerd's image-name annotation (the full
// reference), which `ctr images import` names the image by.
func writeOCIArchive(out string, ref name.Reference, img v1.Image) error {
	dir, err := os.MkdirTemp(filepath.Dir(out), ".oci-layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	annotations := map[string]string{
		"io.containerd.image.name":          containerdName(ref),
		"org.opencontainers.image.ref.name": ref.Identifier(),
	}
	if err := p.AppendImage(img, layout.WithAnnotations(annotations)); err != nil {
		return err
	}
	return tarDir(dir, out)
}

// tarDir writes the regular files and directories under dir into a tar at out, in
// name order with fixed metadata.
func tarDir(dir, out string) error {
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if d.IsDir() {
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
			return tw.WriteHeader(h)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		h.Typeflag, h.Size = tar.TypeReg, int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err != nil {
		f.Close()
		return err
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// containerdName is the reference as containerd and the kubelet spell it: Docker Hub
// is "docker.io", not go-containerregistry's "index.docker.io".
func containerdName(ref name.Reference) string {
	n := ref.Name()
	if rest, ok := strings.CutPrefix(n, name.DefaultRegistry+"/"); ok {
		return "docker.io/" + rest
	}
	return n
}
