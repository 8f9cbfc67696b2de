package spdy_test

// Interop with github.com/moby/spdystream's Connection (the SPDY/3 peer
// Kubernetes and Docker use), in both roles, over loopback TCP.
//
// What a spdystream Connection can do, read from its v0.5.1 source, and so
// what these tests may ask of it:
//   - It speaks SPDY/3 frames with its own stream API: SYN_STREAM/SYN_REPLY
//     with arbitrary headers, DATA, FIN, RST_STREAM, PING, GOAWAY. It knows
//     nothing of HTTP: the tests put :method/:path/... and :status/:version
//     in by hand.
//   - It has no flow control at all: SETTINGS and WINDOW_UPDATE are dropped
//     as "unhandled frame type", it never sends WINDOW_UPDATE and it writes
//     each Stream.Write as one DATA frame whatever our windows say.
//     Consequences: we may send it at most 64 KiB of DATA per session (the
//     SPDY/3.1 initial session window, never replenished), and what it sends
//     us must fit our advertised windows without any credit returned, so the
//     tests size our windows above what it sends.
//   - As a server it drops DATA that arrives for a stream before it replied
//     ("Data frame not replied"), so its handlers reply synchronously in the
//     stream handler, before any request body is read.
//   - As a client it does not expose SYN_REPLY headers, so our server's
//     answers are checked through the response body.
//   - On GOAWAY it stops reading frames at once and closes the connection
//     when its own streams are gone.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/spdystream"
	mspdy "github.com/moby/spdystream/spdy"

	"github.com/spdy-origin/spdy-origin/spdy"
)

// ---- helpers shared by the interop tests (node and moby) -------------------

// iopBody returns the deterministic test body gen(seed, n) also produced by
// interop/peer.js: little-endian uint32 words of an xorshift32 sequence
// started at seed (0 → 0x9e3779b9), truncated to n bytes.
func iopBody(seed uint32, n int64) io.Reader {
	x := seed
	if x == 0 {
		x = 0x9e3779b9
	}
	return &iopGen{x: x, left: n}
}

type iopGen struct {
	x    uint32
	left int64
	word [4]byte
	off  int // bytes of word already used; 4 = none left
}

func (g *iopGen) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	n := 0
	if g.off == 0 {
		g.off = 4
	}
	for n < len(p) {
		if g.off == 4 {
			g.x ^= g.x << 13
			g.x ^= g.x >> 17
			g.x ^= g.x << 5
			if len(p)-n >= 4 {
				binary.LittleEndian.PutUint32(p[n:], g.x)
				n += 4
				continue
			}
			binary.LittleEndian.PutUint32(g.word[:], g.x)
			g.off = 0
		}
		c := copy(p[n:], g.word[g.off:])
		g.off += c
		n += c
	}
	g.left -= int64(n)
	return n, nil
}

// iopSHA is the hex sha256 of iopBody(seed, n).
func iopSHA(seed uint32, n int64) string {
	h := sha256.New()
	if _, err := io.Copy(h, iopBody(seed, n)); err != nil {
		panic(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// iopLogger collects the session's diagnostics and prints them only when the
// test fails (or SPDY_INTEROP_DEBUG=1), so a late log line after the test
// ended can never panic.
type iopLogger struct {
	mu    sync.Mutex
	lines []string
}

func newIopLogger(t testing.TB, name string) *iopLogger {
	l := &iopLogger{}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("SPDY_INTEROP_DEBUG") == "1" {
			l.mu.Lock()
			defer l.mu.Unlock()
			const max = 300
			lines := l.lines
			if len(lines) > max {
				t.Logf("%s: %d earlier log lines omitted", name, len(lines)-max)
				lines = lines[len(lines)-max:]
			}
			for _, s := range lines {
				t.Logf("%s: %s", name, s)
			}
		}
	})
	return l
}

func (l *iopLogger) add(level, msg string, kv []any) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", time.Now().Format("15:04:05.000"), level, msg)
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(&b, " %v=%v", kv[i], kv[i+1])
	}
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
}

func (l *iopLogger) Debugw(msg string, kv ...any) { l.add("DEBUG", msg, kv) }
func (l *iopLogger) Warnw(msg string, kv ...any)  { l.add("WARN", msg, kv) }
func (l *iopLogger) Errorw(msg string, kv ...any) { l.add("ERROR", msg, kv) }

// iopConfig is DefaultConfig with a collecting logger and keepalive off (the
// tests ping explicitly).
func iopConfig(t testing.TB, name string) *spdy.Config {
	cfg := spdy.DefaultConfig()
	cfg.Logger = newIopLogger(t, name)
	cfg.PingInterval = -1 // keepalive off
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

// mobyShutdown ends spdystream's shutdown goroutine. When closing the
// connection fails (it is closed already, as at the end of every test),
// that goroutine waits up to a second for someone to take the error from
// Wait; without this it outlives the test and the leak check fails.
func mobyShutdown(t testing.TB, c *spdystream.Connection) {
	_ = c.Close() // starts the shutdown if nothing did; fails on a closed connection
	if err := c.Wait(5 * time.Second); errors.Is(err, spdystream.ErrTimeout) {
		t.Errorf("spdystream's shutdown did not finish")
	}
}

// iopTCPPair returns both ends of a loopback TCP connection.
func iopTCPPair(t testing.TB) (dialed, accepted net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		ch <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-ch:
		t.Cleanup(func() { d.Close(); a.Close() })
		return d, a
	case err := <-errc:
		d.Close()
		t.Fatal(err)
	}
	return nil, nil
}

// iopWaitDone fails the test unless s ends within d.
func iopWaitDone(t testing.TB, s *spdy.Session, d time.Duration, what string) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(d):
		t.Fatalf("%s: session still running after %v (stats %+v)", what, d, s.Stats())
	}
}

// ---- moby/spdystream as the SPDY server, our Session as the client --------

// mobyServer runs a spdystream server Connection on one end of a TCP pair
// and our client Session on the other.
type mobyServer struct {
	sess   *spdy.Session
	conn   *spdystream.Connection
	raw    net.Conn // spdystream's end
	served chan struct{}
}

func newMobyServer(t *testing.T, cfg *spdy.Config, handler spdystream.StreamHandler) *mobyServer {
	t.Helper()
	ours, theirs := iopTCPPair(t)
	sc, err := spdystream.NewConnection(theirs, true)
	if err != nil {
		t.Fatal(err)
	}
	m := &mobyServer{conn: sc, raw: theirs, served: make(chan struct{})}
	go func() {
		defer close(m.served)
		sc.Serve(handler)
	}()
	m.sess, err = spdy.NewClient(ours, cfg)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() {
		m.sess.Close()
		theirs.Close()
		select {
		case <-m.served:
		case <-time.After(10 * time.Second):
			t.Errorf("spdystream Serve did not return after the connection closed")
		}
		mobyShutdown(t, sc)
		iopWaitDone(t, m.sess, 10*time.Second, "cleanup")
	})
	return m
}

// mobyReply sends SYN_REPLY with an HTTP status the way an HTTP-over-SPDY
// server would.
func mobyReply(s *spdystream.Stream, status int, extra http.Header) error {
	h := http.Header{
		":status":  {strconv.Itoa(status)},
		":version": {"HTTP/1.1"},
	}
	for k, v := range extra {
		h[strings.ToLower(k)] = v
	}
	return s.SendReply(h, false)
}

// mobyHTTPHandler answers our client's requests on a spdystream server:
//
//	GET  /bytes?n=N&seed=S   gen(S, N) in 32 KiB DATA frames, then FIN
//	GET  /truncate?n=N       N bytes, then RST_STREAM CANCEL (content-length 2N)
//	GET  /hangup?n=N         N bytes, then the TCP connection is closed
//	POST /sink               JSON {n, sha256, headers} of the request body
//
// It records the request headers it saw and how many body bytes each stream
// delivered.
type mobyHTTPHandler struct {
	t        *testing.T
	raw      func() net.Conn
	mu       sync.Mutex
	headers  []http.Header
	received atomic.Int64 // request body bytes seen by /sink
	errs     []string
}

func (h *mobyHTTPHandler) fail(format string, a ...any) {
	h.mu.Lock()
	h.errs = append(h.errs, fmt.Sprintf(format, a...))
	h.mu.Unlock()
}

func (h *mobyHTTPHandler) check(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range h.errs {
		t.Errorf("spdystream server: %s", e)
	}
}

func (h *mobyHTTPHandler) handle(s *spdystream.Stream) {
	hdr := s.Headers()
	h.mu.Lock()
	h.headers = append(h.headers, hdr.Clone())
	h.mu.Unlock()
	for _, k := range []string{":method", ":path", ":version", ":host", ":scheme"} {
		if hdr.Get(k) == "" {
			h.fail("stream %d: SYN_STREAM without %s: %v", s.Identifier(), k, hdr)
		}
	}
	u, err := url.ParseRequestURI(hdr.Get(":path"))
	if err != nil {
		h.fail("stream %d: bad :path %q", s.Identifier(), hdr.Get(":path"))
		s.Reset()
		return
	}
	q := u.Query()
	n, _ := strconv.ParseInt(q.Get("n"), 10, 64)
	seed, _ := strconv.ParseUint(q.Get("seed"), 10, 32)
	// Reply now: spdystream drops DATA that arrives before the reply.
	switch u.Path {
	case "/bytes":
		mobyReply(s, 200, http.Header{"content-length": {strconv.FormatInt(n, 10)}, "content-type": {"application/octet-stream"}})
		go func() {
			io.Copy(io.Discard, s) // request body (none) / FIN
		}()
		go func() {
			buf := make([]byte, 32<<10)
			body := iopBody(uint32(seed), n)
			for {
				k, err := io.ReadFull(body, buf)
				if k > 0 {
					if werr := s.WriteData(buf[:k], false); werr != nil {
						h.fail("stream %d: write: %v", s.Identifier(), werr)
						return
					}
				}
				if err != nil {
					break
				}
			}
			s.Close()
		}()
	case "/truncate", "/hangup":
		mobyReply(s, 200, http.Header{"content-length": {strconv.FormatInt(2*n, 10)}})
		go func() {
			b, _ := io.ReadAll(iopBody(1, n))
			if err := s.WriteData(b, false); err != nil {
				h.fail("stream %d: write: %v", s.Identifier(), err)
			}
			if u.Path == "/truncate" {
				s.Reset()
			} else {
				h.raw().Close()
			}
		}()
	case "/sink":
		mobyReply(s, 200, http.Header{"content-type": {"application/json"}})
		go func() {
			sum := sha256.New()
			k, err := io.Copy(sum, s)
			h.received.Add(k)
			if err != nil {
				h.fail("stream %d: read body: %v", s.Identifier(), err)
			}
			out, _ := json.Marshal(map[string]any{"n": k, "sha256": hex.EncodeToString(sum.Sum(nil))})
			// ErrWriteClosedStream: our client reset the stream (cancelled)
			if err := s.WriteData(out, true); err != nil && !errors.Is(err, spdystream.ErrWriteClosedStream) {
				h.fail("stream %d: write: %v", s.Identifier(), err)
			}
		}()
	default:
		mobyReply(s, 404, nil)
		s.WriteData(nil, true)
	}
}

func mobyGet(t *testing.T, s *spdy.Session, ctx context.Context, path string) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://moby.test"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s.RoundTrip(req)
}

func TestMobyInteropOurClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	newPair := func(t *testing.T) (*mobyServer, *mobyHTTPHandler) {
		cfg := iopConfig(t, "client")
		// spdystream ignores WINDOW_UPDATE and never waits for credit: make
		// our receive windows larger than everything it sends in one test,
		// so we never have to reset it for overflowing them.
		cfg.StreamWindow = 16 << 20
		cfg.SessionWindow = 64 << 20
		h := &mobyHTTPHandler{t: t}
		m := newMobyServer(t, cfg, h.handle)
		h.raw = func() net.Conn { return m.raw }
		t.Cleanup(func() { h.check(t) })
		return m, h
	}

	t.Run("headers-and-download", func(t *testing.T) {
		m, h := newPair(t)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://moby.test/bytes?n=1048576&seed=3", nil)
		req.Header.Set("X-Test", "one")
		req.Header.Add("X-Multi", "a")
		req.Header.Add("X-Multi", "b")
		req.Header.Set("Connection", "keep-alive")
		req.Header.Set("Keep-Alive", "timeout=5")
		req.Header.Set("Proxy-Connection", "keep-alive")
		req.Header.Set("Transfer-Encoding", "chunked")
		resp, err := m.sess.RoundTrip(req)
		if err != nil {
			t.Fatalf("RoundTrip: %v", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 || resp.ContentLength != 1<<20 {
			t.Errorf("status %d content-length %d, want 200 and %d", resp.StatusCode, resp.ContentLength, 1<<20)
		}
		sum := sha256.New()
		n, err := io.Copy(sum, resp.Body)
		if err != nil || n != 1<<20 || hex.EncodeToString(sum.Sum(nil)) != iopSHA(3, 1<<20) {
			t.Fatalf("body: %d bytes, err %v, sha ok %v", n, err, hex.EncodeToString(sum.Sum(nil)) == iopSHA(3, 1<<20))
		}
		h.mu.Lock()
		got := h.headers[0]
		h.mu.Unlock()
		want := map[string]string{":method": "GET", ":path": "/bytes?n=1048576&seed=3", ":version": "HTTP/1.1", ":host": "moby.test", ":scheme": "http", "x-test": "one"}
		for k, v := range want {
			if got.Get(k) != v {
				t.Errorf("SYN_STREAM %s = %q, want %q (all: %v)", k, got.Get(k), v, got)
			}
		}
		// spdystream's parser canonicalises names with Header.Add, and fails
		// the whole session on a name that is not lowercase on the wire.
		if v := got["X-Multi"]; len(v) != 2 || v[0] != "a" || v[1] != "b" {
			t.Errorf("x-multi arrived as %q, want [a b] (NUL-separated)", v)
		}
		for k := range got {
			switch strings.ToLower(k) {
			case "connection", "keep-alive", "proxy-connection", "transfer-encoding":
				t.Errorf("hop-by-hop header %q was forwarded", k)
			}
		}
	})

	t.Run("concurrent-downloads", func(t *testing.T) {
		m, _ := newPair(t)
		const streams = 100
		var wg sync.WaitGroup
		errs := make(chan error, streams)
		for i := range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := int64(1000 + i*3001) // up to ~300 KiB, ~15 MiB in all
				resp, err := mobyGet(t, m.sess, ctx, fmt.Sprintf("/bytes?n=%d&seed=%d", n, i+1))
				if err != nil {
					errs <- fmt.Errorf("#%d: %w", i, err)
					return
				}
				defer resp.Body.Close()
				sum := sha256.New()
				k, err := io.Copy(sum, resp.Body)
				if err != nil || k != n || hex.EncodeToString(sum.Sum(nil)) != iopSHA(uint32(i+1), n) {
					errs <- fmt.Errorf("#%d: got %d/%d bytes, err %v", i, k, n, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if st := m.sess.Stats(); st.StreamsTotal < streams {
			t.Errorf("Stats.StreamsTotal = %d, want >= %d", st.StreamsTotal, streams)
		}
	})

	t.Run("upload-within-initial-window", func(t *testing.T) {
		// spdystream never returns credit, so 64 KiB is all we may ever send
		// it on one session; exactly that must arrive intact.
		m, h := newPair(t)
		const n = 64 << 10
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://moby.test/sink", iopBody(5, n))
		req.ContentLength = n
		resp, err := m.sess.RoundTrip(req)
		if err != nil {
			t.Fatalf("RoundTrip: %v", err)
		}
		defer resp.Body.Close()
		var got struct {
			N      int64
			SHA256 string
		}
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
			t.Fatalf("decode: %v", err)
		}
		if got.N != n || got.SHA256 != iopSHA(5, n) {
			t.Errorf("spdystream got %d bytes (sha ok %v), sent %d", got.N, got.SHA256 == iopSHA(5, n), n)
		}
		h.mu.Lock()
		if cl := h.headers[0].Get("content-length"); cl != strconv.Itoa(n) {
			t.Errorf("content-length header %q, want %d", cl, n)
		}
		h.mu.Unlock()
	})

	t.Run("send-window-honoured", func(t *testing.T) {
		// One byte beyond what spdystream's (never replenished) windows allow:
		// we must stop at exactly 64 KiB, and cancelling must unblock.
		m, h := newPair(t)
		const n = 64<<10 + 1
		rctx, rcancel := context.WithCancel(ctx)
		req, _ := http.NewRequestWithContext(rctx, http.MethodPost, "http://moby.test/sink", iopBody(6, n))
		req.ContentLength = n
		done := make(chan error, 1)
		go func() {
			resp, err := m.sess.RoundTrip(req)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			done <- err
		}()
		deadline := time.Now().Add(10 * time.Second)
		for h.received.Load() < 64<<10 && time.Now().Before(deadline) {
			if st := m.sess.Stats(); st.BytesOut >= 64<<10 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		// give an over-eager sender time to overshoot; a correct one cannot
		time.Sleep(200 * time.Millisecond)
		if st := m.sess.Stats(); st.BytesOut != 64<<10 {
			t.Errorf("Stats.BytesOut = %d with a peer that granted 65536 bytes of window", st.BytesOut)
		}
		rcancel()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("request completed although its body could not be sent")
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("cancelled request did not return while blocked on the send window")
		}
	})

	t.Run("peer-reset-mid-body", func(t *testing.T) {
		m, _ := newPair(t)
		resp, err := mobyGet(t, m.sess, ctx, "/truncate?n=30000")
		if err != nil {
			t.Fatalf("RoundTrip: %v", err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			t.Fatalf("read %d bytes and a clean EOF from a stream the peer reset", len(b))
		}
		var se *spdy.StreamError
		if !errors.As(err, &se) || !se.Remote || se.Status != 5 {
			t.Errorf("error %v (%T), want *spdy.StreamError{Remote: true, Status: 5 CANCEL}", err, err)
		}
		// the session survives a stream reset
		resp2, err := mobyGet(t, m.sess, ctx, "/bytes?n=10&seed=1")
		if err != nil {
			t.Fatalf("request after a reset stream: %v", err)
		}
		io.Copy(io.Discard, resp2.Body)
		resp2.Body.Close()
	})

	t.Run("connection-lost-mid-body", func(t *testing.T) {
		m, _ := newPair(t)
		resp, err := mobyGet(t, m.sess, ctx, "/hangup?n=30000")
		if err != nil {
			t.Fatalf("RoundTrip: %v", err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			t.Fatalf("read %d bytes and a clean EOF from a connection that died mid-body", len(b))
		}
		iopWaitDone(t, m.sess, 10*time.Second, "after peer hang-up")
		if m.sess.Err() == nil {
			t.Errorf("Err() = nil after the peer dropped the connection")
		}
	})

	t.Run("ping", func(t *testing.T) {
		m, _ := newPair(t)
		rtt, err := m.sess.Ping(ctx)
		if err != nil || rtt <= 0 {
			t.Fatalf("Ping = %v, %v", rtt, err)
		}
		// and spdystream pinging us
		if _, err := m.conn.Ping(); err != nil {
			t.Fatalf("spdystream Ping: %v", err)
		}
	})

	t.Run("server-initiated-stream-refused", func(t *testing.T) {
		m, _ := newPair(t)
		s, err := m.conn.CreateStream(http.Header{":path": {"/pushed"}}, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.WaitTimeout(10 * time.Second); !errors.Is(err, spdystream.ErrReset) {
			t.Errorf("server-initiated stream: Wait = %v, want a reset (REFUSED_STREAM)", err)
		}
		// the session is unharmed
		resp, err := mobyGet(t, m.sess, ctx, "/bytes?n=10&seed=1")
		if err != nil {
			t.Fatalf("request after refusing a pushed stream: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	})

	t.Run("our-shutdown", func(t *testing.T) {
		m, _ := newPair(t)
		resp, err := mobyGet(t, m.sess, ctx, "/bytes?n=100&seed=1")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		defer scancel()
		if err := m.sess.Shutdown(sctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		iopWaitDone(t, m.sess, 10*time.Second, "after Shutdown")
		select {
		case <-m.served:
		case <-time.After(10 * time.Second):
			t.Errorf("spdystream did not finish after our GOAWAY")
		}
	})

	t.Run("peer-goaway", func(t *testing.T) {
		m, _ := newPair(t)
		if err := m.conn.Close(); err != nil { // sends GOAWAY
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for !m.sess.GoingAway() && time.Now().Before(deadline) {
			select {
			case <-m.sess.Done():
				deadline = time.Now()
			case <-time.After(5 * time.Millisecond):
			}
		}
		_, err := mobyGet(t, m.sess, ctx, "/bytes?n=10&seed=1")
		if err == nil {
			t.Fatalf("RoundTrip succeeded after the peer sent GOAWAY")
		}
		if !spdy.IsRetryable(err) {
			t.Errorf("RoundTrip after GOAWAY: %v; IsRetryable = false, want true", err)
		}
	})
}

// ---- moby/spdystream as the SPDY client, our Session as the server --------

type mobyClient struct {
	sess   *spdy.Session
	conn   *spdystream.Connection
	served chan struct{}
}

func newMobyClient(t *testing.T, cfg *spdy.Config, h http.Handler) *mobyClient {
	t.Helper()
	theirs, ours := iopTCPPair(t)
	sc, err := spdystream.NewConnection(theirs, false)
	if err != nil {
		t.Fatal(err)
	}
	m := &mobyClient{conn: sc, served: make(chan struct{})}
	go func() {
		defer close(m.served)
		sc.Serve(spdystream.NoOpStreamHandler)
	}()
	m.sess, err = spdy.NewServer(ours, cfg, h)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	t.Cleanup(func() {
		m.sess.Close()
		theirs.Close()
		select {
		case <-m.served:
		case <-time.After(10 * time.Second):
			t.Errorf("spdystream Serve did not return after the connection closed")
		}
		mobyShutdown(t, sc)
		iopWaitDone(t, m.sess, 10*time.Second, "cleanup")
	})
	return m
}

// mobyRequest opens a stream with HTTP request headers, sends body (nil:
// FIN on the SYN_STREAM), and returns the stream after the reply arrived.
func mobyRequest(c *spdystream.Connection, method, path string, extra http.Header, body io.Reader) (*spdystream.Stream, error) {
	h := http.Header{
		":method":  {method},
		":path":    {path},
		":version": {"HTTP/1.1"},
		":host":    {"origin.test"},
		":scheme":  {"https"},
	}
	for k, v := range extra {
		h[strings.ToLower(k)] = v
	}
	s, err := c.CreateStream(h, nil, body == nil)
	if err != nil {
		return nil, err
	}
	if body != nil {
		buf := make([]byte, 32<<10)
		for {
			n, rerr := body.Read(buf)
			if n > 0 {
				if err := s.WriteData(buf[:n], false); err != nil {
					return nil, err
				}
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				return nil, rerr
			}
		}
		if err := s.Close(); err != nil {
			return nil, err
		}
	}
	if err := s.WaitTimeout(20 * time.Second); err != nil {
		return s, err
	}
	return s, nil
}

type mobyEcho struct {
	Method, Path, Host, Proto string
	ContentLength             int64
	Header                    http.Header
	N                         int64
	SHA256                    string
}

func TestMobyInteropOurServer(t *testing.T) {
	var handlerErrs sync.Map
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo":
			sum := sha256.New()
			n, err := io.Copy(sum, r.Body)
			if err != nil {
				w.WriteHeader(500)
				return
			}
			out, _ := json.Marshal(mobyEcho{r.Method, r.URL.RequestURI(), r.Host, r.Proto, r.ContentLength, r.Header, n, hex.EncodeToString(sum.Sum(nil))})
			w.Header().Set("Content-Type", "application/json")
			w.Write(out)
		case "/bytes":
			n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
			if _, err := io.Copy(w, iopBody(9, n)); err != nil {
				handlerErrs.Store(r.URL.RequestURI(), err)
			}
		case "/panic":
			panic("interop test: handler panic")
		default:
			http.NotFound(w, r)
		}
	})
	ctx := context.Background()

	newPair := func(t *testing.T) *mobyClient {
		cfg := iopConfig(t, "server")
		cfg.StreamWindow = 16 << 20
		cfg.SessionWindow = 64 << 20
		return newMobyClient(t, cfg, handler)
	}

	t.Run("request-mapping", func(t *testing.T) {
		m := newPair(t)
		body := bytes.Repeat([]byte("x"), 1000)
		s, err := mobyRequest(m.conn, "PUT", "/echo?q=1&r=%2F", http.Header{
			"content-length": {"1000"},
			"x-multi":        {"a", "b"},
			"user-agent":     {"spdystream-interop"},
		}, bytes.NewReader(body))
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		var got mobyEcho
		if err := json.NewDecoder(s).Decode(&got); err != nil {
			t.Fatalf("decode reply: %v", err)
		}
		if got.Method != "PUT" || got.Path != "/echo?q=1&r=%2F" || got.Host != "origin.test" || got.ContentLength != 1000 || got.N != 1000 {
			t.Errorf("handler saw %+v", got)
		}
		if v := got.Header["X-Multi"]; len(v) != 2 || v[0] != "a" || v[1] != "b" {
			t.Errorf("X-Multi = %q, want [a b]", v)
		}
		if got.Header.Get("User-Agent") != "spdystream-interop" {
			t.Errorf("User-Agent = %q", got.Header.Get("User-Agent"))
		}
		for k := range got.Header {
			if strings.HasPrefix(k, ":") {
				t.Errorf("pseudo-header %q leaked into r.Header", k)
			}
		}
	})

	t.Run("concurrent-uploads", func(t *testing.T) {
		m := newPair(t)
		const streams = 100
		var wg sync.WaitGroup
		errs := make(chan error, streams)
		for i := range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := int64(1 + i*2621) // up to ~256 KiB, ~12.5 MiB in all
				s, err := mobyRequest(m.conn, "POST", "/echo", nil, iopBody(uint32(i), n))
				if err != nil {
					errs <- fmt.Errorf("#%d: %w", i, err)
					return
				}
				var got mobyEcho
				if err := json.NewDecoder(s).Decode(&got); err != nil {
					errs <- fmt.Errorf("#%d: decode: %w", i, err)
					return
				}
				if got.N != n || got.SHA256 != iopSHA(uint32(i), n) {
					errs <- fmt.Errorf("#%d: server got %d bytes (sha ok %v), sent %d", i, got.N, got.SHA256 == iopSHA(uint32(i), n), n)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if st := m.sess.Stats(); st.StreamsTotal != streams {
			t.Errorf("Stats.StreamsTotal = %d, want %d", st.StreamsTotal, streams)
		}
	})

	t.Run("response-within-initial-window", func(t *testing.T) {
		m := newPair(t)
		const n = 64 << 10
		s, err := mobyRequest(m.conn, "GET", fmt.Sprintf("/bytes?n=%d", n), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.New()
		k, err := io.Copy(sum, s)
		if err != nil || k != n || hex.EncodeToString(sum.Sum(nil)) != iopSHA(9, n) {
			t.Errorf("got %d/%d bytes, err %v", k, n, err)
		}
	})

	t.Run("send-window-honoured", func(t *testing.T) {
		// spdystream never grants credit: our handler's 1 MiB+64 KiB response
		// must stop at exactly 65536 bytes until the client gives up, and
		// the handler's blocked Write must then fail (the response is far
		// larger than any write buffer, so the handler is inside Write).
		m := newPair(t)
		const n = 64<<10 + 1<<20
		s, err := mobyRequest(m.conn, "GET", fmt.Sprintf("/bytes?n=%d", n), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		var got atomic.Int64
		readDone := make(chan struct{})
		go func() {
			defer close(readDone)
			buf := make([]byte, 64<<10)
			for {
				k, err := s.Read(buf)
				got.Add(int64(k))
				if err != nil {
					return
				}
			}
		}()
		deadline := time.Now().Add(10 * time.Second)
		for got.Load() < 64<<10 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond) // room for an overshoot to show
		if g := got.Load(); g != 64<<10 {
			t.Errorf("spdystream received %d bytes; its window allowed exactly 65536", g)
		}
		// RST_STREAM CANCEL (Reset alone sends nothing on a stream whose
		// SYN_STREAM carried FIN); the handler's blocked Write must fail.
		if err := s.Cancel(); err != nil {
			t.Fatal(err)
		}
		s.Reset() // local cleanup: unblocks our reader
		<-readDone
		deadline = time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if _, ok := handlerErrs.Load(fmt.Sprintf("/bytes?n=%d", n)); ok {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if _, ok := handlerErrs.Load(fmt.Sprintf("/bytes?n=%d", n)); !ok {
			t.Errorf("handler's Write did not fail after the client reset the stream")
		}
		iopWaitStreams(t, m.sess, 0)
	})

	t.Run("handler-panic", func(t *testing.T) {
		m := newPair(t)
		_, err := mobyRequest(m.conn, "GET", "/panic", nil, nil)
		if !errors.Is(err, spdystream.ErrReset) {
			t.Errorf("panicking handler: Wait = %v, want the stream reset", err)
		}
		s, err := mobyRequest(m.conn, "GET", "/bytes?n=10", nil, nil)
		if err != nil {
			t.Fatalf("request after a handler panic: %v", err)
		}
		if b, err := io.ReadAll(s); err != nil || len(b) != 10 {
			t.Errorf("after panic: %d bytes, %v", len(b), err)
		}
	})

	t.Run("ping", func(t *testing.T) {
		m := newPair(t)
		if _, err := m.conn.Ping(); err != nil {
			t.Fatalf("spdystream Ping: %v", err)
		}
		rtt, err := m.sess.Ping(ctx)
		if err != nil || rtt <= 0 {
			t.Fatalf("our Ping = %v, %v", rtt, err)
		}
	})

	t.Run("peer-goaway", func(t *testing.T) {
		m := newPair(t)
		s, err := mobyRequest(m.conn, "GET", "/bytes?n=10", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, s)
		if err := m.conn.Close(); err != nil { // GOAWAY, then close when idle
			t.Fatal(err)
		}
		iopWaitDone(t, m.sess, 10*time.Second, "after peer GOAWAY")
	})

	t.Run("our-shutdown", func(t *testing.T) {
		// spdystream stops reading at GOAWAY and closes the connection once
		// its streams are gone, so only an idle Shutdown is meaningful here
		// (draining open streams is covered by the package's unit tests).
		m := newPair(t)
		s, err := mobyRequest(m.conn, "GET", "/bytes?n=10", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, s)
		iopWaitStreams(t, m.sess, 0)
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		defer scancel()
		if err := m.sess.Shutdown(sctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		iopWaitDone(t, m.sess, 10*time.Second, "after Shutdown")
		select {
		case <-m.served:
		case <-time.After(10 * time.Second):
			t.Errorf("spdystream did not finish after our GOAWAY")
		}
	})
}

// iopWaitStreams waits until s has want open streams.
func iopWaitStreams(t *testing.T, s *spdy.Session, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if s.Stats().OpenStreams == want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Errorf("OpenStreams = %d, want %d", s.Stats().OpenStreams, want)
}

// TestRawPeerResetAfterBody checks what a reset right after a body means to
// the client: after FIN, or after every byte of a declared Content-Length
// (node-spdy can reset a stream it just finished, ahead of its FIN), the body
// is whole; without either, it is cut and Read must fail.
func TestRawPeerResetAfterBody(t *testing.T) {
	body := bytes.Repeat([]byte("z"), 1000)
	for _, tc := range []struct {
		name     string
		length   string // content-length header, "" for none
		data     []byte
		fin      bool
		wantFull bool
	}{
		{"fin-then-rst", "1000", body, true, true},
		{"all-declared-bytes-then-rst", "1000", body, false, true},
		{"short-body-then-rst", "1000", body[:600], false, false},
		{"no-length-no-fin-then-rst", "", body, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := rawResetAfterBody(t, tc.length, tc.data, tc.fin)
			if tc.wantFull && (err != nil || !bytes.Equal(got, body)) {
				t.Errorf("read %d/%d bytes, err %v; want the whole body and a clean EOF", len(got), len(body), err)
			}
			if !tc.wantFull && err == nil {
				t.Errorf("read %d bytes and a clean EOF; want an error for a cut body", len(got))
			}
		})
	}
}

// rawResetAfterBody has a raw peer answer one request with a SYN_REPLY, data
// and RST_STREAM INVALID_STREAM, and returns what the client read.
func rawResetAfterBody(t *testing.T, length string, data []byte, fin bool) ([]byte, error) {
	ours, theirs := iopTCPPair(t)
	sess, err := spdy.NewClient(ours, iopConfig(t, "client"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		sess.Close()
		iopWaitDone(t, sess, 10*time.Second, "close")
	}()
	fr, err := mspdy.NewFramer(theirs, theirs)
	if err != nil {
		t.Fatal(err)
	}
	frames := make(chan mspdy.Frame, 100)
	go func() {
		defer close(frames)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			frames <- f
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type result struct {
		resp *http.Response
		err  error
	}
	rt := make(chan result, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://raw.test/", nil)
		resp, err := sess.RoundTrip(req)
		rt <- result{resp, err}
	}()
	var id mspdy.StreamId
	for id == 0 {
		select {
		case f, ok := <-frames:
			if !ok {
				t.Fatal("connection closed before SYN_STREAM")
			}
			if s, ok := f.(*mspdy.SynStreamFrame); ok {
				id = s.StreamId
			}
		case <-ctx.Done():
			t.Fatal("no SYN_STREAM")
		}
	}
	hdr := http.Header{":status": {"200"}, ":version": {"HTTP/1.1"}}
	if length != "" {
		hdr["content-length"] = []string{length}
	}
	flags := mspdy.DataFlags(0)
	if fin {
		flags = mspdy.DataFlagFin
	}
	for _, f := range []mspdy.Frame{
		&mspdy.SynReplyFrame{StreamId: id, Headers: hdr},
		&mspdy.DataFrame{StreamId: id, Flags: flags, Data: data},
		&mspdy.RstStreamFrame{StreamId: id, Status: mspdy.InvalidStream},
		&mspdy.PingFrame{Id: 2}, // its echo proves the frames above were processed
	} {
		if err := fr.WriteFrame(f); err != nil {
			t.Fatal(err)
		}
	}
	r := <-rt
	if r.err != nil {
		t.Fatalf("RoundTrip: %v", r.err)
	}
	defer r.resp.Body.Close()
	for {
		f, ok := <-frames
		if !ok {
			t.Fatal("connection closed before the PING echo")
		}
		if p, ok := f.(*mspdy.PingFrame); ok && p.Id == 2 {
			break
		}
	}
	return io.ReadAll(r.resp.Body)
}
