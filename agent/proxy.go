package agent

// Ordinary (not upgrade) requests to the --to upstream. This is what
// httputil.ReverseProxy does in its Rewrite mode, with the same header
// rules, but with two differences that its API does not allow:
//
//   - The response body is copied through a buffer sized to what flows
//     (copyBody): ReverseProxy holds one 32 KiB buffer for the whole
//     response, also while a long poll, an event stream or a slow origin
//     sends nothing, and that buffer was most of the agent's memory per open
//     stream (make bench's streams section: 44 KiB per stream).
//   - The incoming request is not cloned: the spdy layer built it for this
//     handler alone, so its header map is rewritten in place and its
//     trailers map, which the spdy layer fills at the body's EOF, is the
//     one the transport sends.

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/spdy-origin/spdy-origin/spdy"
)

// serveProxy forwards r to the upstream and relays the response. A body
// that fails midway, from the upstream or towards the client, panics with
// http.ErrAbortHandler: the spdy server then resets the stream, so the
// client never takes a cut body for a whole one.
func (h *upstreamHandler) serveProxy(w http.ResponseWriter, r *http.Request) {
	// Informational responses (103 Early Hints and the like) go to the
	// client as they come, until the final response is in.
	var (
		mu   sync.Mutex
		done bool
	)
	got1xx := func(code int, hdr textproto.MIMEHeader) error {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return nil
		}
		dst := w.Header()
		for k, vv := range hdr {
			dst[k] = append(dst[k], vv...)
		}
		w.WriteHeader(code)
		clear(dst) // WriteHeader does not clear them for a 1xx
		return nil
	}
	var (
		res *http.Response
		err error
	)
	if out := h.outRequest(r.Context(), r); h.h1 != nil && canCarry(out) {
		res, err = h.h1.roundTrip(out, got1xx) // calls got1xx from this goroutine
	} else {
		trace := &httptrace.ClientTrace{Got1xxResponse: got1xx}
		res, err = h.transport.RoundTrip(out.WithContext(httptrace.WithClientTrace(out.Context(), trace)))
	}
	mu.Lock()
	done = true
	mu.Unlock()
	if err != nil {
		h.proxyError(w, r, err)
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		_ = res.Body.Close()
		h.proxyError(w, r, errSwitchWithoutUpgrade)
		return
	}
	dst := w.Header()
	addEndToEnd(dst, res.Header)
	announced := len(res.Trailer)
	if announced > 0 {
		// The transport keeps the announcement in res.Trailer only.
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		dst.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(res.StatusCode)
	if err := copyBody(w, res.Body, res.ContentLength); err != nil {
		_ = res.Body.Close()
		var client towardsClient
		if !errors.As(err, &client) && r.Context().Err() == nil {
			// The upstream's doing, not a client (or Caddy) that left.
			h.countFailure(upstreamBody)
		}
		h.log.Debug("response body failed midway; resetting the stream", zap.String("uri", r.RequestURI), zap.Error(err))
		panic(http.ErrAbortHandler)
	}
	_ = res.Body.Close() // now, not deferred: it fills res.Trailer
	if len(res.Trailer) == 0 {
		return
	}
	_ = http.NewResponseController(w).Flush() // the headers go out now, without a Content-Length
	if len(res.Trailer) == announced {
		for k, vv := range res.Trailer {
			dst[k] = append(dst[k], vv...)
		}
		return
	}
	for k, vv := range res.Trailer {
		k = http.TrailerPrefix + k
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

// towardsClient marks a copyBody error on the client's side of the copy
// (the stream was reset, Caddy's client left), as opposed to the upstream's.
type towardsClient struct{ err error }

func (e towardsClient) Error() string { return "writing the response to the client: " + e.err.Error() }
func (e towardsClient) Unwrap() error { return e.err }

var errSwitchWithoutUpgrade = errorString("the upstream switched protocols (101) for a request that did not ask to upgrade")

type errorString string

func (e errorString) Error() string { return string(e) }

// outRequest is r as it goes to the upstream: the target's URL, the
// client's Host, hop-by-hop headers removed (RFC 9110 section 7.6.1;
// "TE: trailers" kept), the X-Forwarded-* and Forwarded headers Caddy set
// passed through as they are, and no User-Agent added by Go.
func (h *upstreamHandler) outRequest(ctx context.Context, r *http.Request) *http.Request {
	out := r.WithContext(ctx) // a shallow copy
	u := *r.URL
	out.URL = &u
	hdr := r.Header
	if hdr == nil {
		hdr = make(http.Header)
		out.Header = hdr
	}
	te := httpguts.HeaderValuesContainsToken(hdr["Te"], "trailers")
	var fwd [len(forwardedHeaders)][]string
	for i, k := range forwardedHeaders {
		fwd[i] = hdr[k] // a Connection header must not remove them
	}
	removeHopHeaders(hdr)
	if te {
		hdr["Te"] = []string{"trailers"}
	}
	for i, k := range forwardedHeaders {
		if fwd[i] != nil {
			hdr[k] = fwd[i]
		}
	}
	if _, ok := hdr["User-Agent"]; !ok {
		hdr["User-Agent"] = []string{""} // an empty value: net/http then sends none
	}
	u.RawQuery = cleanQuery(u.RawQuery)
	h.pointAtTarget(out)
	out.Host = r.Host
	out.RequestURI = ""
	out.Close = false
	if r.ContentLength == 0 {
		out.Body = nil // the transport may then retry the request on a new connection
	}
	return out
}

var forwardedHeaders = [...]string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"}

// cleanQuery re-encodes a query that servers could split differently from
// how Caddy saw it: one with a semicolon or a malformed escape
// (ReverseProxy does the same, against parameter smuggling).
func cleanQuery(q string) string {
	for i := 0; i < len(q); i++ {
		switch q[i] {
		case ';':
			return reencodeQuery(q)
		case '%':
			if i+2 >= len(q) || !isHex(q[i+1]) || !isHex(q[i+2]) {
				return reencodeQuery(q)
			}
			i += 2
		}
	}
	return q
}

func reencodeQuery(q string) string {
	v, _ := url.ParseQuery(q)
	return v.Encode()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// The response body copy keeps a small buffer while the upstream sends
// little or nothing, and a large one only while data flows: an open but
// quiet stream (a long poll, an event stream) holds 2 KiB, not 32; a
// download reads and sends spdy.MaxDataFrame at a time, the largest DATA
// frame (four full TLS records), which Caddy's side reads into its stream
// buffer without a copy.
const (
	quietCopyBuffer = 2 << 10
	bulkCopyBuffer  = spdy.MaxDataFrame
	// headerFlushDelay is how long the response headers wait for the
	// body's first bytes to go out with them (one frame fewer).
	headerFlushDelay = time.Millisecond
)

var (
	quietBufs = sync.Pool{New: func() any { return new([quietCopyBuffer]byte) }}
	// A bulk buffer keeps room for a DATA frame's header in front of what
	// it reads (spdy.RoomWriter): each frame goes to Caddy from it, without
	// a copy into the session's write buffer.
	bulkBufs = sync.Pool{New: func() any { return new([spdy.FrameRoom + bulkCopyBuffer]byte) }}
)

// dataWaiter is a body that can wait until it has bytes to read without
// a buffer to read them into.
type dataWaiter interface{ waitData() error }

// bufferedBody is a body that can tell how many bytes it holds already,
// read from the connection and not yet returned.
type bufferedBody interface{ buffered() int }

// heldFraming is how many held bytes of a body may be framing and not
// data: none in a body of known length; in a chunked one, the end of a
// chunk and the next one's size line ("\r\n1000\r\n"), or the body's end.
// An event stream's held CRLF after each event is not worth waiting for.
func heldFraming(length int64) int {
	if length >= 0 {
		return 0
	}
	return 16
}

// copyBody copies body (length bytes, -1 unknown) to w, flushing each piece
// at once (streaming responses, events, long polls), except the last piece
// of a body of known length, which the response's end sends with FIN when
// the body's EOF follows at once (HTTP/1.1), and which is flushed when EOF
// is slow to come (an HTTP/2 upstream that keeps its stream open); and
// except a piece whose rest the body holds already, which goes with it.
func copyBody(w http.ResponseWriter, body io.Reader, length int64) error {
	return copyBodyWait(w, body, length, headerFlushDelay)
}

// copyBodyWait is copyBody with the time a piece may wait to go with more
// (headerFlushDelay; tests make it long, to see what waits).
func copyBodyWait(w http.ResponseWriter, body io.Reader, length int64, wait time.Duration) error {
	flush := http.NewResponseController(w).Flush // FlushError where w has it
	// The headers go out with the first body bytes or, when those do not
	// follow within headerFlushDelay (a long poll, an event stream, an
	// upstream that waits for more of the request body), on their own.
	var (
		mu      sync.Mutex
		waiting = true // for the first body bytes or EOF; guarded by mu
	)
	pending := time.AfterFunc(wait, func() {
		mu.Lock()
		defer mu.Unlock()
		if waiting {
			_ = flush() // a failure shows in the next write
		}
	})
	// A copy that ends while the flush is pending (a wait for data that
	// fails) disarms it: the handler is about to return, and w with it.
	defer func() {
		pending.Stop()
		mu.Lock()
		waiting = false
		mu.Unlock()
	}()
	var (
		quiet *[quietCopyBuffer]byte
		bulk  *[spdy.FrameRoom + bulkCopyBuffer]byte
	)
	defer func() {
		if quiet != nil {
			quietBufs.Put(quiet)
		}
		if bulk != nil {
			bulkBufs.Put(bulk)
		}
	}()
	if length > quietCopyBuffer {
		bulk = bulkBufs.Get().(*[spdy.FrameRoom + bulkCopyBuffer]byte) // the data usually follows the headers
	}
	roomy, _ := w.(spdy.RoomWriter)
	// A body that can wait for its next bytes without a buffer (the
	// h1Client's) lets a quiet stream hold none: the quiet buffer is taken
	// once bytes are there, and given back after each piece.
	waiter, _ := body.(dataWaiter)
	held, _ := body.(bufferedBody)
	var (
		written int64
		// heldBack: the last piece was written but not flushed, for the
		// rest the body held to go with it.
		heldBack bool
	)
	for {
		var buf []byte
		if bulk == nil && quiet == nil && waiter != nil {
			if err := waiter.waitData(); err != nil {
				return err
			}
		}
		switch {
		case bulk != nil:
			buf = bulk[spdy.FrameRoom:]
		case quiet == nil:
			quiet = quietBufs.Get().(*[quietCopyBuffer]byte)
			fallthrough
		default:
			buf = quiet[:]
		}
		n, rerr := body.Read(buf)
		if waiting {
			pending.Stop()
			mu.Lock()
			waiting = false
			mu.Unlock()
		}
		unsent := heldBack && n == 0
		heldBack = false
		if n > 0 {
			var err error
			if bulk != nil && roomy != nil {
				_, err = roomy.WriteWithRoom(bulk[:spdy.FrameRoom+n])
			} else {
				_, err = w.Write(buf[:n])
			}
			if err != nil {
				return towardsClient{err}
			}
			written += int64(n)
			if length < 0 || written < length {
				if rerr == nil && held != nil && held.buffered() > heldFraming(length) {
					// More of the body is here already (the rest of a
					// response that came in one segment, beyond what the
					// line reader held after the head): the next read
					// returns it at once, and it goes out with this
					// piece, in one frame. Should that read wait after
					// all (a chunked body's held bytes were framing
					// only), the piece goes out when the headers would.
					mu.Lock()
					waiting = true
					mu.Unlock()
					pending.Reset(wait)
					heldBack = true
				} else if err := flush(); err != nil {
					return towardsClient{err}
				}
			} else if rerr == nil {
				// The last piece waits for EOF, to go out with FIN, but
				// only as long as the headers wait for the first bytes.
				mu.Lock()
				waiting = true
				mu.Unlock()
				pending.Reset(wait)
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			if unsent {
				// The piece held back goes before the stream's reset,
				// as it would have gone had nothing been held after it.
				_ = flush()
			}
			return rerr
		}
		switch {
		case bulk == nil && n == len(buf): // data flows
			quietBufs.Put(quiet)
			quiet = nil
			bulk = bulkBufs.Get().(*[spdy.FrameRoom + bulkCopyBuffer]byte)
		case bulk != nil && n < quietCopyBuffer: // a trickle, or the upstream waits
			bulkBufs.Put(bulk)
			bulk = nil
		case bulk == nil && waiter != nil: // nothing held while waiting
			quietBufs.Put(quiet)
			quiet = nil
		}
	}
}
