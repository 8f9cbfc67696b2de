package caddymodule

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/spdy-origin/spdy-origin/spdy"
)

// The host index follows sessions as they join and leave a pool: an agent
// that opens and closes sessions in a loop, or simply keeps many open, must
// cost each join and leave its own patterns only, not the pool's, since
// both happen under the lock that request routing takes.

// pipeSession starts a SPDY client session on a pipe whose other end is
// drained: a stand-in for an agent's connection. Sessions joined with it
// leave their pool when it is closed.
func pipeSession(tb testing.TB) *spdy.Session {
	tb.Helper()
	c, peer := net.Pipe()
	go func() {
		_, _ = io.Copy(io.Discard, peer)
		_ = peer.Close()
	}()
	ss, err := spdy.NewClient(c, &spdy.Config{PingInterval: -1, WriteTimeout: -1, StreamIdleTimeout: -1})
	if err != nil {
		tb.Fatal(err)
	}
	return ss
}

// joinSession joins a session of ss announcing announced under scope to p
// the way a registration does: a max_sessions slot, then join.
func joinSession(tb testing.TB, p *pool, ss *spdy.Session, scope *tokenScope, announced []string) *session {
	tb.Helper()
	slot, err := p.reserve(0)
	if err != nil {
		tb.Fatal(err)
	}
	s := &session{
		id:       sessionIDs.Add(1),
		s:        ss,
		hosts:    announced,
		announce: announceSet(announced),
		scope:    scope,
		remote:   "pipe",
		since:    time.Now(),
		pool:     p,
	}
	if err := slot.join(s); err != nil {
		tb.Fatal(err)
	}
	return s
}

// waitLeft waits until s has left p (its session ended and watch saw it).
func waitLeft(tb testing.TB, p *pool, s *session) {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		p.mu.Lock()
		_, in := p.sessions[s]
		p.mu.Unlock()
		if !in {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatal("session still in the pool a minute after it closed")
		}
		runtime.Gosched()
	}
}

// distinctPatterns returns n host names under label.test.
func distinctPatterns(label string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("h%d.%s.test", i, label)
	}
	return out
}

// churnPool is a pool with others sessions (of one SPDY session) that
// announce perSession names each, and an agent that joins and leaves it
// with perSession names of its own.
type churnPool struct {
	p      *pool
	shared *spdy.Session
	scope  *tokenScope
	churn  []string
}

func newChurnPool(tb testing.TB, others, perSession int) *churnPool {
	tb.Helper()
	c := &churnPool{
		p:      newPool(fmt.Sprintf("churn-%d", others)),
		shared: pipeSession(tb),
		scope:  &tokenScope{n: 1}, // a token without hosts
		churn:  distinctPatterns("churn", perSession),
	}
	for i := range others {
		joinSession(tb, c.p, c.shared, c.scope, distinctPatterns(fmt.Sprint("s", i), perSession))
	}
	return c
}

// cycle is one hostile agent's session: it registers and goes away.
func (c *churnPool) cycle(tb testing.TB) {
	ss := pipeSession(tb)
	s := joinSession(tb, c.p, ss, c.scope, c.churn)
	_ = ss.Close()
	waitLeft(tb, c.p, s)
}

// close ends the pool's other sessions and waits until they left.
func (c *churnPool) close(tb testing.TB) {
	_ = c.shared.Close()
	waitUntil(tb, "the pool's sessions left", time.Minute, func() bool {
		c.p.mu.Lock()
		defer c.p.mu.Unlock()
		return len(c.p.sessions) == 0
	})
}

// A session that joins and leaves a pool of 200 sessions, each announcing
// 100 names, must cost what it costs in a pool of 3: the work is counted as
// the bytes allocated per join and leave (the machine's speed does not
// enter), which rebuilding the whole index makes grow with the pool.
func TestHostileSessionChurnCost(t *testing.T) {
	const perSession, cycles = 100, 10
	perCycle := func(others int) uint64 {
		c := newChurnPool(t, others, perSession)
		defer c.close(t)
		c.cycle(t) // the index's maps reach their size
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range cycles {
			c.cycle(t)
		}
		runtime.ReadMemStats(&after)
		return (after.TotalAlloc - before.TotalAlloc) / cycles
	}
	small, big := perCycle(3), perCycle(200)
	t.Logf("a session with %d names joining and leaving: %s in a pool of 3 sessions, %s in a pool of 200 (%d names each)",
		perSession, kib(small), kib(big), perSession)
	if big > 2*small {
		t.Fatalf("a join and leave allocates %s in a pool of 200 sessions but %s in a pool of 3: "+
			"each join and leave redoes work for every session of the pool, under the lock routing takes",
			kib(big), kib(small))
	}
}

// The index follows joins, leaves, revocations and config changes to
// exactly what rebuilding it whole from the pool's sessions and tokens
// gives.
func TestHostIndexFollowsThePool(t *testing.T) {
	scopes := func(tokens ...TokenConfig) []*tokenScope {
		t.Helper()
		h := Handler{logger: zap.NewNop(), Tokens: tokens}
		list, err := h.resolveTokens()
		if err != nil {
			t.Fatal(err)
		}
		return list
	}
	user := func(tokens ...TokenConfig) *poolUser {
		return &poolUser{config: make(chan struct{}), name: "test", logger: zap.NewNop(), tokens: scopes(tokens...)}
	}
	anyTok := TokenConfig{Value: "index-any-0123456789"}
	alice := TokenConfig{Value: "index-alice-0123456789", Hosts: []string{"*.alice.test", "media.bob.test"}}
	v1 := user(anyTok, alice)
	anyScope, aliceScope := v1.tokens[0], v1.tokens[1]

	p := newPool("index-follows")
	check := func(when string) {
		t.Helper()
		p.mu.Lock()
		defer p.mu.Unlock()
		agents, announced, tokenHosts, anyToken := rebuiltIndex(p)
		ix := &p.index
		if got := sortedSet(ix.agents.Patterns()); !slices.Equal(got, agents) {
			t.Errorf("%s: agents %v, rebuilt %v", when, got, agents)
		}
		if got := ix.announcedList(); !slices.Equal(got, announced) || ix.announcedCount() != len(announced) {
			t.Errorf("%s: announced %v (%d), rebuilt %v", when, got, ix.announcedCount(), announced)
		}
		if !slices.Equal(ix.tokenHosts, tokenHosts) || ix.anyToken != anyToken || ix.tokens.Len() != len(tokenHosts) {
			t.Errorf("%s: tokens %v any %v, rebuilt %v any %v", when, ix.tokenHosts, ix.anyToken, tokenHosts, anyToken)
		}
	}
	waitCount := func(n int) {
		t.Helper()
		waitUntil(t, fmt.Sprintf("%d sessions in the pool", n), 10*time.Second, func() bool {
			p.mu.Lock()
			defer p.mu.Unlock()
			return len(p.sessions) == n
		})
	}

	if err := p.join(v1); err != nil {
		t.Fatal(err)
	}
	check("a handler joined")
	type joined struct {
		ss *spdy.Session
		s  *session
	}
	var all []joined
	for _, a := range []struct {
		scope *tokenScope
		hosts []string
	}{
		{anyScope, []string{"a.test", "*.com", "*"}}, // a public suffix and a catch-all add nothing for certificates
		{anyScope, nil},
		{anyScope, []string{"a.test", "*.github.io", "b.test"}},
		{anyScope, []string{"a.test", "a.test"}}, // announced twice: still one pattern
		{aliceScope, []string{"*"}},              // the token's hosts
		{aliceScope, nil},
		{aliceScope, []string{"x.alice.test", "*.alice.test"}},
		{aliceScope, []string{"x.alice.test", "media.bob.test"}},
		{anyScope, []string{"x.alice.test", "*"}}, // shares patterns with alice's, and stays
	} {
		ss := pipeSession(t)
		all = append(all, joined{ss, joinSession(t, p, ss, a.scope, a.hosts)})
		check(fmt.Sprintf("session %d joined", len(all)))
	}
	// The 503 warning logs the list, computed when written, as zap.Strings would.
	enc := zapcore.NewJSONEncoder(zapcore.EncoderConfig{})
	lazy, err := enc.EncodeEntry(zapcore.Entry{}, []zap.Field{zap.Array("announced", announcedField{&p.index})})
	if err != nil {
		t.Fatal(err)
	}
	eager, _ := enc.EncodeEntry(zapcore.Entry{}, []zap.Field{zap.Strings("announced", []string{"*", "*.alice.test", "*.com", "*.github.io", "a.test", "b.test", "media.bob.test", "x.alice.test"})})
	if lazy.String() != eager.String() {
		t.Errorf("announced logged as %s, want %s", lazy, eager)
	}
	for _, i := range []int{2, 6, 0} {
		_ = all[i].ss.Close()
		waitLeft(t, p, all[i].s)
		check(fmt.Sprintf("session %d left", i+1))
	}

	// A reload gives alice's token other hosts: its sessions are revoked
	// and leave the index at once, then the pool.
	v2 := user(anyTok, TokenConfig{Value: alice.Value, Hosts: []string{"*.alice.test"}}, TokenConfig{Value: "index-carol-0123456789", Hosts: []string{"carol.test"}})
	if err := p.join(v2); err != nil {
		t.Fatal(err)
	}
	check("a reload revoked a token")
	p.leave(v1)
	check("the old config left")
	waitCount(3) // of the six left, alice's three were revoked
	check("revoked sessions left")

	// A new session of the changed token, and one of the new token.
	v2Alice := v2.tokens[1]
	for _, a := range []struct {
		scope *tokenScope
		hosts []string
	}{{v2Alice, []string{"*"}}, {v2.tokens[2], nil}} {
		ss := pipeSession(t)
		all = append(all, joined{ss, joinSession(t, p, ss, a.scope, a.hosts)})
	}
	check("sessions of the new config joined")
	p.leave(v2)
	check("the last handler left")
	for _, j := range all {
		_ = j.ss.Close()
	}
	waitCount(0)
	check("every session left")
	if p.index.agents.Len() != 0 || p.index.announcedCount() != 0 {
		t.Fatalf("empty pool's index: %d agent patterns, %d announced", p.index.agents.Len(), p.index.announcedCount())
	}
}

// rebuiltIndex is p's index rebuilt whole from its sessions and users, as
// it was before it followed them: the patterns sorted, each once. p.mu is
// held.
func rebuiltIndex(p *pool) (agents, announced, tokenHosts []string, anyToken bool) {
	for s := range p.sessions {
		if s.revoked {
			continue
		}
		announced = append(announced, s.hosts...)
		agents = append(agents, s.certPatterns()...)
	}
	for _, u := range p.users {
		for _, t := range u.tokens {
			if t.restricted() {
				tokenHosts = append(tokenHosts, t.hosts...)
			} else {
				anyToken = true
			}
		}
	}
	if announced == nil {
		announced = []string{}
	}
	return sortedSet(agents), sortedSet(announced), sortedSet(tokenHosts), anyToken
}

func kib(n uint64) string { return fmt.Sprintf("%.1f KiB", float64(n)/1024) }

// BenchmarkPoolJoinLeave: one session with 100 names joins a pool and
// leaves it again, in a pool without other sessions and in one with 1000
// sessions of 100 names each (the SPDY session's own start is included).
func BenchmarkPoolJoinLeave(b *testing.B) {
	for _, others := range []int{0, 1000} {
		b.Run(fmt.Sprintf("sessions=%d", others), func(b *testing.B) {
			c := newChurnPool(b, others, 100)
			defer c.close(b)
			b.ReportAllocs()
			for b.Loop() {
				c.cycle(b)
			}
		})
	}
}

// What a session counts for in certificates: by name what it announced,
// except a catch-all, and a wildcard over a public suffix under a token
// without hosts (either would be every name); under a token limited to
// hosts, a catch-all or no announcement stands for the token's hosts, and
// a wildcard over a public suffix the token's hosts include counts.
// TestHostIndexFollowsThePool compares the index with certPatterns itself,
// so this pins what certPatterns says.
func TestCertPatterns(t *testing.T) {
	h := Handler{logger: zap.NewNop(), Tokens: []TokenConfig{
		{Value: "cert-any-0123456789ab"},
		{Value: "cert-io-0123456789ab", Hosts: []string{"*.github.io", "a.test"}},
	}}
	scopes, err := h.resolveTokens()
	if err != nil {
		t.Fatal(err)
	}
	anyScope, ioScope := scopes[0], scopes[1]
	for _, tc := range []struct {
		scope     *tokenScope
		announced []string
		want      []string
	}{
		{anyScope, nil, nil},
		{anyScope, []string{"*"}, nil},
		{anyScope, []string{"*.com", "*.co.uk", "*.github.io", "*.test"}, nil},
		{anyScope, []string{"a.test", "*.example.org", "*", "*.com"}, []string{"*.example.org", "a.test"}},
		{ioScope, nil, []string{"*.github.io", "a.test"}},
		{ioScope, []string{"*"}, []string{"*.github.io", "a.test"}},
		{ioScope, []string{"*.github.io"}, []string{"*.github.io"}},
		{ioScope, []string{"me.github.io"}, []string{"me.github.io"}},
	} {
		s := &session{hosts: tc.announced, scope: tc.scope}
		if got := sortedSet(s.certPatterns()); !slices.Equal(got, tc.want) {
			t.Errorf("announced %q under token %d: certificate patterns %q, want %q", tc.announced, tc.scope.n, got, tc.want)
		}
	}
}
