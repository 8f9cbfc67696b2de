package spdy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mspdy "github.com/moby/spdystream/spdy"
)

// whoWrites is a connection that records which goroutines write to it:
// the writer goroutine (writeLoop) or another one.
type whoWrites struct {
	net.Conn
	mu       sync.Mutex
	byWriter int
	byOthers int
	fail     atomic.Bool // writes fail from now on
}

var errWireCut = errors.New("wire cut")

func (w *whoWrites) Write(p []byte) (int, error) {
	if w.fail.Load() {
		return 0, errWireCut
	}
	buf := make([]byte, 64<<10)
	stack := string(buf[:runtime.Stack(buf, false)])
	w.mu.Lock()
	if strings.Contains(stack, "writeLoop") {
		w.byWriter++
	} else {
		w.byOthers++
	}
	w.mu.Unlock()
	return w.Conn.Write(p)
}

func (w *whoWrites) counts() (writer, others int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.byWriter, w.byOthers
}

func (w *whoWrites) reset() {
	w.mu.Lock()
	w.byWriter, w.byOthers = 0, 0
	w.mu.Unlock()
}

// TestQuietSessionWritesWithoutHandOff: on a session with one request at a
// time, the request's SYN_STREAM and a small response (SYN_REPLY and its
// DATA, in one write) are written by the goroutines that have them, not
// handed to the writer goroutine and waited for: each hand-off costs a
// wake-up of another goroutine and one back. Before direct writes, every
// frame went through the writer.
func TestQuietSessionWritesWithoutHandOff(t *testing.T) {
	a, b := tcpPair(t)
	cw, sw := &whoWrites{Conn: a}, &whoWrites{Conn: b}
	body := bytes.Repeat([]byte("x"), 1024)
	cs, err := NewClient(cw, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	ss, err := NewServer(sw, testConfig(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close(); ss.Close(); <-cs.writerDone; <-ss.writerDone; ss.handlersWG.Wait() })
	get := func() {
		t.Helper()
		resp, err := cs.RoundTrip(newReq(t, "GET", "http://x/", nil))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("body: %d bytes, %v", len(got), err)
		}
	}
	get() // SETTINGS and the session's WINDOW_UPDATE go through the writer
	waitUntil(t, "the first exchange settled", func() bool { return cs.openStreams() == 0 && ss.openStreams() == 0 })
	time.Sleep(20 * time.Millisecond) // the writers have written what they had
	cw.reset()
	sw.reset()
	const n = 20
	for range n {
		get()
	}
	cByWriter, cByOthers := cw.counts()
	sByWriter, sByOthers := sw.counts()
	// A frame goes to the writer when it finds the previous one still
	// being written (the goroutine that wrote it may not have had a thread
	// back yet to let go of the connection): most must not.
	if cByOthers < n/2 {
		t.Errorf("client: %d of %d requests written by their own goroutine (%d writes by the writer goroutine)", cByOthers, n, cByWriter)
	}
	if sByOthers < n/2 || sByOthers+sByWriter != n {
		t.Errorf("server: %d responses written by their handlers, %d writes by the writer goroutine; want most of %d by the handlers, one write per response", sByOthers, sByWriter, n)
	}
}

// TestBusySessionWritesThroughWriter: with more than directMaxOpen streams
// open, frames go through the writer goroutine, which puts the frames of
// several streams in one write.
func TestBusySessionWritesThroughWriter(t *testing.T) {
	a, b := tcpPair(t)
	sw := &whoWrites{Conn: b}
	release := make(chan struct{})
	var started sync.WaitGroup
	cs, err := NewClient(a, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	ss, err := NewServer(sw, testConfig(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			started.Done()
			<-release
		}
		w.Write([]byte("ok"))
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close(); ss.Close(); <-cs.writerDone; <-ss.writerDone; ss.handlersWG.Wait() })
	const held = directMaxOpen
	started.Add(held)
	var done sync.WaitGroup
	for range held {
		done.Add(1)
		go func() {
			defer done.Done()
			if resp, err := cs.RoundTrip(newReq(t, "GET", "http://x/hold", nil)); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	started.Wait()
	time.Sleep(20 * time.Millisecond)
	sw.reset()
	resp, err := cs.RoundTrip(newReq(t, "GET", "http://x/", nil))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	byWriter, byOthers := sw.counts()
	close(release)
	done.Wait()
	if byOthers != 0 || byWriter == 0 {
		t.Errorf("with %d streams open, %d writes by handlers and %d by the writer goroutine; want all by the writer", held+1, byOthers, byWriter)
	}
}

// TestDirectWriteFailureClosesSession: a write that fails in a handler's
// goroutine ends the session as a failure of the writer goroutine would:
// the handler's write fails with the cause, the session closes with it,
// and the streams open on it fail; no goroutine is left behind (TestMain).
func TestDirectWriteFailureClosesSession(t *testing.T) {
	a, b := tcpPair(t)
	sw := &whoWrites{Conn: b}
	writeErr := make(chan error, 1)
	cs, err := NewClient(a, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	ss, err := NewServer(sw, testConfig(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/cut" {
			w.Write([]byte("ok"))
			return
		}
		sw.fail.Store(true)
		_, err := w.Write([]byte("lost"))
		if err == nil {
			err = http.NewResponseController(w).Flush()
		}
		writeErr <- err
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close(); ss.Close(); <-cs.writerDone; <-ss.writerDone; ss.handlersWG.Wait() })
	if r := recvResult(t, goRoundTrip(cs, newReq(t, "GET", "http://x/", nil))); r.err != nil {
		t.Fatal(r.err)
	}
	waitUntil(t, "the first exchange settled", func() bool { return ss.openStreams() == 0 })
	time.Sleep(20 * time.Millisecond) // the writer has written what it had
	ss.pushback.Store(false)          // whatever a loaded machine made of the first writes
	ch := goRoundTrip(cs, newReq(t, "GET", "http://x/cut", nil))
	select {
	case err := <-writeErr:
		if !errors.Is(err, errWireCut) {
			t.Fatalf("handler's write: %v, want the connection's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's write did not fail")
	}
	select {
	case <-ss.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the session did not close after its write failed")
	}
	if err := ss.Err(); !errors.Is(err, errWireCut) || !strings.Contains(err.Error(), "writing to connection") {
		t.Fatalf("session closed with %v, want the write's failure", err)
	}
	if r := recvResult(t, ch); r.err == nil {
		t.Fatal("the request succeeded on a session whose server could not write")
	}
}

// TestDirectStreamIDsInOrder: streams opened at once from many goroutines
// reach the wire in the order of their ids, whether their SYN_STREAM is
// written by the opener or queued for the writer.
func TestDirectStreamIDsInOrder(t *testing.T) {
	cs, p := rawServer(t, testConfig())
	const n = 200
	for range n {
		goRoundTrip(cs, newReq(t, "GET", "http://x/", nil)) // each in its own goroutine
	}
	last := uint32(0)
	for i := range n {
		f := p.expect(fmt.Sprintf("SYN_STREAM %d of %d", i+1, n), func(f mspdy.Frame) bool { _, ok := f.(*mspdy.SynStreamFrame); return ok })
		id := uint32(f.(*mspdy.SynStreamFrame).StreamId)
		if id <= last {
			t.Fatalf("SYN_STREAM %d after %d", id, last)
		}
		last = id
	}
}

// waitWriterIdle waits until nobody holds wlock and nothing is queued: the
// next frame may be written directly.
func waitWriterIdle(t *testing.T, s *Session) {
	t.Helper()
	waitUntil(t, "the writer is idle", func() bool {
		s.wmu.Lock()
		defer s.wmu.Unlock()
		if s.ctrlQ.len() > 0 || s.dataQ.len() > 0 || !s.wlock.TryLock() {
			return false
		}
		s.wlock.Unlock()
		return true
	})
}

// TestRoundTripHonoursContextWhileConnBlocked: a RoundTrip on a quiet
// session whose connection does not drain must still return when its
// context ends. Before direct writes, openStream queued the SYN_STREAM and
// returned, and RoundTrip waited for the reply under ctx; with them, the
// SYN_STREAM is written by RoundTrip's own goroutine, which then sits in
// conn.Write, deaf to ctx, until the write deadline (30 s by default).
func TestRoundTripHonoursContextWhileConnBlocked(t *testing.T) {
	cs, v, p := valveClient(t)
	v.set(false)
	p.expect("SETTINGS", func(f mspdy.Frame) bool { _, ok := f.(*mspdy.SettingsFrame); return ok })
	waitWriterIdle(t, cs)
	v.set(true) // the peer stops reading

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req := newReq(t, "GET", "http://x/", nil).WithContext(ctx)
	done := make(chan error, 1)
	go func() {
		resp, err := cs.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("RoundTrip: %v, want the context's deadline", err)
		}
	case <-time.After(2 * time.Second):
		blocked := v.blocked()
		v.set(false) // let it go, for the cleanup
		<-done
		t.Fatalf("RoundTrip ignored its context's end for 2s (a write waits on the connection: %v)", blocked)
	}
}
