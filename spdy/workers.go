package spdy

import "sync"

// Stream handlers run on goroutines that are kept, once their handler
// returns, for a later stream of any session: a new goroutine per stream
// starts with a small stack and grows it (copies it) on the way into the
// handler, every time. In the agent's CPU profiles that copying was 8% of
// the time under one client's requests and 4% under fifty's. A kept
// goroutine has its stack grown already. At most maxIdleWorkers wait; the
// others end with their handler.

const maxIdleWorkers = 64

var workers workerPool

type workerPool struct {
	mu   sync.Mutex
	idle []chan func() // each waiting worker's inbox; the last one is the warmest
}

// run runs f on a waiting worker, or on a new one.
func (p *workerPool) run(f func()) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		inbox := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		inbox <- f // buffered: never blocks
		return
	}
	p.mu.Unlock()
	go p.work(f)
}

func (p *workerPool) work(f func()) {
	inbox := make(chan func(), 1)
	for {
		f()
		f = nil // nothing of the last stream is kept while waiting
		p.mu.Lock()
		if len(p.idle) >= maxIdleWorkers {
			p.mu.Unlock()
			return
		}
		p.idle = append(p.idle, inbox)
		p.mu.Unlock()
		f = <-inbox
		if f == nil { // stopIdle
			return
		}
	}
}

// stopIdle ends the waiting workers (tests that count goroutines).
func (p *workerPool) stopIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, inbox := range idle {
		inbox <- nil
	}
}
