package spdy

import (
	"errors"
	"fmt"
	"time"
)

// Default values of Config.
const (
	// DefaultStreamWindow lets one stream fill a 1 Gbit/s link at 50 ms RTT
	// (bandwidth-delay product 6.25 MB) with room to spare: up to about
	// 16 MiB × 7/8 per round trip, as credit returns every eighth of the window.
	DefaultStreamWindow = 16 << 20
	// DefaultSessionWindow bounds what one session buffers for all its streams.
	DefaultSessionWindow        = 64 << 20
	DefaultMaxConcurrentStreams = 1000
	DefaultPingInterval         = 15 * time.Second
	DefaultPingTimeout          = 10 * time.Second
	DefaultWriteTimeout         = 30 * time.Second
	DefaultMaxHeaderBytes       = 1 << 20
	DefaultMaxHeaderCount       = 1000
	DefaultMaxUpgradedStreams   = 1000

	// defaultWindow is SPDY/3.1's initial window for streams and sessions
	// until SETTINGS or WINDOW_UPDATE say otherwise.
	defaultWindow = 64 << 10
	// maxWindow is the largest window SPDY allows (2^31-1).
	maxWindow = 1<<31 - 1
)

// Config holds a session's tunables. Start from DefaultConfig; the zero
// value of a field is not a valid setting unless its comment says so.
type Config struct {
	// StreamWindow is the receive window of each stream, advertised to the
	// peer in SETTINGS_INITIAL_WINDOW_SIZE. Larger windows let one stream go
	// faster over long round trips; each stream may buffer this much unread
	// data. Default 16 MiB. Range 64 KiB .. 2^31-1.
	StreamWindow int32

	// SessionWindow is the receive window of the whole session (SPDY/3.1
	// WINDOW_UPDATE on stream 0): the most unread data the session buffers
	// across all streams. Default 64 MiB. Must be >= StreamWindow.
	SessionWindow int32

	// MaxConcurrentStreams is how many streams the peer may have open to us
	// at once (SETTINGS_MAX_CONCURRENT_STREAMS). Streams beyond it are
	// refused with RST_STREAM REFUSED_STREAM. Default 1000.
	MaxConcurrentStreams uint32

	// PingInterval is how often the session sends a keepalive PING. Zero
	// disables keepalive (Ping can still be called). Default 15s.
	PingInterval time.Duration

	// PingTimeout is how long a PING may go unanswered before the session is
	// closed with ErrPingTimeout. Default 10s.
	PingTimeout time.Duration

	// WriteTimeout closes the session when one write to the connection
	// makes no progress for this long (a peer that stopped reading). Zero
	// disables it. Default 30s.
	WriteTimeout time.Duration

	// MaxHeaderBytes caps the compressed payload of a header-carrying frame
	// and the length of any one header name or value. Default 1 MiB.
	MaxHeaderBytes uint32

	// MaxHeaderCount caps the number of header fields in one header block.
	// Default 1000.
	MaxHeaderCount uint32

	// MaxUpgradedStreams caps how many streams at once may be turned into
	// byte pipes by a 101 Switching Protocols response (WebSockets).
	// Further upgrades are answered 503 (server) or fail (client).
	// Default 1000.
	MaxUpgradedStreams int

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
		MaxHeaderBytes:       DefaultMaxHeaderBytes,
		MaxHeaderCount:       DefaultMaxHeaderCount,
		MaxUpgradedStreams:   DefaultMaxUpgradedStreams,
	}
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	var errs []error
	if c.StreamWindow < defaultWindow {
		errs = append(errs, fmt.Errorf("stream window %d is below the SPDY minimum of %d", c.StreamWindow, defaultWindow))
	}
	if c.SessionWindow < c.StreamWindow {
		errs = append(errs, fmt.Errorf("session window %d is smaller than the stream window %d", c.SessionWindow, c.StreamWindow))
	}
	if c.MaxConcurrentStreams == 0 {
		errs = append(errs, errors.New("max concurrent streams must be at least 1"))
	}
	if c.PingInterval < 0 {
		errs = append(errs, errors.New("ping interval must not be negative"))
	}
	if c.PingTimeout <= 0 {
		errs = append(errs, errors.New("ping timeout must be positive"))
	}
	if c.WriteTimeout < 0 {
		errs = append(errs, errors.New("write timeout must not be negative"))
	}
	if c.MaxHeaderBytes < 1024 {
		errs = append(errs, fmt.Errorf("max header bytes %d is below 1024", c.MaxHeaderBytes))
	}
	if c.MaxHeaderCount < 16 {
		errs = append(errs, fmt.Errorf("max header count %d is below 16", c.MaxHeaderCount))
	}
	if c.MaxUpgradedStreams < 0 {
		errs = append(errs, errors.New("max upgraded streams must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("spdy: invalid config: %w", err)
	}
	return nil
}

// nopLogger discards everything.
type nopLogger struct{}

func (nopLogger) Debugw(string, ...any) {}
func (nopLogger) Warnw(string, ...any)  {}
func (nopLogger) Errorw(string, ...any) {}
