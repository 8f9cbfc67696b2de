package agent

import (
	"testing"
	"time"
)

func TestBackoffGrowsCapsAndResets(t *testing.T) {
	b := newBackoff(100*time.Millisecond, 30*time.Second)
	b.rnd = func() float64 { return 0.999999 } // top of the jitter range: the nominal delay
	var got []time.Duration
	for i := 0; i < 12; i++ {
		got = append(got, b.next().Round(time.Millisecond))
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("delay %d = %v, want %v (all: %v)", i, got[i], want[i]*time.Millisecond, got)
		}
	}
	b.reset()
	if d := b.next().Round(time.Millisecond); d != 100*time.Millisecond {
		t.Fatalf("after reset: %v", d)
	}
}

func TestBackoffJitterRange(t *testing.T) {
	b := newBackoff(time.Second, time.Minute)
	b.rnd = func() float64 { return 0 }
	if d := b.next(); d != 500*time.Millisecond {
		t.Fatalf("lowest jitter = %v, want half the nominal delay", d)
	}
	// With the real random source every delay stays within [d/2, d].
	b = newBackoff(time.Second, 8*time.Second)
	for i := 0; i < 200; i++ {
		nominal := time.Second << min(i, 3)
		d := b.next()
		if d < nominal/2 || d > nominal {
			t.Fatalf("attempt %d: delay %v outside [%v, %v]", i, d, nominal/2, nominal)
		}
	}
}
