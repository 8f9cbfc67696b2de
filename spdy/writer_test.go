package spdy

import "testing"

// TestControlQueueAllocs: queueing a control frame allocates nothing once
// the writer keeps up (the queue empties after each frame, as it does in a
// steady session), and a burst's storage is not kept past its end.
func TestControlQueueAllocs(t *testing.T) {
	s := &Session{} // enqueue and next only: no writer goroutine
	allocs := testing.AllocsPerRun(100, func() {
		s.queueWindowUpdate(1, 1<<10)
		if _, ok := s.next(); !ok {
			t.Fatal("queued WINDOW_UPDATE missing")
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per queued and written control frame, want 0", allocs)
	}
	for range 4 * keepQueueStorage {
		s.queuePing(1)
	}
	for range 4 * keepQueueStorage {
		s.next()
	}
	if c := cap(s.ctrlQ.q); c > keepQueueStorage {
		t.Errorf("after a burst the control queue keeps room for %d frames, want at most %d", c, keepQueueStorage)
	}
}
