package spdy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSlowReaderDoesNotStallOthers: one stream whose reader stalls must not
// hold up the other streams of the session, and what it buffers is bounded
// by its window: credit goes back as the application reads, not as data
// arrives.
func TestSlowReaderDoesNotStallOthers(t *testing.T) {
	const (
		window   = 256 << 10
		slowSize = 4 << 20
		fastSize = 2 << 20
		nFast    = 4
	)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int64(fastSize)
		if r.URL.Path == "/slow" {
			n = slowSize
		}
		io.Copy(w, io.LimitReader(newPattern(), n))
	})
	ccfg := testConfig()
	ccfg.StreamWindow = window
	ccfg.SessionWindow = 4 * window
	cs, _ := pair(t, h, ccfg, nil)

	slow, err := cs.RoundTrip(newReq(t, "GET", "https://x/slow", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Body.Close()
	st := slow.Body.(*responseBody).st
	buffered := func() int {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.buffered
	}

	var wg sync.WaitGroup
	errs := make(chan error, nFast)
	for range nFast {
		wg.Go(func() {
			resp, err := cs.RoundTrip(newReq(t, "GET", "https://x/fast", nil))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				errs <- err
				return
			}
			if len(b) != fastSize || !checkPattern(b, 0) {
				errs <- fmt.Errorf("fast stream got %d bytes, pattern ok %v", len(b), checkPattern(b, 0))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The fast streams moved 4x2 MiB through a 1 MiB session window while
	// the slow stream sat unread: it holds at most its window.
	if n := buffered(); n > window {
		t.Fatalf("stalled stream buffers %d bytes, more than its window %d", n, window)
	}
	// Its window does fill up (the sender was not simply stuck).
	waitUntil(t, "the stalled stream's window is full", func() bool { return buffered() == window })

	// Now read it all; it never buffers more than the window.
	buf := make([]byte, 10000)
	var off int64
	for {
		if n := buffered(); n > window {
			t.Fatalf("stream buffers %d bytes at offset %d, window %d", n, off, window)
		}
		n, err := slow.Body.Read(buf)
		if !checkPattern(buf[:n], off) {
			t.Fatalf("corrupt data at offset %d", off)
		}
		off += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if off != slowSize {
		t.Fatalf("slow stream got %d bytes, want %d", off, slowSize)
	}
}

// TestCancelBeforeReply: cancelling the request context while the handler
// has not answered fails RoundTrip with the context's error and resets the
// stream, which the handler sees as its request context ending.
func TestCancelBeforeReply(t *testing.T) {
	started := make(chan struct{})
	handlerErr := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		select {
		case <-r.Context().Done():
			handlerErr <- r.Context().Err()
		case <-time.After(rawTimeout):
			handlerErr <- errors.New("request context not cancelled")
		}
	})
	cs, _ := pair(t, h, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := goRoundTrip(cs, newReq(t, "GET", "https://x/", nil).WithContext(ctx))
	<-started
	cancel()
	r := recvResult(t, res)
	if !errors.Is(r.err, context.Canceled) {
		t.Fatalf("RoundTrip error %v, want context.Canceled", r.err)
	}
	if err := <-handlerErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("handler: %v", err)
	}
}

// cancelMidBody starts a response that the handler writes until writing
// fails, lets stop end the client's interest, and returns the handler's
// write error and whether its request context ended.
func cancelMidBody(t *testing.T, stop func(resp *http.Response, cancel context.CancelFunc)) (writeErr error, ctxDone bool) {
	t.Helper()
	type outcome struct {
		err     error
		ctxDone bool
	}
	out := make(chan outcome, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 32<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				// The reset also ends the request context (maybe just after).
				select {
				case <-r.Context().Done():
					out <- outcome{err, true}
				case <-time.After(rawTimeout):
					out <- outcome{err, false}
				}
				return
			}
			w.(http.Flusher).Flush()
		}
	})
	cs, _ := pair(t, h, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := cs.RoundTrip(newReq(t, "GET", "https://x/", nil).WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 100<<10)); err != nil {
		t.Fatal(err)
	}
	stop(resp, cancel)
	// Whatever is left to read ends in an error, never a clean EOF.
	if _, err := io.Copy(io.Discard, resp.Body); err == nil {
		t.Fatal("body read after cancellation ended in a clean EOF")
	}
	resp.Body.Close()
	select {
	case o := <-out:
		return o.err, o.ctxDone
	case <-time.After(rawTimeout):
		t.Fatal("handler's write never failed after the client went away")
		return nil, false
	}
}

func TestCancelContextMidBody(t *testing.T) {
	err, ctxDone := cancelMidBody(t, func(_ *http.Response, cancel context.CancelFunc) { cancel() })
	var se *StreamError
	if !errors.As(err, &se) || se.Status != StatusCancel || !se.Remote {
		t.Fatalf("handler write error %v, want a peer reset with CANCEL", err)
	}
	if !ctxDone {
		t.Fatal("handler's request context did not end")
	}
}

func TestCloseBodyEarly(t *testing.T) {
	err, ctxDone := cancelMidBody(t, func(resp *http.Response, _ context.CancelFunc) { resp.Body.Close() })
	var se *StreamError
	if !errors.As(err, &se) || se.Status != StatusCancel || !se.Remote {
		t.Fatalf("handler write error %v, want a peer reset with CANCEL", err)
	}
	if !ctxDone {
		t.Fatal("handler's request context did not end")
	}
}

// TestShutdownGraceful: the server's Shutdown lets an in-flight stream
// finish, new streams fail as retryable, and both sessions then close.
func TestShutdownGraceful(t *testing.T) {
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		io.WriteString(w, "done "+r.URL.Path)
	})
	cs, ss := pair(t, h, nil, nil)
	inflight := goRoundTrip(cs, newReq(t, "GET", "https://x/slow", nil))
	<-started

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), rawTimeout)
		defer cancel()
		shut <- ss.Shutdown(ctx)
	}()
	waitUntil(t, "the client saw GOAWAY", cs.GoingAway)
	if !ss.GoingAway() {
		t.Fatal("server not going away after Shutdown")
	}
	_, err := cs.RoundTrip(newReq(t, "GET", "https://x/new", nil))
	if !errors.Is(err, ErrGoAway) || !IsRetryable(err) {
		t.Fatalf("new request after GOAWAY: %v (retryable %v)", err, IsRetryable(err))
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a stream in flight", err)
	default:
	}
	close(release)
	r := recvResult(t, inflight)
	if r.err != nil || string(r.body) != "done /slow" {
		t.Fatalf("in-flight request: %q, %v", r.body, r.err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	waitDone(t, ss)
	waitDone(t, cs)
	// The client closes as soon as its last stream is done, which can beat
	// the server's own close: a clean EOF is then the server's cause.
	if err := ss.Err(); !errors.Is(err, ErrShutdown) && !errors.Is(err, io.EOF) {
		t.Fatalf("server cause %v", err)
	}
	if err := cs.Err(); !errors.Is(err, ErrPeerGoneAway) {
		t.Fatalf("client cause %v, want ErrPeerGoneAway", err)
	}
}

// TestClientShutdown: Shutdown on the client refuses new requests locally
// (retryable) and lets the open one finish.
func TestClientShutdown(t *testing.T) {
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		io.WriteString(w, "ok")
	})
	cs, ss := pair(t, h, nil, nil)
	inflight := goRoundTrip(cs, newReq(t, "GET", "https://x/", nil))
	<-started
	shut := make(chan error, 1)
	go func() { shut <- cs.Shutdown(context.Background()) }()
	waitUntil(t, "client going away", cs.GoingAway)
	_, err := cs.RoundTrip(newReq(t, "GET", "https://x/again", nil))
	if err == nil || !IsRetryable(err) {
		t.Fatalf("request after Shutdown: %v, want a retryable error", err)
	}
	close(release)
	if r := recvResult(t, inflight); r.err != nil || string(r.body) != "ok" {
		t.Fatalf("in-flight: %q %v", r.body, r.err)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	waitDone(t, ss) // the server saw GOAWAY and its last stream ended
}

// TestShutdownContextExpires: Shutdown returns ctx's error when a stream
// outlives it, and the stream is cut with an error.
func TestShutdownContextExpires(t *testing.T) {
	started := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		close(started)
		<-r.Context().Done()
	})
	cs, ss := pair(t, h, nil, nil)
	resp, err := cs.RoundTrip(newReq(t, "GET", "https://x/", nil))
	if err != nil {
		t.Fatal(err)
	}
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ss.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown: %v, want context.Canceled", err)
	}
	waitDone(t, ss)
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("body of a cut stream ended cleanly")
	}
	waitDone(t, cs)
}

// TestMaxConcurrentStreams: with the server allowing 2 streams, further
// requests wait for a slot (bounded by their context) instead of failing.
func TestMaxConcurrentStreams(t *testing.T) {
	const n = 6
	var cur, peak atomic.Int32
	entered := make(chan struct{}, n)
	release := make(chan struct{}, n)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := cur.Add(1)
		for {
			p := peak.Load()
			if c <= p || peak.CompareAndSwap(p, c) {
				break
			}
		}
		entered <- struct{}{}
		<-release
		cur.Add(-1)
		io.WriteString(w, r.URL.Path)
	})
	scfg := testConfig()
	scfg.MaxConcurrentStreams = 2
	cs, ss := pair(t, h, nil, scfg)
	// A PING round trip guarantees the server's SETTINGS (its first frame)
	// has been applied by the client.
	if _, err := cs.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}

	results := make([]chan result, n)
	failed := make(chan error, n)
	for i := range n {
		results[i] = make(chan result, 1)
		go func() {
			r := recvResult(t, goRoundTrip(cs, newReq(t, "GET", fmt.Sprintf("https://x/%d", i), nil)))
			if r.err != nil {
				failed <- r.err
			}
			results[i] <- r
		}()
	}
	// waitEntered waits for a handler to start, failing fast if a request
	// failed instead of waiting for its slot.
	waitEntered := func() {
		t.Helper()
		select {
		case <-entered:
		case err := <-failed:
			t.Fatalf("a request failed instead of waiting for a slot: %v", err)
		case <-time.After(rawTimeout):
			t.Fatal("no handler started")
		}
	}
	waitEntered()
	waitEntered()
	// Both slots are taken: a request with a deadline gives up waiting.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := cs.RoundTrip(newReq(t, "GET", "https://x/late", nil).WithContext(ctx))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RoundTrip waiting for a slot: %v, want DeadlineExceeded", err)
	}
	// Release the handlers one at a time; each frees a slot for a waiter.
	for i := range n {
		release <- struct{}{}
		if i < n-2 {
			waitEntered()
		}
	}
	seen := map[string]bool{}
	for i := range n {
		r := recvResult(t, results[i])
		if r.err != nil {
			t.Fatalf("request %d: %v", i, r.err)
		}
		seen[string(r.body)] = true
	}
	if len(seen) != n {
		t.Fatalf("answers %v", seen)
	}
	if p := peak.Load(); p != 2 {
		t.Fatalf("peak concurrency %d, want 2", p)
	}
	if tot := ss.Stats().StreamsTotal; tot != n {
		t.Fatalf("server saw %d streams, want %d (the timed-out request must never be sent)", tot, n)
	}
}

// TestMaxConcurrentStreamsSequential: back-to-back requests on a session
// limited to one stream are never refused: the server must not count a
// stream whose FIN it already sent against the limit, since the client may
// have seen that FIN and sent the next SYN_STREAM before the server's
// handler goroutine removed the stream.
func TestMaxConcurrentStreamsSequential(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "x") })
	scfg := testConfig()
	scfg.MaxConcurrentStreams = 1
	cs, _ := pair(t, h, nil, scfg)
	if _, err := cs.Ping(context.Background()); err != nil { // SETTINGS applied
		t.Fatal(err)
	}
	const n = 300
	refused := 0
	var last error
	for range n {
		resp, err := cs.RoundTrip(newReq(t, "GET", "https://x/", nil))
		if err != nil {
			refused++
			last = err
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if refused > 0 {
		t.Fatalf("%d of %d sequential requests failed, last: %v", refused, n, last)
	}
}

// TestHalfCloseFullDuplex: request and response bodies stream at the same
// time; the client ends its half (FIN) and keeps reading the server's.
func TestHalfCloseFullDuplex(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		buf := make([]byte, 100)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(bytes.ToUpper(buf[:n]))
				w.(http.Flusher).Flush()
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Errorf("server read: %v", err)
				return
			}
		}
		// Our request half is closed; the response half goes on.
		io.WriteString(w, "|bye")
	})
	cs, _ := pair(t, h, nil, nil)
	pr, pw := io.Pipe()
	resp, err := cs.RoundTrip(newReq(t, "POST", "https://x/echo", pr))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	for _, word := range []string{"ping", "pong", "spdy"} {
		if _, err := pw.Write([]byte(word)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(word))
		if _, err := io.ReadFull(resp.Body, got); err != nil {
			t.Fatal(err)
		}
		if string(got) != strings.ToUpper(word) {
			t.Fatalf("echo %q, want %q", got, strings.ToUpper(word))
		}
	}
	pw.Close()
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "|bye" {
		t.Fatalf("after half-close: %q, %v", rest, err)
	}
}

// TestHandlerResetMidBody: a stream reset mid-body surfaces as an error from
// Read, never as EOF, even though a Content-Length was not declared.
func TestHandlerResetMidBody(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(make([]byte, 100<<10))
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})
	cs, ss := pair(t, h, nil, nil)
	resp, err := cs.RoundTrip(newReq(t, "GET", "https://x/", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	var se *StreamError
	if !errors.As(err, &se) || !se.Remote || se.Status != StatusCancel {
		t.Fatalf("read %d bytes, error %v; want a peer CANCEL reset", len(b), err)
	}
	if ss.Err() != nil || cs.Err() != nil {
		t.Fatalf("session died: %v / %v", ss.Err(), cs.Err())
	}
}

// TestHandlerPanic: a panicking handler resets its stream with
// INTERNAL_ERROR, the panic is logged, and the session goes on.
func TestHandlerPanic(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/panic":
			panic("boom")
		case "/panic-mid-body":
			w.Write(make([]byte, 20<<10))
			w.(http.Flusher).Flush()
			panic("boom mid body")
		}
		io.WriteString(w, "fine")
	})
	log := &recLogger{}
	scfg := testConfig()
	scfg.Logger = log
	cs, ss := pair(t, h, nil, scfg)

	_, err := cs.RoundTrip(newReq(t, "GET", "https://x/panic", nil))
	var se *StreamError
	if !errors.As(err, &se) || se.Status != StatusInternalError || !se.Remote {
		t.Fatalf("RoundTrip to a panicking handler: %v, want INTERNAL_ERROR reset", err)
	}
	resp, err := cs.RoundTrip(newReq(t, "GET", "https://x/panic-mid-body", nil))
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !errors.As(err, &se) || se.Status != StatusInternalError {
		t.Fatalf("body of a handler that panicked mid-body: %v", err)
	}
	for range 3 {
		resp, err := cs.RoundTrip(newReq(t, "GET", "https://x/ok", nil))
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != "fine" {
			t.Fatalf("after panic: %q %v", b, err)
		}
	}
	if ss.Err() != nil {
		t.Fatalf("server session died: %v", ss.Err())
	}
	if !log.has("error", "panic") {
		t.Fatalf("panic not logged: %v", log.msgs)
	}
}

// TestContentLengthShortHandler: a handler that declares more than it
// writes must not hand the client a short body that looks whole.
func TestContentLengthShortHandler(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/short":
			w.Header().Set("Content-Length", "100")
			w.Write(make([]byte, 50))
		case "/long":
			w.Header().Set("Content-Length", "10")
			if _, err := w.Write(make([]byte, 20)); !errors.Is(err, http.ErrContentLength) {
				t.Errorf("over-long write: %v, want ErrContentLength", err)
			}
			w.Write(make([]byte, 10))
		}
	})
	cs, _ := pair(t, h, nil, nil)
	resp, err := cs.RoundTrip(newReq(t, "GET", "https://x/short", nil))
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatal("short body with Content-Length 100 read without error")
	}
	resp, err = cs.RoundTrip(newReq(t, "GET", "https://x/long", nil))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || len(b) != 10 || resp.ContentLength != 10 {
		t.Fatalf("got %d bytes (cl %d), %v", len(b), resp.ContentLength, err)
	}
}

// TestRequestBodyShorterThanContentLength: the client resets a request
// whose body is shorter than its declared length; the handler sees an error.
func TestRequestBodyShorterThanContentLength(t *testing.T) {
	handlerErr := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		handlerErr <- err
	})
	cs, _ := pair(t, h, nil, nil)
	req := newReq(t, "PUT", "https://x/", io.NopCloser(strings.NewReader(strings.Repeat("a", 50))))
	req.ContentLength = 100
	resp, err := cs.RoundTrip(req)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	expectFailure(t, handlerErr, "handler read a truncated request body without error", "handler never finished")
}

// TestNoBodyResponses: HEAD, 204 and 304 carry no body; the declared
// Content-Length of a HEAD answer is kept.
func TestNoBodyResponses(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(http.StatusNoContent)
			if _, err := w.Write([]byte("x")); !errors.Is(err, http.ErrBodyNotAllowed) {
				t.Errorf("write to 204: %v", err)
			}
		case "/304":
			w.WriteHeader(http.StatusNotModified)
			if _, err := w.Write([]byte("x")); !errors.Is(err, http.ErrBodyNotAllowed) {
				t.Errorf("write to 304: %v", err)
			}
		default:
			w.Header().Set("Content-Length", "1234")
			w.Write(make([]byte, 1234))
		}
	})
	cs, _ := pair(t, h, nil, nil)
	for _, c := range []struct {
		method, path string
		code         int
		cl           int64
	}{
		{"HEAD", "/", 200, 1234},
		{"GET", "/204", 204, 0},
		{"GET", "/304", 304, 0},
		{"GET", "/", 200, 1234},
	} {
		resp, err := cs.RoundTrip(newReq(t, c.method, "https://x"+c.path, nil))
		if err != nil {
			t.Fatalf("%s %s: %v", c.method, c.path, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantLen := 0
		if c.method == "GET" && c.code == 200 {
			wantLen = 1234
		}
		if err != nil || resp.StatusCode != c.code || len(b) != wantLen || resp.ContentLength != c.cl {
			t.Errorf("%s %s: status %d body %d cl %d err %v", c.method, c.path, resp.StatusCode, len(b), resp.ContentLength, err)
		}
	}
}

// TestHijackAfter101: an upgraded stream is a byte pipe both ways, with
// half-close, and the upgrade counters follow it.
func TestHijackAfter101(t *testing.T) {
	serverDone := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "test-proto" || !headerHasToken(r.Header, "Connection", "upgrade") {
			t.Errorf("upgrade request headers: %v", r.Header)
		}
		w.Header().Set("Upgrade", "test-proto")
		w.Header().Set("Connection", "Upgrade")
		w.WriteHeader(http.StatusSwitchingProtocols)
		w.(http.Flusher).Flush()
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			serverDone <- err
			return
		}
		defer conn.Close()
		if brw.Reader.Buffered() != 0 {
			t.Errorf("bufio reader holds %d bytes", brw.Reader.Buffered())
		}
		// Echo upper-cased until the client half-closes, then say bye.
		data, err := io.ReadAll(conn)
		if err != nil {
			serverDone <- err
			return
		}
		_, err = conn.Write(append(bytes.ToUpper(data), "|bye"...))
		serverDone <- err
	})
	cs, ss := pair(t, h, nil, nil)
	req := newReq(t, "GET", "https://x/ws", nil)
	req.Header.Set("Upgrade", "test-proto")
	req.Header.Set("Connection", "Upgrade")
	resp, err := cs.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "test-proto" {
		t.Fatalf("status %d headers %v", resp.StatusCode, resp.Header)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		t.Fatalf("101 body %T is not an io.ReadWriteCloser", resp.Body)
	}
	if up := cs.Stats().UpgradedStreams; up != 1 {
		t.Fatalf("client upgraded streams %d", up)
	}
	if _, err := rwc.Write([]byte("hello ")); err != nil {
		t.Fatal(err)
	}
	if _, err := rwc.Write([]byte("world")); err != nil {
		t.Fatal(err)
	}
	if err := rwc.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rwc)
	if err != nil || string(got) != "HELLO WORLD|bye" {
		t.Fatalf("pipe read %q, %v", got, err)
	}
	if err := <-serverDone; err != nil {
		t.Fatalf("server side: %v", err)
	}
	rwc.Close()
	waitUntil(t, "upgraded streams released", func() bool {
		return cs.Stats().UpgradedStreams == 0 && ss.Stats().UpgradedStreams == 0 && cs.OpenStreams() == 0 && ss.OpenStreams() == 0
	})
}

// TestStats checks the counters against known traffic.
func TestStats(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Write(make([]byte, 2*n))
	})
	cs, ss := pair(t, h, nil, nil)
	before := time.Now()
	// (No PING yet: testConfig disables keepalive, and with it the one at
	// the session's start.)
	if st := cs.Stats(); st.StreamsTotal != 0 || st.BytesIn != 0 || st.BytesOut != 0 || st.RTT != 0 || st.Since.After(before) || st.Since.IsZero() {
		t.Fatalf("fresh stats %+v", st)
	}
	var sent uint64
	for i := 1; i <= 5; i++ {
		body := strings.Repeat("s", i*1000)
		sent += uint64(len(body))
		resp, err := cs.RoundTrip(newReq(t, "POST", "https://x/", strings.NewReader(body)))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	rtt, err := cs.Ping(context.Background())
	if err != nil || rtt <= 0 {
		t.Fatalf("ping %v %v", rtt, err)
	}
	if _, err := ss.Ping(context.Background()); err != nil {
		t.Fatalf("server ping: %v", err)
	}
	// The server's handler goroutine drops its stream from the table just
	// after the last frame is written; wait for that.
	waitUntil(t, "no open streams", func() bool { return cs.OpenStreams() == 0 && ss.OpenStreams() == 0 })
	c, s := cs.Stats(), ss.Stats()
	if c.StreamsTotal != 5 || s.StreamsTotal != 5 {
		t.Errorf("streams total client %d server %d, want 5", c.StreamsTotal, s.StreamsTotal)
	}
	if c.BytesOut != sent || s.BytesIn != sent {
		t.Errorf("request bytes: client out %d, server in %d, want %d", c.BytesOut, s.BytesIn, sent)
	}
	if c.BytesIn != 2*sent || s.BytesOut != 2*sent {
		t.Errorf("response bytes: client in %d, server out %d, want %d", c.BytesIn, s.BytesOut, 2*sent)
	}
	if c.OpenStreams != 0 || s.OpenStreams != 0 {
		t.Errorf("open streams %d / %d", c.OpenStreams, s.OpenStreams)
	}
	if c.RTT != rtt {
		t.Errorf("Stats.RTT %v, Ping returned %v", c.RTT, rtt)
	}
	if s.RTT <= 0 {
		t.Errorf("server RTT %v", s.RTT)
	}
}

// TestKeepaliveHealthy: keepalive PINGs on a healthy session measure an RTT and
// keep the session open.
func TestKeepaliveHealthy(t *testing.T) {
	cfg := testConfig()
	cfg.PingInterval = 5 * time.Millisecond
	cfg.PingTimeout = 5 * time.Second
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "x") })
	cs, _ := pair(t, h, cfg, cfg)
	waitUntil(t, "keepalive measured an RTT", func() bool { return cs.Stats().RTT > 0 })
	if cs.Err() != nil {
		t.Fatal(cs.Err())
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name   string
		mod    func(*Config)
		wantOK bool
	}{
		{"default", func(*Config) {}, true},
		{"keepalive off", func(c *Config) { c.PingInterval = -1 }, true},
		{"no write timeout", func(c *Config) { c.WriteTimeout = -1 }, true},
		{"no idle timeout", func(c *Config) { c.StreamIdleTimeout = -1 }, true},
		{"unbounded queue wait", func(c *Config) { c.StreamQueueTimeout = -1 }, true},
		{"minimum windows", func(c *Config) { c.StreamWindow, c.SessionWindow = 64<<10, 64<<10 }, true},
		{"max windows", func(c *Config) { c.StreamWindow, c.SessionWindow = maxWindow, maxWindow }, true},
		{"minimal header limits", func(c *Config) { c.MaxHeaderBytes, c.MaxHeaderCount = 1024, 16 }, true},
		{"zero value: all defaults", func(c *Config) { *c = Config{} }, true},
		{"zero fields are defaults", func(c *Config) {
			c.StreamWindow, c.MaxConcurrentStreams, c.PingTimeout, c.MaxUpgradedStreams = 0, 0, 0, 0
		}, true},
		{"stream window too small", func(c *Config) { c.StreamWindow = 64<<10 - 1 }, false},
		{"stream window negative", func(c *Config) { c.StreamWindow = -1 }, false},
		{"session window below stream", func(c *Config) { c.SessionWindow = c.StreamWindow - 1 }, false},
		{"negative ping timeout", func(c *Config) { c.PingTimeout = -time.Second }, false},
		{"header bytes too small", func(c *Config) { c.MaxHeaderBytes = 1023 }, false},
		{"header count too small", func(c *Config) { c.MaxHeaderCount = 15 }, false},
		{"no upgrades", func(c *Config) { c.MaxUpgradedStreams = -1 }, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := DefaultConfig()
			c.mod(cfg)
			err := cfg.Validate()
			if (err == nil) != c.wantOK {
				t.Fatalf("Validate() = %v, want ok=%v", err, c.wantOK)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "spdy: invalid config") {
				t.Fatalf("error %q lacks context", err)
			}
			if !c.wantOK {
				a, b := tcpPair(t)
				defer a.Close()
				defer b.Close()
				if s, err := NewClient(a, cfg); err == nil {
					s.Close()
					t.Fatal("NewClient accepted an invalid config")
				}
			}
		})
	}
	if err := testConfig().Validate(); err != nil {
		t.Fatalf("testConfig invalid: %v", err)
	}
	// Every problem is reported, not only the first.
	bad := DefaultConfig()
	bad.StreamWindow = -1
	bad.PingTimeout = -1
	err := bad.Validate()
	if err == nil || !strings.Contains(err.Error(), "stream window") || !strings.Contains(err.Error(), "ping timeout") {
		t.Fatalf("combined error %v", err)
	}
}

func TestIsRetryable(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{ErrGoAway, true},
		{fmt.Errorf("wrapped: %w", ErrGoAway), true},
		{notProcessed{ErrSessionClosed}, true},
		{&StreamError{StreamID: 1, Status: StatusRefusedStream, Remote: true}, true},
		{&StreamError{StreamID: 1, Status: StatusRefusedStream, Remote: false}, false},
		{&StreamError{StreamID: 1, Status: StatusCancel, Remote: true}, false},
		{ErrSessionClosed, false},
		{ErrPingTimeout, false},
		{io.EOF, false},
	}
	for _, c := range cases {
		if got := IsRetryable(c.err); got != c.want {
			t.Errorf("IsRetryable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// A response body may be closed from another goroutine while a Read waits
// on it (as net/http's bodies may, and as a proxy does when its client
// leaves): the Read ends with an error, and nothing races.
func TestResponseBodyCloseDuringRead(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	cs, _ := pair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-release
	}), nil, nil)
	resp, err := cs.RoundTrip(newReq(t, "GET", "https://example.com/quiet", nil))
	if err != nil {
		t.Fatal(err)
	}
	read := make(chan error, 1)
	go func() {
		_, err := resp.Body.Read(make([]byte, 10))
		read <- err
	}()
	time.Sleep(20 * time.Millisecond) // let the Read block
	if err := resp.Body.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-read:
		if err == nil {
			t.Fatal("Read after a concurrent Close returned no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked 5s after Close")
	}
}
