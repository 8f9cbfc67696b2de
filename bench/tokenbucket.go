package main

import (
	"sync"
	"time"
)

// tokenBucket paces bytes to a link's rate: the delay relay's deliverer asks it
// before each write. It fills at rate bytes per second up to depth bytes, so a
// link that was idle may send depth bytes back to back (and a deliverer that
// overslept catches up by as much), while over any longer span the bytes sent
// stay within rate × time + depth.
//
// Reservations may take the bucket below zero: a caller is told how long to
// wait and is owed those bytes, so several callers (the connections sharing one
// link) share the rate in the order they ask, without polling.
type tokenBucket struct {
	rate  float64 // bytes per second
	depth float64 // bytes
	now   func() time.Time

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// newTokenBucket returns a full bucket. now is time.Now except in tests.
func newTokenBucket(rate float64, depth int, now func() time.Time) *tokenBucket {
	if now == nil {
		now = time.Now
	}
	return &tokenBucket{rate: rate, depth: float64(depth), now: now, tokens: float64(depth), last: now()}
}

// reserve takes n bytes and returns how long to wait before sending them.
func (b *tokenBucket) reserve(n int) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(b.depth, b.tokens+el.Seconds()*b.rate)
		b.last = now
	}
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}
