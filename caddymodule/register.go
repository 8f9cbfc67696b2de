package caddymodule

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/spdy-origin/spdy-origin/spdy"
)

// Agent identity headers on the registration PUT (see the agent's
// /work/team/agent-headers.txt contract).
const (
	headerAgentName       = "Spdy-Origin-Agent-Name"
	headerAgentVersion    = "Spdy-Origin-Agent-Version"
	headerAgentInstance   = "Spdy-Origin-Agent-Instance"
	headerAgentConnection = "Spdy-Origin-Agent-Connection"
)

// handshakeTimeout bounds writing the 200 response on the hijacked conn.
const handshakeTimeout = 10 * time.Second

// serveRegistration handles a request on the connect path.
func (h *Handler) serveRegistration(w http.ResponseWriter, r *http.Request) error {
	ip := clientIP(r)
	log := h.logger.With(zap.String("pool", h.Pool), zap.String("client_ip", ip), zap.String("proto", r.Proto))

	if wait := h.limiter.blocked(ip); wait > 0 {
		countRegistrationFailure(h.Pool, reasonLockedOut)
		// Debug only: the lockout was logged when it began, and a locked-out
		// client must not be able to flood the log at request rate.
		log.Debug("agent registration refused: too many failed attempts from this IP", zap.Duration("locked_for", wait))
		w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
		return caddyhttp.Error(http.StatusTooManyRequests,
			fmt.Errorf("spdy_origin: too many failed registrations from %s", ip))
	}
	if r.Method != http.MethodPut {
		countRegistrationFailure(h.Pool, reasonBadMethod)
		w.Header().Set("Allow", http.MethodPut)
		return caddyhttp.Error(http.StatusMethodNotAllowed,
			fmt.Errorf("spdy_origin: registration route %s accepts only PUT, got %s", h.Connect, r.Method))
	}
	if r.ProtoMajor != 1 {
		countRegistrationFailure(h.Pool, reasonWrongProtocol)
		log.Warn("agent registration over the wrong protocol; agents must use HTTP/1.1 (ALPN http/1.1)")
		return writeTextError(w, http.StatusHTTPVersionNotSupported,
			"spdy-origin agents must register over HTTP/1.1 (offer only \"http/1.1\" in TLS ALPN); got "+r.Proto+"\n")
	}

	given, ok := bearerToken(r.Header.Get("Authorization"))
	if !ok || !h.tokenValid(given) {
		reason, desc := reasonBadToken, "wrong token"
		if !ok {
			reason, desc = reasonMissingToken, "missing bearer token"
		}
		countRegistrationFailure(h.Pool, reason)
		locked := h.limiter.fail(ip)
		log.Warn("agent registration rejected: "+desc, zap.Bool("now_locked_out", locked))
		if ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="spdy-origin", error="invalid_token"`)
		} else {
			w.Header().Set("WWW-Authenticate", `Bearer realm="spdy-origin"`)
		}
		return writeTextError(w, http.StatusUnauthorized, "spdy-origin: "+desc+"\n")
	}
	h.limiter.succeed(ip)

	body, err := io.ReadAll(io.LimitReader(r.Body, h.MaxRegistrationBody+1))
	if err != nil {
		countRegistrationFailure(h.Pool, reasonBodyRead)
		log.Warn("agent registration: reading request body", zap.Error(err))
		return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("spdy_origin: reading registration body: %w", err))
	}
	if int64(len(body)) > h.MaxRegistrationBody {
		countRegistrationFailure(h.Pool, reasonBodyTooLarge)
		log.Warn("agent registration: body too large", zap.Int64("max_registration_body", h.MaxRegistrationBody))
		return writeTextError(w, http.StatusRequestEntityTooLarge,
			fmt.Sprintf("spdy-origin: registration body larger than %d bytes\n", h.MaxRegistrationBody))
	}

	p := h.transport.pool
	if err := p.admissible(h.MaxSessions); err != nil {
		reason := reasonPoolFull
		if errors.Is(err, errPoolClosed) {
			reason = reasonPoolClosed
		}
		countRegistrationFailure(h.Pool, reason)
		log.Warn("agent registration refused", zap.Error(err))
		w.Header().Set("Retry-After", h.retryAfterSeconds())
		return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("spdy_origin: pool %q: %w", h.Pool, err))
	}

	agent := agentIdentity{
		Name:       cleanIdentity(r.Header.Get(headerAgentName)),
		Version:    cleanIdentity(r.Header.Get(headerAgentVersion)),
		Instance:   cleanIdentity(r.Header.Get(headerAgentInstance)),
		Connection: cleanIdentity(r.Header.Get(headerAgentConnection)),
	}

	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		countRegistrationFailure(h.Pool, reasonHijack)
		if errors.Is(err, http.ErrNotSupported) {
			log.Warn("agent registration: connection cannot be hijacked; agents must use HTTP/1.1", zap.Error(err))
			return writeTextError(w, http.StatusHTTPVersionNotSupported,
				"spdy-origin agents must register over HTTP/1.1 (offer only \"http/1.1\" in TLS ALPN)\n")
		}
		log.Error("agent registration: hijacking connection", zap.Error(err))
		return caddyhttp.Error(http.StatusInternalServerError, fmt.Errorf("spdy_origin: hijack: %w", err))
	}
	// From here on the connection is ours: every failure closes it.
	start := time.Now()
	id := sessionIDs.Add(1)
	reply := fmt.Sprintf("spdy-origin: registered session %d in pool %q\n", id, h.Pool)
	_ = conn.SetDeadline(time.Time{})
	_ = conn.SetWriteDeadline(time.Now().Add(handshakeTimeout))
	_, err = fmt.Fprintf(brw.Writer, "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s", len(reply), reply)
	if err == nil {
		err = brw.Writer.Flush()
	}
	if err == nil {
		err = conn.SetWriteDeadline(time.Time{})
	}
	if err != nil {
		_ = conn.Close()
		countRegistrationFailure(h.Pool, reasonHandshake)
		log.Warn("agent registration: writing 200 response", zap.Error(err))
		return nil
	}

	cfg := *h.spdyCfg
	ss, err := spdy.NewClient(spdy.BufferedConn(conn, brw.Reader), &cfg)
	if err != nil {
		_ = conn.Close()
		countRegistrationFailure(h.Pool, reasonHandshake)
		log.Error("agent registration: starting SPDY session", zap.Error(err))
		return nil
	}
	s := &session{
		id:     id,
		s:      ss,
		agent:  agent,
		remote: conn.RemoteAddr().String(),
		since:  start,
		pool:   p,
	}
	if err := p.add(s, h.MaxSessions); err != nil {
		// Lost a race with another registration or the pool's removal.
		_ = ss.Shutdown(context.Background())
		_ = ss.Close()
		reason := reasonPoolFull
		if errors.Is(err, errPoolClosed) {
			reason = reasonPoolClosed
		}
		countRegistrationFailure(h.Pool, reason)
		log.Warn("agent registration refused after handshake", zap.Error(err))
		return nil
	}
	go h.logConnected(s, len(body))
	return nil
}

// logConnected measures a first RTT so the connect log line carries it.
func (h *Handler) logConnected(s *session, bodyLen int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rtt, err := s.s.Ping(ctx)
	fields := append(s.logFields(), zap.Int("registration_body_bytes", bodyLen))
	if err == nil {
		s.rtt.Store(int64(rtt))
		fields = append(fields, zap.Duration("rtt", rtt))
	} else {
		fields = append(fields, zap.NamedError("ping_error", err))
	}
	s.pool.log().Info("agent connected", fields...)
}

// admissible reports whether a new session could join now; add re-checks.
func (p *pool) admissible(maxSessions int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errPoolClosed
	}
	if n := p.activeLocked(); maxSessions > 0 && n >= maxSessions {
		return fmt.Errorf("%w: %d of max_sessions %d connected", errPoolFull, n, maxSessions)
	}
	return nil
}

// tokenValid compares against every token in constant time; hashing first
// hides the tokens' lengths too.
func (h *Handler) tokenValid(given string) bool {
	g := sha256.Sum256([]byte(given))
	match := 0
	for _, tok := range h.tokens {
		t := sha256.Sum256(tok)
		match |= subtle.ConstantTimeCompare(g[:], t[:])
	}
	return match == 1
}

func bearerToken(auth string) (string, bool) {
	const prefix = "bearer "
	if len(auth) <= len(prefix) || !strings.EqualFold(auth[:len(prefix)], prefix) {
		return "", false
	}
	tok := strings.TrimSpace(auth[len(prefix):])
	return tok, tok != ""
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

// cleanIdentity keeps at most 128 bytes of printable ASCII.
func cleanIdentity(v string) string {
	var b strings.Builder
	for i := 0; i < len(v) && b.Len() < 128; i++ {
		if c := v[i]; c >= 0x20 && c < 0x7f {
			b.WriteByte(c)
		}
	}
	return strings.TrimSpace(b.String())
}

// authLimiter locks out client IPs after repeated failed registrations.
type authLimiter struct {
	max    int
	window time.Duration

	mu      sync.Mutex
	entries map[string]*authEntry
}

type authEntry struct {
	fails   int
	first   time.Time
	blocked time.Time // locked out until
}

const authLimiterMaxEntries = 10000

func newAuthLimiter(max int, window time.Duration) *authLimiter {
	return &authLimiter{max: max, window: window, entries: make(map[string]*authEntry)}
}

// authLimiters holds one limiter per pool name for the life of the process,
// so that a config reload (frequent with tools that generate configs) does
// not lift a lockout.
var authLimiters sync.Map // pool name → *authLimiter

// poolAuthLimiter returns the pool's limiter with the latest settings.
func poolAuthLimiter(pool string, max int, window time.Duration) *authLimiter {
	v, _ := authLimiters.LoadOrStore(pool, newAuthLimiter(max, window))
	l := v.(*authLimiter)
	l.mu.Lock()
	l.max, l.window = max, window
	l.mu.Unlock()
	return l
}

// blocked returns how long ip is still locked out, or 0.
func (l *authLimiter) blocked(ip string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[ip]
	if e == nil {
		return 0
	}
	if d := time.Until(e.blocked); d > 0 {
		return d
	}
	return 0
}

// fail records a failed attempt and reports whether ip is now locked out.
func (l *authLimiter) fail(ip string) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.entries) >= authLimiterMaxEntries {
		l.pruneLocked(now)
	}
	e := l.entries[ip]
	if e == nil || now.Sub(e.first) > l.window {
		if e == nil && len(l.entries) >= authLimiterMaxEntries {
			// Under a wide attack keep memory bounded; counting restarts.
			clear(l.entries)
		}
		e = &authEntry{first: now}
		l.entries[ip] = e
	}
	e.fails++
	if e.fails >= l.max {
		e.blocked = now.Add(l.window)
		e.fails = 0
		e.first = now
		return true
	}
	return false
}

func (l *authLimiter) succeed(ip string) {
	l.mu.Lock()
	delete(l.entries, ip)
	l.mu.Unlock()
}

func (l *authLimiter) pruneLocked(now time.Time) {
	for ip, e := range l.entries {
		if now.Sub(e.first) > l.window && now.After(e.blocked) {
			delete(l.entries, ip)
		}
	}
}
