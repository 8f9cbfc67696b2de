package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/spdy-origin/spdy-origin/spdy"
)

// upstreamHandler serves SPDY streams from the --to upstream: ordinary requests as
// httputil.ReverseProxy would (proxy.go: pooled keep-alive connections, bodies streamed
// and flushed at once), upgrade requests (WebSocket and others) by piping bytes between a dedicated
// upstream connection and the hijacked SPDY stream.
type upstreamHandler struct {
	target    *url.URL
	tlsConf   *tls.Config     // for https targets: the roots that verify them
	transport *http.Transport // https:// and h2c:// upstreams, and what h1 cannot carry
	h1        *h1Client       // http:// upstreams (h1client.go); nil for the others
	dialer    *net.Dialer
	tun       tuning
	log       *zap.Logger
	// countError, if set, counts failed upstream requests by reason (metrics.go).
	countError func(reason string)
}

// newUpstreamHandler proxies to target: http:// (HTTP/1.1), https:// (h2
// when the upstream offers it in ALPN, else HTTP/1.1; verified with roots,
// nil meaning the system's) or h2c:// (cleartext HTTP/2 with prior
// knowledge, as gRPC servers usually listen; upgrades such as WebSockets
// still go to it over HTTP/1.1).
func newUpstreamHandler(target *url.URL, roots *x509.CertPool, tun tuning, log *zap.Logger) (*upstreamHandler, error) {
	if err := checkUpstreamURL(target); err != nil {
		return nil, err
	}
	h2c := target.Scheme == "h2c"
	if h2c {
		t := *target
		t.Scheme = "http"
		target = &t
	}
	h := &upstreamHandler{
		target:  target,
		tlsConf: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		dialer:  &net.Dialer{Timeout: tun.upstreamDialTimeout, KeepAlive: 30 * time.Second},
		tun:     tun,
		log:     log.Named("upstream"),
	}
	h.transport = &http.Transport{
		Proxy:                  nil, // the upstream is local to the agent; never via HTTP_PROXY
		DialContext:            h.dialer.DialContext,
		MaxIdleConns:           256,
		MaxIdleConnsPerHost:    256,
		IdleConnTimeout:        90 * time.Second,
		TLSClientConfig:        h.tlsConf.Clone(), // its own: the transport adds h2 to NextProtos
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: maxUpstreamHeaderBytes,
		DisableCompression:     true, // pass Accept-Encoding and encoded bodies through untouched
		ForceAttemptHTTP2:      true, // for https upstreams that speak h2; plain http stays HTTP/1.1
	}
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		h.transport.Protocols = &p
	} else if target.Scheme == "http" {
		h.h1 = newH1Client(hostPort(target), h.dialer)
	}
	return h, nil
}

// closeIdle closes the idle upstream connections (at exit).
func (h *upstreamHandler) closeIdle() {
	h.transport.CloseIdleConnections()
	if h.h1 != nil {
		h.h1.closeIdle()
	}
}

// maxUpstreamHeaderBytes bounds the headers of an upstream's response, as
// the transport reads them and as upgradeUpstream does (http.ReadResponse
// alone reads them without end): net/http's server default, above the
// 256 KiB a SYN_REPLY may carry (spdy.DefaultMaxHeaderBytes), so nothing
// the agent could relay is refused.
const maxUpstreamHeaderBytes = 1 << 20

func (h *upstreamHandler) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		// The client (or Caddy) gave up; nobody will read a 502.
		h.log.Debug("request cancelled", zap.String("method", r.Method), zap.String("uri", r.RequestURI), zap.Error(err))
		return
	}
	h.countFailure(upstreamErrorReason(err))
	h.log.Warn("upstream request failed", zap.String("method", r.Method), zap.String("uri", r.RequestURI),
		zap.String("upstream", h.target.Redacted()), zap.Error(err))
	writeError(w, http.StatusBadGateway, fmt.Sprintf("spdy-origin-agent: upstream %s is unreachable or failed: %v",
		h.target.Redacted(), err))
}

func (h *upstreamHandler) countFailure(reason string) {
	if h.countError != nil {
		h.countError(reason)
	}
}

// upstreamErrorReason sorts an upstream failure before response headers for
// upstream_errors_total.
func upstreamErrorReason(err error) string {
	var op *net.OpError
	var ne net.Error
	switch {
	case errors.As(err, &op) && op.Op == "dial":
		return upstreamDial
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return upstreamTimeout
	}
	return upstreamResponse
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
}

func (h *upstreamHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if up := upgradeType(r.Header); up != "" {
		h.serveUpgrade(w, r, up)
		return
	}
	h.serveProxy(w, r)
}

// upgradeType returns the protocol a request or response asks to switch to, or "".
// The spdy layer hands upgrade requests to us with Upgrade and Connection: Upgrade set.
func upgradeType(hdr http.Header) string {
	if !httpguts.HeaderValuesContainsToken(hdr["Connection"], "Upgrade") {
		return ""
	}
	return hdr.Get("Upgrade")
}

// Hop-by-hop headers (RFC 9110 section 7.6.1) are not forwarded on upgrade requests,
// except the Upgrade/Connection pair we set ourselves.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopHeaders(h http.Header) {
	for _, f := range h["Connection"] {
		for _, sf := range strings.Split(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

// addEndToEnd adds src's headers to dst, once src's hop-by-hop ones are
// removed (from src: a response the agent read, that nothing else uses).
func addEndToEnd(dst, src http.Header) {
	removeHopHeaders(src)
	for k, vv := range src {
		dst[k] = append(dst[k], vv...)
	}
}

// serveUpgrade forwards an upgrade request on its own upstream connection. A non-101
// answer is relayed as an ordinary response; a 101 turns the SPDY stream into a byte
// pipe. We do not use ReverseProxy's upgrade support because it writes a raw HTTP/1.1
// "101" onto the hijacked connection, while our 101 must be a SPDY SYN_REPLY.
func (h *upstreamHandler) serveUpgrade(w http.ResponseWriter, r *http.Request, upType string) {
	log := h.log.With(zap.String("uri", r.RequestURI), zap.String("upgrade", upType))
	hj, ok := w.(http.Hijacker)
	if !ok {
		log.Error("response writer cannot hijack; upgrade impossible")
		writeError(w, http.StatusInternalServerError, "spdy-origin-agent: this stream cannot be upgraded")
		return
	}
	upConn, br, resp, ok := h.upgradeUpstream(w, r, upType, log)
	if !ok {
		return
	}
	if got := upgradeType(resp.Header); !strings.EqualFold(got, upType) {
		_ = upConn.Close()
		log.Warn("upstream switched to a protocol the client did not ask for", zap.String("got", got))
		writeError(w, http.StatusBadGateway, fmt.Sprintf("spdy-origin-agent: upstream switched protocols to %q, client requested %q", got, upType))
		return
	}
	h.switchProtocols(w, hj, resp, upType, upConn, br, log)
}

// upgradeRequest is r as it goes to the upstream: the target's URL, the client's
// headers without hop-by-hop ones, and the upgrade asked for again.
func (h *upstreamHandler) upgradeRequest(r *http.Request, upType string) *http.Request {
	out := r.Clone(r.Context()) // headers included
	h.pointAtTarget(out)
	out.RequestURI = ""
	out.Host = r.Host
	removeHopHeaders(out.Header)
	out.Header.Set("Connection", "Upgrade")
	out.Header.Set("Upgrade", upType)
	out.Body, out.ContentLength, out.TransferEncoding = nil, 0, nil
	out.Close = false
	return out
}

// upgradeUpstream sends the upgrade request on a new upstream connection, within
// tuning.upgradeHeaderTimeout, and returns the connection, its reader and the 101.
// Anything else it answers itself (the upstream's refusal relayed, or an error) and
// returns false.
func (h *upstreamHandler) upgradeUpstream(w http.ResponseWriter, r *http.Request, upType string, log *zap.Logger) (net.Conn, *bufio.Reader, *http.Response, bool) {
	out := h.upgradeRequest(r, upType)
	ctx, cancel := context.WithTimeout(r.Context(), h.tun.upgradeHeaderTimeout)
	defer cancel()
	upConn, err := h.dialUpstream(ctx)
	if err != nil {
		h.proxyError(w, r, err)
		return nil, nil, nil, false
	}
	stop := context.AfterFunc(ctx, func() { _ = upConn.SetDeadline(time.Unix(1, 0)) })
	if err := out.Write(upConn); err != nil {
		stop()
		_ = upConn.Close()
		h.proxyError(w, r, fmt.Errorf("writing upgrade request: %w", err))
		return nil, nil, nil, false
	}
	lr := &io.LimitedReader{R: upConn, N: maxUpstreamHeaderBytes}
	br := bufio.NewReader(lr)
	resp, err := http.ReadResponse(br, out)
	if err != nil && lr.N <= 0 {
		err = fmt.Errorf("response headers over %d bytes", maxUpstreamHeaderBytes)
	}
	lr.N = math.MaxInt64 // the headers are in; the body or the pipe is not bounded here
	if err == nil && resp.StatusCode != http.StatusSwitchingProtocols {
		// Refused or ignored upgrade: relay the answer, body included, for as
		// long as the client stays (a raw connection does not see r's context).
		stop()
		defer upConn.Close()
		defer context.AfterFunc(r.Context(), func() { _ = upConn.SetDeadline(time.Unix(1, 0)) })()
		h.relayResponse(w, resp, log)
		return nil, nil, nil, false
	}
	if stopped := stop(); err != nil || !stopped {
		_ = upConn.Close()
		if err == nil {
			err = ctx.Err()
		}
		h.proxyError(w, r, fmt.Errorf("reading upgrade response: %w", err))
		return nil, nil, nil, false
	}
	_ = upConn.SetDeadline(time.Time{})
	return upConn, br, resp, true
}

// switchProtocols sends the upstream's 101 to the client as the stream's reply, takes
// the stream over and pipes bytes between it and upConn (read through upR) until both
// directions end.
func (h *upstreamHandler) switchProtocols(w http.ResponseWriter, hj http.Hijacker, resp *http.Response, upType string,
	upConn net.Conn, upR *bufio.Reader, log *zap.Logger) {
	addEndToEnd(w.Header(), resp.Header)
	w.Header().Set("Connection", "Upgrade")
	w.Header().Set("Upgrade", upType)
	w.WriteHeader(http.StatusSwitchingProtocols)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	client, rw, err := hj.Hijack()
	if err != nil {
		_ = upConn.Close()
		if errors.Is(err, spdy.ErrTooManyUpgrades) {
			// The client got 503 instead of the 101.
			log.Warn("upgrade refused: this session has its maximum of upgraded streams open; run more --connections", zap.Error(err))
			return
		}
		log.Error("hijacking upgraded stream failed", zap.Error(err))
		return
	}
	var clientR io.Reader = client
	if rw != nil && rw.Reader.Buffered() > 0 {
		clientR = rw.Reader // holds bytes read ahead; reads through to client afterwards
	}
	log.Debug("upgraded stream open")
	n1, n2, err := pipe(client, clientR, upConn, upR, h.tun.pipeLinger)
	if err != nil {
		log.Debug("upgraded stream ended with error", zap.Error(err), zap.Int64("bytes_to_upstream", n1), zap.Int64("bytes_to_client", n2))
	} else {
		log.Debug("upgraded stream closed", zap.Int64("bytes_to_upstream", n1), zap.Int64("bytes_to_client", n2))
	}
}

// relayResponse copies a non-101 answer to an upgrade request back to the client.
func (h *upstreamHandler) relayResponse(w http.ResponseWriter, resp *http.Response, log *zap.Logger) {
	defer resp.Body.Close()
	addEndToEnd(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	if _, err := io.Copy(w, resp.Body); err != nil {
		log.Debug("relaying refused-upgrade body failed", zap.Error(err))
		panic(http.ErrAbortHandler) // never end a truncated body cleanly
	}
}

func (h *upstreamHandler) dialUpstream(ctx context.Context) (net.Conn, error) {
	c, err := h.dialer.DialContext(ctx, "tcp", hostPort(h.target))
	if err != nil {
		return nil, err
	}
	if h.target.Scheme != "https" {
		return c, nil
	}
	tlsConf := h.tlsConf.Clone()
	tlsConf.ServerName, tlsConf.NextProtos = h.target.Hostname(), []string{"http/1.1"}
	tc := tls.Client(c, tlsConf)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	return tc, nil
}

type closeWriter interface{ CloseWrite() error }

// pipe copies client→upstream and upstream→client until both directions end. When one
// direction reaches EOF its destination is half-closed (if it supports CloseWrite) and
// the other direction gets linger to finish; on an error, or when half-close is not
// possible, both ends are closed at once.
func pipe(client net.Conn, clientR io.Reader, up net.Conn, upR io.Reader, linger time.Duration) (toUp, toClient int64, err error) {
	var (
		once     sync.Once
		closeAll = func() { once.Do(func() { _ = client.Close(); _ = up.Close() }) }
		errs     = make(chan error, 2)
	)
	half := func(dst net.Conn, src io.Reader, n *int64) {
		c, err := io.Copy(dst, src)
		*n = c
		if err == nil {
			if cw, ok := dst.(closeWriter); ok && cw.CloseWrite() == nil {
				errs <- nil
				return
			}
		}
		closeAll()
		errs <- err
	}
	go half(up, clientR, &toUp)
	go half(client, upR, &toClient)
	first := <-errs
	var second error
	if first == nil {
		t := time.NewTimer(linger)
		select {
		case second = <-errs:
			t.Stop()
		case <-t.C:
			closeAll()
			second = <-errs
		}
	} else {
		second = <-errs
	}
	closeAll()
	if first != nil {
		return toUp, toClient, first
	}
	if second != nil && !errors.Is(second, net.ErrClosed) {
		return toUp, toClient, second
	}
	return toUp, toClient, nil
}

// pointAtTarget makes out's URL the upstream's, as ReverseProxy's SetURL
// does: the target's scheme and host, its path before the request's and
// its query before the request's. It clears out.Host; callers set it.
func (h *upstreamHandler) pointAtTarget(out *http.Request) {
	(&httputil.ProxyRequest{Out: out}).SetURL(h.target)
}
