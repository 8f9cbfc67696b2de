package agent

// Dialing a proxy: TCP, TLS (ALPN http/1.1 only), then the registration
// (internal/handshake.Register: the PUT with the token and identity headers,
// and the 200), after which the same connection carries SPDY/3.1 with the
// proxy as client and the agent as server.

import (
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
	"time"

	"go.uber.org/zap"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
	"github.com/spdy-origin/spdy-origin/spdy"
)

// agentCapabilities is what the agent announces at registration: it
// understands HEADERS frames (trailers, which gRPC needs). A proxy that does
// not answer with its own list (an Amahi proxy) gets no HEADERS frames.
var agentCapabilities = handshake.Capabilities{handshake.CapTrailers}

// connect dials proxy, registers, and starts a SPDY server session on the
// connection, for connection slot sl. Its errors say at which stage it failed
// (stageError, for the metrics).
func (a *Agent) connect(ctx context.Context, proxy *url.URL, sl slot, log *zap.Logger) (*spdy.Session, error) {
	hctx, cancel := context.WithTimeout(ctx, a.tun.handshakeTimeout)
	defer cancel()

	conn, err := a.dialProxy(hctx, proxy)
	if err != nil {
		return nil, err
	}
	res, err := handshake.Register(hctx, conn, handshake.Request{
		URL:   proxy,
		Token: a.opts.Token,
		Identity: handshake.Identity{
			Name:       a.opts.Name,
			Version:    agentVersion(),
			Instance:   a.instance,
			Connection: strconv.Itoa(sl.conn),
		},
		Capabilities: agentCapabilities,
		Hosts:        announced(a.routes),
	})
	if err != nil {
		_ = conn.Close()
		return nil, ctxErr(hctx, explainRefusal(err))
	}
	log.Debug("registered with proxy", zap.Int("body_bytes", len(res.Body)), zap.Int("buffered_spdy_bytes", res.Reader.Buffered()))
	cfg := *a.tun.spdy
	cfg.Logger = log.Named("spdy").Sugar()
	cfg.PeerTrailers = res.Capabilities.Has(handshake.CapTrailers)
	sess, err := spdy.NewServer(spdy.BufferedConn(conn, res.Reader), &cfg, a.handler)
	if err != nil {
		_ = conn.Close()
		return nil, &stageError{causeRegistration, fmt.Errorf("starting SPDY session: %w", err)}
	}
	a.sessions.add(sess, sl)
	return sess, nil
}

// explainRefusal adds what to check to a registration the proxy refused,
// telling spdy_origin's own token refusal from a refusal by whatever answers
// in front of its registration route (see handshake.ErrBlocked).
func explainRefusal(err error) error {
	var refused *handshake.StatusError
	switch {
	case errors.As(err, &refused) && refused.TokenRejected():
		return fmt.Errorf("%w (check --token / %s)", err, envName("token"))
	case errors.As(err, &refused) && refused.RefusedHost() != "":
		return fmt.Errorf("%w (the token is valid, but its hosts in Caddy's spdy_origin config, `token <secret> hosts <pattern...>`, "+
			"do not include %s: add it there, or remove this agent's route for it; nothing is served through this proxy until then)",
			err, refused.RefusedHost())
	case errors.As(err, &refused) && refused.Blocked():
		switch refused.StatusCode {
		case http.StatusUnauthorized:
			return fmt.Errorf("%w (this is not spdy_origin's token check, whose 401 carries %s, so the token was not checked: "+
				"client authentication on the site, such as basic_auth or forward_auth, answered before spdy_origin's registration route; "+
				"add spdy_origin_register to that site (README: Protecting your site), or find what in front of Caddy asks for credentials)",
				err, handshake.TokenChallenge(""))
		case http.StatusForbidden:
			return fmt.Errorf("%w (spdy_origin never answers 403: an access rule in front of its registration route refused this agent, "+
				"such as a remote_ip rule or forward_auth on the site, or a CDN or firewall before Caddy; "+
				"add spdy_origin_register to that site (README: Protecting your site), or allow this agent's address)", err)
		default:
			return fmt.Errorf("%w (a proxy between this agent and Caddy wants credentials; the agent must reach Caddy directly)", err)
		}
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w (Caddy does this when an abort rule answers before spdy_origin's registration route, "+
			"such as remote_ip with abort; see README: Protecting your site)", err)
	}
	return err
}

// hostPort is u's address to dial: its host and port, or the default port
// of its scheme (80 for http, 443 otherwise); for proxies and upstreams.
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
		return nil, &stageError{causeDial, fmt.Errorf("dialing proxy %s: %w", addr, ctxErr(ctx, err))}
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
		return nil, &stageError{causeTLS, fmt.Errorf("TLS handshake with proxy %s: %w%s", addr, ctxErr(ctx, err), tlsHint(err))}
	}
	if p := tlsConn.ConnectionState().NegotiatedProtocol; p != "" && p != "http/1.1" {
		_ = tlsConn.Close()
		return nil, &stageError{causeTLS, fmt.Errorf("proxy %s negotiated ALPN protocol %q; registration needs http/1.1", addr, p)}
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

// ctxErr turns the generic errors of I/O that ctx aborted (dial, TLS, registration)
// into "timed out" or "cancelled".
func ctxErr(ctx context.Context, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("handshake timed out: %w", err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("cancelled: %w", err)
	}
	return err
}
