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
	// ErrHeadersTooLarge reports a header block over the limits
	// (Config.MaxHeaderBytes, MaxHeaderCount) before it is sent: the
	// peer would refuse it. Proxies answer 431 (requests) or 502.
	ErrHeadersTooLarge = errors.New("spdy: header block too large")
	// ErrStreamIdle is the cause of a stream reset because it was blocked
	// on a party that made no progress for Config.StreamIdleTimeout: data
	// waiting for a reader that does not read, or a window the peer does
	// not open.
	ErrStreamIdle = errors.New("spdy: stream idle")
	// ErrRequestBodyTimeout is the cause of a stream reset because the
	// request body sent no bytes for Config.StreamIdleTimeout before the
	// response began (a slow or stalled client). Proxies answer 408.
	ErrRequestBodyTimeout = errors.New("spdy: request body idle")
	// ErrStreamQueueTimeout: RoundTrip waited Config.StreamQueueTimeout
	// for one of the peer's MAX_CONCURRENT_STREAMS slots. The request was
	// not sent (IsRetryable reports true).
	ErrStreamQueueTimeout = errors.New("spdy: no free stream slot")
)

// RSTStatus is the status code of RST_STREAM (SPDY/3.1 section 2.6.3).
type RSTStatus uint32

// RST_STREAM status codes.
const (
	StatusProtocolError       RSTStatus = 1
	StatusInvalidStream       RSTStatus = 2
	StatusRefusedStream       RSTStatus = 3
	StatusUnsupportedVersion  RSTStatus = 4
	StatusCancel              RSTStatus = 5
	StatusInternalError       RSTStatus = 6
	StatusFlowControlError    RSTStatus = 7
	StatusStreamInUse         RSTStatus = 8
	StatusStreamAlreadyClosed RSTStatus = 9
	StatusFrameTooLarge       RSTStatus = 11
)

var statusNames = map[RSTStatus]string{
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

func (s RSTStatus) String() string {
	if name, ok := statusNames[s]; ok {
		return name
	}
	return fmt.Sprintf("status %d", uint32(s))
}

// StreamError reports a stream reset with RST_STREAM, by us or by the peer.
// Cause, when set, is why we reset it (errors.Is sees it).
type StreamError struct {
	StreamID uint32
	Status   RSTStatus
	Remote   bool // the peer sent the reset
	Cause    error
}

func (e *StreamError) Error() string {
	who := "local"
	if e.Remote {
		who = "peer"
	}
	msg := fmt.Sprintf("spdy: stream %d reset by %s: %s", e.StreamID, who, e.Status)
	if e.Cause != nil {
		msg += ": " + e.Cause.Error()
	}
	return msg
}

func (e *StreamError) Unwrap() error { return e.Cause }

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
