package spdy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	mspdy "github.com/moby/spdystream/spdy"
)

// These tests put a raw frame-level peer (moby's codec, driven by hand)
// on the other end of a session, where the behaviour under test needs
// control of the wire.

// bigHandler answers /big?n=N with N bytes of the pattern stream.
func bigHandler(t *testing.T) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil {
			t.Errorf("bad n: %v", err)
			return
		}
		io.Copy(w, io.LimitReader(newPattern(), n))
	})
}

// receiveResized reads stream id's DATA from p, checking that the sender
// never exceeds the window the peer grants, while it changes
// SETTINGS_INITIAL_WINDOW_SIZE from init to init/4 and then to 256 KiB. p
// must have sent SETTINGS with init before the stream opened.
func receiveResized(t *testing.T, p *rawPeer, id uint32, total, init int64) {
	t.Helper()
	win := init // the stream's window as the peer grants it
	var got int64
	step := 0
	sawGrow := false
	for {
		f := p.next()
		if f == nil {
			t.Fatalf("connection ended after %d bytes: %v", got, p.rerr)
		}
		switch f := f.(type) {
		case *mspdy.DataFrame:
			if uint32(f.StreamId) != id {
				t.Fatalf("data for stream %d", f.StreamId)
			}
			win -= int64(len(f.Data))
			if win < 0 {
				t.Fatalf("sender overran the window by %d bytes at offset %d (step %d)", -win, got, step)
			}
			if !checkPattern(f.Data, got) {
				t.Fatalf("corrupt data at %d", got)
			}
			got += int64(len(f.Data))
			if f.Flags&mspdy.DataFlagFin != 0 {
				if got != total {
					t.Fatalf("FIN after %d bytes, want %d", got, total)
				}
				if !sawGrow {
					t.Fatal("the grown window was never used")
				}
				return
			}
		case *mspdy.RstStreamFrame, *mspdy.GoAwayFrame:
			t.Fatalf("unexpected %#v", f)
		case *mspdy.PingFrame:
			p.mustWrite(&mspdy.PingFrame{Id: f.Id})
			continue
		default:
			continue
		}
		if win > 0 {
			continue
		}
		// The sender has spent every byte of credit and is blocked: nothing
		// is in flight, so window changes now are exact on both sides.
		switch step {
		case 0:
			// Shrink to init/4: the sender's window goes negative; then
			// grant init: exactly init/4 may follow.
			p.mustWrite(&mspdy.SettingsFrame{FlagIdValues: []mspdy.SettingsFlagIdValue{{Id: mspdy.SettingsInitialWindowSize, Value: uint32(init / 4)}}})
			p.mustWrite(&mspdy.WindowUpdateFrame{StreamId: mspdy.StreamId(id), DeltaWindowSize: uint32(init)})
			win += init/4 - init + init
		case 1:
			// Grow to 256 KiB: the difference may follow with no
			// WINDOW_UPDATE at all.
			p.mustWrite(&mspdy.SettingsFrame{FlagIdValues: []mspdy.SettingsFlagIdValue{{Id: mspdy.SettingsInitialWindowSize, Value: 256 << 10}}})
			win += 256<<10 - init/4
		case 2:
			sawGrow = true
			fallthrough
		default:
			p.mustWrite(&mspdy.WindowUpdateFrame{StreamId: mspdy.StreamId(id), DeltaWindowSize: 100 << 10})
			win += 100 << 10
		}
		step++
	}
}

// TestSettingsWindowResize: the peer changes SETTINGS_INITIAL_WINDOW_SIZE
// mid-stream, smaller then larger; our server applies the difference to the
// open stream and never exceeds the window.
func TestSettingsWindowResize(t *testing.T) {
	const total, init = 1 << 20, 32 << 10
	_, p := rawClient(t, nil, bigHandler(t))
	p.mustWrite(&mspdy.SettingsFrame{FlagIdValues: []mspdy.SettingsFlagIdValue{{Id: mspdy.SettingsInitialWindowSize, Value: init}}})
	// The session window is not under test here: open it wide.
	p.mustWrite(&mspdy.WindowUpdateFrame{StreamId: 0, DeltaWindowSize: 1 << 30})
	p.mustWrite(synStream(1, reqBlock("GET", "/big?n="+strconv.Itoa(total)), true))
	rep := p.expect("SYN_REPLY", func(f mspdy.Frame) bool { _, ok := f.(*mspdy.SynReplyFrame); return ok }).(*mspdy.SynReplyFrame)
	if rep.CFHeader.Flags&mspdy.ControlFlagFin != 0 || rep.Headers.Get(":status") != "200 OK" {
		t.Fatalf("reply %+v", rep)
	}
	receiveResized(t, p, 1, total, init)
}

// TestSettingsWindowResizeUpload is the same check for our client sending
// a request body.
func TestSettingsWindowResizeUpload(t *testing.T) {
	const total, init = 512 << 10, 16 << 10
	cs, p := rawServer(t, nil)
	p.mustWrite(&mspdy.SettingsFrame{FlagIdValues: []mspdy.SettingsFlagIdValue{{Id: mspdy.SettingsInitialWindowSize, Value: init}}})
	p.mustWrite(&mspdy.WindowUpdateFrame{StreamId: 0, DeltaWindowSize: 1 << 30})
	syncPing(t, cs, p) // our client has applied the SETTINGS

	res := goRoundTrip(cs, newReq(t, "PUT", "https://x/up", io.LimitReader(newPattern(), total)))
	syn := p.expectSynStream()
	if syn.StreamId != 1 || syn.Headers.Get("content-length") != "" && syn.Headers.Get("content-length") != strconv.Itoa(total) {
		t.Fatalf("syn %+v", syn)
	}
	receiveResized(t, p, 1, total, init)
	p.mustWrite(synReply(1, replyBlock("200"), true))
	if r := recvResult(t, res); r.err != nil || r.resp.StatusCode != 200 || len(r.body) != 0 {
		t.Fatalf("result %+v", r)
	}
}

// syncPing makes s send a PING and p answer it: every frame p sent before
// has been handled by s when it returns. Every PING p sees meanwhile is
// answered, not only the first: the session's keepalive sends one of its
// own at start (to learn the RTT), which may come first. Other frames that
// arrive meanwhile are dropped.
func syncPing(t *testing.T, s *Session, p *rawPeer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rawTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := s.Ping(ctx)
		done <- err
	}()
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			return
		case f, ok := <-p.frames:
			if !ok {
				t.Fatalf("raw peer: connection ended (%v) during syncPing", p.rerr)
			}
			if pf, ok := f.(*mspdy.PingFrame); ok {
				p.mustWrite(&mspdy.PingFrame{Id: pf.Id})
			}
		}
	}
}

// TestAmahiLikePeer: a peer that keeps SPDY/3's 64 KiB default windows and
// never sends SETTINGS (as amahi/spdy does) downloads several MiB on two
// streams at once. Our server must never have more than 64 KiB outstanding
// per stream or per session; the peer returns credit as it reads.
func TestAmahiLikePeer(t *testing.T) {
	const size = 3 << 20
	const win = 64 << 10
	_, p := rawClient(t, nil, bigHandler(t))
	ids := []uint32{1, 3}
	for _, id := range ids {
		p.mustWrite(synStream(id, reqBlock("GET", "/big?n="+strconv.Itoa(size)), true))
	}
	got := map[uint32]int64{}
	outstanding := map[uint32]int64{}
	var sessOut int64
	finished := 0
	replies := 0
	for finished < len(ids) {
		f := p.next()
		if f == nil {
			t.Fatalf("connection ended: %v", p.rerr)
		}
		switch f := f.(type) {
		case *mspdy.SynReplyFrame:
			replies++
		case *mspdy.DataFrame:
			id := uint32(f.StreamId)
			n := int64(len(f.Data))
			outstanding[id] += n
			sessOut += n
			if outstanding[id] > win {
				t.Fatalf("stream %d: %d bytes outstanding, window %d", id, outstanding[id], win)
			}
			if sessOut > win {
				t.Fatalf("session: %d bytes outstanding, window %d", sessOut, win)
			}
			if !checkPattern(f.Data, got[id]) {
				t.Fatalf("stream %d: corrupt data at %d", id, got[id])
			}
			got[id] += n
			// amahi returns credit for the stream and the session once its
			// handler consumed the data.
			if n > 0 {
				p.mustWrite(&mspdy.WindowUpdateFrame{StreamId: f.StreamId, DeltaWindowSize: uint32(n)})
				p.mustWrite(&mspdy.WindowUpdateFrame{StreamId: 0, DeltaWindowSize: uint32(n)})
				outstanding[id] -= n
				sessOut -= n
			}
			if f.Flags&mspdy.DataFlagFin != 0 {
				if got[id] != size {
					t.Fatalf("stream %d: FIN after %d bytes", id, got[id])
				}
				finished++
			}
		case *mspdy.RstStreamFrame, *mspdy.GoAwayFrame:
			t.Fatalf("unexpected %#v", f)
		}
	}
	if replies != len(ids) {
		t.Fatalf("%d replies", replies)
	}
}

// TestGoAwayReceived: streams above the peer's last-good-stream-id fail
// with ErrGoAway (retryable); those at or below it complete; no new stream
// is opened; the session closes when the last stream ends.
func TestGoAwayReceived(t *testing.T) {
	cs, p := rawServer(t, nil)
	var res []<-chan result
	for i, want := range []uint32{1, 3, 5} {
		res = append(res, goRoundTrip(cs, newReq(t, "GET", "https://x/"+strconv.Itoa(i), nil)))
		if syn := p.expectSynStream(); uint32(syn.StreamId) != want {
			t.Fatalf("stream id %d, want %d", syn.StreamId, want)
		}
	}
	p.mustWrite(&mspdy.GoAwayFrame{LastGoodStreamId: 1, Status: mspdy.GoAwayOK})
	for _, ch := range res[1:] {
		r := recvResult(t, ch)
		if !errors.Is(r.err, ErrGoAway) || !IsRetryable(r.err) {
			t.Fatalf("stream above last-good: %v (retryable %v)", r.err, IsRetryable(r.err))
		}
	}
	if _, err := cs.RoundTrip(newReq(t, "GET", "https://x/new", nil)); !errors.Is(err, ErrGoAway) || !IsRetryable(err) {
		t.Fatalf("new request after GOAWAY: %v", err)
	}
	if !cs.GoingAway() || cs.Err() != nil {
		t.Fatalf("going away %v, err %v", cs.GoingAway(), cs.Err())
	}
	p.mustWrite(synReply(1, replyBlock("200"), false))
	p.mustWrite(dataFrameOf(1, []byte("still served"), true))
	if r := recvResult(t, res[0]); r.err != nil || string(r.body) != "still served" {
		t.Fatalf("stream 1: %q %v", r.body, r.err)
	}
	waitDone(t, cs)
	if !errors.Is(cs.Err(), ErrPeerGoneAway) {
		t.Fatalf("cause %v", cs.Err())
	}
}

// TestShutdownRefusesNewStreams: after our server's Shutdown, a stream the
// peer opens is refused while the open one is still served.
func TestShutdownRefusesNewStreams(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		io.WriteString(w, "late answer")
	})
	ss, p := rawClient(t, nil, h)
	p.mustWrite(synStream(1, reqBlock("GET", "/"), true))
	<-started
	shut := make(chan error, 1)
	go func() { shut <- ss.Shutdown(context.Background()) }()
	ga := p.expectGoAway()
	if ga.LastGoodStreamId != 1 || ga.Status != mspdy.GoAwayOK {
		t.Fatalf("GOAWAY %+v", ga)
	}
	p.mustWrite(synStream(3, reqBlock("GET", "/"), true))
	if rst := p.expectRst(3); rst.Status != mspdy.RefusedStream {
		t.Fatalf("new stream reset with %d, want REFUSED_STREAM", rst.Status)
	}
	close(release)
	var body []byte
	for fin := false; !fin; {
		switch f := p.next().(type) {
		case *mspdy.DataFrame:
			body = append(body, f.Data...)
			fin = f.Flags&mspdy.DataFlagFin != 0
		case *mspdy.SynReplyFrame:
			fin = f.CFHeader.Flags&mspdy.ControlFlagFin != 0
		case *mspdy.RstStreamFrame:
			t.Fatalf("stream 1 reset: %+v", f)
		case nil:
			t.Fatalf("connection ended: %v", p.rerr)
		}
	}
	if string(body) != "late answer" {
		t.Fatalf("body %q", body)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	waitDone(t, ss)
}

// TestPingTimeout: a peer that never answers PING gets the session closed
// with ErrPingTimeout, which a waiting RoundTrip sees.
func TestPingTimeout(t *testing.T) {
	cfg := testConfig()
	cfg.PingInterval = 20 * time.Millisecond
	cfg.PingTimeout = 100 * time.Millisecond
	cs, p := rawServer(t, cfg)
	res := goRoundTrip(cs, newReq(t, "GET", "https://x/", nil))
	// Read everything, answer nothing.
	frames := p.drain()
	r := recvResult(t, res)
	if r.err == nil || !errors.Is(r.err, ErrPingTimeout) {
		t.Fatalf("RoundTrip: %v, want ErrPingTimeout", r.err)
	}
	if !errors.Is(cs.Err(), ErrPingTimeout) {
		t.Fatalf("session cause %v", cs.Err())
	}
	var pings, syns int
	for _, f := range frames {
		switch f.(type) {
		case *mspdy.PingFrame:
			pings++
		case *mspdy.SynStreamFrame:
			syns++
		}
	}
	if pings == 0 || syns != 1 {
		t.Fatalf("peer saw %d pings and %d SYN_STREAMs", pings, syns)
	}
	if _, err := cs.RoundTrip(newReq(t, "GET", "https://x/", nil)); !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("RoundTrip on a dead session: %v", err)
	}
}

// TestPushRefused: a pushed (unidirectional) stream is refused and the
// session goes on.
func TestPushRefused(t *testing.T) {
	cs, p := rawServer(t, nil)
	res := goRoundTrip(cs, newReq(t, "GET", "https://x/", nil))
	p.expectSynStream()
	push := synStream(2, http.Header{":scheme": {"https"}, ":host": {"x"}, ":path": {"/pushed"}}, false)
	push.AssociatedToStreamId = 1
	push.CFHeader.Flags = mspdy.ControlFlagUnidirectional
	p.mustWrite(push)
	if rst := p.expectRst(2); rst.Status != mspdy.RefusedStream {
		t.Fatalf("push reset with %d", rst.Status)
	}
	p.mustWrite(synReply(1, replyBlock("200 OK", "content-length", "2"), false))
	p.mustWrite(dataFrameOf(1, []byte("ok"), true))
	if r := recvResult(t, res); r.err != nil || string(r.body) != "ok" || r.resp.ContentLength != 2 {
		t.Fatalf("%q %v", r.body, r.err)
	}
	if cs.Err() != nil {
		t.Fatal(cs.Err())
	}
}

// TestRawPeerResetMidBody: RST_STREAM or a dropped connection in the middle
// of a body is an error from Read, never EOF.
func TestRawPeerResetMidBody(t *testing.T) {
	for _, how := range []string{"rst", "close"} {
		t.Run(how, func(t *testing.T) {
			cs, p := rawServer(t, nil)
			resp := make(chan *http.Response, 1)
			errc := make(chan error, 1)
			go func() {
				r, err := cs.RoundTrip(newReq(t, "GET", "https://x/", nil))
				resp <- r
				errc <- err
			}()
			p.expectSynStream()
			p.mustWrite(synReply(1, replyBlock("200"), false))
			p.mustWrite(dataFrameOf(1, make([]byte, 1000), false))
			r := <-resp
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			defer r.Body.Close()
			if _, err := io.ReadFull(r.Body, make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			if how == "rst" {
				p.mustWrite(&mspdy.RstStreamFrame{StreamId: 1, Status: mspdy.InternalError})
			} else {
				p.close()
			}
			n, err := r.Body.Read(make([]byte, 10))
			if n != 0 || err == nil || err == io.EOF {
				t.Fatalf("read after %s: %d, %v", how, n, err)
			}
			var se *StreamError
			if how == "rst" && (!errors.As(err, &se) || !se.Remote || se.Status != StatusInternalError) {
				t.Fatalf("error %v, want peer INTERNAL_ERROR reset", err)
			}
			if how == "close" && !errors.Is(err, ErrSessionClosed) {
				t.Fatalf("error %v, want ErrSessionClosed", err)
			}
		})
	}
}

// TestRawContentLengthMismatch: a response body shorter or longer than its
// Content-Length is an error.
func TestRawContentLengthMismatch(t *testing.T) {
	t.Run("short", func(t *testing.T) {
		cs, p := rawServer(t, nil)
		res := goRoundTrip(cs, newReq(t, "GET", "https://x/", nil))
		p.expectSynStream()
		p.mustWrite(synReply(1, replyBlock("200", "content-length", "100"), false))
		p.mustWrite(dataFrameOf(1, make([]byte, 50), true))
		r := recvResult(t, res)
		if !errors.Is(r.err, ErrBodyLength) || !errors.Is(r.err, io.ErrUnexpectedEOF) {
			t.Fatalf("short body: %d bytes, %v", len(r.body), r.err)
		}
	})
	t.Run("long", func(t *testing.T) {
		cs, p := rawServer(t, nil)
		res := goRoundTrip(cs, newReq(t, "GET", "https://x/", nil))
		p.expectSynStream()
		p.mustWrite(synReply(1, replyBlock("200", "content-length", "10"), false))
		p.mustWrite(dataFrameOf(1, make([]byte, 20), true))
		if rst := p.expectRst(1); rst.Status != mspdy.ProtocolError {
			t.Fatalf("reset status %d", rst.Status)
		}
		if r := recvResult(t, res); r.err == nil {
			t.Fatalf("long body read cleanly: %d bytes", len(r.body))
		}
	})
	t.Run("request short", func(t *testing.T) {
		got := make(chan error, 1)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ContentLength != 10 {
				t.Errorf("ContentLength %d", r.ContentLength)
			}
			_, err := io.ReadAll(r.Body)
			got <- err
		})
		_, p := rawClient(t, nil, h)
		p.mustWrite(synStream(1, reqBlock("POST", "/", "content-length", "10"), false))
		p.mustWrite(dataFrameOf(1, make([]byte, 5), true))
		if err := <-got; !errors.Is(err, ErrBodyLength) {
			t.Fatalf("handler read: %v, want ErrBodyLength", err)
		}
	})
}

// TestNoBodyOnTheWire: HEAD, 204 and 304 answers carry no DATA payload.
func TestNoBodyOnTheWire(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(204)
		case "/304":
			w.WriteHeader(304)
		}
		w.Write([]byte("body that must not be sent"))
	})
	_, p := rawClient(t, nil, h)
	reqs := map[uint32]string{1: "HEAD /", 3: "GET /204", 5: "GET /304", 7: "GET /"}
	for _, id := range []uint32{1, 3, 5, 7} {
		var method, path string
		for i, c := range reqs[id] {
			if c == ' ' {
				method, path = reqs[id][:i], reqs[id][i+1:]
			}
		}
		p.mustWrite(synStream(id, reqBlock(method, path), true))
	}
	bodies := map[uint32]int{}
	done := map[uint32]bool{}
	for len(done) < len(reqs) {
		switch f := p.next().(type) {
		case *mspdy.SynReplyFrame:
			if f.CFHeader.Flags&mspdy.ControlFlagFin != 0 {
				done[uint32(f.StreamId)] = true
			}
		case *mspdy.DataFrame:
			bodies[uint32(f.StreamId)] += len(f.Data)
			if f.Flags&mspdy.DataFlagFin != 0 {
				done[uint32(f.StreamId)] = true
			}
		case *mspdy.RstStreamFrame:
			t.Fatalf("reset %+v", f)
		case nil:
			t.Fatalf("connection ended: %v", p.rerr)
		}
	}
	for _, id := range []uint32{1, 3, 5} {
		if bodies[id] != 0 {
			t.Errorf("%s: %d body bytes on the wire", reqs[id], bodies[id])
		}
	}
	if bodies[7] != len("body that must not be sent") {
		t.Errorf("GET /: %d bytes", bodies[7])
	}
}

// TestFlowControlOverrun: a peer that sends more than the stream window
// gets that stream reset with FLOW_CONTROL_ERROR; the session lives.
func TestFlowControlOverrun(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release })
	cfg := testConfig()
	cfg.StreamWindow = 64 << 10
	cfg.SessionWindow = 1 << 20
	ss, p := rawClient(t, cfg, h)
	p.mustWrite(synStream(1, reqBlock("POST", "/"), false))
	p.mustWrite(dataFrameOf(1, make([]byte, 64<<10), false))
	p.mustWrite(dataFrameOf(1, make([]byte, 1), false))
	if rst := p.expectRst(1); rst.Status != mspdy.FlowControlError {
		t.Fatalf("status %d, want FLOW_CONTROL_ERROR", rst.Status)
	}
	pingAlive(t, p)
	if ss.Err() != nil {
		t.Fatal(ss.Err())
	}
}

// pingAlive checks that the session behind p still answers PING.
func pingAlive(t *testing.T, p *rawPeer) {
	t.Helper()
	const id = 12345 // odd: a client's ping, which our server echoes
	p.mustWrite(&mspdy.PingFrame{Id: id})
	p.expect("PING echo", func(f mspdy.Frame) bool {
		pf, ok := f.(*mspdy.PingFrame)
		return ok && pf.Id == id
	})
}

// incompressible returns n random bytes, so a header holding them stays
// about n bytes long after compression.
func incompressible(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return string(bytes.ToValidUTF8(b, []byte("x")))
}

// TestMalformedFrames feeds broken frames to our server: each is answered
// with RST_STREAM or GOAWAY PROTOCOL_ERROR as the spec says, never a panic.
func TestMalformedFrames(t *testing.T) {
	u32 := func(v ...uint32) []byte {
		b := make([]byte, 4*len(v))
		for i, x := range v {
			binary.BigEndian.PutUint32(b[4*i:], x)
		}
		return b
	}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	type step func(p *rawPeer) error
	raw := func(b []byte) step { return func(p *rawPeer) error { return p.writeRaw(b) } }
	frame := func(f mspdy.Frame) step { return func(p *rawPeer) error { return p.write(f) } }
	get := func(id uint32) step { return frame(synStream(id, reqBlock("GET", "/"), true)) }

	cases := []struct {
		name  string
		steps []step
		// Either a session error (GOAWAY PROTOCOL_ERROR, session closed)
		// or a stream reset with rst on rstID (session lives on).
		goAway bool
		rstID  uint32
		rst    mspdy.RstStreamStatus
	}{
		{name: "bad version", goAway: true,
			steps: []step{raw(cat(ctrlHeader(2, mspdy.TypePing, 0, 4), u32(1)))}},
		{name: "rst_stream short", goAway: true,
			steps: []step{raw(cat(ctrlHeader(3, mspdy.TypeRstStream, 0, 4), u32(1)))}},
		{name: "ping long", goAway: true,
			steps: []step{raw(cat(ctrlHeader(3, mspdy.TypePing, 0, 8), u32(1, 2)))}},
		{name: "settings odd length", goAway: true,
			steps: []step{raw(cat(ctrlHeader(3, mspdy.TypeSettings, 0, 6), u32(0), []byte{0, 0}))}},
		{name: "settings count beyond length", goAway: true,
			steps: []step{raw(cat(ctrlHeader(3, mspdy.TypeSettings, 0, 12), u32(5, 4, 100)))}},
		{name: "window_update zero delta", goAway: true,
			steps: []step{raw(cat(ctrlHeader(3, mspdy.TypeWindowUpdate, 0, 8), u32(0, 0)))}},
		{name: "syn_stream too short", goAway: true,
			steps: []step{raw(cat(ctrlHeader(3, mspdy.TypeSynStream, 0, 6), u32(1), []byte{0, 0}))}},
		// Over the header limits costs the stream only: the block is
		// inflated to its end, so the compression context stays in step.
		{name: "syn_stream header block too big", rstID: 1, rst: mspdy.FrameTooLarge,
			steps: []step{frame(synStream(1, reqBlock("GET", "/", "x-big", incompressible(8<<10)), true))}},
		{name: "syn_stream too many headers", rstID: 1, rst: mspdy.FrameTooLarge,
			steps: []step{frame(synStream(1, reqBlock("GET", "/", manyHeaders(12)...), true))}},
		{name: "syn_stream garbage header block", goAway: true,
			steps: []step{raw(cat(ctrlHeader(3, mspdy.TypeSynStream, 1, 10+16), u32(1, 0), []byte{0, 0}, bytes.Repeat([]byte{0xde, 0xad}, 8)))}},
		{name: "syn_stream non-increasing id", goAway: true,
			steps: []step{get(5), get(3)}},
		{name: "syn_stream repeated id", goAway: true,
			steps: []step{get(1), get(1)}},
		{name: "syn_stream even id to server", goAway: true,
			steps: []step{get(2)}},
		{name: "data on stream 0", goAway: true,
			steps: []step{raw(cat(u32(0, 4), []byte("abcd")))}},
		{name: "data beyond session window", goAway: true,
			steps: []step{get(1), raw(cat(u32(1, 1<<20+1), make([]byte, 10)))}},
		{name: "data unknown stream", rstID: 99, rst: mspdy.InvalidStream,
			steps: []step{raw(cat(u32(99, 4), []byte("abcd")))}},
		{name: "data never opened stream of ours", rstID: 2, rst: mspdy.InvalidStream,
			steps: []step{raw(cat(u32(2, 4), []byte("abcd")))}},
		{name: "syn_stream without :path", rstID: 1, rst: mspdy.ProtocolError,
			steps: []step{frame(synStream(1, http.Header{":method": {"GET"}, ":version": {"HTTP/1.1"}}, true))}},
		{name: "data after fin", rstID: 1, rst: mspdy.StreamAlreadyClosed,
			steps: []step{frame(synStream(1, reqBlock("GET", "/block"), true)), raw(cat(u32(1, 4), []byte("abcd")))}},
		{name: "unknown control frame ignored",
			steps: []step{raw(cat(ctrlHeader(3, 0xff, 0, 4), u32(7)))}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			release := make(chan struct{})
			defer close(release)
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/block" {
					<-release
				}
			})
			cfg := testConfig()
			cfg.MaxHeaderBytes = 4096
			cfg.MaxHeaderCount = 16
			cfg.StreamWindow = 64 << 10
			cfg.SessionWindow = 1 << 20
			ss, p := rawClient(t, cfg, h)
			for _, s := range c.steps {
				if err := s(p); err != nil {
					t.Fatalf("writing: %v", err)
				}
			}
			switch {
			case c.goAway:
				ga := p.expectGoAway()
				if ga.Status != mspdy.GoAwayProtocolError {
					t.Fatalf("GOAWAY status %d, want PROTOCOL_ERROR", ga.Status)
				}
				p.drain()
				waitDone(t, ss)
				if !errors.Is(ss.Err(), ErrProtocol) {
					t.Fatalf("session cause %v, want ErrProtocol", ss.Err())
				}
			case c.rstID != 0:
				if rst := p.expectRst(c.rstID); rst.Status != c.rst {
					t.Fatalf("RST status %d, want %d", rst.Status, c.rst)
				}
				pingAlive(t, p)
			default:
				pingAlive(t, p)
			}
		})
	}
}

// TestMalformedFramesToClient covers what only a client can receive.
func TestMalformedFramesToClient(t *testing.T) {
	t.Run("syn_reply unknown stream", func(t *testing.T) {
		cs, p := rawServer(t, nil)
		p.mustWrite(synReply(5, replyBlock("200"), true))
		if rst := p.expectRst(5); rst.Status != mspdy.InvalidStream {
			t.Fatalf("status %d", rst.Status)
		}
		pingAlive2(t, p)
		if cs.Err() != nil {
			t.Fatal(cs.Err())
		}
	})
	t.Run("double syn_reply", func(t *testing.T) {
		cs, p := rawServer(t, nil)
		res := goRoundTrip(cs, newReq(t, "GET", "https://x/", nil))
		p.expectSynStream()
		p.mustWrite(synReply(1, replyBlock("200"), false))
		p.mustWrite(synReply(1, replyBlock("200"), false))
		if rst := p.expectRst(1); rst.Status != mspdy.StreamInUse {
			t.Fatalf("status %d", rst.Status)
		}
		if r := recvResult(t, res); r.err == nil {
			t.Fatal("stream reset after a double reply read cleanly")
		}
	})
	t.Run("bad status", func(t *testing.T) {
		cs, p := rawServer(t, nil)
		res := goRoundTrip(cs, newReq(t, "GET", "https://x/", nil))
		p.expectSynStream()
		p.mustWrite(synReply(1, replyBlock("abc"), false))
		if rst := p.expectRst(1); rst.Status != mspdy.ProtocolError {
			t.Fatalf("status %d", rst.Status)
		}
		if r := recvResult(t, res); !errors.Is(r.err, ErrProtocol) {
			t.Fatalf("RoundTrip: %v", r.err)
		}
	})
	t.Run("syn_stream odd id to client", func(t *testing.T) {
		cs, p := rawServer(t, nil)
		p.mustWrite(synStream(1, reqBlock("GET", "/"), true))
		ga := p.expectGoAway()
		if ga.Status != mspdy.GoAwayProtocolError {
			t.Fatalf("GOAWAY status %d", ga.Status)
		}
		waitDone(t, cs)
	})
	t.Run("truncated frame", func(t *testing.T) {
		cs, p := rawServer(t, nil)
		p.writeRaw(cat2(ctrlHeader(3, mspdy.TypeSynReply, 0, 100), make([]byte, 10)))
		p.conn.(interface{ CloseWrite() error }).CloseWrite()
		waitDone(t, cs)
		if cs.Err() == nil {
			t.Fatal("no cause")
		}
	})
}

func cat2(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

// pingAlive2 checks that our client behind p answers an (even) server PING.
func pingAlive2(t *testing.T, p *rawPeer) {
	t.Helper()
	const id = 1000
	p.mustWrite(&mspdy.PingFrame{Id: id})
	p.expect("PING echo", func(f mspdy.Frame) bool {
		pf, ok := f.(*mspdy.PingFrame)
		return ok && pf.Id == id
	})
}

// TestRequestMapping checks the SYN_STREAM our client sends: pseudo-headers,
// lowercase names, multi-values, hop-by-hop headers dropped; and the
// SYN_REPLY our server sends for a handler that sets hop-by-hop headers.
func TestRequestMapping(t *testing.T) {
	cs, p := rawServer(t, nil)
	req := newReq(t, "POST", "https://origin.example:8443/a/b?c=d&e=f", bytes.NewReader([]byte("body")))
	req.Header.Set("Connection", "keep-alive, X-Conn-Named")
	req.Header.Set("X-Conn-Named", "drop me")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("Proxy-Connection", "keep-alive")
	req.Header.Set("Transfer-Encoding", "chunked")
	req.Header.Set("Upgrade", "h2c") // not an upgrade request: no Connection: upgrade
	req.Header.Add("X-Multi", "one")
	req.Header.Add("X-Multi", "two")
	req.Header.Set("User-Agent", "test")
	res := goRoundTrip(cs, req)
	syn := p.expectSynStream()
	h := syn.Headers
	for k, want := range map[string]string{":method": "POST", ":path": "/a/b?c=d&e=f", ":version": "HTTP/1.1", ":host": "origin.example:8443", ":scheme": "https", "content-length": "4", "user-agent": "test"} {
		if got := h.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	// (moby's parser rejects names that are not lowercase on the wire, and
	// hands them back canonicalised.)
	if got := h.Values("X-Multi"); len(got) != 2 || got[0] != "one" || got[1] != "two" {
		t.Errorf("x-multi %q", got)
	}
	for k := range h {
		switch strings.ToLower(k) {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "x-conn-named", "upgrade", "host":
			t.Errorf("hop-by-hop header %q sent", k)
		}
	}
	if syn.CFHeader.Flags&mspdy.ControlFlagFin != 0 {
		t.Fatal("SYN_STREAM with FIN for a request with a body")
	}
	p.mustWrite(synReply(1, replyBlock("201", "x-reply", "r"), true))
	r := recvResult(t, res)
	if r.err != nil || r.resp.StatusCode != 201 || r.resp.Header.Get("X-Reply") != "r" || r.resp.Status != "201 Created" {
		t.Fatalf("%+v", r)
	}

	// Our server: hop-by-hop headers a handler sets stay off the wire; the
	// request it sees carries Host, RemoteAddr, ContentLength.
	seen := make(chan *http.Request, 1)
	h2 := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r
		w.Header().Set("Connection", "close")
		w.Header().Set("Keep-Alive", "timeout=1")
		w.Header().Set("Transfer-Encoding", "chunked")
		w.Header().Set("X-Fine", "yes")
		io.WriteString(w, "hi")
	})
	_, p2 := rawClient(t, nil, h2)
	p2.mustWrite(synStream(1, reqBlock("PUT", "/x?y=1", "content-length", "3"), false))
	p2.mustWrite(dataFrameOf(1, []byte("abc"), true))
	rep := p2.expect("SYN_REPLY", func(f mspdy.Frame) bool { _, ok := f.(*mspdy.SynReplyFrame); return ok }).(*mspdy.SynReplyFrame)
	for k := range rep.Headers {
		switch strings.ToLower(k) {
		case "connection", "keep-alive", "transfer-encoding":
			t.Errorf("server sent hop-by-hop header %q", k)
		}
	}
	if rep.Headers.Get("x-fine") != "yes" || rep.Headers.Get(":status") != "200 OK" || rep.Headers.Get(":version") != "HTTP/1.1" {
		t.Errorf("reply headers %v", rep.Headers)
	}
	sr := <-seen
	if sr.Method != "PUT" || sr.Host != "example.com" || sr.URL.Path != "/x" || sr.URL.RawQuery != "y=1" || sr.ContentLength != 3 || sr.RemoteAddr == "" || sr.RequestURI != "/x?y=1" {
		t.Errorf("server request %s %s %s cl=%d remote=%q uri=%q", sr.Method, sr.Host, sr.URL, sr.ContentLength, sr.RemoteAddr, sr.RequestURI)
	}
}

// TestServerRefusesBeyondMaxStreams: a peer that ignores our
// MAX_CONCURRENT_STREAMS has the excess streams refused.
func TestServerRefusesBeyondMaxStreams(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release })
	cfg := testConfig()
	cfg.MaxConcurrentStreams = 2
	_, p := rawClient(t, cfg, h)
	for _, id := range []uint32{1, 3, 5} {
		p.mustWrite(synStream(id, reqBlock("GET", "/"), true))
	}
	if rst := p.expectRst(5); rst.Status != mspdy.RefusedStream {
		t.Fatalf("status %d", rst.Status)
	}
	pingAlive(t, p)
}

// TestWriteTimeout: a peer that stops reading cannot wedge the session: it
// closes after WriteTimeout and the blocked handler's write fails.
func TestWriteTimeout(t *testing.T) {
	handlerErr := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for {
			if _, err := w.Write(benchChunk); err != nil {
				handlerErr <- err
				return
			}
		}
	})
	cfg := testConfig()
	cfg.WriteTimeout = 200 * time.Millisecond
	a, b := tcpPair(t)
	defer a.Close()
	ss, err := NewServer(b, cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ss.Close()
		<-ss.readerDone
		<-ss.writerDone
		ss.handlersWG.Wait()
	})
	// A peer that grants huge windows, opens a stream, and never reads.
	fr, err := mspdy.NewFramer(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []mspdy.Frame{
		&mspdy.SettingsFrame{FlagIdValues: []mspdy.SettingsFlagIdValue{{Id: mspdy.SettingsInitialWindowSize, Value: 1 << 30}}},
		&mspdy.WindowUpdateFrame{StreamId: 0, DeltaWindowSize: 1 << 30},
		synStream(1, reqBlock("GET", "/"), true),
	} {
		if err := fr.WriteFrame(f); err != nil {
			t.Fatal(err)
		}
	}
	waitDone(t, ss)
	if !errors.Is(ss.Err(), os.ErrDeadlineExceeded) {
		t.Fatalf("cause %v, want a write deadline", ss.Err())
	}
	expectFailure(t, handlerErr, "handler write succeeded", "handler still blocked after the session closed")
}

// TestUpgradeLimits: with MaxUpgradedStreams 0 our server answers an upgrade
// with 503 and our client refuses a 101.
func TestUpgradeLimits(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusSwitchingProtocols)
		if _, _, err := w.(http.Hijacker).Hijack(); !errors.Is(err, ErrTooManyUpgrades) {
			t.Errorf("hijack of a refused upgrade: %v, want ErrTooManyUpgrades", err)
		}
	})
	upgradeReq := func() *http.Request {
		req := newReq(t, "GET", "https://x/ws", nil)
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Connection", "Upgrade")
		return req
	}
	scfg := testConfig()
	scfg.MaxUpgradedStreams = -1 // none
	cs, _ := pair(t, h, nil, scfg)
	resp, err := cs.RoundTrip(upgradeReq())
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", resp.StatusCode)
	}

	ccfg := testConfig()
	ccfg.MaxUpgradedStreams = -1 // none
	cs2, p := rawServer(t, ccfg)
	res := goRoundTrip(cs2, upgradeReq())
	p.expectSynStream()
	p.mustWrite(synReply(1, replyBlock("101", "upgrade", "websocket"), false))
	p.expectRst(1)
	if r := recvResult(t, res); !errors.Is(r.err, ErrTooManyUpgrades) {
		t.Fatalf("RoundTrip: %v, want ErrTooManyUpgrades", r.err)
	}
}

// manyHeaders returns n name/value pairs for reqBlock.
func manyHeaders(n int) []string {
	var kv []string
	for i := range n {
		kv = append(kv, "x-h"+strconv.Itoa(i), "v")
	}
	return kv
}
