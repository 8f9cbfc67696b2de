package spdy

import (
	"fmt"
	"time"
)

// sendWindow is the credit we may spend sending DATA: the peer's window as
// we know it. It can go negative when the peer shrinks
// SETTINGS_INITIAL_WINDOW_SIZE while data is in flight.
type sendWindow struct {
	n int64
}

// add applies a WINDOW_UPDATE delta or a SETTINGS change. It fails if the
// window would exceed 2^31-1, which SPDY calls a flow-control error.
func (w *sendWindow) add(delta int64) error {
	if w.n+delta > maxWindow {
		return fmt.Errorf("%w: send window overflow (%d + %d)", ErrProtocol, w.n, delta)
	}
	w.n += delta
	return nil
}

// available returns the credit, zero if it is exhausted or negative.
func (w *sendWindow) available() int64 {
	if w.n < 0 {
		return 0
	}
	return w.n
}

// take spends n bytes of credit; the caller checked available.
func (w *sendWindow) take(n int64) { w.n -= n }

// refund gives back n bytes taken for DATA that was never sent. It cannot
// overflow: the peer's own view of the window has those bytes already.
func (w *sendWindow) refund(n int64) { w.n += n }

// recvWindow accounts for data the peer sends us. The peer may send up to
// size bytes beyond what we have returned; credit goes back to the peer as the
// application consumes data, in batches of at least threshold bytes so that
// WINDOW_UPDATE frames stay few.
type recvWindow struct {
	size       int64 // the window we granted
	inFlight   int64 // received and not yet returned to the peer
	unacked    int64 // consumed and not yet returned
	threshold  int64
	smallSteps bool // threshold is fixed (peers without flow control)
}

func newRecvWindow(size, threshold int64) recvWindow {
	return recvWindow{size: size, threshold: threshold}
}

// received records n bytes of DATA. It fails when the peer overran the window.
func (w *recvWindow) received(n int64) error {
	if w.inFlight+n > w.size {
		return fmt.Errorf("%w: peer sent %d bytes into a window with %d left", ErrProtocol, n, w.size-w.inFlight)
	}
	w.inFlight += n
	return nil
}

// consumed records n bytes handed to (or discarded for) the application and
// returns the WINDOW_UPDATE delta to send now, or 0.
func (w *recvWindow) consumed(n int64) int64 {
	w.unacked += n
	if w.unacked < w.threshold {
		return 0
	}
	d := w.unacked
	w.unacked = 0
	w.inFlight -= d
	return d
}

// flush returns all consumed credit now, below the threshold too.
func (w *recvWindow) flush() int64 {
	d := w.unacked
	w.unacked = 0
	w.inFlight -= d
	return d
}

// grow enlarges the window by d; the caller sends d on top of the credit
// it returns. Credit keeps going back every eighth of the window, except
// in the small fixed steps a peer without flow control (amahi) needs.
func (w *recvWindow) grow(d int64) {
	w.size += d
	if !w.smallSteps {
		w.threshold = max(w.threshold, w.size/updateFraction)
	}
}

// Receive windows in a tunnel
//
// SPDY/3.1 has two windows, one per stream and one per session. The usual
// way to use the session window, returning its credit only as the
// application consumes data, does not work for a tunnel: the streams of one
// session belong to unrelated clients, and a few that stop reading (paused
// video players) would each hold a full stream window of session credit
// until none is left and every other stream on the session stops. yamux has
// no session window for this reason.
//
// So session credit goes back as soon as data is off the wire (reader.go):
// the session window only paces bytes in flight. What a session buffers is
// bounded by the stream windows instead, and those are sized from a budget:
//
//   - every stream is guaranteed 64 KiB (SPDY's default window, which we
//     also advertise in SETTINGS), whatever the budget, so no stream can be
//     starved by others;
//   - a new stream is granted up to 1 MiB more at once (grantStart), so an
//     ordinary response does not wait for its window to grow;
//   - a stream whose data is consumed as fast as its window allows (a full
//     window in under two round trips) doubles its window (growLocked), up
//     to Config.StreamWindow: windows grow where the bandwidth-delay product
//     needs them, not everywhere;
//   - what streams hold beyond their 64 KiB comes from the session's budget
//     (Config.SessionWindow) and goes back when they end.
//
// A stalled stream therefore holds at most its own window, and a session
// buffers at most MaxConcurrentStreams × (64 KiB + one partly filled 64 KiB
// buffer) + SessionWindow (about 189 MiB with the defaults, reached only if
// every stream stalls full). A stream that finished on the wire keeps its
// slot and budget until its data is read (stream.finish), so unread
// responses count too. A stream that stays stalled is reset (or its unread
// data dropped) after Config.StreamIdleTimeout, which frees its slot, its
// buffers and its share of the budget. Start grants take only from the
// upper half of the budget, so streams that stay quiet for long (event
// streams, WebSockets) cannot leave nothing for the streams that grow.
//
// Peers that never sent SETTINGS INITIAL_WINDOW_SIZE (amahi/spdy) get their
// credit in 16 KiB steps: amahi waits for credit as large as its whole
// write, and assumes 64 KiB windows whatever SETTINGS say.

// refund gives back the credit of n bytes st took for a DATA frame that was
// never sent (unsent), and wakes the streams waiting for session credit.
func (s *Session) refund(st *stream, n int64) {
	s.mu.Lock()
	st.sendWin.refund(n)
	s.sendWin.refund(n)
	var waiters []*stream
	if s.sendWin.available() > 0 {
		waiters = s.takeWinWaitersLocked()
	}
	s.mu.Unlock()
	for _, w := range waiters {
		w.wakeSender()
	}
}

// takeWinWaitersLocked empties the list of streams waiting for session
// credit, which has come, and returns it; s.mu is held.
func (s *Session) takeWinWaitersLocked() []*stream {
	waiters := s.winWaiters
	s.winWaiters = nil
	s.sessionWaitSince = 0
	for _, st := range waiters {
		st.tab.waitsForSession = false
	}
	return waiters
}

// takeBudget takes up to want bytes of the session's budget.
func (s *Session) takeBudget(want int64) int64 { return s.takeBudgetAbove(want, 0) }

// takeBudgetAbove takes up to want bytes of the budget, leaving at least
// floor.
func (s *Session) takeBudgetAbove(want, floor int64) int64 {
	for {
		avail := s.budget.Load()
		g := min(want, avail-floor)
		if g <= 0 {
			return 0
		}
		if s.budget.CompareAndSwap(avail, avail-g) {
			return g
		}
	}
}

func (s *Session) giveBudget(n int64) {
	if n > 0 {
		s.budget.Add(n)
	}
}

// grantStart opens a new stream's receive window beyond the guaranteed
// 64 KiB, as far as the budget allows, and returns the WINDOW_UPDATE delta
// to tell the peer (0: none). The caller queues it right after the
// stream's SYN_STREAM (client) or on receiving it (server).
func (s *Session) grantStart(st *stream) uint32 {
	// Start grants draw only on the upper half of the budget: streams that
	// stay quiet (event streams, WebSockets) keep their grant until they
	// end, and must not leave nothing for the streams that need to grow.
	g := s.takeBudgetAbove(min(startWindow, int64(s.cfg.StreamWindow))-defaultWindow, int64(s.cfg.SessionWindow)/2)
	if g <= 0 {
		return 0
	}
	st.mu.Lock()
	st.recvWin.grow(g)
	st.extra += g
	st.mu.Unlock()
	return uint32(g)
}

// growLocked decides, when st returns credit, whether its window doubles:
// when a whole window was consumed in less than two round trips, the
// window and not the reader is what limits the stream. It returns the
// extra credit to send. st.mu is held.
func (st *stream) growLocked() int64 {
	w := &st.recvWin
	if st.tuneBytes < w.size {
		return 0
	}
	now := time.Now()
	elapsed := now.Sub(st.tuneStart)
	st.tuneStart, st.tuneBytes = now, 0
	s := st.s
	rtt := time.Duration(s.rtt.Load())
	if rtt <= 0 || elapsed >= 2*rtt {
		return 0
	}
	g := s.takeBudget(min(w.size, int64(s.cfg.StreamWindow)-w.size))
	if g > 0 {
		w.grow(g)
		st.extra += g
	}
	return g
}

// tolerateOverrunLocked lets a peer that never spoke of flow control (no
// SETTINGS INITIAL_WINDOW_SIZE; moby/spdystream's connection ignores
// windows) send n bytes past a stream's window, as long as the session's
// budget covers the excess and the stream stays within StreamWindow. It
// records the n bytes and reports whether it did. st.mu is held.
func (st *stream) tolerateOverrunLocked(n int64) bool {
	s := st.s
	w := &st.recvWin
	over := w.inFlight + n - w.size
	if s.peerKnowsFlow.Load() || w.size+over > int64(s.cfg.StreamWindow) {
		return false
	}
	if g := s.takeBudget(over); g < over {
		s.giveBudget(g)
		return false
	}
	w.grow(over)
	st.extra += over
	return w.received(n) == nil
}
