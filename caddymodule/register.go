package caddymodule

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
	"github.com/spdy-origin/spdy-origin/spdy"
)

// serveRegistration handles a request on the connect path: it checks the
// PUT (method, protocol, token, body, the hosts announced against the
// token's), reserves a slot in the pool, takes the connection over and
// answers 200 on it, then starts the SPDY session.
func (h *Handler) serveRegistration(w http.ResponseWriter, r *http.Request) error {
	ip := clientIP(r)
	log := h.logger.With(zap.String("pool", h.Pool), zap.String("client_ip", ip), zap.String("proto", r.Proto))

	if f := h.checkRequest(w, r); f != nil {
		return h.refuse(w, r, log, *f)
	}
	// The token is checked before any lockout: a valid token always
	// registers, so nobody sharing the agent's address can lock it out.
	given, ok := handshake.BearerToken(r.Header)
	var scope *tokenScope
	if ok {
		scope = h.matchToken(given)
	}
	if scope == nil {
		return h.refuseToken(w, r, log, ip, ok)
	}
	body, f := h.readBody(r)
	if f != nil {
		return h.refuse(w, r, log, *f)
	}
	announced, f := checkHosts(w, r, scope)
	if f != nil {
		return h.refuse(w, r, log, *f)
	}

	// The slot is taken before the 200, so an agent told 200 always gets
	// its session: two registrations cannot both see the last free slot.
	slot, err := h.transport.pool.reserve(h.MaxSessions)
	if err != nil {
		w.Header().Set("Retry-After", h.retryAfterSeconds())
		return h.refuse(w, r, log, h.poolRefusal(err))
	}
	defer slot.release() // a no-op once the session has joined

	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return h.refuse(w, r, log, hijackRefusal(err))
	}
	// From here on the connection is ours: every failure closes it.
	h.startSession(conn, brw.Reader, slot, accepted{
		agent:   agentIdentity(handshake.ReadIdentity(r.Header)),
		caps:    handshake.ReadCapabilities(r.Header),
		hosts:   announced,
		scope:   scope,
		bodyLen: len(body),
	}, log)
	return nil
}

// accepted is what an accepted registration said and proved.
type accepted struct {
	agent   agentIdentity
	caps    handshake.Capabilities // what the agent understands
	hosts   []string               // the host patterns it announced; nil: none (every host)
	scope   *tokenScope            // its token
	bodyLen int
}

// checkHosts reads the host patterns the agent announces: 400 when they are
// malformed or too many, 403 (naming the host in
// handshake.HeaderRefusedHost) when the token may not serve one.
func checkHosts(w http.ResponseWriter, r *http.Request, scope *tokenScope) ([]string, *refusal) {
	announced, err := handshake.ReadHosts(r.Header)
	if err != nil {
		return nil, &refusal{
			status: http.StatusBadRequest, reason: reasonBadHosts, level: zapcore.WarnLevel,
			msg: "agent registration refused: malformed host announcement", err: err,
			answer: "spdy-origin: " + err.Error() + "\n",
		}
	}
	if host := scope.refused(announced); host != "" {
		w.Header().Set(handshake.HeaderRefusedHost, host)
		return nil, &refusal{
			status: http.StatusForbidden, reason: reasonHostRefused, level: zapcore.WarnLevel,
			msg: "agent registration refused: its token may not serve a host it announced",
			err: fmt.Errorf("token %d may not serve %s (its hosts: %s; announced: %s)",
				scope.n, host, strings.Join(scope.hosts, " "), strings.Join(announced, " ")),
			answer: fmt.Sprintf("spdy-origin: this token may not serve %s; it may serve %s\n", host, strings.Join(scope.hosts, ", ")),
		}
	}
	return announced, nil
}

// checkRequest refuses a request no agent sends: another method, or a
// protocol whose connection cannot be taken over.
func (h *Handler) checkRequest(w http.ResponseWriter, r *http.Request) *refusal {
	if r.Method != http.MethodPut {
		w.Header().Set("Allow", http.MethodPut)
		// Debug: no agent sends another method, and anyone can send these
		// at request rate.
		return &refusal{
			status: http.StatusMethodNotAllowed, reason: reasonBadMethod, level: zapcore.DebugLevel,
			msg: "agent registration refused: wrong method",
			err: fmt.Errorf("registration route %s accepts only PUT, got %s", h.Connect, r.Method),
		}
	}
	if r.ProtoMajor != 1 {
		return &refusal{
			status: http.StatusHTTPVersionNotSupported, reason: reasonWrongProtocol, level: zapcore.WarnLevel,
			msg:    "agent registration over the wrong protocol; agents must use HTTP/1.1 (ALPN http/1.1)",
			err:    fmt.Errorf("registration over %s: only an HTTP/1.1 connection can be taken over", r.Proto),
			answer: "spdy-origin agents must register over HTTP/1.1 (offer only \"http/1.1\" in TLS ALPN); got " + r.Proto + "\n",
		}
	}
	return nil
}

// readBody reads the registration body, at most max_registration_body bytes.
func (h *Handler) readBody(r *http.Request) ([]byte, *refusal) {
	if r.ContentLength > h.MaxRegistrationBody {
		f := h.bodyTooLarge(fmt.Sprintf("declared body of %d bytes", r.ContentLength))
		return nil, &f
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, h.MaxRegistrationBody+1))
	if err != nil {
		return nil, &refusal{
			status: http.StatusBadRequest, reason: reasonBodyRead, level: zapcore.WarnLevel,
			msg: "agent registration: reading request body",
			err: fmt.Errorf("reading registration body: %w", err),
		}
	}
	if int64(len(body)) > h.MaxRegistrationBody {
		f := h.bodyTooLarge("body")
		return nil, &f
	}
	return body, nil
}

// poolRefusal answers a registration the pool has no slot for (full, or
// removed from the config) with 503; the caller sets Retry-After.
func (h *Handler) poolRefusal(err error) refusal {
	reason := reasonPoolFull
	if errors.Is(err, errPoolClosed) {
		reason = reasonPoolClosed
	}
	return refusal{
		status: http.StatusServiceUnavailable, reason: reason, level: zapcore.WarnLevel,
		msg: "agent registration refused", err: fmt.Errorf("pool %q: %w", h.Pool, err),
	}
}

// hijackRefusal answers a registration whose connection cannot be taken over.
func hijackRefusal(err error) refusal {
	if errors.Is(err, http.ErrNotSupported) {
		return refusal{
			status: http.StatusHTTPVersionNotSupported, reason: reasonHijack, level: zapcore.WarnLevel,
			msg: "agent registration: connection cannot be hijacked; agents must use HTTP/1.1",
			err: fmt.Errorf("hijack: %w", err), answer: "spdy-origin agents must register over HTTP/1.1 (offer only \"http/1.1\" in TLS ALPN)\n",
		}
	}
	return refusal{
		status: http.StatusInternalServerError, reason: reasonHijack, level: zapcore.ErrorLevel,
		msg: "agent registration: hijacking connection", err: fmt.Errorf("hijack: %w", err),
	}
}

// proxyCapabilities is what we announce to agents that announce theirs.
var proxyCapabilities = handshake.Capabilities{handshake.CapTrailers}

// startSession answers 200 on the hijacked conn, starts the SPDY session
// (reading through br, which may hold the agent's first frames) and adds it
// to the slot's pool. Every failure closes conn. The capabilities the agent
// announced decide what it gets: trailers (HEADERS frames) only if it
// understands them, and our capabilities only if it announced any (an Amahi
// origin gets the 200 it knows).
func (h *Handler) startSession(conn net.Conn, br *bufio.Reader, slot *poolSlot, reg accepted, log *zap.Logger) {
	start := time.Now()
	id := sessionIDs.Add(1)
	caps := reg.caps
	var ours handshake.Capabilities
	if len(caps) > 0 {
		ours = proxyCapabilities
	}
	if err := handshake.Accept(conn, fmt.Sprintf("spdy-origin: registered session %d in pool %q\n", id, h.Pool), ours); err != nil {
		_ = conn.Close()
		countRegistrationFailure(h.Pool, reasonHandshake)
		log.Warn("agent registration: writing 200 response", zap.Error(err))
		return
	}
	cfg := *h.spdyCfg
	cfg.PeerTrailers = caps.Has(handshake.CapTrailers)
	ss, err := spdy.NewClient(spdy.BufferedConn(conn, br), &cfg)
	if err != nil {
		_ = conn.Close()
		countRegistrationFailure(h.Pool, reasonHandshake)
		log.Error("agent registration: starting SPDY session", zap.Error(err))
		return
	}
	s := &session{
		id:       id,
		s:        ss,
		agent:    reg.agent,
		caps:     caps,
		hosts:    reg.hosts,
		announce: announceSet(reg.hosts),
		scope:    reg.scope,
		remote:   conn.RemoteAddr().String(),
		since:    start,
		pool:     slot.p,
	}
	if err := slot.join(s); err != nil {
		// The pool was removed from the config during the handshake: its
		// other agents are getting GOAWAY too.
		_ = ss.Shutdown(context.Background())
		_ = ss.Close()
		countRegistrationFailure(h.Pool, reasonPoolClosed)
		log.Warn("agent registration refused after handshake", zap.Error(err))
		return
	}
	go h.logConnected(s, reg.bodyLen)
}

// refusal is a registration answered with an error status.
type refusal struct {
	status int
	reason string        // label of registration_failures_total
	level  zapcore.Level // of the log line
	msg    string        // log message
	err    error         // the cause: logged, and handed to Caddy's error handling unless answer is set
	answer string        // plain-text body for the agent to log; empty: Caddy's error handling answers
}

// refuse counts and logs a refused registration, then answers it.
//
// On HTTP/1 the answer goes out at once and the connection closes after it,
// whatever body the client declared. net/http would otherwise read the
// unread body first, waiting on a client that may send nothing: before
// writing the answer, chunkWriter.writeHeader discards up to 256 KiB (it
// gives up at once on a declared body larger than that only when the body
// is its own type, and Caddy wraps it); after it, body.Close in
// finishRequest reads up to 256 KiB more before closing. "Connection:
// close" skips the first read and tells the client; a read deadline in the
// past (it reaches the connection through Caddy's wrappers) makes the
// second fail at once. HTTP/2 and HTTP/3 just reset the stream, and there
// "Connection: close" would end (GOAWAY) every other request on the
// connection, so they are left alone.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, log *zap.Logger, f refusal) error {
	countRegistrationFailure(h.Pool, f.reason)
	if ce := log.Check(f.level, f.msg); ce != nil {
		ce.Write(zap.Int("status", f.status), zap.Error(f.err))
	}
	if r.ProtoMajor == 1 {
		w.Header().Set("Connection", "close")
		_ = http.NewResponseController(w).SetReadDeadline(time.Now())
	}
	if f.answer != "" {
		return writeTextError(w, f.status, f.answer)
	}
	return caddyhttp.Error(f.status, fmt.Errorf("spdy_origin: %w", f.err))
}

// refuseToken answers a missing or wrong token: 401, or 429 once the
// client's address prefix is locked out. A valid token never gets here.
func (h *Handler) refuseToken(w http.ResponseWriter, r *http.Request, log *zap.Logger, ip string, present bool) error {
	f := h.limiter.fail(ip)
	log = log.With(zap.String("prefix", f.prefix), zap.Int("failures", f.fails))
	if f.wasLocked {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(f.lockedFor.Seconds()))))
		// Debug: the lockout was logged when it began, and a locked-out
		// prefix must not be able to flood the log at request rate.
		return h.refuse(w, r, log, refusal{
			status: http.StatusTooManyRequests, reason: reasonLockedOut, level: zapcore.DebugLevel,
			msg: "agent registration refused: too many wrong tokens from this address prefix",
			err: fmt.Errorf("wrong or missing token from %s, locked out for %v more", f.prefix, f.lockedFor.Round(time.Second)),
		})
	}
	if f.started() {
		log.Warn("agent registration: locking out an address prefix after repeated wrong tokens (valid tokens still register)",
			zap.Duration("locked_for", f.lockedFor))
	}
	reason, desc, challenge := reasonBadToken, "wrong token", handshake.TokenChallenge("invalid_token")
	if !present {
		reason, desc, challenge = reasonMissingToken, "missing bearer token", handshake.TokenChallenge("")
	}
	w.Header().Set("WWW-Authenticate", challenge)
	return h.refuse(w, r, log, refusal{
		status: http.StatusUnauthorized, reason: reason, level: zapcore.WarnLevel,
		msg: "agent registration rejected: " + desc, err: errors.New(desc),
		answer: "spdy-origin: " + desc + "\n",
	})
}

// bodyTooLarge refuses a registration body over max_registration_body;
// what names it ("body", "declared body of N bytes").
func (h *Handler) bodyTooLarge(what string) refusal {
	return refusal{
		status: http.StatusRequestEntityTooLarge, reason: reasonBodyTooLarge, level: zapcore.WarnLevel,
		msg:    "agent registration: body too large",
		err:    fmt.Errorf("%s larger than max_registration_body (%d bytes)", what, h.MaxRegistrationBody),
		answer: fmt.Sprintf("spdy-origin: registration body larger than %d bytes\n", h.MaxRegistrationBody),
	}
}

// logConnected measures a first RTT so the connect log line carries it.
func (h *Handler) logConnected(s *session, bodyLen int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rtt, err := s.s.Ping(ctx)
	fields := append(s.logFields(), zap.Int("registration_body_bytes", bodyLen))
	if s.scope != nil {
		fields = append(fields, zap.Int("token", s.scope.n))
	}
	if s.hosts != nil {
		fields = append(fields, zap.Strings("hosts", s.hosts))
	}
	if s.scope.restricted() {
		fields = append(fields, zap.Strings("token_hosts", s.scope.hosts))
	}
	if err == nil {
		s.rtt.Store(int64(rtt))
		fields = append(fields, zap.Duration("rtt", rtt))
	} else {
		fields = append(fields, zap.NamedError("ping_error", err))
	}
	s.pool.log().Info("agent connected", fields...)
}

// writeTextError answers with a plain-text body the agent can log. It
// returns nil: the response is complete.
func writeTextError(w http.ResponseWriter, status int, msg string) error {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(msg)))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg)
	return nil
}

func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
