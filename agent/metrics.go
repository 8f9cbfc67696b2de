package agent

// Prometheus metrics of the agent, in a registry of its own (never
// prometheus.DefaultRegisterer: a program that embeds the package gets
// nothing registered behind its back). endpoints.go serves them on
// --metrics-addr. The rest of the agent talks to them through four calls:
// instrument (wraps the stream handler), reconnect (a connection loop goes
// round again), upstreamError (serve.go), and the session table, which a
// collector reads at scrape time.
//
// The request path touches only atomic counters: a request's status picks
// its counter from a fixed array filled on first use, so no lock is taken
// per request (CounterVec.WithLabelValues would take the vector's lock).

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
	"github.com/spdy-origin/spdy-origin/spdy"
)

const metricsNamespace = "spdy_origin_agent"

// Reasons for reconnecting: the label values of reconnects_total{cause}.
const (
	causeDial          = "dial"           // TCP connection to the proxy failed
	causeTLS           = "tls"            // TLS handshake failed (certificate, protocol)
	causeTokenRejected = "token_rejected" // spdy_origin refused the token (its own 401)
	causeHostRefused   = "host_refused"   // spdy_origin refused a host the agent announced (its own 403)
	causeBlocked       = "blocked"        // a 401, 403 or 407 from something in front of spdy_origin (handshake.ErrBlocked)
	causeRefused       = "refused"        // another non-200 answer (429, 503 pool full, 5xx)
	causeRegistration  = "registration"   // the registration failed otherwise (timeout, malformed answer)
	causeGoAway        = "goaway"         // the proxy sent GOAWAY (config reload, shutdown)
	causePingTimeout   = "ping_timeout"   // the proxy stopped answering PINGs
	causeLost          = "connection_lost"
)

var reconnectCauses = []string{causeDial, causeTLS, causeTokenRejected, causeHostRefused, causeBlocked, causeRefused, causeRegistration,
	causeGoAway, causePingTimeout, causeLost}

// Reasons for upstream errors: the label values of upstream_errors_total{reason}.
const (
	upstreamDial     = "dial"     // connecting to --to failed
	upstreamTimeout  = "timeout"  // no answer in time
	upstreamResponse = "response" // failed before response headers (reset, malformed)
	upstreamBody     = "body"     // the response body failed midway; the stream was reset
)

var upstreamReasons = []string{upstreamDial, upstreamTimeout, upstreamResponse, upstreamBody}

type metrics struct {
	reg            *prometheus.Registry
	reconnects     *prometheus.CounterVec
	requests       *prometheus.CounterVec
	codes          [1000]atomic.Pointer[prometheus.Counter] // requests by status, filled on first use
	upstreamErrors map[string]prometheus.Counter            // by reason; read-only after newMetrics
}

// newMetrics registers every collector: the agent's own, the session
// collector reading sessions, build info, and Go's runtime and process ones.
func newMetrics(sessions *sessionTable, connections int) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Name:      "reconnects_total",
			Help:      "Connection attempts made again after a failed attempt or an ended session, by proxy and cause.",
		}, []string{"proxy", "cause"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Name:      "requests_total",
			Help:      "Requests (streams) the proxy sent that the agent answered, by the status code it sent.",
		}, []string{"code"}),
		upstreamErrors: map[string]prometheus.Counter{},
	}
	upstream := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace,
		Name:      "upstream_errors_total",
		Help:      "Requests the --to upstream failed, by reason (dial, timeout, response: before headers, answered 502; body: midway, stream reset).",
	}, []string{"reason"})
	for _, r := range upstreamReasons {
		m.upstreamErrors[r] = upstream.WithLabelValues(r)
	}
	// Series that exist from the start, so rate() and absent() work before
	// the first event.
	for _, p := range sessions.proxies {
		for _, c := range reconnectCauses {
			m.reconnects.WithLabelValues(p, c)
		}
	}
	m.counter(http.StatusOK)
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace:   metricsNamespace,
		Name:        "build_info",
		Help:        "Always 1; the labels say which build is running.",
		ConstLabels: prometheus.Labels{"version": agentVersion(), "commit": agentCommit(), "goversion": runtime.Version()},
	})
	build.Set(1)
	m.reg.MustRegister(m.reconnects, m.requests, upstream, build,
		newSessionCollector(sessions, connections),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// counter is requests_total{code}: the vector's lock only the first time a
// code is seen.
func (m *metrics) counter(code int) prometheus.Counter {
	if code < 0 || code >= len(m.codes) {
		code = 0
	}
	if c := m.codes[code].Load(); c != nil {
		return *c
	}
	c := m.requests.WithLabelValues(strconv.Itoa(code))
	m.codes[code].CompareAndSwap(nil, &c)
	return c
}

// reconnect counts a connection loop going round again, for cause.
func (m *metrics) reconnect(proxy, cause string) {
	m.reconnects.WithLabelValues(proxy, cause).Inc()
}

// upstreamError counts a failed upstream request.
func (m *metrics) upstreamError(reason string) {
	if c, ok := m.upstreamErrors[reason]; ok {
		c.Inc()
	}
}

// instrument counts h's responses by status.
func (m *metrics) instrument(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			code := sw.code
			if v := recover(); v != nil {
				if code == 0 {
					code = http.StatusInternalServerError // the stream is reset with INTERNAL_ERROR
				}
				m.counter(code).Inc()
				panic(v)
			}
			if code == 0 {
				code = http.StatusOK // nothing written: net/http and spdy send 200
			}
			m.counter(code).Inc()
		}()
		h.ServeHTTP(sw, r)
	})
}

// statusWriter remembers the status a handler sends. It passes Flush and
// Hijack on (the upstream handler asserts them directly), and Unwrap serves
// http.ResponseController for the rest.
type statusWriter struct {
	http.ResponseWriter
	code int // 0 until headers are sent
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// WriteWithRoom passes spdy.RoomWriter on.
func (w *statusWriter) WriteWithRoom(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	if rw, ok := w.ResponseWriter.(spdy.RoomWriter); ok {
		return rw.WriteWithRoom(b)
	}
	return w.ResponseWriter.Write(b[spdy.FrameRoom:])
}

func (w *statusWriter) Flush() { _ = w.FlushError() }

func (w *statusWriter) FlushError() error {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *statusWriter) Hijack() (c net.Conn, rw *bufio.ReadWriter, err error) {
	c, rw, err = http.NewResponseController(w.ResponseWriter).Hijack()
	if errors.Is(err, spdy.ErrTooManyUpgrades) {
		w.code = http.StatusServiceUnavailable // spdy answered 503 instead of the 101
	}
	return c, rw, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// connectCause is the reconnects_total cause of a failed connection attempt.
func connectCause(err error) string {
	var refused *handshake.StatusError
	var st *stageError
	switch {
	case errors.Is(err, handshake.ErrTokenRejected):
		return causeTokenRejected
	case errors.Is(err, handshake.ErrHostRefused):
		return causeHostRefused
	case errors.Is(err, handshake.ErrBlocked):
		return causeBlocked
	case errors.As(err, &refused):
		return causeRefused
	case errors.As(err, &st):
		return st.stage
	}
	return causeRegistration
}

// endCause is the reconnects_total cause of an ended session (replaced: the
// proxy sent GOAWAY while streams were open).
func endCause(err error, replaced bool) string {
	switch {
	case replaced, errors.Is(err, spdy.ErrPeerGoneAway), errors.Is(err, spdy.ErrGoAway):
		return causeGoAway
	case errors.Is(err, spdy.ErrPingTimeout):
		return causePingTimeout
	}
	return causeLost
}

// stageError marks where a connection attempt failed (dial.go); its text
// is the wrapped error's, so logs read as before.
type stageError struct {
	stage string
	err   error
}

func (e *stageError) Error() string { return e.err.Error() }
func (e *stageError) Unwrap() error { return e.err }

// sessionCollector reads the session table at scrape time: gauges are never
// stale, and the counters add up the live sessions and the ended ones.
type sessionCollector struct {
	table       *sessionTable
	connections int

	sessions, wanted, openStreams, upgraded, streams, bytesIn, bytesOut, rtt *prometheus.Desc
}

func newSessionCollector(t *sessionTable, connections int) *sessionCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, "", name), help, append([]string{"proxy"}, labels...), nil)
	}
	return &sessionCollector{
		table:       t,
		connections: connections,
		sessions:    d("sessions", "Sessions to the proxy, by state: up (takes requests) or draining (GOAWAY sent or received, finishing its streams).", "state"),
		wanted:      d("sessions_wanted", "Sessions the agent keeps to each proxy (--connections)."),
		openStreams: d("open_streams", "Streams open now on the proxy's sessions."),
		upgraded:    d("upgraded_streams", "Of the open streams, those upgraded to byte pipes (WebSockets and other 101 responses)."),
		streams:     d("streams_total", "Streams opened on the proxy's sessions."),
		bytesIn:     d("received_bytes_total", "DATA payload bytes received from the proxy (request bodies, upgraded streams' bytes)."),
		bytesOut:    d("sent_bytes_total", "DATA payload bytes sent to the proxy (response bodies, upgraded streams' bytes)."),
		rtt:         d("ping_rtt_seconds", "Round trip of the session's last PING, by connection slot; absent before the first.", "conn"),
	}
}

func (c *sessionCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sessions, c.wanted, c.openStreams, c.upgraded, c.streams, c.bytesIn, c.bytesOut, c.rtt} {
		ch <- d
	}
}

func (c *sessionCollector) Collect(ch chan<- prometheus.Metric) {
	snap := c.table.snapshot()
	type perProxy struct {
		up, draining, open, upgraded int
		sessionTotals
	}
	by := make(map[string]*perProxy, len(snap.proxies))
	for _, p := range snap.proxies {
		by[p] = &perProxy{sessionTotals: snap.ended[p]}
	}
	rttSeen := map[slot]bool{} // a duplicate --proxy gives two loops one slot
	for _, s := range snap.sessions {
		p := by[s.proxy]
		if s.draining {
			p.draining++
		} else {
			p.up++
			if s.stats.RTT > 0 && !rttSeen[s.slot] {
				rttSeen[s.slot] = true
				ch <- prometheus.MustNewConstMetric(c.rtt, prometheus.GaugeValue, s.stats.RTT.Seconds(), s.proxy, strconv.Itoa(s.conn))
			}
		}
		p.open += s.stats.OpenStreams
		p.upgraded += s.stats.UpgradedStreams
		p.streams += s.stats.StreamsTotal
		p.bytesIn += s.stats.BytesIn
		p.bytesOut += s.stats.BytesOut
	}
	for _, name := range snap.proxies {
		p := by[name]
		gauge := func(d *prometheus.Desc, v int, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), append([]string{name}, labels...)...)
		}
		counter := func(d *prometheus.Desc, v uint64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), name)
		}
		gauge(c.sessions, p.up, "up")
		gauge(c.sessions, p.draining, "draining")
		gauge(c.wanted, c.connections)
		gauge(c.openStreams, p.open)
		gauge(c.upgraded, p.upgraded)
		counter(c.streams, p.streams)
		counter(c.bytesIn, p.bytesIn)
		counter(c.bytesOut, p.bytesOut)
	}
}
