package spdy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// serve runs the handler for a stream the peer opened.
func (s *Session) serve(st *stream, block http.Header, fin bool) {
	defer s.handlersWG.Done()
	req, err := s.newServerRequest(st, block, fin)
	if err != nil {
		s.log.Debugw("spdy: malformed request stream", "stream", st.id, "error", err)
		st.resetLocal(StatusProtocolError, err)
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	st.whenFinished(cancel)
	req = req.WithContext(ctx)
	rw := &responseWriter{st: st, req: req, header: make(http.Header), bodyAllowed: true}
	defer func() {
		// As with net/http, the request body is closed once the handler
		// returns (unless it hijacked the stream): data it left unread
		// gives its session-window credit back.
		if !rw.hijacked {
			st.closeRead()
		}
	}()
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				s.log.Errorw("spdy: handler panic; resetting stream", "stream", st.id, "method", req.Method, "path", req.URL.Path, "panic", fmt.Sprint(v))
				st.resetLocal(StatusInternalError, fmt.Errorf("handler panic: %v", v))
			} else {
				st.resetLocal(StatusCancel, http.ErrAbortHandler)
			}
			rw.release()
			return
		}
		rw.finish()
	}()
	s.handler.ServeHTTP(rw, req)
}

func (s *Session) newServerRequest(st *stream, block http.Header, fin bool) (*http.Request, error) {
	pseudo, h := splitHeaders(block)
	method, path, host := pseudo.method, pseudo.path, pseudo.host
	if method == "" || path == "" {
		return nil, fmt.Errorf("%w: request without :method or :path", ErrProtocol)
	}
	u, err := url.ParseRequestURI(path)
	if err != nil {
		return nil, fmt.Errorf("%w: bad :path %q: %v", ErrProtocol, path, err)
	}
	proto, major, minor := parseVersion(pseudo.version)
	if host == "" {
		host = h.Get("Host")
	}
	h.Del("Host")
	if h.Get("Upgrade") != "" {
		h.Set("Connection", "Upgrade")
	}
	req := &http.Request{
		Method:     method,
		URL:        u,
		Proto:      proto,
		ProtoMajor: major,
		ProtoMinor: minor,
		Header:     h,
		Host:       host,
		RequestURI: path,
		RemoteAddr: s.remoteAddr.String(),
		TLS:        s.tlsState(),
	}
	req.Trailer = announced(h)
	if fin {
		req.Body = http.NoBody
		req.ContentLength = 0
	} else {
		req.ContentLength = contentLength(h)
		st.mu.Lock()
		st.contentLn = req.ContentLength
		st.mu.Unlock()
		req.Body = &requestBody{st: st, req: req}
	}
	return req, nil
}

// requestBody is a server request body.
type requestBody struct {
	st     *stream
	req    *http.Request // its Trailer is filled at EOF
	closed atomic.Bool   // a transport may close it from its own goroutine
}

func (b *requestBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, http.ErrBodyReadAfterClose
	}
	n, err := b.st.read(p)
	if err == io.EOF {
		b.st.fillTrailers(&b.req.Trailer)
	}
	return n, err
}

func (b *requestBody) Close() error {
	if b.closed.CompareAndSwap(false, true) {
		b.st.closeRead()
	}
	return nil
}

const responseBufferSize = 8 << 10

var responseBufPool = sync.Pool{New: func() any { b := make([]byte, 0, responseBufferSize); return &b }}

// responseWriter maps an http.ResponseWriter onto a stream. The reply
// (SYN_REPLY) goes out with the first body bytes or flush; small responses
// are sent whole at the end as SYN_REPLY plus one DATA frame with FIN.
// Small writes are gathered in a pooled buffer, held only from a write to
// the next flush.
type responseWriter struct {
	st          *stream
	req         *http.Request
	header      http.Header
	status      int
	wroteHeader bool
	headersSent bool
	bodyAllowed bool
	hijacked    bool
	// upgradeRefused: the handler's 101 became 503 (MaxUpgradedStreams).
	upgradeRefused bool
	declared       int64 // Content-Length the handler set, -1 if none
	written        int64
	buf            *[]byte
	err            error // the stream failed: writes fail
}

func (w *responseWriter) Header() http.Header { return w.header }

func (w *responseWriter) WriteHeader(code int) {
	if w.wroteHeader || w.hijacked {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// SPDY/3 has no informational responses; drop them as HTTP/1.0 would.
		return
	}
	if code == http.StatusSwitchingProtocols {
		if !isUpgrade(w.req.Header) {
			code = http.StatusInternalServerError
			w.st.s.log.Warnw("spdy: handler answered 101 to a request that did not ask to upgrade", "stream", w.st.id)
		} else if err := w.st.s.markUpgraded(w.st); err != nil {
			w.st.s.log.Warnw("spdy: upgrade refused: too many upgraded streams", "stream", w.st.id, "limit", w.st.s.cfg.MaxUpgradedStreams)
			w.upgradeRefused = true
			code = http.StatusServiceUnavailable
			w.header = http.Header{"Content-Type": {"text/plain; charset=utf-8"}}
		}
	}
	w.wroteHeader = true
	w.status = code
	w.declared = contentLength(w.header)
	if w.req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified || code == http.StatusSwitchingProtocols {
		w.bodyAllowed = false
	}
}

func (w *responseWriter) Write(p []byte) (int, error) { return w.write(p, 0) }

// RoomWriter is implemented by the ResponseWriter a Server gives its
// handler (spdy.Server), and may be by writers that wrap it.
// WriteWithRoom(b) writes b[FrameRoom:] as Write would; the FrameRoom bytes
// in front are free for a DATA frame's header, so that a large write goes
// to the connection as it lies in b, without a copy into the session's
// write buffer. b's contents are not kept: frame headers may be written
// over bytes of it already sent. A copy loop that reads into b[FrameRoom:]
// loses nothing by that.
type RoomWriter interface {
	WriteWithRoom(b []byte) (int, error)
}

// WriteWithRoom implements RoomWriter.
func (w *responseWriter) WriteWithRoom(b []byte) (int, error) {
	if len(b) < FrameRoom {
		return 0, errors.New("spdy: WriteWithRoom: buffer shorter than its room")
	}
	return w.write(b, FrameRoom)
}

// write is Write of b[room:]; room is 0, or FrameRoom (WriteWithRoom).
func (w *responseWriter) write(b []byte, room int) (int, error) {
	p := b[room:]
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if !w.wroteHeader {
		if w.header.Get("Content-Type") == "" && w.header.Get("Transfer-Encoding") == "" && len(p) > 0 {
			w.header.Set("Content-Type", http.DetectContentType(p))
		}
		w.WriteHeader(http.StatusOK)
	}
	if !w.bodyAllowed {
		if w.req.Method == http.MethodHead {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.declared >= 0 && w.written+int64(len(p)) > w.declared {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if w.buf == nil {
		w.buf = responseBufPool.Get().(*[]byte)
	}
	if b := *w.buf; len(b)+len(p) <= cap(b) {
		*w.buf = append(b, p...)
		return len(p), nil
	}
	if err := w.flush(false); err != nil { // it gives the buffer back
		return 0, err
	}
	if len(p) < responseBufferSize/2 {
		w.buf = responseBufPool.Get().(*[]byte)
		*w.buf = append(*w.buf, p...)
		return len(p), nil
	}
	if _, err := w.st.writeRoom(b, room, false); err != nil {
		w.err = err
		return 0, err
	}
	return len(p), nil
}

// WriteString avoids a copy in io.WriteString callers.
func (w *responseWriter) WriteString(s string) (int, error) { return w.Write([]byte(s)) }

// Flush sends the reply and any buffered body now.
func (w *responseWriter) Flush() {
	if w.hijacked {
		return
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	w.flush(false)
}

// FlushError is Flush reporting failure (http.ResponseController uses it).
func (w *responseWriter) FlushError() error {
	if w.hijacked {
		return http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.flush(false)
}

// flush sends the reply if needed, then the buffered body; with fin, the
// stream's send side ends.
func (w *responseWriter) flush(fin bool) error {
	if w.err != nil {
		return w.err
	}
	var pending []byte
	if w.buf != nil {
		pending = *w.buf
	}
	if !w.headersSent {
		w.headersSent = true
		replyFin := fin && len(pending) == 0
		if err := w.sendReply(replyFin, len(pending) > 0); err != nil {
			w.err = err
			return err
		}
		if replyFin {
			return nil
		}
	}
	if len(pending) == 0 && !fin {
		w.release()
		return nil
	}
	_, err := w.st.write(pending, fin)
	// The buffer goes back to the pool until the next write: a stream
	// that waits for its handler (a long poll, an event stream) holds none.
	w.release()
	if err != nil {
		w.err = err
	}
	return err
}

func (w *responseWriter) sendReply(fin, more bool) error {
	st := w.st
	block := blockBufs.Get().(*blockWriter)
	responseBlock(block, w.status, w.header, st.s.cfg.PeerTrailers)
	if err := block.checkLimits(st.s.limits); err != nil {
		putBlock(block)
		// The peer would refuse the block; a reset tells it at once, and
		// only this stream is lost (its proxy answers 502).
		err = fmt.Errorf("response headers: %w", err)
		st.s.log.Warnw("spdy: response headers over the limit; resetting stream", "stream", st.id, "method", w.req.Method, "path", w.req.URL.Path, "error", err)
		st.resetLocal(StatusInternalError, err)
		return err
	}
	return st.sendHeaderFrame(typeSynReply, block, fin, more)
}

// finish completes the response after the handler returned.
func (w *responseWriter) finish() {
	defer w.release()
	if w.hijacked {
		return
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headersSent && w.bodyAllowed && w.declared < 0 && w.header.Get("Transfer-Encoding") == "" {
		// The whole body is in the buffer: tell the client its length.
		w.header.Set("Content-Length", strconv.FormatInt(w.written, 10))
	}
	if w.bodyAllowed && w.declared >= 0 && w.written < w.declared && w.req.Method != http.MethodHead {
		// Ending now would hand the client a short body that looks whole.
		w.st.s.log.Warnw("spdy: handler wrote less than its Content-Length; resetting stream", "stream", w.st.id, "written", w.written, "declared", w.declared)
		w.st.resetLocal(StatusInternalError, fmt.Errorf("%w: handler wrote %d of %d bytes", ErrBodyLength, w.written, w.declared))
		return
	}
	var trailers http.Header
	if w.bodyAllowed {
		trailers = collectTrailers(w.header, declaredTrailers(w.header))
	}
	if len(trailers) > 0 {
		if err := w.flush(false); err != nil {
			return
		}
		if err := w.st.sendTrailers(trailers); err != nil {
			return
		}
	} else if err := w.flush(true); err != nil {
		return
	}
	// The response is complete. A request body the handler did not read
	// is not wanted any more: tell the peer to stop sending it.
	if !w.st.bodyComplete() {
		w.st.resetLocal(StatusCancel, errors.New("response complete; request body not wanted"))
	}
}

func (w *responseWriter) release() {
	if w.buf != nil {
		*w.buf = (*w.buf)[:0]
		responseBufPool.Put(w.buf)
		w.buf = nil
	}
}

// Hijack hands over the stream as a net.Conn after a 101 response: reads
// return the peer's bytes, writes send DATA, Close ends the stream.
func (w *responseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.upgradeRefused {
		return nil, nil, fmt.Errorf("%w (limit %d); the peer was answered 503", ErrTooManyUpgrades, w.st.s.cfg.MaxUpgradedStreams)
	}
	if !w.wroteHeader || w.status != http.StatusSwitchingProtocols {
		return nil, nil, errors.New("spdy: only a stream answered with 101 Switching Protocols can be hijacked")
	}
	if err := w.flush(false); err != nil {
		return nil, nil, err
	}
	w.hijacked = true
	w.release()
	c := &streamConn{st: w.st}
	return c, bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c)), nil
}

// streamConn is an upgraded stream as a net.Conn.
type streamConn struct {
	st   *stream
	once sync.Once
}

func (c *streamConn) Read(p []byte) (int, error)  { return c.st.read(p) }
func (c *streamConn) Write(p []byte) (int, error) { return c.st.write(p, false) }

// CloseWrite sends FIN; the peer reads EOF and may still send.
func (c *streamConn) CloseWrite() error { return c.st.closeWrite() }

func (c *streamConn) Close() error {
	c.once.Do(c.st.closePipe)
	return nil
}

func (c *streamConn) LocalAddr() net.Addr  { return c.st.s.localAddr }
func (c *streamConn) RemoteAddr() net.Addr { return c.st.s.remoteAddr }

// Deadlines are not supported on streams; these calls succeed and do nothing
// so that code written for net.Conn keeps working. Idle upgraded streams are
// bounded by the session's keepalive, not by deadlines.
func (c *streamConn) SetDeadline(time.Time) error      { return nil }
func (c *streamConn) SetReadDeadline(time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(time.Time) error { return nil }

var (
	_ http.Flusher    = (*responseWriter)(nil)
	_ http.Hijacker   = (*responseWriter)(nil)
	_ io.StringWriter = (*responseWriter)(nil)
)
