package spdy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	mspdy "github.com/moby/spdystream/spdy"
)

func frameOf(id uint32, pri uint8) writeReq {
	return writeReq{data: dataFrame{id: id, pri: pri}}
}

func popAll(q *dataQueue) []uint32 {
	var ids []uint32
	for {
		r, ok := q.pop()
		if !ok {
			return ids
		}
		ids = append(ids, r.data.id)
	}
}

// TestDataQueueRemove: a reset stream's frame leaves the queue
// (dropQueued); the others keep their order, and a stream with nothing
// queued removes nothing.
func TestDataQueueRemove(t *testing.T) {
	var q dataQueue
	sts := map[uint32]*stream{}
	for _, id := range []uint32{1, 3, 5, 7} {
		sts[id] = &stream{id: id, priority: 4}
		r := frameOf(id, sts[id].priority)
		r.st = sts[id]
		q.push(r)
	}
	q.pop() // 1 goes to the writer: the level's head moves
	if r, ok := q.remove(sts[5]); !ok || r.data.id != 5 {
		t.Fatalf("remove(5) = %d, %v", r.data.id, ok)
	}
	if _, ok := q.remove(sts[5]); ok {
		t.Fatal("a second remove(5) found a frame")
	}
	if _, ok := q.remove(sts[1]); ok {
		t.Fatal("remove(1) found the frame the writer already took")
	}
	if got := fmt.Sprint(popAll(&q)); got != "[3 7]" || q.len() != 0 {
		t.Fatalf("after remove: %s, %d left", got, q.len())
	}
	r := frameOf(9, 4)
	r.st = &stream{id: 9, priority: 4}
	q.push(r)
	if _, ok := q.remove(r.st); !ok || q.len() != 0 || q.levels[4].head != 0 || len(q.levels[4].q) != 0 {
		t.Fatalf("the level's storage is not reset once its last frame is removed: %+v", q.levels[4])
	}
	// A burst's storage goes when a removal empties the level, as when
	// a pop does (keepQueueStorage).
	var last *stream
	for id := uint32(1); id <= 4*keepQueueStorage; id++ {
		last = &stream{id: id, priority: 4}
		r := frameOf(id, 4)
		r.st = last
		q.push(r)
	}
	for range 4*keepQueueStorage - 1 {
		q.pop()
	}
	if _, ok := q.remove(last); !ok || q.len() != 0 {
		t.Fatalf("the burst's last frame not removed: %d left", q.len())
	}
	if c := cap(q.levels[4].q); c > keepQueueStorage {
		t.Fatalf("after a burst emptied by a removal the level keeps room for %d frames, want at most %d", c, keepQueueStorage)
	}
}

func TestDataQueueOrder(t *testing.T) {
	cases := []struct {
		name string
		push []writeReq
		want string
	}{
		{"strict between levels", []writeReq{frameOf(1, 7), frameOf(3, 0), frameOf(5, 3), frameOf(7, 0)}, "[3 7 5 1]"},
		{"FIFO within a level", []writeReq{frameOf(1, 4), frameOf(3, 4), frameOf(5, 4)}, "[1 3 5]"},
		{"priorities above 7 are 7", []writeReq{frameOf(1, 200), frameOf(3, 7), frameOf(5, 6)}, "[5 1 3]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var q dataQueue
			for _, r := range c.push {
				q.push(r)
			}
			if got := fmt.Sprint(popAll(&q)); got != c.want {
				t.Fatalf("order %s, want %s", got, c.want)
			}
			if q.len() != 0 {
				t.Fatal("queue not empty")
			}
		})
	}
}

// TestDataQueueShare: while a higher level always has a frame waiting (its
// stream queues the next as soon as one is taken), a lower level still gets
// one frame in shareEvery+1, and round-robin holds within the higher level.
func TestDataQueueShare(t *testing.T) {
	var q dataQueue
	q.push(frameOf(1, 0))
	q.push(frameOf(3, 0))
	q.push(frameOf(5, 6))
	var got []uint32
	lows := 0
	for range 90 {
		r, _ := q.pop()
		got = append(got, r.data.id)
		if r.data.pri == 6 {
			lows++
		}
		q.push(r) // the stream queues its next frame
	}
	if lows != 10 {
		t.Fatalf("the low-priority stream got %d of 90 frames, want 10 (one in %d): %v", lows, shareEvery+1, got)
	}
	for i := 0; i+1 < len(got); i++ {
		if got[i] == got[i+1] && got[i] != 5 {
			t.Fatalf("stream %d twice in a row at %d: round-robin broken: %v", got[i], i, got)
		}
	}
}

// gatedConn holds every Write until the gate opens, so that frames pile up
// in the writer's queue in a known state.
type gatedConn struct {
	net.Conn
	gate chan struct{}
}

func (c *gatedConn) Write(p []byte) (int, error) {
	<-c.gate
	return c.Conn.Write(p)
}

// TestSchedulerOnTheWire: three streams each queue one DATA frame while the
// connection is blocked, in the order low, high, middle priority; once it
// unblocks, the frames reach the wire by priority. No timing: each stream
// has exactly one frame queued when the writer picks.
func TestSchedulerOnTheWire(t *testing.T) {
	a, b := tcpPair(t)
	gate := make(chan struct{})
	cs, err := NewClient(&gatedConn{Conn: a, gate: gate}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	p := newRawPeer(t, b)
	t.Cleanup(func() { close(gateOnce(gate)); cs.Close(); <-cs.writerDone })
	// Each request body is one small frame; FIN follows in a frame of
	// its own after the first is taken, so each stream has one queued.
	var bodies []*io.PipeWriter
	for _, pri := range []uint8{7, 0, 3} {
		pr, pw := io.Pipe()
		bodies = append(bodies, pw)
		req := newReq(t, "POST", "https://x/", nil)
		req.Body = pr
		req = req.WithContext(WithPriority(context.Background(), pri))
		go cs.RoundTrip(req)
		// SYN_STREAMs (control frames) are queued in this order too.
		waitUntil(t, "the stream is open", func() bool { return cs.OpenStreams() == len(bodies) })
	}
	var wg sync.WaitGroup
	for i, pw := range bodies {
		wg.Go(func() { pw.Write([]byte(strings.Repeat("x", 100*(i+1)))) })
	}
	waitUntil(t, "three DATA frames queued", func() bool {
		cs.wmu.Lock()
		defer cs.wmu.Unlock()
		return cs.dataQ.len() == 3
	})
	close(gate)
	var order []string
	pris := map[uint32]uint8{}
	for len(order) < 3 {
		switch f := p.expect("frames", func(mspdy.Frame) bool { return true }).(type) {
		case *mspdy.SynStreamFrame:
			pris[uint32(f.StreamId)] = f.Priority
		case *mspdy.DataFrame:
			order = append(order, fmt.Sprintf("%d(pri %d, %d bytes)", f.StreamId, pris[uint32(f.StreamId)], len(f.Data)))
		}
	}
	want := "[3(pri 0, 200 bytes) 5(pri 3, 300 bytes) 1(pri 7, 100 bytes)]"
	if got := fmt.Sprint(order); got != want {
		t.Fatalf("DATA on the wire %s, want %s", got, want)
	}
	for _, pw := range bodies {
		pw.Close()
	}
	wg.Wait()
}

// gateOnce returns a channel to close that is not gate if gate is closed
// already, so the cleanup never closes it twice.
func gateOnce(gate chan struct{}) chan struct{} {
	select {
	case <-gate:
		return make(chan struct{})
	default:
		return gate
	}
}

// TestPriorityFrameSizes: our server sends the response of a low-priority
// stream (4..7) in frames of at most 16 KiB, so an urgent frame waits for
// little on the wire, and of a high-priority one in frames up to 64 KiB.
func TestPriorityFrameSizes(t *testing.T) {
	const size = 256 << 10
	body, _ := io.ReadAll(io.LimitReader(newPattern(), size))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(body) // one write: the frame size is the stream's choice
	})
	cfg := testConfig()
	_, p := rawClient(t, cfg, h)
	p.mustWrite(&mspdy.SettingsFrame{FlagIdValues: []mspdy.SettingsFlagIdValue{{Id: mspdy.SettingsInitialWindowSize, Value: 1 << 20}}})
	p.mustWrite(&mspdy.WindowUpdateFrame{StreamId: 0, DeltaWindowSize: 1 << 24})
	for _, c := range []struct {
		id       uint32
		priority uint8
		max      int
	}{{1, 1, maxDataFrame}, {3, 6, maxLowPriorityFrame}} {
		syn := synStream(c.id, reqBlock("GET", "/"), true)
		syn.Priority = c.priority
		p.mustWrite(syn)
		got, largest := 0, 0
		for got < size {
			f := p.expect("DATA", func(f mspdy.Frame) bool { d, ok := f.(*mspdy.DataFrame); return ok && uint32(d.StreamId) == c.id })
			n := len(f.(*mspdy.DataFrame).Data)
			got += n
			largest = max(largest, n)
		}
		if largest != c.max {
			t.Fatalf("priority %d: largest DATA frame %d bytes, want %d", c.priority, largest, c.max)
		}
	}
}

// TestSynStreamPriority: RoundTrip sends the priority of its context.
func TestSynStreamPriority(t *testing.T) {
	cs, p := rawServer(t, nil)
	for _, pri := range []uint8{DefaultPriority, 0, 6} {
		ctx := context.Background()
		if pri != DefaultPriority {
			ctx = WithPriority(ctx, pri)
		}
		req := newReq(t, "GET", "https://x/", nil).WithContext(ctx)
		res := goRoundTrip(cs, req)
		syn := p.expectSynStream()
		if syn.Priority != pri {
			t.Fatalf("SYN_STREAM priority %d, want %d", syn.Priority, pri)
		}
		p.mustWrite(synReply(uint32(syn.StreamId), replyBlock("204"), true))
		recvResult(t, res)
	}
}

// valveConn holds every Write while closed and tells whether one is waiting.
type valveConn struct {
	net.Conn
	mu      sync.Mutex
	cond    sync.Cond
	shut    bool
	waiting int
}

func newValveConn(c net.Conn) *valveConn {
	v := &valveConn{Conn: c}
	v.cond.L = &v.mu
	return v
}

func (v *valveConn) Write(p []byte) (int, error) {
	v.mu.Lock()
	for v.shut {
		v.waiting++
		v.cond.Wait()
		v.waiting--
	}
	v.mu.Unlock()
	return v.Conn.Write(p)
}

func (v *valveConn) set(shut bool) {
	v.mu.Lock()
	v.shut = shut
	v.mu.Unlock()
	v.cond.Broadcast()
}

func (v *valveConn) blocked() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.waiting > 0
}

// valveServer starts our server session (serving h) on a valveConn,
// against a raw client peer.
func valveServer(t *testing.T, h http.Handler) (*Session, *valveConn, *rawPeer) {
	t.Helper()
	a, b := tcpPair(t)
	v := newValveConn(b)
	s, err := NewServer(v, testConfig(), h)
	if err != nil {
		t.Fatal(err)
	}
	p := newRawPeer(t, a)
	t.Cleanup(func() { v.set(false); s.Close(); <-s.readerDone; <-s.writerDone; s.handlersWG.Wait() })
	return s, v, p
}

// valveClient starts our client session on a valveConn shut from the start
// (our SETTINGS wait on the connection), against a raw server peer.
func valveClient(t *testing.T) (*Session, *valveConn, *rawPeer) {
	t.Helper()
	a, b := tcpPair(t)
	v := newValveConn(a)
	v.set(true)
	cs, err := NewClient(v, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	p := newRawPeer(t, b)
	t.Cleanup(func() { v.set(false); cs.Close(); <-cs.readerDone; <-cs.writerDone })
	waitUntil(t, "the writer waits on the connection", v.blocked)
	return cs, v, p
}

// TestUrgentDataNotBehindBufferedLowData: low-priority responses keep the
// writer busy on a connection that does not drain; a high-priority frame
// queued meanwhile goes out after at most the one low-priority frame being
// written, not behind a write buffer's worth (64 KiB) of them: the writer
// hands what it buffered to the connection once a low-priority frame's
// worth waits, before it picks the next frame. (Without that rule, 64 KiB
// went first whenever the writer had frames to fill its buffer with, which
// four busy streams make the usual case.)
//
// With direct writes (writer.go), the write that blocks is a handler's own,
// and the frames of the others queue behind it, replies first; the urgent
// frame must still go before every queued low-priority one.
func TestUrgentDataNotBehindBufferedLowData(t *testing.T) {
	t.Run("writer", func(t *testing.T) { testUrgentDataNotBehindLowData(t, false) })
	t.Run("direct", func(t *testing.T) { testUrgentDataNotBehindLowData(t, true) })
}

func testUrgentDataNotBehindLowData(t *testing.T, direct bool) {
	low, _ := io.ReadAll(io.LimitReader(newPattern(), 1<<20))
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/high" {
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush() // the reply goes now; the body on release
			<-release
			w.Write(low[:4096])
			return
		}
		w.Write(low)
	})
	s, v, p := valveServer(t, h)
	s.wmu.Lock()
	s.noDirect = !direct
	s.wmu.Unlock()
	p.mustWrite(&mspdy.SettingsFrame{FlagIdValues: []mspdy.SettingsFlagIdValue{{Id: mspdy.SettingsInitialWindowSize, Value: 1 << 21}}})
	p.mustWrite(&mspdy.WindowUpdateFrame{StreamId: 0, DeltaWindowSize: 1 << 24})
	syn := synStream(1, reqBlock("GET", "/high"), true)
	syn.Priority = 0
	p.mustWrite(syn)
	p.expect("SYN_REPLY 1", func(f mspdy.Frame) bool { r, ok := f.(*mspdy.SynReplyFrame); return ok && r.StreamId == 1 })

	v.set(true)
	for id := uint32(3); id <= 9; id += 2 {
		syn := synStream(id, reqBlock("GET", "/low"), true)
		syn.Priority = 6
		p.mustWrite(syn)
	}
	waitUntil(t, "a write waits on the connection with low-priority frames queued", func() bool {
		s.wmu.Lock()
		queued := s.dataQ.len()
		if direct {
			// The others' replies wait behind the blocked write.
			queued += s.ctrlQ.len()
		}
		s.wmu.Unlock()
		return v.blocked() && queued > 0
	})
	close(release)
	waitUntil(t, "the urgent frame is queued", func() bool {
		s.wmu.Lock()
		defer s.wmu.Unlock()
		return s.dataQ.levels[0].len() > 0
	})
	v.set(false)
	before := 0
	p.expect("DATA of stream 1", func(f mspdy.Frame) bool {
		d, ok := f.(*mspdy.DataFrame)
		if !ok {
			return false
		}
		if d.StreamId == 1 {
			return true
		}
		before += len(d.Data)
		return false
	})
	if before > maxLowPriorityFrame {
		t.Fatalf("%d bytes of low-priority DATA went before the urgent frame queued while the connection was blocked, want at most one frame (%d)", before, maxLowPriorityFrame)
	}
}
