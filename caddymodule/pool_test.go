package caddymodule

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// A registration holds its max_sessions slot from before its 200 until its
// session joins or it fails, so two registrations cannot both take the last
// slot.
func TestPoolReserve(t *testing.T) {
	p := newPool("reserve")
	a, err := p.reserve(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.reserve(1); !errors.Is(err, errPoolFull) {
		t.Fatalf("second reservation of max_sessions 1: %v, want errPoolFull", err)
	}
	a.release()
	a.release() // a second release gives back nothing more
	b, err := p.reserve(1)
	if err != nil {
		t.Fatalf("after a release: %v", err)
	}
	c, err := p.reserve(0) // unlimited
	if err != nil {
		t.Fatalf("unlimited: %v", err)
	}
	c.release()
	_ = p.Destruct()
	if err := b.join(&session{}); !errors.Is(err, errPoolClosed) {
		t.Fatalf("join after the pool closed: %v, want errPoolClosed", err)
	}
	b.release() // no-op after join
	if _, err := p.reserve(0); !errors.Is(err, errPoolClosed) {
		t.Fatalf("reserve on a closed pool: %v, want errPoolClosed", err)
	}
	if p.reserved != 0 {
		t.Fatalf("%d slots still reserved", p.reserved)
	}
}

// A request waiting for an agent (dial_timeout) must not keep waiting on a
// pool that was removed from the config: no agent can join it any more.
func TestPoolDestructWakesWaiters(t *testing.T) {
	p := newPool("destruct-wait")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan *session, 1)
	go func() { done <- p.waitForSession(ctx, "") }()
	time.Sleep(20 * time.Millisecond) // let it block on p.changed
	if err := p.Destruct(); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-done:
		if s != nil {
			t.Fatalf("got a session from a closed pool")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("waitForSession still waiting after the pool was destructed (until dial_timeout)")
	}
}

// The sessions of a token a reload revoked take no new requests while they
// drain: a host only they served gets the 503 of a pool with no agent (not
// the one of a pool whose agents serve other hosts), and the log says that
// their token was revoked. Once another agent serves some host, the host
// gets the 503 naming it, with the same cause logged.
func TestRevokedSessionsAreNotUsable(t *testing.T) {
	h := Handler{logger: zap.NewNop(), Tokens: []TokenConfig{
		{Value: "revoked-b-0123456789ab", Hosts: []string{"b.test"}},
		{Value: "revoked-a-0123456789ab", Hosts: []string{"a.test"}},
	}}
	scopes, err := h.resolveTokens()
	if err != nil {
		t.Fatal(err)
	}
	p := newPool("revoked-usable")
	if err := p.join(&poolUser{config: make(chan struct{}), name: "test", logger: zap.NewNop(), tokens: scopes}); err != nil {
		t.Fatal(err)
	}
	ss := pipeSession(t)
	defer ss.Close()
	s := joinSession(t, p, ss, scopes[0], []string{"b.test"})
	// What dropRevokedLocked leaves until its goroutine sends GOAWAY:
	// revoked, not yet going away.
	p.mu.Lock()
	s.revoked = true
	p.index.removeSession(s)
	p.mu.Unlock()

	core, logs := observer.New(zapcore.WarnLevel)
	tr := &Transport{pool: p, logger: zap.New(core)}
	request := func(want error, wantLog string) {
		t.Helper()
		p.noSessionLogged.Store(0) // the warning is written at most once a second
		logs.TakeAll()
		_, err := tr.session(httptest.NewRequest("GET", "http://b.test/", nil), "b.test")
		var he *hostError
		if !errors.Is(err, want) || (want == ErrNoSession) != !errors.As(err, &he) {
			t.Errorf("b.test, only served by a revoked session: %v; want %v", err, want)
		}
		entries := logs.TakeAll()
		if len(entries) != 1 || !strings.Contains(entries[0].Message, wantLog) || !strings.Contains(entries[0].Message, "revoked") {
			t.Errorf("logged %+v; want one warning saying %q and that the token was revoked", entries, wantLog)
		}
	}
	if usable, n := p.unavailable("b.test"); usable || n != 1 {
		t.Errorf("a pool whose only session is revoked, for the host it served: usable %v, %d revoked sessions; want false, 1", usable, n)
	}
	request(ErrNoSession, "no agent connected to pool")

	ss2 := pipeSession(t)
	defer ss2.Close()
	joinSession(t, p, ss2, scopes[1], []string{"a.test"})
	if usable, n := p.unavailable("b.test"); !usable || n != 1 {
		t.Errorf("a pool with a session of a current token: usable %v, %d revoked sessions for b.test; want true, 1", usable, n)
	}
	if _, n := p.unavailable("a.test"); n != 0 {
		t.Errorf("%d revoked sessions for a.test, which no revoked session served; want 0", n)
	}
	request(ErrNoSessionForHost, "no agent of the pool serves this host")
}

func TestLoadBalancing(t *testing.T) {
	tester := loadConfig(t, spdyRoute("lb", nil))
	a := startAgent(t, "lb-A")
	b := startAgent(t, "lb-B")
	waitSessions(t, "lb", 2)
	held := make(chan string, 16)
	for _, ag := range []*testAgent{a, b} {
		go func(ag *testAgent) {
			for s := range ag.held {
				held <- s
			}
		}(ag)
	}

	// Least open streams: start requests one at a time, each after the
	// previous one is being held by an agent; they must alternate.
	c := bigClient()
	var wg sync.WaitGroup
	counts := map[string]int{}
	errs := make(chan error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get(fmt.Sprintf("%s/hold?id=%d", testBase, i))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			if _, err := io.ReadAll(resp.Body); err != nil || resp.StatusCode != 200 {
				errs <- fmt.Errorf("hold %d: %d %v", i, resp.StatusCode, err)
			}
		}()
		select {
		case s := <-held:
			counts[strings.Split(s, ":")[0]]++
		case <-time.After(10 * time.Second):
			t.Fatalf("request %d never reached an agent", i)
		}
	}
	close(a.release)
	close(b.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if counts["lb-A"] != 2 || counts["lb-B"] != 2 {
		t.Fatalf("concurrent requests not spread by open streams: %v", counts)
	}

	// Sequential requests rotate over idle sessions.
	seq := map[string]int{}
	for range 20 {
		resp, _ := get(t, tester.Client, "/hello")
		if resp.StatusCode != 200 {
			t.Fatalf("GET /hello: %d", resp.StatusCode)
		}
		seq[resp.Header.Get("X-Agent")]++
	}
	if seq["lb-A"] < 5 || seq["lb-B"] < 5 {
		t.Fatalf("sequential requests not spread: %v", seq)
	}
	t.Logf("load-balancing: concurrent held requests lb-A=%d lb-B=%d (least open streams); sequential requests lb-A=%d lb-B=%d",
		counts["lb-A"], counts["lb-B"], seq["lb-A"], seq["lb-B"])
}

func TestReloadDuringDownload(t *testing.T) {
	loadConfig(t, spdyRoute("reload", nil))
	a := startAgent(t, "reload-A")
	waitSessions(t, "reload", 1)
	sessionID := allPoolsByName(t)["reload"].Sessions[0].ID

	c := bigClient()
	resp, err := c.Get(fmt.Sprintf("%s/big?size=%d", testBase, bigSize))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, resp.Body, 4<<20); err != nil {
		t.Fatal(err)
	}

	// Reload with a changed config while the download is mid-stream.
	tester := loadConfig(t, spdyRoute("reload", map[string]any{
		"headers": map[string]any{"response": map[string]any{"set": map[string]any{"X-Config": []string{"v2"}}}},
	}))

	rest, err := io.Copy(h, resp.Body)
	if err != nil {
		t.Fatalf("download broken by reload after %d more bytes: %v", rest, err)
	}
	n := int64(4<<20) + rest
	if got, want := fmt.Sprintf("%x", h.Sum(nil)), testDataDigest(t, bigSize); n != bigSize || got != want {
		t.Fatalf("download across reload: %d bytes, sha256 %s; want %d, %s", n, got, bigSize, want)
	}
	if !a.alive() {
		t.Fatal("agent session closed by the reload")
	}
	p := allPoolsByName(t)["reload"]
	if len(p.Sessions) != 1 || p.Sessions[0].ID != sessionID {
		t.Fatalf("pool after reload: %+v, want session %d", p.Sessions, sessionID)
	}
	r, _ := get(t, tester.Client, "/hello")
	if r.StatusCode != 200 || r.Header.Get("X-Config") != "v2" || r.Header.Get("X-Agent") != "reload-A" {
		t.Fatalf("after reload: %d, X-Config %q, X-Agent %q", r.StatusCode, r.Header.Get("X-Config"), r.Header.Get("X-Agent"))
	}
	t.Logf("reload: %d-byte download completed across the config reload with sha256 ok; agent session %d stayed connected; new config active (X-Config: %s)",
		n, sessionID, r.Header.Get("X-Config"))

	// Removing the directive sends GOAWAY and the agent's session ends.
	loadConfig(t, map[string]any{"handler": "static_response", "body": "no spdy here"})
	select {
	case <-a.sess.Done():
		t.Logf("removing spdy_origin closed the agent session: %v", a.sess.Err())
	case <-time.After(15 * time.Second):
		t.Fatal("agent still connected after its pool was removed from the config")
	}
}
