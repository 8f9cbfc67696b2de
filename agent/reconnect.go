package agent

import (
	"errors"
	"regexp"
	"time"

	"go.uber.org/zap"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
	"github.com/spdy-origin/spdy-origin/spdy"
)

// retries decides how long one connection loop waits before its next attempt, and
// logs per state change: the first failure of a kind is a warning, identical repeats
// are debug lines, and recovering is one info line, so a proxy that is down for hours
// does not flood the log.
type retries struct {
	log      *zap.Logger
	tun      tuning
	bo       *backoff // after ordinary failures and ended sessions
	rejected *backoff // after spdy_origin's 401 or host refusal: long, so a wrong token does not hammer the proxy
	lastErr  string   // errKey of the last failure, "" after a success
	failures int      // failed attempts since the last success
}

func newRetries(tun tuning, log *zap.Logger) *retries {
	r := &retries{
		log:      log,
		tun:      tun,
		bo:       newBackoff(tun.backoffMin, tun.backoffMax),
		rejected: newBackoff(tun.rejectedMin, tun.rejectedMax),
	}
	r.bo.rnd, r.rejected.rnd = tun.rnd, tun.rnd
	return r
}

// failed logs a failed attempt and returns the delay before the next one: the
// rejected-token backoff after spdy_origin's own 401 (ErrTokenRejected) or its
// refusal of an announced host (ErrHostRefused), which only a change of the
// proxy's config or the agent's routes can fix; the
// proxy's Retry-After (capped, and never shorter than the backoff) after a 429
// or 503, otherwise the backoff. A 401 or 403 from whatever answers in front of
// the registration route (handshake.ErrBlocked) gets the ordinary backoff: the
// token was never checked, and the fix is in the proxy's config, which can
// change at any time.
func (r *retries) failed(err error) time.Duration {
	r.failures++
	var delay time.Duration
	var refused *handshake.StatusError
	switch {
	case errors.Is(err, handshake.ErrTokenRejected), errors.Is(err, handshake.ErrHostRefused):
		delay = r.rejected.next()
	case errors.As(err, &refused) && refused.RetryAfter > 0:
		delay = min(max(refused.RetryAfter, r.bo.next()), r.tun.maxRetryAfter)
	default:
		r.rejected.reset()
		delay = r.bo.next()
	}
	if msg := errKey(err); msg != r.lastErr {
		r.lastErr = msg
		r.log.Warn("cannot connect to proxy; will keep retrying (repeats of this error are logged at debug level)",
			zap.Error(err), zap.Duration("retry_in", delay.Round(time.Millisecond)))
	} else {
		r.log.Debug("cannot connect to proxy", zap.Error(err), zap.Int("attempt", r.failures),
			zap.Duration("retry_in", delay.Round(time.Millisecond)))
	}
	return delay
}

// connected logs a new session and starts counting failures over.
func (r *retries) connected(sess *spdy.Session) {
	r.rejected.reset()
	fields := []zap.Field{zap.Stringer("remote", sess.RemoteAddr())}
	if r.failures > 0 {
		fields = append(fields, zap.Int("after_failed_attempts", r.failures))
	}
	r.log.Info("connected to proxy", fields...)
	r.failures, r.lastErr = 0, ""
}

// ended logs the end of a session that lived for lived (replaced: the proxy sent
// GOAWAY while streams were open) and returns the delay before the next attempt. A
// session that lived tuning.healthyAfter resets the backoff.
func (r *retries) ended(sess *spdy.Session, replaced bool, lived time.Duration) time.Duration {
	if lived >= r.tun.healthyAfter {
		r.bo.reset()
	}
	delay := r.bo.next()
	if replaced {
		r.log.Info("proxy sent GOAWAY: opening a replacement session while the old one finishes its streams",
			zap.Duration("lived", lived.Round(time.Millisecond)), zap.Duration("retry_in", delay.Round(time.Millisecond)))
		return delay
	}
	cause := sess.Err()
	lvl := r.log.Warn
	if errors.Is(cause, spdy.ErrPeerGoneAway) || errors.Is(cause, spdy.ErrGoAway) {
		lvl = r.log.Info // the proxy closed us politely (reload, shutdown)
	}
	lvl("session to proxy ended; reconnecting", zap.NamedError("cause", cause),
		zap.Duration("lived", lived.Round(time.Millisecond)),
		zap.Duration("retry_in", delay.Round(time.Millisecond)))
	return delay
}

// ephemeralSource matches the "local-address->" part of a net.OpError's text
// ("read tcp 10.0.0.2:51234->203.0.113.7:443: ..."), which names a fresh
// source port on every attempt.
var ephemeralSource = regexp.MustCompile(`\S+:\d+->`)

// errKey is the text two connection failures are compared by when deciding
// whether a failure is new (warn) or a repeat (debug): the error without the
// local address, so one failure that recurs is not logged as a new one each time.
func errKey(err error) string {
	return ephemeralSource.ReplaceAllString(err.Error(), "")
}
