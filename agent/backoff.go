package agent

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff computes reconnect delays: exponential growth from min to max with
// "equal jitter" (each delay is uniformly random in [d/2, d]), so that many
// agents restarted together do not reconnect in lockstep, while a delay never
// drops below half of its nominal value. Not safe for concurrent use; each
// connection loop owns one.
type backoff struct {
	min, max time.Duration
	attempt  int
	rnd      func() float64 // uniform in [0,1); nil means math/rand/v2
}

func newBackoff(min, max time.Duration) *backoff {
	if min <= 0 {
		min = time.Millisecond
	}
	if max < min {
		max = min
	}
	return &backoff{min: min, max: max}
}

// next returns the delay before the next attempt and advances the sequence.
func (b *backoff) next() time.Duration {
	d := b.min
	for i := 0; i < b.attempt && d < b.max; i++ {
		d *= 2
	}
	if d > b.max {
		d = b.max
	}
	b.attempt++
	r := b.rnd
	if r == nil {
		r = rand.Float64
	}
	half := d / 2
	return half + time.Duration(r()*float64(d-half))
}

// reset starts the sequence over, after a connection proved healthy.
func (b *backoff) reset() { b.attempt = 0 }

// sleepCtx waits for d or until ctx is done; it reports whether the full delay elapsed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
