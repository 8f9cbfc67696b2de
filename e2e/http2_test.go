package e2e

// Plain HTTP/2 upstreams behind the agent: cleartext HTTP/2 (--to h2c://)
// and https negotiating h2 in ALPN, with trailers both ways and a big
// checksummed download, to HTTP/2 and HTTP/1.1 clients of Caddy.

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spdy-origin/spdy-origin/agent"
)

// bigDownload is the size of the checksummed h2c download: 256 MiB, or
// 64 MiB under the race detector unless SPDY_ORIGIN_TEST_FULL_SIZE=1.
var bigDownload int64 = func() int64 {
	if raceEnabled && os.Getenv("SPDY_ORIGIN_TEST_FULL_SIZE") != "1" {
		return 64 << 20
	}
	return 256 << 20
}()

// h2Upstream is the handler of the plain HTTP/2 upstreams. It refuses
// anything but HTTP/2, so a test passes only if the agent spoke h2 to it.
//
//   - GET /big?size=N: N bytes from a fixed ChaCha8 seed; trailers
//     X-Sha256 (declared) and X-Length (http.TrailerPrefix, undeclared).
//   - POST /trailers: reads the body and its trailers; answers the body's
//     sha256, with the trailers X-Echo (the request's X-Client-Trailer)
//     and X-Body-Sha256.
func h2Upstream(t *testing.T) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /big", func(w http.ResponseWriter, r *http.Request) {
		size, err := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Trailer", "X-Sha256")
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("X-Upstream-Proto", r.Proto)
		src := rand.NewChaCha8([32]byte{'e', '2', 'e'})
		h := sha256.New()
		buf := make([]byte, 64<<10)
		for left := size; left > 0; {
			n := int64(len(buf))
			if left < n {
				n = left
			}
			_, _ = src.Read(buf[:n])
			h.Write(buf[:n])
			if _, err := w.Write(buf[:n]); err != nil {
				return
			}
			left -= n
		}
		w.Header().Set("X-Sha256", hex.EncodeToString(h.Sum(nil)))
		w.Header().Set(http.TrailerPrefix+"X-Length", strconv.FormatInt(size, 10))
	})
	mux.HandleFunc("POST /trailers", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		if _, err := io.Copy(h, r.Body); err != nil {
			t.Errorf("upstream reading the request body: %v", err)
			return
		}
		sum := hex.EncodeToString(h.Sum(nil))
		w.Header().Set("Trailer", "X-Echo, X-Body-Sha256")
		w.Header().Set("X-Upstream-Proto", r.Proto)
		_, _ = io.WriteString(w, sum)
		w.Header().Set("X-Echo", r.Trailer.Get("X-Client-Trailer"))
		w.Header().Set("X-Body-Sha256", sum)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			http.Error(w, "this upstream wants HTTP/2, got "+r.Proto, http.StatusHTTPVersionNotSupported)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// caddyClient talks to Caddy over TLS with HTTP/2 (h2) or HTTP/1.1.
func caddyClient(t *testing.T, h2 bool) *http.Client {
	t.Helper()
	tc := &tls.Config{ServerName: "localhost", RootCAs: caddyRoots(t, true)}
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: h2}
	if !h2 {
		tc.NextProtos = []string{"http/1.1"}
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func caddyURL(path string) string { return fmt.Sprintf("https://localhost:%d%s", ports().https, path) }

// TestHTTP2UpstreamH2CDownload: an upstream that speaks only cleartext
// HTTP/2 (--to h2c://) serves a 256 MiB download through the tunnel to an
// HTTP/2 client: every byte arrives (sha256), and so do its trailers, the
// declared one and an undeclared http.TrailerPrefix one.
func TestHTTP2UpstreamH2CDownload(t *testing.T) {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true) // HTTP/2 with prior knowledge only; no HTTP/1
	srv := &http.Server{Handler: h2Upstream(t), Protocols: &protos}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	to := &url.URL{Scheme: "h2c", Host: ln.Addr().String()}
	setupE2EWith(t, "h2c-big", nil, nil, func(o *agent.Options) { o.To = to })

	start := time.Now()
	resp, err := caddyClient(t, true).Get(caddyURL(fmt.Sprintf("/big?size=%d", bigDownload)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 || resp.Header.Get("X-Upstream-Proto") != "HTTP/2.0" {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		t.Fatalf("status %d over %s, upstream proto %q: %s", resp.StatusCode, resp.Proto, resp.Header.Get("X-Upstream-Proto"), b)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil || n != bigDownload {
		t.Fatalf("read %d of %d bytes: %v", n, bigDownload, err)
	}
	d := time.Since(start)
	got, want := hex.EncodeToString(h.Sum(nil)), resp.Trailer.Get("X-Sha256")
	if want == "" || got != want {
		t.Fatalf("sha256 %s, trailer X-Sha256 %q (trailers: %v)", got, want, resp.Trailer)
	}
	if l := resp.Trailer.Get("X-Length"); l != strconv.FormatInt(bigDownload, 10) {
		t.Errorf("undeclared trailer X-Length = %q, want %d", l, bigDownload)
	}
	t.Logf("h2c upstream → HTTP/2 client: %d MiB in %s (%.0f MB/s), sha256 and trailers intact",
		n>>20, d.Round(time.Millisecond), float64(n)/1e6/d.Seconds())
}

// TestHTTP2UpstreamHTTPS: the agent speaks h2 to an https upstream (ALPN)
// whose certificate it verifies with --upstream-ca-file; a request trailer
// from the client reaches the upstream and the response trailers reach the
// client, over HTTP/2 and over HTTP/1.1 (chunked) to Caddy.
func TestHTTP2UpstreamHTTPS(t *testing.T) {
	up := httptest.NewUnstartedServer(h2Upstream(t))
	up.EnableHTTP2 = true
	up.StartTLS()
	t.Cleanup(up.Close)
	caFile := filepath.Join(t.TempDir(), "upstream-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	to, _ := url.Parse(up.URL)
	setupE2EWith(t, "h2-https", nil, nil, func(o *agent.Options) {
		o.To = to
		o.UpstreamCAFile = caFile
	})

	for _, h2 := range []bool{true, false} {
		client := caddyClient(t, h2)
		body := strings.Repeat("request body through the tunnel\n", 10_000)
		// The client sets the trailer's value at the body's EOF, as one that
		// computes it from the body would; the body is chunked.
		req, _ := http.NewRequest(http.MethodPost, caddyURL("/trailers"), nil)
		req.Trailer = http.Header{"X-Client-Trailer": nil}
		req.Body = &trailerAtEOF{r: strings.NewReader(body), trailer: req.Trailer,
			key: "X-Client-Trailer", value: fmt.Sprintf("from the client (h2 %v)", h2)}
		req.ContentLength = -1
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		sum := sha256.Sum256([]byte(body))
		want := hex.EncodeToString(sum[:])
		if err != nil || resp.StatusCode != 200 || string(b) != want {
			t.Fatalf("h2 %v: status %d, %v: %.200s", h2, resp.StatusCode, err, b)
		}
		if (resp.ProtoMajor == 2) != h2 {
			t.Errorf("h2 %v: the client spoke %s to Caddy", h2, resp.Proto)
		}
		if p := resp.Header.Get("X-Upstream-Proto"); p != "HTTP/2.0" {
			t.Errorf("h2 %v: upstream saw %s, want HTTP/2.0", h2, p)
		}
		if got := resp.Trailer.Get("X-Body-Sha256"); got != want {
			t.Errorf("h2 %v: response trailer X-Body-Sha256 = %q, want %s (trailers %v)", h2, got, want, resp.Trailer)
		}
		if got, want := resp.Trailer.Get("X-Echo"), fmt.Sprintf("from the client (h2 %v)", h2); got != want {
			t.Errorf("h2 %v: the request trailer reached the upstream as %q, want %q", h2, got, want)
		}
		t.Logf("client over %s: response trailers %v", resp.Proto, resp.Trailer)
	}
}

// trailerAtEOF reads r and sets trailer[key] = value when r ends, as a
// client that computes its trailer from the body would.
type trailerAtEOF struct {
	r          io.Reader
	trailer    http.Header
	key, value string
}

func (b *trailerAtEOF) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.trailer.Set(b.key, b.value)
	}
	return n, err
}

func (b *trailerAtEOF) Close() error { return nil }
