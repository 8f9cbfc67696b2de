package spdy

import (
	"bufio"
	"compress/flate"
	"compress/zlib"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moby/spdystream/spdy"
)

const (
	// maxDataFrame is the largest DATA payload we send in one frame.
	maxDataFrame = 64 << 10
	// ioBufferSize sizes the connection's read and write buffers.
	ioBufferSize = 64 << 10
	// maxQueuedControl bounds control frames waiting to be written; a peer
	// that floods PINGs while not reading hits it and loses the session.
	maxQueuedControl = 16384
	// smallUpdateThreshold is how much a stream consumes before we return
	// credit to a peer that never told us it knows SETTINGS (amahi/spdy
	// assumes a fixed 64 KiB window whatever we advertise).
	smallUpdateThreshold = 16 << 10
	// updateFraction: credit goes back to the peer each time this fraction
	// of a window has been consumed, so the sender keeps 7/8 of the window
	// in flight while few WINDOW_UPDATE frames are sent.
	updateFraction = 8
	// goAwayFlushTimeout bounds how long Close waits to put GOAWAY on the wire.
	goAwayFlushTimeout = time.Second
)

// Session is one SPDY/3.1 connection, as a client (we open odd-numbered
// streams with RoundTrip) or a server (the peer opens them; we serve an
// http.Handler).
type Session struct {
	conn    net.Conn
	cfg     Config
	log     Logger
	client  bool
	handler http.Handler
	br      *bufio.Reader
	bw      *bufio.Writer
	framer  *spdy.Framer
	ctx     context.Context // cancelled when the session closes
	cancel  context.CancelFunc
	since   time.Time

	// mu guards the stream table, send windows and the state below it.
	mu             sync.Mutex
	streams        map[uint32]*stream
	nextID         uint32 // next stream id we open
	lastPeerID     uint32 // highest stream id the peer opened
	peerStreams    int    // open streams the peer opened
	peerClosing    int    // of those, streams whose FIN we queued (see stream.finQueued)
	localStreams   int    // open streams we opened
	upgraded       int
	peerMaxStreams uint32     // the peer's SETTINGS_MAX_CONCURRENT_STREAMS
	peerInitWindow int64      // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	peerKnowsFlow  bool       // the peer sent INITIAL_WINDOW_SIZE: it speaks 3.x flow control
	sendWin        sendWindow // session-level send window
	winWaiters     []*stream  // streams waiting for session send window
	slotFree       chan struct{}
	goAwaySent     bool
	goAwayRecv     bool
	peerLastGood   uint32
	shutdownWait   chan struct{} // closed when the last stream ends after Shutdown

	// recvMu guards the session-level receive window.
	recvMu  sync.Mutex
	recvWin recvWindow

	// Writer queue: control frames go before DATA.
	wmu     sync.Mutex
	ctrlQ   []writeReq
	dataQ   []writeReq
	wsignal chan struct{}
	wdone   bool // the writer stopped: enqueue refuses requests

	// Ping state.
	pingMu      sync.Mutex
	nextPingID  uint32
	pings       map[uint32]chan struct{}
	lastRecv    atomic.Int64 // unix nanos of the last frame read
	rtt         atomic.Int64
	streamsTot  atomic.Uint64
	bytesIn     atomic.Uint64
	bytesOut    atomic.Uint64
	closeOnce   sync.Once
	closed      chan struct{} // closed when the session is closed
	err         error         // cause of close; set before closed is closed
	writerDone  chan struct{}
	readerDone  chan struct{}
	handlersWG  sync.WaitGroup
	localAddr   net.Addr
	remoteAddr  net.Addr
	tlsState    func() *tlsState
	dataFrameHd [8]byte // writer-only scratch
	rbuf        []byte  // reader-only scratch for DATA payloads
}

// writeReq is one frame for the writer goroutine. done, when set, receives
// the result once the frame is in the write buffer (or, with flush, on the
// wire).
type writeReq struct {
	frame spdy.Frame
	data  dataFrame // a DATA frame when data.id != 0 (kept inline: no allocation per frame)
	flush bool
	done  chan error
}

// dataFrame is a DATA frame we encode ourselves, without copying the payload.
type dataFrame struct {
	id   uint32
	fin  bool
	data []byte
}

// NewClient starts a session on conn in which we are the SPDY client: we
// open streams with RoundTrip. The session owns conn from now on.
func NewClient(conn net.Conn, cfg *Config) (*Session, error) {
	return newSession(conn, cfg, true, nil)
}

// NewServer starts a session on conn in which we are the SPDY server: each
// stream the peer opens is served by h in its own goroutine. It returns at
// once; Done tells when the session ends. The session owns conn from now on.
func NewServer(conn net.Conn, cfg *Config, h http.Handler) (*Session, error) {
	if h == nil {
		return nil, errors.New("spdy: nil handler")
	}
	return newSession(conn, cfg, false, h)
}

func newSession(conn net.Conn, cfg *Config, client bool, h http.Handler) (*Session, error) {
	if cfg == nil {
		cfg = DefaultConfig()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Session{
		conn:           conn,
		cfg:            *cfg,
		log:            cfg.Logger,
		client:         client,
		handler:        h,
		br:             bufio.NewReaderSize(conn, ioBufferSize),
		bw:             bufio.NewWriterSize(conn, ioBufferSize),
		since:          time.Now(),
		streams:        make(map[uint32]*stream),
		peerMaxStreams: math.MaxUint32,
		peerInitWindow: defaultWindow,
		sendWin:        sendWindow{n: defaultWindow},
		slotFree:       make(chan struct{}),
		wsignal:        make(chan struct{}, 1),
		pings:          make(map[uint32]chan struct{}),
		closed:         make(chan struct{}),
		writerDone:     make(chan struct{}),
		readerDone:     make(chan struct{}),
		localAddr:      conn.LocalAddr(),
		remoteAddr:     conn.RemoteAddr(),
		rbuf:           make([]byte, recvBufferSize),
	}
	if s.log == nil {
		s.log = nopLogger{}
	}
	s.recvWin = newRecvWindow(int64(cfg.SessionWindow), int64(cfg.SessionWindow)/updateFraction)
	if client {
		s.nextID, s.nextPingID = 1, 1
	} else {
		s.nextID, s.nextPingID = 2, 2
	}
	s.tlsState = connTLSState(conn)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	fr, err := spdy.NewFramerWithOptions(s.bw, s.br,
		spdy.WithMaxControlFramePayloadSize(cfg.MaxHeaderBytes),
		spdy.WithMaxHeaderFieldSize(cfg.MaxHeaderBytes),
		spdy.WithMaxHeaderCount(cfg.MaxHeaderCount))
	if err != nil {
		return nil, fmt.Errorf("spdy: creating framer: %w", err)
	}
	s.framer = fr
	s.lastRecv.Store(time.Now().UnixNano())

	// Our SETTINGS and the session window go first on the wire.
	s.queueControl(&spdy.SettingsFrame{FlagIdValues: []spdy.SettingsFlagIdValue{
		{Id: spdy.SettingsMaxConcurrentStreams, Value: cfg.MaxConcurrentStreams},
		{Id: spdy.SettingsInitialWindowSize, Value: uint32(cfg.StreamWindow)},
	}})
	if d := int64(cfg.SessionWindow) - defaultWindow; d > 0 {
		s.queueControl(&spdy.WindowUpdateFrame{StreamId: 0, DeltaWindowSize: uint32(d)})
	}
	go s.writeLoop()
	go s.readLoop()
	if cfg.PingInterval > 0 {
		go s.keepalive()
	}
	return s, nil
}

// Done is closed when the session has closed.
func (s *Session) Done() <-chan struct{} { return s.closed }

// Err returns nil while the session is open, and the cause of close after.
func (s *Session) Err() error {
	select {
	case <-s.closed:
		return s.err
	default:
		return nil
	}
}

// RemoteAddr returns the peer's network address.
func (s *Session) RemoteAddr() net.Addr { return s.remoteAddr }

// LocalAddr returns our network address.
func (s *Session) LocalAddr() net.Addr { return s.localAddr }

// GoingAway reports whether the session accepts no new streams: GOAWAY was
// sent or received, or the session closed.
func (s *Session) GoingAway() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.goAwaySent || s.goAwayRecv || s.Err() != nil
}

// Stats is a snapshot of a session's counters.
type Stats struct {
	OpenStreams     int           // streams open now, both directions
	UpgradedStreams int           // of those, streams turned into byte pipes (101)
	StreamsTotal    uint64        // streams opened since the start, both directions
	BytesIn         uint64        // DATA payload bytes received
	BytesOut        uint64        // DATA payload bytes sent
	RTT             time.Duration // last PING round trip; 0 before the first
	Since           time.Time     // when the session started
}

// Stats returns the session's counters.
func (s *Session) Stats() Stats {
	s.mu.Lock()
	open, up := len(s.streams), s.upgraded
	s.mu.Unlock()
	return Stats{
		OpenStreams:     open,
		UpgradedStreams: up,
		StreamsTotal:    s.streamsTot.Load(),
		BytesIn:         s.bytesIn.Load(),
		BytesOut:        s.bytesOut.Load(),
		RTT:             time.Duration(s.rtt.Load()),
		Since:           s.since,
	}
}

// OpenStreams returns the number of open streams (cheaper than Stats).
func (s *Session) OpenStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// Close sends GOAWAY and closes the connection at once; open streams fail.
func (s *Session) Close() error {
	s.closeWith(ErrShutdown, true, 0)
	return nil
}

// Shutdown sends GOAWAY, refuses new streams, lets open streams finish, then
// closes the session. If ctx ends first, remaining streams are cut and
// ctx's error returned.
func (s *Session) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.shutdownWait == nil {
		s.shutdownWait = make(chan struct{})
		if len(s.streams) == 0 {
			close(s.shutdownWait)
		}
	}
	wait := s.shutdownWait
	sendGoAway := !s.goAwaySent
	s.goAwaySent = true
	last := s.lastPeerID
	s.mu.Unlock()
	s.wakeSlotWaiters()
	if sendGoAway {
		s.queueControl(&spdy.GoAwayFrame{LastGoodStreamId: spdy.StreamId(last), Status: spdy.GoAwayOK})
	}
	select {
	case <-wait:
		s.closeWith(ErrShutdown, false, 0)
		return nil
	case <-s.closed:
		return nil
	case <-ctx.Done():
		s.closeWith(ErrShutdown, false, 0)
		return ctx.Err()
	}
}

// closeWith closes the session with cause. With goAway, a GOAWAY with
// status is written (best effort, bounded) before the connection closes.
func (s *Session) closeWith(cause error, goAway bool, status spdy.GoAwayStatus) {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		sendGoAway := goAway && !s.goAwaySent
		s.goAwaySent = true
		last := s.lastPeerID
		s.mu.Unlock()
		// A graceful close (the last stream ended after GOAWAY) must put
		// that stream's final frames, still in the write buffer, on the
		// wire before the connection closes.
		graceful := cause == ErrShutdown || cause == ErrPeerGoneAway
		if sendGoAway || graceful {
			done := make(chan error, 1)
			var f spdy.Frame // nil: flush only
			if sendGoAway {
				f = &spdy.GoAwayFrame{LastGoodStreamId: spdy.StreamId(last), Status: status}
			}
			s.enqueue(writeReq{frame: f, flush: true, done: done}, true)
			t := time.NewTimer(goAwayFlushTimeout)
			select {
			case <-done:
			case <-s.writerDone:
			case <-t.C:
			}
			t.Stop()
		}
		s.err = cause
		close(s.closed)
		s.cancel()
		s.conn.Close()
		if cause != ErrShutdown && cause != ErrPeerGoneAway {
			s.log.Debugw("spdy session closed", "remote", s.remoteAddr.String(), "cause", cause)
		}
		// Fail every stream still open.
		s.mu.Lock()
		streams := make([]*stream, 0, len(s.streams))
		for _, st := range s.streams {
			streams = append(streams, st)
		}
		s.mu.Unlock()
		serr := sessionClosedError(cause)
		for _, st := range streams {
			st.abort(serr)
		}
		s.wakeSlotWaiters()
		s.pingMu.Lock()
		for id, ch := range s.pings {
			close(ch)
			delete(s.pings, id)
		}
		s.pingMu.Unlock()
	})
}

// protocolError ends the session because the peer broke the protocol.
func (s *Session) protocolError(format string, args ...any) {
	err := fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
	s.log.Warnw("spdy protocol error from peer; closing session", "remote", s.remoteAddr.String(), "error", err)
	s.closeWith(err, true, spdy.GoAwayProtocolError)
}

// --- writer -----------------------------------------------------------------

// queueControl queues a control frame without waiting. It is what the
// reader goroutine uses, so it never blocks on the network.
func (s *Session) queueControl(f spdy.Frame) {
	s.enqueue(writeReq{frame: f}, true)
}

// enqueue adds a request to the writer's queue. A request queued after the
// writer stopped fails at once (and is not kept).
func (s *Session) enqueue(r writeReq, control bool) {
	s.wmu.Lock()
	if s.wdone {
		s.wmu.Unlock()
		if r.done != nil {
			r.done <- ErrSessionClosed
		}
		return
	}
	if control {
		if len(s.ctrlQ) >= maxQueuedControl {
			s.wmu.Unlock()
			go s.closeWith(fmt.Errorf("%w: peer is not reading (control queue full)", ErrProtocol), false, 0)
			if r.done != nil {
				r.done <- ErrSessionClosed
			}
			return
		}
		s.ctrlQ = append(s.ctrlQ, r)
	} else {
		s.dataQ = append(s.dataQ, r)
	}
	s.wmu.Unlock()
	select {
	case s.wsignal <- struct{}{}:
	default:
	}
}

// writeFrame queues a frame and waits until it is written.
func (s *Session) writeFrame(r writeReq, control bool) error {
	if r.done == nil {
		r.done = make(chan error, 1)
	}
	select {
	case <-s.writerDone:
		return sessionClosedError(s.errOrShutdown())
	default:
	}
	s.enqueue(r, control)
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

func (s *Session) errOrShutdown() error {
	<-s.closed
	return s.err
}

// next pops the next request, control frames first.
func (s *Session) next() (writeReq, bool) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if len(s.ctrlQ) > 0 {
		r := s.ctrlQ[0]
		s.ctrlQ[0] = writeReq{}
		s.ctrlQ = s.ctrlQ[1:]
		if len(s.ctrlQ) == 0 {
			s.ctrlQ = s.ctrlQ[:0:0]
		}
		return r, true
	}
	if len(s.dataQ) > 0 {
		r := s.dataQ[0]
		s.dataQ[0] = writeReq{}
		s.dataQ = s.dataQ[1:]
		return r, true
	}
	return writeReq{}, false
}

func (s *Session) writeLoop() {
	var err error
	var deadlineSet time.Time
	wt := s.cfg.WriteTimeout
	touchDeadline := func() {
		if wt <= 0 {
			return
		}
		now := time.Now()
		if now.Sub(deadlineSet) > wt/4 {
			deadlineSet = now
			s.conn.SetWriteDeadline(now.Add(wt))
		}
	}
	for err == nil {
		r, ok := s.next()
		if !ok && s.bw.Buffered() > 0 {
			// Give goroutines about to queue a frame one chance to do so,
			// so that frames share a write (and a TLS record).
			runtime.Gosched()
			r, ok = s.next()
		}
		if !ok {
			if s.bw.Buffered() > 0 {
				touchDeadline()
				if err = s.bw.Flush(); err != nil {
					break
				}
			}
			select {
			case <-s.wsignal:
				continue
			case <-s.closed:
				// Write what is queued (a final GOAWAY) and stop.
				if r, ok := s.next(); ok {
					touchDeadline()
					err = s.writeOne(r)
				}
				if err == nil {
					err = s.bw.Flush()
				}
				if err == nil {
					err = ErrSessionClosed
				}
				continue
			}
		}
		touchDeadline()
		err = s.writeOne(r)
	}
	// Close writerDone before closeWith, which would otherwise wait for us
	// to write its GOAWAY.
	close(s.writerDone)
	if !errors.Is(err, ErrSessionClosed) {
		s.closeWith(fmt.Errorf("spdy: writing to connection: %w", err), false, 0)
	}
	// Fail whatever is left, and refuse what comes later.
	s.wmu.Lock()
	s.wdone = true
	left := append(s.ctrlQ, s.dataQ...)
	s.ctrlQ, s.dataQ = nil, nil
	s.wmu.Unlock()
	for _, r := range left {
		if r.done != nil {
			r.done <- sessionClosedError(s.errOrShutdown())
		}
	}
}

func (s *Session) writeOne(r writeReq) error {
	var err error
	if r.data.id != 0 {
		err = s.writeData(&r.data)
	} else if r.frame != nil {
		err = s.framer.WriteFrame(r.frame)
	}
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

func (s *Session) writeData(d *dataFrame) error {
	hd := s.dataFrameHd[:]
	binary.BigEndian.PutUint32(hd[0:4], d.id&0x7fffffff)
	flagsLen := uint32(len(d.data))
	if d.fin {
		flagsLen |= uint32(spdy.DataFlagFin) << 24
	}
	binary.BigEndian.PutUint32(hd[4:8], flagsLen)
	if _, err := s.bw.Write(hd); err != nil {
		return err
	}
	_, err := s.bw.Write(d.data)
	s.bytesOut.Add(uint64(len(d.data)))
	return err
}

// --- reader -----------------------------------------------------------------

func (s *Session) readLoop() {
	defer close(s.readerDone)
	for {
		err := s.readFrame()
		if err == nil {
			continue
		}
		select {
		case <-s.closed:
			return
		default:
		}
		switch {
		case errors.Is(err, io.EOF):
			s.closeWith(fmt.Errorf("spdy: connection closed by peer: %w", io.EOF), false, 0)
		case errors.Is(err, ErrProtocol):
			s.protocolError("%v", errors.Unwrap(err))
		default:
			s.closeWith(fmt.Errorf("spdy: reading from connection: %w", err), false, 0)
		}
		return
	}
}

// readFrame reads and handles one frame. We look at the 8-byte header
// ourselves: DATA frames are read here without the codec's allocation, and
// control frames are checked for version, type and length before the codec
// (which trusts them) parses them.
func (s *Session) readFrame() error {
	hd, err := s.br.Peek(8)
	if err != nil {
		if len(hd) > 0 && errors.Is(err, io.EOF) {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	s.lastRecv.Store(time.Now().UnixNano())
	w0 := binary.BigEndian.Uint32(hd[0:4])
	w1 := binary.BigEndian.Uint32(hd[4:8])
	flags, length := uint8(w1>>24), w1&0xffffff
	if w0&0x80000000 == 0 {
		s.br.Discard(8)
		return s.readData(w0&0x7fffffff, flags, length)
	}
	version, typ := (w0>>16)&0x7fff, spdy.ControlFrameType(w0&0xffff)
	if version != 3 {
		return fmt.Errorf("%w: unsupported SPDY version %d", ErrProtocol, version)
	}
	if err := checkControlLength(typ, length, s.cfg.MaxHeaderBytes); err != nil {
		if errors.Is(err, errUnknownFrame) {
			// Unknown control frames are ignored (SPDY/3 section 2.2.1).
			s.br.Discard(8)
			_, err := s.br.Discard(int(length))
			return err
		}
		return err
	}
	f, err := s.framer.ReadFrame()
	if err != nil {
		var fe *spdy.Error
		if errors.As(err, &fe) {
			return s.codecError(fe)
		}
		if isCompressionError(err) {
			// The header block does not decompress: the shared compression
			// context is lost, so this is a session error.
			return fmt.Errorf("%w: header block: %v", ErrProtocol, err)
		}
		return err
	}
	return s.handleControl(f)
}

var errUnknownFrame = errors.New("unknown control frame")

// isCompressionError reports whether err comes from decompressing a header
// block (as opposed to reading the connection).
func isCompressionError(err error) bool {
	var ce flate.CorruptInputError
	return errors.Is(err, zlib.ErrHeader) || errors.Is(err, zlib.ErrDictionary) ||
		errors.Is(err, zlib.ErrChecksum) || errors.As(err, &ce)
}

// checkControlLength rejects control frames whose length cannot be right for
// their type; the codec would otherwise read past the frame.
func checkControlLength(typ spdy.ControlFrameType, length, maxHeader uint32) error {
	bad := false
	switch typ {
	case spdy.TypeSynStream:
		bad = length < 10 || length > maxHeader
	case spdy.TypeSynReply, spdy.TypeHeaders:
		bad = length < 4 || length > maxHeader
	case spdy.TypeRstStream, spdy.TypeGoAway, spdy.TypeWindowUpdate:
		bad = length != 8
	case spdy.TypePing:
		bad = length != 4
	case spdy.TypeSettings:
		bad = length < 4 || (length-4)%8 != 0 || length > 8*1024
	default:
		return errUnknownFrame
	}
	if bad {
		return fmt.Errorf("%w: control frame type %d with bad length %d", ErrProtocol, typ, length)
	}
	return nil
}

// codecError turns a codec error into a stream error where the header block
// was consumed whole (so the compression context is intact) and into a
// session error otherwise.
func (s *Session) codecError(fe *spdy.Error) error {
	switch fe.Err {
	case spdy.UnlowercasedHeaderName, spdy.DuplicateHeaders, spdy.InvalidHeaderPresent:
		if fe.StreamId != 0 {
			s.log.Debugw("spdy: bad header block", "stream", uint32(fe.StreamId), "error", string(fe.Err))
			s.resetPeerStream(uint32(fe.StreamId), StatusProtocolError)
			return nil
		}
	}
	return fmt.Errorf("%w: %s (stream %d)", ErrProtocol, fe.Err, fe.StreamId)
}

// resetPeerStream answers a malformed SYN_STREAM: the id counts as used.
func (s *Session) resetPeerStream(id uint32, status uint32) {
	s.mu.Lock()
	if s.isPeerID(id) && id > s.lastPeerID {
		s.lastPeerID = id
	}
	st := s.streams[id]
	s.mu.Unlock()
	if st != nil {
		st.resetLocal(status)
		return
	}
	s.queueControl(&spdy.RstStreamFrame{StreamId: spdy.StreamId(id), Status: spdy.RstStreamStatus(status)})
}

func (s *Session) isPeerID(id uint32) bool {
	odd := id%2 == 1
	return odd != s.client
}

func (s *Session) readData(id uint32, flags uint8, length uint32) error {
	if length > uint32(s.cfg.SessionWindow) {
		return fmt.Errorf("%w: DATA frame of %d bytes exceeds the session window", ErrProtocol, length)
	}
	if id == 0 {
		return fmt.Errorf("%w: DATA frame on stream 0", ErrProtocol)
	}
	// Session window first: even data for a dead stream used it.
	s.recvMu.Lock()
	err := s.recvWin.received(int64(length))
	s.recvMu.Unlock()
	if err != nil {
		return err
	}
	s.bytesIn.Add(uint64(length))
	s.mu.Lock()
	st := s.streams[id]
	unknown := st == nil && (s.isPeerID(id) && id > s.lastPeerID || !s.isPeerID(id) && id >= s.nextID)
	s.mu.Unlock()
	if st == nil {
		// Data for a stream that ended (in flight when we reset it) is
		// dropped; data for a stream never opened is an error.
		if _, err := s.br.Discard(int(length)); err != nil {
			return err
		}
		s.sessionConsumed(int64(length))
		if unknown {
			s.queueControl(&spdy.RstStreamFrame{StreamId: spdy.StreamId(id), Status: spdy.InvalidStream})
		}
		return nil
	}
	// Small payloads are read into the reader's scratch buffer and packed
	// into the stream's buffers; big ones are read straight into a pooled
	// buffer the stream keeps (no copy); huge ones (amahi/spdy sends frames
	// up to 16 MiB) get their own allocation.
	var buf []byte
	owned := false
	if length > 0 {
		switch {
		case length < recvBufferSize/4:
			buf = s.rbuf[:length]
		case length <= recvBufferSize:
			buf, owned = recvBufPool.Get().(*[recvBufferSize]byte)[:length], true
		default:
			buf, owned = make([]byte, length), true
		}
		if _, err := io.ReadFull(s.br, buf); err != nil {
			return err
		}
	}
	st.receiveData(buf, owned, flags&uint8(spdy.DataFlagFin) != 0)
	return nil
}

// sessionConsumed returns session-level credit for n bytes the application
// consumed or we discarded.
func (s *Session) sessionConsumed(n int64) {
	if n <= 0 {
		return
	}
	s.recvMu.Lock()
	d := s.recvWin.consumed(n)
	s.recvMu.Unlock()
	if d > 0 {
		s.queueControl(&spdy.WindowUpdateFrame{StreamId: 0, DeltaWindowSize: uint32(d)})
	}
}

func (s *Session) handleControl(f spdy.Frame) error {
	switch f := f.(type) {
	case *spdy.SynStreamFrame:
		return s.handleSynStream(f)
	case *spdy.SynReplyFrame:
		s.mu.Lock()
		st := s.streams[uint32(f.StreamId)]
		s.mu.Unlock()
		if st == nil || s.isPeerID(uint32(f.StreamId)) {
			s.queueControl(&spdy.RstStreamFrame{StreamId: f.StreamId, Status: spdy.InvalidStream})
			return nil
		}
		st.receiveReply(f.Headers, f.CFHeader.Flags&spdy.ControlFlagFin != 0)
	case *spdy.HeadersFrame:
		// Extra headers (trailers): we do not surface them, but FIN counts.
		s.mu.Lock()
		st := s.streams[uint32(f.StreamId)]
		s.mu.Unlock()
		if st != nil && f.CFHeader.Flags&spdy.ControlFlagFin != 0 {
			st.receiveData(nil, false, true)
		}
	case *spdy.RstStreamFrame:
		s.mu.Lock()
		st := s.streams[uint32(f.StreamId)]
		s.mu.Unlock()
		if st != nil {
			st.abort(&StreamError{StreamID: uint32(f.StreamId), Status: uint32(f.Status), Remote: true})
		}
	case *spdy.SettingsFrame:
		return s.handleSettings(f)
	case *spdy.PingFrame:
		s.handlePing(f.Id)
	case *spdy.GoAwayFrame:
		s.handleGoAway(uint32(f.LastGoodStreamId), uint32(f.Status))
	case *spdy.WindowUpdateFrame:
		return s.handleWindowUpdate(uint32(f.StreamId), int64(f.DeltaWindowSize))
	}
	return nil
}

func (s *Session) handleSettings(f *spdy.SettingsFrame) error {
	for _, v := range f.FlagIdValues {
		switch v.Id {
		case spdy.SettingsMaxConcurrentStreams:
			s.mu.Lock()
			grew := v.Value > s.peerMaxStreams
			s.peerMaxStreams = v.Value
			s.mu.Unlock()
			if grew {
				s.wakeSlotWaiters()
			}
		case spdy.SettingsInitialWindowSize:
			if v.Value > maxWindow {
				return fmt.Errorf("%w: INITIAL_WINDOW_SIZE %d too large", ErrProtocol, v.Value)
			}
			s.mu.Lock()
			s.peerKnowsFlow = true
			delta := int64(v.Value) - s.peerInitWindow
			s.peerInitWindow = int64(v.Value)
			var wake []*stream
			for _, st := range s.streams {
				if err := st.sendWin.add(delta); err != nil {
					s.mu.Unlock()
					return err
				}
				wake = append(wake, st)
			}
			s.mu.Unlock()
			if delta > 0 {
				for _, st := range wake {
					st.wakeSender()
				}
			}
		}
	}
	return nil
}

func (s *Session) handleWindowUpdate(id uint32, delta int64) error {
	delta &= 0x7fffffff
	if delta == 0 {
		return fmt.Errorf("%w: WINDOW_UPDATE with zero delta", ErrProtocol)
	}
	s.mu.Lock()
	if id == 0 {
		if err := s.sendWin.add(delta); err != nil {
			s.mu.Unlock()
			return err
		}
		waiters := s.winWaiters
		s.winWaiters = nil
		for _, st := range waiters {
			st.waitsForSession = false
		}
		s.mu.Unlock()
		for _, st := range waiters {
			st.wakeSender()
		}
		return nil
	}
	st := s.streams[id]
	if st == nil {
		s.mu.Unlock()
		return nil // the stream ended while the update was in flight
	}
	err := st.sendWin.add(delta)
	s.mu.Unlock()
	if err != nil {
		st.resetLocal(StatusFlowControlError)
		return nil
	}
	st.wakeSender()
	return nil
}

func (s *Session) handleGoAway(lastGood, status uint32) {
	s.mu.Lock()
	if !s.goAwayRecv || lastGood < s.peerLastGood {
		s.peerLastGood = lastGood
	}
	s.goAwayRecv = true
	var refused []*stream
	for id, st := range s.streams {
		if !s.isPeerID(id) && id > lastGood {
			refused = append(refused, st)
		}
	}
	empty := len(s.streams) == len(refused)
	s.mu.Unlock()
	s.log.Debugw("spdy: peer sent GOAWAY", "remote", s.remoteAddr.String(), "last_good_stream", lastGood, "status", status)
	for _, st := range refused {
		st.abort(ErrGoAway)
	}
	s.wakeSlotWaiters()
	if empty {
		s.closeWith(ErrPeerGoneAway, false, 0)
	}
}

// --- stream table -----------------------------------------------------------

func (s *Session) handleSynStream(f *spdy.SynStreamFrame) error {
	id := uint32(f.StreamId)
	fin := f.CFHeader.Flags&spdy.ControlFlagFin != 0
	s.mu.Lock()
	if !s.isPeerID(id) {
		if s.client && f.CFHeader.Flags&spdy.ControlFlagUnidirectional != 0 {
			// Server push: we never accept it.
			s.mu.Unlock()
			s.queueControl(&spdy.RstStreamFrame{StreamId: f.StreamId, Status: spdy.RefusedStream})
			return nil
		}
		s.mu.Unlock()
		return fmt.Errorf("%w: peer opened stream %d with our parity", ErrProtocol, id)
	}
	if id <= s.lastPeerID {
		s.mu.Unlock()
		return fmt.Errorf("%w: stream id %d not above %d", ErrProtocol, id, s.lastPeerID)
	}
	s.lastPeerID = id
	if f.CFHeader.Flags&spdy.ControlFlagUnidirectional != 0 || s.client {
		s.mu.Unlock()
		s.queueControl(&spdy.RstStreamFrame{StreamId: f.StreamId, Status: spdy.RefusedStream})
		return nil
	}
	// Streams whose final frame is queued do not count: the peer may have
	// seen that FIN and reused the slot before the handler goroutine
	// removed the stream from the table.
	if s.goAwaySent || uint32(s.peerStreams-s.peerClosing) >= s.cfg.MaxConcurrentStreams {
		s.mu.Unlock()
		s.queueControl(&spdy.RstStreamFrame{StreamId: f.StreamId, Status: spdy.RefusedStream})
		return nil
	}
	st := s.newStreamLocked(id)
	s.peerStreams++
	if fin {
		st.remoteFin = true
	}
	s.mu.Unlock()
	s.streamsTot.Add(1)
	s.handlersWG.Add(1)
	go s.serve(st, f.Headers, fin)
	return nil
}

// newStreamLocked creates and registers a stream; s.mu is held.
func (s *Session) newStreamLocked(id uint32) *stream {
	threshold := int64(smallUpdateThreshold)
	if s.peerKnowsFlow {
		threshold = int64(s.cfg.StreamWindow) / updateFraction
	}
	st := &stream{
		s:         s,
		id:        id,
		sendWin:   sendWindow{n: s.peerInitWindow},
		recvWin:   newRecvWindow(int64(s.cfg.StreamWindow), threshold),
		readWake:  make(chan struct{}, 1),
		sendWake:  make(chan struct{}, 1),
		written:   make(chan error, 1),
		reply:     make(chan struct{}),
		done:      make(chan struct{}),
		contentLn: -1,
	}
	s.streams[id] = st
	return st
}

// markFinQueuedLocked records that st's FIN is about to be queued; s.mu is
// held. A peer stream stops counting against MaxConcurrentStreams here.
func (s *Session) markFinQueuedLocked(st *stream) {
	if st.finQueued || s.streams[st.id] != st {
		return
	}
	st.finQueued = true
	if s.isPeerID(st.id) {
		s.peerClosing++
	}
}

// removeStream drops a finished stream from the table.
func (s *Session) removeStream(st *stream) {
	s.mu.Lock()
	if s.streams[st.id] != st {
		s.mu.Unlock()
		return
	}
	delete(s.streams, st.id)
	if s.isPeerID(st.id) {
		s.peerStreams--
		if st.finQueued {
			s.peerClosing--
		}
	} else {
		s.localStreams--
	}
	if st.upgraded {
		s.upgraded--
	}
	var shutdownDone chan struct{}
	if s.shutdownWait != nil && len(s.streams) == 0 {
		shutdownDone = s.shutdownWait
	}
	peerGone := s.goAwayRecv && len(s.streams) == 0
	s.mu.Unlock()
	s.wakeSlotWaiters()
	if shutdownDone != nil {
		select {
		case <-shutdownDone:
		default:
			close(shutdownDone)
		}
	}
	if peerGone {
		select {
		case <-s.closed:
			// closeWith is already running (it aborts the streams that
			// land here): calling it again would deadlock in its Once.
		default:
			s.closeWith(ErrPeerGoneAway, false, 0)
		}
	}
}

// wakeSlotWaiters wakes every RoundTrip waiting for a stream slot.
func (s *Session) wakeSlotWaiters() {
	s.mu.Lock()
	ch := s.slotFree
	s.slotFree = make(chan struct{})
	s.mu.Unlock()
	close(ch)
}

// --- keepalive --------------------------------------------------------------

func (s *Session) handlePing(id uint32) {
	ours := id%2 == 1 == s.client
	if !ours {
		s.queueControl(&spdy.PingFrame{Id: id})
		return
	}
	s.pingMu.Lock()
	ch, ok := s.pings[id]
	delete(s.pings, id)
	s.pingMu.Unlock()
	if ok {
		close(ch)
	}
}

// Ping sends a PING and returns the round-trip time.
func (s *Session) Ping(ctx context.Context) (time.Duration, error) {
	ch := make(chan struct{})
	s.pingMu.Lock()
	if s.Err() != nil {
		s.pingMu.Unlock()
		return 0, sessionClosedError(s.err)
	}
	id := s.nextPingID
	s.nextPingID += 2
	if s.nextPingID > 1<<31 {
		s.nextPingID -= 1 << 31
	}
	s.pings[id] = ch
	s.pingMu.Unlock()
	start := time.Now()
	s.queueControl(&spdy.PingFrame{Id: id})
	select {
	case <-ch:
		if err := s.Err(); err != nil {
			return 0, sessionClosedError(err)
		}
		rtt := time.Since(start)
		s.rtt.Store(int64(rtt))
		return rtt, nil
	case <-ctx.Done():
		s.pingMu.Lock()
		delete(s.pings, id)
		s.pingMu.Unlock()
		return 0, ctx.Err()
	}
}

// keepalive pings the peer every PingInterval and closes the session when a
// ping goes unanswered for PingTimeout.
func (s *Session) keepalive() {
	t := time.NewTicker(s.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-s.closed:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.PingTimeout)
		_, err := s.Ping(ctx)
		cancel()
		if err != nil && errors.Is(err, context.DeadlineExceeded) {
			s.log.Warnw("spdy: peer did not answer PING; closing session", "remote", s.remoteAddr.String(), "timeout", s.cfg.PingTimeout.String())
			s.closeWith(ErrPingTimeout, true, spdy.GoAwayOK)
			return
		}
	}
}
