//go:build linux

package main

import (
	"time"

	"golang.org/x/time/rate"
)

// tokenBucket paces bytes to a link's rate: the delay relay's deliverer asks it
// before each write. It fills at rate bytes per second up to depth bytes, so a
// link that was idle may send depth bytes back to back (and a deliverer that
// overslept catches up by as much), while over any longer span the bytes sent
// stay within rate × time + depth.
//
// Reservations may take the bucket below zero: a caller is told how long to
// wait and is owed those bytes, so several callers (the connections sharing one
// link) share the rate in the order they ask, without polling. That is
// rate.Limiter's ReserveN; this adds the clock tests set.
type tokenBucket struct {
	lim *rate.Limiter
	now func() time.Time
}

// newTokenBucket returns a full bucket. now is time.Now except in tests.
func newTokenBucket(r float64, depth int, now func() time.Time) *tokenBucket {
	if now == nil {
		now = time.Now
	}
	return &tokenBucket{lim: rate.NewLimiter(rate.Limit(r), depth), now: now}
}

// reserve takes n bytes and returns how long to wait before sending them. n
// must not exceed the depth (relayPiece ≤ relayBurst): the Limiter would never
// grant it.
func (b *tokenBucket) reserve(n int) time.Duration {
	if n > b.lim.Burst() {
		panic("tokenBucket: a reservation over the bucket's depth")
	}
	now := b.now()
	return b.lim.ReserveN(now, n).DelayFrom(now)
}
