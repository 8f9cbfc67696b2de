package spdy

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mspdy "github.com/moby/spdystream/spdy"
)

// TestUnreadRequestBodyReturnsSessionCredit: a handler that returns without
// reading a request body that arrived whole (FIN received) must not keep that
// body's session-window credit: otherwise a few such requests exhaust the
// session window and every later upload on the session stalls.
func TestUnreadRequestBodyReturnsSessionCredit(t *testing.T) {
	const (
		window   = 64 << 10
		bodySize = 16 << 10
		requests = 12 // 192 KiB in all: three times the session window
	)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Wait until the whole body is buffered, then ignore it.
		st := r.Body.(*requestBody).st
		deadline := time.Now().Add(rawTimeout)
		for !st.bodyComplete() {
			if time.Now().After(deadline) {
				w.WriteHeader(http.StatusGatewayTimeout)
				return
			}
			time.Sleep(time.Millisecond)
		}
		w.WriteHeader(http.StatusNoContent)
	})
	scfg := testConfig()
	scfg.StreamWindow = window
	scfg.SessionWindow = window
	cs, _ := pair(t, h, nil, scfg)
	for i := range requests {
		req := newReq(t, "POST", "https://x/", bytes.NewReader(make([]byte, bodySize)))
		res := recvResult(t, goRoundTrip(cs, req))
		if res.err != nil {
			t.Fatalf("request %d: %v", i, res.err)
		}
		if res.resp.StatusCode != http.StatusNoContent {
			t.Fatalf("request %d: status %d: the upload stalled (session window credit leaked)", i, res.resp.StatusCode)
		}
	}
}

// endlessBody is a request body that never ends and records Close.
type endlessBody struct{ closed atomic.Bool }

func (b *endlessBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, io.ErrClosedPipe
	}
	clear(p)
	return len(p), nil
}

func (b *endlessBody) Close() error { b.closed.Store(true); return nil }

// TestResponseCloseEndsUnfinishedUpload: when the peer answers in full
// (SYN_REPLY with FIN) without reading the request body and without
// resetting the stream, closing the response body must end the stream
// (RST_STREAM CANCEL): otherwise the upload waits for credit forever, the
// stream never leaves the table (holding a MAX_CONCURRENT_STREAMS slot) and
// the request body is never closed; the request context cannot help as it
// was detached at EOF.
func TestResponseCloseEndsUnfinishedUpload(t *testing.T) {
	cs, p := rawServer(t, nil)
	body := &endlessBody{}
	req := newReq(t, "POST", "https://x/upload", nil)
	req.Body = body
	req.ContentLength = -1
	res := goRoundTrip(cs, req)
	syn := p.expectSynStream()
	id := uint32(syn.StreamId)
	p.mustWrite(synReply(id, replyBlock("413", "content-length", strconv.Itoa(0)), true))
	r := recvResult(t, res)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d", r.resp.StatusCode)
	}
	rst := p.expectRst(id)
	if RSTStatus(rst.Status) != StatusCancel {
		t.Fatalf("RST status %d, want CANCEL", rst.Status)
	}
	waitUntil(t, "the stream leaves the table", func() bool { return cs.OpenStreams() == 0 })
	waitUntil(t, "the request body is closed", body.closed.Load)
}

// blockedBody is a request body whose Read blocks until Close.
type blockedBody struct {
	closed chan struct{}
	once   sync.Once
}

func (b *blockedBody) Read([]byte) (int, error) {
	<-b.closed
	return 0, io.ErrClosedPipe
}

func (b *blockedBody) Close() error { b.once.Do(func() { close(b.closed) }); return nil }

// TestResetStreamClosesBlockedRequestBody: when a stream ends abnormally
// (here the peer resets it after replying) while the request body's Read is
// blocked, the body must be closed so that Read returns and the goroutine
// copying it ends (http.RoundTripper: the transport closes the body).
func TestResetStreamClosesBlockedRequestBody(t *testing.T) {
	cs, p := rawServer(t, nil)
	body := &blockedBody{closed: make(chan struct{})}
	defer body.Close()
	req := newReq(t, "POST", "https://x/upload", nil)
	req.Body = body
	req.ContentLength = -1
	res := goRoundTrip(cs, req)
	syn := p.expectSynStream()
	id := uint32(syn.StreamId)
	p.mustWrite(synReply(id, replyBlock("200"), false))
	p.mustWrite(&mspdy.RstStreamFrame{StreamId: mspdy.StreamId(id), Status: mspdy.InternalError})
	r := recvResult(t, res)
	if r.err == nil {
		t.Fatal("a reset response body read as complete")
	}
	select {
	case <-body.closed:
	case <-time.After(rawTimeout):
		t.Fatal("the request body of a reset stream was never closed; its reader is stuck")
	}
}

// TestUpgradeRefusedSendsWholeBody: an upgrade request with a body that the
// peer answers without switching (200) must still send its whole body
// before FIN: a FIN that overtakes the body makes a cut body look complete.
func TestUpgradeRefusedSendsWholeBody(t *testing.T) {
	cs, p := rawServer(t, nil)
	pr, pw := io.Pipe()
	req := newReq(t, "POST", "https://x/up", nil)
	req.Body = pr
	req.ContentLength = -1
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	type rt struct {
		resp *http.Response
		err  error
	}
	res := make(chan rt, 1)
	go func() {
		resp, err := cs.RoundTrip(req)
		res <- rt{resp, err}
	}()
	syn := p.expectSynStream()
	id := uint32(syn.StreamId)
	p.mustWrite(synReply(id, replyBlock("200"), false))
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.resp.Body.Close()
	// The body is produced only after the response arrived.
	go func() {
		pw.Write([]byte("hello"))
		pw.Close()
	}()
	var got []byte
	for {
		f := p.expect("DATA", func(f mspdy.Frame) bool {
			d, ok := f.(*mspdy.DataFrame)
			return ok && uint32(d.StreamId) == id
		}).(*mspdy.DataFrame)
		got = append(got, f.Data...)
		if f.Flags&mspdy.DataFlagFin != 0 {
			break
		}
	}
	if string(got) != "hello" {
		t.Fatalf("peer got body %q before FIN, want %q", got, "hello")
	}
}
