package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/spdy-origin/spdy-origin/internal/snippets"
)

// Every agent command line of the README's shell blocks, and its --config
// files (```toml agent-config), parse as the agent would read them: a
// documented flag or setting that the agent no longer takes fails here.
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
			if _, err := parseArgs([]string{"--config", configFile}, envMap(map[string]string{"SPDY_ORIGIN_TOKEN": "t"}), &bytes.Buffer{}); err != nil {
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
			if _, err := parseArgs(args, envMap(env), &bytes.Buffer{}); err != nil {
				t.Errorf("README.md:%d: spdy-origin-agent %q: %v", b.Line, args, err)
			}
		}
	}
	t.Logf("%d agent command lines and a config file checked", n)
	if n < 5 || configFile == "" {
		t.Fatalf("found %d agent command lines and config file %q in README.md; the extraction is broken", n, configFile)
	}
}
