package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/spdy-origin/spdy-origin/spdy"
)

func init() {
	caddy.RegisterModule(Transport{})
	caddy.RegisterModule(UpstreamSource{})
}

// DefaultPool is the pool name used when none is configured.
const DefaultPool = "default"

// ErrNoSession means no agent session of the pool can take the request.
// Handlers answer 503 Service Unavailable with Retry-After.
var ErrNoSession = errors.New("spdy_origin: no agent connected to this pool")

// ErrPoolBusy means every stream slot of the pool's sessions stayed in use
// for stream_queue_timeout. Handlers answer 503 with Retry-After.
var ErrPoolBusy = errors.New("spdy_origin: every agent session of this pool is at its stream limit")

// Transport is a reverse_proxy transport that sends each request as a new
// SPDY stream on the agent session of a pool with the fewest open streams.
// The upstream address chosen by reverse_proxy is ignored: the pool is the
// backend. With `reverse_proxy`, use it as
//
//	reverse_proxy {
//		dynamic spdy_origin
//		transport spdy_origin {
//			pool home
//		}
//	}
//
// (`dynamic spdy_origin` supplies the placeholder upstream reverse_proxy
// requires; any `to` address works too.) Agents register through a
// `spdy_origin` handler configured with the same pool.
type Transport struct {
	// Pool is the name of the pool of agent sessions. Default: "default".
	Pool string `json:"pool,omitempty"`

	// DialTimeout is how long a request waits for an agent to connect when
	// the pool has no usable session. Default: 0, answer 503 at once.
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

// RoundTrip sends req on the least busy session of the pool. A request the
// agent provably did not process (spdy.IsRetryable) is retried once on
// another session, provided none of its body was consumed.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	p := t.pool
	if p == nil {
		return nil, errors.New("spdy_origin transport is not provisioned")
	}
	s := p.pick(nil)
	if s == nil && t.DialTimeout > 0 {
		wctx, cancel := context.WithTimeout(req.Context(), time.Duration(t.DialTimeout))
		s = p.waitForSession(wctx)
		cancel()
	}
	if s == nil {
		closeBody(req) // nothing reads it yet
		if err := req.Context().Err(); err != nil {
			return nil, err
		}
		t.logUnavailable("no agent connected to pool; answering 503 (is the agent running and using the right token and pool?)")
		countRequest(p.name, http.StatusServiceUnavailable)
		return nil, caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("%w (pool %q)", ErrNoSession, p.name))
	}

	ctx := req.Context()
	var cancel context.CancelCauseFunc
	var timer *time.Timer
	if t.ResponseHeaderTimeout > 0 {
		ctx, cancel = context.WithCancelCause(ctx)
		timer = time.AfterFunc(time.Duration(t.ResponseHeaderTimeout), func() { cancel(errHeaderTimeout) })
	}
	release := func() {
		if timer != nil {
			timer.Stop()
			cancel(nil)
		}
	}

	out := req.WithContext(ctx) // shallow copy: a RoundTripper must not modify req
	u := *req.URL
	out.URL = &u
	// reverse_proxy pointed URL.Host at its placeholder upstream; the agent
	// should see the host and scheme the client used.
	if out.Host != "" {
		out.URL.Host = out.Host
	}
	if req.TLS != nil {
		out.URL.Scheme = "https"
	} else {
		out.URL.Scheme = "http"
	}
	var body *guardedBody
	if req.Body != nil && req.Body != http.NoBody {
		body = &guardedBody{rc: req.Body}
		out.Body = body
	}

	resp, err := s.roundTrip(out)
	if err != nil && spdy.IsRetryable(err) && ctx.Err() == nil && (body == nil || body.takeBack()) {
		s2 := p.pick(s)
		if s2 == nil {
			// Nothing processed it and nothing else can take it.
			release()
			closeBody(req) // taken back: nothing reads it
			return nil, t.unavailable(s, err)
		}
		if c := t.logger.Check(zapcore.DebugLevel, "retrying request on another agent session"); c != nil {
			c.Write(zap.String("pool", p.name), zap.Uint64("failed_session", s.id),
				zap.Uint64("session", s2.id), zap.Error(err))
		}
		if body != nil {
			body = &guardedBody{rc: req.Body}
			out.Body = body
		}
		s = s2
		resp, err = s.roundTrip(out)
		if err != nil && spdy.IsRetryable(err) && ctx.Err() == nil {
			release()
			body.Close()
			return nil, t.unavailable(s, err)
		}
	}
	if timer != nil && !timer.Stop() && errors.Is(context.Cause(ctx), errHeaderTimeout) {
		// The timer fired; even if headers just arrived, the stream's
		// context is cancelled, so the body could not be read.
		if err == nil {
			_ = resp.Body.Close()
		}
		body.Close()
		countRequest(p.name, http.StatusGatewayTimeout)
		return nil, timeoutError{msg: fmt.Sprintf("spdy_origin: agent (pool %q, session %d) sent no response headers within %s",
			p.name, s.id, time.Duration(t.ResponseHeaderTimeout))}
	}
	if err != nil {
		if cancel != nil {
			cancel(nil)
		}
		body.Close()
		return nil, t.failed(req, s, err)
	}
	countRequest(p.name, resp.StatusCode)
	if cancel != nil {
		// The stream lives on ctx: release it only when the body is done.
		resp.Body = withCancel(resp.Body, func() { cancel(nil) })
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

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// guardedBody is the request body one attempt reads. It counts what was
// read, so a request is only retried while none of its body has gone out;
// it lets the transport take the body back for a retry only when no read
// is under way; and it never closes the body while a read is under way
// (Caddy's body wrappers are not safe for that): a close that comes then
// is done by the read when it returns.
type guardedBody struct {
	rc io.ReadCloser

	mu          sync.Mutex
	read        int64
	reading     bool
	takenBack   bool // a retry owns the body now: reads fail, Close is a no-op
	closeWanted bool
	closed      bool
}

var errBodyTakenBack = errors.New("spdy_origin: request body taken back for a retry")

func (b *guardedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.takenBack || b.closed {
		b.mu.Unlock()
		if b.takenBack {
			return 0, errBodyTakenBack
		}
		return 0, http.ErrBodyReadAfterClose
	}
	b.reading = true
	b.mu.Unlock()
	n, err := b.rc.Read(p)
	b.mu.Lock()
	b.reading = false
	b.read += int64(n)
	closeNow := b.closeWanted && !b.closed
	if closeNow {
		b.closed = true
	}
	b.mu.Unlock()
	if closeNow {
		_ = b.rc.Close()
	}
	return n, err
}

// Close closes the body now, or when the read under way returns. A nil
// body (no request body) is fine.
func (b *guardedBody) Close() error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	if b.takenBack || b.closed {
		b.mu.Unlock()
		return nil
	}
	if b.reading {
		b.closeWanted = true
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	return b.rc.Close()
}

// takeBack ends this attempt's use of the body if none of it was read and
// no read is under way, so that a retry may read it from the start.
func (b *guardedBody) takeBack() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.read > 0 || b.reading || b.closed {
		return false
	}
	b.takenBack = true
	return true
}

// withCancel calls cancel once the body is closed, keeping the
// io.ReadWriteCloser of 101 responses that reverse_proxy needs for upgrades.
func withCancel(body io.ReadCloser, cancel func()) io.ReadCloser {
	if rwc, ok := body.(io.ReadWriteCloser); ok {
		return &cancelRWC{ReadWriteCloser: rwc, cancel: cancel}
	}
	return &cancelBody{ReadCloser: body, cancel: cancel}
}

type cancelBody struct {
	io.ReadCloser
	cancel func()
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

type cancelRWC struct {
	io.ReadWriteCloser
	cancel func()
}

func (b *cancelRWC) Close() error {
	err := b.ReadWriteCloser.Close()
	b.cancel()
	return err
}

// placeholderUpstream is the upstream reverse_proxy "dials"; our transport
// ignores it. The .invalid TLD (RFC 2606) can never resolve.
const placeholderUpstream = "spdy-origin.invalid:443"

// UpstreamSource gives reverse_proxy the placeholder upstream it needs
// when its transport is spdy_origin: `dynamic spdy_origin`.
type UpstreamSource struct{}

// CaddyModule returns the Caddy module information.
func (UpstreamSource) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.spdy_origin",
		New: func() caddy.Module { return new(UpstreamSource) },
	}
}

// GetUpstreams returns the placeholder upstream.
func (UpstreamSource) GetUpstreams(*http.Request) ([]*reverseproxy.Upstream, error) {
	return []*reverseproxy.Upstream{{Dial: placeholderUpstream}}, nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Transport)(nil)
	_ caddy.Validator             = (*Transport)(nil)
	_ caddy.CleanerUpper          = (*Transport)(nil)
	_ http.RoundTripper           = (*Transport)(nil)
	_ reverseproxy.UpstreamSource = (*UpstreamSource)(nil)
	_ interface{ Timeout() bool } = timeoutError{}
)
