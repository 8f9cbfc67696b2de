package spdy

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"time"
)

// The writer goroutine: one per session, it writes the frames queued for
// it, in order (header compression needs frames encoded in the order they
// are sent). Control frames go before DATA; frames queued close together
// share a write, and a TLS record. On a quiet session a stream's goroutine
// writes its frames itself when nothing is queued (direct writes, below).

// writeReq is one frame for the writer goroutine: a DATA frame (data.id
// set), a header-carrying frame (hdr.block set), or a small control frame
// already encoded (ctrl), all kept inline so that queueing a frame
// allocates nothing; or none of these, to flush. done, when set, receives
// the result once the frame is in the write buffer (or, with flush, on the
// wire). st is the stream whose DATA, SYN_REPLY or HEADERS this is: once
// that stream is reset the frame is dropped, never written (dropQueued).
type writeReq struct {
	ctrl  ctrlFrame
	hdr   headerFrame
	data  dataFrame
	flush bool
	done  chan error
	st    *stream
}

// ctrlFrame is an encoded control frame without a header block: RST_STREAM,
// WINDOW_UPDATE, PING, GOAWAY, or our SETTINGS (frame.go).
type ctrlFrame struct {
	b [maxCtrlFrame]byte
	n uint8
}

// maxCtrlFrame is the size of the largest control frame without a header
// block that we send: our SETTINGS, two entries (settingsFrame, which does
// not compile with more unless this grows). RST_STREAM, WINDOW_UPDATE and
// GOAWAY take 16 bytes, PING 12. A frame encoded into a ctrlFrame's buffer
// and longer than it would land elsewhere (append), leaving the buffer
// without it.
const maxCtrlFrame = frameHeaderLen + 4 + 2*8

// ctrlFrame.n holds the length.
const _ uint8 = maxCtrlFrame

// settingsFrame encodes the SETTINGS we send first: the streams the peer
// may open, and SPDY's default stream window (flow.go).
func settingsFrame(maxStreams uint32) ctrlFrame {
	entries := [...]setting{
		{settingMaxConcurrentStreams, maxStreams},
		{settingInitialWindowSize, defaultWindow},
	}
	// The frame fits in a ctrlFrame: a negative constant is no uint, so
	// an entry more does not compile until maxCtrlFrame grows.
	const _ = uint(maxCtrlFrame - (frameHeaderLen + 4 + 8*len(entries)))
	var c ctrlFrame
	c.n = uint8(len(appendSettings(c.b[:0], entries[:]...)))
	return c
}

// headerFrame is SYN_STREAM, SYN_REPLY or HEADERS: its block is compressed
// by the writer, in the order frames go out (one compression context).
type headerFrame struct {
	typ   uint16
	flags uint8
	pri   uint8
	id    uint32
	block *blockWriter // from blockBufs; back to it once compressed
}

// dataFrame is a DATA frame we encode ourselves, without copying the payload.
type dataFrame struct {
	id   uint32
	fin  bool
	pri  uint8 // its stream's priority (schedule.go)
	data []byte
	// framed, when set, is the whole frame in data's array: FrameRoom
	// bytes free for the header, then data (stream.writeRoom).
	framed []byte
}

// queueRst and the others here queue a small control frame without waiting:
// the reader goroutine uses them, so they never block on the network. Each
// encodes with a known function into the writeReq's inline buffer, so that
// the writeReq stays off the heap.
func (s *Session) queueRst(id uint32, status RSTStatus) {
	var c ctrlFrame
	c.n = uint8(len(appendRst(c.b[:0], id, status)))
	s.enqueue(writeReq{ctrl: c}, true)
}

func (s *Session) queueWindowUpdate(id, delta uint32) {
	var c ctrlFrame
	c.n = uint8(len(appendWindowUpdate(c.b[:0], id, delta)))
	s.enqueue(writeReq{ctrl: c}, true)
}

func (s *Session) queuePing(id uint32) {
	var c ctrlFrame
	c.n = uint8(len(appendPing(c.b[:0], id)))
	s.enqueue(writeReq{ctrl: c}, true)
}

func (s *Session) queueGoAway(lastGood, status uint32) {
	var c ctrlFrame
	c.n = uint8(len(appendGoAway(c.b[:0], lastGood, status)))
	s.enqueue(writeReq{ctrl: c}, true)
}

// errControlQueueFull closes a session whose peer sends control frames that
// want an answer (PINGs) faster than it reads ours: maxQueuedControl wait.
var errControlQueueFull = fmt.Errorf("%w: peer is not reading (control queue full)", ErrProtocol)

// controlRefusedLocked says why the control queue takes no frame, or nil:
// the writer stopped, or maxQueuedControl wait (errControlQueueFull: the
// caller closes the session, once its locks are released); s.wmu is held.
func (s *Session) controlRefusedLocked() error {
	switch {
	case s.wdone:
		return s.wcause
	case s.ctrlQ.len() >= maxQueuedControl:
		return errControlQueueFull
	}
	return nil
}

// GOAWAY status codes (SPDY/3.1 section 2.6.6).
const (
	goAwayOK            = 0
	goAwayProtocolError = 1
	goAwayInternalError = 2
)

// enqueue adds a request to the writer's queue. A request queued after the
// writer stopped, or for a stream that was reset, fails at once (and is not
// kept).
func (s *Session) enqueue(r writeReq, control bool) {
	s.wmu.Lock()
	if s.wdone {
		cause := s.wcause
		s.wmu.Unlock()
		if r.done != nil {
			r.done <- sessionClosedError(cause)
		}
		return
	}
	if r.st != nil && r.st.wErr != nil {
		err := r.st.wErr
		s.wmu.Unlock()
		s.unsent(r, err)
		return
	}
	if control {
		if err := s.controlRefusedLocked(); err != nil {
			s.wmu.Unlock()
			if err == errControlQueueFull {
				go s.closeWith(err, false, 0)
			}
			if r.done != nil {
				r.done <- sessionClosedError(err)
			}
			return
		}
		s.ctrlQ.push(r)
	} else {
		s.dataQ.push(r)
	}
	s.wmu.Unlock()
	select {
	case s.wsignal <- struct{}{}:
	default:
	}
}

// send writes r, after pre (a header frame of the same stream) when pre is
// not nil, and returns once r is written. When the session is quiet and
// nobody is writing, the calling goroutine writes them itself
// (writeDirect): a request or a small response then costs no hand-off to
// the writer goroutine and back. Otherwise they go through the writer's
// queues, pre as a control frame, and send waits for r's turn.
func (s *Session) send(pre *writeReq, r writeReq, control bool) error {
	s.wmu.Lock()
	live := r.st == nil || r.st.wErr == nil
	if live && s.tryDirectLocked() {
		s.wmu.Unlock()
		return s.writeDirect(pre, &r)
	}
	if r.done == nil {
		r.done = make(chan error, 1)
	}
	if !s.wdone && live && (pre == nil && !control || s.controlRefusedLocked() == nil) {
		// Both in one go, with one wake-up for the writer.
		if pre != nil {
			s.ctrlQ.push(*pre)
		}
		if control {
			s.ctrlQ.push(r)
		} else {
			s.dataQ.push(r)
		}
		s.wmu.Unlock()
		signal(s.wsignal)
	} else {
		// Refused: enqueue says why, and fails what it refuses.
		s.wmu.Unlock()
		if pre != nil {
			s.enqueue(*pre, true)
		}
		s.enqueue(r, control)
	}
	select {
	case err := <-r.done:
		return err
	case <-s.writerDone:
		// The writer may have written it just before it stopped.
		select {
		case err := <-r.done:
			return err
		default:
			return sessionClosedError(s.errOrShutdown())
		}
	}
}

// Direct writes. The writer goroutine is one of the goroutines that write
// to the connection, not the only one: whoever holds wlock owns the write
// buffer, the header compressor and the connection's write side. The writer
// goroutine takes it (Lock) for each run through the queues; a goroutine
// with a frame to send takes it only with TryLock, under wmu, and only
// while both queues are empty (tryDirectLocked), so that it never jumps the
// queue: a control frame or a DATA frame of higher priority queued before
// it still goes first, and frames of one stream, which its write lock
// orders, reach the wire in that order. The buffer is flushed before wlock
// is given back, so that nothing waits in it for a writer that is not
// coming. wlock is taken with Lock only while no other lock is held.
//
// A direct write waits for the connection as the writer would: on a peer
// that stopped reading, the goroutine that wrote stays in the write until
// WriteTimeout closes the session (a reset of its stream does not free it,
// as it would a frame in the queue). Once a write has waited on the link
// (pushback), frames go through the writer again until its writes stop
// waiting; and RoundTrip never writes its SYN_STREAM itself when its
// context can end (openStream).

// tryDirectLocked reports whether the caller now holds wlock and may write
// a frame itself: the writer runs, nothing is queued, nobody writes, and
// the session is quiet (directMaxOpen). s.wmu is held.
func (s *Session) tryDirectLocked() bool {
	return s.directOKLocked() && s.wlock.TryLock()
}

// directOKLocked reports whether a frame may be written directly, once
// wlock is taken; s.wmu is held.
func (s *Session) directOKLocked() bool {
	return !s.wdone && s.wfail == nil && !s.noDirect && !s.pushback.Load() && s.ctrlQ.len() == 0 && s.dataQ.len() == 0 && s.openStreams() <= directMaxOpen
}

// directMaxOpen: direct writes are for a quiet session, where the hand-off
// to the writer is most of a frame's cost. With more streams open, frames
// of several streams come close together, and the writer puts them in one
// write and one TLS record, where writing each itself would cost a write
// (and a record) per frame: with 50 clients on one session, the agent spent
// 25% more CPU per request with direct writes for every stream.
const directMaxOpen = 2

// writeDirect writes a (if not nil) and b, flushes, and gives wlock back. A
// failed write stops the writer goroutine, which closes the session with
// the cause, as if it had failed itself.
func (s *Session) writeDirect(a, b *writeReq) error {
	start := time.Now()
	s.touchDeadline(start)
	var err error
	if a != nil {
		err = s.encode(a)
	}
	if err == nil && b != nil {
		err = s.encode(b)
	}
	if err == nil {
		err = s.bw.Flush()
	}
	now := time.Now()
	s.pushback.Store(now.Sub(start) > writeBlocked)
	if err == nil && s.lowat != nil && (a != nil && a.data.id != 0 || b != nil && b.data.id != 0) {
		s.tuneLowat(now)
	}
	if err != nil {
		s.wmu.Lock()
		if s.wfail == nil {
			s.wfail = err
		}
		s.wmu.Unlock()
	}
	s.wlock.Unlock()
	if err != nil {
		signal(s.wsignal)
		return sessionClosedError(fmt.Errorf("spdy: writing to connection: %w", err))
	}
	return nil
}

// touchDeadline moves the connection's write deadline WriteTimeout ahead,
// at most every quarter of it; wlock is held.
func (s *Session) touchDeadline(now time.Time) {
	wt := s.cfg.WriteTimeout
	if wt <= 0 { // disabled
		return
	}
	if now.Sub(s.deadlineSet) > wt/4 {
		s.deadlineSet = now
		s.conn.SetWriteDeadline(now.Add(wt))
	}
}

// tuneLowat lets lowat.go follow the link after DATA; wlock is held.
func (s *Session) tuneLowat(now time.Time) {
	if n, change := s.lowat.next(now, s.bytesOut.Load()); change {
		setNotSentLowat(s.conn, n)
	}
}

func (s *Session) errOrShutdown() error {
	<-s.closed
	return s.err
}

// next pops the next request: control frames first, then DATA by
// priority (schedule.go). A SYN_REPLY or HEADERS of a stream reset since it
// was queued is dropped on the way (its DATA left the queue at the reset).
func (s *Session) next() (writeReq, bool) {
	for {
		s.wmu.Lock()
		var r writeReq
		ok := true
		if s.ctrlQ.len() > 0 {
			r = s.ctrlQ.pop()
		} else {
			r, ok = s.dataQ.pop()
		}
		var dropped error
		if ok && r.st != nil {
			dropped = r.st.wErr
		}
		s.wmu.Unlock()
		if dropped == nil {
			return r, ok
		}
		s.unsent(r, dropped)
	}
}

// dropQueued stops the writer from taking any more of st's frames, which
// ended with err (abortWith): after RST_STREAM, ours or the peer's, nothing
// of the stream may go out. Its queued DATA frame (a stream has at most
// one, schedule.go) leaves the queue now, and the write waiting on it fails
// with err.
func (s *Session) dropQueued(st *stream, err error) {
	s.wmu.Lock()
	if st.wErr != nil {
		s.wmu.Unlock()
		return
	}
	st.wErr = err
	r, ok := s.dataQ.remove(st)
	s.wmu.Unlock()
	if ok {
		s.unsent(r, err)
	}
}

// unsent fails a request the writer will never write. The credit a DATA
// frame took goes back: the peer never sees those bytes, so they must not
// count against the windows we track for it.
func (s *Session) unsent(r writeReq, err error) {
	if n := int64(len(r.data.data)); n > 0 && r.st != nil {
		s.refund(r.st, n)
	}
	if r.hdr.block != nil {
		putBlock(r.hdr.block)
	}
	if r.done != nil {
		r.done <- err
	}
}

func (s *Session) writeLoop() {
	var err error
	for err == nil {
		select {
		case <-s.wsignal:
			s.wlock.Lock()
			err = s.writeQueued()
			s.wlock.Unlock()
		case <-s.closed:
			// Write what is queued (a final GOAWAY) and stop.
			s.wlock.Lock()
			if err = s.failed(); err == nil {
				if r, ok := s.next(); ok {
					s.touchDeadline(time.Now())
					err = s.writeOne(r)
				}
			}
			if err == nil {
				err = s.bw.Flush()
			}
			if err == nil {
				err = ErrSessionClosed
			}
			s.wlock.Unlock()
		}
	}
	// From here nothing more is queued (enqueue, openStream): a frame
	// queued now would wait for a writer that is gone.
	var cause error
	if errors.Is(err, ErrSessionClosed) {
		cause = s.err // closed is closed: closeWith set it
	} else {
		cause = fmt.Errorf("spdy: writing to connection: %w", err)
	}
	s.wmu.Lock()
	s.wdone, s.wcause = true, cause
	s.wmu.Unlock()
	// Close writerDone before closeWith, which would otherwise wait for us
	// to write its GOAWAY.
	close(s.writerDone)
	if !errors.Is(err, ErrSessionClosed) {
		s.closeWith(cause, false, 0)
	}
	// Fail whatever is left.
	s.wmu.Lock()
	var left []writeReq
	for s.ctrlQ.len() > 0 {
		left = append(left, s.ctrlQ.pop())
	}
	left = append(left, s.dataQ.drain()...)
	s.wmu.Unlock()
	for _, r := range left {
		if r.done != nil {
			r.done <- sessionClosedError(s.errOrShutdown())
		}
	}
}

// failed is the error of a direct write that failed, or nil.
func (s *Session) failed() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.wfail
}

// writeQueued writes queued frames until none is left, then flushes; wlock
// is held.
func (s *Session) writeQueued() error {
	if err := s.failed(); err != nil {
		return err
	}
	for {
		r, ok := s.next()
		if !ok && s.bw.Buffered() > 0 {
			// Give goroutines about to queue a frame one chance to do so,
			// so that frames share a write (and a TLS record).
			runtime.Gosched()
			r, ok = s.next()
		}
		if !ok {
			if s.bw.Buffered() == 0 {
				return nil
			}
			s.touchDeadline(time.Now())
			return s.flushTimed()
		}
		start := time.Now()
		s.touchDeadline(start)
		if err := s.writeOne(r); err != nil {
			return err
		}
		if r.data.id == 0 {
			continue
		}
		// What is in bw is committed. On a link that pushes back (a write
		// just blocked: the kernel holds NotSentLowat unsent bytes), or
		// while a stream of higher priority than this DATA is open, hand a
		// low-priority frame's worth to the kernel before choosing the next
		// frame, so that a frame of higher priority queued meanwhile goes
		// next, not behind a buffer's worth (ioBufferSize) of lower ones
		// chosen before it arrived. On a fast link, and with nothing more
		// urgent about, DATA keeps filling the buffer: one write per 64 KiB,
		// not per frame (the flush costs throughput where writes never
		// wait, and buys nothing there).
		now := time.Now()
		busy := now.Sub(start) > writeBlocked || s.pushback.Load() && s.bw.Buffered() > 0
		s.pushback.Store(busy)
		if s.lowat != nil {
			s.tuneLowat(now)
		}
		if s.bw.Buffered() >= maxLowPriorityFrame && (busy || s.higherOpen(r.data.pri)) {
			if err := s.flushTimed(); err != nil {
				return err
			}
		}
		if r.done != nil && s.lowerOpen(r.data.pri) {
			// The stream just written waits on r.done to queue its next
			// frame, usually at once (its source has the bytes). Let it,
			// before choosing: otherwise a stream of lower priority that
			// has a frame queued gets one between each two of this one's.
			runtime.Gosched()
		}
	}
}

// flushTimed flushes the write buffer and records whether the link made
// it wait (pushback); wlock is held.
func (s *Session) flushTimed() error {
	start := time.Now()
	err := s.bw.Flush()
	s.pushback.Store(time.Since(start) > writeBlocked)
	return err
}

func (s *Session) writeOne(r writeReq) error {
	err := s.encode(&r)
	if err == nil && r.flush {
		err = s.bw.Flush()
	}
	if r.done != nil {
		if err != nil {
			// The writer stops here and the session closes with this cause.
			r.done <- sessionClosedError(fmt.Errorf("spdy: writing to connection: %w", err))
		} else {
			r.done <- nil
		}
	}
	return err
}

// encode puts r's frame in the write buffer; wlock is held.
func (s *Session) encode(r *writeReq) error {
	switch {
	case r.data.id != 0:
		return s.writeData(&r.data)
	case r.hdr.block != nil:
		return s.writeHeaderFrame(&r.hdr)
	case r.ctrl.n > 0:
		// Through the session's scratch: r's own bytes handed to the
		// buffered writer (which may pass them on to the connection)
		// would move every writeReq to the heap.
		n := copy(s.ctrlScratch[:], r.ctrl.b[:r.ctrl.n])
		_, err := s.bw.Write(s.ctrlScratch[:n])
		return err
	}
	return nil
}

// writeHeaderFrame compresses h's block in the session's context and
// writes the frame.
func (s *Session) writeHeaderFrame(h *headerFrame) error {
	block, err := s.deflater.compress(h.block.block())
	putBlock(h.block)
	h.block = nil
	if err != nil {
		return fmt.Errorf("compressing a header block: %w", err)
	}
	if _, err := s.bw.Write(appendHeaderFrame(s.frameHd[:0], h.typ, h.flags, h.id, h.pri, len(block))); err != nil {
		return err
	}
	_, err = s.bw.Write(block)
	return err
}

func (s *Session) writeData(d *dataFrame) error {
	if d.framed != nil && len(d.framed) > s.bw.Size()/2 {
		// A frame that fills most of the buffer gains nothing from sharing
		// a write: it goes to the connection from where it lies, without
		// the copy into the buffer (a memmove of every byte sent). What
		// waits in the buffer goes first, on its own, unless the frame
		// fits behind it; copying the rest of a frame that does not fit
		// would leave its tail in the buffer, and the next frame behind it,
		// and so on (every frame copied).
		if n := s.bw.Buffered(); n > 0 && n+len(d.framed) <= s.bw.Size() {
			return s.writeDataCopy(d)
		}
		if err := s.bw.Flush(); err != nil {
			return err
		}
		appendDataHeader(d.framed[:0], d.id, d.fin, len(d.data))
		n, err := s.conn.Write(d.framed)
		if err == nil && n < len(d.framed) {
			// As bufio.Writer does: a connection that takes less without
			// saying why must not leave the peer a cut frame.
			err = io.ErrShortWrite
		}
		s.bytesOut.Add(uint64(len(d.data)))
		return err
	}
	return s.writeDataCopy(d)
}

// writeDataCopy writes d through the session's write buffer.
func (s *Session) writeDataCopy(d *dataFrame) error {
	if _, err := s.bw.Write(appendDataHeader(s.frameHd[:0], d.id, d.fin, len(d.data))); err != nil {
		return err
	}
	_, err := s.bw.Write(d.data)
	s.bytesOut.Add(uint64(len(d.data)))
	return err
}

// writeBlocked is how long a write to the connection takes when the link,
// not the CPU, sets the pace: the kernel made it wait for room.
const writeBlocked = time.Millisecond

// openStreams counts the open streams.
func (s *Session) openStreams() int32 {
	var n int32
	for i := range s.openByPri {
		n += s.openByPri[i].Load()
	}
	return n
}

// lowerOpen reports whether a stream of lower priority than p is open.
func (s *Session) lowerOpen(p uint8) bool {
	for i := p + 1; i < Priorities; i++ {
		if s.openByPri[i].Load() > 0 {
			return true
		}
	}
	return false
}

// higherOpen reports whether a stream of higher priority than p is open.
func (s *Session) higherOpen(p uint8) bool {
	for i := range min(p, Priorities) {
		if s.openByPri[i].Load() > 0 {
			return true
		}
	}
	return false
}
