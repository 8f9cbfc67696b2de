package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/spdy-origin/spdy-origin/internal/hosts"
	"github.com/spdy-origin/spdy-origin/spdy"
)

func init() {
	caddy.RegisterModule(Transport{})
}

// DefaultPool is the pool name used when none is configured.
const DefaultPool = "default"

// ErrNoSession means no agent session of the pool can take the request.
// Handlers answer 503 Service Unavailable with Retry-After.
var ErrNoSession = errors.New("spdy_origin: no agent connected to this pool")

// ErrNoSessionForHost means the pool has agent sessions, but none whose
// agent announced the request's host (or whose token allows it). Handlers
// answer 503 with Retry-After and a body naming the host.
var ErrNoSessionForHost = errors.New("spdy_origin: no agent of this pool serves this host")

// ErrPoolBusy means every stream slot of the pool's sessions stayed in use
// for stream_queue_timeout. Handlers answer 503 with Retry-After.
var ErrPoolBusy = errors.New("spdy_origin: every agent session of this pool is at its stream limit")

// Transport is a reverse_proxy transport that sends each request as a new
// SPDY stream on the agent session of a pool with the fewest open streams,
// among the sessions whose agent announced the request's Host (agents that
// announce nothing serve every host). The spdy_origin handler proxies
// through it; on its own it lets a reverse_proxy of your own send requests
// to a pool. The upstream address chosen by reverse_proxy is ignored: the
// pool is the backend. Agents register through a spdy_origin handler
// configured with the same pool.
//
// Caddyfile syntax, inside reverse_proxy:
//
//	transport spdy_origin {
//	    pool                    <name>
//	    dial_timeout            <duration>
//	    response_header_timeout <duration>
//	}
//
// For example:
//
//	reverse_proxy {
//		dynamic spdy_origin
//		transport spdy_origin {
//			pool home
//		}
//	}
//
// (`dynamic spdy_origin` supplies the placeholder upstream reverse_proxy
// requires; any `to` address works too.) Each subdirective sets the JSON
// field of the same name; durations are Caddy durations ("30s", "1m"; a
// JSON number means nanoseconds).
type Transport struct {
	// Pool is the name of the pool whose agent sessions take the
	// requests, e.g. "home". Agents join it by registering through a
	// spdy_origin handler with the same pool. Default: "default".
	Pool string `json:"pool,omitempty"`

	// DialTimeout is how long a request waits for an agent to connect when
	// the pool has no usable session; then it gets 503. Default: 0, 503 at
	// once.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// ResponseHeaderTimeout bounds the time from sending the request until
	// the agent's response headers arrive; past it the stream is cancelled
	// and the client gets 504. It does not limit streaming bodies or
	// WebSockets. Default: 0, no limit (a client hang-up still cancels).
	ResponseHeaderTimeout caddy.Duration `json:"response_header_timeout,omitempty"`

	pool     *pool
	logger   *zap.Logger
	released bool // Cleanup ran; Caddy calls Cleanup once per instance
}

// CaddyModule returns the Caddy module information.
func (Transport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.transport.spdy_origin",
		New: func() caddy.Module { return new(Transport) },
	}
}

// Provision takes a reference on the pool.
func (t *Transport) Provision(ctx caddy.Context) error {
	t.logger = ctx.Logger()
	if t.Pool == "" {
		t.Pool = DefaultPool
	}
	if err := initMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	p, err := loadPool(t.Pool)
	if err != nil {
		return fmt.Errorf("loading pool %q: %w", t.Pool, err)
	}
	t.pool = p
	return nil
}

// Validate checks the configuration.
func (t *Transport) Validate() error {
	if t.DialTimeout < 0 {
		return fmt.Errorf("dial_timeout must not be negative")
	}
	if t.ResponseHeaderTimeout < 0 {
		return fmt.Errorf("response_header_timeout must not be negative")
	}
	return nil
}

// Cleanup gives the pool reference back. It is safe after a failed
// Provision and idempotent. The pool pointer stays: requests of the old
// config still in flight during a reload keep working.
func (t *Transport) Cleanup() error {
	if t.pool != nil && !t.released {
		t.released = true
		releasePool(t.pool.name)
	}
	return nil
}

// timeoutError is a net.Error with Timeout() true, which reverse_proxy maps
// to 504. It deliberately does not unwrap to context errors (those mean 499).
type timeoutError struct{ msg string }

func (e timeoutError) Error() string   { return e.msg }
func (e timeoutError) Timeout() bool   { return true }
func (e timeoutError) Temporary() bool { return true }

var errHeaderTimeout = errors.New("response header timeout")

// RoundTrip sends req on the least busy session of the pool that serves
// its Host. A request the agent provably did not process
// (spdy.IsRetryable) is sent once more on another session serving that
// host, provided none of its body was read.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.pool == nil {
		return nil, errors.New("spdy_origin transport is not provisioned")
	}
	host := hosts.Canonical(req.Host)
	s, err := t.session(req, host)
	if err != nil {
		return nil, err
	}
	pr := t.prepare(req, s)
	resp, err := s.roundTrip(pr.out)
	if pr.unprocessed(err) && pr.body.takeBack() {
		s2 := t.pool.pick(host, s)
		if s2 == nil {
			// Nothing processed it and nothing else can take it.
			pr.stopTimer()
			closeBody(req) // taken back: nothing reads it
			return nil, t.unavailable(s, err)
		}
		resp, err = pr.retryOn(s2, err)
		if pr.unprocessed(err) {
			pr.stopTimer()
			pr.body.Close()
			return nil, t.unavailable(pr.s, err)
		}
	}
	return pr.finish(resp, err)
}

// session returns the pool's least busy session for the canonical host,
// waiting up to dial_timeout for an agent that serves it when there is
// none. Without one, the request gets 503.
func (t *Transport) session(req *http.Request, host string) (*session, error) {
	p := t.pool
	s := p.pick(host, nil)
	if s == nil && t.DialTimeout > 0 {
		wctx, cancel := context.WithTimeout(req.Context(), time.Duration(t.DialTimeout))
		s = p.waitForSession(wctx, host)
		cancel()
	}
	if s != nil {
		return s, nil
	}
	closeBody(req) // nothing reads it yet
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	countRequest(p.name, http.StatusServiceUnavailable)
	hostHint := "add a route for it to an agent, e.g. --to HOST=URL, or check the token's hosts"
	poolHint := "is the agent running and using the right token and pool?"
	hostFields := []zap.Field{zap.String("host", host), zap.Array("announced", announcedField{&p.index})}
	var poolFields []zap.Field
	// Sessions of a token a reload revoked take no requests while they
	// drain, so they are no agent for the host; they are why it has none.
	usable, n := p.unavailable(host)
	if n > 0 {
		hostHint, poolHint = revokedHint, revokedHint
		revoked := zap.Int("revoked_sessions", n)
		hostFields = append(hostFields, revoked)
		poolFields = []zap.Field{zap.String("host", host), revoked}
	}
	if usable {
		t.logUnavailable("no agent of the pool serves this host; answering 503 ("+hostHint+")", hostFields...)
		return nil, caddyhttp.Error(http.StatusServiceUnavailable, &hostError{pool: p.name, host: host})
	}
	t.logUnavailable("no agent connected to pool; answering 503 ("+poolHint+")", poolFields...)
	if n > 0 {
		return nil, caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("%w (pool %q; the %d session(s) that served %q are draining: a reload revoked their token)",
			ErrNoSession, p.name, n, host))
	}
	return nil, caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("%w (pool %q)", ErrNoSession, p.name))
}

// revokedHint explains a 503 for a host whose only sessions are of a token
// a reload revoked.
const revokedHint = "the agents that served it are draining after a reload revoked their token (removed it or changed its hosts); " +
	"they register again under the new config, or are refused"

// hostError is ErrNoSessionForHost for one host.
type hostError struct{ pool, host string }

func (e *hostError) Error() string {
	return fmt.Sprintf("%v: no agent of pool %q serves host %q", ErrNoSessionForHost, e.pool, e.host)
}

func (e *hostError) Unwrap() error { return ErrNoSessionForHost }

// proxiedRequest is one request on its way to an agent.
type proxiedRequest struct {
	t    *Transport
	req  *http.Request // as reverse_proxy handed it over
	out  *http.Request // what the agent gets
	body *guardedBody  // out's body; nil without one
	s    *session      // where out goes

	// With response_header_timeout: ctx is cancelled with
	// errHeaderTimeout when timer fires, or when the response body is
	// closed.
	ctx    context.Context
	cancel context.CancelCauseFunc
	timer  *time.Timer
}

// prepare makes the request for the agent: req as the client sent it to
// us, on a context that response_header_timeout bounds.
func (t *Transport) prepare(req *http.Request, s *session) *proxiedRequest {
	pr := &proxiedRequest{t: t, req: req, s: s, ctx: spdy.WithPriority(req.Context(), requestPriority(req))}
	if t.ResponseHeaderTimeout > 0 {
		pr.ctx, pr.cancel = context.WithCancelCause(pr.ctx)
		pr.timer = time.AfterFunc(time.Duration(t.ResponseHeaderTimeout), func() { pr.cancel(errHeaderTimeout) })
	}
	pr.out = req.WithContext(pr.ctx) // shallow copy: a RoundTripper must not modify req
	u := *req.URL
	pr.out.URL = &u
	// reverse_proxy pointed URL.Host at its placeholder upstream; the agent
	// should see the host and scheme the client used.
	if pr.out.Host != "" {
		pr.out.URL.Host = pr.out.Host
	}
	if req.TLS != nil {
		pr.out.URL.Scheme = "https"
	} else {
		pr.out.URL.Scheme = "http"
	}
	if req.Body != nil && req.Body != http.NoBody {
		pr.body = &guardedBody{rc: req.Body}
		pr.out.Body = pr.body
	}
	return pr
}

// unprocessed reports whether err means the agent did not process the
// request, which is still wanted.
func (pr *proxiedRequest) unprocessed(err error) bool {
	return err != nil && spdy.IsRetryable(err) && pr.ctx.Err() == nil
}

// retryOn sends the request again, on s after its first session failed
// with err; its body was taken back.
func (pr *proxiedRequest) retryOn(s *session, err error) (*http.Response, error) {
	if c := pr.t.logger.Check(zapcore.DebugLevel, "retrying request on another agent session"); c != nil {
		c.Write(zap.String("pool", pr.t.pool.name), zap.Uint64("failed_session", pr.s.id),
			zap.Uint64("session", s.id), zap.Error(err))
	}
	if pr.body != nil {
		pr.body = &guardedBody{rc: pr.req.Body}
		pr.out.Body = pr.body
	}
	pr.s = s
	return s.roundTrip(pr.out)
}

// stopTimer ends response_header_timeout for a request that gets no
// response.
func (pr *proxiedRequest) stopTimer() {
	if pr.timer != nil {
		pr.timer.Stop()
		pr.cancel(nil)
	}
}

// finish maps the outcome of the last attempt: 504 once
// response_header_timeout fired, the stream's error mapped, or the
// response with its body owning the stream's context.
func (pr *proxiedRequest) finish(resp *http.Response, err error) (*http.Response, error) {
	p := pr.t.pool
	if pr.timer != nil && !pr.timer.Stop() && errors.Is(context.Cause(pr.ctx), errHeaderTimeout) {
		// The timer fired; even if headers just arrived, the stream's
		// context is cancelled, so the body could not be read.
		if err == nil {
			_ = resp.Body.Close()
		}
		pr.body.Close()
		countRequest(p.name, http.StatusGatewayTimeout)
		return nil, timeoutError{msg: fmt.Sprintf("spdy_origin: agent (pool %q, session %d) sent no response headers within %s",
			p.name, pr.s.id, time.Duration(pr.t.ResponseHeaderTimeout))}
	}
	if err != nil {
		if pr.cancel != nil {
			pr.cancel(nil)
		}
		pr.body.Close()
		return nil, pr.t.failed(pr.req, pr.s, err)
	}
	countRequest(p.name, resp.StatusCode)
	if pr.req.ProtoMajor == 1 && len(resp.Trailer) > 0 && resp.ContentLength >= 0 {
		// An HTTP/1.1 client gets trailers only after a chunked body, and
		// with Content-Length reverse_proxy's response would have none:
		// HTTP/2 upstreams send both for short bodies.
		resp.Header.Del("Content-Length")
		resp.ContentLength = -1
	}
	if pr.cancel != nil {
		// The stream lives on ctx: release it only when the body is done.
		resp.Body = withCancel(resp.Body, func() { pr.cancel(nil) })
	}
	return resp, nil
}

// unavailable answers a request no session could take: 503, with
// Retry-After from the handler.
func (t *Transport) unavailable(s *session, err error) error {
	p := t.pool
	countRequest(p.name, http.StatusServiceUnavailable)
	if errors.Is(err, spdy.ErrStreamQueueTimeout) {
		t.logUnavailable("every stream slot of the pool's agent sessions stayed busy; answering 503 (raise the agent's --max-streams or --connections, or lower stream_idle_timeout)",
			zap.Uint64("session", s.id), zap.Error(err))
		return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("%w (pool %q, session %d: %w)", ErrPoolBusy, p.name, s.id, err))
	}
	t.logUnavailable("no agent session of the pool could take the request; answering 503", zap.Uint64("session", s.id), zap.Error(err))
	return caddyhttp.Error(http.StatusServiceUnavailable,
		fmt.Errorf("%w (pool %q; session %d did not process the request: %w)", ErrNoSession, p.name, s.id, err))
}

// failed maps the error of a stream that did not produce a response to
// the status the client gets. reverse_proxy keeps a caddyhttp.Error's
// status; anything else becomes 502 (or 499 when the client left).
func (t *Transport) failed(req *http.Request, s *session, err error) error {
	p := t.pool
	wrapped := fmt.Errorf("spdy_origin: pool %q session %d: %w", p.name, s.id, err)
	code := http.StatusBadGateway
	switch {
	case req.Context().Err() != nil:
		code = 499
	case errors.Is(err, spdy.ErrHeadersTooLarge):
		// The tunnel's header limit (max_header_bytes/_count), which both
		// ends apply: refused here, before the agent sees it.
		code = http.StatusRequestHeaderFieldsTooLarge
	case errors.Is(err, spdy.ErrRequestBodyTimeout):
		code = http.StatusRequestTimeout
	case errors.Is(err, spdy.ErrTooManyUpgrades):
		// The agent switched protocols but the session already carries
		// max_upgraded_streams upgraded streams; the stream was reset, which
		// closes the agent's upstream connection. A capacity limit, not a
		// broken upstream: 503.
		t.logger.Warn("upgrade refused: the agent session has max_upgraded_streams upgraded streams open",
			zap.String("pool", p.name), zap.Uint64("session", s.id), zap.Int("upgraded_streams", s.s.Stats().UpgradedStreams),
			zap.String("upgrade", req.Header.Get("Upgrade")), zap.String("uri", req.RequestURI))
		code = http.StatusServiceUnavailable
		wrapped = fmt.Errorf("spdy_origin: pool %q session %d: too many upgraded streams (WebSockets) open; raise max_upgraded_streams: %w", p.name, s.id, err)
	}
	countRequest(p.name, code)
	if code == http.StatusBadGateway || code == 499 {
		return wrapped // reverse_proxy's own mapping gives the same, and logs it as usual
	}
	return caddyhttp.Error(code, wrapped)
}

// logUnavailable logs why a request got 503, at most once a second per
// pool: a site under load must not flood the log at request rate.
func (t *Transport) logUnavailable(msg string, fields ...zap.Field) {
	now := time.Now().UnixNano()
	last := t.pool.noSessionLogged.Load()
	if now-last < int64(time.Second) || !t.pool.noSessionLogged.CompareAndSwap(last, now) {
		return
	}
	t.logger.Warn(msg, append([]zap.Field{zap.String("pool", t.pool.name)}, fields...)...)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Transport)(nil)
	_ caddy.Validator             = (*Transport)(nil)
	_ caddy.CleanerUpper          = (*Transport)(nil)
	_ http.RoundTripper           = (*Transport)(nil)
	_ interface{ Timeout() bool } = timeoutError{}
)
