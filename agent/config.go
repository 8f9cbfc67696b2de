package agent

// The --config file: the same settings as the flags, in TOML, for an agent
// with many routes.
//
// Its keys are the flags' names and take the flags' values: strings,
// numbers, booleans, and arrays for the repeatable flags (proxy, to, root).
// Every setting comes from one place, the first of the command line, the
// environment (SPDY_ORIGIN_*) and the file that gives it; the routes (to and
// root together) count as one setting, so routes given on the command line
// or in the environment replace the file's rather than add to them.
//
// Why TOML, with github.com/BurntSushi/toml: a host pattern starts with '*',
// which in YAML is an alias and must be quoted (unquoted, it fails with an
// error about anchors); TOML quotes every string and has no implicit types
// (no "no" read as false, no 0755 read as octal). The parser is small,
// maintained, has no dependencies of its own and is already in the build
// (Caddy requires it). frp's configuration is TOML too.

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// routeFlags are the flags that together make one setting, the routes.
var routeFlags = []string{"to", "root"}

// repeatable flags take arrays in the file.
var repeatable = map[string]bool{"proxy": true, "to": true, "root": true}

// notInFile are flags the file cannot set.
var notInFile = map[string]string{
	"config":  "the file cannot name another file",
	"version": "not a setting",
}

// applyConfigFile sets, from the TOML file at path, every flag of fs that
// given says no higher source set. It returns warnings to log once the
// logger exists (a token in a file other users can read).
func applyConfigFile(fs *flag.FlagSet, path string, given func(name string) bool, from map[string]string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, usageErrorf("--config: %v", err)
	}
	var m map[string]any
	if _, err := toml.Decode(string(data), &m); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, usageErrorf("--config %s: %s", path, strings.TrimSpace(pe.ErrorWithPosition()))
		}
		return nil, usageErrorf("--config %s: %v", path, err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		f := fs.Lookup(k)
		if why, no := notInFile[k]; no || f == nil {
			if !no {
				why = unknownKeyHint(fs, k)
			}
			return nil, usageErrorf("--config %s: key %q: %s", path, k, why)
		}
		vals, err := fileValues(k, m[k])
		if err != nil {
			return nil, usageErrorf("--config %s: %s: %v", path, k, err)
		}
		if given(k) {
			continue
		}
		for _, v := range vals {
			if err := fs.Set(k, v); err != nil {
				return nil, usageErrorf("--config %s: %s = %q: %v", path, k, v, err)
			}
		}
		from[k] = path
	}
	var warnings []string
	if _, ok := m["token"]; ok && runtime.GOOS != "windows" {
		if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o044 != 0 {
			warnings = append(warnings, fmt.Sprintf("--config %s holds the token and is readable by other users (mode %v); "+
				"chmod 600 it, or give the token in %s", path, st.Mode().Perm(), envName("token")))
		}
	}
	return warnings, nil
}

// fileValues turns a TOML value into the flag values it stands for.
func fileValues(key string, v any) ([]string, error) {
	if list, ok := v.([]any); ok {
		if !repeatable[key] {
			return nil, errors.New("takes one value, not an array")
		}
		out := make([]string, 0, len(list))
		for _, e := range list {
			s, err := scalar(e)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
		return out, nil
	}
	s, err := scalar(v)
	if err != nil {
		return nil, err
	}
	return []string{s}, nil
}

func scalar(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case bool:
		return strconv.FormatBool(v), nil
	}
	return "", fmt.Errorf("want a string, an integer or a boolean (durations are strings such as \"30s\"), got %T", v)
}

// unknownKeyHint explains an unknown key, suggesting the flag it may mean.
func unknownKeyHint(fs *flag.FlagSet, k string) string {
	if alt := strings.ReplaceAll(k, "_", "-"); alt != k && fs.Lookup(alt) != nil {
		return fmt.Sprintf("unknown setting; did you mean %q? (keys are the flags' names)", alt)
	}
	if k == "route" || k == "routes" || k == "hosts" {
		return `unknown setting; routes are to = ["HOST=URL", ...] and root = ["HOST=DIR", ...]`
	}
	return "unknown setting (keys are the flags' names, e.g. proxy, token, to, root, connections)"
}
