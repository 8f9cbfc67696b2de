package spdy

import (
	"bufio"
	"context"
	"errors"
	"math"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// MaxDataFrame is the largest DATA payload a session sends in one frame:
// 64 KiB less the frame's 8-byte header, so that a whole frame is four TLS
// records of 16 KiB, each full. (A frame of 64 KiB took a fifth record, of
// 8 bytes, and a write of its own.) A source that reads what it sends in
// pieces of this size (the agent's response copy) makes frames of it.
const MaxDataFrame = 64<<10 - frameHeaderLen

// FrameRoom is how many bytes a buffer keeps free in front of its data for
// WriteWithRoom: a DATA frame's header.
const FrameRoom = frameHeaderLen

const (
	// maxDataFrame is the largest DATA payload we send in one frame (see
	// MaxDataFrame).
	maxDataFrame = MaxDataFrame
	// ioBufferSize sizes the connection's read and write buffers. A frame
	// of maxDataFrame fills the write buffer exactly, and four TLS records.
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
//
// Goroutines: one reader (reader.go), one writer (writer.go), keepalive and
// the idle watchdog (keepalive.go), one per served stream (server.go), and
// the callers of RoundTrip and of stream reads and writes, which on a quiet
// session write their frames themselves (writer.go's direct writes).
//
// Locks, always taken in this order, never held across I/O:
//
//	Session.mu   the stream table, send windows, stream.tab, GOAWAY state
//	stream.mu    one stream's buffers, receive window, state
//	Session.wmu  the writer's queues, and which streams it drops (stream.wErr)
//
// Session.recvMu (the session's receive window) and Session.pingMu (PINGs in
// flight) are taken alone. stream.writeMu orders one stream's frames and is
// taken before any of the above; it stays held while that stream's write
// waits for flow-control credit or for the writer goroutine.
//
// Session.wlock is held by whoever writes to the connection, across that
// I/O (writer.go). It is taken with Lock only while no other lock is held,
// and under mu or wmu only with TryLock; its holder takes wmu and mu.
type Session struct {
	conn     net.Conn
	cfg      Config
	log      Logger
	client   bool
	handler  http.Handler
	br       *bufio.Reader
	bw       *bufio.Writer
	deflater *deflater // compresses the header blocks we send (wlock held)
	inflater *inflater // reads header blocks (reader goroutine only)
	limits   headerLimits
	ctx      context.Context // cancelled when the session closes
	cancel   context.CancelFunc
	since    time.Time

	// mu guards the stream table, send windows and the state below it.
	mu             sync.Mutex
	streams        map[uint32]*stream
	nextID         uint32 // next stream id we open
	lastPeerID     uint32 // highest stream id the peer opened
	peerStreams    int    // open streams the peer opened
	peerClosing    int    // of those, streams whose FIN we queued (see stream.finQueued)
	localStreams   int    // open streams we opened
	draining       int    // streams finished on the wire whose data is still unread (stream.finish)
	upgraded       int
	peerMaxStreams uint32     // the peer's SETTINGS_MAX_CONCURRENT_STREAMS
	peerInitWindow int64      // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	sendWin        sendWindow // session-level send window
	winWaiters     []*stream  // streams waiting for session send window
	// sessionWaitSince: watchdog tick since which streams wait for session
	// credit that has not come (0: none waits, or credit came since).
	sessionWaitSince int64
	slotFree         chan struct{}
	goAwaySent       bool
	closing          error // the cause closeWith was given: set as it begins, before GOAWAY goes out
	goAwayRecv       bool
	goAwayRecvCh     chan struct{} // closed when goAwayRecv is set
	peerLastGood     uint32
	shutdownWait     chan struct{} // closed when the last stream ends after Shutdown

	// recvMu guards the session-level receive window.
	recvMu  sync.Mutex
	recvWin recvWindow

	// budget is what streams may still be granted beyond their guaranteed
	// 64 KiB receive window (flow.go).
	budget atomic.Int64
	// peerKnowsFlow: the peer sent INITIAL_WINDOW_SIZE, so it speaks
	// SPDY/3.x flow control and our windows may grow.
	peerKnowsFlow atomic.Bool
	// clock counts the idle watchdog's ticks, from 1 (stream.go's marks).
	clock atomic.Int64
	// openByPri counts open streams by priority (writer.go).
	openByPri [Priorities]atomic.Int32
	// trailersDropped: trailers were dropped for a peer without HEADERS
	// support, and logged (once per session).
	trailersDropped atomic.Bool

	// Writer queue: control frames go before DATA.
	wmu     sync.Mutex
	ctrlQ   fifo
	dataQ   dataQueue
	wsignal chan struct{}
	wdone   bool  // the writer stopped: enqueue refuses requests
	wcause  error // with wdone: why the session ends
	wfail   error // a direct write failed: the writer stops with this (writer.go)
	// noDirect (tests): every frame goes through the writer goroutine.
	noDirect bool
	// pushback: the last write waited on the link (writeBlocked); no direct
	// writes until one does not (writer.go).
	pushback atomic.Bool

	// wlock: who holds it writes to the connection (writer.go's direct
	// writes). It guards bw, deflater, the scratch buffers below and:
	wlock       sync.Mutex
	deadlineSet time.Time // when the write deadline was last moved

	// Ping state.
	pingMu      sync.Mutex
	nextPingID  uint32
	pings       map[uint32]chan struct{}
	lastRecv    atomic.Int64 // unix nanos of the last frame read
	rtt         atomic.Int64
	streamsTot  atomic.Uint64
	bytesIn     atomic.Uint64
	bytesOut    atomic.Uint64
	lowat       *lowatTuner // nil: the kernel's unsent limit is not ours to tune
	closeOnce   sync.Once
	closed      chan struct{} // closed when the session is closed
	err         error         // cause of close; set before closed is closed
	writerDone  chan struct{}
	readerDone  chan struct{}
	handlersWG  sync.WaitGroup
	localAddr   net.Addr
	remoteAddr  net.Addr
	tlsState    func() *tlsState
	frameHd     [18]byte           // scratch, wlock held: a frame's header and fixed part
	ctrlScratch [maxCtrlFrame]byte // scratch, wlock held: an encoded control frame (encode)
	rbuf        []byte             // reader-only scratch for DATA payloads
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

func newSession(conn net.Conn, c *Config, client bool, h http.Handler) (*Session, error) {
	if c == nil {
		c = &Config{}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	cfg := c.withDefaults()
	s := &Session{
		conn:           conn,
		cfg:            cfg,
		log:            cfg.Logger,
		client:         client,
		handler:        h,
		br:             bufio.NewReaderSize(conn, ioBufferSize),
		bw:             bufio.NewWriterSize(conn, ioBufferSize),
		inflater:       newInflater(),
		limits:         cfg.headerLimits(),
		since:          time.Now(),
		streams:        make(map[uint32]*stream),
		peerMaxStreams: math.MaxUint32,
		peerInitWindow: defaultWindow,
		sendWin:        sendWindow{n: defaultWindow},
		slotFree:       make(chan struct{}),
		goAwayRecvCh:   make(chan struct{}),
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
	s.budget.Store(int64(cfg.SessionWindow))
	s.clock.Store(1)
	if client {
		s.nextID, s.nextPingID = 1, 1
	} else {
		s.nextID, s.nextPingID = 2, 2
	}
	s.tlsState = connTLSState(conn)
	if cfg.NotSentLowat > 0 && setNotSentLowat(conn, cfg.NotSentLowat) {
		s.lowat = &lowatTuner{floor: cfg.NotSentLowat, cur: cfg.NotSentLowat}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.deflater = newDeflater()
	s.lastRecv.Store(time.Now().UnixNano())

	// Our SETTINGS and the session window go first on the wire. Streams
	// start at SPDY's default window and grow from the budget (flow.go);
	// saying so in SETTINGS tells the peer we speak 3.x flow control.
	s.enqueue(writeReq{ctrl: settingsFrame(cfg.MaxConcurrentStreams)}, true)
	if d := int64(cfg.SessionWindow) - defaultWindow; d > 0 {
		s.queueWindowUpdate(0, uint32(d))
	}
	go s.writeLoop()
	go s.readLoop()
	if cfg.PingInterval > 0 {
		go s.keepalive()
	}
	if cfg.StreamIdleTimeout > 0 {
		go s.watchdog()
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

// GoAwayReceived is closed when the peer sends GOAWAY: it will accept no
// new streams, and the session closes once its open streams are done (Done).
func (s *Session) GoAwayReceived() <-chan struct{} { return s.goAwayRecvCh }

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
		if len(s.streams) == s.draining {
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
		s.queueGoAway(last, goAwayOK)
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
func (s *Session) closeWith(cause error, goAway bool, status uint32) {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closing = cause
		sendGoAway := goAway && !s.goAwaySent
		s.goAwaySent = true
		last := s.lastPeerID
		s.mu.Unlock()
		// A graceful close (the last stream ended after GOAWAY) must put
		// that stream's final frames, still in the write buffer, on the
		// wire before the connection closes.
		graceful := cause == ErrShutdown || cause == ErrPeerGoneAway
		if sendGoAway || graceful {
			r := writeReq{flush: true, done: make(chan error, 1)} // no frame: flush only
			if sendGoAway {
				r.ctrl.n = uint8(len(appendGoAway(r.ctrl.b[:0], last, status)))
			}
			s.enqueue(r, true)
			done := r.done
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

// protocolError ends the session because the peer broke the protocol; err
// wraps ErrProtocol and says what was wrong.
func (s *Session) protocolError(err error) {
	s.log.Warnw("spdy protocol error from peer; closing session", "remote", s.remoteAddr.String(), "error", err)
	s.closeWith(err, true, goAwayProtocolError)
}

// --- stream table -----------------------------------------------------------

// resetPeerStream answers a refused SYN_STREAM or header block: the id
// counts as used.
func (s *Session) resetPeerStream(id uint32, status RSTStatus, cause error) {
	s.mu.Lock()
	if s.isPeerID(id) && id > s.lastPeerID {
		s.lastPeerID = id
	}
	st := s.streams[id]
	s.mu.Unlock()
	if st != nil {
		st.resetLocal(status, cause)
		return
	}
	s.queueRst(id, status)
}

func (s *Session) isPeerID(id uint32) bool {
	odd := id%2 == 1
	return odd != s.client
}

func (s *Session) handleGoAway(lastGood, status uint32) {
	s.mu.Lock()
	if !s.goAwayRecv || lastGood < s.peerLastGood {
		s.peerLastGood = lastGood
	}
	if !s.goAwayRecv {
		close(s.goAwayRecvCh)
	}
	s.goAwayRecv = true
	var refused []*stream
	for id, st := range s.streams {
		if !s.isPeerID(id) && id > lastGood && !st.tab.draining {
			refused = append(refused, st)
		}
	}
	empty := len(s.streams)-s.draining == len(refused)
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

// newStreamLocked creates and registers a stream; s.mu is held. Its
// receive window starts at SPDY's default (flow.go).
func (s *Session) newStreamLocked(id uint32, priority uint8) *stream {
	win := newRecvWindow(defaultWindow, defaultWindow/updateFraction)
	if !s.peerKnowsFlow.Load() {
		win.threshold, win.smallSteps = smallUpdateThreshold, true
	}
	st := &stream{
		s:          s,
		id:         id,
		priority:   min(priority, Priorities-1),
		sendWin:    sendWindow{n: s.peerInitWindow},
		recvWin:    win,
		tuneStart:  time.Now(),
		creditTick: s.clock.Load(),
		readWake:   make(chan struct{}, 1),
		sendWake:   make(chan struct{}, 1),
		written:    make(chan error, 1),
		reply:      make(chan struct{}),
		done:       make(chan struct{}),
		contentLn:  -1,
	}
	s.streams[id] = st
	s.openByPri[st.priority].Add(1)
	return st
}

// markFinQueuedLocked records that st's FIN is about to be queued; s.mu is
// held. A peer stream stops counting against MaxConcurrentStreams here.
func (s *Session) markFinQueuedLocked(st *stream) {
	if st.tab.finQueued || s.streams[st.id] != st {
		return
	}
	st.tab.finQueued = true
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
	s.openByPri[st.priority].Add(-1)
	st.mu.Lock()
	extra := st.extra
	st.extra = 0
	st.state |= stReleased
	st.mu.Unlock()
	s.giveBudget(extra)
	if s.isPeerID(st.id) {
		s.peerStreams--
		if st.tab.finQueued {
			s.peerClosing--
		}
	} else {
		s.localStreams--
	}
	if st.tab.upgraded {
		s.upgraded--
	}
	if st.tab.draining {
		s.draining--
	}
	s.stopWaitingLocked(st)
	s.mu.Unlock()
	s.wakeSlotWaiters()
	s.afterStreamEnd()
}

// stopWaitingLocked takes a stream that finished out of the session
// window's waiters; s.mu is held. With none left, nobody waits for session
// credit (checkSessionCredit).
func (s *Session) stopWaitingLocked(st *stream) {
	if !st.tab.waitsForSession {
		return
	}
	st.tab.waitsForSession = false
	s.winWaiters = slices.DeleteFunc(s.winWaiters, func(w *stream) bool { return w == st })
	if len(s.winWaiters) == 0 {
		s.sessionWaitSince = 0
	}
}

// markDraining records that st finished on the wire with data its
// application has yet to read: it keeps its slot and budget (finish), but
// no longer holds up a graceful close.
func (s *Session) markDraining(st *stream) {
	s.mu.Lock()
	if s.streams[st.id] != st || st.tab.draining {
		s.mu.Unlock()
		return
	}
	st.tab.draining = true
	s.draining++
	s.stopWaitingLocked(st)
	s.mu.Unlock()
	s.afterStreamEnd()
}

// afterStreamEnd completes a Shutdown, or the close after the peer's GOAWAY,
// once no stream is active on the wire. Streams draining their unread data
// stay readable after the session closes.
func (s *Session) afterStreamEnd() {
	s.mu.Lock()
	idle := len(s.streams) == s.draining
	var shutdownDone chan struct{}
	if s.shutdownWait != nil && idle {
		shutdownDone = s.shutdownWait
	}
	peerGone := s.goAwayRecv && idle
	s.mu.Unlock()
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
