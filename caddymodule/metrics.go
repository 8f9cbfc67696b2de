package caddymodule

import (
	"errors"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

const metricsNamespace, metricsSubsystem = "caddy", "spdy_origin"

// Registration failure reasons (label values of registration_failures_total).
const (
	reasonMissingToken  = "missing_token"
	reasonBadToken      = "bad_token"
	reasonLockedOut     = "locked_out"
	reasonBadMethod     = "bad_method"
	reasonWrongProtocol = "wrong_protocol"
	reasonBodyTooLarge  = "body_too_large"
	reasonBodyRead      = "body_read_error"
	reasonPoolFull      = "pool_full"
	reasonPoolClosed    = "pool_closed"
	reasonHijack        = "hijack_failed"
	reasonHandshake     = "handshake_failed"
	reasonBadHosts      = "bad_hosts"        // a malformed or too long Spdy-Origin-Hosts
	reasonHostRefused   = "host_not_allowed" // an announced host the token may not serve
)

// metrics are created once per process and registered in the metrics
// registry of every config that provisions one of our modules, as Caddy's
// reverse_proxy does; never in prometheus.DefaultRegisterer.
var metrics = struct {
	once                 sync.Once
	requests             *prometheus.CounterVec
	registrationFailures *prometheus.CounterVec
	pools                *poolCollector
}{}

func initMetrics(reg *prometheus.Registry) error {
	metrics.once.Do(func() {
		metrics.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Subsystem: metricsSubsystem,
			Name:      "requests_total",
			Help: "Requests proxied into agent sessions, by pool and status code " +
				"(the agent's status, or 499/502/503/504 when the round trip failed).",
		}, []string{"pool", "code"})
		metrics.registrationFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Subsystem: metricsSubsystem,
			Name:      "registration_failures_total",
			Help:      "Rejected or failed agent registrations, by pool and reason.",
		}, []string{"pool", "reason"})
		metrics.pools = newPoolCollector()
	})
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{metrics.requests, metrics.registrationFailures, metrics.pools} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

func countRequest(pool string, code int) {
	if metrics.requests != nil {
		metrics.requests.WithLabelValues(pool, strconv.Itoa(code)).Inc()
	}
}

func countRegistrationFailure(pool, reason string) {
	if metrics.registrationFailures != nil {
		metrics.registrationFailures.WithLabelValues(pool, reason).Inc()
	}
}

// poolCollector reads the live pools at scrape time, so gauges are never
// stale and byte counters include sessions that are still open.
type poolCollector struct {
	sessions, openStreams, upgraded, bytesIn, bytesOut, streams, connects *prometheus.Desc
	agents, announced                                                     *prometheus.Desc
}

func newPoolCollector() *poolCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, name), help, []string{"pool"}, nil)
	}
	return &poolCollector{
		sessions:    d("sessions", "Agent sessions currently in the pool."),
		openStreams: d("open_streams", "Streams currently open on the pool's sessions."),
		upgraded:    d("upgraded_streams", "Streams currently upgraded (WebSocket and other 101 responses) on the pool's sessions."),
		bytesIn:     d("bytes_from_agents_total", "DATA payload bytes received from the pool's agents (responses)."),
		bytesOut:    d("bytes_to_agents_total", "DATA payload bytes sent to the pool's agents (request bodies)."),
		streams:     d("streams_total", "Streams opened on the pool's sessions."),
		connects:    d("sessions_connected_total", "Agent sessions that joined the pool."),
		announced: d("announced_hosts", "Distinct host patterns the pool's agents announce (\"*\" counts as one; "+
			"agents that announce none serve every host and add nothing). Which session serves which: the admin API."),
		agents: prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "agent_sessions"),
			"Sessions currently connected, by pool and agent identity (from the registration headers).",
			[]string{"pool", "agent_name", "agent_version", "agent_instance"}, nil),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sessions, c.openStreams, c.upgraded, c.bytesIn, c.bytesOut, c.streams, c.connects, c.agents, c.announced} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range allPools() {
		ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(len(p.Sessions)), p.Name)
		ch <- prometheus.MustNewConstMetric(c.openStreams, prometheus.GaugeValue, float64(p.openStreams), p.Name)
		ch <- prometheus.MustNewConstMetric(c.upgraded, prometheus.GaugeValue, float64(p.upgraded), p.Name)
		ch <- prometheus.MustNewConstMetric(c.bytesIn, prometheus.CounterValue, float64(p.bytesIn), p.Name)
		ch <- prometheus.MustNewConstMetric(c.bytesOut, prometheus.CounterValue, float64(p.bytesOut), p.Name)
		ch <- prometheus.MustNewConstMetric(c.streams, prometheus.CounterValue, float64(p.streamsTotal), p.Name)
		ch <- prometheus.MustNewConstMetric(c.connects, prometheus.CounterValue, float64(p.connects), p.Name)
		ch <- prometheus.MustNewConstMetric(c.announced, prometheus.GaugeValue, float64(p.announced), p.Name)
		perAgent := map[agentIdentity]int{}
		for _, s := range p.Sessions {
			id := s.Agent
			id.Connection = ""
			perAgent[id]++
		}
		for id, n := range perAgent {
			ch <- prometheus.MustNewConstMetric(c.agents, prometheus.GaugeValue, float64(n), p.Name, id.Name, id.Version, id.Instance)
		}
	}
}
