//go:build linux

package main

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// delayRelay emulates a link between two TCP endpoints on one machine: a TCP relay in
// this process that forwards each direction after a fixed one-way delay and, if the
// link has a rate, no faster than that rate. It is the fallback for the 50 ms RTT
// measurement on kernels without netem, and the thin uplink of the priority section.
//
// Each direction reads what arrives into chunks stamped with their arrival time and
// writes every chunk once its time plus the delay has come, paced by a token bucket
// when the link has a rate (one bucket per direction, shared by every connection
// through the relay, as one link would be). So the relay behaves like a link with
// that latency and rate and a queue of link.queue bytes: while the queue is full it
// stops reading, and the sender's TCP sees a full receive window, the way a real
// link's queue would push back (without the drops).
//
// What it cannot model: both TCP connections it joins run on loopback, so their
// congestion control and receive windows see loopback RTT and open at once. What the
// delay does expose is every window kept above TCP — for the tunnel, SPDY's per-stream
// and per-session flow-control windows, which cap one stream at window ÷ RTT. And
// what a sender keeps queued above TCP, or in its kernel, waits behind the relay's
// queue as it would behind a real link's; link.rcvBuf keeps the relay's own socket
// buffers from adding megabytes to that queue.
type delayRelay struct {
	ln   net.Listener
	to   string
	link link
	// toDest and toClient pace the two directions (nil: unlimited): toDest what
	// the relay's clients send to the destination, toClient the answers.
	toDest, toClient *tokenBucket
	// queued counts the bytes in the relay's queues, both ways, for the priority
	// section's look at what waits ahead of a page.
	queuedToDest, queuedToClient atomic.Int64

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// link is what a delayRelay emulates, the same both ways.
type link struct {
	delay time.Duration // one way
	queue int           // bytes the relay holds per direction and connection
	rate  float64       // bytes per second each way; 0: unlimited
	// rcvBuf is SO_RCVBUF for the relay's sockets (0: the kernel's, autotuned to
	// megabytes). A sender whose data waits in the relay's receive buffer sees it
	// acknowledged, so that buffer is part of the link's queue.
	rcvBuf int
}

// relayPiece is the largest write the deliverer makes on a rate-limited link, and
// relayBurst the token bucket's depth: a link that was idle sends at most that much
// back to back.
const (
	relayPiece = 8 << 10
	relayBurst = 16 << 10
	// relayMinRead: with less room than this in its queue, the reader waits.
	relayMinRead = 4 << 10
)

// relayChunk is one read from the source: data (nil with eof or err for the end of the
// stream) and when it arrived.
type relayChunk struct {
	data []byte
	at   time.Time
	eof  bool  // the source half-closed: CloseWrite the destination
	err  error // the source failed: close the destination
}

const relayReadSize = 64 << 10

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayReadSize); return &b }}

// startDelayRelay listens on 127.0.0.1 and relays every accepted connection to the
// address to, delaying each direction by delay with at most queueBytes in flight.
func startDelayRelay(to string, delay time.Duration, queueBytes int) (*delayRelay, error) {
	return startLinkRelay(to, link{delay: delay, queue: queueBytes})
}

// startLinkRelay listens on 127.0.0.1 and relays every accepted connection to the
// address to over the emulated link l.
func startLinkRelay(to string, l link) (*delayRelay, error) {
	lc := net.ListenConfig{Control: rcvBufControl(l.rcvBuf)}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &delayRelay{ln: ln, to: to, link: l, conns: map[net.Conn]struct{}{}}
	if l.rate > 0 {
		r.toDest = newTokenBucket(l.rate, relayBurst, nil)
		r.toClient = newTokenBucket(l.rate, relayBurst, nil)
	}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// rcvBufControl sets SO_RCVBUF on a socket before it connects or listens (accepted
// sockets inherit it), so the window scale TCP negotiates fits it; nil for n = 0.
func rcvBufControl(n int) func(network, address string, c syscall.RawConn) error {
	if n <= 0 {
		return nil
	}
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n)
		}); err != nil {
			return err
		}
		return serr
	}
}

func (r *delayRelay) addr() string { return r.ln.Addr().String() }

func (r *delayRelay) port() string {
	_, p, _ := net.SplitHostPort(r.addr())
	return p
}

func (r *delayRelay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		c.Close()
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *delayRelay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	c.Close()
}

func (r *delayRelay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		if !r.track(c) {
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.serve(c)
		}()
	}
}

// serve dials the destination and pumps both directions. The client's connect
// returns at once (loopback), so the link's SYN/SYN-ACK round trip is spent before
// the dial instead: the first bytes the client sent wait for it in the socket buffer.
func (r *delayRelay) serve(c net.Conn) {
	defer r.untrack(c)
	time.Sleep(2 * r.link.delay)
	dl := net.Dialer{Timeout: 10 * time.Second, Control: rcvBufControl(r.link.rcvBuf)}
	d, err := dl.Dial("tcp", r.to)
	if err != nil {
		return
	}
	if !r.track(d) {
		return
	}
	defer r.untrack(d)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.pump(d, c, r.toDest, &r.queuedToDest) }()
	go func() { defer wg.Done(); r.pump(c, d, r.toClient, &r.queuedToClient) }()
	wg.Wait()
}

// pump forwards src to dst with the delay, paced by tb if not nil. It returns when
// src has ended and every byte read from it has been written (or dst failed).
func (r *delayRelay) pump(dst, src net.Conn, tb *tokenBucket, queued *atomic.Int64) {
	q := &relayQueue{limit: r.link.queue, total: queued}
	q.cond.L = &q.mu
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.deliver(dst, src, q, tb)
	}()
	for {
		// Read no more than fits: the queue is the link's buffer, and what does
		// not fit stays in the kernel, where the sender's TCP sees it.
		room, ok := q.waitRoom(relayMinRead)
		if !ok {
			break // the writer gave up
		}
		bp := relayBufs.Get().(*[]byte)
		n, err := src.Read((*bp)[:min(room, relayReadSize)])
		at := time.Now()
		if n > 0 {
			var data []byte
			if n < relayReadSize/4 {
				// Small reads (requests, acknowledgements, TLS handshakes) get a
				// right-sized copy so the queue's memory follows its byte count.
				data = append([]byte(nil), (*bp)[:n]...)
				relayBufs.Put(bp)
			} else {
				data = (*bp)[:n]
			}
			q.push(relayChunk{data: data, at: at})
		} else {
			relayBufs.Put(bp)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				q.push(relayChunk{at: at, eof: true})
			} else {
				q.push(relayChunk{at: at, err: err})
			}
			break
		}
	}
	<-done
	q.mu.Lock()
	if q.total != nil {
		q.total.Add(int64(-q.bytes)) // what a failed writer left
	}
	q.bytes = 0
	q.mu.Unlock()
}

// deliver writes each chunk to dst when its delay has passed: every chunk that is
// due in one writev, or, on a link with a rate (tb not nil), in pieces of at most
// relayPiece bytes, each when the token bucket allows.
func (r *delayRelay) deliver(dst, src net.Conn, q *relayQueue, tb *tokenBucket) {
	var bufs net.Buffers
	var owned [][]byte
	for {
		first, ok := q.front()
		if !ok {
			return
		}
		if wait := time.Until(first.at.Add(r.link.delay)); wait > 0 {
			time.Sleep(wait)
		}
		due := q.popDue(time.Now().Add(-r.link.delay))
		if tb != nil {
			if !deliverPaced(dst, src, q, tb, due) {
				return
			}
			continue
		}
		bufs, owned = bufs[:0], owned[:0]
		var end *relayChunk
		size := 0
		for i := range due {
			if due[i].data == nil {
				end = &due[i]
				break
			}
			bufs = append(bufs, due[i].data)
			owned = append(owned, due[i].data)
			size += len(due[i].data)
		}
		if len(bufs) > 0 {
			_, err := bufs.WriteTo(dst)
			for _, b := range owned {
				if cap(b) == relayReadSize {
					b = b[:relayReadSize]
					relayBufs.Put(&b)
				}
			}
			q.release(size)
			if err != nil {
				q.fail()
				src.Close() // stops the reader; the other direction sees it
				dst.Close()
				return
			}
		}
		if end != nil {
			endStream(dst, *end)
			q.fail()
			return
		}
	}
}

// deliverPaced writes the due chunks at the token bucket's pace and handles their
// end of stream; false when this direction is over.
func deliverPaced(dst, src net.Conn, q *relayQueue, tb *tokenBucket, due []relayChunk) bool {
	for _, c := range due {
		if c.data == nil {
			endStream(dst, c)
			q.fail()
			return false
		}
		for p := c.data; len(p) > 0; {
			n := min(len(p), relayPiece)
			if wait := tb.reserve(n); wait > 0 {
				time.Sleep(wait)
			}
			_, err := dst.Write(p[:n])
			q.release(n)
			if err != nil {
				q.fail()
				src.Close()
				dst.Close()
				return false
			}
			p = p[n:]
		}
		if cap(c.data) == relayReadSize {
			b := c.data[:relayReadSize]
			relayBufs.Put(&b)
		}
	}
	return true
}

// endStream passes the source's end on: a half-close after EOF, else a close.
func endStream(dst net.Conn, end relayChunk) {
	if tc, ok := dst.(*net.TCPConn); ok && end.eof {
		tc.CloseWrite()
		return
	}
	dst.Close()
}

// relayQueue is one direction's in-flight chunks, bounded by bytes.
type relayQueue struct {
	mu     sync.Mutex
	cond   sync.Cond
	chunks []relayChunk
	bytes  int
	limit  int
	dead   bool          // the writer is gone
	total  *atomic.Int64 // if not nil, follows bytes (the relay's sum over connections)
}

// waitRoom blocks until at least n more bytes fit, or the queue is empty, and
// returns how many fit (at least n); ok is false if the writer is gone.
func (q *relayQueue) waitRoom(n int) (room int, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.dead && q.bytes+n > q.limit && q.bytes > 0 {
		q.cond.Wait()
	}
	return max(q.limit-q.bytes, n), !q.dead
}

func (q *relayQueue) push(c relayChunk) {
	q.mu.Lock()
	q.chunks = append(q.chunks, c)
	q.bytes += len(c.data)
	if q.total != nil {
		q.total.Add(int64(len(c.data)))
	}
	q.mu.Unlock()
	q.cond.Broadcast()
}

// front waits for a chunk and returns the oldest one (without removing it).
func (q *relayQueue) front() (relayChunk, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.chunks) == 0 && !q.dead {
		q.cond.Wait()
	}
	if q.dead {
		return relayChunk{}, false
	}
	return q.chunks[0], true
}

// popDue removes and returns the chunks that arrived at or before cutoff (at least
// the first one, which the caller has waited for).
func (q *relayQueue) popDue(cutoff time.Time) []relayChunk {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 1
	for n < len(q.chunks) && !q.chunks[n].at.After(cutoff) {
		n++
	}
	out := make([]relayChunk, n)
	copy(out, q.chunks)
	q.chunks = q.chunks[n:]
	if len(q.chunks) == 0 {
		q.chunks = nil // let the backing array go
	}
	return out
}

func (q *relayQueue) release(n int) {
	q.mu.Lock()
	q.bytes -= n
	if q.total != nil {
		q.total.Add(int64(-n))
	}
	q.mu.Unlock()
	q.cond.Broadcast()
}

func (q *relayQueue) fail() {
	q.mu.Lock()
	q.dead = true
	q.mu.Unlock()
	q.cond.Broadcast()
}

// close stops accepting, closes every relayed connection and waits for the pumps.
func (r *delayRelay) close() {
	r.ln.Close()
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
