package caddymodule

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

func TestHandlerValidate(t *testing.T) {
	h := Handler{Connect: "relative"}
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "connect must be a path") {
		t.Fatalf("want connect error, got %v", err)
	}
	h = Handler{Connect: "/x", DialTimeout: -1}
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "dial_timeout must not be negative") {
		t.Fatalf("want dial_timeout error, got %v", err)
	}
	h = Handler{Connect: "/x"}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
}

// Tokens from the environment or a secrets file often carry a trailing
// newline. A bearer token in a header can never have surrounding whitespace,
// so such a configured token must be trimmed, not silently unusable.
func TestTokenWhitespaceTrimmed(t *testing.T) {
	t.Setenv("SPDY_ORIGIN_TEST_TOKEN_NL", " "+testToken+"\n")
	loadConfig(t, map[string]any{"handler": "spdy_origin", "pool": "token-nl", "token": []string{"{env.SPDY_ORIGIN_TEST_TOKEN_NL}"}})
	reg, err := register(t, testConnect, "Bearer "+testToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	if reg.status != http.StatusOK {
		t.Fatalf("registration with the token from a newline-terminated env var: %d %q", reg.status, reg.body)
	}
	reg.conn.Close()
}

// A token whose placeholder is unknown or resolves to nothing must fail the
// config: dropping the placeholder would leave a weaker token than the one
// the user wrote.
func TestTokenPlaceholderErrors(t *testing.T) {
	for _, tok := range []string{"{env.SPDY_ORIGIN_SURELY_UNSET_VAR}", "prefix-{no.such.placeholder}"} {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		h := &Handler{Token: []string{tok}}
		err := h.Provision(ctx)
		_ = h.Cleanup()
		cancel()
		if err == nil {
			t.Errorf("token %q: Provision succeeded, want an error", tok)
		} else {
			t.Logf("token %q: %v", tok, err)
		}
	}
}

// A token shorter than 16 bytes (after placeholders are resolved) is easy to
// guess: loading it logs a warning that says how to make a strong one, and
// never the token itself.
func TestShortTokenWarning(t *testing.T) {
	const short = "tiny-tok9"
	t.Setenv("SPDY_ORIGIN_TEST_SHORT_TOKEN", short)
	logFile := filepath.Join(t.TempDir(), "spdy.log")
	cfg := testConfig(spdyRoute(freshPool("short-token"), map[string]any{
		"token": []string{"{env.SPDY_ORIGIN_TEST_SHORT_TOKEN}", "a-long-enough-token-for-this-pool"},
	}))
	logs := cfg["logging"].(map[string]any)["logs"].(map[string]any)
	logs["spdy"].(map[string]any)["writer"] = map[string]any{"output": "file", "filename": logFile}
	loadRawConfig(t, cfg)
	t.Cleanup(func() { loadConfig(t, spdyRoute("short-token-after", nil)) }) // back to the stderr log

	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	var warnings []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, `"level":"warn"`) && strings.Contains(line, "token") {
			warnings = append(warnings, line)
		}
	}
	if len(warnings) != 1 {
		t.Fatalf("%d token warnings, want 1 (for the short token only); log:\n%s", len(warnings), b)
	}
	w := warnings[0]
	for _, want := range []string{"head -c 32 /dev/urandom | base64", "openssl rand -base64 32", `"bytes":9`} {
		if !strings.Contains(w, want) {
			t.Errorf("warning lacks %q: %s", want, w)
		}
	}
	if strings.Contains(string(b), short) {
		t.Fatalf("the log contains the token: %s", b)
	}
}

// The session settings pass to spdy as they are: zero means spdy's default,
// so a lone stream_window above the default session window is fine (the
// session window follows it), and values spdy cannot take are config errors.
func TestSpdyConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		h       Handler
		wantErr string
	}{
		{name: "defaults"},
		{name: "large stream window alone", h: Handler{StreamWindow: 128 << 20}},
		{name: "stream window out of range", h: Handler{StreamWindow: 1 << 31}, wantErr: "stream_window 2147483648 out of range"},
		{name: "negative session window", h: Handler{SessionWindow: -1}, wantErr: "session_window -1 out of range"},
		{name: "stream window below SPDY's minimum", h: Handler{StreamWindow: 1000}, wantErr: "below the SPDY minimum"},
		{name: "session window below stream window", h: Handler{StreamWindow: 8 << 20, SessionWindow: 1 << 20}, wantErr: "smaller than the stream window"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.h.logger = zap.NewNop()
			cfg, err := tc.h.spdyConfig()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.StreamWindow != int32(tc.h.StreamWindow) || cfg.Logger == nil {
				t.Fatalf("config %+v", cfg)
			}
		})
	}
}
