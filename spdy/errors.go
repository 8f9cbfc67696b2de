package spdy

import (
	"errors"
	"fmt"
)

var (
	// ErrSessionClosed is returned (wrapped with the cause) by operations on
	// a session that has closed. Session.Err gives the cause alone.
	ErrSessionClosed = errors.New("spdy: session closed")
	// ErrPingTimeout is the cause of close when the peer stopped answering PINGs.
	ErrPingTimeout = errors.New("spdy: ping timeout")
	// ErrGoAway is returned for a stream the peer did not process because it
	// sent GOAWAY; the request may be retried on another session.
	ErrGoAway = errors.New("spdy: stream not processed: peer sent GOAWAY")
	// ErrPeerGoneAway is the cause of close after the peer sent GOAWAY and
	// the last stream finished.
	ErrPeerGoneAway = errors.New("spdy: peer sent GOAWAY")
	// ErrShutdown is the cause of close after Shutdown or Close.
	ErrShutdown = errors.New("spdy: session shut down")
	// ErrProtocol is wrapped by errors caused by a peer breaking the protocol.
	ErrProtocol = errors.New("spdy: protocol error")
	// ErrBodyLength reports a body whose length disagrees with its Content-Length.
	ErrBodyLength = errors.New("spdy: body length does not match content-length")
	// ErrTooManyUpgrades is returned when MaxUpgradedStreams is reached.
	ErrTooManyUpgrades = errors.New("spdy: too many upgraded streams")
)

// RST_STREAM status codes (SPDY/3.1 section 2.6.3).
const (
	StatusProtocolError       uint32 = 1
	StatusInvalidStream       uint32 = 2
	StatusRefusedStream       uint32 = 3
	StatusUnsupportedVersion  uint32 = 4
	StatusCancel              uint32 = 5
	StatusInternalError       uint32 = 6
	StatusFlowControlError    uint32 = 7
	StatusStreamInUse         uint32 = 8
	StatusStreamAlreadyClosed uint32 = 9
	StatusFrameTooLarge       uint32 = 11
)

var statusNames = map[uint32]string{
	StatusProtocolError:       "PROTOCOL_ERROR",
	StatusInvalidStream:       "INVALID_STREAM",
	StatusRefusedStream:       "REFUSED_STREAM",
	StatusUnsupportedVersion:  "UNSUPPORTED_VERSION",
	StatusCancel:              "CANCEL",
	StatusInternalError:       "INTERNAL_ERROR",
	StatusFlowControlError:    "FLOW_CONTROL_ERROR",
	StatusStreamInUse:         "STREAM_IN_USE",
	StatusStreamAlreadyClosed: "STREAM_ALREADY_CLOSED",
	StatusFrameTooLarge:       "FRAME_TOO_LARGE",
}

// StreamError reports a stream reset with RST_STREAM, by us or by the peer.
type StreamError struct {
	StreamID uint32
	Status   uint32 // one of the Status* codes
	Remote   bool   // the peer sent the reset
}

func (e *StreamError) Error() string {
	name, ok := statusNames[e.Status]
	if !ok {
		name = fmt.Sprintf("status %d", e.Status)
	}
	who := "local"
	if e.Remote {
		who = "peer"
	}
	return fmt.Sprintf("spdy: stream %d reset by %s: %s", e.StreamID, who, name)
}

// notProcessed marks an error for a request the peer never saw.
type notProcessed struct{ err error }

func (e notProcessed) Error() string { return e.err.Error() }
func (e notProcessed) Unwrap() error { return e.err }

// IsRetryable reports whether err means the request was not processed by
// the peer, so it can be sent again on another session: the peer sent GOAWAY
// before handling it, refused it (REFUSED_STREAM), or the session closed
// before the request was sent.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrGoAway) {
		return true
	}
	var np notProcessed
	if errors.As(err, &np) {
		return true
	}
	var se *StreamError
	return errors.As(err, &se) && se.Remote && se.Status == StatusRefusedStream
}

// sessionClosedError wraps the cause of close so that errors.Is matches both
// ErrSessionClosed and the cause.
func sessionClosedError(cause error) error {
	if cause == nil || errors.Is(cause, ErrSessionClosed) {
		return ErrSessionClosed
	}
	return fmt.Errorf("%w: %w", ErrSessionClosed, cause)
}
