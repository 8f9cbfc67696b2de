package agent

// h1Client is the agent's HTTP/1.1 client for http:// upstreams, in place
// of net/http's Transport. It keeps the Transport's wire behaviour (requests
// written by http.Request.Write, responses read by http.ReadResponse, pooled
// keep-alive connections, a retry on a stale pooled connection for requests
// that can be replayed) and changes what a request costs while it waits:
//
//   - No goroutines of its own. The Transport runs a readLoop and a
//     writeLoop goroutine for every connection and hands each request and
//     response across them; here the stream's handler writes the request
//     and reads the response itself. A request body is the exception: it is
//     written from a goroutine of its own while the handler reads the
//     response, as the upstream may answer before it has read it all.
//   - No read buffer while the upstream is quiet. The Transport holds a
//     4 KiB bufio.Reader and a 4 KiB bufio.Writer for every connection;
//     here the request goes out through a pooled writer, and reads go
//     through a 512-byte bufio.Reader over a lazyReader that takes a 4 KiB
//     buffer from a pool only once the connection is readable and gives it
//     back as soon as it is drained. Large reads (the body copy's) go
//     straight into the caller's buffer.
//
// A stream waiting on a long poll or an event stream thus costs the agent
// its handler goroutine and not much else (make bench's streams section).
// https:// and h2c:// upstreams, CONNECT and requests with
// "Expect: 100-continue" still go through the Transport.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/textproto"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
)

const (
	// h1MaxIdle bounds the idle keep-alive connections kept per upstream,
	// h1IdleTimeout how long one is kept: the Transport's settings before.
	h1MaxIdle     = 256
	h1IdleTimeout = 90 * time.Second
	// h1ReadBuffer is the lazyReader's buffer, held only while it holds
	// bytes; h1LineBuffer the bufio.Reader that http.ReadResponse needs,
	// held by each connection for its life.
	h1ReadBuffer = 4 << 10
	h1LineBuffer = 512
	// h1DirectRead: reads of at least this many bytes go straight into the
	// caller's buffer when nothing is buffered.
	h1DirectRead = 1 << 10
)

// h1WriteWait is how long a response's end waits for the request's writer
// to finish its last bytes before the connection is given up instead of
// reused (a variable for tests).
var h1WriteWait = 50 * time.Millisecond

var (
	h1ReadBufs  = sync.Pool{New: func() any { return new([h1ReadBuffer]byte) }}
	h1WriteBufs = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
	// aLongTimeAgo is a deadline in the past: it unblocks a connection's
	// reads and writes at once.
	aLongTimeAgo = time.Unix(1, 0)
)

var errHeadersTooLarge = fmt.Errorf("response headers over %d bytes", maxUpstreamHeaderBytes)

type h1Client struct {
	addr   string // host:port of the upstream
	dialer *net.Dialer

	mu     sync.Mutex
	idle   []*h1Conn // oldest first; the newest is reused first
	reaper *time.Timer
	closed bool
}

func newH1Client(addr string, dialer *net.Dialer) *h1Client {
	return &h1Client{addr: addr, dialer: dialer}
}

// canCarry reports whether req can go through the h1Client. CONNECT and
// Expect: 100-continue (the Transport waits for the 100 before sending the
// body) are left to the Transport.
func canCarry(req *http.Request) bool {
	return req.Method != http.MethodConnect && req.Header["Expect"] == nil
}

// roundTrip sends req and returns the response once its headers are in.
// Informational responses (other than 100 and 101) go to got1xx as they
// come. The response body must be read to its end or closed: that gives
// the connection back to the pool, or closes it.
func (c *h1Client) roundTrip(req *http.Request, got1xx func(code int, hdr textproto.MIMEHeader) error) (*http.Response, error) {
	if err := checkOutgoing(req); err != nil {
		return nil, err
	}
	ctx := req.Context()
	for attempt := 0; ; attempt++ {
		pc, err := c.get(ctx)
		if err != nil {
			return nil, err
		}
		res, err := pc.roundTrip(req, got1xx)
		if err == nil {
			return res, nil
		}
		// A pooled connection the upstream closed while it was idle:
		// nothing came back, so a request that can be replayed is sent
		// again, once, on a new connection (as the Transport does).
		if attempt == 0 && pc.reused && pc.lr.nread == 0 && ctx.Err() == nil && replayable(req) {
			continue
		}
		return nil, err
	}
}

// replayable is http.Request.isReplayable: no body, and a method that is
// idempotent or a request that says it is.
func replayable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody {
		return false
	}
	switch req.Method {
	case "", "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	return req.Header["Idempotency-Key"] != nil || req.Header["X-Idempotency-Key"] != nil
}

// checkOutgoing refuses what the Transport refuses before writing a
// request: a method that is not a token and header or trailer fields that
// could not be written as they are (a CR or LF in a value would split
// the request).
func checkOutgoing(req *http.Request) error {
	if req.Method != "" && !httpguts.ValidHeaderFieldName(req.Method) { // a token, as net/http's validMethod
		return fmt.Errorf("net/http: invalid method %q", req.Method)
	}
	for _, h := range []http.Header{req.Header, req.Trailer} {
		for k, vv := range h {
			if !httpguts.ValidHeaderFieldName(k) {
				return fmt.Errorf("net/http: invalid header field name %q", k)
			}
			for _, v := range vv {
				if !httpguts.ValidHeaderFieldValue(v) {
					return fmt.Errorf("net/http: invalid header field value for %q", k)
				}
			}
		}
	}
	return nil
}

// get returns a live idle connection, or dials a new one.
func (c *h1Client) get(ctx context.Context) (*h1Conn, error) {
	c.mu.Lock()
	for n := len(c.idle); n > 0; n = len(c.idle) {
		pc := c.idle[n-1]
		c.idle[n-1] = nil
		c.idle = c.idle[:n-1]
		c.mu.Unlock()
		// The upstream may have closed it meanwhile (its own idle
		// timeout): one non-blocking peek tells, before the request is
		// written to a dead connection. Every time, even after a
		// moment's rest: bytes an upstream sent unasked would otherwise
		// be read as the next request's response, which may be another
		// client's (net/http's readLoop watches idle connections for the
		// same reason).
		if time.Since(pc.idleSince) < h1IdleTimeout && pc.lr.alive() {
			pc.reused = true
			return pc, nil
		}
		pc.close()
		c.mu.Lock()
	}
	c.mu.Unlock()
	nc, err := c.dialer.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return nil, err
	}
	pc := &h1Conn{client: c, nc: nc}
	pc.lr.c = nc
	pc.lr.limit = -1
	if sc, ok := nc.(syscall.Conn); ok {
		pc.lr.raw, _ = sc.SyscallConn()
	}
	pc.br = bufio.NewReaderSize(&pc.lr, h1LineBuffer)
	return pc, nil
}

// put keeps pc for the next request, or closes it.
func (c *h1Client) put(pc *h1Conn) {
	pc.idleSince = time.Now()
	c.mu.Lock()
	if c.closed || len(c.idle) >= h1MaxIdle {
		c.mu.Unlock()
		pc.close()
		return
	}
	c.idle = append(c.idle, pc)
	if c.reaper == nil {
		c.reaper = time.AfterFunc(h1IdleTimeout, c.reap)
	}
	c.mu.Unlock()
}

// reap closes the connections idle for h1IdleTimeout, and comes back for
// the next while any are left.
func (c *h1Client) reap() {
	now := time.Now()
	c.mu.Lock()
	n := 0
	for n < len(c.idle) && now.Sub(c.idle[n].idleSince) >= h1IdleTimeout {
		n++
	}
	expired := append([]*h1Conn(nil), c.idle[:n]...)
	c.idle = append(c.idle[:0], c.idle[n:]...)
	clear(c.idle[len(c.idle):cap(c.idle)])
	if len(c.idle) > 0 && !c.closed {
		c.reaper.Reset(h1IdleTimeout - now.Sub(c.idle[0].idleSince))
	} else {
		c.reaper = nil
	}
	c.mu.Unlock()
	for _, pc := range expired {
		pc.close()
	}
}

// closeIdle closes the idle connections, and every connection given back
// from now on.
func (c *h1Client) closeIdle() {
	c.mu.Lock()
	idle := c.idle
	c.idle = nil
	c.closed = true
	if c.reaper != nil {
		c.reaper.Stop()
		c.reaper = nil
	}
	c.mu.Unlock()
	for _, pc := range idle {
		pc.close()
	}
}

// h1Conn is one connection to the upstream, used by one request at a time.
type h1Conn struct {
	client    *h1Client
	nc        net.Conn
	lr        lazyReader
	br        *bufio.Reader // over lr
	idleSince time.Time
	reused    bool // it served a request before this one
}

func (pc *h1Conn) close() { _ = pc.nc.Close() }

// roundTrip writes req on pc and reads the response's head. On an error pc
// is closed.
func (pc *h1Conn) roundTrip(req *http.Request, got1xx func(int, textproto.MIMEHeader) error) (*http.Response, error) {
	// A request that ends (the client left, the stream was reset) unblocks
	// whatever the connection is doing; the connection is then closed.
	stop := context.AfterFunc(req.Context(), func() { _ = pc.nc.SetDeadline(aLongTimeAgo) })
	var (
		written <-chan error // the request body's writer, when there is a body
		sent    *trackedBody // the body it writes
	)
	fail := func(err error) (*http.Response, error) {
		stop()
		pc.close()
		if written != nil {
			_ = req.Body.Close() // its writer may wait on it, not on pc
		}
		if cerr := req.Context().Err(); cerr != nil {
			return nil, fmt.Errorf("%w (%w)", cerr, err)
		}
		return nil, err
	}
	pc.lr.nread = 0
	if req.Body == nil || req.Body == http.NoBody {
		if err := pc.write(req); err != nil {
			return fail(fmt.Errorf("writing the request: %w", err))
		}
	} else {
		written, sent = pc.writeWithBody(req)
	}

	pc.lr.limit = maxUpstreamHeaderBytes // for every 1xx and the final head together
	var res *http.Response
	for {
		var err error
		res, err = http.ReadResponse(pc.br, req)
		if err != nil {
			if errors.Is(err, errHeadersTooLarge) {
				err = errHeadersTooLarge
			}
			if written != nil {
				// A request that could not be written (the client's
				// stream failed, or the request itself) is why the
				// exchange failed.
				select {
				case werr := <-written:
					var rb requestBodyError
					if errors.As(werr, &rb) {
						err = werr
					} else if werr != nil {
						return fail(fmt.Errorf("writing the request: %w", werr))
					}
				default:
				}
			}
			return fail(fmt.Errorf("reading the response: %w", err))
		}
		code := res.StatusCode
		if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
			break
		}
		if code != http.StatusContinue && got1xx != nil {
			if err := got1xx(code, textproto.MIMEHeader(res.Header)); err != nil {
				return fail(err)
			}
		}
	}
	pc.lr.limit = -1
	body := &h1Body{
		pc:      pc,
		res:     res,
		rc:      res.Body,
		req:     req,
		written: written,
		sent:    sent,
		stop:    stop,
		// Only a response that ends where its framing says, on a
		// connection neither side closes, leaves pc fit for another.
		keep: !res.Close && !req.Close && res.StatusCode != http.StatusSwitchingProtocols,
	}
	if res.Body == http.NoBody {
		body.finish(true) // complete already (HEAD, 204, 304, Content-Length: 0)
		return res, nil
	}
	res.Body = body
	return res, nil
}

// write writes req (its body included) on pc through a pooled buffer.
func (pc *h1Conn) write(req *http.Request) error {
	bw := h1WriteBufs.Get().(*bufio.Writer)
	bw.Reset(pc.nc)
	err := req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	h1WriteBufs.Put(bw)
	return err
}

// writeWithBody writes req from a goroutine of its own, while the caller
// reads the response, and reports how that ended on the channel.
func (pc *h1Conn) writeWithBody(req *http.Request) (<-chan error, *trackedBody) {
	done := make(chan error, 1)
	out := *req // the body wrapped, to tell its failures from the connection's
	tb := &trackedBody{rc: req.Body, size: req.ContentLength}
	out.Body = tb
	go func() {
		err := pc.write(&out)
		if tb.err != nil {
			err = requestBodyError{tb.err}
		}
		done <- err // first, for the reader to find once the close wakes it
		if err != nil {
			// The upstream would wait for the rest of the request (or,
			// when the request failed before anything went out, for the
			// request) forever: the exchange is over.
			pc.close()
		}
	}()
	return done, tb
}

// trackedBody records an error of the request body itself (the client's
// stream failed), as opposed to one of the connection it is written to.
type trackedBody struct {
	rc   io.ReadCloser
	size int64 // its Content-Length, -1 if unknown
	err  error
	read atomic.Int64 // bytes read from it
	eof  atomic.Bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.read.Add(int64(n))
	if err == io.EOF {
		b.eof.Store(true)
	} else if err != nil {
		b.err = err
	}
	return n, err
}

// taken tells whether the whole body was read for writing: what is left of
// the write is then its tail.
func (b *trackedBody) taken() bool {
	return b.eof.Load() || b.size > 0 && b.read.Load() >= b.size
}

func (b *trackedBody) Close() error { return b.rc.Close() }

type requestBodyError struct{ err error }

func (e requestBodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e requestBodyError) Unwrap() error { return e.err }

// h1Body is a response body on an h1Conn. At its end the connection goes
// back to the pool, if it may; closed before its end, the connection is
// closed (draining what is left could take forever).
type h1Body struct {
	pc      *h1Conn
	res     *http.Response // its Trailer is filled at the end
	rc      io.ReadCloser
	req     *http.Request
	written <-chan error
	sent    *trackedBody
	stop    func() bool
	keep    bool
	done    bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, http.ErrBodyReadAfterClose
	}
	n, err := b.rc.Read(p)
	if err != nil && err.Error() == errLongTrailer {
		err = b.readTrailer()
	}
	if err != nil {
		b.finish(err == io.EOF)
	}
	return n, err
}

// buffered is how many bytes of the connection are read and not yet
// returned (copyBody's bufferedBody).
func (b *h1Body) buffered() int {
	if b.done {
		return 0
	}
	return b.pc.br.Buffered() + b.pc.lr.buffered()
}

// waitData waits until a Read has something to return, holding no buffer
// meanwhile (copyBody's quiet streams).
func (b *h1Body) waitData() error {
	if b.done || b.pc.br.Buffered() > 0 || b.pc.lr.buffered() > 0 || b.pc.lr.err != nil {
		return nil
	}
	return waitReadable(b.pc.lr.raw)
}

// errLongTrailer is net/http's refusal of a chunked body's trailer that does
// not fit its bufio.Reader (it peeks for the trailer's end before reading
// it): with the connection's 512-byte reader, a trailer over about 500
// bytes, where the Transport's 4 KiB reader takes one of 4 KiB. It peeks
// only, so the trailer is still there to read.
const errLongTrailer = "http: suspiciously long trailer after chunked body"

// readTrailer reads a chunked body's trailer that net/http would not, under
// the bound of a response head, and returns io.EOF once it is in.
func (b *h1Body) readTrailer() error {
	pc := b.pc
	pc.lr.limit = maxUpstreamHeaderBytes
	hdr, err := textproto.NewReader(pc.br).ReadMIMEHeader()
	pc.lr.limit = -1
	switch {
	case err == io.EOF:
		return io.ErrUnexpectedEOF
	case errors.Is(err, errHeadersTooLarge):
		return errHeadersTooLarge
	case err != nil:
		return err
	}
	if b.res.Trailer == nil {
		b.res.Trailer = make(http.Header, len(hdr))
	}
	maps.Copy(b.res.Trailer, http.Header(hdr))
	return io.EOF
}

func (b *h1Body) Close() error {
	if !b.done {
		b.finish(false)
	}
	return nil
}

// finish ends the exchange: whole tells whether the response was read to
// its end.
func (b *h1Body) finish(whole bool) {
	b.done = true
	pc := b.pc
	keep := whole && b.keep
	// Bytes past the response's end are not a response to anything.
	keep = keep && pc.br.Buffered() == 0 && pc.lr.buffered() == 0
	if b.written != nil {
		select {
		case err := <-b.written:
			keep = keep && err == nil
		default:
			// The upstream answered before it took the whole request
			// body (a 413, say): as the Transport does, the connection
			// goes, and with it the rest of the body. When the body was
			// all read for writing, though, the writer is most likely on its
			// last bytes (an upstream that answers as the request ends
			// often wins that race): it is given a moment, as the
			// Transport gives it (maxWriteWaitBeforeConnReuse).
			if keep && b.sent.taken() {
				t := time.NewTimer(h1WriteWait)
				select {
				case err := <-b.written:
					t.Stop()
					keep = err == nil
				case <-t.C:
					keep = false
				}
			} else {
				keep = false
			}
			if !keep {
				pc.close()
				_ = b.req.Body.Close()
			}
		}
	}
	// stop fails when the request's context ended and its deadline is
	// (being) set on the connection.
	if stopped := b.stop(); keep && stopped {
		pc.client.put(pc)
		return
	}
	pc.close()
}

// lazyReader reads from an upstream connection through a buffer it holds
// only while that buffer holds bytes. limit, when not negative, is how many
// more bytes it may return (the response head's bound).
type lazyReader struct {
	c     net.Conn
	raw   syscall.RawConn // nil where waiting for readability is not possible
	buf   *[h1ReadBuffer]byte
	r, w  int
	err   error // from the read that filled buf, returned once it is drained
	limit int64
	nread int64 // bytes read from c since the request was written
}

func (l *lazyReader) buffered() int { return l.w - l.r }

func (l *lazyReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if l.limit == 0 {
		return 0, errHeadersTooLarge
	}
	if l.limit > 0 && int64(len(p)) > l.limit {
		p = p[:l.limit]
	}
	var n int
	switch {
	case l.r < l.w:
		n = copy(p, l.buf[l.r:l.w])
		l.r += n
		if l.r == l.w {
			h1ReadBufs.Put(l.buf)
			l.buf, l.r, l.w = nil, 0, 0
		}
	case l.err != nil:
		err := l.err
		l.err = nil
		return 0, err
	case len(p) >= h1DirectRead:
		var err error
		n, err = l.c.Read(p)
		l.nread += int64(n)
		if n == 0 {
			return 0, err
		}
		l.err = err
	default:
		// A small read (the bufio.Reader's): a buffer is taken only for
		// a read that finds bytes (or the end) waiting.
		buf, m, err := l.fill()
		l.nread += int64(m)
		if m == 0 {
			return 0, err
		}
		n = copy(p, buf[:m])
		if n < m {
			l.buf, l.r, l.w = buf, n, m
		} else {
			h1ReadBufs.Put(buf)
		}
		l.err = err
	}
	if l.limit > 0 {
		l.limit -= int64(n)
	}
	return n, nil
}

// fillBlocking reads into a pooled buffer taken before the read: fill's
// way where the connection cannot be watched for readability.
func (l *lazyReader) fillBlocking() (*[h1ReadBuffer]byte, int, error) {
	buf := h1ReadBufs.Get().(*[h1ReadBuffer]byte)
	n, err := l.c.Read(buf[:])
	if n == 0 {
		h1ReadBufs.Put(buf)
		return nil, 0, err
	}
	return buf, n, err
}

// alive tells whether an idle connection can carry a request: the upstream
// has not closed it nor sent anything unasked.
func (l *lazyReader) alive() bool {
	return l.buffered() == 0 && l.err == nil && idleConnAlive(l.raw)
}
