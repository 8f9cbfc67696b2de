package agent

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"
)

func patByte(i int64) byte { return byte(i*7 + i>>9) }

// TestRoomCopyThroughSPDY: bodies of every shape (pieces that switch the
// copy between its quiet and bulk buffers, with and without a length,
// trailers, HEAD) arrive whole through the agent's room writes.
func TestRoomCopyThroughSPDY(t *testing.T) {
	const size = 3<<20 + 12345
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("len") != "" {
			w.Header().Set("Content-Length", strconv.Itoa(size))
		}
		if r.URL.Query().Get("tr") != "" {
			w.Header().Set("Trailer", "X-Sum")
		}
		if r.Method == http.MethodHead {
			return
		}
		buf := make([]byte, 200<<10)
		var off int64
		pieces := []int{100, 70000, 300, 65528, 65536, 1, 131072, 2048, 2047, 200 << 10}
		for i := 0; off < size; i++ {
			n := int64(pieces[i%len(pieces)])
			n = min(n, size-off)
			for j := range n {
				buf[j] = patByte(off + j)
			}
			w.Write(buf[:n])
			w.(http.Flusher).Flush()
			if i%7 == 3 {
				time.Sleep(2 * time.Millisecond)
			}
			off += n
		}
		if r.URL.Query().Get("tr") != "" {
			w.Header().Set("X-Sum", "ok")
		}
	}))
	t.Cleanup(up.Close)
	to, _ := url.Parse(up.URL)
	f := spdyFront(t, to, "")
	for _, q := range []string{"len=1", "", "tr=1", "len=1&tr=1"} {
		for _, m := range []string{"GET", "HEAD"} {
			req, _ := http.NewRequest(m, f.base+"/?"+q, nil)
			res, err := f.client.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", m, q, err)
			}
			b, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil {
				t.Fatalf("%s %s: reading: %v", m, q, err)
			}
			if m == "HEAD" {
				if len(b) != 0 {
					t.Errorf("HEAD %s: %d body bytes", q, len(b))
				}
				if q == "len=1" && res.ContentLength != size {
					t.Errorf("HEAD %s: Content-Length %d", q, res.ContentLength)
				}
				continue
			}
			if len(b) != size {
				t.Errorf("%s %s: %d bytes, want %d", m, q, len(b), size)
			}
			for i := range b {
				if b[i] != patByte(int64(i)) {
					t.Fatalf("%s %s: wrong byte at %d", m, q, i)
				}
			}
			if q == "tr=1" { // with a Content-Length, net/http sends no trailers
				if res.Trailer.Get("X-Sum") != "ok" {
					t.Errorf("%s %s: trailer %v", m, q, res.Trailer)
				}
			}
		}
	}
}
