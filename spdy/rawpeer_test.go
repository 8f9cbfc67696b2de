package spdy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	mspdy "github.com/moby/spdystream/spdy"
)

// rawTimeout bounds every wait of a raw peer. It only detects a hung test;
// no test relies on it passing for correctness.
const rawTimeout = 15 * time.Second

// rawPeer is the other end of a session, speaking SPDY frame by frame with
// moby's codec, so tests control the wire exactly. Frames it reads are
// delivered in order on frames; the reader goroutine stops when the
// connection ends.
type rawPeer struct {
	t      testing.TB
	conn   net.Conn
	wmu    sync.Mutex
	bw     *bufio.Writer
	wfr    *mspdy.Framer
	frames chan mspdy.Frame
	stop   chan struct{}
	done   chan struct{}
	rerr   error // why the reader stopped; read after done is closed
	once   sync.Once
}

func newRawPeer(t testing.TB, conn net.Conn) *rawPeer {
	t.Helper()
	p := &rawPeer{
		t:      t,
		conn:   conn,
		bw:     bufio.NewWriter(conn),
		frames: make(chan mspdy.Frame, 1024),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	var err error
	if p.wfr, err = mspdy.NewFramer(p.bw, nil); err != nil {
		t.Fatal(err)
	}
	rfr, err := mspdy.NewFramer(io.Discard, bufio.NewReaderSize(conn, 64<<10))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		defer close(p.frames)
		for {
			f, err := rfr.ReadFrame()
			if err != nil {
				p.rerr = err
				return
			}
			select {
			case p.frames <- f:
			case <-p.stop:
				p.rerr = errors.New("raw peer closed")
				return
			}
		}
	}()
	t.Cleanup(p.close)
	return p
}

func (p *rawPeer) close() {
	p.once.Do(func() {
		close(p.stop)
		p.conn.Close()
		<-p.done
	})
}

// write sends one frame. It returns the error instead of failing the test:
// after a protocol error the session closes the connection under our feet.
func (p *rawPeer) write(f mspdy.Frame) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if err := p.wfr.WriteFrame(f); err != nil {
		return err
	}
	return p.bw.Flush()
}

func (p *rawPeer) mustWrite(f mspdy.Frame) {
	p.t.Helper()
	if err := p.write(f); err != nil {
		p.t.Fatalf("raw peer: writing %T: %v", f, err)
	}
}

// writeRaw sends bytes as they are (for malformed frames).
func (p *rawPeer) writeRaw(b []byte) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if _, err := p.bw.Write(b); err != nil {
		return err
	}
	return p.bw.Flush()
}

// next returns the next frame, or nil when the connection ended.
func (p *rawPeer) next() mspdy.Frame {
	p.t.Helper()
	t := time.NewTimer(rawTimeout)
	defer t.Stop()
	select {
	case f, ok := <-p.frames:
		if !ok {
			return nil
		}
		return f
	case <-t.C:
		p.t.Fatalf("raw peer: no frame within %v", rawTimeout)
		return nil
	}
}

// expect skips frames until match accepts one, answering PINGs on the way.
// It fails the test if the connection ends first.
func (p *rawPeer) expect(what string, match func(mspdy.Frame) bool) mspdy.Frame {
	p.t.Helper()
	for {
		f := p.next()
		if f == nil {
			p.t.Fatalf("raw peer: connection ended (%v) while waiting for %s", p.rerr, what)
		}
		if match(f) {
			return f
		}
		if pf, ok := f.(*mspdy.PingFrame); ok {
			p.write(&mspdy.PingFrame{Id: pf.Id})
		}
	}
}

func (p *rawPeer) expectSynStream() *mspdy.SynStreamFrame {
	p.t.Helper()
	return p.expect("SYN_STREAM", func(f mspdy.Frame) bool { _, ok := f.(*mspdy.SynStreamFrame); return ok }).(*mspdy.SynStreamFrame)
}

func (p *rawPeer) expectRst(id uint32) *mspdy.RstStreamFrame {
	p.t.Helper()
	return p.expect(fmt.Sprintf("RST_STREAM %d", id), func(f mspdy.Frame) bool {
		r, ok := f.(*mspdy.RstStreamFrame)
		return ok && uint32(r.StreamId) == id
	}).(*mspdy.RstStreamFrame)
}

func (p *rawPeer) expectGoAway() *mspdy.GoAwayFrame {
	p.t.Helper()
	return p.expect("GOAWAY", func(f mspdy.Frame) bool { _, ok := f.(*mspdy.GoAwayFrame); return ok }).(*mspdy.GoAwayFrame)
}

// drain reads until the connection ends and returns what came.
func (p *rawPeer) drain() []mspdy.Frame {
	p.t.Helper()
	var fs []mspdy.Frame
	for {
		f := p.next()
		if f == nil {
			return fs
		}
		fs = append(fs, f)
	}
}

// reqBlock is a SYN_STREAM header block for a request.
func reqBlock(method, path string, extra ...string) http.Header {
	h := http.Header{
		":method":  {method},
		":path":    {path},
		":version": {"HTTP/1.1"},
		":host":    {"example.com"},
		":scheme":  {"https"},
	}
	for i := 0; i+1 < len(extra); i += 2 {
		h[extra[i]] = append(h[extra[i]], extra[i+1])
	}
	return h
}

// replyBlock is a SYN_REPLY header block.
func replyBlock(status string, extra ...string) http.Header {
	h := http.Header{":status": {status}, ":version": {"HTTP/1.1"}}
	for i := 0; i+1 < len(extra); i += 2 {
		h[extra[i]] = append(h[extra[i]], extra[i+1])
	}
	return h
}

func synStream(id uint32, h http.Header, fin bool) *mspdy.SynStreamFrame {
	f := &mspdy.SynStreamFrame{StreamId: mspdy.StreamId(id), Headers: h}
	if fin {
		f.CFHeader.Flags = mspdy.ControlFlagFin
	}
	return f
}

func synReply(id uint32, h http.Header, fin bool) *mspdy.SynReplyFrame {
	f := &mspdy.SynReplyFrame{StreamId: mspdy.StreamId(id), Headers: h}
	if fin {
		f.CFHeader.Flags = mspdy.ControlFlagFin
	}
	return f
}

func dataFrameOf(id uint32, b []byte, fin bool) *mspdy.DataFrame {
	f := &mspdy.DataFrame{StreamId: mspdy.StreamId(id), Data: b}
	if fin {
		f.Flags = mspdy.DataFlagFin
	}
	return f
}

// ctrlHeader builds the 8-byte header of a control frame by hand.
func ctrlHeader(version uint16, typ mspdy.ControlFrameType, flags uint8, length uint32) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b[0:2], 0x8000|version)
	binary.BigEndian.PutUint16(b[2:4], uint16(typ))
	binary.BigEndian.PutUint32(b[4:8], uint32(flags)<<24|length)
	return b
}

// rawClient starts our server session (serving h) against a raw client peer.
func rawClient(t *testing.T, cfg *Config, h http.Handler) (*Session, *rawPeer) {
	t.Helper()
	return rawClientOver(t, cfg, h, nil)
}

// rawClientOver is rawClient with our session's end of the connection
// wrapped by wrap (nil: as it is), to watch or fail its I/O.
func rawClientOver(t *testing.T, cfg *Config, h http.Handler, wrap func(net.Conn) net.Conn) (*Session, *rawPeer) {
	t.Helper()
	if cfg == nil {
		cfg = testConfig()
	}
	a, b := tcpPair(t)
	p := newRawPeer(t, a)
	if wrap != nil {
		b = wrap(b)
	}
	s, err := NewServer(b, cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		<-s.readerDone
		<-s.writerDone
		s.handlersWG.Wait()
		p.close()
	})
	return s, p
}

// rawServer starts our client session against a raw server peer.
func rawServer(t *testing.T, cfg *Config) (*Session, *rawPeer) {
	t.Helper()
	return rawServerOver(t, cfg, nil)
}

// rawServerOver is rawServer with our session's end of the connection
// wrapped by wrap (nil: as it is).
func rawServerOver(t *testing.T, cfg *Config, wrap func(net.Conn) net.Conn) (*Session, *rawPeer) {
	t.Helper()
	if cfg == nil {
		cfg = testConfig()
	}
	a, b := tcpPair(t)
	p := newRawPeer(t, b)
	if wrap != nil {
		a = wrap(a)
	}
	s, err := NewClient(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		<-s.readerDone
		<-s.writerDone
		p.close()
	})
	return s, p
}

// waitDone waits for a session to close.
func waitDone(t testing.TB, s *Session) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(rawTimeout):
		t.Fatalf("session did not close within %v", rawTimeout)
	}
}

// result carries a RoundTrip's outcome out of a goroutine.
type result struct {
	resp *http.Response
	body []byte
	err  error
}

// goRoundTrip runs RoundTrip and reads the whole body in a goroutine.
func goRoundTrip(s *Session, req *http.Request) <-chan result {
	ch := make(chan result, 1)
	go func() {
		resp, err := s.RoundTrip(req)
		if err != nil {
			ch <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		ch <- result{resp: resp, body: b, err: err}
	}()
	return ch
}

// goRoundTripResp runs RoundTrip in a goroutine and hands over the
// response with its body unread (nil after an error, which fails the test).
func goRoundTripResp(t testing.TB, s *Session, req *http.Request) <-chan *http.Response {
	ch := make(chan *http.Response, 1)
	go func() {
		resp, err := s.RoundTrip(req)
		if err != nil {
			t.Error(err)
		}
		ch <- resp
	}()
	return ch
}

// recvResp waits for goRoundTripResp's response; without one the test
// stops.
func recvResp(t testing.TB, ch <-chan *http.Response) *http.Response {
	t.Helper()
	select {
	case resp := <-ch:
		if resp == nil {
			t.FailNow()
		}
		return resp
	case <-time.After(rawTimeout):
		t.Fatalf("RoundTrip did not return within %v", rawTimeout)
		return nil
	}
}

// expectFailure waits for the error a goroutine (a handler, most often)
// reports on ch: the test fails with succeeded if it is nil, and with stuck
// if none comes within rawTimeout.
func expectFailure(t testing.TB, ch <-chan error, succeeded, stuck string) {
	t.Helper()
	select {
	case err := <-ch:
		if err == nil {
			t.Fatal(succeeded)
		}
	case <-time.After(rawTimeout):
		t.Fatal(stuck)
	}
}

func recvResult(t testing.TB, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(rawTimeout):
		t.Fatalf("RoundTrip did not finish within %v", rawTimeout)
		return result{}
	}
}

func newReq(t testing.TB, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// waitUntil polls cond until it holds. It is for internal state that has no
// event to wait on (a flag set by another goroutine); it fails the test after
// rawTimeout.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(rawTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// recLogger records log calls.
type recLogger struct {
	mu   sync.Mutex
	msgs []string
}

func (l *recLogger) add(level, msg string) {
	l.mu.Lock()
	l.msgs = append(l.msgs, level+": "+msg)
	l.mu.Unlock()
}
func (l *recLogger) Debugw(msg string, _ ...any) { l.add("debug", msg) }
func (l *recLogger) Warnw(msg string, _ ...any)  { l.add("warn", msg) }
func (l *recLogger) Errorw(msg string, _ ...any) { l.add("error", msg) }

func (l *recLogger) has(level, substr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.msgs {
		if strings.HasPrefix(m, level+": ") && strings.Contains(m, substr) {
			return true
		}
	}
	return false
}

// checkPattern verifies that b is the pattern stream's bytes at offset off.
func checkPattern(b []byte, off int64) bool {
	for i, c := range b {
		x := off + int64(i)
		if c != byte(x*7+x>>9) {
			return false
		}
	}
	return true
}
