package spdy

import "fmt"

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

// recvWindow accounts for data the peer sends us. The peer may send up to
// size bytes beyond what we have returned; credit goes back to the peer as the
// application consumes data, in batches of at least threshold bytes so that
// WINDOW_UPDATE frames stay few.
type recvWindow struct {
	size      int64 // the window we granted
	inFlight  int64 // received and not yet returned to the peer
	unacked   int64 // consumed and not yet returned
	threshold int64
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
