package spdy

import (
	"errors"
	"fmt"
	"time"
)

// Default values of Config.
const (
	// DefaultStreamWindow is the largest receive window one stream grows
	// to: enough for one stream to fill a 1 Gbit/s link at 50 ms RTT
	// (bandwidth-delay product 6.25 MB) with room to spare.
	DefaultStreamWindow = 16 << 20
	// DefaultSessionWindow is each session's buffer budget: what its
	// streams together may be granted beyond their first 64 KiB.
	DefaultSessionWindow        = 64 << 20
	DefaultMaxConcurrentStreams = 1000
	DefaultPingInterval         = 15 * time.Second
	DefaultPingTimeout          = 10 * time.Second
	DefaultWriteTimeout         = 30 * time.Second
	DefaultStreamIdleTimeout    = time.Minute
	DefaultStreamQueueTimeout   = 10 * time.Second
	DefaultMaxHeaderBytes       = 256 << 10
	DefaultMaxHeaderCount       = 1000
	DefaultMaxUpgradedStreams   = 1000
	DefaultNotSentLowat         = 32 << 10

	// defaultWindow is SPDY/3.1's initial window for streams and sessions
	// until SETTINGS or WINDOW_UPDATE say otherwise. It is also the window
	// every stream is guaranteed whatever the budget (see flow.go).
	defaultWindow = 64 << 10
	// startWindow is what a new stream is granted at once while the
	// session's budget allows, so that an ordinary response does not wait
	// for the window to grow.
	startWindow = 1 << 20
	// maxWindow is the largest window SPDY allows (2^31-1).
	maxWindow = 1<<31 - 1
)

// Config holds a session's tunables. A zero field means its default, so
// callers set only what they change; DefaultConfig spells the defaults out.
// Durations that can be turned off are off when negative.
type Config struct {
	// StreamWindow is the largest receive window one stream grows to.
	// Every stream starts with 64 KiB guaranteed plus up to 1 MiB from the
	// session's budget, and doubles its window while its data is consumed
	// as fast as the window allows (see flow.go). Larger windows let one
	// stream go faster over long round trips; a stalled stream may hold
	// this much unread data. Default 16 MiB. Range 64 KiB .. 2^31-1.
	StreamWindow int32

	// SessionWindow is the session's receive window and its buffer budget:
	// what its streams together may be granted beyond the first 64 KiB
	// each. Credit for the session window goes back as data arrives, so
	// one stream's slow reader never holds up the others; the data a
	// session buffers is at most MaxConcurrentStreams × 64 KiB +
	// SessionWindow. Default 64 MiB. Must be >= StreamWindow.
	SessionWindow int32

	// MaxConcurrentStreams is how many streams the peer may have open to us
	// at once (SETTINGS_MAX_CONCURRENT_STREAMS), and the most we open to
	// it whatever it allows. Streams beyond it are refused with
	// RST_STREAM REFUSED_STREAM. Default 1000.
	MaxConcurrentStreams uint32

	// PingInterval is how often the session sends a keepalive PING; the
	// first goes out at once, to learn the round trip that stream windows
	// grow by (flow.go). Negative disables keepalive; windows then grow
	// only once Ping was called. Default 15s.
	PingInterval time.Duration

	// PingTimeout is how long a PING may go unanswered, with no other frame
	// arriving either, before the session is closed with ErrPingTimeout.
	// Default 10s.
	PingTimeout time.Duration

	// WriteTimeout closes the session when one write to the connection
	// makes no progress for this long (a peer that stopped reading).
	// Negative disables it. Default 30s.
	WriteTimeout time.Duration

	// StreamIdleTimeout resets a stream that waits this long on a party
	// that makes no progress: data buffered for a reader that does not
	// read, our data held back by a window the peer does not open, or (on
	// the client, before the response begins) a request body that sends
	// nothing. It frees the stream's slot and buffers (ErrStreamIdle,
	// ErrRequestBodyTimeout). Streams that are merely quiet, such as an
	// event stream waiting for its next event, are not affected. Negative
	// disables it. Default 1m.
	StreamIdleTimeout time.Duration

	// StreamQueueTimeout bounds how long RoundTrip waits for a stream slot
	// when the peer's MAX_CONCURRENT_STREAMS are all in use; then it fails
	// with ErrStreamQueueTimeout. Negative: wait as long as the request's
	// context allows. Default 10s.
	StreamQueueTimeout time.Duration

	// MaxHeaderBytes caps the inflated size of one header block (names,
	// values and their length fields), received or sent. A received block
	// over it is inflated to its end and dropped, and its stream reset
	// (FRAME_TOO_LARGE); the session lives on. A block we would send over
	// it fails with ErrHeadersTooLarge. A block inflating to more than
	// four times this ends the session (the peer is burning our CPU).
	// Decoded headers live as long as their streams: a session holds at
	// most MaxConcurrentStreams × MaxHeaderBytes of them. Default 256 KiB.
	MaxHeaderBytes uint32

	// MaxHeaderCount caps the header values in one block, counting each
	// NUL-separated part of a value. Over it, as for MaxHeaderBytes.
	// Default 1000.
	MaxHeaderCount uint32

	// MaxUpgradedStreams caps how many streams at once may be turned into
	// byte pipes by a 101 Switching Protocols response (WebSockets).
	// Further upgrades are answered 503 (server) or fail (client).
	// Negative allows none. Default 1000.
	MaxUpgradedStreams int

	// NotSentLowat caps, on Linux, the unsent bytes the kernel queues for
	// the session's TCP connection (TCP_NOTSENT_LOWAT), so that data waits
	// in the session's priority queues, where an urgent frame can pass it,
	// rather than in a send buffer the kernel may have grown to megabytes
	// (schedule.go). It is the floor: the writer raises the cap to 10 ms of
	// the rate at which the kernel takes its DATA, up to 1 MiB, on links
	// fast enough to drain more in that time (lowat.go). It does not limit
	// data in flight. Negative leaves the kernel's setting. Default 32 KiB.
	NotSentLowat int

	// PeerTrailers says the peer understands HEADERS frames, which carry
	// trailers (gRPC's status, for one): it announced so out of band (at
	// registration, in spdy-origin). amahi/spdy panics on HEADERS, so
	// without it trailers are dropped, logged once per session. Default
	// false.
	PeerTrailers bool

	// Logger receives diagnostics. Nil discards them.
	// *zap.SugaredLogger satisfies it.
	Logger Logger
}

// Logger is the logging interface the session uses. It is satisfied by
// *zap.SugaredLogger; this package does not import zap.
type Logger interface {
	Debugw(msg string, keysAndValues ...any)
	Warnw(msg string, keysAndValues ...any)
	Errorw(msg string, keysAndValues ...any)
}

// DefaultConfig returns a Config with every field set to its default.
func DefaultConfig() *Config {
	return &Config{
		StreamWindow:         DefaultStreamWindow,
		SessionWindow:        DefaultSessionWindow,
		MaxConcurrentStreams: DefaultMaxConcurrentStreams,
		PingInterval:         DefaultPingInterval,
		PingTimeout:          DefaultPingTimeout,
		WriteTimeout:         DefaultWriteTimeout,
		StreamIdleTimeout:    DefaultStreamIdleTimeout,
		StreamQueueTimeout:   DefaultStreamQueueTimeout,
		MaxHeaderBytes:       DefaultMaxHeaderBytes,
		MaxHeaderCount:       DefaultMaxHeaderCount,
		MaxUpgradedStreams:   DefaultMaxUpgradedStreams,
		NotSentLowat:         DefaultNotSentLowat,
	}
}

// withDefaults returns c with its zero fields set to their defaults.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.StreamWindow == 0 {
		c.StreamWindow = d.StreamWindow
	}
	if c.SessionWindow == 0 {
		c.SessionWindow = max(d.SessionWindow, c.StreamWindow)
	}
	if c.MaxConcurrentStreams == 0 {
		c.MaxConcurrentStreams = d.MaxConcurrentStreams
	}
	for _, f := range []struct{ v, d *time.Duration }{
		{&c.PingInterval, &d.PingInterval}, {&c.PingTimeout, &d.PingTimeout},
		{&c.WriteTimeout, &d.WriteTimeout}, {&c.StreamIdleTimeout, &d.StreamIdleTimeout},
		{&c.StreamQueueTimeout, &d.StreamQueueTimeout},
	} {
		if *f.v == 0 {
			*f.v = *f.d
		}
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = d.MaxHeaderBytes
	}
	if c.MaxHeaderCount == 0 {
		c.MaxHeaderCount = d.MaxHeaderCount
	}
	if c.MaxUpgradedStreams == 0 {
		c.MaxUpgradedStreams = d.MaxUpgradedStreams
	}
	if c.NotSentLowat == 0 {
		c.NotSentLowat = d.NotSentLowat
	}
	return c
}

// Validate reports every invalid field (zero fields count as their default).
func (c *Config) Validate() error {
	v := c.withDefaults()
	var errs []error
	if v.StreamWindow < defaultWindow {
		errs = append(errs, fmt.Errorf("stream window %d is below the SPDY minimum of %d", v.StreamWindow, defaultWindow))
	}
	if v.SessionWindow < v.StreamWindow {
		errs = append(errs, fmt.Errorf("session window %d is smaller than the stream window %d", v.SessionWindow, v.StreamWindow))
	}
	if v.PingTimeout < 0 {
		errs = append(errs, errors.New("ping timeout must be positive"))
	}
	if v.MaxHeaderBytes < 1024 {
		errs = append(errs, fmt.Errorf("max header bytes %d is below 1024", v.MaxHeaderBytes))
	}
	if v.MaxHeaderCount < 16 {
		errs = append(errs, fmt.Errorf("max header count %d is below 16", v.MaxHeaderCount))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("spdy: invalid config: %w", err)
	}
	return nil
}

func (c *Config) headerLimits() headerLimits {
	return headerLimits{bytes: int(c.MaxHeaderBytes), values: int(c.MaxHeaderCount)}
}

// nopLogger discards everything.
type nopLogger struct{}

func (nopLogger) Debugw(string, ...any) {}
func (nopLogger) Warnw(string, ...any)  {}
func (nopLogger) Errorw(string, ...any) {}
