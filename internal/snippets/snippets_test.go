package snippets_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/spdy-origin/spdy-origin/caddymodule"
	"github.com/spdy-origin/spdy-origin/internal/snippets"
)

// The documents whose snippets must keep working, from the repository root.
var documents = []string{"README.md", "DEVELOPERS.md"}

func TestMain(m *testing.M) {
	// Caddy's storage and config dirs, and the environment the snippets
	// refer to, stay inside the test.
	dir, err := os.MkdirTemp("", "snippets-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	os.Setenv("HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// envRef finds {env.NAME} and {$NAME} in a snippet: each is set to a strong
// dummy value of its own, as a user's environment would be (two tokens are
// two secrets).
var envRef = regexp.MustCompile(`\{(?:env\.|\$)([A-Za-z_][A-Za-z0-9_]*)\}`)

func setEnv(t *testing.T, text string) {
	for _, m := range envRef.FindAllStringSubmatch(text, -1) {
		t.Setenv(m[1], "a-strong-test-value-0123456789abcdef-"+m[1])
	}
}

func adaptCaddyfile(text string) ([]byte, error) {
	adapter := caddyconfig.GetAdapter("caddyfile")
	cfg, warnings, err := adapter.Adapt([]byte(text), nil)
	if err != nil {
		return nil, err
	}
	for _, w := range warnings {
		if strings.Contains(w.Message, "not formatted") {
			continue // formatting is the docs' business, not validity
		}
		return nil, fmt.Errorf("adapter warning: %s:%d: %s", w.File, w.Line, w.Message)
	}
	return cfg, nil
}

// validateJSON loads a config the way `caddy validate` does: modules
// provisioned, nothing started.
func validateJSON(cfgJSON []byte) error {
	var cfg caddy.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		return err
	}
	return caddy.Validate(&cfg)
}

func TestCaddyfileSnippets(t *testing.T) {
	type snippet struct {
		where, text string
	}
	var all []snippet
	for _, doc := range documents {
		for _, b := range snippets.Blocks(read(t, doc)) {
			if b.Lang != "caddyfile" {
				continue
			}
			text := b.Text
			if b.Has("fragment") {
				text = "example.com {\n" + text + "}\n"
			}
			all = append(all, snippet{fmt.Sprintf("%s:%d", doc, b.Line), text})
		}
	}
	example := read(t, "Caddyfile.example")
	all = append(all, snippet{"Caddyfile.example", example})
	for i, v := range snippets.CommentedVariants(example) {
		all = append(all, snippet{fmt.Sprintf("Caddyfile.example variant %d", i+1), v})
	}
	for _, s := range all {
		t.Run(s.where, func(t *testing.T) {
			setEnv(t, s.text)
			cfg, err := adaptCaddyfile(s.text)
			if err != nil {
				t.Fatalf("%s does not adapt: %v\n%s", s.where, err, s.text)
			}
			if err := validateJSON(cfg); err != nil {
				t.Fatalf("%s does not validate: %v\n%s", s.where, err, s.text)
			}
		})
	}
}

func TestJSONSnippets(t *testing.T) {
	for _, doc := range documents {
		for _, b := range snippets.Blocks(read(t, doc)) {
			if b.Lang != "json" || b.Has("output") {
				continue
			}
			where := fmt.Sprintf("%s:%d", doc, b.Line)
			t.Run(where, func(t *testing.T) {
				text := b.Text
				switch {
				case b.Has("handler"):
					text = `{"apps": {"http": {"servers": {"s": {"listen": [":0"], "routes": [{"handle": [` + text + `]}]}}}}}`
				case b.Has("config"):
				default:
					t.Fatalf("%s: a json block must say what it is: handler, config or output", where)
				}
				setEnv(t, text)
				if err := validateJSON([]byte(text)); err != nil {
					t.Fatalf("%s does not validate: %v\n%s", where, err, b.Text)
				}
			})
		}
	}
}
