package agent

// The proxy loop of proxy.go against what httputil.ReverseProxy (Rewrite
// mode, as the agent used it before) did: one test per rule, through both
// fronts where the rule can show through SPDY.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// forEachFrontTo runs f against each front, with upstream as the --to upstream.
func forEachFrontTo(t *testing.T, upstream http.Handler, f func(t *testing.T, fr front)) {
	t.Helper()
	srv := httptest.NewServer(upstream)
	t.Cleanup(srv.Close)
	to, _ := url.Parse(srv.URL)
	for _, fe := range fronts {
		t.Run(fe.name, func(t *testing.T) { f(t, fe.fn(t, to, "")) })
	}
}

func TestProxyHopByHopHeaders(t *testing.T) {
	forEachFrontTo(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var got []string
		for _, k := range []string{"Connection", "Keep-Alive", "Proxy-Authorization", "Upgrade", "X-Hop", "X-End", "Te"} {
			got = append(got, fmt.Sprintf("%s=%q", k, r.Header.Values(k)))
		}
		w.Header().Set("Connection", "X-Resp-Hop")
		w.Header().Set("X-Resp-Hop", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Proxy-Authenticate", "Basic")
		w.Header().Set("X-Resp-End", "kept")
		io.WriteString(w, strings.Join(got, " "))
	}), func(t *testing.T, fr front) {
		req, _ := http.NewRequest("GET", fr.base+"/", nil)
		req.Header.Set("Connection", "X-Hop")
		req.Header.Set("X-Hop", "1")
		req.Header.Set("Keep-Alive", "timeout=5")
		req.Header.Set("Proxy-Authorization", "Basic Zm9vOmJhcg==")
		req.Header.Set("X-End", "kept")
		req.Header.Set("Te", "trailers")
		resp, err := fr.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		want := `Connection=[] Keep-Alive=[] Proxy-Authorization=[] Upgrade=[] X-Hop=[] X-End=["kept"] Te=["trailers"]`
		if string(b) != want {
			t.Errorf("upstream saw %s\nwant          %s", b, want)
		}
		for _, k := range []string{"X-Resp-Hop", "Keep-Alive", "Proxy-Authenticate"} {
			if v := resp.Header.Values(k); len(v) > 0 {
				t.Errorf("response header %s: %q reached the client", k, v)
			}
		}
		if resp.Header.Get("X-Resp-End") != "kept" {
			t.Errorf("end-to-end response header lost: %v", resp.Header)
		}
	})
}

// The Host and the forwarding headers Caddy set describe the client's request:
// they pass unchanged (even when a Connection header names one), and no
// User-Agent is made up for a client that sent none.
func TestProxyForwardedHostUserAgent(t *testing.T) {
	forEachFrontTo(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ua, hasUA := r.Header["User-Agent"]
		fmt.Fprintf(w, "host=%s xff=%q xfh=%q xfp=%q fwd=%q ua=%v%q",
			r.Host, r.Header.Values("X-Forwarded-For"), r.Header.Values("X-Forwarded-Host"),
			r.Header.Values("X-Forwarded-Proto"), r.Header.Values("Forwarded"), hasUA, ua)
	}), func(t *testing.T, fr front) {
		for _, ua := range []string{"", "curl/8.0"} {
			req, _ := http.NewRequest("GET", fr.base+"/", nil)
			req.Host = "public.example.com"
			if strings.Contains(t.Name(), "/http") {
				// The agent keeps them even when named; a SPDY client
				// (the spdy front) would not send them at all.
				req.Header.Set("Connection", "X-Forwarded-For")
			}
			req.Header["X-Forwarded-For"] = []string{"203.0.113.7", "198.51.100.1"}
			req.Header.Set("X-Forwarded-Host", "public.example.com")
			req.Header.Set("X-Forwarded-Proto", "https")
			req.Header.Set("Forwarded", "for=203.0.113.7;proto=https")
			req.Header.Set("User-Agent", ua) // "" makes net/http send none
			resp, err := fr.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			wantUA := `false[]`
			if ua != "" {
				wantUA = fmt.Sprintf("true[%q]", ua)
			}
			want := `host=public.example.com xff=["203.0.113.7" "198.51.100.1"] xfh=["public.example.com"] ` +
				`xfp=["https"] fwd=["for=203.0.113.7;proto=https"] ua=` + wantUA
			if string(b) != want {
				t.Errorf("upstream saw %s\nwant          %s", b, want)
			}
		}
	})
}

// Trailers the upstream did not announce in its headers still reach the
// client (request trailers and announced ones: TestUpstreamTrailers).
func TestProxyUnannouncedTrailers(t *testing.T) {
	forEachFrontTo(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Announced")
		io.WriteString(w, "body")
		w.(http.Flusher).Flush()
		w.Header().Set("X-Announced", "a")
		w.Header().Set(http.TrailerPrefix+"X-Late", "b")
	}), func(t *testing.T, fr front) {
		resp, err := fr.client.Get(fr.base + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || string(b) != "body" {
			t.Fatalf("body %q, %v", b, err)
		}
		if resp.Trailer.Get("X-Announced") != "a" || resp.Trailer.Get("X-Late") != "b" {
			t.Fatalf("trailers %v, want X-Announced: a and X-Late: b", resp.Trailer)
		}
	})
}

// A 103 Early Hints reaches a client that can take it (HTTP/1.1; SPDY/3 has
// no informational responses, so the spdy layer drops it) before the 200.
func TestProxyEarlyHints(t *testing.T) {
	forEachFrontTo(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload; as=style")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.Header().Set("X-Final", "yes")
		io.WriteString(w, "page")
	}), func(t *testing.T, fr front) {
		var hints []string
		trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, hdr textproto.MIMEHeader) error {
			hints = append(hints, fmt.Sprintf("%d %s", code, hdr.Get("Link")))
			return nil
		}}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", fr.base+"/", nil)
		resp, err := fr.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != "page" || resp.Header.Get("X-Final") != "yes" || resp.Header.Get("Link") != "" {
			t.Fatalf("final response %d %q %v", resp.StatusCode, b, resp.Header)
		}
		if strings.HasSuffix(t.Name(), "/http") {
			if want := "103 </style.css>; rel=preload; as=style"; len(hints) != 1 || hints[0] != want {
				t.Fatalf("informational responses %q, want [%q]", hints, want)
			}
		}
	})
}

// Each piece a streaming upstream flushes reaches the client before the
// upstream sends the next, with and without a Content-Length.
func TestProxyFlushesStreamingResponses(t *testing.T) {
	next := make(chan struct{})
	forEachFrontTo(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("length") {
			w.Header().Set("Content-Length", "30")
		} else {
			w.Header().Set("Content-Type", "text/event-stream")
		}
		io.WriteString(w, "data: event 0\n\n") // 15 bytes
		w.(http.Flusher).Flush()
		select {
		case <-next:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "data: event 1\n\n")
	}), func(t *testing.T, fr front) {
		for _, q := range []string{"", "?length"} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			req, _ := http.NewRequestWithContext(ctx, "GET", fr.base+"/"+q, nil)
			resp, err := fr.client.Do(req)
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			buf := make([]byte, 15)
			if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "data: event 0\n\n" {
				t.Fatalf("%s: first event %q, %v (held back until the next?)", q, buf, err)
			}
			next <- struct{}{}
			rest, err := io.ReadAll(resp.Body)
			if err != nil || string(rest) != "data: event 1\n\n" {
				t.Fatalf("%s: rest %q, %v", q, rest, err)
			}
			resp.Body.Close()
			cancel()
		}
	})
}

// A body of known length that ends early is an error for the client, not a
// short body (the chunked case: TestUpstreamDiesMidBody).
func TestProxyShortBodyResets(t *testing.T) {
	forEachFrontTo(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
		io.WriteString(conn, strings.Repeat("x", 70000))
		time.Sleep(20 * time.Millisecond)
		conn.Close()
	}), func(t *testing.T, fr front) {
		resp, err := fr.client.Get(fr.base + "/")
		if err != nil {
			return // failing before the headers is acceptable too
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			t.Fatalf("cut upstream body ended cleanly after %d bytes", len(b))
		}
	})
}

// A client that gives up cancels the upstream request.
func TestProxyClientCancelReachesUpstream(t *testing.T) {
	started, cancelled := make(chan struct{}, 1), make(chan struct{}, 1)
	forEachFrontTo(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			cancelled <- struct{}{}
		case <-time.After(10 * time.Second):
		}
	}), func(t *testing.T, fr front) {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", fr.base+"/", nil)
			resp, err := fr.client.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			errc <- err
		}()
		<-started
		cancel()
		if err := <-errc; err == nil {
			t.Fatal("request succeeded after its cancel")
		}
		select {
		case <-cancelled:
		case <-time.After(5 * time.Second):
			t.Fatal("the upstream request was not cancelled")
		}
	})
}

// A 101 to a request that did not ask to switch protocols is an upstream error.
func TestProxySwitchWithoutUpgrade(t *testing.T) {
	forEachFrontTo(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x-surprise\r\n\r\n")
		time.Sleep(100 * time.Millisecond)
	}), func(t *testing.T, fr front) {
		resp, err := fr.client.Get(fr.base + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), "101") {
			t.Fatalf("%d %q, want 502 about the 101", resp.StatusCode, b)
		}
	})
}

// An upstream that cannot be dialled: 502, and the cause in the log.
func TestProxyDialErrorLogged(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead, _ := url.Parse("http://" + l.Addr().String())
	l.Close()
	core, logs := observer.New(zapcore.DebugLevel)
	h, err := newUpstreamHandler(dead, nil, testTuning(nil), zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	h.countError = func(reason string) { reasons = append(reasons, reason) }
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "http://site.example.com/page", nil))
	if rec.Code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", rec.Code)
	}
	entries := logs.FilterMessage("upstream request failed").All()
	if len(entries) != 1 {
		t.Fatalf("%d 'upstream request failed' log entries, want 1: %v", len(entries), logs.All())
	}
	cause, _ := entries[0].ContextMap()["error"].(string)
	if !strings.Contains(cause, "connection refused") {
		t.Errorf("logged cause %q does not say why", cause)
	}
	if len(reasons) != 1 || reasons[0] != upstreamDial {
		t.Errorf("counted failures %q, want [%q]", reasons, upstreamDial)
	}
}

// The target's path and query come before the request's, for ordinary and
// upgrade requests alike; a query with a semicolon is re-encoded.
func TestProxyTargetPathAndQuery(t *testing.T) {
	target, _ := url.Parse("http://127.0.0.1:1/base/?k=v")
	h, err := newUpstreamHandler(target, nil, testTuning(nil), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ uri, want string }{
		{"/a/b?x=1", "http://127.0.0.1:1/base/a/b?k=v&x=1"},
		{"/a%2Fb", "http://127.0.0.1:1/base/a%2Fb?k=v"},
		{"/?x=1;y=2&z=3", "http://127.0.0.1:1/base/?k=v&z=3"},
	} {
		r := httptest.NewRequest("GET", "http://site.example.com"+tc.uri, nil)
		out := h.outRequest(r.Context(), r)
		if got := out.URL.String(); got != tc.want || out.Host != "site.example.com" || out.RequestURI != "" {
			t.Errorf("%s: %s (Host %q, RequestURI %q), want %s", tc.uri, got, out.Host, out.RequestURI, tc.want)
		}
		if tc.uri == "/a/b?x=1" {
			if got := h.upgradeRequest(r, "websocket").URL.String(); got != tc.want {
				t.Errorf("upgrade %s: %s, want %s", tc.uri, got, tc.want)
			}
		}
	}
}

// An HTTP/2 upstream may flush the last bytes of a body of known length
// and end its stream only later: those bytes reach the client at once, not
// when the stream ends (HTTP/1.1 upstreams give EOF with them).
func TestProxyFlushesLastPieceFromH2Upstream(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "30")
		io.WriteString(w, "data: event 0\n\n")
		w.(http.Flusher).Flush()
		time.Sleep(20 * time.Millisecond)
		io.WriteString(w, "data: event 1\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p
	srv.Start()
	t.Cleanup(srv.Close)
	defer close(release)
	to, _ := url.Parse(strings.Replace(srv.URL, "http://", "h2c://", 1))
	for _, fe := range fronts {
		t.Run(fe.name, func(t *testing.T) {
			fr := fe.fn(t, to, "")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", fr.base+"/", nil)
			resp, err := fr.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got := make(chan string, 1)
			go func() {
				b := make([]byte, 30)
				n, _ := io.ReadFull(resp.Body, b)
				got <- string(b[:n])
			}()
			select {
			case b := <-got:
				resp.Body.Close()
				if b != "data: event 0\n\ndata: event 1\n\n" {
					t.Fatalf("%q", b)
				}
			case <-time.After(2 * time.Second):
				cancel()
				<-got
				resp.Body.Close()
				t.Fatal("the last flushed piece of a known-length body was held back")
			}
		})
	}
}
