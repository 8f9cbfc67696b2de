package caddymodule

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestProxyBasics(t *testing.T) {
	tester := loadConfig(t, spdyRoute("basics", map[string]any{
		"headers": map[string]any{"request": map[string]any{"set": map[string]any{"X-Origin": []string{"spdy"}}}},
	}))
	a := startAgent(t, "basic-A")
	waitSessions(t, "basics", 1)
	c := tester.Client

	// GET, with reverse_proxy's forwarding headers and header_up.
	resp, body := get(t, c, "/hello")
	if resp.StatusCode != 200 || body != "hello from basic-A" {
		t.Fatalf("GET /hello: %d %q", resp.StatusCode, body)
	}
	for k, want := range map[string]string{
		"X-Seen-Host": fmt.Sprintf("localhost:%d", testHTTPSPort), "X-Seen-Forwarded-Proto": "https",
		"X-Seen-Forwarded-For": "127.0.0.1", "X-Seen-Origin-Header": "spdy",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}

	// POST echoes its body.
	payload := strings.Repeat("ping-", 10000)
	req, _ := http.NewRequest(http.MethodPost, testBase+"/echo", strings.NewReader(payload))
	req.Header.Set("Content-Type", "text/x-test")
	pr, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	pb, _ := io.ReadAll(pr.Body)
	pr.Body.Close()
	if pr.StatusCode != 200 || string(pb) != payload || pr.Header.Get("Content-Type") != "text/x-test" {
		t.Fatalf("POST /echo: %d, %d bytes, content-type %q", pr.StatusCode, len(pb), pr.Header.Get("Content-Type"))
	}

	// HEAD has headers and no body.
	req, _ = http.NewRequest(http.MethodHead, testBase+"/file", nil)
	hr, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	hb, _ := io.ReadAll(hr.Body)
	hr.Body.Close()
	if hr.StatusCode != 200 || len(hb) != 0 || hr.ContentLength != int64(len(testFile)) {
		t.Fatalf("HEAD /file: %d, body %d bytes, content-length %d", hr.StatusCode, len(hb), hr.ContentLength)
	}

	// Range.
	resp, body = get(t, c, "/file", "Range", "bytes=100-199")
	if resp.StatusCode != http.StatusPartialContent || body != string(testFile[100:200]) ||
		resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 100-199/%d", len(testFile)) {
		t.Fatalf("Range: %d %q, Content-Range %q", resp.StatusCode, body, resp.Header.Get("Content-Range"))
	}

	// Conditional requests.
	resp, body = get(t, c, "/file", "If-None-Match", `"v1"`)
	if resp.StatusCode != http.StatusNotModified || body != "" {
		t.Fatalf("If-None-Match: %d %q", resp.StatusCode, body)
	}
	resp, _ = get(t, c, "/file", "If-Modified-Since", testFileTime.Add(time.Hour).Format(http.TimeFormat))
	if resp.StatusCode != http.StatusNotModified {
		t.Fatalf("If-Modified-Since: %d", resp.StatusCode)
	}

	// 404 from the origin passes through.
	resp, _ = get(t, c, "/nope")
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /nope: %d", resp.StatusCode)
	}

	if a.served.Load() != 6 {
		t.Fatalf("agent served %d requests", a.served.Load())
	}
}

func TestBigTransfers(t *testing.T) {
	loadConfig(t, spdyRoute("big", nil))
	startAgent(t, "big-A")
	waitSessions(t, "big", 1)
	c := bigClient()
	want := testDataDigest(t, bigSize)

	t.Run("download", func(t *testing.T) {
		resp, err := c.Get(fmt.Sprintf("%s/big?size=%d", testBase, bigSize))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil {
			t.Fatalf("download after %d bytes: %v", n, err)
		}
		if got := fmt.Sprintf("%x", h.Sum(nil)); n != bigSize || got != want {
			t.Fatalf("download: %d bytes, sha256 %s; want %d, %s", n, got, bigSize, want)
		}
		t.Logf("download: %d bytes, sha256 ok", n)
	})
	t.Run("upload", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, testBase+"/upload", io.LimitReader(newTestData(), bigSize))
		req.ContentLength = bigSize
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != fmt.Sprintf("%d %s", bigSize, want) {
			t.Fatalf("upload: %d %q", resp.StatusCode, b)
		}
		t.Logf("upload: %d bytes, sha256 ok", bigSize)
	})
	t.Run("upload chunked", func(t *testing.T) {
		const size = 32 << 20
		req, _ := http.NewRequest(http.MethodPost, testBase+"/upload", io.NopCloser(io.LimitReader(newTestData(), size)))
		req.ContentLength = -1
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != fmt.Sprintf("%d %s", size, testDataDigest(t, size)) {
			t.Fatalf("chunked upload: %d %q", resp.StatusCode, b)
		}
	})
}

func TestAgentKilledMidDownload(t *testing.T) {
	tester := loadConfig(t, spdyRoute("kill", nil))
	agents := map[string]*testAgent{}
	for _, n := range []string{"kill-A", "kill-B"} {
		agents[n] = startAgent(t, n)
	}
	waitSessions(t, "kill", 2)

	const size = 128 << 20
	c := bigClient()
	resp, err := c.Get(fmt.Sprintf("%s/big?size=%d", testBase, size))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	victim := agents[resp.Header.Get("X-Agent")]
	if victim == nil || resp.StatusCode != 200 {
		t.Fatalf("download: %d from %q", resp.StatusCode, resp.Header.Get("X-Agent"))
	}
	if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
		t.Fatal(err)
	}
	victim.kill()
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil {
		t.Fatalf("download ended cleanly after the agent died (%d more bytes): a truncated body looked complete", n)
	}
	t.Logf("client saw the agent's death: %v (after %d+%d of %d bytes)", err, 1<<20, n, size)

	waitSessions(t, "kill", 1)
	var survivor string
	for name, a := range agents {
		if a != victim {
			survivor = name
		}
	}
	for range 5 {
		r, body := get(t, tester.Client, "/hello")
		if r.StatusCode != 200 || r.Header.Get("X-Agent") != survivor {
			t.Fatalf("after kill: %d %q from %q, want %s", r.StatusCode, body, r.Header.Get("X-Agent"), survivor)
		}
	}
}
