package caddymodule

import (
	"errors"
	"io"
	"net/http"
	"sync"
)

// The bodies of proxied requests and responses.

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// guardedBody is the request body one attempt reads. It counts what was
// read, so a request is only retried while none of its body has gone out;
// it lets the transport take the body back for a retry only when no read
// is under way; and it never closes the body while a read is under way
// (Caddy's body wrappers are not safe for that): a close that comes then
// is done by the read when it returns.
type guardedBody struct {
	rc io.ReadCloser

	mu          sync.Mutex
	read        int64
	reading     bool
	takenBack   bool // a retry owns the body now: reads fail, Close is a no-op
	closeWanted bool
	closed      bool
}

var errBodyTakenBack = errors.New("spdy_origin: request body taken back for a retry")

func (b *guardedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.takenBack || b.closed {
		b.mu.Unlock()
		if b.takenBack {
			return 0, errBodyTakenBack
		}
		return 0, http.ErrBodyReadAfterClose
	}
	b.reading = true
	b.mu.Unlock()
	n, err := b.rc.Read(p)
	b.mu.Lock()
	b.reading = false
	b.read += int64(n)
	closeNow := b.closeWanted && !b.closed
	if closeNow {
		b.closed = true
	}
	b.mu.Unlock()
	if closeNow {
		_ = b.rc.Close()
	}
	return n, err
}

// Close closes the body now, or when the read under way returns. A nil
// body (no request body) is fine.
func (b *guardedBody) Close() error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	if b.takenBack || b.closed {
		b.mu.Unlock()
		return nil
	}
	if b.reading {
		b.closeWanted = true
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	return b.rc.Close()
}

// takeBack ends this attempt's use of the body if none of it was read and
// no read is under way, so that a retry may read it from the start. A nil
// body (no request body) can always be taken back.
func (b *guardedBody) takeBack() bool {
	if b == nil {
		return true // no body: nothing to take back
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.read > 0 || b.reading || b.closed {
		return false
	}
	b.takenBack = true
	return true
}

// withCancel calls cancel once the body is closed, keeping the
// io.ReadWriteCloser of 101 responses that reverse_proxy needs for upgrades.
func withCancel(body io.ReadCloser, cancel func()) io.ReadCloser {
	cb := &cancelBody{ReadCloser: body, cancel: cancel}
	if w, ok := body.(io.Writer); ok {
		return &cancelRWC{cancelBody: cb, Writer: w}
	}
	return cb
}

type cancelBody struct {
	io.ReadCloser
	cancel func()
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// cancelRWC is a cancelBody that can be written to.
type cancelRWC struct {
	*cancelBody
	io.Writer
}
