package handshake

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spdy-origin/spdy-origin/internal/hosts"
)

// testRequest is a registration as the agent sends it.
var testRequest = Request{
	URL:      &url.URL{Scheme: "https", Host: "proxy.example:8443"},
	Token:    "tok",
	Identity: Identity{Name: "nas", Version: "v1.2.3", Instance: "0123456789abcdef", Connection: "2"},
}

// wantPUT is testRequest on the wire, byte for byte: what Amahi-compatible
// proxies and every released spdy_origin expect.
const wantPUT = "PUT /.well-known/spdy-origin HTTP/1.1\r\n" +
	"Host: proxy.example:8443\r\n" +
	"User-Agent: spdy-origin-agent/v1.2.3\r\n" +
	"Content-Length: 60\r\n" +
	"Authorization: Bearer tok\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"Spdy-Origin-Agent-Connection: 2\r\n" +
	"Spdy-Origin-Agent-Instance: 0123456789abcdef\r\n" +
	"Spdy-Origin-Agent-Name: nas\r\n" +
	"Spdy-Origin-Agent-Version: v1.2.3\r\n" +
	"\r\n" +
	"spdy-origin-agent v1.2.3 name=nas instance=0123456789abcdef\n"

// spdyPing is a SPDY/3 PING frame (id 1), standing for the first frames a
// proxy sends right behind the 200.
var spdyPing = []byte{0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01}

// fakeProxy reads one registration from conn, hands it to check, then
// writes answer in a single write and leaves conn open until the test ends.
func fakeProxy(t *testing.T, conn net.Conn, answer []byte, check func(*http.Request, []byte)) {
	t.Helper()
	done := make(chan struct{})
	t.Cleanup(func() { conn.Close(); <-done })
	go func() {
		defer close(done)
		req, err := http.ReadRequest(bufio.NewReader(conn))
		if err != nil {
			return // the client gave up (timeout cases)
		}
		body, _ := io.ReadAll(req.Body)
		if check != nil {
			check(req, body)
		}
		if answer != nil {
			_, _ = conn.Write(answer)
		}
	}()
}

// register runs Register against a fake proxy that answers answer.
func register(t *testing.T, answer []byte, timeout time.Duration) (*Result, error) {
	t.Helper()
	agent, proxy := net.Pipe()
	t.Cleanup(func() { agent.Close() })
	fakeProxy(t, proxy, answer, nil)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return Register(ctx, agent, testRequest)
}

func TestRegister(t *testing.T) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 16\r\n\r\nspdy-origin: ok\n"
	cases := []struct {
		name    string
		answer  string
		body    string        // on success: the 200's body
		rest    []byte        // on success: what the reader holds after the body
		status  int           // on a *StatusError: its status
		retry   time.Duration // ... and its RetryAfter (a range when negative: 0 < RetryAfter <= -retry)
		header  [2]string     // ... and a header it carries
		excerpt string        // ... and the start of its body excerpt
		err     string        // any other error: a part of its text
	}{
		{name: "200 with body", answer: ok, body: "spdy-origin: ok\n"},
		{name: "200 with an empty body", answer: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", body: ""},
		{name: "200 without Content-Length", answer: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nwelcome",
			err: "without Content-Length"},
		{name: "chunked 200", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello\n\r\n0\r\n\r\n" + string(spdyPing),
			body: "hello\n", rest: spdyPing},
		{name: "SPDY bytes pipelined after the body", answer: ok + string(spdyPing) + string(spdyPing),
			body: "spdy-origin: ok\n", rest: append(append([]byte{}, spdyPing...), spdyPing...)},
		{name: "oversized body", answer: "HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n" + strings.Repeat("x", 70000),
			err: "exceeds 65536 bytes"},
		{name: "401 with WWW-Authenticate",
			answer: "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"spdy-origin\", error=\"invalid_token\"\r\nContent-Length: 26\r\n\r\nspdy-origin: wrong token\r\n",
			status: 401, header: [2]string{"WWW-Authenticate", TokenChallenge("invalid_token")},
			excerpt: "spdy-origin: wrong token"},
		{name: "429 with Retry-After seconds",
			answer: "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n",
			status: 429, retry: 7 * time.Second, header: [2]string{"Retry-After", "7"}},
		{name: "503 with Retry-After date",
			answer: "HTTP/1.1 503 Service Unavailable\r\nRetry-After: " + time.Now().Add(30*time.Second).UTC().Format(http.TimeFormat) +
				"\r\nContent-Length: 8\r\n\r\nno slots",
			status: 503, retry: -30 * time.Second, excerpt: "no slots"},
		{name: "Retry-After ignored on a 500",
			answer: "HTTP/1.1 500 Internal Server Error\r\nRetry-After: 7\r\nContent-Length: 5017\r\n\r\ndatabase on fire\x00\n" + strings.Repeat("x", 5000),
			status: 500, excerpt: "database on fire? xxxx"},
		{name: "closed without an answer", answer: "", err: "closed the connection without answering"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			answer := []byte(tc.answer)
			if tc.answer == "" {
				answer = nil
			}
			agent, proxy := net.Pipe()
			t.Cleanup(func() { agent.Close() })
			fakeProxy(t, proxy, answer, func(*http.Request, []byte) {
				if answer == nil {
					proxy.Close()
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			res, err := Register(ctx, agent, testRequest)
			checkRegister(t, res, err, tc.body, tc.rest, tc.status, tc.retry, tc.header, tc.excerpt, tc.err)
		})
	}
}

// checkRegister compares Register's outcome with a case of TestRegister.
func checkRegister(t *testing.T, res *Result, err error, body string, rest []byte, status int, retry time.Duration,
	header [2]string, excerpt, errText string) {
	t.Helper()
	var se *StatusError
	switch {
	case errText != "":
		if err == nil || !strings.Contains(err.Error(), errText) {
			t.Fatalf("err = %v, want one containing %q", err, errText)
		}
		if errors.As(err, &se) {
			t.Fatalf("err = %#v, want no *StatusError", se)
		}
	case status != 0:
		if !errors.As(err, &se) || se.StatusCode != status {
			t.Fatalf("err = %v, want a *StatusError with status %d", err, status)
		}
		if got, want := errors.Is(err, ErrTokenRejected), status == http.StatusUnauthorized && header[1] == TokenChallenge("invalid_token"); got != want {
			t.Errorf("errors.Is(%v, ErrTokenRejected) = %v", err, got)
		}
		if (retry >= 0 && se.RetryAfter != retry) || (retry < 0 && (se.RetryAfter <= 0 || se.RetryAfter > -retry)) {
			t.Errorf("RetryAfter = %v, want %v", se.RetryAfter, retry)
		}
		if header[0] != "" && se.Header.Get(header[0]) != header[1] {
			t.Errorf("%s = %q, want %q", header[0], se.Header.Get(header[0]), header[1])
		}
		if !strings.HasPrefix(se.Body, excerpt) || len(se.Body) > excerptLen {
			t.Errorf("body excerpt %q, want %d bytes at most starting with %q", se.Body, excerptLen, excerpt)
		}
		if !strings.Contains(err.Error(), se.Status) {
			t.Errorf("error %q does not name the status", err)
		}
	default:
		if err != nil {
			t.Fatalf("Register: %v", err)
		}
		if string(res.Body) != body {
			t.Errorf("body %q, want %q", res.Body, body)
		}
		got, _ := res.Reader.Peek(res.Reader.Buffered())
		if !bytes.Equal(got, rest) {
			t.Errorf("reader holds %x after the body, want %x", got, rest)
		}
	}
}

// The PUT is the same on the wire as it always was, and the proxy half
// reads back what the agent half wrote.
func TestRegisterWire(t *testing.T) {
	agent, proxy := net.Pipe()
	t.Cleanup(func() { agent.Close() })
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, len(wantPUT))
		_, err := io.ReadFull(proxy, b)
		if err != nil {
			t.Error(err)
		}
		got <- b
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			t.Error(err)
		} else if tok, ok := BearerToken(req.Header); !ok || tok != "tok" || ReadIdentity(req.Header) != testRequest.Identity {
			t.Errorf("proxy half read token %q, %v, identity %+v", tok, ok, ReadIdentity(req.Header))
		}
		_ = Accept(proxy, "spdy-origin: registered session 1 in pool \"default\"\n", nil)
		proxy.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := Register(ctx, agent, testRequest)
	if b := <-got; string(b) != wantPUT {
		t.Fatalf("PUT on the wire:\n%q\nwant\n%q", b, wantPUT)
	}
	if err != nil || string(res.Body) != "spdy-origin: registered session 1 in pool \"default\"\n" {
		t.Fatalf("Register after Accept: %v, %+v", err, res)
	}
}

// Accept writes exactly the 200 that agents, Amahi's included, parse.
func TestAcceptWire(t *testing.T) {
	proxy, agent := net.Pipe()
	t.Cleanup(func() { agent.Close() })
	go func() {
		if err := Accept(proxy, "hello\n", nil); err != nil {
			t.Error(err)
		}
		proxy.Close()
	}()
	b, err := io.ReadAll(agent)
	if err != nil {
		t.Fatal(err)
	}
	const want = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 6\r\n\r\nhello\n"
	if string(b) != want {
		t.Fatalf("200 on the wire:\n%q\nwant\n%q", b, want)
	}
}

// An agent that never reads the 200 costs the proxy AcceptTimeout at most;
// here the deadline is already past.
func TestAcceptWriteFails(t *testing.T) {
	proxy, agent := net.Pipe()
	agent.Close()
	if err := Accept(proxy, "x", nil); err == nil || !strings.Contains(err.Error(), "writing the 200") {
		t.Fatalf("Accept to a closed peer: %v", err)
	}
}

func TestRegisterTimeoutAndCancel(t *testing.T) {
	// A proxy that reads the PUT and never answers.
	_, err := register(t, nil, 100*time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want os.ErrDeadlineExceeded", err)
	}

	agent, proxy := net.Pipe()
	t.Cleanup(func() { agent.Close() })
	fakeProxy(t, proxy, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	if _, err := Register(ctx, agent, testRequest); !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("err = %v after %v, want an error as soon as ctx is cancelled", err, time.Since(start))
	}
}

func TestRegisterURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://p.example":               "https://p.example/.well-known/spdy-origin",
		"https://p.example/":              "https://p.example/.well-known/spdy-origin",
		"https://p.example:8443/register": "https://p.example:8443/register",
	} {
		u, _ := url.Parse(in)
		if got := RegisterURL(u).String(); got != want {
			t.Errorf("RegisterURL(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestBearerToken(t *testing.T) {
	for _, tc := range []struct {
		auth string
		tok  string
		ok   bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer  abc ", "abc", true},
		{"BEARER abc", "abc", true},
		{"", "", false},
		{"Bearer ", "", false},
		{"Bearer    ", "", false},
		{"Basic dXNlcjpwYXNz", "", false},
		{"Bearerabc", "", false},
	} {
		h := http.Header{}
		if tc.auth != "" {
			h.Set("Authorization", tc.auth)
		}
		if tok, ok := BearerToken(h); tok != tc.tok || ok != tc.ok {
			t.Errorf("BearerToken(%q) = %q, %v; want %q, %v", tc.auth, tok, ok, tc.tok, tc.ok)
		}
	}
}

func TestReadIdentity(t *testing.T) {
	h := http.Header{}
	h.Set(HeaderName, "  nas\x00\x1b[31m-1\u00e9 ")
	h.Set(HeaderVersion, strings.Repeat("v", 300))
	h.Set(HeaderInstance, "abc")
	got := ReadIdentity(h)
	want := Identity{Name: "nas[31m-1", Version: strings.Repeat("v", 128), Instance: "abc"}
	if got != want {
		t.Fatalf("ReadIdentity = %+v, want %+v", got, want)
	}
}

// Whatever a proxy answers, Register returns (no panic, no hang) and never
// hands back a body over the limit.
func FuzzRegisterAnswer(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 401 Unauthorized\r\nContent-Length: 3\r\n\r\nno\n"))
	f.Add([]byte("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 99999999999999999999\r\n\r\n"))
	f.Add([]byte("HTTP/1.0 200 OK\r\n\r\n"))
	f.Fuzz(func(t *testing.T, answer []byte) {
		agent, proxy := net.Pipe()
		defer agent.Close()
		go func() {
			_, _ = http.ReadRequest(bufio.NewReader(proxy))
			_, _ = proxy.Write(answer)
			proxy.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		res, err := Register(ctx, agent, testRequest)
		if err == nil && len(res.Body) > MaxResponseBody {
			t.Fatalf("body of %d bytes accepted", len(res.Body))
		}
		var se *StatusError
		if errors.As(err, &se) && (se.StatusCode == http.StatusOK || len(se.Body) > 4*excerptLen) {
			t.Fatalf("status error %+v", se)
		}
	})
}

// Capabilities go both ways only when both announce them: the agent's in
// its PUT, the proxy's in its 200; an Amahi origin (none announced) gets
// the 200 of TestAcceptWire, byte for byte.
func TestCapabilities(t *testing.T) {
	agent, proxy := net.Pipe()
	t.Cleanup(func() { agent.Close() })
	seen := make(chan Capabilities, 1)
	go func() {
		req, err := http.ReadRequest(bufio.NewReader(proxy))
		if err != nil {
			t.Error(err)
			return
		}
		io.Copy(io.Discard, req.Body)
		caps := ReadCapabilities(req.Header)
		seen <- caps
		_ = Accept(proxy, "ok\n", Capabilities{CapTrailers, "future-thing"})
		proxy.Close()
	}()
	r := testRequest
	r.Capabilities = Capabilities{CapTrailers}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := Register(ctx, agent, r)
	if err != nil {
		t.Fatal(err)
	}
	if caps := <-seen; !caps.Has(CapTrailers) || len(caps) != 1 {
		t.Fatalf("the proxy read %v", caps)
	}
	if !res.Capabilities.Has("TRAILERS") || !res.Capabilities.Has("future-thing") || res.Capabilities.Has("headers") {
		t.Fatalf("the agent read %v", res.Capabilities)
	}
}

func TestReadCapabilities(t *testing.T) {
	long := strings.Repeat("x", 33)
	h := http.Header{HeaderCapabilities: {" Trailers , ,priorities", long + ",a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q"}}
	got := ReadCapabilities(h)
	if len(got) != 16 || got[0] != "trailers" || got[1] != "priorities" || got.Has(long) {
		t.Fatalf("ReadCapabilities = %v (want at most 16, lower-cased, none over 32 bytes)", got)
	}
	if ReadCapabilities(http.Header{}) != nil {
		t.Fatal("capabilities from nothing")
	}
}

// The hosts an agent announces reach the proxy's ReadHosts as canonical
// patterns; no hosts, no header.
func TestHostsOnTheWire(t *testing.T) {
	for _, tc := range []struct {
		hosts []string
		want  []string
	}{
		{hosts: []string{"A.test", "*.Example.com", "*"}, want: []string{"a.test", "*.example.com", "*"}},
		{hosts: nil, want: nil},
	} {
		agent, proxy := net.Pipe()
		seen := make(chan []string, 1)
		go func() {
			req, err := http.ReadRequest(bufio.NewReader(proxy))
			if err != nil {
				t.Error(err)
				seen <- nil
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			got, err := ReadHosts(req.Header)
			if err != nil {
				t.Error(err)
			}
			seen <- got
			_ = Accept(proxy, "ok\n", nil)
			proxy.Close()
		}()
		r := testRequest
		r.Hosts = tc.hosts
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := Register(ctx, agent, r)
		cancel()
		agent.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := <-seen; !slices.Equal(got, tc.want) {
			t.Fatalf("announced %q, the proxy read %q; want %q", tc.hosts, got, tc.want)
		}
	}
}

func TestReadHosts(t *testing.T) {
	many := make([]string, MaxHosts+1)
	for i := range many {
		many[i] = fmt.Sprintf("h%d.test", i)
	}
	tests := []struct {
		name   string
		values []string // nil: no header
		want   []string
		err    string
	}{
		{name: "absent", values: nil, want: nil},
		{name: "several headers, duplicates", values: []string{"a.test, B.test", "a.test,,*.c.test"}, want: []string{"a.test", "b.test", "*.c.test"}},
		{name: "catch-all", values: []string{"*"}, want: []string{"*"}},
		{name: "exactly the maximum", values: []string{strings.Join(many[:MaxHosts], ",")}, want: many[:MaxHosts]},
		{name: "one too many", values: []string{strings.Join(many, ",")}, err: "more than 100"},
		{name: "empty", values: []string{" , "}, err: "is empty"},
		{name: "port", values: []string{"a.test:443"}, err: "no port"},
		{name: "too long", values: []string{strings.Repeat("a.", 130) + "test"}, err: "longer than 253"},
		{name: "bad wildcard", values: []string{"a.*.test"}, err: "whole first label"},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.values != nil {
			h[HeaderHosts] = tt.values
		}
		got, err := ReadHosts(h)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s: ReadHosts = %q, %v; want error %q", tt.name, got, err, tt.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("%s: ReadHosts = %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
}

// FuzzReadHosts: whatever ReadHosts accepts is at most MaxHosts canonical
// patterns without duplicates.
func FuzzReadHosts(f *testing.F) {
	for _, s := range []string{"a.test, *.b.test", "*", "", ",,", "A.TEST,a.test", "x:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got, err := ReadHosts(http.Header{HeaderHosts: {v}})
		if err != nil {
			return
		}
		if len(got) == 0 || len(got) > MaxHosts {
			t.Fatalf("ReadHosts(%q) = %d patterns", v, len(got))
		}
		seen := map[string]bool{}
		for _, p := range got {
			if c, err := hosts.ParsePattern(p); err != nil || c != p || seen[p] {
				t.Fatalf("ReadHosts(%q) gave %q (canonical %q, %v, duplicate %v)", v, p, c, err, seen[p])
			}
			seen[p] = true
		}
	})
}

// A hostile or broken endpoint that answers with an endless header must
// not make the agent buffer it until the handshake times out: Register
// gives up once MaxResponseHeaderBytes are read.
func TestRegisterResponseHeaderBound(t *testing.T) {
	agent, proxy := net.Pipe()
	written := make(chan int64, 1)
	go func() {
		defer proxy.Close()
		req, err := http.ReadRequest(bufio.NewReader(proxy))
		if err != nil {
			written <- 0
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		n, _ := io.WriteString(proxy, "HTTP/1.1 200 OK\r\n")
		total := int64(n)
		line := "X-Pad: " + strings.Repeat("a", 4<<10) + "\r\n"
		for total < 64*MaxResponseHeaderBytes {
			n, err := io.WriteString(proxy, line)
			total += int64(n)
			if err != nil {
				break
			}
		}
		written <- total
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, err := Register(ctx, agent, testRequest)
	agent.Close()
	if !errors.Is(err, ErrResponseHeaderTooLarge) {
		t.Errorf("err = %v after %v, want ErrResponseHeaderTooLarge", err, time.Since(start))
	}
	// net.Pipe is unbuffered: what was written is what Register read, plus
	// at most the line in flight.
	if n := <-written; n > MaxResponseHeaderBytes+8<<10 {
		t.Errorf("Register read %d bytes of header, want at most %d", n, MaxResponseHeaderBytes)
	}
}
