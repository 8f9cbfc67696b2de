package spdy

import (
	"errors"
	"testing"
)

func TestSendWindow(t *testing.T) {
	w := sendWindow{n: defaultWindow}
	if got := w.available(); got != defaultWindow {
		t.Fatalf("available %d, want %d", got, defaultWindow)
	}
	w.take(1000)
	if got := w.available(); got != defaultWindow-1000 {
		t.Fatalf("after take: available %d", got)
	}
	// A SETTINGS shrink may push the window below zero: nothing is available
	// until credit brings it back above zero.
	if err := w.add(-defaultWindow); err != nil {
		t.Fatal(err)
	}
	if w.n != -1000 || w.available() != 0 {
		t.Fatalf("negative window: n=%d available=%d", w.n, w.available())
	}
	if err := w.add(999); err != nil {
		t.Fatal(err)
	}
	if w.available() != 0 {
		t.Fatalf("window -1 reports %d available", w.available())
	}
	if err := w.add(11); err != nil {
		t.Fatal(err)
	}
	if w.available() != 10 {
		t.Fatalf("available %d, want 10", w.available())
	}

	// Growing to exactly 2^31-1 is allowed; one more byte is a flow-control error.
	w = sendWindow{n: 0}
	if err := w.add(maxWindow); err != nil {
		t.Fatalf("add to max: %v", err)
	}
	err := w.add(1)
	if err == nil || !errors.Is(err, ErrProtocol) {
		t.Fatalf("overflow: got %v, want ErrProtocol", err)
	}
	if w.n != maxWindow {
		t.Fatalf("a failed add changed the window to %d", w.n)
	}
}

func TestRecvWindow(t *testing.T) {
	const size, threshold = 1000, 300
	w := newRecvWindow(size, threshold)

	if err := w.received(600); err != nil {
		t.Fatal(err)
	}
	if err := w.received(400); err != nil {
		t.Fatalf("filling the window exactly: %v", err)
	}
	if err := w.received(1); err == nil || !errors.Is(err, ErrProtocol) {
		t.Fatalf("overrun: got %v, want ErrProtocol", err)
	}
	if w.inFlight != size {
		t.Fatalf("failed receive changed inFlight to %d", w.inFlight)
	}

	// Credit comes back only once threshold bytes were consumed, in one batch.
	if d := w.consumed(100); d != 0 {
		t.Fatalf("consumed 100: update %d, want 0", d)
	}
	if d := w.consumed(199); d != 0 {
		t.Fatalf("consumed 299: update %d, want 0", d)
	}
	if err := w.received(1); err == nil {
		t.Fatal("consumption below the threshold must not reopen the window")
	}
	if d := w.consumed(1); d != 300 {
		t.Fatalf("consumed 300: update %d, want 300", d)
	}
	if w.inFlight != size-300 || w.unacked != 0 {
		t.Fatalf("after update: inFlight %d unacked %d", w.inFlight, w.unacked)
	}
	// Exactly the returned credit may be used again.
	if err := w.received(300); err != nil {
		t.Fatal(err)
	}
	if err := w.received(1); err == nil {
		t.Fatal("peer may not exceed returned credit")
	}
	// A large consumption returns everything at once.
	if d := w.consumed(size); d != size {
		t.Fatalf("update %d, want %d", d, size)
	}
	if w.inFlight != 0 {
		t.Fatalf("inFlight %d after returning everything", w.inFlight)
	}
	// Zero-length DATA (a bare FIN) is always acceptable.
	full := newRecvWindow(10, 5)
	if err := full.received(10); err != nil {
		t.Fatal(err)
	}
	if err := full.received(0); err != nil {
		t.Fatalf("empty frame into a full window: %v", err)
	}
}

// TestRecvWindowNeverOverGrants drives a receive window with a sender that
// spends every byte of credit it is given and a reader that consumes in odd
// sizes: the receiver must never accept more than size unconsumed bytes.
func TestRecvWindowNeverOverGrants(t *testing.T) {
	const size, threshold = 64 << 10, 16 << 10
	w := newRecvWindow(size, threshold)
	var senderCredit int64 = size
	var unread int64
	consume := []int64{1, 4095, 7000, 16384, 30000, 3}
	for i := range 10000 {
		if senderCredit > 0 {
			n := min(senderCredit, int64(1+i*37%20000))
			if err := w.received(n); err != nil {
				t.Fatalf("step %d: sender within its credit was refused: %v", i, err)
			}
			senderCredit -= n
			unread += n
		}
		if unread > size {
			t.Fatalf("step %d: %d unread bytes exceed the window %d", i, unread, size)
		}
		c := min(unread, consume[i%len(consume)])
		unread -= c
		senderCredit += w.consumed(c)
	}
}
