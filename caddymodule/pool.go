package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
	"github.com/spdy-origin/spdy-origin/internal/hosts"
	"github.com/spdy-origin/spdy-origin/spdy"
)

// pools holds every live pool, keyed by pool name. It is process-global and
// reference counted, so a config reload (which provisions the new config
// before cleaning up the old one) keeps agents and in-flight streams, while a
// config without the pool destructs it and sends GOAWAY to its agents.
var pools = caddy.NewUsagePool()

// defaultDrainTimeout bounds how long a removed pool waits for open streams
// after sending GOAWAY before closing its sessions.
const defaultDrainTimeout = 10 * time.Second

var (
	// errPoolClosed: the pool was removed from the config while an agent registered.
	errPoolClosed = errors.New("pool is closed")
	// errTokenRevoked: the registration's token left the config (or got
	// other hosts) while it was being answered.
	errTokenRevoked = errors.New("the token was removed from the config, or its hosts changed, by a reload")
	// errPoolFull: max_sessions is reached.
	errPoolFull = errors.New("pool is full")
)

// sessionIDs numbers sessions process-wide, for logs and the admin API.
var sessionIDs atomic.Uint64

// agentIdentity is what an agent says about itself in its registration headers.
type agentIdentity struct {
	Name       string `json:"name,omitempty"`
	Version    string `json:"version,omitempty"`
	Instance   string `json:"instance,omitempty"`
	Connection string `json:"connection,omitempty"`
}

func (a agentIdentity) fields() []zap.Field {
	return []zap.Field{
		zap.String("agent_name", a.Name),
		zap.String("agent_version", a.Version),
		zap.String("agent_instance", a.Instance),
		zap.String("agent_connection", a.Connection),
	}
}

// session is one registered agent connection in a pool.
type session struct {
	id       uint64
	s        *spdy.Session
	agent    agentIdentity
	caps     handshake.Capabilities // what the agent announced at registration
	hosts    []string               // the host patterns it announced (canonical); nil: none
	announce *hosts.Set             // of hosts; nil: every host
	scope    *tokenScope            // the token it registered with
	remote   string
	since    time.Time
	pool     *pool
	rtt      atomic.Int64 // handshake RTT in ns, until the session measures its own
	picked   atomic.Int64 // requests picked for this session whose stream is not open yet
	released bool         // guarded by pool.mu: removed from the pool
	revoked  bool         // guarded by pool.mu: its token is gone from the config (dropRevokedLocked)
}

// announceSet is the set of announced host patterns; nil (every host) when
// the agent announced none.
func announceSet(announced []string) *hosts.Set {
	if announced == nil {
		return nil
	}
	return hosts.NewSet(announced...)
}

// claim ranks how strongly the session claims the canonical host, for pick.
// It is hosts.NoMatch when the session may not get a request for the host:
// its agent announced no pattern matching it (announcing nothing is a
// catch-all), or its token does not allow it. A token limited to hosts that
// covers the host outranks any token without hosts: the config gave that
// name to it. Then the most specific pattern wins, as in the agent's own
// routes: an exact announcement beats a wildcard, a longer wildcard a
// shorter one, and any of them a catch-all ("*" or no announcement), which
// under a limited token stands for the token's own patterns.
func (s *session) claim(host string) int {
	rank := 0 // announced nothing: every host, as a catch-all
	if s.announce != nil {
		if rank = s.announce.Specificity(host); rank == hosts.NoMatch {
			return hosts.NoMatch
		}
	}
	if !s.scope.restricted() {
		return rank
	}
	scoped := s.scope.set.Specificity(host)
	if scoped == hosts.NoMatch {
		return hosts.NoMatch
	}
	if rank == 0 {
		rank = scoped
	}
	return rank + limitedToken
}

// limitedToken lifts the claims of a token limited to hosts above all others.
const limitedToken = 2 * hosts.Exact

func (s *session) logFields() []zap.Field {
	return append([]zap.Field{
		zap.String("pool", s.pool.name),
		zap.Uint64("session", s.id),
		zap.String("remote_addr", s.remote),
	}, s.agent.fields()...)
}

// currentRTT prefers the session's own keepalive measurement.
func (s *session) currentRTT(st spdy.Stats) time.Duration {
	if st.RTT > 0 {
		return st.RTT
	}
	return time.Duration(s.rtt.Load())
}

// pool is a set of agent sessions that serve one pool name.
type pool struct {
	name string
	// active is the user (handler) whose logger and drain timeout are in
	// force: the newest, or the last to leave (see poolsettings.go).
	active atomic.Pointer[poolUser]
	// noSessionLogged rate-limits the "no agent" warning to one per second.
	noSessionLogged atomic.Int64

	mu       sync.Mutex
	sessions map[*session]struct{}
	order    []*session // sessions in join order, for rotation
	rr       uint64     // rotation counter for ties
	closed   bool
	users    []*poolUser // handlers using the pool, oldest first
	// index is what the pool's sessions and tokens may serve, for
	// tls.permission.spdy_origin; changed under mu and its own lock, read
	// under its own lock alone.
	index    hostIndex
	changed  chan struct{} // closed and replaced whenever a session joins
	reserved int           // max_sessions slots held by registrations not yet joined

	// counters of sessions that left, so totals stay monotonic
	goneBytesIn, goneBytesOut, goneStreams uint64
	connects                               uint64
}

func newPool(name string) *pool {
	return &pool{
		name:     name,
		sessions: make(map[*session]struct{}),
		changed:  make(chan struct{}),
	}
}

// loadPool returns the pool for name, creating it, and takes a reference
// that the caller must give back with releasePool.
func loadPool(name string) (*pool, error) {
	v, _, err := pools.LoadOrNew(name, func() (caddy.Destructor, error) {
		return newPool(name), nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*pool), nil
}

func releasePool(name string) {
	_, _ = pools.Delete(name)
}

// Destruct runs when the last config using the pool is unloaded: refuse new
// sessions, send GOAWAY to every agent, let open streams finish for up to the
// drain timeout, then close. It does not block Caddy's config unload.
func (p *pool) Destruct() error {
	p.mu.Lock()
	p.closed = true
	close(p.changed) // wake requests waiting for an agent (dial_timeout): none can join now
	p.changed = make(chan struct{})
	list := make([]*session, 0, len(p.sessions))
	for s := range p.sessions {
		list = append(list, s)
	}
	p.mu.Unlock()
	drain := p.drainTimeout()
	p.log().Info("pool removed from config; sending GOAWAY to agents",
		zap.String("pool", p.name), zap.Int("sessions", len(list)), zap.Duration("drain_timeout", drain))
	for _, s := range list {
		go s.goAway(drain)
	}
	return nil
}

// goAway sends GOAWAY, lets open streams finish for up to drain, then
// closes the session. It returns once the session is closed, at the latest
// after drain: run it in a goroutine of its own.
func (s *session) goAway(drain time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	_ = s.s.Shutdown(ctx)
	_ = s.s.Close()
}

// reserve takes a max_sessions slot for a registration about to be
// answered 200, so that an agent told 200 always gets its session: two
// registrations cannot both see the last free slot. The caller fills the
// slot with join or gives it back with release. maxSessions <= 0 means
// unlimited.
func (p *pool) reserve(maxSessions int) (*poolSlot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errPoolClosed
	}
	if n := p.activeLocked() + p.reserved; maxSessions > 0 && n >= maxSessions {
		return nil, fmt.Errorf("%w: %d of max_sessions %d connected or registering", errPoolFull, n, maxSessions)
	}
	p.reserved++
	return &poolSlot{p: p}, nil
}

// poolSlot is a place in a pool held for one registration.
type poolSlot struct {
	p    *pool
	used bool // joined or released
}

// release gives the slot back, unless join has used it.
func (sl *poolSlot) release() {
	if sl.used {
		return
	}
	sl.used = true
	sl.p.mu.Lock()
	sl.p.reserved--
	sl.p.mu.Unlock()
}

// join puts a fresh session in the slot and watches it so it leaves the
// pool the moment it dies. It fails only if the pool was closed meanwhile.
func (sl *poolSlot) join(s *session) error {
	if sl.used {
		panic("spdy_origin: pool slot used twice")
	}
	sl.used = true
	p := sl.p
	p.mu.Lock()
	p.reserved--
	if p.closed {
		p.mu.Unlock()
		return errPoolClosed
	}
	if !p.currentLocked(s.scope) {
		// Accepted by a handler whose config a reload has just replaced.
		p.mu.Unlock()
		return errTokenRevoked
	}
	p.sessions[s] = struct{}{}
	p.order = append(p.order, s)
	p.connects++
	close(p.changed)
	p.changed = make(chan struct{})
	p.index.addSession(s)
	p.mu.Unlock()

	go p.watch(s)
	return nil
}

// activeLocked counts the sessions that still take new requests: one that
// is draining after GOAWAY does not hold a max_sessions slot against the
// agent that replaces it. p.mu is held.
func (p *pool) activeLocked() int {
	n := 0
	for s := range p.sessions {
		if !s.s.GoingAway() {
			n++
		}
	}
	return n
}

// watch removes s from the pool as soon as its session ends, and logs why.
func (p *pool) watch(s *session) {
	<-s.s.Done()
	p.mu.Lock()
	st := s.s.Stats()
	if !s.released {
		s.released = true
		delete(p.sessions, s)
		p.order = slices.DeleteFunc(p.order, func(x *session) bool { return x == s })
		p.goneBytesIn += st.BytesIn
		p.goneBytesOut += st.BytesOut
		p.goneStreams += st.StreamsTotal
		if !s.revoked { // else it left the index when it was revoked
			p.index.removeSession(s)
		}
	}
	left := len(p.sessions)
	p.mu.Unlock()

	cause := s.s.Err()
	fields := append(s.logFields(),
		zap.Duration("connected_for", time.Since(s.since)),
		zap.Duration("rtt", s.currentRTT(st)),
		zap.Uint64("streams_total", st.StreamsTotal),
		zap.Uint64("bytes_from_agent", st.BytesIn),
		zap.Uint64("bytes_to_agent", st.BytesOut),
		zap.Int("sessions_left", left),
	)
	if cause != nil {
		fields = append(fields, zap.String("cause", cause.Error()))
	} else {
		fields = append(fields, zap.String("cause", "closed"))
	}
	p.log().Info("agent disconnected", fields...)
}

// pick returns the usable session for the canonical host with the fewest
// open streams among those that claim it most strongly (session.claim),
// skipping exclude, sessions that do not serve host (their
// agent did not announce it, or their token does not allow it) and
// sessions that are going away or already dead. Ties rotate, so sequential
// requests spread over idle sessions too.
func (p *pool) pick(host string, exclude *session) *session {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.order)
	if n == 0 {
		return nil
	}
	start := int(p.rr % uint64(n))
	p.rr++
	var best *session
	bestOpen, bestClaim := 0, hosts.NoMatch
	for i := range n {
		s := p.order[(start+i)%n]
		if s == exclude || s.revoked || s.s.GoingAway() {
			continue
		}
		claim := s.claim(host)
		if claim == hosts.NoMatch || claim < bestClaim {
			continue
		}
		select {
		case <-s.s.Done():
			continue
		default:
		}
		// Requests picked but not yet opened count too, or a burst that
		// arrives at once would all go to the same session.
		open := s.s.OpenStreams() + int(s.picked.Load())
		if best == nil || claim > bestClaim || open < bestOpen {
			best, bestOpen, bestClaim = s, open, claim
		}
	}
	if best != nil {
		best.picked.Add(1)
	}
	return best
}

// roundTrip sends req on a session pick chose, ending its "picked" count.
func (s *session) roundTrip(req *http.Request) (*http.Response, error) {
	resp, err := s.s.RoundTrip(req)
	s.picked.Add(-1)
	return resp, err
}

// unavailable says why pick found no session for the canonical host, in
// one pass under one lock (a hostile client can ask for any host, and each
// such request gets here): usable is whether the pool has a session that
// takes new requests for some host (one whose token a reload has not
// revoked, that is not going away and not dead: what pick skips), and
// revoked counts the sessions still in the pool, draining, that claimed the
// host under a token a reload has since revoked.
func (p *pool) unavailable(host string) (usable bool, revoked int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for s := range p.sessions {
		switch {
		case s.revoked:
			if s.claim(host) != hosts.NoMatch {
				revoked++
			}
		case !usable && !s.s.GoingAway():
			select {
			case <-s.s.Done():
			default:
				usable = true
			}
		}
	}
	return usable, revoked
}

// waitForSession waits until a session for the canonical host is usable,
// ctx ends, or the pool closes.
func (p *pool) waitForSession(ctx context.Context, host string) *session {
	for {
		if s := p.pick(host, nil); s != nil {
			return s
		}
		p.mu.Lock()
		ch, closed := p.changed, p.closed
		p.mu.Unlock()
		if closed {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil
		}
	}
}

// poolSnapshot is the admin API and metrics view of a pool.
type poolSnapshot struct {
	Name     string            `json:"pool"`
	Closed   bool              `json:"closed,omitempty"`
	Sessions []sessionSnapshot `json:"sessions"`

	bytesIn, bytesOut, streamsTotal, connects uint64
	openStreams, upgraded                     int
	announced                                 int // distinct host patterns the sessions announce
}

type sessionSnapshot struct {
	ID              uint64        `json:"id"`
	RemoteAddr      string        `json:"remote_addr"`
	Agent           agentIdentity `json:"agent"`
	Capabilities    []string      `json:"capabilities,omitempty"`
	Hosts           []string      `json:"hosts,omitempty"`       // announced; absent: none (every host)
	TokenHosts      []string      `json:"token_hosts,omitempty"` // its token's; absent: any host
	ConnectedSince  time.Time     `json:"connected_since"`
	OpenStreams     int           `json:"open_streams"`
	UpgradedStreams int           `json:"upgraded_streams"`
	StreamsTotal    uint64        `json:"streams_total"`
	BytesFromAgent  uint64        `json:"bytes_from_agent"`
	BytesToAgent    uint64        `json:"bytes_to_agent"`
	RTT             string        `json:"rtt"`
	RTTSeconds      float64       `json:"rtt_seconds"`
	GoingAway       bool          `json:"going_away"`
}

func (p *pool) snapshot() poolSnapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	ps := poolSnapshot{
		Name:         p.name,
		Closed:       p.closed,
		Sessions:     make([]sessionSnapshot, 0, len(p.sessions)),
		bytesIn:      p.goneBytesIn,
		bytesOut:     p.goneBytesOut,
		streamsTotal: p.goneStreams,
		connects:     p.connects,
		announced:    p.index.announcedCount(),
	}
	for s := range p.sessions {
		st := s.s.Stats()
		rtt := s.currentRTT(st)
		ps.Sessions = append(ps.Sessions, sessionSnapshot{
			ID:              s.id,
			RemoteAddr:      s.remote,
			Agent:           s.agent,
			Capabilities:    s.caps,
			Hosts:           s.hosts,
			TokenHosts:      s.scope.hostList(),
			ConnectedSince:  s.since,
			OpenStreams:     st.OpenStreams,
			UpgradedStreams: st.UpgradedStreams,
			StreamsTotal:    st.StreamsTotal,
			BytesFromAgent:  st.BytesIn,
			BytesToAgent:    st.BytesOut,
			RTT:             rtt.String(),
			RTTSeconds:      rtt.Seconds(),
			GoingAway:       s.s.GoingAway(),
		})
		ps.bytesIn += st.BytesIn
		ps.bytesOut += st.BytesOut
		ps.streamsTotal += st.StreamsTotal
		ps.openStreams += st.OpenStreams
		ps.upgraded += st.UpgradedStreams
	}
	sort.Slice(ps.Sessions, func(i, j int) bool { return ps.Sessions[i].ID < ps.Sessions[j].ID })
	return ps
}

// allPools snapshots every live pool, sorted by name.
func allPools() []poolSnapshot {
	var out []poolSnapshot
	pools.Range(func(_, v any) bool {
		if p, ok := v.(*pool); ok {
			out = append(out, p.snapshot())
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
