package spdy

import "time"

// The unsent limit (NotSentLowat, lowat_linux.go) keeps what waits to go
// out in our priority queues, where an urgent frame can pass it. What
// matters for that frame is how long the kernel's queue takes to drain, not
// its size: 32 KiB is 13 ms on a 20 Mbit/s uplink, but 30 µs on loopback or
// a LAN, where the limit only makes the writer wake up for every 32 KiB the
// kernel takes (a fifth of spdy's bulk throughput on loopback). So the
// writer measures the rate at which the kernel takes DATA and lets the
// kernel hold lowatQueueTime of it: the configured limit on slow links, up
// to maxLowat on fast ones.

const (
	// lowatQueueTime is how long the kernel's unsent queue may take to
	// drain at the measured rate.
	lowatQueueTime = 10 * time.Millisecond
	// lowatInterval is how often the rate is measured.
	lowatInterval = 100 * time.Millisecond
	// maxLowat bounds the limit: the queue a link that slows down at once
	// (the rate of the last interval is what counts) may find in the
	// kernel.
	maxLowat = 1 << 20
)

// lowatTuner follows the rate at which a session's DATA goes to the kernel
// and says when the unsent limit should change. Only the writer uses it.
type lowatTuner struct {
	floor int // the configured limit: never lower
	cur   int // the limit set now
	start time.Time
	base  uint64 // bytes written when start was taken
}

// next is what the limit should become at now, with out bytes written in
// all, and whether it changes; set applies it.
func (t *lowatTuner) next(now time.Time, out uint64) (int, bool) {
	if t.start.IsZero() {
		t.start, t.base = now, out
		return 0, false
	}
	el := now.Sub(t.start)
	if el < lowatInterval {
		return 0, false
	}
	rate := float64(out-t.base) / el.Seconds()
	t.start, t.base = now, out
	// The configured limit wins over maxLowat: it is the floor, even
	// where it is set above the cap.
	want := max(min(int(rate*lowatQueueTime.Seconds()), maxLowat), t.floor)
	// Change only by a factor of two or more: a setsockopt per interval
	// would buy nothing.
	if want > 2*t.cur || 2*want < t.cur {
		t.cur = want
		return want, true
	}
	return 0, false
}
