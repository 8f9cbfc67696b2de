package spdy

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	mspdy "github.com/moby/spdystream/spdy"
)

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

// TestControlFramesFitInPlace: every control frame without a header block
// that we send is encoded whole into a ctrlFrame's buffer: the bytes the
// writer copies out of it are the frame a peer decodes. (One longer than
// the buffer would be appended elsewhere, and the buffer would hold a
// frame cut short.)
func TestControlFramesFitInPlace(t *testing.T) {
	s := &Session{} // enqueue only: no writer goroutine
	s.queueRst(1<<31-1, StatusFrameTooLarge)
	s.queueWindowUpdate(0, 1<<31-1)
	s.queuePing(1<<32 - 1)
	s.queueGoAway(1<<31-1, goAwayInternalError)
	frames := []ctrlFrame{settingsFrame(1<<32 - 1)}
	for s.ctrlQ.len() > 0 {
		frames = append(frames, s.ctrlQ.pop().ctrl)
	}
	want := []string{
		"*spdy.SettingsFrame [{Flag:0 Id:4 Value:4294967295} {Flag:0 Id:7 Value:65536}]",
		"*spdy.RstStreamFrame 2147483647 11",
		"*spdy.WindowUpdateFrame 0 2147483647",
		"*spdy.PingFrame 4294967295",
		"*spdy.GoAwayFrame 2147483647 2",
	}
	for i, c := range frames {
		if int(c.n) > len(c.b) || int(c.n) > maxCtrlFrame {
			t.Fatalf("frame %d: %d bytes, over the buffer (%d)", i, c.n, len(c.b))
		}
		fr, err := mspdy.NewFramer(io.Discard, bytes.NewReader(c.b[:c.n]))
		if err != nil {
			t.Fatal(err)
		}
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("frame %d (% x): %v", i, c.b[:c.n], err)
		}
		var got string
		switch f := f.(type) {
		case *mspdy.SettingsFrame:
			got = fmt.Sprintf("%T %+v", f, f.FlagIdValues)
		case *mspdy.RstStreamFrame:
			got = fmt.Sprintf("%T %d %d", f, f.StreamId, f.Status)
		case *mspdy.WindowUpdateFrame:
			got = fmt.Sprintf("%T %d %d", f, f.StreamId, f.DeltaWindowSize)
		case *mspdy.PingFrame:
			got = fmt.Sprintf("%T %d", f, f.Id)
		case *mspdy.GoAwayFrame:
			got = fmt.Sprintf("%T %d %d", f, f.LastGoodStreamId, f.Status)
		}
		if got != want[i] {
			t.Errorf("frame %d decodes as %s, want %s", i, got, want[i])
		}
	}
}
