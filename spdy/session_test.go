package spdy

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestRoundTripBasic(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("server read: %v", err)
		}
		w.Header().Set("X-Method", r.Method)
		w.Header().Set("X-Host", r.Host)
		w.Header().Add("X-Multi", "a")
		w.Header().Add("X-Multi", "b")
		io.WriteString(w, r.URL.RequestURI()+"|"+string(body))
	})
	cs, _ := pair(t, h, nil, nil)
	req, _ := http.NewRequest("POST", "https://example.com/p?q=1", strings.NewReader("hello"))
	resp, err := cs.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "/p?q=1|hello" {
		t.Fatalf("body %q", b)
	}
	if resp.StatusCode != 200 || resp.Header.Get("X-Method") != "POST" || resp.Header.Get("X-Host") != "example.com" {
		t.Fatalf("resp %v %v", resp.StatusCode, resp.Header)
	}
	if got := resp.Header.Values("X-Multi"); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("multi %v", got)
	}
	if resp.ContentLength != int64(len(b)) {
		t.Fatalf("content length %d", resp.ContentLength)
	}
}

func TestRoundTripLargeBothWays(t *testing.T) {
	const size = 64 << 20
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hs := sha256.New()
		n, err := io.Copy(hs, r.Body)
		if err != nil || n != size {
			t.Errorf("server got %d, %v", n, err)
		}
		w.Header().Set("X-Sum", string(hs.Sum(nil)[:8]))
		io.Copy(w, io.LimitReader(newPattern(), size))
	})
	cs, _ := pair(t, h, nil, nil)
	req, _ := http.NewRequest("PUT", "https://x/", io.LimitReader(newPattern(), size))
	resp, err := cs.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	want := sha256.New()
	io.Copy(want, io.LimitReader(newPattern(), size))
	got := sha256.New()
	n, err := io.Copy(got, resp.Body)
	if err != nil || n != size {
		t.Fatalf("client got %d, %v", n, err)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatal("checksum mismatch")
	}
	if resp.Header.Get("X-Sum") != string(want.Sum(nil)[:8]) {
		t.Fatal("upload checksum mismatch")
	}
}

// pattern is an endless deterministic byte stream: byte i is i*7 + i>>9.
type pattern struct{ off *int64 }

func newPattern() pattern { return pattern{off: new(int64)} }

func (p pattern) Read(b []byte) (int, error) {
	o := *p.off
	for i := range b {
		x := o + int64(i)
		b[i] = byte(x*7 + x>>9)
	}
	*p.off += int64(len(b))
	return len(b), nil
}

// A response that waits between writes (a long poll, an event stream) holds
// no write buffer while it waits; small responses still go out whole, with
// their Content-Length.
func TestResponseBufferHeldOnlyUntilFlush(t *testing.T) {
	held := make(chan bool, 2)
	next := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rw := w.(*responseWriter)
		if r.URL.Path == "/small" {
			io.WriteString(w, strings.Repeat("s", 5000)) // more than half the buffer
			return
		}
		io.WriteString(w, "event 1\n")
		held <- rw.buf != nil
		w.(http.Flusher).Flush()
		held <- rw.buf != nil
		<-next
		io.WriteString(w, "event 2\n")
	})
	cs, _ := pair(t, h, nil, nil)
	resp, err := cs.RoundTrip(newReq(t, "GET", "https://example.com/small", nil))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(b) != 5000 || resp.ContentLength != 5000 {
		t.Fatalf("small response: %d bytes, ContentLength %d; want 5000 of 5000", len(b), resp.ContentLength)
	}
	resp, err = cs.RoundTrip(newReq(t, "GET", "https://example.com/events", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if before, after := <-held, <-held; !before || after {
		t.Fatalf("buffer held before flush %v, after %v; want true, false", before, after)
	}
	buf := make([]byte, 8)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "event 1\n" {
		t.Fatalf("first event %q, %v", buf, err)
	}
	close(next)
	if rest, err := io.ReadAll(resp.Body); err != nil || string(rest) != "event 2\n" {
		t.Fatalf("rest %q, %v", rest, err)
	}
}
