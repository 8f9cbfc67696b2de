package main

// The registration handshake (the Amahi spdy-proxy protocol, hardened):
//
//	agent → proxy   PUT <proxy URL path> HTTP/1.1
//	                Host: <proxy host>
//	                Authorization: Bearer <token>
//	                User-Agent: spdy-origin-agent/<version>
//	                Spdy-Origin-Agent-Name: <--name, default the hostname>
//	                Spdy-Origin-Agent-Version: <version>
//	                Spdy-Origin-Agent-Instance: <random id, one per process>
//	                Spdy-Origin-Agent-Connection: <0-based index of this connection>
//	                Content-Type: text/plain; charset=utf-8
//	                Content-Length: n
//
//	                spdy-origin-agent <version> name=<name> instance=<id>
//
//	proxy → agent   HTTP/1.1 200 OK, Content-Length (or chunked) body, at most 64 KiB
//
// after which the same TLS connection carries SPDY/3.1 with the proxy as client and
// the agent as server. SPDY bytes may already sit in our bufio.Reader behind the 200's
// body; spdy.BufferedConn hands them to the session.
//
// The caddymodule reads the Spdy-Origin-Agent-* headers for its logs, metrics and
// admin view (see /work/team/agent-headers.txt).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/spdy-origin/spdy-origin/spdy"
)

// Identity headers on the registration request.
const (
	headerAgentName       = "Spdy-Origin-Agent-Name"
	headerAgentVersion    = "Spdy-Origin-Agent-Version"
	headerAgentInstance   = "Spdy-Origin-Agent-Instance"
	headerAgentConnection = "Spdy-Origin-Agent-Connection"

	defaultConnectPath = "/.well-known/spdy-origin"
	maxHandshakeBody   = 64 << 10
	bodyExcerptLen     = 256
)

// errTokenRejected marks a 401 from the proxy.
var errTokenRejected = errors.New("token rejected by proxy")

// handshakeError is a non-200 answer to the registration PUT.
type handshakeError struct {
	status     int
	statusText string // the status line's text, e.g. "500 Internal Server Error"
	body       string // excerpt, printable
	retryAfter time.Duration
	rejected   bool
}

func (e *handshakeError) Error() string {
	var b strings.Builder
	if e.rejected {
		b.WriteString("token rejected by proxy (check --token / SPDY_ORIGIN_TOKEN): ")
	} else {
		b.WriteString("proxy refused registration: ")
	}
	b.WriteString("HTTP ")
	b.WriteString(e.statusText)
	if e.body != "" {
		fmt.Fprintf(&b, ": %q", e.body)
	}
	return b.String()
}

func (e *handshakeError) Unwrap() error {
	if e.rejected {
		return errTokenRejected
	}
	return nil
}

// connectURL returns the URL the PUT goes to: the proxy URL, with the default
// registration path when the user gave none.
func connectURL(p *url.URL) *url.URL {
	u := *p
	if u.Path == "" || u.Path == "/" {
		u.Path, u.RawPath = defaultConnectPath, ""
	}
	return &u
}

// connect dials proxy, registers, and starts a SPDY server session on the connection.
func (a *Agent) connect(ctx context.Context, proxy *url.URL, idx int, log *zap.Logger) (*spdy.Session, error) {
	hctx, cancel := context.WithTimeout(ctx, a.tun.handshakeTimeout)
	defer cancel()

	conn, err := a.dialProxy(hctx, proxy)
	if err != nil {
		return nil, err
	}
	br, err := a.register(hctx, conn, proxy, idx, log)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	cfg := *a.tun.spdy
	cfg.Logger = log.Named("spdy").Sugar()
	sess, err := spdy.NewServer(spdy.BufferedConn(conn, br), &cfg, a.handler)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("starting SPDY session: %w", err)
	}
	a.track(sess)
	return sess, nil
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "http" {
		return net.JoinHostPort(u.Hostname(), "80")
	}
	return net.JoinHostPort(u.Hostname(), "443")
}

// dialProxy opens TCP and, for https, completes TLS (verifying the certificate
// against system roots plus --ca-file) within ctx.
func (a *Agent) dialProxy(ctx context.Context, proxy *url.URL) (net.Conn, error) {
	addr := hostPort(proxy)
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dialing proxy %s: %w", addr, ctxErr(ctx, err))
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		_ = tc.SetKeepAlive(true)
		_ = tc.SetKeepAlivePeriod(30 * time.Second)
	}
	if proxy.Scheme != "https" {
		return raw, nil
	}
	cfg := a.tlsConf.Clone()
	cfg.ServerName = proxy.Hostname()
	tlsConn := tls.Client(raw, cfg)
	if err := tlsConn.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("TLS handshake with proxy %s: %w%s", addr, ctxErr(ctx, err), tlsHint(err))
	}
	if p := tlsConn.ConnectionState().NegotiatedProtocol; p != "" && p != "http/1.1" {
		_ = tlsConn.Close()
		return nil, fmt.Errorf("proxy %s negotiated ALPN protocol %q; registration needs http/1.1", addr, p)
	}
	return tlsConn, nil
}

func tlsHint(err error) string {
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ce *tls.CertificateVerificationError
	switch {
	case errors.As(err, &ua):
		return " (if the proxy uses a private CA such as Caddy's `tls internal`, pass its root certificate with --ca-file)"
	case errors.As(err, &hn):
		return " (the --proxy host name must match the proxy's certificate)"
	case errors.As(err, &ce):
		return " (certificate verification failed)"
	}
	return ""
}

// ctxErr turns the generic errors of an aborted dial/read into "timed out" or "cancelled".
func ctxErr(ctx context.Context, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("handshake timed out: %w", err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("cancelled: %w", err)
	}
	return err
}

// register sends the PUT and reads the 200 with its body. It returns the reader
// holding whatever the proxy sent after that body (the first SPDY frames).
func (a *Agent) register(ctx context.Context, conn net.Conn, proxy *url.URL, idx int, log *zap.Logger) (*bufio.Reader, error) {
	// The deadline bounds a proxy that accepts but never answers; AfterFunc also
	// unblocks I/O when ctx is cancelled (agent shutting down).
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	u := connectURL(proxy)
	ver := agentVersion()
	body := fmt.Sprintf("spdy-origin-agent %s name=%s instance=%s\n", ver, a.opts.Name, a.instance)
	req, err := http.NewRequest(http.MethodPut, u.String(), strings.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("building registration request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+a.opts.Token)
	req.Header.Set("User-Agent", "spdy-origin-agent/"+ver)
	req.Header.Set("Content-Type", "text/plain; charset=utf-8")
	req.Header.Set(headerAgentName, a.opts.Name)
	req.Header.Set(headerAgentVersion, ver)
	req.Header.Set(headerAgentInstance, a.instance)
	req.Header.Set(headerAgentConnection, strconv.Itoa(idx))

	bw := bufio.NewWriter(conn)
	if err := req.Write(bw); err != nil {
		return nil, fmt.Errorf("sending registration to proxy: %w", ctxErr(ctx, err))
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("sending registration to proxy: %w", ctxErr(ctx, err))
	}

	br := bufio.NewReaderSize(conn, 16<<10)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("proxy closed the connection without answering: %w", err)
		}
		return nil, fmt.Errorf("reading registration response: %w", ctxErr(ctx, err))
	}
	if resp.StatusCode != http.StatusOK {
		excerpt, _ := io.ReadAll(io.LimitReader(resp.Body, bodyExcerptLen))
		_ = resp.Body.Close()
		he := &handshakeError{
			status:     resp.StatusCode,
			statusText: resp.Status,
			body:       printable(excerpt),
			rejected:   resp.StatusCode == http.StatusUnauthorized,
		}
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
			he.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		}
		return nil, he
	}
	// The body must be delimited, or we could not tell where SPDY starts.
	if resp.ContentLength < 0 && !isChunked(resp.TransferEncoding) {
		_ = resp.Body.Close()
		return nil, errors.New("proxy answered 200 without Content-Length: cannot tell where the SPDY session starts (is this an spdy_origin endpoint?)")
	}
	n, err := io.Copy(io.Discard, io.LimitReader(resp.Body, maxHandshakeBody+1))
	if err != nil {
		return nil, fmt.Errorf("reading registration response body: %w", ctxErr(ctx, err))
	}
	if n > maxHandshakeBody {
		return nil, fmt.Errorf("registration response body exceeds %d bytes; is this an spdy_origin endpoint?", maxHandshakeBody)
	}
	// Body fully read: resp.Body is at EOF, so closing it consumes nothing more of br.
	_ = resp.Body.Close()
	log.Debug("registered with proxy", zap.Int64("body_bytes", n), zap.Int("buffered_spdy_bytes", br.Buffered()))

	stop()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("registration: %w", ctxErr(ctx, ctx.Err()))
	}
	_ = conn.SetDeadline(time.Time{})
	return br, nil
}

func isChunked(te []string) bool {
	return len(te) > 0 && te[0] == "chunked"
}

// printable returns a one-line, valid UTF-8 excerpt of b for logs.
func printable(b []byte) string {
	b = bytes.TrimSpace(b)
	var s strings.Builder
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		b = b[size:]
		switch {
		case r == utf8.RuneError && size <= 1:
			s.WriteRune('?')
		case r == '\n' || r == '\r' || r == '\t':
			s.WriteByte(' ')
		case r < 0x20 || r == 0x7f:
			s.WriteRune('?')
		default:
			s.WriteRune(r)
		}
	}
	return s.String()
}

// parseRetryAfter reads delay-seconds or an HTTP date; 0 when absent or invalid.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil {
		if secs < 0 {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
