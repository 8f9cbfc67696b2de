package caddymodule

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
	"github.com/spdy-origin/spdy-origin/spdy"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("spdy_origin", parseCaddyfileHandler)
	httpcaddyfile.RegisterDirectiveOrder("spdy_origin", httpcaddyfile.Before, "reverse_proxy")
}

// Defaults.
const (
	// DefaultConnect is the registration path (handshake.DefaultPath).
	DefaultConnect             = handshake.DefaultPath
	defaultMaxRegistrationBody = handshake.DefaultMaxRequestBody
	defaultMaxAuthFailures     = 10
	defaultAuthFailureWindow   = time.Minute
	defaultRetryAfter          = 5 * time.Second

	// minTokenBytes: a shorter token (after placeholders are resolved) is
	// warned about at load. 16 random bytes (128 bits) stay out of reach of
	// guessing however many addresses an attacker tries them from.
	minTokenBytes = 16
)

// Handler accepts origin agents on the connect route and reverse-proxies
// every other request it handles into a SPDY stream on one of the pool's
// agent sessions.
//
// Agents register with `PUT <connect>` over HTTP/1.1 and
// `Authorization: Bearer <token>`; the connection is then hijacked and
// becomes a SPDY/3.1 session in which Caddy is the client. Pools are
// process-global, so config reloads keep agents connected.
//
// Proxying is done by an internal reverse_proxy handler with the
// spdy_origin transport, so X-Forwarded-* headers, trusted proxies,
// hop-by-hop header rules, flushing, WebSocket upgrades and error statuses
// (499 client gone, 502 stream failed, 504 timeout) match reverse_proxy.
// With no agent connected the handler answers 503 with Retry-After; with
// agents, but none that announced the request's host, 503 with Retry-After
// and a plain-text body naming the host.
type Handler struct {
	// Pool names the pool that agents registering here join and that
	// requests are proxied to. Pools are process-global and outlive
	// config reloads; several handlers (sites) may share one, and the
	// handlers of one config on one pool must then agree on
	// MaxAuthFailures, AuthFailureWindow, MaxSessions and DrainTimeout
	// (a difference is a config error). Default: "default".
	Pool string `json:"pool,omitempty"`

	// Connect is the path of the registration route, matched exactly.
	// Requests to it are never proxied; agents must PUT to it over
	// HTTP/1.1 (other methods get 405, HTTP/2 and HTTP/3 get 505). Client
	// authentication or IP rules before this handler also meet the agents'
	// registrations; a spdy_origin_register handler before them answers
	// the registrations first. Default: "/.well-known/spdy-origin".
	Connect string `json:"connect,omitempty"`

	// Token lists the bearer tokens agents may register with; at least
	// one is required. Placeholders such as {env.SPDY_ORIGIN_TOKEN} are
	// resolved once at load, and an unknown or empty one is a config
	// error; surrounding whitespace (a trailing newline from a secrets
	// file) is trimmed. Tokens are compared in constant time. A token
	// shorter than 16 bytes is logged as a warning at load; make one with
	// `openssl rand -base64 32`. A token here may serve any host; Tokens
	// limits one to some hosts.
	Token []string `json:"token,omitempty"`

	// Tokens are bearer tokens limited to host patterns: an agent
	// registering with one may announce (handshake header
	// Spdy-Origin-Hosts) only hosts its patterns cover, and gets only
	// requests for them. Resolved and compared as Token; Token and Tokens
	// together need at least one entry.
	Tokens []TokenConfig `json:"tokens,omitempty"`

	// MaxRegistrationBody caps the body of a registration request, in
	// bytes; a larger one gets 413 (at once, unread, when its declared
	// length is larger). Default: 65536 (64 KiB).
	MaxRegistrationBody int64 `json:"max_registration_body,omitempty"`

	// MaxSessions caps the agent sessions in the pool; registrations
	// beyond it get 503 with Retry-After before their connection is taken
	// over. Sessions draining after GOAWAY do not count. It caps the
	// whole pool, so the handlers of one config on one pool must agree on
	// it. Default: 0, unlimited.
	MaxSessions int `json:"max_sessions,omitempty"`

	// MaxAuthFailures is how many missing or wrong tokens one address
	// prefix (an IPv4 address, an IPv6 /64) may send within
	// AuthFailureWindow; its further wrong tokens get 429 until
	// AuthFailureWindow has passed since the one that reached it. A valid
	// token always registers, whatever its address. The counts are kept
	// per pool name for the life of the process, across reloads, so the
	// handlers of one config on one pool must agree on it. Default: 10.
	MaxAuthFailures int `json:"max_auth_failures,omitempty"`

	// AuthFailureWindow is the window MaxAuthFailures counts in, and how
	// long a prefix stays locked out. The handlers of one config on one
	// pool must agree on it. Default: 1m.
	AuthFailureWindow caddy.Duration `json:"auth_failure_window,omitempty"`

	// RetryAfter is the Retry-After sent with a 503 (no agent connected,
	// every stream busy, pool full), rounded up to whole seconds. A 429
	// carries the time left in the prefix's lockout instead. Default: 5s.
	RetryAfter caddy.Duration `json:"retry_after,omitempty"`

	// DialTimeout is how long a request waits for an agent to connect when
	// the pool has none; then it gets 503. Default: 0, 503 at once.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// ResponseHeaderTimeout is how long the agent may take to send the
	// response headers, from when the request goes out; past it the
	// stream is reset and the client gets 504. Response bodies and
	// WebSockets are not limited by it. Default: 0, no limit (a client
	// that hangs up still cancels the stream).
	ResponseHeaderTimeout caddy.Duration `json:"response_header_timeout,omitempty"`

	// FlushInterval is reverse_proxy's flush_interval: how often the
	// response is flushed to the client while it streams; -1 flushes
	// after every write. Responses without Content-Length and event
	// streams are flushed at once whatever it is. Default: 0, as in
	// reverse_proxy.
	FlushInterval caddy.Duration `json:"flush_interval,omitempty"`

	// TrustedProxies is reverse_proxy's trusted_proxies: the IP ranges
	// (CIDR, or single addresses) of proxies in front of Caddy whose
	// X-Forwarded-* headers are passed on to the agent instead of
	// replaced. In the Caddyfile, private_ranges stands for the private
	// and loopback ranges. Default: none.
	TrustedProxies []string `json:"trusted_proxies,omitempty"`

	// Headers manipulates the request headers sent to the agent
	// (header_up: "request") and the response headers sent to the client
	// (header_down: "response"), as reverse_proxy's headers do. Default:
	// none.
	Headers *headers.Handler `json:"headers,omitempty"`

	// StreamTimeout is reverse_proxy's stream_timeout: upgraded streams
	// (WebSockets) are closed after this long. Default: 0, no limit.
	StreamTimeout caddy.Duration `json:"stream_timeout,omitempty"`

	// StreamCloseDelay is reverse_proxy's stream_close_delay: upgraded
	// streams (WebSockets) survive a config reload for this long instead
	// of being closed when the old config is unloaded. Default: 0.
	StreamCloseDelay caddy.Duration `json:"stream_close_delay,omitempty"`

	// DrainTimeout applies when the pool is removed from the config:
	// agents get GOAWAY, open streams have this long to finish, then the
	// sessions close. The value of the last config that had the pool
	// applies, so the handlers of one config on one pool must agree on
	// it. Default: 10s.
	DrainTimeout caddy.Duration `json:"drain_timeout,omitempty"`

	// StreamWindow is the largest receive window one stream grows to, in
	// bytes: how fast one download can go over a long round trip, and how
	// much unread data one stalled stream may hold. Range 65536 to
	// 2147483647. Default: 16 MiB (spdy.DefaultStreamWindow).
	StreamWindow int64 `json:"stream_window,omitempty"`

	// SessionWindow is each session's receive window and buffer budget,
	// in bytes: what its streams together may be granted beyond their
	// first 64 KiB each. Must be at least StreamWindow. Default: 64 MiB
	// (spdy.DefaultSessionWindow), or StreamWindow if that is larger.
	SessionWindow int64 `json:"session_window,omitempty"`

	// MaxConcurrentStreams caps the streams open at once on one session:
	// it is the SETTINGS_MAX_CONCURRENT_STREAMS sent to the agent (agents
	// open no streams, so that only bounds a misbehaving one), and the
	// most requests Caddy sends on the session at once, whatever the
	// agent allows (its --max-streams). Requests beyond either wait up to
	// StreamQueueTimeout. Default: 1000 (spdy.DefaultMaxConcurrentStreams).
	MaxConcurrentStreams uint32 `json:"max_concurrent_streams,omitempty"`

	// MaxUpgradedStreams caps the upgraded streams (WebSockets, other 101
	// responses) open at once on one session; further upgrades get 503.
	// Negative allows none. Default: 1000 (spdy.DefaultMaxUpgradedStreams).
	MaxUpgradedStreams int `json:"max_upgraded_streams,omitempty"`

	// StreamIdleTimeout resets a stream that waits this long on a party
	// that makes no progress: response data the client does not read, an
	// agent that does not read the request body, or, before the agent
	// answers, a client that sends no request body bytes (it gets 408).
	// Quiet streams (an event stream between events, an idle WebSocket)
	// are not affected. It frees the stream's slot and buffers. A client
	// that streams its request body with pauses before the agent answers
	// (a gRPC client stream) needs it above its longest pause; Caddy's own
	// read_idle_timeout applies too. -1 (Caddyfile: off) disables it.
	// Default: 1m (spdy.DefaultStreamIdleTimeout).
	StreamIdleTimeout caddy.Duration `json:"stream_idle_timeout,omitempty"`

	// StreamQueueTimeout is how long a request waits for a free stream
	// when every stream the agents allow is in use; then it gets 503 with
	// Retry-After. -1 (Caddyfile: off): wait as long as the client does.
	// Default: 10s (spdy.DefaultStreamQueueTimeout).
	StreamQueueTimeout caddy.Duration `json:"stream_queue_timeout,omitempty"`

	// PingInterval is how often each session sends a keepalive PING; the
	// round trips it measures also set how fast stream windows grow.
	// Default: 15s (spdy.DefaultPingInterval).
	PingInterval caddy.Duration `json:"ping_interval,omitempty"`

	// PingTimeout drops a session whose agent sends nothing at all, PING
	// answers included, for this long; its requests fail rather than
	// hang. Default: 10s (spdy.DefaultPingTimeout).
	PingTimeout caddy.Duration `json:"ping_timeout,omitempty"`

	// WriteTimeout closes a session when one write to its connection makes
	// no progress for this long (an agent that stopped reading).
	// Default: 30s (spdy.DefaultWriteTimeout).
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	tokens    []*tokenScope // resolved Token and Tokens
	transport *Transport
	proxy     *reverseproxy.Handler
	spdyCfg   *spdy.Config
	limiter   *authLimiter
	user      *poolUser    // joined the pool
	scopes    []routeScope // known to the registrars of these route lists: the last step of Provision
	logger    *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.spdy_origin",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision resolves tokens, takes a pool reference and provisions the
// internal reverse proxy. Nothing it does changes what a live config uses
// until its last step, joining the pool (poolsettings.go), which fails
// without side effects if another handler of this config gave the pool
// other settings.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.setDefaults()
	var err error
	if h.tokens, err = h.resolveTokens(); err != nil {
		return err
	}
	if h.spdyCfg, err = h.spdyConfig(); err != nil {
		return err
	}
	h.transport = &Transport{
		Pool:                  h.Pool,
		DialTimeout:           h.DialTimeout,
		ResponseHeaderTimeout: h.ResponseHeaderTimeout,
	}
	if err := h.transport.Provision(ctx); err != nil {
		return err
	}
	rp := h.reverseProxy()
	rp.Upstreams = reverseproxy.UpstreamPool{{Dial: placeholderUpstream}}
	rp.Transport = h.transport
	// Only a fully provisioned reverse proxy may be cleaned up.
	if err := rp.Provision(ctx); err != nil {
		return fmt.Errorf("spdy_origin: provisioning reverse proxy: %w", err)
	}
	h.proxy = rp

	user := &poolUser{config: ctx.Done(), name: handlerName(ctx, h.Connect), settings: h.poolSettings(), logger: h.logger, tokens: h.tokens}
	if err := h.transport.pool.join(user); err != nil {
		return fmt.Errorf("spdy_origin: %w", err)
	}
	h.user = user
	h.limiter = poolAuthLimiter(h.Pool, h.MaxAuthFailures, time.Duration(h.AuthFailureWindow))
	// For spdy_origin_register handlers of the route lists h is in
	// (registrar.go); they are this config's, so no live config sees h.
	h.scopes = scopesOf(ctx)
	addRegistrationRoute(h, h.scopes)
	h.warnIfShadowed(ctx)
	return nil
}

func (h *Handler) setDefaults() {
	if h.Pool == "" {
		h.Pool = DefaultPool
	}
	if h.Connect == "" {
		h.Connect = DefaultConnect
	}
	if h.MaxRegistrationBody == 0 {
		h.MaxRegistrationBody = defaultMaxRegistrationBody
	}
	if h.MaxAuthFailures == 0 {
		h.MaxAuthFailures = defaultMaxAuthFailures
	}
	for _, d := range []struct {
		field *caddy.Duration
		def   time.Duration
	}{
		{&h.AuthFailureWindow, defaultAuthFailureWindow},
		{&h.RetryAfter, defaultRetryAfter},
		{&h.DrainTimeout, defaultDrainTimeout},
	} {
		if *d.field == 0 {
			*d.field = caddy.Duration(d.def)
		}
	}
}

// spdyConfig is the configuration of the agents' sessions. Zero fields of
// spdy.Config mean its defaults, as zero fields of Handler do.
func (h *Handler) spdyConfig() (*spdy.Config, error) {
	for _, w := range []struct {
		name string
		v    int64
	}{{"stream_window", h.StreamWindow}, {"session_window", h.SessionWindow}} {
		if w.v < 0 || w.v > math.MaxInt32 {
			return nil, fmt.Errorf("spdy_origin: %s %d out of range (1..%d)", w.name, w.v, math.MaxInt32)
		}
	}
	cfg := &spdy.Config{
		StreamWindow:         int32(h.StreamWindow),
		SessionWindow:        int32(h.SessionWindow),
		MaxConcurrentStreams: h.MaxConcurrentStreams,
		MaxUpgradedStreams:   h.MaxUpgradedStreams,
		PingInterval:         time.Duration(h.PingInterval),
		PingTimeout:          time.Duration(h.PingTimeout),
		WriteTimeout:         time.Duration(h.WriteTimeout),
		StreamIdleTimeout:    time.Duration(h.StreamIdleTimeout),
		StreamQueueTimeout:   time.Duration(h.StreamQueueTimeout),
		Logger:               h.logger.Named("spdy").Sugar(),
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("spdy_origin: session settings: %w", err)
	}
	return cfg, nil
}

// reverseProxy returns a reverse_proxy handler with h's proxying options.
func (h *Handler) reverseProxy() *reverseproxy.Handler {
	return &reverseproxy.Handler{
		FlushInterval:    h.FlushInterval,
		TrustedProxies:   h.TrustedProxies,
		Headers:          h.Headers,
		StreamTimeout:    h.StreamTimeout,
		StreamCloseDelay: h.StreamCloseDelay,
	}
}

// Validate checks the configuration without side effects.
func (h *Handler) Validate() error {
	if !strings.HasPrefix(h.Connect, "/") {
		return fmt.Errorf("spdy_origin: connect must be a path starting with '/', got %q", h.Connect)
	}
	if h.MaxRegistrationBody < 0 {
		return errors.New("spdy_origin: max_registration_body must not be negative")
	}
	if h.MaxSessions < 0 {
		return errors.New("spdy_origin: max_sessions must not be negative")
	}
	if h.MaxAuthFailures < 0 {
		return errors.New("spdy_origin: max_auth_failures must not be negative")
	}
	for name, d := range map[string]caddy.Duration{
		"auth_failure_window": h.AuthFailureWindow, "retry_after": h.RetryAfter, "dial_timeout": h.DialTimeout,
		"response_header_timeout": h.ResponseHeaderTimeout, "stream_timeout": h.StreamTimeout,
		"stream_close_delay": h.StreamCloseDelay, "drain_timeout": h.DrainTimeout,
		"ping_interval": h.PingInterval, "ping_timeout": h.PingTimeout, "write_timeout": h.WriteTimeout,
	} {
		if d < 0 {
			return fmt.Errorf("spdy_origin: %s must not be negative", name)
		}
	}
	return nil
}

// Cleanup releases the internal proxy and the pool reference. Safe after a
// partial Provision. Fields stay set: requests of this config may still be
// finishing during a reload.
func (h *Handler) Cleanup() error {
	removeRegistrationRoute(h, h.scopes)
	if h.user != nil {
		// Before the transport gives the pool back: if this is the pool's
		// last reference, its Destruct uses this handler's drain timeout.
		h.transport.pool.leave(h.user)
	}
	var err error
	if h.proxy != nil {
		err = h.proxy.Cleanup()
	}
	if h.transport != nil {
		_ = h.transport.Cleanup()
	}
	return err
}

// ServeHTTP handles agent registrations on the connect path and proxies
// everything else into the pool.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.URL.Path == h.Connect {
		return h.serveRegistration(w, r)
	}
	err := h.proxy.ServeHTTP(w, r, next)
	var he *hostError
	switch {
	case err == nil:
	case errors.As(err, &he):
		// Not a random agent, and not an empty 503: say which host has no
		// agent, so that whoever set up the DNS name sees what is missing.
		w.Header().Set("Retry-After", h.retryAfterSeconds())
		w.Header().Set("Cache-Control", "no-store")
		return writeTextError(w, http.StatusServiceUnavailable,
			fmt.Sprintf("spdy-origin: no agent serves %q here yet (pool %q); try again later\n", he.host, he.pool))
	case errors.Is(err, ErrNoSession) || errors.Is(err, ErrPoolBusy):
		w.Header().Set("Retry-After", h.retryAfterSeconds())
	case errors.Is(err, spdy.ErrRequestBodyTimeout) && r.ProtoMajor == 1:
		// The client stopped sending its body, and a read of it may still
		// be blocked. Let the 408 out now and close the connection: the
		// read deadline ends that read (net/http would otherwise wait for
		// the body before answering), "Connection: close" that connection.
		w.Header().Set("Connection", "close")
		_ = http.NewResponseController(w).SetReadDeadline(time.Now())
	}
	return err
}

func (h *Handler) retryAfterSeconds() string {
	secs := int(math.Ceil(time.Duration(h.RetryAfter).Seconds()))
	if secs < 1 {
		secs = 1
	}
	return strconv.Itoa(secs)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
