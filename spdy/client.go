package spdy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// RoundTrip sends req on a new stream and returns the response, with
// http.RoundTripper semantics. Request and response bodies stream. When the
// peer's SETTINGS_MAX_CONCURRENT_STREAMS is reached, RoundTrip waits for a
// free stream (as long as req's context allows). Cancelling the context, or
// closing the response body before EOF, resets the stream (RST_STREAM
// CANCEL). A response body cut short by a reset or a dead session returns an
// error from Read, never io.EOF.
//
// A request with an Upgrade header keeps its stream open after the request
// body; if the answer is 101 Switching Protocols, the response Body is an
// io.ReadWriteCloser carrying the new protocol's bytes both ways.
func (s *Session) RoundTrip(req *http.Request) (*http.Response, error) {
	// The body is closed once, by whichever of us and the body sender
	// gets there first (http.RoundTripper: the transport closes it).
	closeBody := func() {}
	if req.Body != nil {
		closeBody = sync.OnceFunc(func() { req.Body.Close() })
	}
	resp, err := s.roundTrip(req, closeBody)
	if err != nil {
		closeBody()
	}
	return resp, err
}

func (s *Session) roundTrip(req *http.Request, closeBody func()) (*http.Response, error) {
	if req.URL == nil {
		return nil, errors.New("spdy: request has no URL")
	}
	ctx := req.Context()
	upgrade := isUpgrade(req.Header)
	body := req.Body
	if body == http.NoBody {
		body = nil
	}
	block := blockBufs.Get().(*blockWriter)
	requestBlock(block, req, upgrade, s.cfg.PeerTrailers)
	if err := block.checkLimits(s.limits); err != nil {
		putBlock(block)
		return nil, fmt.Errorf("request headers: %w", err)
	}
	st, err := s.openStream(ctx, block, body == nil && !upgrade, req.Method == http.MethodHead)
	if err != nil {
		putBlock(block)
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { st.resetLocal(StatusCancel, context.Cause(ctx)) })
	var bodySent chan struct{} // closed when sendBody returns
	if body != nil {
		bodySent = st.startBody(body, closeBody, req.ContentLength, req.Trailer, !upgrade)
	}
	if err := st.awaitReply(ctx, stop); err != nil {
		return nil, err
	}
	resp, err := st.response(req)
	if err != nil {
		stop()
		st.resetLocal(StatusProtocolError, err)
		return nil, err
	}
	if resp.StatusCode == http.StatusSwitchingProtocols && upgrade {
		if err := s.markUpgraded(st); err != nil {
			stop()
			st.resetLocal(StatusRefusedStream, err)
			return nil, err
		}
		// SPDY carries no Connection header; HTTP/1.1 clients of the
		// response (reverse proxies, WebSocket libraries) need it back.
		resp.Header.Set("Connection", "Upgrade")
		resp.Body = &upgradeBody{st: st, stop: stop}
		return resp, nil
	}
	if upgrade {
		// No switch: our half of the stream ends after the request body.
		go func() {
			if bodySent != nil {
				<-bodySent
			}
			st.closeWrite()
		}()
	}
	resp.Body = &responseBody{st: st, stop: stop, resp: resp}
	return resp, nil
}

// startBody sends a request body in its own goroutine and returns a channel
// closed when it is done. With fin, FIN follows the body.
func (st *stream) startBody(body io.Reader, closeBody func(), declared int64, trailer http.Header, fin bool) chan struct{} {
	// A stream that fails closes the body, so that a Read blocked in
	// sendBody returns (in its own goroutine: Close may wait for it).
	st.whenFinished(func() {
		st.mu.Lock()
		failed := st.err != nil
		st.mu.Unlock()
		if failed {
			go closeBody()
		}
	})
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		st.sendBody(body, closeBody, declared, trailer, fin)
	}()
	return sent
}

// awaitReply waits for SYN_REPLY; stop releases the context's hook.
func (st *stream) awaitReply(ctx context.Context, stop func() bool) error {
	select {
	case <-st.reply:
		return nil
	case <-st.done:
		select {
		case <-st.reply:
			return nil
		default:
			stop()
			return st.failure(ctx)
		}
	case <-ctx.Done():
		stop()
		st.resetLocal(StatusCancel, context.Cause(ctx))
		return ctx.Err()
	}
}

// response builds the http.Response of SYN_REPLY, without its Body.
func (st *stream) response(req *http.Request) (*http.Response, error) {
	st.mu.Lock()
	block := st.replyHdr
	st.mu.Unlock()
	pseudo, h := splitHeaders(block)
	code, err := parseStatus(pseudo.status)
	if err != nil {
		return nil, err
	}
	proto, major, minor := parseVersion(pseudo.version)
	resp := &http.Response{
		Status:        statusLine(code),
		StatusCode:    code,
		Proto:         proto,
		ProtoMajor:    major,
		ProtoMinor:    minor,
		Header:        h,
		Trailer:       announced(h),
		ContentLength: contentLength(h),
		Request:       req,
	}
	noBody := req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified
	if noBody && resp.ContentLength < 0 {
		resp.ContentLength = 0
	}
	return resp, nil
}

// failure explains why a stream ended before its reply.
func (st *stream) failure(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	st.mu.Lock()
	err := st.err
	st.mu.Unlock()
	if err == nil {
		err = fmt.Errorf("%w: stream %d ended without a reply", ErrProtocol, st.id)
	}
	return err
}

// openStream waits for a free stream slot (up to StreamQueueTimeout), then
// sends SYN_STREAM with block (which it takes over on success).
func (s *Session) openStream(ctx context.Context, block *blockWriter, fin, head bool) (*stream, error) {
	var queued <-chan time.Time
	s.mu.Lock()
	for {
		if s.closing != nil {
			// Closed, or closing (its GOAWAY may still be on its way):
			// fail with why.
			err := s.closing
			s.mu.Unlock()
			return nil, notProcessed{sessionClosedError(err)}
		}
		if s.goAwayRecv {
			s.mu.Unlock()
			return nil, ErrGoAway
		}
		if s.goAwaySent {
			s.mu.Unlock()
			return nil, notProcessed{sessionClosedError(ErrShutdown)}
		}
		if !s.client {
			s.mu.Unlock()
			return nil, errors.New("spdy: RoundTrip on a server session")
		}
		limit := min(s.peerMaxStreams, s.cfg.MaxConcurrentStreams)
		if uint32(s.localStreams) < limit {
			break
		}
		wait := s.slotFree
		s.mu.Unlock()
		if queued == nil && s.cfg.StreamQueueTimeout > 0 {
			t := time.NewTimer(s.cfg.StreamQueueTimeout)
			defer t.Stop()
			queued = t.C
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-queued:
			return nil, notProcessed{fmt.Errorf("%w: all %d streams busy for %s", ErrStreamQueueTimeout, limit, s.cfg.StreamQueueTimeout)}
		}
		s.mu.Lock()
	}
	if s.nextID > 1<<31-1 {
		// Stream ids are spent: this session can open no more.
		s.goAwaySent = true
		s.mu.Unlock()
		go s.Shutdown(context.Background())
		return nil, notProcessed{sessionClosedError(errors.New("spdy: stream ids exhausted"))}
	}
	id := s.nextID
	s.nextID += 2
	priority := priorityOf(ctx)
	st := s.newStreamLocked(id, priority)
	st.state.set(stLocalFin, fin)
	st.head = head
	s.localStreams++
	syn := writeReq{hdr: headerFrame{typ: typeSynStream, id: id, pri: priority, block: block}}
	if fin {
		syn.hdr.flags = flagFin
	}
	var grant writeReq
	if g := s.grantStart(st); g > 0 {
		grant.ctrl.n = uint8(len(appendWindowUpdate(grant.ctrl.b[:0], id, g)))
	}
	// Queue SYN_STREAM while holding s.mu so stream ids reach the wire in
	// order, and the window for the response right behind it; unless the
	// writer refuses frames, as enqueue would: it stopped, or the peer
	// does not read (the session closes). With nothing queued and nobody
	// writing, write them here instead (writer.go's direct writes): wlock,
	// taken under s.mu, keeps a stream opened after this one behind it.
	// Not for a request whose context can end: a write the connection
	// holds up would keep RoundTrip from returning when it ends.
	s.wmu.Lock()
	refused := s.controlRefusedLocked()
	direct := false
	if refused == nil {
		if direct = ctx.Done() == nil && s.tryDirectLocked(); !direct {
			s.ctrlQ.push(syn)
			if grant.ctrl.n > 0 {
				s.ctrlQ.push(grant)
			}
		}
	}
	s.wmu.Unlock()
	s.mu.Unlock()
	if refused != nil {
		// The stream never reached the queue: it goes, with its slot
		// and budget, and the request may go to another session.
		s.removeStream(st)
		if refused == errControlQueueFull {
			go s.closeWith(refused, false, 0)
		}
		return nil, notProcessed{sessionClosedError(refused)}
	}
	if direct {
		g := &grant
		if grant.ctrl.n == 0 {
			g = nil
		}
		// A failed write closes the session, which fails the stream
		// with the cause: as if the writer goroutine had failed.
		_ = s.writeDirect(&syn, g)
	} else {
		signal(s.wsignal)
	}
	s.streamsTot.Add(1)
	return st, nil
}

func (s *Session) markUpgraded(st *stream) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.upgraded >= max(s.cfg.MaxUpgradedStreams, 0) {
		return ErrTooManyUpgrades
	}
	if s.streams[st.id] == st {
		st.tab.upgraded = true
		s.upgraded++
	}
	return nil
}

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// bulkBody: a request body of at least this declared length is an upload
// (sendBody).
const bulkBody = 1 << 20

// sendBody copies a request body onto the stream. A body that fails, or
// that disagrees with its declared length, resets the stream: the peer must
// not take a cut body for a whole one. With fin, FIN follows the body.
func (st *stream) sendBody(body io.Reader, closeBody func(), declared int64, trailer http.Header, fin bool) {
	defer closeBody()
	// An upload (a body of known length, at least bulkBody) is sent in
	// frames of maxDataFrame, each filled from as many reads as that takes:
	// a read gives what one TLS record of the client's held, 16 KiB, and a
	// frame of 16 KiB with its header took two TLS records (16 KiB and 8
	// bytes) and two writes towards the agent, where a full frame takes four
	// full ones. Any other body goes on as each read gives it (a stream
	// whose reader waits for what it has sent must not wait for more).
	bulk := declared >= bulkBody && maxFrameFor(st.priority) == maxDataFrame
	// frame is buf with room in front: an upload's frames go to the
	// connection from it, their headers in the room (stream.writeRoom).
	var frame []byte
	room := 0
	if bulk {
		b := recvBufPool.Get().(*[recvBufferSize]byte)
		defer recvBufPool.Put(b)
		frame, room = b[:FrameRoom+maxDataFrame], FrameRoom
	} else {
		bp := copyBufPool.Get().(*[]byte)
		defer copyBufPool.Put(bp)
		frame = *bp
	}
	buf := frame[room:]
	var sent int64
	for {
		want := len(buf)
		if bulk {
			// Up to the declared end; past it (trailers follow, so the
			// last frame had no FIN), one byte's read finds the EOF, or
			// the excess that resets the stream.
			want = int(min(int64(want), max(declared-sent, 1)))
		}
		n, rerr := 0, error(nil)
		for n < want && rerr == nil {
			// The body's idle watchdog counts from the last bytes read.
			st.mu.Lock()
			st.bodyWaitSince = st.s.clock.Load()
			st.mu.Unlock()
			var m int
			m, rerr = body.Read(buf[n:want])
			n += m
			if !bulk {
				break
			}
		}
		st.mu.Lock()
		st.bodyWaitSince = 0
		st.mu.Unlock()
		if n > 0 {
			// The last bytes of a body of known length carry FIN, so the
			// peer sees the request end with its data, not a frame later
			// (unless trailers are to follow).
			last := fin && len(trailer) == 0 && declared > 0 && sent+int64(n) == declared
			if _, err := st.writeRoom(frame[:room+n], room, last); err != nil {
				return
			}
			sent += int64(n)
			if last {
				return
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			st.s.log.Debugw("spdy: request body failed; resetting stream", "stream", st.id, "error", rerr)
			st.resetLocal(StatusCancel, fmt.Errorf("reading the request body: %w", rerr))
			return
		}
	}
	if declared > 0 && sent != declared {
		st.s.log.Warnw("spdy: request body length differs from Content-Length; resetting stream", "stream", st.id, "sent", sent, "declared", declared)
		st.resetLocal(StatusCancel, fmt.Errorf("%w: sent %d of %d request body bytes", ErrBodyLength, sent, declared))
		return
	}
	if !fin {
		return
	}
	// The body's reader fills in the values of the declared trailers by
	// its EOF (net/http's Request.Trailer).
	if t := collectTrailers(trailer, slices.Collect(maps.Keys(trailer))); len(t) > 0 {
		st.sendTrailers(t)
		return
	}
	st.closeWrite()
}

// responseBody is a client response body.
type responseBody struct {
	st     *stream
	stop   func() bool
	resp   *http.Response // its Trailer is filled at EOF
	closed atomic.Bool    // Close may come from another goroutine than Read's
}

func (b *responseBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errReadClosed
	}
	n, err := b.st.read(p)
	if err == io.EOF && b.resp != nil {
		b.st.fillTrailers(&b.resp.Trailer)
	}
	if err != nil {
		b.stop()
	}
	return n, err
}

// Close ends the stream; before EOF that is RST_STREAM CANCEL.
func (b *responseBody) Close() error {
	if !b.closed.CompareAndSwap(false, true) {
		return nil
	}
	b.stop()
	if !b.st.bodyComplete() || !b.st.sendComplete() {
		// Before EOF, or while our request body is still going out to a
		// peer that answered without reading it: the exchange is over,
		// so end the stream (the upload would otherwise wait for credit
		// forever, holding its stream slot).
		b.st.resetLocal(StatusCancel, errors.New("response body closed"))
	}
	b.st.closeRead()
	return nil
}

// upgradeBody is the body of a 101 response: the stream as a byte pipe.
type upgradeBody struct {
	st   *stream
	stop func() bool
	once sync.Once
}

func (b *upgradeBody) Read(p []byte) (int, error)  { return b.st.read(p) }
func (b *upgradeBody) Write(p []byte) (int, error) { return b.st.write(p, false) }

// CloseWrite sends FIN: the peer reads EOF, and may still send.
func (b *upgradeBody) CloseWrite() error { return b.st.closeWrite() }

// Close ends both directions: FIN for what we sent, and a reset if the peer
// has not finished.
func (b *upgradeBody) Close() error {
	b.once.Do(func() {
		b.stop()
		b.st.closePipe()
	})
	return nil
}

// closePipe ends an upgraded stream from our side.
func (st *stream) closePipe() {
	if st.writeMu.TryLock() {
		st.writeMu.Unlock()
		st.closeWrite()
	} else {
		// A writer is blocked (on flow control, say): cut the stream.
		st.resetLocal(StatusCancel, errors.New("pipe closed while a write was blocked"))
	}
	if !st.bodyComplete() {
		st.resetLocal(StatusCancel, errors.New("pipe closed"))
	}
	st.closeRead()
}
