package spdy

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Keepalive and the idle-stream watchdog: the session goroutines that act on
// time rather than on frames.

func (s *Session) handlePing(id uint32) {
	ours := id%2 == 1 == s.client
	if !ours {
		s.queuePing(id)
		return
	}
	s.pingMu.Lock()
	ch, ok := s.pings[id]
	delete(s.pings, id)
	s.pingMu.Unlock()
	if ok {
		close(ch)
	}
}

// Ping sends a PING and returns the round-trip time.
func (s *Session) Ping(ctx context.Context) (time.Duration, error) {
	ch := make(chan struct{})
	s.pingMu.Lock()
	if s.Err() != nil {
		s.pingMu.Unlock()
		return 0, sessionClosedError(s.err)
	}
	id := s.nextPingID
	s.nextPingID += 2
	if s.nextPingID > 1<<31 {
		s.nextPingID -= 1 << 31
	}
	s.pings[id] = ch
	s.pingMu.Unlock()
	start := time.Now()
	s.queuePing(id)
	select {
	case <-ch:
		if err := s.Err(); err != nil {
			return 0, sessionClosedError(err)
		}
		rtt := time.Since(start)
		s.rtt.Store(int64(rtt))
		return rtt, nil
	case <-ctx.Done():
		s.pingMu.Lock()
		delete(s.pings, id)
		s.pingMu.Unlock()
		return 0, ctx.Err()
	}
}

// keepalive measures the round trip at once (windows grow by it, see
// flow.go), then pings the peer every PingInterval. A PING unanswered for
// PingTimeout closes the session only if nothing else arrived meanwhile
// either: on a slow, busy uplink the answer queues behind the peer's DATA
// in buffers along the way, and the session is alive.
func (s *Session) keepalive() {
	alive := func() bool {
		sent := time.Now().UnixNano()
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.PingTimeout)
		_, err := s.Ping(ctx)
		cancel()
		return err == nil || !errors.Is(err, context.DeadlineExceeded) || s.lastRecv.Load() > sent
	}
	if !alive() {
		s.pingTimeout()
		return
	}
	t := time.NewTicker(s.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-s.closed:
			return
		case <-t.C:
		}
		if !alive() {
			s.pingTimeout()
			return
		}
	}
}

func (s *Session) pingTimeout() {
	s.log.Warnw("spdy: peer did not answer PING and sent nothing else; closing session", "remote", s.remoteAddr.String(), "timeout", s.cfg.PingTimeout.String())
	s.closeWith(ErrPingTimeout, true, goAwayOK)
}

// checkSessionCredit closes a session whose peer keeps streams waiting for
// session-window credit for StreamIdleTimeout: the session window is
// shared, so the watchdog does not blame the streams for it (stream.go),
// but a peer that stops returning it has wedged every upload on the session.
func (s *Session) checkSessionCredit(now int64) {
	s.mu.Lock()
	since := s.sessionWaitSince
	s.mu.Unlock()
	if since == 0 || now-since <= idleTicks {
		return
	}
	err := fmt.Errorf("%w: the peer returned no session window credit for %s while streams waited for it", ErrProtocol, s.cfg.StreamIdleTimeout)
	s.protocolError(err)
}

// idleTicks is how many watchdog ticks make StreamIdleTimeout.
const idleTicks = 4

// watchdog resets streams blocked for StreamIdleTimeout on a party that
// makes no progress (stream.go sets the marks it reads). It ticks four
// times per timeout, so a stream is reset between one timeout and one and
// a quarter after it began to wait.
func (s *Session) watchdog() {
	t := time.NewTicker(s.cfg.StreamIdleTimeout / idleTicks)
	defer t.Stop()
	var list []*stream
	for {
		select {
		case <-s.closed:
			return
		case <-t.C:
		}
		now := s.clock.Add(1)
		s.mu.Lock()
		list = list[:0]
		for _, st := range s.streams {
			list = append(list, st)
		}
		s.mu.Unlock()
		for _, st := range list {
			cause, finished := st.idle(now)
			switch {
			case cause == nil:
			case finished:
				s.log.Debugw("spdy: dropping the unread data of a finished stream", "remote", s.remoteAddr.String(), "stream", st.id, "cause", cause.Error())
				st.expire(cause)
			default:
				s.log.Debugw("spdy: resetting idle stream", "remote", s.remoteAddr.String(), "stream", st.id, "cause", cause.Error())
				st.resetLocal(StatusCancel, cause)
			}
		}
		s.checkSessionCredit(now)
		clear(list)
	}
}
