package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/spdy-origin/spdy-origin/internal/hosts"
	"github.com/spdy-origin/spdy-origin/spdy"
)

// Options configures an Agent. Main fills it from flags, environment variables and
// the --config file (each field names its flag); NewAgent requires Proxies, Token, at
// least one route (Routes, To or Root), and Connections of at least 1.
type Options struct {
	Proxies []*url.URL // --proxy: where to register; https:// (http:// for local tests); no path: handshake.DefaultPath
	Token   string     // --token: the bearer token the proxy expects
	// Routes send each Host to an upstream or a directory (--to HOST=URL,
	// --root HOST=DIR); their host patterns are announced to the proxy.
	Routes             []Route
	To                 *url.URL      // --to URL: the route for every host (a catch-all Route; exclusive with Root)
	Root               string        // --root DIR: the route for every host (exclusive with To)
	CAFile             string        // --ca-file: extra PEM roots for verifying the proxy
	UpstreamCAFile     string        // --upstream-ca-file: extra PEM roots for verifying the https:// upstreams
	InsecureSkipVerify bool          // --insecure-skip-verify: do not verify the proxy's certificate (testing only)
	Connections        int           // --connections: parallel sessions per proxy (Main's default 2)
	Name               string        // --name: identity sent to the proxy (Main's default: the host name)
	DrainTimeout       time.Duration // --drain-timeout: how long in-flight streams may finish once Run's context ends
	MaxStreams         uint32        // --max-streams: concurrent streams the proxy may open per session; 0: spdy's default
	MaxUpgrades        int           // --max-upgrades: upgraded streams (WebSockets) per session; 0: spdy's default
	MetricsAddr        string        // --metrics-addr: serve /metrics, /healthz and /readyz here, e.g. 127.0.0.1:9464; "": off
	DebugAddr          string        // --debug-addr: serve net/http/pprof here (debug.go); "": off
	// NotSentLowat is --tcp-notsent-lowat (advanced, not in -h): spdy.Config.NotSentLowat
	// for the agent's sessions; 0: spdy's default (32 KiB); negative: the kernel's setting.
	NotSentLowat int
}

// tuning holds knobs that users do not set but tests shorten.
type tuning struct {
	backoffMin, backoffMax time.Duration // reconnect delays after ordinary failures
	rejectedMin            time.Duration // first delay after a 401; doubles up to rejectedMax
	rejectedMax            time.Duration
	maxRetryAfter          time.Duration // cap on a proxy's Retry-After (429/503)
	healthyAfter           time.Duration // a session that lived this long resets the backoff
	handshakeTimeout       time.Duration // TCP+TLS+PUT+200 must finish within this
	upstreamDialTimeout    time.Duration
	upgradeHeaderTimeout   time.Duration // upstream must answer an upgrade request within this
	pipeLinger             time.Duration // after one direction of an upgraded pipe ends, wait this long for the other
	spdy                   *spdy.Config  // template; Logger is set per session
	rnd                    func() float64
	// sleep waits between attempts; tests replace it to record delays without waiting.
	sleep func(ctx context.Context, d time.Duration) bool
}

func defaultTuning() tuning {
	return tuning{
		backoffMin:           100 * time.Millisecond,
		backoffMax:           30 * time.Second,
		rejectedMin:          time.Minute,
		rejectedMax:          10 * time.Minute,
		maxRetryAfter:        10 * time.Minute,
		healthyAfter:         30 * time.Second,
		handshakeTimeout:     20 * time.Second,
		upstreamDialTimeout:  10 * time.Second,
		upgradeHeaderTimeout: 60 * time.Second,
		pipeLinger:           30 * time.Second,
		sleep:                sleepCtx,
	}
}

// Agent keeps --connections sessions open to every proxy and serves their streams.
type Agent struct {
	opts      Options
	tun       tuning
	log       *zap.Logger
	tlsConf   *tls.Config
	routes    []Route // checked, canonical hosts
	handler   http.Handler
	closeIdle func() // releases pooled upstream connections at exit
	instance  string

	bg sync.WaitGroup // sessions finishing after the proxy's GOAWAY

	sessions      *sessionTable // live sessions; health and metrics read it
	metrics       *metrics
	endpointsAddr atomic.Value // string: where --metrics-addr listens
}

// NewAgent validates opts and prepares TLS and the stream handler; log may be nil.
// Nothing is dialled before Run.
func NewAgent(opts Options, log *zap.Logger) (*Agent, error) {
	return newAgent(opts, defaultTuning(), log)
}

func newAgent(opts Options, tun tuning, log *zap.Logger) (*Agent, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if err := opts.validate(log); err != nil {
		return nil, err
	}
	routes, err := opts.routes()
	if err != nil {
		return nil, err
	}
	if tun.sleep == nil {
		tun.sleep = sleepCtx
	}
	tc, err := proxyTLSConfig(opts.CAFile, opts.InsecureSkipVerify)
	if err != nil {
		return nil, err
	}
	if opts.InsecureSkipVerify {
		log.Warn("!!! --insecure-skip-verify: the proxy's TLS certificate is NOT verified; anyone on the path can " +
			"impersonate the proxy, steal the token and read or change all traffic. Never use this in production. !!!")
	}
	a := &Agent{
		opts:     opts,
		tun:      tun,
		log:      log,
		tlsConf:  tc,
		routes:   routes,
		instance: newInstanceID(),
	}
	proxies := make([]string, len(opts.Proxies))
	for i, p := range opts.Proxies {
		proxies[i] = p.Redacted()
	}
	a.sessions = newSessionTable(proxies)
	a.metrics = newMetrics(a.sessions, opts.Connections)
	if a.handler, a.closeIdle, err = newHandler(routes, opts.UpstreamCAFile, tun, a.metrics, log); err != nil {
		return nil, err
	}
	if a.tun.spdy, err = sessionConfig(tun.spdy, opts); err != nil {
		a.closeIdle()
		return nil, err
	}
	return a, nil
}

// validate checks what NewAgent cannot work without, and warns about plain-http proxies.
func (o *Options) validate(log *zap.Logger) error {
	if len(o.Proxies) == 0 {
		return errors.New("at least one --proxy is required")
	}
	if o.Token == "" {
		return errors.New("--token is required")
	}
	if o.UpstreamCAFile != "" && !o.hasHTTPSUpstream() {
		return errors.New("--upstream-ca-file needs an https:// --to upstream")
	}
	if o.Connections < 1 {
		return fmt.Errorf("--connections must be at least 1, got %d", o.Connections)
	}
	if o.DrainTimeout < 0 {
		return fmt.Errorf("--drain-timeout must not be negative")
	}
	for _, p := range o.Proxies {
		switch p.Scheme {
		case "https":
		case "http":
			log.Warn("proxy URL is plain http: the token and all traffic travel unencrypted; use only for local tests",
				zap.String("proxy", p.Redacted()))
		default:
			return fmt.Errorf("proxy URL %q: scheme must be https (or http for local tests)", p.Redacted())
		}
		if p.Host == "" {
			return fmt.Errorf("proxy URL %q has no host", p.Redacted())
		}
	}
	return nil
}

func (o *Options) hasHTTPSUpstream() bool {
	if o.To != nil && o.To.Scheme == "https" {
		return true
	}
	for _, r := range o.Routes {
		if r.To != nil && r.To.Scheme == "https" {
			return true
		}
	}
	return false
}

// newHandler is what answers the proxy's streams, counted in m: each
// route's upstream (trusting upstreamCAFile's roots too) or directory,
// behind a router by Host unless one route serves every host; closeIdle
// releases their resources at exit.
func newHandler(routes []Route, upstreamCAFile string, tun tuning, m *metrics, log *zap.Logger) (h http.Handler, closeIdle func(), err error) {
	roots, err := certPool("--upstream-ca-file", upstreamCAFile)
	if err != nil {
		return nil, nil, err
	}
	handlers := make([]http.Handler, 0, len(routes))
	var closers []func()
	closeAll := func() {
		for _, c := range closers {
			c()
		}
	}
	for _, r := range routes {
		rlog := log
		if len(routes) > 1 {
			rlog = log.With(zap.String("route", r.Host))
		}
		if r.To != nil {
			u, err := newUpstreamHandler(r.To, roots, tun, rlog)
			if err != nil {
				closeAll()
				return nil, nil, err
			}
			u.countError = m.upstreamError
			handlers = append(handlers, u)
			closers = append(closers, u.closeIdle)
			continue
		}
		f, err := newFileHandler(r.Root, rlog)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		handlers = append(handlers, f)
		closers = append(closers, f.close)
	}
	if len(routes) == 1 && routes[0].Host == hosts.CatchAll {
		return m.instrument(handlers[0]), closeAll, nil
	}
	return m.instrument(newHostRouter(routes, handlers, log.Named("routes"))), closeAll, nil
}

// sessionConfig is the template of every session's settings: base (nil: spdy's
// defaults) with --max-streams, --max-upgrades and --tcp-notsent-lowat applied.
func sessionConfig(base *spdy.Config, opts Options) (*spdy.Config, error) {
	if base == nil {
		base = spdy.DefaultConfig()
	}
	if opts.MaxStreams > 0 || opts.MaxUpgrades > 0 || opts.NotSentLowat != 0 {
		c := *base
		if opts.MaxStreams > 0 {
			c.MaxConcurrentStreams = opts.MaxStreams
		}
		if opts.MaxUpgrades > 0 {
			c.MaxUpgradedStreams = opts.MaxUpgrades
		}
		if opts.NotSentLowat != 0 {
			c.NotSentLowat = opts.NotSentLowat
		}
		base = &c
	}
	if err := base.Validate(); err != nil {
		return nil, fmt.Errorf("spdy config: %w", err)
	}
	return base, nil
}

// proxyTLSConfig builds the client TLS config used to dial proxies: system roots plus
// the PEM certificates in caFile, and ALPN offering only http/1.1 so the proxy does not
// pick HTTP/2 (the registration must be an HTTP/1.1 request whose connection we keep).
func proxyTLSConfig(caFile string, insecure bool) (*tls.Config, error) {
	tc := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		NextProtos:         []string{"http/1.1"},
		InsecureSkipVerify: insecure, //nolint:gosec // explicit user opt-in, warned loudly
	}
	pool, err := certPool("--ca-file", caFile)
	if err != nil {
		return nil, err
	}
	tc.RootCAs = pool
	return tc, nil
}

// certPool returns the system roots plus the PEM certificates in file, or
// nil (the system roots) when file is empty; flag names the option in errors.
func certPool(flag, file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s %s: no PEM certificate found", flag, file)
	}
	return pool, nil
}

func newInstanceID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Run connects to every proxy with opts.Connections sessions each and keeps them
// up until ctx is cancelled. Then it sends GOAWAY on every session, lets in-flight
// streams finish for up to opts.DrainTimeout, closes what is left and returns nil.
// With opts.MetricsAddr it serves the metrics and health endpoints meanwhile (and
// returns an error at once if it cannot listen there).
func (a *Agent) Run(ctx context.Context) error {
	stopEndpoints, err := a.startEndpoints()
	if err != nil {
		return err
	}
	defer stopEndpoints()
	stopDebug, err := a.startDebug()
	if err != nil {
		return err
	}
	defer stopDebug()
	context.AfterFunc(ctx, a.sessions.setStopping)
	a.log.Info("agent starting",
		zap.String("version", agentVersion()),
		zap.String("name", a.opts.Name),
		zap.String("instance", a.instance),
		zap.Int("proxies", len(a.opts.Proxies)),
		zap.Int("connections_per_proxy", a.opts.Connections),
		zap.Strings("serving", a.servingDesc()))
	var wg sync.WaitGroup
	for _, p := range a.opts.Proxies {
		for i := 0; i < a.opts.Connections; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.connLoop(ctx, p, i)
			}()
		}
	}
	wg.Wait()
	a.bg.Wait()
	if a.closeIdle != nil {
		a.closeIdle()
	}
	a.log.Info("agent stopped")
	return nil
}

// servingDesc says what each route serves: "upstream http://…" for the only,
// catch-all route, else "a.example.com: upstream http://…" per route.
func (a *Agent) servingDesc() []string {
	out := make([]string, len(a.routes))
	for i, r := range a.routes {
		out[i] = r.describe()
		if len(a.routes) > 1 || r.Host != hosts.CatchAll {
			out[i] = r.Host + ": " + out[i]
		}
	}
	return out
}

// connLoop keeps one session to proxy alive until ctx ends: connect, serve until the
// session ends or the proxy sends GOAWAY, wait (retries says how long), again.
func (a *Agent) connLoop(ctx context.Context, proxy *url.URL, idx int) {
	log := a.log.With(zap.String("proxy", proxy.Redacted()), zap.Int("conn", idx))
	sl := slot{proxy: proxy.Redacted(), conn: idx}
	r := newRetries(a.tun, log)
	for ctx.Err() == nil {
		sess, err := a.connect(ctx, proxy, sl, log)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.sessions.failed(sl, err)
			a.metrics.reconnect(sl.proxy, connectCause(err))
			if !a.tun.sleep(ctx, r.failed(err)) {
				return
			}
			continue
		}
		r.connected(sess)
		start := time.Now()
		replaced := a.waitSession(ctx, sess, log)
		if ctx.Err() != nil {
			return
		}
		if !replaced {
			a.sessions.failed(sl, fmt.Errorf("session ended: %w", sess.Err()))
		}
		a.metrics.reconnect(sl.proxy, endCause(sess.Err(), replaced))
		if !a.tun.sleep(ctx, r.ended(sess, replaced, time.Since(start))) {
			return
		}
	}
}

// waitSession blocks until sess ends (false) or the proxy sent GOAWAY while streams
// are still open (true): then the old session finishes in the background and the
// caller opens a replacement at once, so the proxy keeps --connections usable
// sessions. When ctx ends, the session is drained before returning.
func (a *Agent) waitSession(ctx context.Context, sess *spdy.Session, log *zap.Logger) bool {
	select {
	case <-sess.Done():
		a.sessions.remove(sess)
		return false
	case <-ctx.Done():
		a.drain(sess, log)
		return false
	case <-sess.GoAwayReceived():
	}
	select {
	case <-sess.Done():
		a.sessions.remove(sess)
		return false
	default:
	}
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		select {
		case <-sess.Done():
			a.sessions.remove(sess)
			log.Debug("replaced session finished", zap.NamedError("cause", sess.Err()))
		case <-ctx.Done():
			a.drain(sess, log)
		}
	}()
	return true
}

// drain sends GOAWAY and waits up to DrainTimeout for in-flight streams, then closes.
func (a *Agent) drain(sess *spdy.Session, log *zap.Logger) {
	defer a.sessions.remove(sess)
	open := sess.Stats().OpenStreams
	log.Info("draining session", zap.Int("open_streams", open), zap.Duration("timeout", a.opts.DrainTimeout))
	ctx, cancel := context.WithTimeout(context.Background(), a.opts.DrainTimeout)
	defer cancel()
	if err := sess.Shutdown(ctx); err != nil {
		left := sess.Stats().OpenStreams
		_ = sess.Close()
		if errors.Is(err, context.DeadlineExceeded) {
			log.Warn("drain timeout: closing session with streams still open", zap.Int("aborted_streams", left))
		} else {
			log.Debug("session shutdown", zap.Error(err))
		}
		return
	}
	log.Info("session drained")
}

// activeSessions reports how many sessions are currently up (for tests).
func (a *Agent) activeSessions() int { return a.sessions.count() }
