package spdy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRoomStress: many streams (the writer goroutine, not direct writes),
// small windows, some streams cancelled midway; the handler scribbles over
// its buffer as soon as WriteWithRoom returns. Every byte a client reads
// must be the pattern's.
func TestRoomStress(t *testing.T) {
	const per = 2 << 20
	ccfg := testConfig()
	ccfg.StreamWindow = 100003
	ccfg.SessionWindow = 300007
	cs, _ := pair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(per))
		rw := w.(RoomWriter)
		buf := make([]byte, FrameRoom+MaxDataFrame)
		var off int64
		for off < per {
			n := min(int64(MaxDataFrame), per-off)
			fillPattern(buf[FrameRoom:FrameRoom+n], off)
			if _, err := rw.WriteWithRoom(buf[:FrameRoom+n]); err != nil {
				return
			}
			for i := range buf {
				buf[i] = 0xAA
			}
			off += n
		}
	}), ccfg, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ctx = WithPriority(ctx, uint8(i%3))
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
			res, err := cs.RoundTrip(req)
			if err != nil {
				errs <- err
				return
			}
			defer res.Body.Close()
			b := make([]byte, 7001)
			var got int64
			cut := int64(-1)
			if i%4 == 0 {
				cut = int64(i) * 50000
			}
			for {
				n, err := res.Body.Read(b)
				if n > 0 && !checkPattern(b[:n], got) {
					errs <- fmt.Errorf("stream %d: bad bytes at %d", i, got)
					return
				}
				got += int64(n)
				if cut >= 0 && got > cut {
					cancel()
					return
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					errs <- err
					return
				}
				if i%5 == 0 {
					time.Sleep(time.Microsecond * 50)
				}
			}
			if got != per {
				errs <- fmt.Errorf("stream %d: %d bytes", i, got)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// failConn fails (or, with short, cuts without an error: a Writer that
// breaks io.Writer's contract) its first write of at least a full frame.
type failConn struct {
	net.Conn
	short bool
	hit   atomic.Bool
}

var errInjected = errors.New("injected write failure")

func (c *failConn) Write(p []byte) (int, error) {
	if len(p) >= MaxDataFrame && c.hit.CompareAndSwap(false, true) {
		n, _ := c.Conn.Write(p[:len(p)/2])
		if c.short {
			return n, nil
		}
		return n, errInjected
	}
	return c.Conn.Write(p)
}

// TestRoomDirectWriteFailure: a direct write that fails closes the session
// with the cause, and the handler's write fails, as a write through the
// buffer does.
func TestRoomDirectWriteFailure(t *testing.T) {
	for _, short := range []bool{false, true} {
		t.Run(fmt.Sprintf("short=%v", short), func(t *testing.T) {
			werr := make(chan error, 1)
			s, p := rawClientOver(t, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				rw := w.(RoomWriter)
				buf := make([]byte, FrameRoom+MaxDataFrame)
				for range 8 {
					if _, err := rw.WriteWithRoom(buf); err != nil {
						werr <- err
						return
					}
				}
				werr <- nil
			}), func(c net.Conn) net.Conn { return &failConn{Conn: c, short: short} })
			openWindows(p)
			p.mustWrite(synStream(1, reqBlock("GET", "/"), true))
			select {
			case err := <-werr:
				if err == nil {
					t.Fatal("every write succeeded, though the connection failed one")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("handler stuck")
			}
			select {
			case <-s.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("session did not close")
			}
			if short {
				if !errors.Is(s.Err(), io.ErrShortWrite) {
					t.Fatalf("session closed with %v, want io.ErrShortWrite", s.Err())
				}
			} else if !errors.Is(s.Err(), errInjected) {
				t.Fatalf("session closed with %v, want the write's error", s.Err())
			}
		})
	}
}

// TestRoomUploadStress: uploads from room buffers (recvBufPool, shared with
// received data) over small windows, some refused midway by the handler,
// next to downloads whose data lands in the same pool: every byte read on
// either side is the pattern's.
func TestRoomUploadStress(t *testing.T) {
	const per = 3 << 20
	scfg := testConfig()
	scfg.StreamWindow = 100003
	scfg.SessionWindow = 400009
	cs, _ := pair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "GET" {
			buf := make([]byte, 50000)
			for off := int64(0); off < per; off += int64(len(buf)) {
				fillPattern(buf, off)
				if _, err := w.Write(buf); err != nil {
					return
				}
			}
			return
		}
		stop, _ := strconv.ParseInt(r.URL.Query().Get("stop"), 10, 64)
		b := make([]byte, 9001)
		var got int64
		for {
			n, err := r.Body.Read(b)
			if n > 0 && !checkPattern(b[:n], got) {
				t.Errorf("upload: bad bytes at %d", got)
				return
			}
			got += int64(n)
			if stop > 0 && got > stop {
				w.WriteHeader(413)
				return
			}
			if err != nil {
				break
			}
		}
		if got != per {
			t.Errorf("upload: %d bytes", got)
		}
	}), nil, scfg)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				res, err := cs.RoundTrip(newReq(t, "GET", "http://x/", nil))
				if err != nil {
					t.Error(err)
					return
				}
				defer res.Body.Close()
				b := make([]byte, 7001)
				var got int64
				for {
					n, err := res.Body.Read(b)
					if n > 0 && !checkPattern(b[:n], got) {
						t.Errorf("download: bad bytes at %d", got)
						return
					}
					got += int64(n)
					if err != nil {
						break
					}
				}
				return
			}
			stop := 0
			if i%4 == 1 {
				stop = i * 100000
			}
			req := newReq(t, "POST", "http://x/up?stop="+strconv.Itoa(stop), &patternReader{n: per})
			req.ContentLength = per
			res, err := cs.RoundTrip(req)
			if err == nil {
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		}()
	}
	wg.Wait()
}
