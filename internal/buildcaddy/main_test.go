package main

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/caddyserver/xcaddy"
)

func TestBuildProxy(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"https://proxy.golang.org,direct", "https://proxy.golang.org|off"},
		{"https://a.example,https://b.example|direct", "https://a.example|https://b.example|off"},
		{"https://proxy.golang.org", "https://proxy.golang.org|off"},
		{"off", "off"},
		{"direct", "direct"},
		{"https://a.example,off,https://ignored.example", "https://a.example|off"},
	} {
		if got := buildProxy(tc.in); got != tc.want {
			t.Errorf("buildProxy(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// writeModule makes a throwaway module with a plugin package and an
// xcaddy.json, and returns the recipe path.
func writeModule(t *testing.T, recipe string) (dir, path string) {
	t.Helper()
	dir = t.TempDir()
	files := map[string]string{
		"go.mod":         "module example.com/plug\n\ngo 1.22\n\nreplace example.com/other => ./other\n",
		"plug/plug.go":   "package plug\n\nimport _ \"example.com/plug/inner\"\n",
		"plug/x_test.go": "package plug\n",
		"inner/inner.go": "package inner\n",
		"unused/u.go":    "package unused\n",
		"xcaddy.json":    recipe,
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir, filepath.Join(dir, "xcaddy.json")
}

const testRecipe = `{"caddy_version": "v2.11.9",
 "plugins": [{"module_path": "example.com/plug/plug"}],
 "replacements": [{"old": "example.com/plug", "new": "."}]}`

func TestLoadRecipe(t *testing.T) {
	dir, path := writeModule(t, testRecipe)
	rec, err := loadRecipe(path)
	if err != nil {
		t.Fatal(err)
	}
	if rec.repoDir != dir {
		t.Errorf("repoDir = %q, want %q", rec.repoDir, dir)
	}
	got := map[string]string{}
	for _, r := range rec.Replacements {
		got[string(r.Old)] = string(r.New)
	}
	if got["example.com/plug"] != dir {
		t.Errorf("relative replacement not resolved against xcaddy.json: %v", got)
	}
	if got["example.com/other"] != filepath.Join(dir, "other") {
		t.Errorf("go.mod replace not carried over: %v", got)
	}
}

func TestLoadRecipeErrors(t *testing.T) {
	for name, recipe := range map[string]string{
		"unknown field":    `{"caddy_version": "v2.11.9", "plugin": []}`,
		"no version":       `{"plugins": [{"module_path": "example.com/plug/plug"}]}`,
		"not json":         `caddy_version: v2`,
		"trailing comma":   `{"caddy_version": "v2.11.9",}`,
		"wrong type":       `{"caddy_version": 2}`,
		"plugins not list": `{"caddy_version": "v2.11.9", "plugins": {}}`,
	} {
		_, path := writeModule(t, recipe)
		if _, err := loadRecipe(path); err == nil {
			t.Errorf("%s: no error for %s", name, recipe)
		}
	}
}

func TestInputHashFollowsPluginSources(t *testing.T) {
	dir, path := writeModule(t, testRecipe)
	hash := func() string {
		t.Helper()
		rec, err := loadRecipe(path)
		if err != nil {
			t.Fatal(err)
		}
		h, err := inputHash(context.Background(), rec)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	edit := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h0 := hash()
	if hash() != h0 {
		t.Fatal("hash is not stable")
	}
	// Files that are not compiled into the plugin do not count.
	edit("plug/x_test.go", "package plug\n\n// changed\n")
	edit("unused/u.go", "package unused\n\n// changed\n")
	if h := hash(); h != h0 {
		t.Error("hash changed for a test file or an unused package")
	}
	// A dependency of the plugin in the same module does.
	edit("inner/inner.go", "package inner\n\n// changed\n")
	h1 := hash()
	if h1 == h0 {
		t.Error("hash did not change with a dependency's source")
	}
	// So do the recipe and go.mod.
	edit("xcaddy.json", strings.Replace(testRecipe, "v2.11.9", "v2.11.8", 1))
	h2 := hash()
	if h2 == h1 {
		t.Error("hash did not change with xcaddy.json")
	}
	edit("go.mod", "module example.com/plug\n\ngo 1.23\n")
	if hash() == h2 {
		t.Error("hash did not change with go.mod")
	}
}

func TestUpToDate(t *testing.T) {
	dir := t.TempDir()
	bin, stamp := filepath.Join(dir, "caddy"), filepath.Join(dir, "caddy.stamp")
	if upToDate(bin, stamp, "h") {
		t.Error("up to date without a binary")
	}
	os.WriteFile(bin, []byte("x"), 0o755)
	if upToDate(bin, stamp, "h") {
		t.Error("up to date without a stamp")
	}
	os.WriteFile(stamp, []byte("h\n"), 0o644)
	if !upToDate(bin, stamp, "h") {
		t.Error("not up to date with a matching stamp")
	}
	if upToDate(bin, stamp, "other") {
		t.Error("up to date with a stale stamp")
	}
}

func TestSetTarget(t *testing.T) {
	_, path := writeModule(t, testRecipe)
	rec, err := loadRecipe(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := rec.setTarget(context.Background(), xcaddy.Platform{}); err != nil {
		t.Fatal(err)
	}
	if rec.OS != runtime.GOOS || rec.Arch != runtime.GOARCH {
		t.Errorf("default target %s, want the host's %s/%s", rec.platform(), runtime.GOOS, runtime.GOARCH)
	}
	if err := rec.setTarget(context.Background(), xcaddy.Platform{OS: "linux", Arch: "arm", ARM: "7"}); err != nil {
		t.Fatal(err)
	}
	if got := rec.platform(); got != "linux/arm/v7" {
		t.Errorf("target %s, want linux/arm/v7", got)
	}
	if err := rec.setTarget(context.Background(), xcaddy.Platform{Arch: "arm64", ARM: "7"}); err != nil {
		t.Fatal(err)
	}
	if got := rec.platform(); got != "linux/arm64" {
		t.Errorf("target %s, want linux/arm64 (GOARM only for arm)", got)
	}
}

// TestInputHashPerTarget: each target has its own stamp hash, and a file
// compiled only for one target changes only that target's hash.
func TestInputHashPerTarget(t *testing.T) {
	dir, path := writeModule(t, testRecipe)
	hash := func(p xcaddy.Platform) string {
		t.Helper()
		rec, err := loadRecipe(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := rec.setTarget(context.Background(), p); err != nil {
			t.Fatal(err)
		}
		h, err := inputHash(context.Background(), rec)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	amd64 := xcaddy.Platform{OS: "linux", Arch: "amd64"}
	arm64 := xcaddy.Platform{OS: "linux", Arch: "arm64"}
	win := xcaddy.Platform{OS: "windows", Arch: "amd64"}
	hAMD, hARM, hWin := hash(amd64), hash(arm64), hash(win)
	if hAMD == hARM || hAMD == hWin {
		t.Fatal("targets share a hash")
	}
	if err := os.WriteFile(filepath.Join(dir, "inner", "inner_windows.go"), []byte("package inner\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if hash(amd64) != hAMD || hash(arm64) != hARM {
		t.Error("a windows-only file changed a linux target's hash")
	}
	if hash(win) == hWin {
		t.Error("a windows-only file did not change the windows hash")
	}
}

func TestRelativeReplacements(t *testing.T) {
	rs := []xcaddy.Replace{
		xcaddy.NewReplace("example.com/plug", "/src/repo"),
		xcaddy.NewReplace("example.com/other", "/src/repo/other"),
		xcaddy.NewReplace("example.com/pinned", "example.com/fork@v1.2.3"),
	}
	got, err := relativeReplacements(rs, "/src/repo/bin/.buildcaddy")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"../../..", "../../../other", "example.com/fork@v1.2.3"}
	for i, r := range got {
		if string(r.New) != want[i] {
			t.Errorf("%s => %s, want %s", r.Old, r.New, want[i])
		}
	}
	if string(rs[0].New) != "/src/repo" {
		t.Error("the recipe's own replacements were changed")
	}
}
