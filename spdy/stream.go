package spdy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

var (
	errReadClosed  = errors.New("spdy: read on closed body")
	errWriteClosed = errors.New("spdy: write after the stream's half-close")
)

// streamState is a stream's life (SPDY/3.1 section 2.3), guarded by
// stream.mu. Bits are only ever set.
type streamState uint8

const (
	stRemoteFin  streamState = 1 << iota // the peer's FIN arrived (or every byte it declared: abortWith)
	stLocalFin                           // our FIN is sent
	stReadClosed                         // the application reads no more: data that comes is dropped
	stAborted                            // abortWith ran: the stream ends with err (one abort wins)
	stFinished                           // ended on the wire: both FINs, or reset
	stReleased                           // slot and budget given back (Session.removeStream)
)

func (s streamState) has(b streamState) bool { return s&b != 0 }

func (s *streamState) set(b streamState, on bool) {
	if on {
		*s |= b
	}
}

// tableFlags are a stream's marks in the session's stream table, guarded by
// Session.mu.
type tableFlags struct {
	upgraded        bool // a byte pipe after 101: counts against MaxUpgradedStreams
	waitsForSession bool // in Session.winWaiters
	finQueued       bool // our FIN went to the writer: the peer may see the stream closed
	draining        bool // finished on the wire, unread data left (Session.markDraining)
}

// stream is one SPDY stream: a receive buffer filled by the session's reader
// goroutine and drained by the application, and a send side that spends
// flow-control credit frame by frame.
type stream struct {
	s        *Session
	id       uint32
	priority uint8 // 0 highest .. 7 (schedule.go); set before the stream is shared

	// Guarded by s.mu, the session's lock (the reader goroutine updates
	// sendWin; tab is the stream's place in the table).
	sendWin sendWindow
	tab     tableFlags

	mu        sync.Mutex // guards the fields below
	recvWin   recvWindow
	extra     int64     // budget this stream holds beyond defaultWindow (given back when it ends)
	tuneStart time.Time // when the current window's worth of consumption began (see grow)
	tuneBytes int64     // consumed since tuneStart
	chunks    [][]byte  // unread DATA payloads, oldest first
	chunkOff  int       // read offset into chunks[0]
	buffered  int       // unread bytes in chunks
	received  int64     // DATA bytes received in all
	contentLn int64     // declared content-length of what we receive, -1 if none
	state     streamState
	err       error // why the stream was reset or aborted
	lost      error // unread data was dropped (see expire): reads fail with it
	replyHdr  http.Header
	trailer   http.Header // received in HEADERS frames
	head      bool        // a HEAD request we sent: its response has no body
	onFinish  func()

	// Idle watchdog marks (session clock ticks; 0: not waiting). See
	// Session.watchdog.
	readWaitSince int64 // data is buffered, unread since
	creditTick    int64 // when credit last went back to the peer (see read)
	sendWaitSince int64 // our DATA waits for the stream's send window since
	bodyWaitSince int64 // (client, before the reply) the request body source has given nothing since

	readWake chan struct{} // data, FIN or error arrived
	sendWake chan struct{} // window grew, or the stream ended
	reply    chan struct{} // closed when SYN_REPLY arrives
	done     chan struct{} // closed when the stream is finished

	writeMu sync.Mutex // one writer at a time, so frames go out in order
	written chan error // writer acknowledgements for this stream's frames
	// pendingHdr, guarded by writeMu, is a SYN_REPLY held back to go out
	// with the DATA frame that follows it at once (sendHeaderFrame's more):
	// one write, and one TLS record, for a small response.
	pendingHdr headerFrame

	// wErr, guarded by Session.wmu, is set when the stream ends abnormally
	// (abortWith): the writer takes none of its frames from then on
	// (Session.dropQueued).
	wErr error
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (st *stream) wakeSender() { signal(st.sendWake) }

// recvBufferSize is the size of the pooled buffers that hold received data.
const recvBufferSize = 64 << 10

var recvBufPool = sync.Pool{New: func() any { return new([recvBufferSize]byte) }}

// releaseChunk returns a drained receive buffer to the pool.
func releaseChunk(c []byte) {
	if cap(c) == recvBufferSize {
		recvBufPool.Put((*[recvBufferSize]byte)(c[:recvBufferSize]))
	}
}

// ownSlack is the most a stream's last buffer may have free when a pooled
// buffer is handed over whole (readData): what stays unused of a buffer.
const ownSlack = 1 << 10

// tailFree is the room left in the stream's last buffer.
func (st *stream) tailFree() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	if k := len(st.chunks); k > 0 {
		if last := st.chunks[k-1]; cap(last) == recvBufferSize {
			return cap(last) - len(last)
		}
	}
	return 0
}

// appendLocked stores p. A pooled buffer handed over (owned: nearly full,
// and the last buffer nearly full too) is kept as it is; anything else is
// packed into the free tail of the last buffer and new pooled buffers, so
// that what a stream holds is at most its buffered bytes plus one buffer
// and ownSlack per buffer, whatever the sizes of the frames.
func (st *stream) appendLocked(p []byte, owned bool) {
	if owned {
		st.chunks = append(st.chunks, p)
		return
	}
	for len(p) > 0 {
		if k := len(st.chunks); k > 0 {
			if last := st.chunks[k-1]; cap(last) == recvBufferSize && len(last) < cap(last) {
				n := min(len(p), cap(last)-len(last))
				st.chunks[k-1] = append(last, p[:n]...)
				p = p[n:]
				continue
			}
		}
		st.chunks = append(st.chunks, recvBufPool.Get().(*[recvBufferSize]byte)[:0])
	}
}

// dropLocked discards all buffered data.
func (st *stream) dropLocked() {
	for _, c := range st.chunks {
		releaseChunk(c)
	}
	st.chunks, st.chunkOff, st.buffered = nil, 0, 0
}

// admitData checks a DATA frame of n bytes against the stream before its
// payload is read: FIN already seen, the window we granted, the declared
// length. keep is false when the application reads no more (the payload is
// discarded). A refusal resets the stream.
func (st *stream) admitData(n int64) (keep bool, refused *refusal) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.state.has(stReleased) {
		// Removed between the reader's lookup and now (a reset from
		// another goroutine): nothing may be charged to it any more.
		return false, nil
	}
	if st.state.has(stRemoteFin) {
		return false, &refusal{Status: StatusStreamAlreadyClosed, Reason: "DATA after the stream's FIN"}
	}
	if err := st.recvWin.received(n); err != nil && !st.tolerateOverrunLocked(n) {
		return false, &refusal{Status: StatusFlowControlError, Reason: err.Error()}
	}
	st.received += n
	if st.contentLn >= 0 && st.received > st.contentLn {
		return false, &refusal{Status: StatusProtocolError, Reason: fmt.Sprintf("body longer than its content-length %d", st.contentLn)}
	}
	return !st.state.has(stReadClosed) && st.err == nil, nil
}

// push stores a payload admitted by admitData; p is only valid during the
// call unless owned.
func (st *stream) push(p []byte, owned bool) {
	st.mu.Lock()
	if st.state.has(stReadClosed) || st.err != nil {
		st.mu.Unlock()
		if owned {
			releaseChunk(p)
		}
		return
	}
	if st.buffered == 0 {
		st.readWaitSince = st.s.clock.Load()
	}
	st.appendLocked(p, owned)
	st.buffered += len(p)
	st.mu.Unlock()
	signal(st.readWake)
}

// endRemote records the peer's FIN.
func (st *stream) endRemote() {
	st.mu.Lock()
	st.state |= stRemoteFin
	st.mu.Unlock()
	signal(st.readWake)
	st.maybeFinish()
}

// receiveReply records SYN_REPLY (client streams).
func (st *stream) receiveReply(h http.Header, fin bool) {
	st.mu.Lock()
	if st.replyHdr != nil {
		st.mu.Unlock()
		st.resetLocal(StatusStreamInUse, errors.New("a second SYN_REPLY"))
		return
	}
	st.replyHdr = h
	// The declared length is known from here on, so that a reset racing
	// with the last bytes is judged against it (see abortWith).
	if status := h.Get(":status"); !st.head && !strings.HasPrefix(status, "204") && !strings.HasPrefix(status, "304") {
		st.contentLn = contentLength(h)
	}
	if fin {
		st.state |= stRemoteFin
	}
	st.mu.Unlock()
	close(st.reply)
	if fin {
		signal(st.readWake)
		st.maybeFinish()
	}
}

// read copies buffered data into p, waiting for it if needed, and returns
// credit to the peer for what it hands over.
func (st *stream) read(p []byte) (int, error) {
	st.mu.Lock()
	for {
		if st.buffered > 0 {
			n := 0
			for n < len(p) && len(st.chunks) > 0 {
				c := st.chunks[0][st.chunkOff:]
				k := copy(p[n:], c)
				n += k
				st.chunkOff += k
				if st.chunkOff == len(st.chunks[0]) {
					releaseChunk(st.chunks[0])
					st.chunks[0] = nil
					st.chunks = st.chunks[1:]
					st.chunkOff = 0
				}
			}
			st.buffered -= n
			if len(st.chunks) == 0 {
				st.chunks = nil
			}
			if st.buffered > 0 {
				st.readWaitSince = st.s.clock.Load()
			} else {
				st.readWaitSince = 0
			}
			var update int64
			if !st.state.has(stRemoteFin) && st.err == nil {
				st.tuneBytes += int64(n)
				if update = st.recvWin.consumed(int64(n)); update > 0 {
					update += st.growLocked()
				} else if now := st.s.clock.Load(); now > st.creditTick {
					// A slow but steady reader may take longer than
					// the idle timeout to consume a threshold's worth:
					// return what it consumed at least once per
					// watchdog tick, so the sender sees the progress.
					update = st.recvWin.flush()
				}
				if update > 0 {
					st.creditTick = st.s.clock.Load()
				}
			}
			drained := st.buffered == 0 && st.state.has(stFinished) && !st.state.has(stReleased)
			st.mu.Unlock()
			if update > 0 {
				st.s.queueWindowUpdate(st.id, uint32(update))
			}
			if drained {
				st.s.removeStream(st)
			}
			return n, nil
		}
		if st.lost != nil {
			err := st.lost
			st.mu.Unlock()
			return 0, err
		}
		if st.state.has(stRemoteFin) {
			err := io.EOF
			if st.contentLn >= 0 && st.received != st.contentLn {
				err = fmt.Errorf("%w: got %d of %d bytes: %w", ErrBodyLength, st.received, st.contentLn, io.ErrUnexpectedEOF)
			}
			st.mu.Unlock()
			return 0, err
		}
		if st.err != nil {
			err := st.err
			st.mu.Unlock()
			return 0, err
		}
		if st.state.has(stReadClosed) {
			st.mu.Unlock()
			return 0, errReadClosed
		}
		st.mu.Unlock()
		<-st.readWake
		st.mu.Lock()
	}
}

// closeRead tells the stream the application reads no more; buffered and
// future data is discarded.
func (st *stream) closeRead() {
	st.mu.Lock()
	st.state |= stReadClosed
	st.dropLocked()
	st.readWaitSince = 0
	release := st.state.has(stFinished) && !st.state.has(stReleased)
	st.mu.Unlock()
	signal(st.readWake)
	if release {
		st.s.removeStream(st)
	}
}

// expire drops the unread data of a stream that finished on the wire but
// whose reader stopped reading (the watchdog found it idle): reads fail with
// cause instead of ending early with EOF, and the stream's buffers, slot and
// budget are released.
func (st *stream) expire(cause error) {
	st.mu.Lock()
	st.lost = &StreamError{StreamID: st.id, Status: StatusCancel, Cause: cause}
	st.dropLocked()
	st.readWaitSince = 0
	st.mu.Unlock()
	signal(st.readWake)
	st.s.removeStream(st)
}

// bodyComplete reports whether the peer's side ended cleanly.
func (st *stream) bodyComplete() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.state.has(stRemoteFin)
}

// sendComplete reports whether our side of the stream ended: FIN sent or
// queued.
func (st *stream) sendComplete() bool {
	st.mu.Lock()
	done := st.state.has(stLocalFin)
	st.mu.Unlock()
	if done {
		return true
	}
	st.s.mu.Lock()
	defer st.s.mu.Unlock()
	return st.tab.finQueued
}

// write sends p as DATA frames within both windows; with fin the last frame
// carries FIN (an empty one if p is empty).
func (st *stream) write(p []byte, fin bool) (int, error) {
	return st.writeRoom(p, 0, fin)
}

// writeRoom is write of b[room:], room 0 or FrameRoom. A room lets each frame
// go to the connection as it lies in b, its header written in front of its
// data (in the room, or over bytes of b already sent), without a copy into
// the session's write buffer; b's contents are not kept.
func (st *stream) writeRoom(b []byte, room int, fin bool) (int, error) {
	st.writeMu.Lock()
	defer st.writeMu.Unlock()
	s := st.s
	p := b[room:]
	total := 0
	for {
		st.mu.Lock()
		err, localFin := st.err, st.state.has(stLocalFin)
		st.mu.Unlock()
		if err != nil {
			st.dropPending()
			return total, err
		}
		if localFin {
			st.dropPending()
			return total, errWriteClosed
		}
		if len(p) == 0 && !fin {
			st.queuePending()
			return total, nil
		}
		// A write at most a frame header over the frame size (a handler's
		// 64 KiB) goes in one frame, not in a frame and a tail of a few
		// bytes with a TLS record and a write of their own.
		limit := maxFrameFor(st.priority)
		if int64(len(p)) <= limit+frameHeaderLen {
			limit = int64(len(p))
		}
		s.mu.Lock()
		n := min(int64(len(p)), st.sendWin.available(), s.sendWin.available(), limit)
		if n == 0 && len(p) > 0 {
			onStream := st.sendWin.available() == 0
			if s.sendWin.available() == 0 && !st.tab.waitsForSession {
				st.tab.waitsForSession = true
				s.winWaiters = append(s.winWaiters, st)
				if s.sessionWaitSince == 0 {
					s.sessionWaitSince = s.clock.Load()
				}
			}
			s.mu.Unlock()
			// The reply must not wait for credit with the DATA.
			st.queuePending()
			// Only the stream's own window counts for the idle watchdog:
			// the session window is shared, and waiting for it says
			// nothing about this stream's peer.
			if onStream {
				st.mu.Lock()
				st.sendWaitSince = s.clock.Load()
				st.mu.Unlock()
			}
			<-st.sendWake
			if onStream {
				st.mu.Lock()
				st.sendWaitSince = 0
				st.mu.Unlock()
			}
			continue
		}
		st.sendWin.take(n)
		s.sendWin.take(n)
		last := fin && n == int64(len(p))
		if last {
			s.markFinQueuedLocked(st)
		}
		s.mu.Unlock()
		r := writeReq{data: dataFrame{id: st.id, fin: last, pri: st.priority, data: p[:n]}, done: st.written, st: st}
		if room > 0 {
			// Every byte before p is sent (or is the room): the frame's
			// header may go there.
			at := room + total
			r.data.framed = b[at-FrameRoom : at+int(n)]
		}
		if st.pendingHdr.block != nil {
			pre := writeReq{hdr: st.pendingHdr, st: st}
			st.pendingHdr = headerFrame{}
			err = s.send(&pre, r, false)
		} else {
			err = s.send(nil, r, false)
		}
		if err != nil {
			st.abort(err)
			return total, err
		}
		total += int(n)
		p = p[n:]
		if len(p) == 0 && !fin {
			// Every byte is out: the write succeeded, whatever happens to
			// the stream from now on (its next write will say).
			return total, nil
		}
		if last {
			st.mu.Lock()
			st.state |= stLocalFin
			st.mu.Unlock()
			st.maybeFinish()
			return total, nil
		}
	}
}

// closeWrite sends FIN if it was not sent.
func (st *stream) closeWrite() error {
	st.mu.Lock()
	sent := st.state.has(stLocalFin)
	st.mu.Unlock()
	if sent {
		return nil
	}
	_, err := st.write(nil, true)
	return err
}

// resetLocal resets the stream with RST_STREAM status and ends it; cause,
// which may be nil, says why (StreamError.Cause).
func (st *stream) resetLocal(status RSTStatus, cause error) {
	if st.abortWith(&StreamError{StreamID: st.id, Status: status, Cause: cause}) {
		st.s.queueRst(st.id, status)
	}
}

// abort ends the stream with err without telling the peer (the peer reset
// it, or the session is gone).
func (st *stream) abort(err error) { st.abortWith(err) }

// abortWith records err and finishes the stream; it reports false if the
// stream had already finished. Data the peer completed (FIN received) stays
// readable; otherwise buffered data is dropped.
func (st *stream) abortWith(err error) bool {
	st.mu.Lock()
	if st.state.has(stFinished) || st.state.has(stAborted) {
		st.mu.Unlock()
		return false
	}
	// aborted, set under the same lock as the check, makes this the one
	// abort that wins (and the one RST_STREAM that is sent): finish()
	// below runs after the lock is released.
	st.state |= stAborted
	st.err = err
	var local *StreamError
	if !st.state.has(stRemoteFin) && st.contentLn >= 0 && st.received == st.contentLn && !(errors.As(err, &local) && !local.Remote) {
		// Every byte the peer declared has arrived: the body is whole even
		// though its FIN did not come (node-spdy may reset a stream it has
		// just finished, ahead of the FIN).
		st.state |= stRemoteFin
	}
	if !st.state.has(stRemoteFin) {
		st.dropLocked()
	}
	st.readWaitSince, st.sendWaitSince, st.bodyWaitSince = 0, 0, 0
	st.mu.Unlock()
	// Before resetLocal queues RST_STREAM: nothing of the stream may
	// follow it, and a frame already queued must not go out either.
	st.s.dropQueued(st, err)
	// finish takes the stream out of the session-credit waiters
	// (removeStream, markDraining): before the wakes, so that a writer
	// that wakes to the error is listed there no more.
	st.finish()
	signal(st.readWake)
	signal(st.sendWake)
	return true
}

// whenFinished has f run once the stream finishes, or now if it has.
func (st *stream) whenFinished(f func()) {
	st.mu.Lock()
	st.onFinish = f
	finished := st.state.has(stFinished)
	st.mu.Unlock()
	if finished {
		f()
	}
}

// maybeFinish finishes the stream once both sides sent FIN.
func (st *stream) maybeFinish() {
	st.mu.Lock()
	both := st.state.has(stLocalFin) && st.state.has(stRemoteFin)
	st.mu.Unlock()
	if both {
		st.finish()
	}
}

// finish ends the stream on the wire. Its slot and budget go back now,
// unless data the application has not read is still buffered: then they go
// back once that is read or dropped (read, closeRead, expire), so that the
// memory a session holds stays bounded by its slots and budget even when
// finished responses sit unread.
func (st *stream) finish() {
	st.mu.Lock()
	if st.state.has(stFinished) {
		st.mu.Unlock()
		return
	}
	st.state |= stFinished
	release := st.buffered == 0 || st.state.has(stReadClosed)
	onFinish := st.onFinish
	st.mu.Unlock()
	close(st.done)
	if release {
		st.s.removeStream(st)
	} else {
		st.s.markDraining(st)
	}
	if onFinish != nil {
		onFinish()
	}
}

// idle reports why the stream has waited too long on a party that makes no
// progress, at watchdog tick now, or nil; and whether it has finished on the
// wire (only its unread data is left).
func (st *stream) idle(now int64) (cause error, finished bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.idleLocked(now), st.state.has(stFinished)
}

func (st *stream) idleLocked(now int64) error {
	over := func(since int64) bool { return since != 0 && now-since > idleTicks }
	timeout := st.s.cfg.StreamIdleTimeout
	switch {
	case over(st.readWaitSince):
		return fmt.Errorf("%w: %d bytes unread for %s", ErrStreamIdle, st.buffered, timeout)
	case over(st.sendWaitSince):
		return fmt.Errorf("%w: the peer opened no window for %s", ErrStreamIdle, timeout)
	case over(st.bodyWaitSince) && st.replyHdr == nil:
		return fmt.Errorf("%w: no request body bytes for %s", ErrRequestBodyTimeout, timeout)
	}
	return nil
}

// queuePending queues the held-back reply, if there is one, without
// waiting for the writer; st.writeMu is held.
func (st *stream) queuePending() {
	if st.pendingHdr.block != nil {
		st.s.enqueue(writeReq{hdr: st.pendingHdr, st: st}, true)
		st.pendingHdr = headerFrame{}
	}
}

// dropPending lets go of the held-back reply of a stream that ended;
// st.writeMu is held.
func (st *stream) dropPending() {
	if st.pendingHdr.block != nil {
		putBlock(st.pendingHdr.block)
		st.pendingHdr = headerFrame{}
	}
}

// sendHeaderFrame sends SYN_REPLY or HEADERS with block (which it takes
// over), after every DATA frame of the stream written before it (DATA
// written went through the writer before its write returned, and the
// stream's write lock is held), and with fin ends the sending side.
//
// With more, a DATA frame of the stream follows at once (the caller writes
// it next): the header frame waits in the stream (pendingHdr) and goes out
// with that frame, in one write, whose result reports a failure of either;
// or alone, queued, if the DATA must wait for credit first.
func (st *stream) sendHeaderFrame(typ uint16, block *blockWriter, fin, more bool) error {
	s := st.s
	st.writeMu.Lock()
	defer st.writeMu.Unlock()
	st.mu.Lock()
	err, done := st.err, st.state.has(stLocalFin)
	st.mu.Unlock()
	if err == nil && done {
		err = errWriteClosed
	}
	if err != nil {
		putBlock(block)
		st.dropPending()
		return err
	}
	r := writeReq{hdr: headerFrame{typ: typ, id: st.id, block: block}, done: st.written, st: st}
	if fin {
		r.hdr.flags = flagFin
		s.mu.Lock()
		s.markFinQueuedLocked(st)
		s.mu.Unlock()
	}
	if more && !fin {
		st.queuePending() // none is: one reply per stream
		st.pendingHdr = r.hdr
		return nil
	}
	st.queuePending()
	if err := s.send(nil, r, true); err != nil {
		st.abort(err)
		return err
	}
	if fin {
		st.mu.Lock()
		st.state |= stLocalFin
		st.mu.Unlock()
		st.maybeFinish()
	}
	return nil
}
