package main

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// delayRelay is the fallback for the 50 ms RTT measurement on kernels without netem:
// a TCP relay in this process that forwards each direction after a fixed one-way
// delay. Each direction reads what arrives into chunks stamped with their arrival
// time and writes every chunk once its time plus the delay has come, so the relay
// behaves like a link with that latency and a queue of queueBytes: while the queue is
// full it stops reading, and the sender's TCP sees a full receive window, the way a
// real link's queue would push back (without the drops).
//
// What it cannot model: both TCP connections it joins run on loopback, so their
// congestion control and receive windows see loopback RTT and open at once. What the
// delay does expose is every window kept above TCP — for the tunnel, SPDY's per-stream
// and per-session flow-control windows, which cap one stream at window ÷ RTT.
type delayRelay struct {
	ln         net.Listener
	to         string
	delay      time.Duration
	queueBytes int

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &delayRelay{ln: ln, to: to, delay: delay, queueBytes: queueBytes, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	return r, nil
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
	time.Sleep(2 * r.delay)
	d, err := net.DialTimeout("tcp", r.to, 10*time.Second)
	if err != nil {
		return
	}
	if !r.track(d) {
		return
	}
	defer r.untrack(d)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.pump(d, c) }()
	go func() { defer wg.Done(); r.pump(c, d) }()
	wg.Wait()
}

// pump forwards src to dst with the delay. It returns when src has ended and every
// byte read from it has been written (or dst failed).
func (r *delayRelay) pump(dst, src net.Conn) {
	q := &relayQueue{limit: r.queueBytes}
	q.cond.L = &q.mu
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.deliver(dst, src, q)
	}()
	for {
		if !q.waitRoom(relayReadSize) {
			break // the writer gave up
		}
		bp := relayBufs.Get().(*[]byte)
		n, err := src.Read(*bp)
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
}

// deliver writes each chunk to dst when its delay has passed, batching every chunk
// that is due into one writev.
func (r *delayRelay) deliver(dst, src net.Conn, q *relayQueue) {
	var bufs net.Buffers
	var owned [][]byte
	for {
		first, ok := q.front()
		if !ok {
			return
		}
		if wait := time.Until(first.at.Add(r.delay)); wait > 0 {
			time.Sleep(wait)
		}
		due := q.popDue(time.Now().Add(-r.delay))
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
			if end.eof {
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
				} else {
					dst.Close()
				}
			} else {
				dst.Close()
			}
			q.fail()
			return
		}
	}
}

// relayQueue is one direction's in-flight chunks, bounded by bytes.
type relayQueue struct {
	mu     sync.Mutex
	cond   sync.Cond
	chunks []relayChunk
	bytes  int
	limit  int
	dead   bool // the writer is gone
}

// waitRoom blocks until n more bytes fit; false if the writer is gone.
func (q *relayQueue) waitRoom(n int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.dead && q.bytes+n > q.limit && q.bytes > 0 {
		q.cond.Wait()
	}
	return !q.dead
}

func (q *relayQueue) push(c relayChunk) {
	q.mu.Lock()
	q.chunks = append(q.chunks, c)
	q.bytes += len(c.data)
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
