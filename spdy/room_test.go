package spdy

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	mspdy "github.com/moby/spdystream/spdy"
)

// copySpy sits under a session and tells, for each large write, whether
// its bytes come from the session's write buffer (copied there) or from
// where the sender had them (written from their room).
type copySpy struct {
	net.Conn
	bufBase atomic.Uintptr // where the session's write buffer starts; 0 until known
	mu      sync.Mutex
	copied  int
	inPlace int
}

func (c *copySpy) Write(p []byte) (int, error) {
	if base := c.bufBase.Load(); base != 0 && len(p) >= tlsRecord {
		at := uintptr(unsafe.Pointer(unsafe.SliceData(p)))
		c.mu.Lock()
		if at >= base && at < base+ioBufferSize {
			c.copied++
		} else {
			c.inPlace++
		}
		c.mu.Unlock()
	}
	return c.Conn.Write(p)
}

// wrap puts c under a session (rawClientOver, rawServerOver).
func (c *copySpy) wrap(conn net.Conn) net.Conn {
	c.Conn = conn
	return c
}

func (c *copySpy) counts() (copied, inPlace int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.copied, c.inPlace
}

// watch learns where s's write buffer lies: while the buffer is empty, its
// available part starts there.
func (c *copySpy) watch(t *testing.T, s *Session) {
	waitUntil(t, "the session's write buffer is empty", func() bool {
		s.wlock.Lock()
		defer s.wlock.Unlock()
		if s.bw.Buffered() != 0 {
			return false
		}
		c.bufBase.Store(uintptr(unsafe.Pointer(unsafe.SliceData(s.bw.AvailableBuffer()))))
		return true
	})
}

func fillPattern(b []byte, off int64) {
	for i := range b {
		x := off + int64(i)
		b[i] = byte(x*7 + x>>9)
	}
}

// patternReader gives n bytes of checkPattern's pattern, at most one TLS
// record per read (as a client's body read from TLS does).
type patternReader struct{ off, n int64 }

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.n-r.off, tlsRecord)]
	fillPattern(p, r.off)
	r.off += int64(len(p))
	return len(p), nil
}

// readPattern reads size bytes of DATA on stream id from p and checks
// them; with credit > 0 the peer's windows are that small, and it gives
// back what each frame used, so that frames end inside a write. It counts
// the frames of at least a TLS record with their header (large), the ones
// copySpy classifies.
func readPattern(t *testing.T, p *rawPeer, id uint32, size int64, credit uint32) (large int) {
	t.Helper()
	var got int64
	for got < size {
		f := p.expect("DATA", func(f mspdy.Frame) bool {
			d, ok := f.(*mspdy.DataFrame)
			return ok && uint32(d.StreamId) == id
		})
		d := f.(*mspdy.DataFrame)
		if !checkPattern(d.Data, got) {
			t.Fatalf("DATA frame of %d bytes at %d does not hold the bytes sent", len(d.Data), got)
		}
		got += int64(len(d.Data))
		if len(d.Data)+frameHeaderLen >= tlsRecord {
			large++
		}
		if credit > 0 && len(d.Data) > 0 {
			p.mustWrite(&mspdy.WindowUpdateFrame{StreamId: 0, DeltaWindowSize: uint32(len(d.Data))})
			p.mustWrite(&mspdy.WindowUpdateFrame{StreamId: mspdy.StreamId(id), DeltaWindowSize: uint32(len(d.Data))})
		}
	}
	if got != size {
		t.Fatalf("%d bytes of DATA, want %d", got, size)
	}
	return large
}

// roomWindows are the peer's windows the room tests run with: open (16
// MiB), or so small (credit bytes) that frames end inside a write and a
// header goes over bytes of the write already sent.
var roomWindows = []struct {
	name   string
	credit uint32
}{
	{"open windows", 0},
	{"frames cut by flow control", 10007},
}

// giveWindows gives the session windows of credit bytes, or open ones
// (credit 0).
func giveWindows(p *rawPeer, credit uint32) {
	if credit == 0 {
		openWindows(p)
		return
	}
	p.mustWrite(&mspdy.SettingsFrame{FlagIdValues: []mspdy.SettingsFlagIdValue{{Id: mspdy.SettingsInitialWindowSize, Value: credit}}})
}

// expectInPlace fails unless all large frames, or all but one, went to the
// connection from where their data lay; there are at least want of them.
func (c *copySpy) expectInPlace(t *testing.T, large, want int, from string) {
	t.Helper()
	copied, inPlace := c.counts()
	if large < want || inPlace < large-1 {
		t.Fatalf("%d of %d large frames went from %s (%d were copied into the session's buffer): want all, or all but one, of at least %d", inPlace, large, from, copied, want)
	}
}

// TestRoomyResponseIsNotCopied: a handler that writes through RoomWriter
// (the agent's response copy) has its frames go to the connection from its
// own buffer, not through a copy into the session's write buffer; and the
// bytes arrive whole, also when flow control cuts frames inside a write
// and a header goes over bytes already sent.
func TestRoomyResponseIsNotCopied(t *testing.T) {
	const writes = 16
	size := int64(writes * MaxDataFrame)
	for _, tc := range roomWindows {
		t.Run(tc.name, func(t *testing.T) {
			spy := &copySpy{}
			s, p := rawClientOver(t, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
				rw, ok := w.(RoomWriter)
				if !ok {
					t.Error("the server's ResponseWriter is not a RoomWriter")
					return
				}
				buf := make([]byte, FrameRoom+MaxDataFrame)
				for i := range writes {
					fillPattern(buf[FrameRoom:], int64(i)*MaxDataFrame)
					if n, err := rw.WriteWithRoom(buf); n != MaxDataFrame || err != nil {
						t.Errorf("WriteWithRoom: %d, %v", n, err)
						return
					}
				}
			}), spy.wrap)
			spy.watch(t, s)
			giveWindows(p, tc.credit)
			p.mustWrite(synStream(1, reqBlock("GET", "/"), true))
			large := readPattern(t, p, 1, size, tc.credit)
			if tc.credit > 0 {
				return // frames of 10007 bytes: too small for the spy
			}
			spy.expectInPlace(t, large, writes-1, "the handler's buffer")
		})
	}
}

// TestUploadIsNotCopied: a request body sent in full frames (an upload)
// goes to the connection from the buffer it was read into; the bytes
// arrive whole, also when flow control cuts its frames.
func TestUploadIsNotCopied(t *testing.T) {
	const size = 4 << 20
	for _, tc := range roomWindows {
		t.Run(tc.name, func(t *testing.T) {
			spy := &copySpy{}
			cs, p := rawServerOver(t, nil, spy.wrap)
			spy.watch(t, cs)
			giveWindows(p, tc.credit)
			req := newReq(t, "POST", "http://x/up", &patternReader{n: size})
			req.ContentLength = size
			res := goRoundTrip(cs, req)
			syn := p.expectSynStream()
			large := readPattern(t, p, uint32(syn.StreamId), size, tc.credit)
			p.mustWrite(synReply(uint32(syn.StreamId), replyBlock("200"), true))
			if r := recvResult(t, res); r.err != nil {
				t.Fatal(r.err)
			}
			if tc.credit > 0 {
				return
			}
			spy.expectInPlace(t, large, size/MaxDataFrame-1, "the body's buffer")
		})
	}
}
