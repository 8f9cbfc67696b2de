package agent

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// makeRoot builds base/root with files and symlinks, and base/secret.txt outside it.
func makeRoot(t *testing.T) string {
	t.Helper()
	base := t.TempDir()
	root := filepath.Join(base, "root")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "sub"), 0o755))
	must(os.WriteFile(filepath.Join(base, "secret.txt"), []byte("TOP SECRET"), 0o644))
	must(os.WriteFile(filepath.Join(root, "hello.txt"), []byte("hello world"), 0o644))
	must(os.WriteFile(filepath.Join(root, "sub", "inner.txt"), []byte("inner file"), 0o644))
	must(os.Symlink("sub/inner.txt", filepath.Join(root, "link-in")))
	must(os.Symlink("../secret.txt", filepath.Join(root, "link-out")))
	must(os.Symlink(filepath.Join(base, "secret.txt"), filepath.Join(root, "link-abs-out")))
	must(os.Symlink("..", filepath.Join(root, "linkdir-out")))
	must(os.Symlink("/etc", filepath.Join(root, "etc")))
	return root
}

// rootHandler serves a makeRoot tree; it returns the tree's path too.
func rootHandler(t *testing.T) (*fileHandler, string) {
	t.Helper()
	root := makeRoot(t)
	h, err := newFileHandler(root, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.close)
	return h, root
}

// getFile is a GET of target straight to h.
func getFile(h http.Handler, target string) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, target, nil))
	return w
}

// traversalTargets are request targets (as sent on the wire) that must never reach
// anything outside the root.
var traversalTargets = []string{
	"/../secret.txt",
	"/..%2fsecret.txt",
	"/%2e%2e/secret.txt",
	"/%2E%2E%2Fsecret.txt",
	"/sub/../../secret.txt",
	"/sub/%2e%2e/%2e%2e/secret.txt",
	"/sub%2f..%2f..%2fsecret.txt",
	"/link-out",
	"/link-abs-out",
	"/linkdir-out/secret.txt",
	"/linkdir-out/",
	"/linkdir-out",
	"/etc/passwd",
	"/etc/",
	"//..//secret.txt",
	"/.%2e/secret.txt",
	"/hello.txt%00/../../secret.txt",
}

func checkNoEscape(t *testing.T, target string, status int, body string) {
	t.Helper()
	if status == http.StatusOK || status == http.StatusPartialContent {
		t.Errorf("%s: status %d, want an error status (body %.200q)", target, status, body)
	}
	for _, leak := range []string{"TOP SECRET", "secret.txt", "root:", "passwd"} {
		if strings.Contains(body, leak) {
			t.Errorf("%s: response leaks %q: %.300q", target, leak, body)
		}
	}
}

func TestFileHandlerNoEscape(t *testing.T) {
	h, _ := rootHandler(t)
	for _, target := range traversalTargets {
		w := getFile(h, target)
		checkNoEscape(t, target, w.Code, w.Body.String())
	}
	// Symlinks that leave the root are refused with 403, not a 500.
	for _, target := range []string{"/link-out", "/link-abs-out"} {
		if w := getFile(h, target); w.Code != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403", target, w.Code)
		}
	}
}

func TestFileHandlerServes(t *testing.T) {
	h, _ := rootHandler(t)
	srv := httptest.NewServer(h)
	defer srv.Close()
	c := &http.Client{Transport: &http.Transport{}}
	defer c.Transport.(*http.Transport).CloseIdleConnections()
	fileCases(t, c, srv.URL)
}

// fileCases runs the --root behaviour checks against a base URL through client c.
func fileCases(t *testing.T, c *http.Client, base string) {
	t.Helper()
	do := func(method, path string, hdr map[string]string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %s: reading body: %v", method, path, err)
		}
		return resp, string(b)
	}

	if resp, body := do("GET", "/hello.txt", nil); resp.StatusCode != 200 || body != "hello world" {
		t.Errorf("GET /hello.txt: %d %q", resp.StatusCode, body)
	}
	if resp, body := do("GET", "/link-in", nil); resp.StatusCode != 200 || body != "inner file" {
		t.Errorf("GET /link-in (symlink inside the root): %d %q", resp.StatusCode, body)
	}
	resp, body := do("GET", "/hello.txt", map[string]string{"Range": "bytes=6-"})
	if resp.StatusCode != http.StatusPartialContent || body != "world" || resp.Header.Get("Content-Range") != "bytes 6-10/11" {
		t.Errorf("Range: %d %q %q", resp.StatusCode, body, resp.Header.Get("Content-Range"))
	}
	lm := resp.Header.Get("Last-Modified")
	if lm == "" {
		t.Fatal("no Last-Modified")
	}
	if resp, _ := do("GET", "/hello.txt", map[string]string{"If-Modified-Since": lm}); resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-Modified-Since current: %d, want 304", resp.StatusCode)
	}
	old := time.Now().Add(-48 * time.Hour).UTC().Format(http.TimeFormat)
	if resp, _ := do("GET", "/hello.txt", map[string]string{"If-Modified-Since": old}); resp.StatusCode != 200 {
		t.Errorf("If-Modified-Since old: %d, want 200", resp.StatusCode)
	}
	if resp, body := do("HEAD", "/hello.txt", nil); resp.StatusCode != 200 || body != "" || resp.ContentLength != 11 {
		t.Errorf("HEAD: %d %q len %d", resp.StatusCode, body, resp.ContentLength)
	}
	if resp, body := do("GET", "/sub/", nil); resp.StatusCode != 200 || !strings.Contains(body, "inner.txt") {
		t.Errorf("listing /sub/: %d %q", resp.StatusCode, body)
	}
	if resp, body := do("GET", "/", nil); resp.StatusCode != 200 || !strings.Contains(body, "hello.txt") || strings.Contains(body, "TOP SECRET") {
		t.Errorf("listing /: %d %q", resp.StatusCode, body)
	}
	if resp, _ := do("GET", "/nope.txt", nil); resp.StatusCode != 404 {
		t.Errorf("missing file: %d", resp.StatusCode)
	}
	if resp, _ := do("POST", "/hello.txt", nil); resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") == "" {
		t.Errorf("POST: %d allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	resp, body = do("GET", "/hello.txt", map[string]string{"Connection": "Upgrade", "Upgrade": "websocket"})
	if resp.StatusCode != http.StatusNotImplemented || !strings.Contains(body, "--to") {
		t.Errorf("upgrade on --root: %d %q", resp.StatusCode, body)
	}
	for _, target := range []string{"/../secret.txt", "/link-out", "/linkdir-out/secret.txt", "/etc/passwd"} {
		resp, body := do("GET", target, nil)
		checkNoEscape(t, target, resp.StatusCode, body)
	}
}

// A path no file can have (a NUL byte, invalid UTF-8, a name longer than the
// filesystem allows) is the client's mistake: 400, not a 500 that reads as a
// fault of the agent.
func TestFileHandlerInvalidPath(t *testing.T) {
	h, _ := rootHandler(t)
	for _, target := range []string{
		"/%00",
		"/hello.txt%00",
		"/sub/%00x",
		"/hello.txt%00/../../secret.txt",
		"/%ff%fe",
		"/" + strings.Repeat("a", 300),
		"/sub/" + strings.Repeat("b", 5000) + "/c",
	} {
		w := getFile(h, target)
		if w.Code != http.StatusBadRequest {
			t.Errorf("%.40s: status %d, want 400 (body %.100q)", target, w.Code, w.Body.String())
		}
		checkNoEscape(t, target, w.Code, w.Body.String())
	}
	// Missing files are still 404, and real ones are served.
	for target, want := range map[string]int{"/nope.txt": 404, "/hello.txt/x": 404, "/hello.txt": 200} {
		if w := getFile(h, target); w.Code != want {
			t.Errorf("%s: status %d, want %d", target, w.Code, want)
		}
	}
}
