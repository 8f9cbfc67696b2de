package spdy

import (
	"testing"
	"time"
)

// The unsent limit follows the link: the configured 32 KiB where it takes
// 2.5 MB/s (20 Mbit/s: 13 ms of queue), up to 1 MiB where it takes 500 MB/s,
// and back down when the link slows; never below the configured limit.
func TestLowatFollowsRate(t *testing.T) {
	tu := &lowatTuner{floor: 32 << 10, cur: 32 << 10}
	now := time.Unix(1000, 0)
	var out uint64
	step := func(rate float64) (int, bool) {
		now = now.Add(lowatInterval)
		out += uint64(rate * lowatInterval.Seconds())
		return tu.next(now, out)
	}
	tu.next(now, out) // starts the clock
	for range 5 {
		if n, change := step(2.5e6); change {
			t.Fatalf("a 20 Mbit/s link changed the limit to %d", n)
		}
	}
	if n, change := step(500e6); !change || n != maxLowat {
		t.Fatalf("500 MB/s: limit %d (changed %v), want %d", n, change, maxLowat)
	}
	if n, change := step(450e6); change {
		t.Fatalf("450 MB/s after 500: changed to %d, want it kept", n)
	}
	if n, change := step(20e6); !change || n != 200e3 {
		t.Fatalf("20 MB/s: limit %d (changed %v), want 200000 (10 ms)", n, change)
	}
	if n, change := step(0); !change || n != 32<<10 {
		t.Fatalf("idle: limit %d (changed %v), want the configured 32 KiB", n, change)
	}
	// Within an interval nothing is decided.
	now = now.Add(lowatInterval / 2)
	out += 1 << 30
	if _, change := tu.next(now, out); change {
		t.Fatal("decided within an interval")
	}
}

// A configured limit above maxLowat is still the floor: the tuner never
// sets less than what the operator asked for, idle link or not.
func TestLowatNeverBelowConfigured(t *testing.T) {
	const floor = 4 << 20
	tu := &lowatTuner{floor: floor, cur: floor}
	now := time.Unix(1000, 0)
	var out uint64
	tu.next(now, out) // starts the clock
	for _, rate := range []float64{0, 2.5e6, 500e6, 0} {
		now = now.Add(lowatInterval)
		out += uint64(rate * lowatInterval.Seconds())
		if n, change := tu.next(now, out); change && n < floor {
			t.Fatalf("at %.0f B/s the limit became %d, below the configured %d", rate, n, floor)
		}
	}
}
