package spdy

import "context"

// DATA scheduling by priority (SPDY/3 section 2.3.3: 0 highest, 7 lowest).
//
// Each stream has at most one DATA frame queued at a time (its write waits
// until the writer took the frame), so the queue holds one frame per
// stream that has something to send, and picking among them is the whole
// policy: strictly by priority, round-robin within a priority (a stream
// goes to the back of its level when it queues its next frame), and after
// shareEvery frames from higher levels while a lower one waits, one frame
// from the next lower level, so that a page keeps its precedence over a
// film without ever freezing it. Control frames go before all of it
// (writer.go).
//
// What the scheduler orders must still be unsent: see lowat_linux.go for
// the kernel's share, maxLowPriorityFrame for the frame the writer is in
// the middle of when something urgent arrives, and writeLoop for the write
// buffer, which it flushes once that much DATA waits in it.

const (
	// Priorities is the number of SPDY/3 priorities.
	Priorities = 8
	// DefaultPriority is the priority of a stream nobody chose one for:
	// RFC 9218's default urgency, 3.
	DefaultPriority = 3
	// shareEvery: one frame in shareEvery+1 goes to a lower level while
	// higher ones have frames waiting.
	shareEvery = 8
	// maxLowPriorityFrame caps the DATA frames of priorities 4 to 7: a
	// high-priority frame waits at most for one of them on the wire. With
	// its header, one such frame is one full TLS record.
	maxLowPriorityFrame = 16<<10 - frameHeaderLen
)

type priorityKey struct{}

// WithPriority returns a context under which RoundTrip sends its stream
// with priority p (0 highest .. 7 lowest; larger values mean 7). Without
// it, streams get DefaultPriority.
func WithPriority(ctx context.Context, p uint8) context.Context {
	return context.WithValue(ctx, priorityKey{}, min(p, Priorities-1))
}

// priorityOf is the priority WithPriority put in ctx, or DefaultPriority.
func priorityOf(ctx context.Context) uint8 {
	if p, ok := ctx.Value(priorityKey{}).(uint8); ok {
		return p
	}
	return DefaultPriority
}

// maxFrameFor is the largest DATA frame a stream of priority p sends.
func maxFrameFor(p uint8) int64 {
	if p >= 4 {
		return maxLowPriorityFrame
	}
	return maxDataFrame
}

// dataQueue holds the queued DATA frames by priority. It is guarded by the
// session's wmu.
type dataQueue struct {
	levels [Priorities]fifo
	n      int
	streak int // frames taken from above a waiting lower level in a row
}

// fifo is a queue that reuses its storage, up to keepQueueStorage frames'
// worth: a burst's storage goes when the burst ends.
type fifo struct {
	q    []writeReq
	head int
}

// keepQueueStorage is how many frames' storage an empty fifo keeps.
const keepQueueStorage = 64

func (f *fifo) push(r writeReq) { f.q = append(f.q, r) }

func (f *fifo) len() int { return len(f.q) - f.head }

func (f *fifo) pop() writeReq {
	r := f.q[f.head]
	f.q[f.head] = writeReq{}
	f.head++
	f.emptied()
	return r
}

// remove takes out the first request of st, if one is queued.
func (f *fifo) remove(st *stream) (writeReq, bool) {
	for i := f.head; i < len(f.q); i++ {
		if f.q[i].st == st {
			r := f.q[i]
			copy(f.q[i:], f.q[i+1:])
			f.q[len(f.q)-1] = writeReq{}
			f.q = f.q[:len(f.q)-1]
			f.emptied()
			return r, true
		}
	}
	return writeReq{}, false
}

// emptied resets the storage of a fifo that has just emptied, if it has.
func (f *fifo) emptied() {
	if f.head == len(f.q) {
		f.q, f.head = f.q[:0], 0
		if cap(f.q) > keepQueueStorage {
			f.q = nil
		}
	}
}

func (d *dataQueue) push(r writeReq) {
	d.levels[min(r.data.pri, Priorities-1)].push(r)
	d.n++
}

func (d *dataQueue) len() int { return d.n }

// pop takes the next frame by the policy above.
func (d *dataQueue) pop() (writeReq, bool) {
	if d.n == 0 {
		return writeReq{}, false
	}
	top := 0
	for d.levels[top].len() == 0 {
		top++
	}
	lower := -1
	for l := top + 1; l < Priorities; l++ {
		if d.levels[l].len() > 0 {
			lower = l
			break
		}
	}
	pick := top
	switch {
	case lower < 0:
		d.streak = 0
	case d.streak >= shareEvery:
		pick, d.streak = lower, 0
	default:
		d.streak++
	}
	d.n--
	return d.levels[pick].pop(), true
}

// remove takes st's queued frame out of the queue, if it has one.
func (d *dataQueue) remove(st *stream) (writeReq, bool) {
	r, ok := d.levels[min(st.priority, Priorities-1)].remove(st)
	if ok {
		d.n--
	}
	return r, ok
}

// drain removes and returns every queued frame.
func (d *dataQueue) drain() []writeReq {
	var out []writeReq
	for i := range d.levels {
		for d.levels[i].len() > 0 {
			out = append(out, d.levels[i].pop())
		}
	}
	d.n = 0
	return out
}
