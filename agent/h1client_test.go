package agent

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawOrigin is an HTTP/1.1 upstream written by hand, one goroutine per
// connection, so that tests control every byte and count nothing of net/http's
// server: serve is called for each request read on a connection, and returns
// whether the connection stays open for another.
type rawOrigin struct {
	l     net.Listener
	conns chan net.Conn // every accepted connection, for tests that count them
}

func newRawOrigin(t *testing.T, serve func(c net.Conn, br *bufio.Reader, req *http.Request) bool) *rawOrigin {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &rawOrigin{l: l, conns: make(chan net.Conn, 1024)}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			select {
			case o.conns <- c:
			default:
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					if !serve(c, br, req) {
						return
					}
				}
			}()
		}
	}()
	return o
}

func (o *rawOrigin) url() *url.URL {
	u, _ := url.Parse("http://" + o.l.Addr().String())
	return u
}

// Streams that wait on a quiet upstream (long polls, event streams: make
// bench's streams section) cost the agent one goroutine each, the stream's
// handler, and no read buffer: before, net/http's Transport gave each such
// stream's upstream connection two more goroutines (readLoop and writeLoop)
// and 8 KiB of bufio, most of the agent's memory per open stream.
func TestQuietStreamsCostOneGoroutine(t *testing.T) {
	release := make(chan struct{})
	origin := newRawOrigin(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n"); err != nil {
			return false
		}
		<-release
		return false
	})
	defer close(release)
	fr := spdyFront(t, origin.url(), "")
	const n = 64
	// Everything but the agent's share is fixed per request: the client's
	// goroutine here and the origin's for its connection.
	warm := func() int {
		runtime.GC()
		time.Sleep(50 * time.Millisecond)
		return runtime.NumGoroutine()
	}
	before := warm()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan error, n)
	for range n {
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", fr.base+"/events", nil)
			resp, err := fr.client.Do(req)
			if err != nil {
				got <- err
				return
			}
			defer resp.Body.Close()
			b := make([]byte, 1)
			_, err = io.ReadFull(resp.Body, b)
			got <- err
			<-ctx.Done()
		}()
	}
	for range n {
		if err := <-got; err != nil {
			t.Fatal(err)
		}
	}
	held := warm()
	perStream := float64(held-before) / n
	t.Logf("%d quiet streams: %.2f goroutines each (client 1, origin 1, agent the rest)", n, perStream)
	if perStream > 3.25 {
		var sb strings.Builder
		buf := make([]byte, 1<<20)
		sb.Write(buf[:runtime.Stack(buf, true)])
		t.Errorf("%.2f goroutines per quiet stream, want ≤ 3.25 (client 1 + origin 1 + agent 1); goroutines:\n%s", perStream, firstLines(sb.String(), 120))
	}
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

// h1Get sends a GET through c and returns the status and body.
func h1Do(t *testing.T, c *h1Client, method, target string, body io.Reader) (*http.Response, string, error) {
	t.Helper()
	req, _ := http.NewRequest(method, target, body)
	if body == nil {
		req.Body = nil
	}
	req.Header["User-Agent"] = []string{""}
	res, err := c.roundTrip(req, nil)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(res.Body)
	_ = res.Body.Close()
	return res, string(b), err
}

func newTestH1(t *testing.T, o *rawOrigin) *h1Client {
	c := newH1Client(o.l.Addr().String(), &net.Dialer{Timeout: 5 * time.Second})
	t.Cleanup(c.closeIdle)
	return c
}

// h1Get gets path from o through c; the response's body is closed when
// the test ends.
func h1Get(t *testing.T, c *h1Client, o *rawOrigin, path string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", o.url().String()+path, nil)
	res, err := c.roundTrip(req, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Body.Close() })
	return res
}

func answer(c net.Conn, s string) bool {
	_, err := io.WriteString(c, s)
	return err == nil
}

// Keep-alive: responses of every framing leave the connection for the next
// request, including those without a body.
func TestH1ReusesConnections(t *testing.T) {
	o := newRawOrigin(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		_, _ = io.Copy(io.Discard, req.Body)
		switch req.URL.Path {
		case "/cl":
			return answer(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
		case "/chunked":
			return answer(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5\r\nhello\r\n0\r\nX-T: v\r\n\r\n")
		case "/204":
			return answer(c, "HTTP/1.1 204 No Content\r\n\r\n")
		case "/304":
			return answer(c, "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n")
		default: // HEAD
			return answer(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
		}
	})
	c := newTestH1(t, o)
	base := o.url().String()
	for i := range 3 {
		for _, tc := range []struct{ method, path, want string }{
			{"GET", "/cl", "hello"}, {"GET", "/chunked", "hello"}, {"GET", "/204", ""},
			{"GET", "/304", ""}, {"HEAD", "/head", ""}, {"POST", "/cl", "hello"},
		} {
			var body io.Reader
			if tc.method == "POST" {
				body = strings.NewReader("some upload")
			}
			res, got, err := h1Do(t, c, tc.method, base+tc.path, body)
			if err != nil || got != tc.want {
				t.Fatalf("round %d %s %s: %q, %v; want %q", i, tc.method, tc.path, got, err, tc.want)
			}
			if tc.path == "/chunked" && res.Trailer.Get("X-T") != "v" {
				t.Fatalf("trailer lost: %v", res.Trailer)
			}
		}
	}
	if n := len(o.conns); n != 1 {
		t.Fatalf("%d upstream connections for 18 sequential requests, want 1", n)
	}
}

// Bytes an upstream sends past a response's end are not the next
// request's response: the connection goes. The same for bytes an idle
// connection receives unasked.
func TestH1ExtraBytesAreNotAResponse(t *testing.T) {
	o := newRawOrigin(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		switch req.URL.Path {
		case "/smuggle":
			return answer(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
		case "/later":
			if !answer(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") {
				return false
			}
			time.Sleep(50 * time.Millisecond)
			return answer(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
		}
		return answer(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood")
	})
	c := newTestH1(t, o)
	for _, p := range []string{"/smuggle", "/later"} {
		if _, got, err := h1Do(t, c, "GET", o.url().String()+p, nil); err != nil || got != "ok" {
			t.Fatalf("%s: %q, %v", p, got, err)
		}
		time.Sleep(100 * time.Millisecond)
		if _, got, err := h1Do(t, c, "GET", o.url().String()+"/next", nil); err != nil || got != "good" {
			t.Fatalf("after %s: %q, %v; want the next request's own response", p, got, err)
		}
	}
}

// An upstream that closes idle connections (its keep-alive timeout) costs
// no request: a dead pooled connection is noticed before use, and one that
// dies as the request goes out is retried when the request can be replayed,
// and only then.
func TestH1StalePooledConnection(t *testing.T) {
	var (
		mu     sync.Mutex
		perCon = map[net.Conn]int{}
		posts  int
	)
	o := newRawOrigin(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		mu.Lock()
		perCon[c]++
		nth := perCon[c]
		if req.Method == "POST" {
			posts++
		}
		mu.Unlock()
		_, _ = io.Copy(io.Discard, req.Body)
		switch {
		case req.URL.Path == "/close-after":
			// Keep-alive announced, then the connection closes anyway.
			answer(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			time.Sleep(20 * time.Millisecond)
			return false
		case req.URL.Path == "/drop-second" && nth == 2:
			// The request is taken and the connection dies without an
			// answer: as if it had closed just as the request went out.
			return false
		}
		return answer(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	c := newTestH1(t, o)
	base := o.url().String()
	// Closed while idle: found dead before use, even for a POST.
	if _, got, err := h1Do(t, c, "GET", base+"/close-after", nil); err != nil || got != "ok" {
		t.Fatalf("%q %v", got, err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, got, err := h1Do(t, c, "POST", base+"/x", strings.NewReader("body")); err != nil || got != "ok" {
		t.Fatalf("POST on a connection the upstream closed while idle: %q %v", got, err)
	}
	// Dies under a GET: retried on a new connection.
	if _, got, err := h1Do(t, c, "GET", base+"/drop-second", nil); err != nil || got != "ok" {
		t.Fatalf("GET on a connection that died under it: %q %v; want the retry's answer", got, err)
	}
	// Dies under a POST with a body: not sent twice.
	before := posts
	if _, got, err := h1Do(t, c, "POST", base+"/drop-second", strings.NewReader("body")); err == nil {
		t.Fatalf("POST on a connection that died under it: %q; want an error", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if posts != before+1 {
		t.Fatalf("the POST reached the upstream %d times, want once", posts-before)
	}
}

// A quiet response (headers and a first event, then nothing) holds no read
// buffer of the client's while it waits: what the stream costs is the
// caller's own copy buffer.
func TestH1QuietResponseHoldsNoBuffer(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	o := newRawOrigin(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		answer(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n")
		<-release
		return false
	})
	c := newTestH1(t, o)
	req, _ := http.NewRequest("GET", o.url().String()+"/events", nil)
	req.Body = nil
	res, err := c.roundTrip(req, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	buf := make([]byte, quietCopyBuffer)
	if n, err := res.Body.Read(buf); n != 1 || err != nil {
		t.Fatalf("first event: %d bytes, %v", n, err)
	}
	pc := res.Body.(*h1Body).pc
	if pc.lr.buf != nil || pc.br.Buffered() != 0 {
		t.Fatalf("quiet response holds a %d-byte read buffer (%d bytes buffered)", len(pc.lr.buf), pc.br.Buffered()+pc.lr.buffered())
	}
}

// Response heads are bounded (1xx heads included): an upstream that sends
// headers without end gets an error, not the agent's memory.
func TestH1HeadBound(t *testing.T) {
	o := newRawOrigin(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		if !answer(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n") {
			return false
		}
		line := "X-Filler: " + strings.Repeat("a", 1000) + "\r\n"
		for range 2000 { // 2 MB
			if !answer(c, line) {
				return false
			}
		}
		return false
	})
	c := newTestH1(t, o)
	hints := 0
	req, _ := http.NewRequest("GET", o.url().String()+"/", nil)
	req.Body = nil
	_, err := c.roundTrip(req, func(code int, hdr textproto.MIMEHeader) error { hints++; return nil })
	if err == nil || !strings.Contains(err.Error(), "response headers over") {
		t.Fatalf("2 MB of headers: %v; want the bound's error", err)
	}
	if hints != 1 {
		t.Fatalf("%d informational responses relayed, want 1", hints)
	}
}

// An upstream that answers before it has read the request body (a 413)
// gets its answer through, and the connection, with the rest of the body,
// is dropped rather than reused mid-body.
func TestH1EarlyAnswerDuringUpload(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	o := newRawOrigin(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		if req.URL.Path == "/upload" {
			answer(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\n\r\nbig")
			<-release // keep reading nothing, and the connection open: the agent is to give it up
			return false
		}
		return answer(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	c := newTestH1(t, o)
	pr, pw := io.Pipe()
	fed := make(chan error, 1) // how the upload's feeding ended
	go func() {
		chunk := make([]byte, 64<<10)
		for range 1024 { // 64 MiB, far past what sockets buffer
			if _, err := pw.Write(chunk); err != nil {
				fed <- err
				return
			}
		}
		fed <- pw.Close()
	}()
	req, _ := http.NewRequest("PUT", o.url().String()+"/upload", pr)
	req.ContentLength = 64 << 20
	res, err := c.roundTrip(req, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 413 || string(b) != "big" || err != nil {
		t.Fatalf("%d %q %v", res.StatusCode, b, err)
	}
	// The rest of the body is given up: its reader closed, which ends
	// the request's writer and whoever feeds the body.
	select {
	case err := <-fed:
		if err == nil {
			t.Fatal("the whole 64 MiB body went out after the upstream's answer")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the request body is still being read after the exchange ended")
	}
	if _, got, err := h1Do(t, c, "GET", o.url().String()+"/next", nil); err != nil || got != "ok" {
		t.Fatalf("next request: %q %v", got, err)
	}
	if n := len(o.conns); n != 2 {
		t.Fatalf("%d upstream connections, want 2: the one left mid-body is not reused", n)
	}
}

// Response trailers as large as the Transport takes (it reads them through
// a 4 KiB bufio.Reader) come through, although the connection's reader is
// 512 bytes: net/http refuses a trailer that does not fit the reader it
// peeks into, and the body then failed after all of it had been relayed.
func TestH1LongResponseTrailer(t *testing.T) {
	sig := strings.Repeat("s", 1500)
	o := newRawOrigin(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		if req.URL.Path == "/next" {
			return answer(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood")
		}
		return answer(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sig\r\n\r\n5\r\nhello\r\n0\r\nX-Sig: "+sig+"\r\nX-Other: o\r\n\r\n")
	})
	c := newTestH1(t, o)
	res, got, err := h1Do(t, c, "GET", o.url().String()+"/", nil)
	if err != nil || got != "hello" {
		t.Fatalf("%q, %v; want the body and its trailer", got, err)
	}
	if res.Trailer.Get("X-Sig") != sig || res.Trailer.Get("X-Other") != "o" {
		t.Fatalf("trailer %v", res.Trailer)
	}
	if _, got, err := h1Do(t, c, "GET", o.url().String()+"/next", nil); err != nil || got != "good" {
		t.Fatalf("next request: %q %v", got, err)
	}
	if n := len(o.conns); n != 1 {
		t.Fatalf("%d upstream connections, want 1 (the trailer read to its end)", n)
	}
}

// A request that fails as it is written, the upstream having taken part of
// it or none (here a Host that cannot be written, as the Transport also
// refuses it), ends the exchange: the upstream is not left waiting for the
// rest of the request while the agent waits for its response.
func TestH1RequestWriteFailureEndsExchange(t *testing.T) {
	o := newRawOrigin(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		_, _ = io.Copy(io.Discard, req.Body)
		return answer(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	c := newTestH1(t, o)
	// Only a guard against hanging: the answer is expected at once.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write([]byte("hello"))
		_ = pw.Close()
	}()
	req, _ := http.NewRequestWithContext(ctx, "POST", o.url().String()+"/", pr)
	req.Host = "xn--ä" // not IDNA: http.Request.Write fails before writing anything
	req.ContentLength = 5
	res, err := c.roundTrip(req, nil)
	if err == nil {
		_ = res.Body.Close()
		t.Fatalf("%d: want an error", res.StatusCode)
	}
	if ctx.Err() != nil {
		t.Fatalf("waited for a response to a request never sent: %v", err)
	}
	t.Log(err)
}

// closeGate is a request body whose Close (which http.Request.Write calls
// after its EOF, before the write is over) waits until the gate opens.
type closeGate struct {
	io.Reader
	open chan struct{}
	once sync.Once
}

func (b *closeGate) Close() error {
	b.once.Do(func() { <-b.open })
	return nil
}

// An upstream that answers as the request's last bytes reach it often wins
// the race against the request's writer, which has its own last steps to
// take (flushing, closing the body): its connection is reused all the same,
// as with the Transport, rather than closed as if the upstream had answered
// before taking the body.
func TestH1ReuseAfterAnswerAtRequestEnd(t *testing.T) {
	o := newRawOrigin(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		_, _ = io.Copy(io.Discard, req.Body)
		return answer(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	c := newTestH1(t, o)
	defer func(d time.Duration) { h1WriteWait = d }(h1WriteWait)
	h1WriteWait = time.Minute // not what this test is about
	body := &closeGate{Reader: strings.NewReader(strings.Repeat("x", 10000)), open: make(chan struct{})}
	req, _ := http.NewRequest("PUT", o.url().String()+"/up", body)
	req.ContentLength = 10000
	res, err := c.roundTrip(req, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The writer is held at its end until the response's end has been
	// read (or a while has passed: the test then proves nothing, but
	// does not fail).
	go func() {
		time.Sleep(200 * time.Millisecond)
		close(body.open)
	}()
	if b, err := io.ReadAll(res.Body); err != nil || string(b) != "ok" {
		t.Fatalf("%q %v", b, err)
	}
	if _, got, err := h1Do(t, c, "GET", o.url().String()+"/next", nil); err != nil || got != "ok" {
		t.Fatalf("next request: %q %v", got, err)
	}
	if n := len(o.conns); n != 1 {
		t.Fatalf("%d upstream connections, want 1: the first was dropped although the exchange ended cleanly", n)
	}
}

// flushCounter is a ResponseWriter that counts its flushes.
type flushCounter struct {
	httptest.ResponseRecorder
	flushes atomic.Int32
}

func (f *flushCounter) Flush() { f.flushes.Add(1) }

// failingWaiter is a body whose wait for data fails at once (the request's
// context ended and its deadline is set on the connection).
type failingWaiter struct{}

func (failingWaiter) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }
func (failingWaiter) waitData() error          { return os.ErrDeadlineExceeded }

// A copy that ends before the body's first bytes leaves no flush of the
// headers behind: the handler has returned, and the ResponseWriter is no
// longer its to use.
func TestCopyBodyLeavesNoFlushBehind(t *testing.T) {
	w := &flushCounter{ResponseRecorder: *httptest.NewRecorder()}
	if err := copyBody(w, failingWaiter{}, -1); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("copyBody: %v; want the wait's error", err)
	}
	time.Sleep(20 * headerFlushDelay)
	if n := w.flushes.Load(); n != 0 {
		t.Fatalf("%d flushes of the ResponseWriter after copyBody returned, want 0", n)
	}
}

// A response that arrives in one segment goes on as one piece: the body
// bytes that the connection's 512-byte line reader holds after the head
// and the rest, read next without waiting, are one write to the stream,
// not a piece flushed on its own (a frame, a TLS record and a write each)
// and then the rest. In a chunked body too, but for its last piece, which
// goes before the body's end is read (the end, held, is framing only).
func TestSmallResponseIsOnePiece(t *testing.T) {
	body := strings.Repeat("b", 1024)
	head := "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Pad: " + strings.Repeat("p", 200) + "\r\n"
	o := newRawOrigin(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		if req.URL.Path == "/chunked" {
			return answer(c, head+"Transfer-Encoding: chunked\r\n\r\n400\r\n"+body+"\r\n0\r\n\r\n")
		}
		return answer(c, head+"Content-Length: 1024\r\n\r\n"+body)
	})
	c := newTestH1(t, o)
	for _, tc := range []struct {
		path    string
		flushes int32
	}{
		{"/", 0},
		{"/chunked", 1},
	} {
		res := h1Get(t, c, o, tc.path)
		w := &flushCounter{ResponseRecorder: *httptest.NewRecorder()}
		if err := copyBody(w, res.Body, res.ContentLength); err != nil {
			t.Fatalf("%s: copyBody: %v", tc.path, err)
		}
		if got := w.Body.String(); got != body {
			t.Fatalf("%s: %d body bytes, want %d", tc.path, len(got), len(body))
		}
		if n := w.flushes.Load(); n != tc.flushes {
			t.Fatalf("%s: %d flushes while copying a body that arrived whole, want %d", tc.path, n, tc.flushes)
		}
	}
}

// An event stream's events go on at once: the CRLF that ends each chunk,
// held after its data, is not taken for more data to wait for.
func TestEventChunksAreNotHeld(t *testing.T) {
	release := make(chan struct{})
	// An event large enough that the chunked reader reads its end past the
	// 512-byte line reader, straight from the connection's buffer: the
	// CRLF after it stays held there (the chunked reader takes a CRLF only
	// from the line reader), 2 bytes that are framing, not data.
	event := "data: " + strings.Repeat("e", 1500) + "\n\n"
	o := newRawOrigin(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		if !answer(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"+strconv.FormatInt(int64(len(event)), 16)+"\r\n"+event+"\r\n") {
			return false
		}
		<-release
		return answer(c, "0\r\n\r\n")
	})
	res := h1Get(t, newTestH1(t, o), o, "/events")
	w := &flushCounter{ResponseRecorder: *httptest.NewRecorder()}
	done := make(chan error, 1)
	// A piece held to go with more would wait a minute here, not 1 ms:
	// the event must go out on its own, at once.
	go func() { done <- copyBodyWait(w, res.Body, res.ContentLength, time.Minute) }()
	deadline := time.Now().Add(5 * time.Second)
	for w.flushes.Load() == 0 {
		if time.Now().After(deadline) {
			close(release)
			t.Fatal("the event was not flushed while the stream stayed open")
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// flushSizes records how much of the body was written at each flush.
type flushSizes struct {
	httptest.ResponseRecorder
	mu    sync.Mutex
	sizes []int
}

func (f *flushSizes) Flush() {
	f.mu.Lock()
	f.sizes = append(f.sizes, f.Body.Len())
	f.mu.Unlock()
}

func (f *flushSizes) flushedAll() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sizes) > 0 && f.sizes[len(f.sizes)-1] == f.Body.Len()
}

// A piece held back because more than a chunk's framing was buffered
// after it (here a chunk size line with an extension, not yet ended) is
// still sent when the body then fails: the stream is reset after it, but
// what the upstream did send (an event, say) reaches the client first, as
// it did when every piece of a chunked body was flushed at once.
func TestHeldPieceGoesBeforeFailure(t *testing.T) {
	o := newRawOrigin(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		answer(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"+
			"b\r\ndata: one\n\n\r\n"+"400;name="+strings.Repeat("x", 40))
		return false // the upstream dies before the size line's end
	})
	res := h1Get(t, newTestH1(t, o), o, "/events")
	w := &flushSizes{ResponseRecorder: *httptest.NewRecorder()}
	if err := copyBody(w, res.Body, res.ContentLength); err == nil {
		t.Fatal("copyBody: no error from a body cut short")
	}
	if got := w.Body.String(); got != "data: one\n\n" {
		t.Fatalf("body %q", got)
	}
	if !w.flushedAll() {
		t.Fatalf("the event was written but not flushed before the body failed (flushes at %v of %d bytes)", w.sizes, w.Body.Len())
	}
}

// A piece held back for framing that then waits (a chunk size line with
// an extension, cut by the segment's end) goes on the header timer, while
// the upstream still holds the rest; and the timer's flushes never meet
// the copy's writes (the race detector sees flushSizes read the body that
// the copy writes), over many pieces that wait about as long as the timer.
func TestHeldFramingPiecesGoOnTimer(t *testing.T) {
	const pieces = 200
	ext := "400;name=" + strings.Repeat("x", 40)
	chunk := strings.Repeat("d", 0x400)
	step := make(chan struct{})
	o := newRawOrigin(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		if !answer(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\ndata: one\n\n\r\n"+ext) {
			return false
		}
		<-step // the first piece must go while this waits
		for i := 0; i < pieces; i++ {
			time.Sleep(time.Duration(i%3) * headerFlushDelay / 2)
			if !answer(c, "\r\n"+chunk+"\r\n"+ext) {
				return false
			}
		}
		return answer(c, "\r\n"+chunk+"\r\n0\r\n\r\n")
	})
	res := h1Get(t, newTestH1(t, o), o, "/")
	w := &flushSizes{ResponseRecorder: *httptest.NewRecorder()}
	done := make(chan error, 1)
	go func() { done <- copyBody(w, res.Body, res.ContentLength) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		w.mu.Lock()
		ok := len(w.sizes) > 0 && w.sizes[len(w.sizes)-1] == len("data: one\n\n")
		w.mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			close(step)
			t.Fatal("the piece held for framing was not flushed while the upstream waited")
		}
		time.Sleep(time.Millisecond)
	}
	close(step)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if want := len("data: one\n\n") + (pieces+1)*len(chunk); w.Body.Len() != want {
		t.Fatalf("%d body bytes, want %d", w.Body.Len(), want)
	}
}
