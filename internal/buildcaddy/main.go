// Command buildcaddy builds the Caddy binary with the spdy_origin module
// from the recipe in xcaddy.json (the xcaddy library's Builder, in its own
// JSON form). It is what `make caddy` runs.
//
// Why not the xcaddy CLI: the CLI has no config file, and on machines where
// the Go module proxy refuses our unpublished module path (it answers 403 or
// 404 for github.com/spdy-origin/spdy-origin) `xcaddy build --with pkg=dir`
// fails while resolving it. This program does what works everywhere:
//
//  1. `go mod download` in the repository, with the normal GOPROXY, so every
//     module the build needs is in the module cache;
//  2. the xcaddy build with our module replaced by the repository directory
//     and GOPROXY adjusted so that the proxy's refusal to know our module
//     (403, 404 or a failing "direct") falls through to the replacement.
//
// xcaddy builds in bin/.buildcaddy/ inside the repository, with our module
// replaced by a relative path ("../../.."), and without VCS stamping: with
// xcaddy's flags (-trimpath, CGO_ENABLED=0) one commit then builds the same
// bytes in any checkout (make dist-check).
//
// A stamp file next to the output records a hash of the inputs (xcaddy.json,
// go.mod, go.sum, the Go toolchain version, the target platform, and every
// source file of our own packages that the plugin compiles in); when it
// matches, the build is skipped.
//
// -os, -arch and -arm cross-compile (make dist builds linux/amd64 and
// linux/arm64). They are flags, not GOOS/GOARCH: under `go run`, those would
// build this program itself for the target. The Go build cache (GOCACHE) is left alone so a rebuild after a
// source change only recompiles what changed.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/caddyserver/xcaddy"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("buildcaddy: ")

	configPath := flag.String("config", "xcaddy.json", "xcaddy Builder recipe (JSON)")
	output := flag.String("o", "bin/caddy", "output binary")
	force := flag.Bool("force", false, "rebuild even if the inputs are unchanged")
	printHash := flag.Bool("print-hash", false, "print the input hash and exit")
	verbose := flag.Bool("v", false, "show xcaddy's and go's output even on success")
	var target xcaddy.Platform
	flag.StringVar(&target.OS, "os", "", "target GOOS (default: the recipe's, else the host's)")
	flag.StringVar(&target.Arch, "arch", "", "target GOARCH (default: the recipe's, else the host's)")
	flag.StringVar(&target.ARM, "arm", "", "target GOARM, with -arch arm")
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := run(ctx, *configPath, *output, target, *force, *printHash, *verbose); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, configPath, output string, target xcaddy.Platform, force, printHash, verbose bool) error {
	rec, err := loadRecipe(configPath)
	if err != nil {
		return err
	}
	if err := rec.setTarget(ctx, target); err != nil {
		return err
	}
	if err := checkCaddyVersion(ctx, rec); err != nil {
		return err
	}
	hash, err := inputHash(ctx, rec)
	if err != nil {
		return err
	}
	if printHash {
		fmt.Println(hash)
		return nil
	}

	stamp := output + ".stamp"
	if !force && upToDate(output, stamp, hash) {
		log.Printf("%s is up to date (inputs %s)", output, hash[:12])
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(output), 0o755); err != nil {
		return err
	}
	// A failed or interrupted build must not leave a stamp that claims the
	// old binary matches the new inputs.
	_ = os.Remove(stamp)

	log.Printf("downloading modules (go mod download in %s)", rec.repoDir)
	if err := runGo(ctx, rec.repoDir, nil, "mod", "download"); err != nil {
		return fmt.Errorf("downloading modules: %w", err)
	}

	log.Printf("building Caddy %s for %s with %d plugin(s) into %s (a cold build takes a few minutes)",
		rec.CaddyVersion, rec.platform(), len(rec.Plugins), output)
	if err := build(ctx, rec, output, verbose); err != nil {
		return err
	}
	if err := os.WriteFile(stamp, []byte(hash+"\n"), 0o644); err != nil {
		return fmt.Errorf("writing stamp: %w", err)
	}
	log.Printf("built %s", output)
	return nil
}

// recipe is xcaddy.json plus where it was found.
type recipe struct {
	xcaddy.Builder
	repoDir string // directory of xcaddy.json: the repository root
	raw     []byte
}

func loadRecipe(path string) (*recipe, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading recipe: %w", err)
	}
	var b xcaddy.Builder
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	if b.CaddyVersion == "" {
		return nil, fmt.Errorf("%s: caddy_version is required (it is the one place the Caddy version is pinned)", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	rec := &recipe{Builder: b, repoDir: filepath.Dir(abs), raw: raw}

	// Relative replacement paths are relative to xcaddy.json, not to the
	// temporary folder xcaddy builds in.
	for i, r := range rec.Replacements {
		if n := string(r.New); isLocalPath(n) && !filepath.IsAbs(n) {
			rec.Replacements[i].New = xcaddy.ReplacementPath(filepath.Join(rec.repoDir, n))
		}
	}
	// Replace directives only apply in the main module, so carry ours
	// (go.mod's) into the build module, as the xcaddy CLI does.
	extra, err := goModReplacements(rec.repoDir)
	if err != nil {
		return nil, err
	}
	for _, r := range extra {
		if !rec.hasReplacement(string(r.Old)) {
			rec.Replacements = append(rec.Replacements, r)
		}
	}
	return rec, nil
}

// setTarget fills the recipe's platform: t's fields where set, else the
// recipe's own, else the host's (go env GOOS GOARCH GOARM), so the build, the
// input hash and the file list all name the same target.
func (r *recipe) setTarget(ctx context.Context, t xcaddy.Platform) error {
	host, err := goOutput(ctx, r.repoDir, "env", "GOOS", "GOARCH", "GOARM")
	if err != nil {
		return err
	}
	h := strings.Split(strings.TrimSpace(string(host)), "\n")
	for len(h) < 3 {
		h = append(h, "")
	}
	for _, f := range []struct {
		dst        *string
		flag, host string
	}{{&r.OS, t.OS, h[0]}, {&r.Arch, t.Arch, h[1]}, {&r.ARM, t.ARM, h[2]}} {
		if f.flag != "" {
			*f.dst = f.flag
		}
		if *f.dst == "" {
			*f.dst = strings.TrimSpace(f.host)
		}
	}
	if r.Arch != "arm" {
		r.ARM = ""
	}
	return nil
}

// platform is the target as GOOS/GOARCH[/vGOARM].
func (r *recipe) platform() string {
	p := r.OS + "/" + r.Arch
	if r.ARM != "" {
		p += "/v" + r.ARM
	}
	return p
}

// targetEnv is the go command's environment for the target platform.
func (r *recipe) targetEnv() []string {
	return []string{"GOOS=" + r.OS, "GOARCH=" + r.Arch, "GOARM=" + r.ARM}
}

func (r *recipe) hasReplacement(old string) bool {
	for _, x := range r.Replacements {
		if string(x.Old) == old {
			return true
		}
	}
	return false
}

// localModules maps module paths replaced by a directory to that directory.
func (r *recipe) localModules() map[string]string {
	m := map[string]string{}
	for _, x := range r.Replacements {
		if n := string(x.New); isLocalPath(n) {
			old, _, _ := strings.Cut(string(x.Old), "@")
			m[old] = n
		}
	}
	return m
}

func isLocalPath(p string) bool {
	return p == "." || p == ".." || strings.HasPrefix(p, "./") || strings.HasPrefix(p, "../") || filepath.IsAbs(p)
}

func goModReplacements(dir string) ([]xcaddy.Replace, error) {
	out, err := goOutput(context.Background(), dir, "mod", "edit", "-json")
	if err != nil {
		return nil, fmt.Errorf("reading go.mod: %w", err)
	}
	type mod struct{ Path, Version string }
	var gm struct {
		Replace []struct{ Old, New mod }
	}
	if err := json.Unmarshal(out, &gm); err != nil {
		return nil, fmt.Errorf("reading go.mod: %w", err)
	}
	var rs []xcaddy.Replace
	for _, r := range gm.Replace {
		old, nw := r.Old.Path, r.New.Path
		if r.Old.Version != "" {
			old += "@" + r.Old.Version
		}
		if r.New.Version != "" {
			nw += "@" + r.New.Version
		} else if !filepath.IsAbs(nw) {
			nw = filepath.Join(dir, nw)
		}
		rs = append(rs, xcaddy.NewReplace(old, nw))
	}
	return rs, nil
}

// checkCaddyVersion refuses to build when go.mod requires a different Caddy
// than xcaddy.json: minimal version selection would silently pick the higher
// one and the binary would not be the version the recipe pins.
func checkCaddyVersion(ctx context.Context, rec *recipe) error {
	out, err := goOutput(ctx, rec.repoDir, "mod", "edit", "-json")
	if err != nil {
		return fmt.Errorf("reading go.mod: %w", err)
	}
	var gm struct {
		Require []struct{ Path, Version string }
	}
	if err := json.Unmarshal(out, &gm); err != nil {
		return fmt.Errorf("reading go.mod: %w", err)
	}
	for _, r := range gm.Require {
		if r.Path == "github.com/caddyserver/caddy/v2" && r.Version != rec.CaddyVersion {
			return fmt.Errorf("go.mod requires caddy %s but xcaddy.json pins %s: make them agree "+
				"(edit caddy_version, then `go get github.com/caddyserver/caddy/v2@<version>`)",
				r.Version, rec.CaddyVersion)
		}
	}
	return nil
}

// buildMethod names how build builds; change it when that changes what a
// build produces from the same inputs, so old stamps no longer match.
const buildMethod = "2 (relative replacement paths)"

// inputHash covers everything that changes the binary: the recipe, go.mod and
// go.sum, the Go version, the target platform, and the files of every package
// from a locally replaced module that the plugins compile in for that target
// (found with `go list -deps`, so test files, docs, node_modules and other
// platforms' files don't count).
func inputHash(ctx context.Context, rec *recipe) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "method %s\n", buildMethod)
	fmt.Fprintf(h, "recipe %d\n", len(rec.raw))
	h.Write(rec.raw)
	goVersion, err := goOutput(ctx, rec.repoDir, "env", "GOVERSION")
	if err != nil {
		return "", err
	}
	fmt.Fprintf(h, "go %s\ntarget %s\n", bytes.TrimSpace(goVersion), rec.platform())

	var files []string
	for _, f := range []string{"go.mod", "go.sum"} {
		files = append(files, filepath.Join(rec.repoDir, f))
	}
	local := rec.localModules()
	for _, p := range rec.Plugins {
		dir := ""
		for mod, d := range local {
			if p.PackagePath == mod || strings.HasPrefix(p.PackagePath, mod+"/") {
				dir = d
			}
		}
		if dir == "" {
			continue // a published plugin: pinned by its version in the recipe
		}
		fs, err := packageFiles(ctx, dir, p.PackagePath, rec.targetEnv())
		if err != nil {
			return "", err
		}
		files = append(files, fs...)
	}
	sort.Strings(files)
	for _, f := range dedupe(files) {
		if err := hashFile(h, f); err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func packageFiles(ctx context.Context, dir, pkg string, env []string) ([]string, error) {
	// -e: a package that does not compile yet still lists its files; the
	// build itself reports the error.
	out, err := goOutputEnv(ctx, dir, env, "list", "-e", "-deps", "-json=Dir,Module,GoFiles,CgoFiles,CFiles,SFiles,EmbedFiles,Error", pkg)
	if err != nil {
		return nil, fmt.Errorf("listing the files of %s: %w", pkg, err)
	}
	var files []string
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			Dir                                           string
			Module                                        *struct{ Main bool }
			GoFiles, CgoFiles, CFiles, SFiles, EmbedFiles []string
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("listing the files of %s: %w", pkg, err)
		}
		if p.Module == nil || !p.Module.Main {
			continue
		}
		files = append(files, p.Dir) // a new or deleted file changes the list
		for _, group := range [][]string{p.GoFiles, p.CgoFiles, p.CFiles, p.SFiles, p.EmbedFiles} {
			for _, f := range group {
				files = append(files, filepath.Join(p.Dir, f))
			}
		}
	}
	return files, nil
}

func hashFile(h io.Writer, path string) error {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(h, "missing %s\n", path)
			return nil
		}
		return err
	}
	if st.IsDir() {
		fmt.Fprintf(h, "dir %s\n", path)
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(h, "file %s %d\n", path, st.Size())
	_, err = io.Copy(h, f)
	return err
}

func dedupe(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func upToDate(output, stamp, hash string) bool {
	if st, err := os.Stat(output); err != nil || st.Mode()&0o111 == 0 {
		return false
	}
	b, err := os.ReadFile(stamp)
	return err == nil && strings.TrimSpace(string(b)) == hash
}

// build runs the xcaddy build offline. xcaddy runs go commands with our
// process environment, so the environment is set here.
func build(ctx context.Context, rec *recipe, output string, verbose bool) error {
	// The proxy does not know our module path. `go get` in xcaddy's build
	// module still asks about the plugin package before it falls back to
	// the replacement, and it only goes on after a "not found": some
	// proxies answer 403 instead of 404, and "direct" fails for good
	// without a reachable VCS host. So the proxies are kept, "direct" is
	// dropped, and the list becomes "p1|p2|off": "|" goes on after any
	// error and off's answer counts as "not found", so the replacement is
	// used. Everything else resolves as usual: the module cache first
	// (filled by `go mod download` above), then the proxy for the few older
	// versions Caddy's own go.mod names. GOPROXY=off gives a fully offline
	// build from a warm module cache.
	proxy, err := goOutput(ctx, rec.repoDir, "env", "GOPROXY")
	if err != nil {
		return err
	}
	setenv("GOPROXY", buildProxy(strings.TrimSpace(string(proxy))))
	// Our module path is never in the checksum database.
	setenv("GONOSUMDB", joinNonEmpty(os.Getenv("GONOSUMDB"), modulePaths(rec)))
	// Keep the toolchain we have; a toolchain download would fail offline.
	if os.Getenv("GOTOOLCHAIN") == "" {
		setenv("GOTOOLCHAIN", "local")
	}

	// xcaddy and go are chatty; keep their output unless the build fails.
	var buf bytes.Buffer
	var logOut io.Writer = &buf
	if verbose {
		logOut = io.MultiWriter(&buf, os.Stderr)
	}
	// The binary's build info records a directory replacement as written
	// in the build module's go.mod. An absolute path would make two
	// checkouts of one commit build different bytes, so xcaddy builds in a
	// folder inside the repository and local modules are named by paths
	// relative to it, the same in every checkout.
	tmp := filepath.Join(rec.repoDir, "bin", ".buildcaddy")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	b := rec.Builder
	if b.Replacements, err = relativeReplacements(rec.Replacements, tmp); err != nil {
		return err
	}
	// That folder is inside our git repository: no VCS stamping, which
	// would tie the bytes to the work tree's state (and needs git).
	if !strings.Contains(os.Getenv("GOFLAGS"), "-buildvcs") {
		setenv("GOFLAGS", strings.TrimSpace(os.Getenv("GOFLAGS")+" -buildvcs=false"))
	}
	oldTmp, hadTmp := os.LookupEnv("TMPDIR")
	setenv("TMPDIR", tmp) // xcaddy's build folder: tmp/buildenv_*
	restore := redirect(logOut)
	err = b.Build(ctx, output)
	restore()
	if hadTmp {
		setenv("TMPDIR", oldTmp)
	} else {
		_ = os.Unsetenv("TMPDIR")
	}
	if err != nil {
		if !verbose {
			os.Stderr.Write(buf.Bytes())
		}
		return fmt.Errorf("building Caddy: %w%s", err, hint(buf.String()))
	}
	return nil
}

// relativeReplacements returns rs with every local directory given relative
// to a build folder created in parent (xcaddy's parent/buildenv_*).
func relativeReplacements(rs []xcaddy.Replace, parent string) ([]xcaddy.Replace, error) {
	out := make([]xcaddy.Replace, len(rs))
	for i, r := range rs {
		out[i] = r
		if n := string(r.New); filepath.IsAbs(n) {
			rel, err := filepath.Rel(parent, n)
			if err != nil {
				return nil, fmt.Errorf("replacement %s: %w", n, err)
			}
			out[i].New = xcaddy.ReplacementPath("../" + filepath.ToSlash(rel))
		}
	}
	return out, nil
}

// buildProxy turns a GOPROXY list into one that ends in "off" and goes on
// after any error (see build).
func buildProxy(list string) string {
	var keep []string
	for _, e := range strings.FieldsFunc(list, func(r rune) bool { return r == ',' || r == '|' }) {
		if e == "direct" || e == "off" {
			break // go ignores what follows these
		}
		keep = append(keep, e)
	}
	if len(keep) == 0 && strings.HasPrefix(list, "direct") {
		return list // no proxy at all: VCS access is all there is
	}
	return strings.Join(append(keep, "off"), "|")
}

func modulePaths(rec *recipe) string {
	var ps []string
	for m := range rec.localModules() {
		ps = append(ps, m)
	}
	sort.Strings(ps)
	return strings.Join(ps, ",")
}

func joinNonEmpty(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "," + b
}

func hint(out string) string {
	if strings.Contains(out, "module lookup disabled") {
		return "\n(a module the build needs is neither in the module cache nor reachable through GOPROXY; " +
			"on a machine without a module proxy, build once where it is reachable to warm the cache)"
	}
	return ""
}

func setenv(k, v string) {
	if err := os.Setenv(k, v); err != nil {
		log.Fatalf("setting %s: %v", k, err)
	}
}

// redirect sends the log package's output and the stdout/stderr of the
// commands xcaddy runs (it wires them to os.Stdout/os.Stderr) to w.
func redirect(w io.Writer) (restore func()) {
	r, pw, err := os.Pipe()
	if err != nil {
		return func() {}
	}
	oldOut, oldErr := os.Stdout, os.Stderr
	oldLog := log.Writer()
	oldPrefix := log.Prefix()
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
		for sc.Scan() {
			fmt.Fprintln(w, sc.Text())
		}
	}()
	os.Stdout, os.Stderr = pw, pw
	log.SetOutput(pw)
	log.SetPrefix("")
	return func() {
		os.Stdout, os.Stderr = oldOut, oldErr
		log.SetOutput(oldLog)
		log.SetPrefix(oldPrefix)
		pw.Close()
		<-done
		r.Close()
	}
}

func runGo(ctx context.Context, dir string, env []string, args ...string) error {
	cmd := exec.CommandContext(ctx, goBin(), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return nil
}

func goOutput(ctx context.Context, dir string, args ...string) ([]byte, error) {
	return goOutputEnv(ctx, dir, nil, args...)
}

func goOutputEnv(ctx context.Context, dir string, env []string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, goBin(), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

func goBin() string {
	if g := os.Getenv("XCADDY_WHICH_GO"); g != "" {
		return g
	}
	return "go"
}
