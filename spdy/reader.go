package spdy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// The reader goroutine: one frame at a time off the connection. We parse
// frames ourselves (frame.go): every length is
// checked against its type before anything is read, header blocks go
// through the session's inflater (headerblock.go), which bounds what they
// cost, and DATA is read straight into the stream's buffers after its
// window was checked, never in one allocation the size of its claim.

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
			s.protocolError(err)
		default:
			s.closeWith(fmt.Errorf("spdy: reading from connection: %w", err), false, 0)
		}
		return
	}
}

// readPayload fills p with the connection's next bytes: what the read
// buffer holds, then the rest straight from the connection into p. A DATA
// payload is so copied once, not into the buffer and out again (bufio
// reads around its buffer only for reads at least as large as it).
func (s *Session) readPayload(p []byte) error {
	n := 0
	if b := s.br.Buffered(); b > 0 {
		n, _ = s.br.Read(p[:min(len(p), b)]) // from the buffer only
	}
	if n == len(p) {
		return nil
	}
	if _, err := io.ReadFull(s.conn, p[n:]); err != nil {
		if n > 0 && err == io.EOF {
			err = io.ErrUnexpectedEOF // the frame was cut
		}
		return err
	}
	return nil
}

// readFrame reads and handles one frame.
func (s *Session) readFrame() error {
	b, err := s.br.Peek(frameHeaderLen)
	if err != nil {
		if len(b) > 0 && errors.Is(err, io.EOF) {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	s.lastRecv.Store(time.Now().UnixNano())
	h := parseFrameHeader(b)
	s.br.Discard(frameHeaderLen)
	if !h.control {
		return s.readData(h.streamID, h.flags, h.length)
	}
	if h.version != 3 {
		return fmt.Errorf("%w: unsupported SPDY version %d", ErrProtocol, h.version)
	}
	n, known := fixedLen(h.typ)
	if !known {
		// Unknown control frames are ignored (SPDY/3 section 2.2.1).
		_, err := s.br.Discard(h.length)
		return err
	}
	if err := checkControlLength(h.typ, h.length); err != nil {
		return err
	}
	if h.typ == typeSettings {
		n = h.length // read whole (at most maxSettingsLen)
	}
	p, err := s.peek(n)
	if err != nil {
		return err
	}
	return s.handleControl(h, p, h.length-n)
}

// handleControl handles a control frame whose fixed part is p (still in the
// read buffer) and after which block bytes of header block follow.
func (s *Session) handleControl(h frameHeader, p []byte, block int) error {
	// p is only valid until the buffer moves: parse it before Discard.
	switch h.typ {
	case typeSynStream:
		f := parseSynStreamFixed(p)
		s.br.Discard(len(p))
		return s.handleSynStream(f.id, f.assoc, f.priority, h.flags, block)
	case typeSynReply, typeHeaders:
		id := binary.BigEndian.Uint32(p) & 0x7fffffff
		s.br.Discard(len(p))
		if h.typ == typeSynReply {
			return s.handleSynReply(id, h.flags, block)
		}
		return s.handleHeaders(id, h.flags, block)
	case typeRstStream:
		id, status := parseWords(p)
		s.br.Discard(len(p))
		return s.handleRst(id&0x7fffffff, RSTStatus(status))
	case typeGoAway:
		last, status := parseWords(p)
		s.br.Discard(len(p))
		s.handleGoAway(last&0x7fffffff, status)
		return nil
	case typeWindowUpdate:
		id, delta := parseWords(p)
		s.br.Discard(len(p))
		return s.handleWindowUpdate(id&0x7fffffff, int64(delta&0x7fffffff))
	case typePing:
		id := binary.BigEndian.Uint32(p)
		s.br.Discard(len(p))
		s.handlePing(id)
		return nil
	default: // typeSettings
		settings, err := parseSettings(p)
		if err == nil {
			err = s.handleSettings(settings) // settings is p: before Discard
		}
		s.br.Discard(len(p))
		return err
	}
}

// peek returns the next n bytes of the frame without consuming them.
func (s *Session) peek(n int) ([]byte, error) {
	p, err := s.br.Peek(n)
	if err != nil && errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return p, err
}

// readHeaderBlock inflates the n-byte header block that follows. With keep
// false (a block for a stream we refuse or do not know) it is inflated and
// dropped: the compression context must move on either way. A *refusal
// is a refusal of this block only; any other error ends the session.
func (s *Session) readHeaderBlock(n int, keep bool) (http.Header, error) {
	block, over, err := s.inflater.inflate(s.br, n, s.limits)
	if err != nil {
		return nil, err
	}
	if !keep {
		return nil, nil
	}
	if over {
		return nil, &refusal{Status: StatusFrameTooLarge, Reason: fmt.Sprintf("header block larger than %d bytes", s.limits.bytes)}
	}
	return parseHeaderBlock(block, s.limits.values)
}

// refuseBlock logs a refused header block and resets its stream.
func (s *Session) refuseBlock(id uint32, err error) {
	var be *refusal
	if !errors.As(err, &be) {
		return
	}
	s.log.Warnw("spdy: refusing a header block; resetting its stream", "remote", s.remoteAddr.String(), "stream", id, "status", be.Status.String(), "reason", be.Reason)
	s.resetPeerStream(id, be.Status, err)
}

// connection-specific headers SPDY forbids in a block (section 3.2.1).
var (
	forbiddenInRequest  = []string{"Connection", "Host", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding"}
	forbiddenInResponse = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding"}
)

func checkForbidden(h http.Header, names []string) error {
	for _, k := range names {
		if _, ok := h[k]; ok {
			return &refusal{Status: StatusProtocolError, Reason: "connection-specific header " + k}
		}
	}
	return nil
}

func (s *Session) handleSynStream(id, assoc uint32, priority, flags uint8, n int) error {
	fin := flags&flagFin != 0
	if id == 0 {
		return fmt.Errorf("%w: SYN_STREAM for stream 0", ErrProtocol)
	}
	refuse := func(why string) error {
		if _, err := s.readHeaderBlock(n, false); err != nil {
			return err
		}
		s.log.Debugw("spdy: refusing stream", "stream", id, "reason", why)
		s.queueRst(id, StatusRefusedStream)
		return nil
	}
	s.mu.Lock()
	if !s.isPeerID(id) {
		s.mu.Unlock()
		if s.client && flags&flagUnidirectional != 0 {
			return refuse("server push is not accepted")
		}
		return fmt.Errorf("%w: peer opened stream %d, an id of our parity", ErrProtocol, id)
	}
	if id <= s.lastPeerID {
		last := s.lastPeerID
		s.mu.Unlock()
		return fmt.Errorf("%w: peer opened stream %d, not above its last stream %d", ErrProtocol, id, last)
	}
	lastBefore := s.lastPeerID
	s.lastPeerID = id
	switch {
	case flags&flagUnidirectional != 0 || s.client:
		s.mu.Unlock()
		return refuse("unidirectional or towards the client")
	case s.goAwaySent:
		s.mu.Unlock()
		return refuse("going away")
	case uint32(s.peerStreams-s.peerClosing) >= s.cfg.MaxConcurrentStreams:
		// Streams whose final frame is queued do not count: the peer may
		// have seen that FIN and reused the slot before the handler
		// goroutine removed the stream from the table.
		s.mu.Unlock()
		return refuse("MAX_CONCURRENT_STREAMS reached")
	}
	st := s.newStreamLocked(id, priority)
	s.peerStreams++
	st.state.set(stRemoteFin, fin)
	s.mu.Unlock()

	h, err := s.readHeaderBlock(n, true)
	if err == nil {
		err = checkForbidden(h, forbiddenInRequest)
	}
	if err != nil {
		var be *refusal
		if errors.As(err, &be) {
			s.refuseBlock(id, err)
			return nil
		}
		// The session ends: its GOAWAY must not name this stream as
		// processed.
		s.mu.Lock()
		s.lastPeerID = lastBefore
		s.mu.Unlock()
		return err
	}
	if !fin {
		// The request has a body: open its window beyond the guaranteed
		// 64 KiB at once, as far as the budget allows.
		if g := s.grantStart(st); g > 0 {
			s.queueWindowUpdate(id, g)
		}
	}
	s.streamsTot.Add(1)
	s.handlersWG.Add(1)
	workers.run(func() { s.serve(st, h, fin) })
	return nil
}

func (s *Session) handleSynReply(id uint32, flags uint8, n int) error {
	s.mu.Lock()
	st := s.streams[id]
	s.mu.Unlock()
	if st == nil || s.isPeerID(id) {
		if _, err := s.readHeaderBlock(n, false); err != nil {
			return err
		}
		if st != nil {
			// A reply to a stream the peer opened itself: that stream
			// is broken, and our handler must stop too.
			st.resetLocal(StatusProtocolError, errors.New("the peer sent SYN_REPLY for a stream it opened"))
			return nil
		}
		s.queueRst(id, StatusInvalidStream)
		return nil
	}
	h, err := s.readHeaderBlock(n, true)
	if err == nil {
		err = checkForbidden(h, forbiddenInResponse)
	}
	if err != nil {
		var be *refusal
		if errors.As(err, &be) {
			s.refuseBlock(id, err)
			return nil
		}
		return err
	}
	st.receiveReply(h, flags&flagFin != 0)
	return nil
}

// handleHeaders takes a HEADERS frame: trailers (trailers.go). A block
// for a stream we do not know is inflated and dropped (the compression
// context must move on); FIN counts as DATA's does.
func (s *Session) handleHeaders(id uint32, flags uint8, n int) error {
	s.mu.Lock()
	st := s.streams[id]
	s.mu.Unlock()
	h, err := s.readHeaderBlock(n, st != nil)
	if err == nil && st != nil {
		err = checkTrailers(h)
		if err == nil {
			err = st.receiveTrailers(h, flags&flagFin != 0, s.limits)
		}
	}
	if err != nil {
		var be *refusal
		if errors.As(err, &be) {
			s.refuseBlock(id, err)
			return nil
		}
		return err
	}
	return nil
}

// checkTrailers refuses trailers that are connection-specific or
// pseudo-headers (RFC 9113 section 8.1).
func checkTrailers(h http.Header) error {
	if err := checkForbidden(h, forbiddenInRequest); err != nil {
		return err
	}
	for k := range h {
		if strings.HasPrefix(k, ":") {
			return &refusal{Status: StatusProtocolError, Reason: "pseudo-header " + k + " in trailers"}
		}
	}
	return nil
}

func (s *Session) handleRst(id uint32, status RSTStatus) error {
	if id == 0 || status == 0 {
		return fmt.Errorf("%w: RST_STREAM for stream %d with status %d", ErrProtocol, id, status)
	}
	s.mu.Lock()
	st := s.streams[id]
	s.mu.Unlock()
	if st != nil {
		st.abort(&StreamError{StreamID: id, Status: status, Remote: true})
	}
	return nil
}

func (s *Session) handleSettings(settings settingsList) error {
	for i := range settings.len() {
		e := settings.at(i)
		switch e.id {
		case settingMaxConcurrentStreams:
			s.mu.Lock()
			grew := e.value > s.peerMaxStreams
			s.peerMaxStreams = e.value
			s.mu.Unlock()
			if grew {
				s.wakeSlotWaiters()
			}
		case settingInitialWindowSize:
			if e.value > maxWindow {
				return fmt.Errorf("%w: INITIAL_WINDOW_SIZE %d too large", ErrProtocol, e.value)
			}
			if err := s.setPeerInitialWindow(int64(e.value)); err != nil {
				return err
			}
		}
	}
	return nil
}

// setPeerInitialWindow applies the peer's INITIAL_WINDOW_SIZE to every open
// stream by the difference (SPDY/3.1 section 2.6.8).
func (s *Session) setPeerInitialWindow(v int64) error {
	s.mu.Lock()
	s.peerKnowsFlow.Store(true)
	delta := v - s.peerInitWindow
	s.peerInitWindow = v
	wake := make([]*stream, 0, len(s.streams))
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
	return nil
}

func (s *Session) handleWindowUpdate(id uint32, delta int64) error {
	if delta == 0 {
		return fmt.Errorf("%w: WINDOW_UPDATE with zero delta", ErrProtocol)
	}
	s.mu.Lock()
	if id == 0 {
		if err := s.sendWin.add(delta); err != nil {
			s.mu.Unlock()
			return err
		}
		waiters := s.takeWinWaitersLocked()
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
		st.resetLocal(StatusFlowControlError, err)
		return nil
	}
	st.wakeSender()
	return nil
}

// readData reads one DATA frame's payload. Session credit goes back as soon
// as the payload is off the wire: the session window only paces what is in
// flight, and what streams buffer is bounded by their own windows (see
// flow.go), so one stream's stalled reader cannot hold the others up.
func (s *Session) readData(id uint32, flags uint8, length int) error {
	if id == 0 {
		return fmt.Errorf("%w: DATA frame on stream 0", ErrProtocol)
	}
	n := int64(length)
	s.recvMu.Lock()
	err := s.recvWin.received(n)
	s.recvMu.Unlock()
	if err != nil {
		return err
	}
	if err := s.readDataPayload(id, flags&flagFin != 0, length); err != nil {
		return err
	}
	s.bytesIn.Add(uint64(n))
	s.recvMu.Lock()
	update := s.recvWin.consumed(n)
	s.recvMu.Unlock()
	if update > 0 {
		s.queueWindowUpdate(0, uint32(update))
	}
	return nil
}

func (s *Session) readDataPayload(id uint32, fin bool, length int) error {
	s.mu.Lock()
	st := s.streams[id]
	unknown := st == nil && (s.isPeerID(id) && id > s.lastPeerID || !s.isPeerID(id) && id >= s.nextID)
	s.mu.Unlock()
	if st == nil {
		// Data for a stream that ended (in flight when we reset it) is
		// dropped; data for a stream never opened is an error.
		if unknown {
			s.queueRst(id, StatusInvalidStream)
		}
		_, err := s.br.Discard(length)
		return err
	}
	keep, refused := st.admitData(int64(length))
	if refused != nil {
		s.log.Debugw("spdy: refusing DATA; resetting its stream", "stream", id, "status", refused.Status.String(), "reason", refused.Reason)
		st.resetLocal(refused.Status, refused)
		_, err := s.br.Discard(length)
		return err
	}
	if !keep {
		if _, err := s.br.Discard(length); err != nil {
			return err
		}
	}
	// A buffer's worth (at least our own largest frame) is read straight
	// into a pooled buffer the stream keeps (no copy), unless the stream's
	// last buffer has more than ownSlack free to fill first; anything
	// smaller into the reader's scratch buffer, then packed into the
	// stream's buffers. One buffer at a time, whatever the frame claims.
	for keep && length > 0 {
		k := min(length, recvBufferSize)
		owned := k >= maxDataFrame && st.tailFree() <= ownSlack
		buf := s.rbuf[:k]
		if owned {
			buf = recvBufPool.Get().(*[recvBufferSize]byte)[:k]
		}
		if err := s.readPayload(buf); err != nil {
			if owned {
				releaseChunk(buf)
			}
			return err
		}
		st.push(buf, owned)
		length -= k
	}
	if fin {
		st.endRemote()
	}
	return nil
}
