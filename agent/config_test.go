package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const testConfigFile = `
# the proxies and the routes of a home server
proxy = ["https://edge1.example.com", "https://edge2.example.com"]
token = "file-token"
connections = 3
drain-timeout = "5s"
insecure-skip-verify = false
name = "nas"
to = [
  "media.example.com=http://127.0.0.1:8096",
  "*.apps.example.com=http://127.0.0.1:8080",
]
root = ["www.example.com=/srv/www"]
`

func writeConfig(t *testing.T, text string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.toml")
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// Every setting comes from the first of the command line, the environment
// and the file that gives it; the routes (to and root) are one setting.
func TestConfigFile(t *testing.T) {
	file := writeConfig(t, testConfigFile, 0o600)
	fileRoutes := "media.example.com=http://127.0.0.1:8096 *.apps.example.com=http://127.0.0.1:8080 www.example.com=/srv/www"
	tests := []struct {
		name   string
		args   []string
		env    map[string]string
		token  string
		routes string
		check  func(t *testing.T, c *cliConfig)
	}{
		{name: "the file alone", args: []string{"--config", file}, token: "file-token", routes: fileRoutes,
			check: func(t *testing.T, c *cliConfig) {
				o := c.opts
				if len(o.Proxies) != 2 || o.Proxies[1].Host != "edge2.example.com" || o.Connections != 3 ||
					o.DrainTimeout != 5*time.Second || o.Name != "nas" || o.InsecureSkipVerify {
					t.Fatalf("opts = %+v", o)
				}
			}},
		{name: "the file named in the environment", env: map[string]string{"SPDY_ORIGIN_CONFIG": file}, token: "file-token", routes: fileRoutes},
		{name: "a flag wins over the file", args: []string{"--config", file, "--token", "flag-token", "--connections", "1"},
			token: "flag-token", routes: fileRoutes,
			check: func(t *testing.T, c *cliConfig) {
				if c.opts.Connections != 1 || c.opts.Name != "nas" {
					t.Fatalf("connections %d, name %q", c.opts.Connections, c.opts.Name)
				}
			}},
		{name: "the environment wins over the file", args: []string{"--config", file},
			env: map[string]string{"SPDY_ORIGIN_TOKEN": "env-token"}, token: "env-token", routes: fileRoutes},
		{name: "a flag wins over the environment and the file", args: []string{"--config", file, "--token", "flag-token"},
			env: map[string]string{"SPDY_ORIGIN_TOKEN": "env-token"}, token: "flag-token", routes: fileRoutes},
		{name: "routes on the command line replace the file's, to and root alike",
			args:  []string{"--config", file, "--root", "x.example.com=/srv/x"},
			token: "file-token", routes: "x.example.com=/srv/x"},
		{name: "routes in the environment replace the file's",
			args:  []string{"--config", file},
			env:   map[string]string{"SPDY_ORIGIN_TO": "a.example.com=http://127.0.0.1:1,http://127.0.0.1:2"},
			token: "file-token", routes: "a.example.com=http://127.0.0.1:1 http://127.0.0.1:2"},
		{name: "routes on the command line win over the environment's",
			args:  []string{"--to", "http://127.0.0.1:3", "--config", file},
			env:   map[string]string{"SPDY_ORIGIN_ROOT": "/srv/env"},
			token: "file-token", routes: "http://127.0.0.1:3"},
		{name: "proxies from the command line replace the file's", args: []string{"--config", file, "--proxy", "https://only.example.com"},
			token: "file-token", routes: fileRoutes,
			check: func(t *testing.T, c *cliConfig) {
				if len(c.opts.Proxies) != 1 || c.opts.Proxies[0].Host != "only.example.com" {
					t.Fatalf("proxies = %v", c.opts.Proxies)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseArgs(tt.args, envMap(tt.env), &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			if c.opts.Token != tt.token || routesOf(c.opts) != tt.routes {
				t.Fatalf("token %q, routes %q; want %q, %q", c.opts.Token, routesOf(c.opts), tt.token, tt.routes)
			}
			if len(c.warnings) != 0 {
				t.Errorf("warnings for a 0600 file: %q", c.warnings)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

// Mistakes in the file are usage errors that name the file, the key and
// what is wrong.
func TestConfigFileErrors(t *testing.T) {
	base := "proxy = \"https://x.example\"\ntoken = \"t\"\n"
	tests := []struct {
		name, text, want string
	}{
		{"syntax", base + "to = [\"http://x:1\"\n", "At line 3"},
		{"unknown key", base + "tunnels = 3\n", `key "tunnels": unknown setting`},
		{"underscore", base + "ca_file = \"/x\"\n", `did you mean "ca-file"?`},
		{"routes as tables", base + "[[route]]\nhost = \"a\"\n", `routes are to = ["HOST=URL", ...]`},
		{"the file names a file", base + "config = \"other.toml\"\nto = \"http://x:1\"\n", `key "config": the file cannot name another file`},
		{"version", base + "version = true\n", `key "version": not a setting`},
		{"array for one value", base + "name = [\"a\", \"b\"]\n", "name: takes one value, not an array"},
		{"float", base + "connections = 2.5\nto = \"http://x:1\"\n", "connections: want a string, an integer or a boolean"},
		{"table", base + "[name]\nx = 1\n", "name: want a string"},
		{"bad value", base + "connections = \"many\"\n", `connections = "many"`},
		{"bad route host", base + "to = [\"a.test:80=http://x:1\"]\n", `.toml) "a.test:80=http://x:1": host pattern "a.test:80": no port`},
		{"bad route URL", base + "to = \"a.test=127.0.0.1:80\"\n", `--to (from `},
		{"same host twice", base + "to = \"a.test=http://x:1\"\nroot = \"A.test=/srv\"\n", "two routes for host a.test"},
		{"no route", base, "at least one --to"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := writeConfig(t, tt.text, 0o600)
			_, err := parseArgs([]string{"--config", file}, envMap(nil), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
	_, err := parseArgs([]string{"--config", filepath.Join(t.TempDir(), "missing.toml")}, envMap(nil), &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "--config") || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing file: %v", err)
	}
}

// A token in a file other users can read is warned about once the agent
// runs.
func TestConfigFileTokenReadable(t *testing.T) {
	file := writeConfig(t, testConfigFile, 0o644)
	c, err := parseArgs([]string{"--config", file}, envMap(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.warnings) != 1 || !strings.Contains(c.warnings[0], "readable by other users") {
		t.Fatalf("warnings %q", c.warnings)
	}
	noToken := writeConfig(t, strings.Replace(testConfigFile, `token = "file-token"`, "", 1), 0o644)
	c, err = parseArgs([]string{"--config", noToken}, envMap(map[string]string{"SPDY_ORIGIN_TOKEN": "t"}), &bytes.Buffer{})
	if err != nil || len(c.warnings) != 0 {
		t.Fatalf("no token in the file: %v, warnings %q", err, c.warnings)
	}
}
