package agent

// The session table: the sessions Run keeps up, which proxy and connection
// slot each one serves, and what /healthz, /readyz and /metrics read about
// them. Connection events (a session up, a session gone, a failed attempt)
// take its lock; the request path never does.

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spdy-origin/spdy-origin/spdy"
)

// slot is one connection loop: a proxy (its redacted URL, as in logs and
// metric labels) and the loop's index below --connections.
type slot struct {
	proxy string
	conn  int
}

// failure is a slot's last failed connection attempt.
type failure struct {
	err string
	at  time.Time
}

// sessionTotals are counters of sessions that have ended, per proxy, so the
// metrics stay monotonic when a session goes away.
type sessionTotals struct {
	streams, bytesIn, bytesOut uint64
}

type sessionTable struct {
	proxies []string // every configured proxy, in --proxy order

	mu       sync.Mutex
	live     map[*spdy.Session]slot
	ended    map[string]*sessionTotals // by proxy
	failures map[slot]failure          // cleared when the slot connects
	stopping bool                      // Run's context ended: draining
}

func newSessionTable(proxies []string) *sessionTable {
	t := &sessionTable{
		live:     make(map[*spdy.Session]slot),
		ended:    make(map[string]*sessionTotals),
		failures: make(map[slot]failure),
	}
	for _, p := range proxies {
		if t.ended[p] == nil { // a proxy given twice is one proxy here
			t.ended[p] = &sessionTotals{}
			t.proxies = append(t.proxies, p)
		}
	}
	return t
}

// add records a new session of slot s.
func (t *sessionTable) add(sess *spdy.Session, s slot) {
	t.mu.Lock()
	t.live[sess] = s
	delete(t.failures, s)
	t.mu.Unlock()
}

// remove forgets sess and adds its counters to its proxy's totals. It is
// called once the session has ended (or been closed), so its counters are
// final; a second call does nothing.
func (t *sessionTable) remove(sess *spdy.Session) {
	st := sess.Stats()
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.live[sess]
	if !ok {
		return
	}
	delete(t.live, sess)
	tot := t.ended[s.proxy]
	tot.streams += st.StreamsTotal
	tot.bytesIn += st.BytesIn
	tot.bytesOut += st.BytesOut
}

// failed records a failed connection attempt of slot s.
func (t *sessionTable) failed(s slot, err error) {
	t.mu.Lock()
	t.failures[s] = failure{err: err.Error(), at: time.Now()}
	t.mu.Unlock()
}

// setStopping marks the agent as draining: /readyz fails from now on.
func (t *sessionTable) setStopping() {
	t.mu.Lock()
	t.stopping = true
	t.mu.Unlock()
}

// count is how many sessions are tracked, draining ones included.
func (t *sessionTable) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.live)
}

// liveSession is one session in a snapshot.
type liveSession struct {
	slot
	stats    spdy.Stats
	draining bool // GOAWAY sent or received: takes no new streams
}

// snapshot is the table at one moment, for a scrape or a health check.
type snapshot struct {
	proxies  []string
	sessions []liveSession
	ended    map[string]sessionTotals
	failures map[slot]failure
	stopping bool
}

func (t *sessionTable) snapshot() snapshot {
	t.mu.Lock()
	snap := snapshot{
		proxies:  t.proxies,
		ended:    make(map[string]sessionTotals, len(t.ended)),
		failures: make(map[slot]failure, len(t.failures)),
		stopping: t.stopping,
	}
	for p, tot := range t.ended {
		snap.ended[p] = *tot
	}
	for s, f := range t.failures {
		snap.failures[s] = f
	}
	// Stats under our lock (each session's own lock is taken inside it;
	// sessions never call into the table), so a session that ends during a
	// scrape is counted either live or in ended, never in both: the
	// counters built from a snapshot never go down.
	for sess, s := range t.live {
		snap.sessions = append(snap.sessions, liveSession{slot: s, stats: sess.Stats(), draining: sess.GoingAway()})
	}
	t.mu.Unlock()
	return snap
}

// up is the number of sessions per proxy that take new streams.
func (s snapshot) up() map[string]int {
	n := make(map[string]int, len(s.proxies))
	for _, ls := range s.sessions {
		if !ls.draining {
			n[ls.proxy]++
		}
	}
	return n
}

// whyDown says why proxy has no session up: each slot's last failure, or
// that the agent is still connecting.
func (s snapshot) whyDown(proxy string) string {
	var slots []slot
	for sl := range s.failures {
		if sl.proxy == proxy {
			slots = append(slots, sl)
		}
	}
	if len(slots) == 0 {
		return "connecting"
	}
	sort.Slice(slots, func(i, j int) bool { return slots[i].conn < slots[j].conn })
	var b strings.Builder
	for i, sl := range slots {
		if i > 0 {
			b.WriteString("; ")
		}
		f := s.failures[sl]
		fmt.Fprintf(&b, "connection %d failed %s ago: %s", sl.conn, time.Since(f.at).Round(time.Second), f.err)
	}
	return b.String()
}
