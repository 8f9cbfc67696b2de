package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// upstreamMux is the --to upstream used by the tests.
func upstreamMux(t *testing.T) *url.URL {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/echo-duplex", func(w http.ResponseWriter, r *http.Request) {
		// Echo each chunk as it arrives: proves neither direction is buffered whole.
		rc := http.NewResponseController(w)
		if err := rc.EnableFullDuplex(); err != nil {
			t.Errorf("EnableFullDuplex: %v", err)
		}
		w.WriteHeader(200)
		_ = rc.Flush()
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				_ = rc.Flush()
			}
			if err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/sha256", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
	})
	mux.HandleFunc("/trailers", func(w http.ResponseWriter, r *http.Request) {
		// Echoes the request's X-Client trailer as the response trailer X-Echo.
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("Trailer", "X-Echo")
		fmt.Fprintf(w, "%d bytes", n)
		w.Header().Set("X-Echo", r.Trailer.Get("X-Client"))
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		// Deterministic pseudo-random content: sha256 counter stream.
		var n int
		fmt.Sscan(r.URL.Query().Get("n"), &n)
		w.Header().Set("Content-Length", fmt.Sprint(n))
		_, _ = io.Copy(w, io.LimitReader(&counterStream{}, int64(n)))
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream", "yes")
		fmt.Fprintf(w, "host=%s xff=%s xfp=%s custom=%s path=%s query=%s",
			r.Host, r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"),
			r.Header.Get("X-Custom"), r.URL.Path, r.URL.RawQuery)
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(16 << 20)
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if string(msg) == "close-please" {
				_ = c.Close(websocket.StatusNormalClosure, "server says bye")
				return
			}
			if err := c.Write(r.Context(), typ, msg); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/raw-upgrade", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "x-echo" || r.Header.Get("X-Custom") != "kept" {
			http.Error(w, "bad upgrade request: "+r.Header.Get("Upgrade"), 400)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		// The 101 and the first payload bytes in one write.
		_, _ = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x-echo\r\nX-Raw: 1\r\n\r\nhello-early\n")
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			if line == "quit\n" {
				_, _ = io.WriteString(conn, "bye\n")
				return // server-initiated close
			}
			_, _ = io.WriteString(conn, "echo:"+line)
		}
	})
	mux.HandleFunc("/truncated", func(w http.ResponseWriter, r *http.Request) {
		// A chunked response whose connection dies midway.
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
		time.Sleep(50 * time.Millisecond)
		conn.Close()
	})
	mux.HandleFunc("/raw-halfclose", func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x-count\r\n\r\n")
		n, _ := io.Copy(io.Discard, brw) // until the client half-closes
		fmt.Fprintf(conn, "got:%d", n)
	})
	mux.HandleFunc("/refuse-upgrade", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Why", "policy")
		http.Error(w, "upgrade refused by upstream", http.StatusForbidden)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return u
}

// counterStream is a deterministic byte stream (ChaCha8 with a fixed seed).
type counterStream struct{ c *mrand.ChaCha8 }

func (c *counterStream) Read(p []byte) (int, error) {
	if c.c == nil {
		c.c = mrand.NewChaCha8([32]byte{'s', 'p', 'd', 'y'})
	}
	return c.c.Read(p)
}

func forEachFront(t *testing.T, f func(t *testing.T, fr front, to *url.URL)) {
	for _, fe := range fronts {
		t.Run(fe.name, func(t *testing.T) {
			to := upstreamMux(t)
			f(t, fe.fn(t, to, ""), to)
		})
	}
}

func TestUpstreamStreamsBothWays(t *testing.T) {
	forEachFront(t, func(t *testing.T, fr front, _ *url.URL) {
		pr, pw := io.Pipe()
		defer pw.Close()
		req, _ := http.NewRequest("POST", fr.base+"/echo-duplex", pr)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := fr.client.Do(req.WithContext(ctx))
		if err != nil {
			t.Fatalf("duplex request: %v", err)
		}
		defer resp.Body.Close()
		// Each chunk must come back before the next is sent.
		buf := make([]byte, 64)
		for i := 0; i < 20; i++ {
			msg := fmt.Sprintf("chunk-%02d;", i)
			if _, err := io.WriteString(pw, msg); err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
			if _, err := io.ReadFull(resp.Body, buf[:len(msg)]); err != nil {
				t.Fatalf("read %d: %v", i, err)
			}
			if string(buf[:len(msg)]) != msg {
				t.Fatalf("echo %d = %q, want %q", i, buf[:len(msg)], msg)
			}
		}
		pw.Close()
		if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
			t.Fatalf("after close: %q, %v", rest, err)
		}
	})
}

func TestUpstreamLargeBodies(t *testing.T) {
	forEachFront(t, func(t *testing.T, fr front, _ *url.URL) {
		const size = 8 << 20
		data := make([]byte, size)
		_, _ = rand.Read(data)
		sum := sha256.Sum256(data)
		// Upload without Content-Length (streamed), checksummed by the upstream.
		resp, err := fr.client.Post(fr.base+"/sha256", "application/octet-stream", io.MultiReader(bytes.NewReader(data)))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("%d %s", size, hex.EncodeToString(sum[:])); err != nil || string(got) != want {
			t.Fatalf("upload: %q, %v; want %q", got, err, want)
		}
		// Download, compared with the same generator.
		resp, err = fr.client.Get(fmt.Sprintf("%s/bytes?n=%d", fr.base, size))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h1, h2 := sha256.New(), sha256.New()
		n, err := io.Copy(h1, resp.Body)
		if err != nil || n != size {
			t.Fatalf("download: %d bytes, %v", n, err)
		}
		_, _ = io.Copy(h2, io.LimitReader(&counterStream{}, size))
		if !bytes.Equal(h1.Sum(nil), h2.Sum(nil)) {
			t.Fatal("download content differs")
		}
		if resp.ContentLength != size {
			t.Errorf("ContentLength = %d", resp.ContentLength)
		}
	})
}

// TestUpstreamTrailers: a request's trailer reaches the upstream, and the
// upstream's trailer comes back.
func TestUpstreamTrailers(t *testing.T) {
	forEachFront(t, func(t *testing.T, fr front, _ *url.URL) {
		req, _ := http.NewRequest("POST", fr.base+"/trailers", nil)
		req.Trailer = http.Header{"X-Client": nil}
		req.Body = io.NopCloser(io.MultiReader(strings.NewReader("body"), readerFunc(func([]byte) (int, error) {
			req.Trailer.Set("X-Client", "set at EOF")
			return 0, io.EOF
		})))
		req.ContentLength = -1
		resp, err := fr.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || string(b) != "4 bytes" {
			t.Fatalf("body %q, %v", b, err)
		}
		if got := resp.Trailer.Get("X-Echo"); got != "set at EOF" {
			t.Fatalf("the upstream saw the request trailer as %q (response trailers %v)", got, resp.Trailer)
		}
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func TestUpstreamHeadersPassThrough(t *testing.T) {
	forEachFront(t, func(t *testing.T, fr front, _ *url.URL) {
		req, _ := http.NewRequest("GET", fr.base+"/headers?a=1&b=2", nil)
		req.Host = "public.example.com"
		req.Header.Set("X-Forwarded-For", "203.0.113.7")
		req.Header.Set("X-Forwarded-Proto", "https")
		req.Header.Set("X-Custom", "v1")
		resp, err := fr.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		want := "host=public.example.com xff=203.0.113.7 xfp=https custom=v1 path=/headers query=a=1&b=2"
		if string(b) != want || resp.Header.Get("X-Upstream") != "yes" {
			t.Fatalf("got %q (X-Upstream %q), want %q", b, resp.Header.Get("X-Upstream"), want)
		}
	})
}

func TestUpstreamDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead, _ := url.Parse("http://" + l.Addr().String())
	l.Close() // nothing listens here any more
	for _, fe := range fronts {
		t.Run(fe.name, func(t *testing.T) {
			fr := fe.fn(t, dead, "")
			for _, hdr := range []map[string]string{nil, {"Connection": "Upgrade", "Upgrade": "websocket"}} {
				req, _ := http.NewRequest("GET", fr.base+"/anything", nil)
				for k, v := range hdr {
					req.Header.Set(k, v)
				}
				resp, err := fr.client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), "unreachable") ||
					!strings.Contains(string(b), dead.Host) {
					t.Fatalf("upgrade=%v: %d %q, want 502 naming the upstream", hdr != nil, resp.StatusCode, b)
				}
			}
		})
	}
}

// An upstream that dies mid-body must give the client an error, never a clean EOF.
func TestUpstreamDiesMidBody(t *testing.T) {
	forEachFront(t, func(t *testing.T, fr front, _ *url.URL) {
		resp, err := fr.client.Get(fr.base + "/truncated")
		if err != nil {
			return // failing before the headers is acceptable too
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			t.Fatalf("truncated upstream body ended cleanly: %q", b)
		}
	})
}

func TestUpgradeWebSocket(t *testing.T) {
	forEachFront(t, func(t *testing.T, fr front, _ *url.URL) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, resp, err := websocket.Dial(ctx, fr.base+"/ws", &websocket.DialOptions{HTTPClient: fr.client})
		if err != nil {
			t.Fatalf("dial: %v (resp %v)", err, resp)
		}
		defer c.CloseNow()
		c.SetReadLimit(16 << 20)
		big := make([]byte, 3<<20)
		_, _ = rand.Read(big)
		for _, m := range []struct {
			typ websocket.MessageType
			msg []byte
		}{{websocket.MessageText, []byte("hello")}, {websocket.MessageBinary, big}, {websocket.MessageText, []byte("again")}} {
			if err := c.Write(ctx, m.typ, m.msg); err != nil {
				t.Fatalf("write: %v", err)
			}
			typ, got, err := c.Read(ctx)
			if err != nil || typ != m.typ || !bytes.Equal(got, m.msg) {
				t.Fatalf("echo: type %v len %d err %v", typ, len(got), err)
			}
		}
		// Server-initiated close reaches the client as a close frame.
		if err := c.Write(ctx, websocket.MessageText, []byte("close-please")); err != nil {
			t.Fatal(err)
		}
		_, _, err = c.Read(ctx)
		if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
			t.Fatalf("after server close: %v", err)
		}
	})
}

func TestUpgradeRawPipe(t *testing.T) {
	forEachFront(t, func(t *testing.T, fr front, _ *url.URL) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", fr.base+"/raw-upgrade", nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "x-echo")
		req.Header.Set("X-Custom", "kept")
		resp, err := fr.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("status %d %q", resp.StatusCode, b)
		}
		if resp.Header.Get("X-Raw") != "1" {
			t.Errorf("101 headers not passed: %v", resp.Header)
		}
		rwc, ok := resp.Body.(io.ReadWriteCloser)
		if !ok {
			t.Fatalf("101 body %T is not an io.ReadWriteCloser", resp.Body)
		}
		defer rwc.Close()
		br := bufio.NewReader(rwc)
		expect := func(want string) {
			t.Helper()
			line, err := br.ReadString('\n')
			if err != nil || line != want {
				t.Fatalf("read %q, %v; want %q", line, err, want)
			}
		}
		expect("hello-early\n") // bytes the upstream sent together with its 101
		for _, m := range []string{"one\n", "two\n"} {
			if _, err := io.WriteString(rwc, m); err != nil {
				t.Fatal(err)
			}
			expect("echo:" + m)
		}
		_, _ = io.WriteString(rwc, "quit\n")
		expect("bye\n")
		// The upstream closed: the client sees a clean end.
		if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
			t.Fatalf("after upstream close: %q, %v", rest, err)
		}
	})
}

// The client half-closes its side of an upgraded stream; the upstream sees EOF, still
// answers, and the client reads that answer and then a clean EOF.
func TestUpgradeHalfClose(t *testing.T) {
	forEachFront(t, func(t *testing.T, fr front, _ *url.URL) {
		req, _ := http.NewRequest("GET", fr.base+"/raw-halfclose", nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "x-count")
		resp, err := fr.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("status %d", resp.StatusCode)
		}
		cw, ok := resp.Body.(interface {
			io.ReadWriter
			CloseWrite() error
		})
		if !ok {
			t.Skipf("this front's 101 body (%T) cannot half-close", resp.Body)
		}
		payload := strings.Repeat("x", 200<<10)
		if _, err := io.WriteString(cw, payload); err != nil {
			t.Fatal(err)
		}
		if err := cw.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(cw)
		if err != nil || string(b) != fmt.Sprintf("got:%d", len(payload)) {
			t.Fatalf("after half-close: %q, %v", b, err)
		}
	})
}

func TestUpgradeRefusedByUpstream(t *testing.T) {
	forEachFront(t, func(t *testing.T, fr front, _ *url.URL) {
		req, _ := http.NewRequest("GET", fr.base+"/refuse-upgrade", nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		resp, err := fr.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(b), "refused by upstream") || resp.Header.Get("X-Why") != "policy" {
			t.Fatalf("got %d %q %v", resp.StatusCode, b, resp.Header)
		}
	})
}

func TestRootThroughFronts(t *testing.T) {
	for _, fe := range fronts {
		t.Run(fe.name, func(t *testing.T) {
			fr := fe.fn(t, nil, makeRoot(t))
			fileCases(t, fr.client, fr.base)
		})
	}
}

// hijackRecorder is a ResponseRecorder that serveUpgrade accepts (it asks
// for http.Hijacker before it dials); the tests using it never reach a 101.
type hijackRecorder struct {
	*httptest.ResponseRecorder
	wrote chan struct{} // closed at the first body write
}

func (r *hijackRecorder) Write(p []byte) (int, error) {
	select {
	case <-r.wrote:
	default:
		close(r.wrote)
	}
	return r.ResponseRecorder.Write(p)
}

func (r *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, http.ErrNotSupported
}

// upgradeAt is a handler for the upstream listening on l, whose header
// timeout is not what ends a test, a WebSocket upgrade request for it and
// a recorder to serve it into.
func upgradeAt(t *testing.T, l net.Listener) (*upstreamHandler, *http.Request, *hijackRecorder) {
	t.Helper()
	to, _ := url.Parse("http://" + l.Addr().String())
	tun := testTuning(nil)
	tun.upgradeHeaderTimeout = time.Minute
	h, err := newUpstreamHandler(to, nil, tun, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("GET", "http://site.example.com/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	return h, req, &hijackRecorder{ResponseRecorder: httptest.NewRecorder(), wrote: make(chan struct{})}
}

// An upstream that refuses an upgrade with a body it then never finishes
// holds the stream only while the client is there: once the client leaves,
// the handler returns and the upstream connection is closed.
func TestUpgradeRefusalBodyEndsWithClient(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	upClosed := make(chan struct{})
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 1000\r\n\r\npartial")
		_, _ = io.Copy(io.Discard, c) // until the agent closes its side
		close(upClosed)
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h, req, w := upgradeAt(t, l)
	req = req.WithContext(ctx)
	done := make(chan any, 1)
	go func() {
		defer func() { done <- recover() }()
		h.ServeHTTP(w, req)
	}()
	select {
	case <-w.wrote:
	case <-time.After(5 * time.Second):
		t.Fatal("the refusal's first bytes were not relayed")
	}
	cancel() // the client leaves
	select {
	case v := <-done:
		if v != http.ErrAbortHandler {
			t.Fatalf("handler ended with %v, want the cut body to panic with http.ErrAbortHandler", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler still relays the refusal's body after the client left")
	}
	select {
	case <-upClosed:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream connection is still open after the client left")
	}
}

// An upstream that answers an upgrade request with endless headers is cut
// off after a bounded amount (maxUpstreamHeaderBytes) with a 502, not read
// into memory until the header timeout.
func TestUpgradeResponseHeadersBounded(t *testing.T) {
	const offered = 64 << 20
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	written := make(chan int, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			written <- -1
			return
		}
		defer c.Close()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			written <- -1
			return
		}
		n, _ := io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n")
		line := "X-Filler: " + strings.Repeat("a", 1000) + "\r\n"
		chunk := []byte(strings.Repeat(line, 64))
		for n < offered {
			m, err := c.Write(chunk)
			n += m
			if err != nil {
				break
			}
		}
		written <- n
	}()
	h, req, w := upgradeAt(t, l)
	h.ServeHTTP(w, req)
	if w.Code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", w.Code)
	}
	// What the upstream got through: the bound, and what the sockets buffer.
	if n := <-written; n < 0 || n >= offered/4 {
		t.Fatalf("the upstream wrote %d bytes of headers before it was cut off, want well under %d", n, offered/4)
	}
}
