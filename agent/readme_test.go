package agent

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spdy-origin/spdy-origin/internal/snippets"
)

// Every agent command line of the README's shell blocks, and its --config
// files (```toml agent-config), pass --check-config: a documented flag or
// setting that the agent no longer takes, or a route, limit or address it
// would refuse at start, fails here. The directories and CA files they name
// are stand-ins made here (see standIns); nothing else differs from
// `spdy-origin-agent --check-config ...`.
func TestReadmeCommandLines(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := snippets.Blocks(string(readme))
	var configFile string
	for _, b := range blocks {
		if b.Lang == "toml" && b.Has("agent-config") {
			if configFile != "" {
				t.Fatalf("README.md:%d: a second agent-config block; this test knows one", b.Line)
			}
			configFile = writeConfig(t, b.Text, 0o600)
			if err := checkAsDocumented(t, []string{"--config", configFile}, map[string]string{"SPDY_ORIGIN_TOKEN": "t"}); err != nil {
				t.Errorf("README.md:%d: the agent-config file: %v", b.Line, err)
			}
		}
	}
	n := 0
	for _, b := range blocks {
		if b.Lang != "sh" {
			continue
		}
		for _, c := range snippets.Commands(b.Text, "spdy-origin-agent") {
			env := map[string]string{"SPDY_ORIGIN_TOKEN": "exported-earlier"} // as an `export` line before it
			for k, v := range c.Env {
				env[k] = v
			}
			args := append([]string(nil), c.Args...)
			for i := range args {
				if i > 0 && args[i-1] == "--config" {
					if configFile == "" {
						t.Fatalf("README.md:%d: --config, but no ```toml agent-config block", b.Line)
					}
					args[i] = configFile
				}
			}
			n++
			if err := checkAsDocumented(t, args, env); err != nil {
				t.Errorf("README.md:%d: spdy-origin-agent %q: %v", b.Line, args, err)
			}
		}
	}
	t.Logf("%d agent command lines and a config file checked", n)
	if n < 5 || configFile == "" {
		t.Fatalf("found %d agent command lines and config file %q in README.md; the extraction is broken", n, configFile)
	}
}

// checkAsDocumented runs args and env through --check-config: parseArgs, then
// the agent's start up to where it would dial, with the documented
// directories and CA files replaced by stand-ins.
func checkAsDocumented(t *testing.T, args []string, env map[string]string) error {
	t.Helper()
	c, err := parseArgs(append([]string{"--check-config"}, args...), envMap(env), io.Discard)
	if err != nil {
		return err
	}
	standIns(t, c)
	var out, errOut bytes.Buffer
	if code := c.start(&out, &errOut); code != 0 || !strings.Contains(out.String(), "configuration OK") {
		return fmt.Errorf("--check-config exit %d:\n%s%s", code, errOut.String(), out.String())
	}
	return nil
}

// standIns points c's directories (--root) and CA files at ones made under a
// temporary directory with the same paths inside it (/srv/www is
// TMP/srv/www): the README's paths are on the reader's machine, not here.
func standIns(t *testing.T, c *cliConfig) {
	t.Helper()
	fsRoot := t.TempDir()
	inside := func(p string) string { return filepath.Join(fsRoot, filepath.FromSlash(p)) }
	for i, r := range c.opts.Routes {
		if r.Root == "" {
			continue
		}
		dir := inside(r.Root)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		c.opts.Routes[i].Root = dir
	}
	for _, file := range []*string{&c.opts.CAFile, &c.opts.UpstreamCAFile} {
		if *file == "" {
			continue
		}
		pem, err := os.ReadFile(testCAFile(t))
		if err != nil {
			t.Fatal(err)
		}
		*file = inside(*file)
		if err := os.MkdirAll(filepath.Dir(*file), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(*file, pem, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
