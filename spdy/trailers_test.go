package spdy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	mspdy "github.com/moby/spdystream/spdy"
)

// trailersConfig is testConfig for a session whose peer announced HEADERS
// support.
func trailersConfig() *Config {
	c := testConfig()
	c.PeerTrailers = true
	return c
}

// trailerHandler answers with a body, a declared trailer set after it, and
// an undeclared one with http.TrailerPrefix, as gRPC servers do.
var trailerHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	w.Header().Set("Trailer", "X-Checksum")
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, "hello ")
	w.(http.Flusher).Flush()
	io.WriteString(w, "world")
	sum := sha256.Sum256([]byte("hello world"))
	w.Header().Set("X-Checksum", hex.EncodeToString(sum[:]))
	w.Header().Set(http.TrailerPrefix+"Grpc-Status", "0")
})

func TestResponseTrailers(t *testing.T) {
	cs, _ := pair(t, trailerHandler, trailersConfig(), trailersConfig())
	resp, err := cs.RoundTrip(newReq(t, "GET", "https://x/", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, ok := resp.Trailer["X-Checksum"]; !ok || resp.Trailer.Get("X-Checksum") != "" {
		t.Fatalf("before EOF: Trailer %v, want the declared key with no value", resp.Trailer)
	}
	if resp.Header.Get("Trailer") != "" || resp.Header.Get("X-Checksum") != "" {
		t.Fatalf("header %v: the Trailer header and the trailers do not belong there", resp.Header)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || string(b) != "hello world" {
		t.Fatalf("body %q, %v", b, err)
	}
	sum := sha256.Sum256(b)
	if got := resp.Trailer.Get("X-Checksum"); got != hex.EncodeToString(sum[:]) {
		t.Fatalf("X-Checksum trailer %q", got)
	}
	if got := resp.Trailer.Get("Grpc-Status"); got != "0" {
		t.Fatalf("Grpc-Status trailer %q (undeclared, http.TrailerPrefix)", got)
	}
}

// sumBody reads like an upload and sets its checksum trailer at EOF, as
// net/http's Request.Trailer contract asks of a body.
type sumBody struct {
	r       io.Reader
	h       hashWriter
	trailer http.Header
}

type hashWriter interface {
	io.Writer
	Sum([]byte) []byte
}

func (b *sumBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.h.Write(p[:n])
	if err == io.EOF {
		b.trailer.Set("X-Req-Sum", hex.EncodeToString(b.h.Sum(nil)))
	}
	return n, err
}

func TestRequestTrailers(t *testing.T) {
	got := make(chan string, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := r.Trailer["X-Req-Sum"]; !ok {
			t.Errorf("request Trailer %v before EOF: want the declared key", r.Trailer)
		}
		io.Copy(io.Discard, r.Body)
		got <- r.Trailer.Get("X-Req-Sum")
	})
	cs, _ := pair(t, h, trailersConfig(), trailersConfig())
	const size = 3<<20 + 17
	body := bytes.Repeat([]byte("u"), size)
	req := newReq(t, "PUT", "https://x/up", nil)
	req.Trailer = http.Header{"X-Req-Sum": nil}
	req.Body = io.NopCloser(&sumBody{r: bytes.NewReader(body), h: sha256.New(), trailer: req.Trailer})
	req.ContentLength = size
	r := recvResult(t, goRoundTrip(cs, req))
	if r.err != nil || r.resp.StatusCode != 200 {
		t.Fatalf("RoundTrip: %v", r.err)
	}
	want := sha256.Sum256(body)
	if s := <-got; s != hex.EncodeToString(want[:]) {
		t.Fatalf("trailer the handler saw: %q", s)
	}
}

// TestTrailersOnTheWire: with PeerTrailers, the trailers go in one HEADERS
// frame with FIN after the DATA (which carries none); the Trailer header
// declares them in SYN_REPLY and the declared values are not headers.
func TestTrailersOnTheWire(t *testing.T) {
	_, p := rawClient(t, trailersConfig(), trailerHandler)
	p.mustWrite(synStream(1, reqBlock("GET", "/"), true))
	var data []byte
	var frames []string
	for {
		f := p.expect("the stream's frames", func(mspdy.Frame) bool { return true })
		switch f := f.(type) {
		case *mspdy.SynReplyFrame:
			frames = append(frames, "SYN_REPLY")
			if f.Headers.Get("trailer") != "X-Checksum" || f.Headers.Get("x-checksum") != "" {
				t.Fatalf("SYN_REPLY %v", f.Headers)
			}
			if f.CFHeader.Flags&mspdy.ControlFlagFin != 0 {
				t.Fatal("SYN_REPLY with FIN")
			}
		case *mspdy.DataFrame:
			frames = append(frames, "DATA")
			if f.Flags&mspdy.DataFlagFin != 0 {
				t.Fatal("DATA with FIN: the trailers must end the stream")
			}
			data = append(data, f.Data...)
		case *mspdy.HeadersFrame:
			frames = append(frames, "HEADERS")
			if f.CFHeader.Flags&mspdy.ControlFlagFin == 0 {
				t.Fatal("HEADERS without FIN")
			}
			if string(data) != "hello world" || f.Headers.Get("grpc-status") != "0" || len(f.Headers.Get("x-checksum")) != 64 {
				t.Fatalf("body %q, trailers %v", data, f.Headers)
			}
			t.Logf("frames: %s", strings.Join(frames, " "))
			return
		default:
			continue
		}
	}
}

// TestNoHeadersToOldPeers: a peer that did not announce HEADERS support
// (amahi/spdy panics on one) never receives a HEADERS frame: the trailers
// are dropped, logged once per session, and the body ends with FIN as
// usual.
func TestNoHeadersToOldPeers(t *testing.T) {
	log := &recLogger{}
	cfg := testConfig()
	cfg.Logger = log
	_, p := rawClient(t, cfg, trailerHandler)
	for _, id := range []uint32{1, 3} {
		p.mustWrite(synStream(id, reqBlock("GET", "/"), true))
		var data []byte
		for done := false; !done; {
			f := p.next()
			if f == nil {
				t.Fatalf("connection ended: %v", p.rerr)
			}
			switch f := f.(type) {
			case *mspdy.HeadersFrame:
				t.Fatalf("a HEADERS frame to a peer that did not announce it understands them: %+v", f)
			case *mspdy.SynReplyFrame:
				if f.Headers.Get("trailer") != "" {
					t.Fatalf("SYN_REPLY declares trailers that will not come: %v", f.Headers)
				}
			case *mspdy.DataFrame:
				data = append(data, f.Data...)
				done = f.Flags&mspdy.DataFlagFin != 0
			}
		}
		if string(data) != "hello world" {
			t.Fatalf("stream %d: body %q", id, data)
		}
	}
	pingAlive(t, p)
	n := 0
	log.mu.Lock()
	for _, m := range log.msgs {
		if strings.Contains(m, "dropping trailers") {
			n++
		}
	}
	log.mu.Unlock()
	if n != 1 {
		t.Fatalf("the dropped trailers were logged %d times, want once per session", n)
	}
}

// TestBidirectionalStreaming: request and response bodies flow at the same
// time on one stream (a bidirectional streaming RPC), through the smallest
// windows, with both directions' windows full at times: each side reads
// and writes concurrently, nothing deadlocks and every byte arrives.
func TestBidirectionalStreaming(t *testing.T) {
	const msg, count = 64 << 10, 64 // 4 MiB each way, in 64 KiB messages
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Echoed")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		buf := make([]byte, msg)
		n := 0
		for {
			k, err := io.ReadFull(r.Body, buf)
			if k > 0 {
				// Echo each message back as it arrives.
				if _, werr := w.Write(buf[:k]); werr != nil {
					return
				}
				w.(http.Flusher).Flush()
				n += k
			}
			if err != nil {
				break
			}
		}
		w.Header().Set("X-Echoed", fmt.Sprint(n))
	})
	small := func() *Config {
		c := trailersConfig()
		c.StreamWindow, c.SessionWindow = 64<<10, 64<<10
		return c
	}
	cs, _ := pair(t, h, small(), small())
	pr, pw := io.Pipe()
	req := newReq(t, "POST", "https://x/bidi", nil)
	req.Body = pr
	resp, err := cs.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var wg sync.WaitGroup
	wg.Go(func() {
		m := bytes.Repeat([]byte{'m'}, msg)
		for range count {
			if _, err := pw.Write(m); err != nil {
				t.Error(err)
				return
			}
		}
		pw.Close()
	})
	got, err := io.Copy(io.Discard, resp.Body)
	wg.Wait()
	if err != nil || got != msg*count {
		t.Fatalf("echoed %d of %d bytes: %v", got, msg*count, err)
	}
	if resp.Trailer.Get("X-Echoed") != fmt.Sprint(msg*count) {
		t.Fatalf("trailer %v", resp.Trailer)
	}
}

// TestTrailersBounded: a peer that sends HEADERS after HEADERS without FIN,
// each block within the limits, cannot grow a stream's trailers past the
// limits of one header block (Config.MaxHeaderBytes bounds the headers a
// stream holds): the stream is reset with FRAME_TOO_LARGE, and the session
// goes on.
func TestTrailersBounded(t *testing.T) {
	cfg := testConfig()
	cfg.MaxHeaderBytes = 4 << 10
	_, p := rawClient(t, cfg, okHandler)
	enc := newBlockEncoder(t)
	enc.send(t, p, synStream(1, reqBlock("POST", "/upload"), false))
	value := strings.Repeat("v", 1<<10)
	// 64 blocks of 1 KiB each: 16 times the limit in all.
	for i := range 64 {
		enc.send(t, p, &mspdy.HeadersFrame{StreamId: 1, Headers: http.Header{fmt.Sprintf("x-t%d", i): {value}}})
	}
	if rst := p.expectRst(1); rst.Status != mspdy.FrameTooLarge {
		t.Fatalf("RST_STREAM status %d, want FRAME_TOO_LARGE", rst.Status)
	}
	serverExchange(t, p, enc, 3)
}
