package spdy

// Hostile-peer tests for failure isolation: a peer that misbehaves on one
// stream (header bombs, DATA claims, stalled readers, idle uploads, windows
// it never opens) costs that stream, never the session or its other
// streams. Each test checks the exact frames on the wire, that the session
// still answers PING afterwards, and, where header blocks were refused,
// that a normal request still works after the refused block: the shared
// zlib context stayed in step.

import (
	"bufio"
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/adler32"
	"io"
	"maps"
	"net"
	"net/http"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/spdystream"
	mspdy "github.com/moby/spdystream/spdy"
)

// blockEncoder encodes a hostile peer's frames ahead of time, with one
// compression context for every header block the peer sends in a test (as
// on a real connection), so that a bomb's encoding cost falls outside the
// allocation measurements. A peer using it sends header-bearing frames
// only through it: the rawPeer's own framer would be a second context.
type blockEncoder struct {
	buf bytes.Buffer
	fr  *mspdy.Framer
}

func newBlockEncoder(t testing.TB) *blockEncoder {
	t.Helper()
	e := &blockEncoder{}
	fr, err := mspdy.NewFramer(&e.buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.fr = fr
	return e
}

// encode returns f on the wire.
func (e *blockEncoder) encode(t testing.TB, f mspdy.Frame) []byte {
	t.Helper()
	e.buf.Reset()
	if err := e.fr.WriteFrame(f); err != nil {
		t.Fatalf("encoding %T: %v", f, err)
	}
	return bytes.Clone(e.buf.Bytes())
}

// send encodes f and writes it.
func (e *blockEncoder) send(t testing.TB, p *rawPeer, f mspdy.Frame) {
	t.Helper()
	if err := p.writeRaw(e.encode(t, f)); err != nil {
		t.Fatalf("raw peer: writing %T: %v", f, err)
	}
}

// totalAlloc is the bytes allocated by the process so far. The window
// measured includes every goroutine of the test binary (the raw peer's
// reader too), so bounds leave room for that.
func totalAlloc() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.TotalAlloc
}

// pingClean sends a PING with id and waits for its echo, failing on any
// RST_STREAM or GOAWAY that comes first. The session answers frames in
// order through one control queue, so an echo with no reset before it
// proves that nothing the peer sent earlier was refused.
func pingClean(t *testing.T, p *rawPeer, id uint32) {
	t.Helper()
	p.mustWrite(&mspdy.PingFrame{Id: id})
	p.expect("PING echo", func(f mspdy.Frame) bool {
		switch f := f.(type) {
		case *mspdy.RstStreamFrame, *mspdy.GoAwayFrame:
			t.Fatalf("unexpected %#v", f)
		case *mspdy.PingFrame:
			return f.Id == id
		}
		return false
	})
}

// settle returns once every frame p sent has been handled by s, so that
// the raw peer will write nothing it is not told to. (testConfig turns
// keepalive off, so the session sends no PING of its own.)
func settle(t *testing.T, s *Session, p *rawPeer, id uint32) {
	t.Helper()
	pingClean(t, p, id)
}

// pingFromClient and pingFromServer are PING ids of the raw peer's role,
// which our session echoes.
const (
	pingFromClient = 777  // odd: the raw client's
	pingFromServer = 1000 // even: the raw server's
)

// okHandler answers every request with "ok", after reading its body.
var okHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	n, _ := io.Copy(io.Discard, r.Body)
	w.Header().Set("X-Body-Bytes", strconv.FormatInt(n, 10))
	io.WriteString(w, "ok")
})

// serverExchange sends a GET on stream id from a raw client (through enc)
// and checks that our server answers it with "ok": the request block was
// inflated in the same context as everything the peer sent before.
func serverExchange(t *testing.T, p *rawPeer, enc *blockEncoder, id uint32) {
	t.Helper()
	enc.send(t, p, synStream(id, reqBlock("GET", "/ok", "x-after", "bomb"), true))
	var body []byte
	replied := false
	p.expect(fmt.Sprintf("the answer on stream %d", id), func(f mspdy.Frame) bool {
		switch f := f.(type) {
		case *mspdy.SynReplyFrame:
			if uint32(f.StreamId) == id {
				if !strings.HasPrefix(f.Headers.Get(":status"), "200") {
					t.Fatalf("stream %d: status %q", id, f.Headers.Get(":status"))
				}
				replied = true
				return f.CFHeader.Flags&mspdy.ControlFlagFin != 0
			}
		case *mspdy.DataFrame:
			if uint32(f.StreamId) == id {
				body = append(body, f.Data...)
				return f.Flags&mspdy.DataFlagFin != 0
			}
		case *mspdy.RstStreamFrame:
			t.Fatalf("stream %d reset: %#v", f.StreamId, f)
		case *mspdy.GoAwayFrame:
			t.Fatalf("GOAWAY %#v", f)
		}
		return false
	})
	if !replied || string(body) != "ok" {
		t.Fatalf("stream %d: replied %v, body %q, want \"ok\"", id, replied, body)
	}
}

// clientExchange has our client send a GET and the raw server answer it
// (through enc) with "ok"; the reply block is inflated in the same context
// as everything the peer sent before.
func clientExchange(t *testing.T, cs *Session, p *rawPeer, enc *blockEncoder) {
	t.Helper()
	res := goRoundTrip(cs, newReq(t, "GET", "https://x/ok", nil))
	syn := p.expectSynStream()
	enc.send(t, p, synReply(uint32(syn.StreamId), replyBlock("200", "x-after", "bomb"), false))
	p.mustWrite(dataFrameOf(uint32(syn.StreamId), []byte("ok"), true))
	r := recvResult(t, res)
	if r.err != nil || r.resp.StatusCode != 200 || string(r.body) != "ok" || r.resp.Header.Get("X-After") != "bomb" {
		t.Fatalf("RoundTrip after the bomb: %+v (body %q)", r, r.body)
	}
}

// bigValues is a header block with n headers of size bytes each. The
// values share one string, so building it costs the raw peer nothing.
func bigValues(n, size int) http.Header {
	v := strings.Repeat("a", size)
	h := make(http.Header, n)
	for i := range n {
		h["x-bomb-"+strconv.Itoa(i)] = []string{v}
	}
	return h
}

// nulValue is one header whose value is n NULs: n+1 values once split.
func nulValue(n int) http.Header {
	return http.Header{"x-nul": {strings.Repeat("\x00", n)}}
}

// withPseudo returns h with a request's or a reply's pseudo-headers.
func withPseudo(h, pseudo http.Header) http.Header {
	h = maps.Clone(h)
	for k, v := range pseudo {
		h[k] = v
	}
	return h
}

// bombCase is one hostile header block.
type bombCase struct {
	name string
	// limits of our side
	maxBytes, maxCount uint32
	block              http.Header // without pseudo-headers
	// allocBound caps what our side may allocate for the block, and
	// minRatio is how many times that the block must inflate to (0: no
	// ratio asserted: the case is about counting, not size).
	allocBound uint64
	minRatio   float64
}

// bombCases are the header bombs of TestHeaderBomb*. Each must be refused
// with FRAME_TOO_LARGE for its stream only.
//
// Allocation bounds. A block over MaxHeaderBytes is inflated through the
// inflater's history and chunk buffers (reused) and dropped as it goes:
// at most MaxHeaderBytes of it is kept, in a buffer that doubles as it
// grows (at most twice its final size allocated in all), and the refused
// stream and its RST_STREAM cost a few KiB, so 2 × MaxHeaderBytes + 64 KiB
// bounds it (the slack also covers the test binary's other goroutines,
// such as the raw peer decoding our frames). A stream-level bomb inflates
// to at most the hard cap, 4 × MaxHeaderBytes; what lies beyond it is a
// session error, tested with a block far larger than its allocations in
// TestHeaderBombHardCap.
//
// A block within MaxHeaderBytes is kept whole and parsed, so the same
// bound holds. That still tells counting from splitting: a million values
// split into strings would cost 16 MiB for the []string alone.
func bombCases() []bombCase {
	const kib = 1 << 10
	return []bombCase{
		{
			name:     "many big values",
			maxBytes: 64 * kib, maxCount: 1000,
			block:      bigValues(3, 64*kib), // 192 KiB inflated, within the 256 KiB cap
			allocBound: 2*64*kib + 64*kib,
		},
		{
			name:     "one NUL value over the size limit",
			maxBytes: 64 * kib, maxCount: 1000,
			block:      nulValue(200 * kib), // 200 K values, 200 KiB
			allocBound: 2*64*kib + 64*kib,
		},
		{
			name:     "one NUL value within the size limit",
			maxBytes: 1<<20 + 4*kib, maxCount: 1000,
			block:      nulValue(1 << 20), // 1 M values, 1 MiB
			allocBound: 2*(1<<20+4*kib) + 64*kib,
		},
		{
			name:     "too many headers",
			maxBytes: 64 * kib, maxCount: 1000,
			block:      headerCount(2000), // 31 KiB
			allocBound: 2*64*kib + 64*kib,
		},
	}
}

// headerCount is a block of n small headers.
func headerCount(n int) http.Header {
	h := make(http.Header, n)
	for i := range n {
		h["x-h"+strconv.Itoa(i)] = []string{"v"}
	}
	return h
}

// inflatedSize is what h inflates to on the wire (as blockSize counts it).
func inflatedSize(h http.Header) int {
	n, _ := blockSize(h)
	return n
}

// bombConfig is testConfig with the case's header limits.
func bombConfig(c bombCase) *Config {
	cfg := testConfig()
	cfg.MaxHeaderBytes = c.maxBytes
	cfg.MaxHeaderCount = c.maxCount
	return cfg
}

// checkAlloc fails the test if allocated exceeds c's bound, or if the
// block did not inflate to c.minRatio times the bound.
func checkAlloc(t *testing.T, c bombCase, block http.Header, allocated uint64) {
	t.Helper()
	inflated := inflatedSize(block)
	t.Logf("%s: inflated %d bytes, our side allocated %d bytes (bound %d)", c.name, inflated, allocated, c.allocBound)
	if allocated > c.allocBound {
		t.Errorf("allocated %d bytes for a refused block, bound %d", allocated, c.allocBound)
	}
	if c.minRatio > 0 && float64(inflated) < c.minRatio*float64(c.allocBound) {
		t.Fatalf("test bug: block inflates to %d, less than %.0f× the bound %d", inflated, c.minRatio, c.allocBound)
	}
}

// TestHeaderBombToServer: a raw client sends SYN_STREAMs whose blocks
// inflate far beyond our limits. Each costs its stream (RST_STREAM
// FRAME_TOO_LARGE) and a bounded amount of memory; the session answers
// PING and serves the next request, whose block is in the same context.
func TestHeaderBombToServer(t *testing.T) {
	for _, c := range bombCases() {
		t.Run(c.name, func(t *testing.T) {
			ss, p := rawClient(t, bombConfig(c), okHandler)
			enc := newBlockEncoder(t)
			serverExchange(t, p, enc, 1) // warm up: decompressor, buffers
			block := withPseudo(c.block, reqBlock("GET", "/bomb"))
			wire := enc.encode(t, synStream(3, block, true))
			runtime.GC()
			before := totalAlloc()
			if err := p.writeRaw(wire); err != nil {
				t.Fatal(err)
			}
			rst := p.expectRst(3)
			allocated := totalAlloc() - before
			if rst.Status != mspdy.FrameTooLarge {
				t.Fatalf("RST_STREAM status %d, want FRAME_TOO_LARGE", rst.Status)
			}
			checkAlloc(t, c, block, allocated)
			pingClean(t, p, pingFromClient)
			serverExchange(t, p, enc, 5)
			if ss.Err() != nil {
				t.Fatal(ss.Err())
			}
		})
	}
}

// TestHeaderBombToClient: a raw server answers our client's request with a
// SYN_REPLY that inflates far beyond our limits. The request fails with
// a local reset FRAME_TOO_LARGE, at a bounded cost; the next request on the
// session works.
func TestHeaderBombToClient(t *testing.T) {
	for _, c := range bombCases() {
		t.Run(c.name, func(t *testing.T) {
			cs, p := rawServer(t, bombConfig(c))
			enc := newBlockEncoder(t)
			clientExchange(t, cs, p, enc) // warm up: stream 1
			res := goRoundTrip(cs, newReq(t, "GET", "https://x/bomb", nil))
			syn := p.expectSynStream()
			id := uint32(syn.StreamId)
			block := withPseudo(c.block, replyBlock("200"))
			wire := enc.encode(t, synReply(id, block, false))
			runtime.GC()
			before := totalAlloc()
			if err := p.writeRaw(wire); err != nil {
				t.Fatal(err)
			}
			rst := p.expectRst(id)
			allocated := totalAlloc() - before
			if rst.Status != mspdy.FrameTooLarge {
				t.Fatalf("RST_STREAM status %d, want FRAME_TOO_LARGE", rst.Status)
			}
			checkAlloc(t, c, block, allocated)
			r := recvResult(t, res)
			var se *StreamError
			if !errors.As(r.err, &se) || se.Status != StatusFrameTooLarge || se.Remote || se.StreamID != id {
				t.Fatalf("RoundTrip: %v, want a local reset FRAME_TOO_LARGE of stream %d", r.err, id)
			}
			pingClean(t, p, pingFromServer)
			clientExchange(t, cs, p, enc)
			if cs.Err() != nil {
				t.Fatal(cs.Err())
			}
		})
	}
}

// byteBomb is a block of 4 MiB against MaxHeaderBytes 4 KiB: over the
// limit, within the session's hard cap.
func byteBomb() bombCase { return bombCases()[0] }

// TestHeadersFrameBomb: a HEADERS frame (trailers) over the limits on an
// open stream is inflated to its end and dropped at a bounded cost, and
// costs its stream alone (RST_STREAM FRAME_TOO_LARGE), as any header block
// does; the session goes on and its next request works.
func TestHeadersFrameBomb(t *testing.T) {
	c := byteBomb()
	headers := func(id uint32) *mspdy.HeadersFrame {
		return &mspdy.HeadersFrame{StreamId: mspdy.StreamId(id), Headers: c.block}
	}
	t.Run("to server", func(t *testing.T) {
		_, p := rawClient(t, bombConfig(c), okHandler)
		enc := newBlockEncoder(t)
		serverExchange(t, p, enc, 1)
		enc.send(t, p, synStream(3, reqBlock("POST", "/upload"), false))
		wire := enc.encode(t, headers(3))
		runtime.GC()
		before := totalAlloc()
		if err := p.writeRaw(wire); err != nil {
			t.Fatal(err)
		}
		if rst := p.expectRst(3); rst.Status != mspdy.FrameTooLarge {
			t.Fatalf("RST_STREAM status %d, want FRAME_TOO_LARGE", rst.Status)
		}
		checkAlloc(t, c, c.block, totalAlloc()-before)
		serverExchange(t, p, enc, 5)
	})
	t.Run("to client", func(t *testing.T) {
		cs, p := rawServer(t, bombConfig(c))
		enc := newBlockEncoder(t)
		clientExchange(t, cs, p, enc)
		res := goRoundTrip(cs, newReq(t, "GET", "https://x/trailers", nil))
		id := uint32(p.expectSynStream().StreamId)
		enc.send(t, p, synReply(id, replyBlock("200"), false))
		p.mustWrite(dataFrameOf(id, []byte("before "), false))
		wire := enc.encode(t, headers(id))
		runtime.GC()
		before := totalAlloc()
		if err := p.writeRaw(wire); err != nil {
			t.Fatal(err)
		}
		if rst := p.expectRst(id); rst.Status != mspdy.FrameTooLarge {
			t.Fatalf("RST_STREAM status %d, want FRAME_TOO_LARGE", rst.Status)
		}
		checkAlloc(t, c, c.block, totalAlloc()-before)
		r := recvResult(t, res)
		var se *StreamError
		if !errors.As(r.err, &se) || se.Status != StatusFrameTooLarge || se.Remote {
			t.Fatalf("RoundTrip: %v, want a local FRAME_TOO_LARGE reset (body %q)", r.err, r.body)
		}
		clientExchange(t, cs, p, enc)
	})
}

// TestHeaderBlockUnknownStream: a header block for a stream that was never
// opened is inflated (the context moves on) and dropped, at a bounded
// cost; SYN_REPLY is answered with RST_STREAM INVALID_STREAM, HEADERS
// is ignored; the session lives on and its next request works.
func TestHeaderBlockUnknownStream(t *testing.T) {
	c := byteBomb()
	cases := []struct {
		name   string
		client bool // the raw peer is a server, our session the client
		frame  mspdy.Frame
		rst    mspdy.RstStreamStatus // 0: none
	}{
		{"SYN_REPLY to client", true, synReply(5, withPseudo(c.block, replyBlock("200")), false), mspdy.InvalidStream},
		{"HEADERS to client", true, &mspdy.HeadersFrame{StreamId: 5, Headers: c.block}, 0},
		{"SYN_REPLY to server", false, synReply(2, withPseudo(c.block, replyBlock("200")), false), mspdy.InvalidStream},
		{"HEADERS to server", false, &mspdy.HeadersFrame{StreamId: 9, Headers: c.block}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var s *Session
			var p *rawPeer
			enc := newBlockEncoder(t)
			ping := uint32(pingFromClient)
			var exchange func()
			if tc.client {
				s, p = rawServer(t, bombConfig(c))
				ping = pingFromServer
				exchange = func() { clientExchange(t, s, p, enc) }
			} else {
				s, p = rawClient(t, bombConfig(c), okHandler)
				next := uint32(1)
				exchange = func() { serverExchange(t, p, enc, next); next += 2 }
			}
			exchange()
			wire := enc.encode(t, tc.frame)
			runtime.GC()
			before := totalAlloc()
			if err := p.writeRaw(wire); err != nil {
				t.Fatal(err)
			}
			id := streamIDOf(tc.frame)
			if tc.rst != 0 {
				if rst := p.expectRst(id); rst.Status != tc.rst {
					t.Fatalf("RST_STREAM %d status %d, want %d", id, rst.Status, tc.rst)
				}
			}
			pingClean(t, p, ping)
			checkAlloc(t, c, c.block, totalAlloc()-before)
			exchange()
			// The exchange's stream leaves the table once both FINs are
			// recorded; our SYN_STREAM's may be recorded by the writer a
			// moment after the response was read.
			waitUntil(t, "every stream ended", func() bool { return s.OpenStreams() == 0 })
			if s.Err() != nil {
				t.Fatalf("session: err %v", s.Err())
			}
		})
	}
}

func streamIDOf(f mspdy.Frame) uint32 {
	switch f := f.(type) {
	case *mspdy.SynStreamFrame:
		return uint32(f.StreamId)
	case *mspdy.SynReplyFrame:
		return uint32(f.StreamId)
	case *mspdy.HeadersFrame:
		return uint32(f.StreamId)
	}
	panic(fmt.Sprintf("no stream id in %T", f))
}

// deflateRun is a raw deflate stream that inflates to n bytes of 'a' in a
// few bytes per 258 of output (one fixed-Huffman block: a literal, then
// copies of length 258 at distance 1), ended by a sync flush as SPDY
// header blocks are. It refers to no earlier output, so it may follow any
// sync-flushed stream: it is the cheap way to build a block far beyond
// the hard cap (zlib at its best compression takes over a second for
// 16 MiB under the race detector).
func deflateRun(n int) []byte {
	var out []byte
	var acc uint64
	var nacc uint
	bits := func(v uint64, k uint) { // LSB first
		acc |= v << nacc
		nacc += k
		for nacc >= 8 {
			out = append(out, byte(acc))
			acc >>= 8
			nacc -= 8
		}
	}
	code := func(c uint64, k uint) { // Huffman codes go MSB first
		var r uint64
		for i := range k {
			r |= (c >> i & 1) << (k - 1 - i)
		}
		bits(r, k)
	}
	bits(0, 1)        // BFINAL 0
	bits(1, 2)        // BTYPE 01: fixed Huffman
	code(0x30+'a', 8) // literal 'a'
	left := n - 1
	for ; left >= 258; left -= 258 {
		code(0xc0+5, 8) // length symbol 285: 258 bytes
		code(0, 5)      // distance symbol 0: distance 1
	}
	for ; left > 0; left-- {
		code(0x30+'a', 8)
	}
	code(0, 7)          // end of block (256)
	bits(0, 3)          // sync flush: an empty stored block...
	bits(0, (8-nacc)%8) // ...byte-aligned,
	out = append(out, 0, 0, 0xff, 0xff)
	return out
}

// zlibStart is the zlib header SPDY's first header block begins with:
// deflate, a 32 KiB window, a preset dictionary (the SPDY/3 one).
func zlibStart() []byte {
	return binary.BigEndian.AppendUint32([]byte{0x78, 0xf9}, adler32.Checksum(headerDictionary))
}

// TestDeflateRun checks the hand-made stream the hard-cap test relies on.
func TestDeflateRun(t *testing.T) {
	for _, n := range []int{1, 2, 258, 259, 1000, 100000} {
		r := flate.NewReader(bytes.NewReader(deflateRun(n)))
		got, err := io.ReadAll(r)
		if !errors.Is(err, io.ErrUnexpectedEOF) { // a sync flush, not the end
			t.Fatalf("n=%d: %v", n, err)
		}
		if len(got) != n || strings.Trim(string(got), "a") != "" {
			t.Fatalf("n=%d: inflated %d bytes", n, len(got))
		}
	}
}

// TestHeaderBombHardCap: a block that inflates past the hard cap
// (4 × MaxHeaderBytes) is not a big request but a peer burning our CPU:
// the session ends with GOAWAY PROTOCOL_ERROR and ErrProtocol, in either
// role and for each header-bearing frame, and the request waiting on it
// fails with that cause. However large the block claims to be, inflating
// stops at the cap and allocates what the limit allows, not the claim.
func TestHeaderBombHardCap(t *testing.T) {
	cfg := testConfig()
	cfg.MaxHeaderBytes = 64 << 10
	capBytes := cfg.headerLimits().inflateCap()
	if capBytes != 4*64<<10 {
		t.Fatalf("hard cap %d, want 4 × MaxHeaderBytes", capBytes)
	}
	bomb := deflateRun(capBytes + 1)
	u32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	synStreamBomb := func(id uint32, run []byte) []byte {
		// The first block of the context: the zlib header comes first.
		payload := cat2(u32(id), u32(0), []byte{0, 0}, zlibStart(), run)
		return cat2(ctrlHeader(3, mspdy.TypeSynStream, uint8(mspdy.ControlFlagFin), uint32(len(payload))), payload)
	}
	cases := []struct {
		name   string
		client bool
		// bomb returns the frame that carries the bomb on stream id.
		bomb func(p *rawPeer, id uint32) []byte
	}{
		{"SYN_STREAM to server", false, func(p *rawPeer, id uint32) []byte {
			return synStreamBomb(id, bomb)
		}},
		{"SYN_REPLY to client", true, func(p *rawPeer, id uint32) []byte {
			payload := cat2(u32(id), zlibStart(), bomb)
			return cat2(ctrlHeader(3, mspdy.TypeSynReply, 0, uint32(len(payload))), payload)
		}},
		{"HEADERS to client", true, func(p *rawPeer, id uint32) []byte {
			// The reply starts the context; the bomb continues it.
			p.mustWrite(synReply(id, replyBlock("200"), false))
			payload := cat2(u32(id), bomb)
			return cat2(ctrlHeader(3, mspdy.TypeHeaders, 0, uint32(len(payload))), payload)
		}},
	}
	t.Run("SYN_STREAM at the cap", func(t *testing.T) {
		// Exactly the cap is still a refusal of the stream alone.
		_, p := rawClient(t, cfg, okHandler)
		if err := p.writeRaw(synStreamBomb(1, deflateRun(capBytes))); err != nil {
			t.Fatal(err)
		}
		if rst := p.expectRst(1); rst.Status != mspdy.FrameTooLarge {
			t.Fatalf("RST_STREAM status %d, want FRAME_TOO_LARGE", rst.Status)
		}
		pingClean(t, p, pingFromClient)
	})
	t.Run("SYN_STREAM claiming 64 MiB", func(t *testing.T) {
		s, p := rawClient(t, cfg, okHandler)
		frame := synStreamBomb(1, deflateRun(64<<20)) // about 400 KB on the wire
		before := totalAlloc()
		p.writeRaw(frame)
		p.expectGoAway()
		p.drain()
		waitDone(t, s)
		allocated := totalAlloc() - before
		t.Logf("a block claiming 64 MiB: session closed after %d bytes allocated", allocated)
		if bound := uint64(2*cfg.MaxHeaderBytes + 256<<10); allocated > bound {
			t.Fatalf("allocated %d bytes for a 64 MiB bomb, bound %d", allocated, bound)
		}
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var s *Session
			var p *rawPeer
			var res <-chan result
			id := uint32(1)
			if tc.client {
				s, p = rawServer(t, cfg)
				res = goRoundTrip(s, newReq(t, "GET", "https://x/", nil))
				id = uint32(p.expectSynStream().StreamId)
			} else {
				s, p = rawClient(t, cfg, okHandler)
			}
			// (The session may close the connection before it read the
			// whole frame: a failed write is no failure.)
			p.writeRaw(tc.bomb(p, id))
			ga := p.expectGoAway()
			if ga.Status != mspdy.GoAwayProtocolError {
				t.Fatalf("GOAWAY status %d, want PROTOCOL_ERROR", ga.Status)
			}
			p.drain()
			waitDone(t, s)
			if !errors.Is(s.Err(), ErrProtocol) || !strings.Contains(s.Err().Error(), "inflates beyond") {
				t.Fatalf("session cause %v, want ErrProtocol for the hard cap", s.Err())
			}
			if res != nil {
				r := recvResult(t, res)
				if !errors.Is(r.err, ErrProtocol) || !errors.Is(r.err, ErrSessionClosed) {
					t.Fatalf("RoundTrip: %v, want ErrSessionClosed with ErrProtocol", r.err)
				}
			}
		})
	}
}

// dataHeader is the 8-byte header of a DATA frame claiming length bytes.
func dataHeader(id uint32, flags uint8, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, id&0x7fffffff)
	return binary.BigEndian.AppendUint32(b, uint32(flags)<<24|length&0xffffff)
}

// streamOf returns s's stream id, or nil.
func streamOf(s *Session, id uint32) *stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[id]
}

// TestDataClaim: a DATA frame whose header claims 0xFFFFFF bytes, of which
// the peer sends only a few. The claim is checked against the stream's
// window before anything is read: over it, the stream alone is reset
// (FLOW_CONTROL_ERROR) and nothing the size of the claim is allocated;
// the session resumes once the peer has sent the rest of the frame. A
// peer that never spoke of flow control may overrun within the budget and
// StreamWindow (tolerateOverrunLocked): then the claim is admitted, but
// read in pooled chunks as bytes arrive, never allocated up front.
func TestDataClaim(t *testing.T) {
	const claim = 0xffffff
	// A pooled 64 KiB receive buffer at most, plus small frames; far below
	// the 16 MiB claimed.
	const allocBound = 256 << 10
	cases := []struct {
		name         string
		client       bool // our session is the client
		knowsFlow    bool // the raw peer sends SETTINGS INITIAL_WINDOW_SIZE
		streamWindow int32
		reset        bool // FLOW_CONTROL_ERROR expected; else admitted
	}{
		{"server, peer knows flow control", false, true, 0, true},
		{"client, peer knows flow control", true, true, 0, true},
		{"server, old peer beyond StreamWindow", false, false, 1 << 20, true},
		{"client, old peer beyond StreamWindow", true, false, 1 << 20, true},
		{"server, old peer within budget", false, false, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.StreamWindow = tc.streamWindow
			var s *Session
			var p *rawPeer
			enc := newBlockEncoder(t)
			var res <-chan result
			var id uint32
			if tc.client {
				s, p = rawServer(t, cfg)
			} else {
				s, p = rawClient(t, cfg, okHandler)
			}
			if tc.knowsFlow {
				p.mustWrite(&mspdy.SettingsFrame{FlagIdValues: []mspdy.SettingsFlagIdValue{{Id: mspdy.SettingsInitialWindowSize, Value: 64 << 10}}})
			}
			if tc.client {
				res = goRoundTrip(s, newReq(t, "GET", "https://x/claim", nil))
				id = uint32(p.expectSynStream().StreamId)
				enc.send(t, p, synReply(id, replyBlock("200"), false))
			} else {
				id = 1
				enc.send(t, p, synStream(id, reqBlock("POST", "/claim"), false))
			}
			// The stream is open on our side, and the keepalive's first
			// PING has been answered: expectRst below answers PINGs, and
			// an answer written now would land inside the DATA frame.
			settle(t, s, p, pingID(tc.client))
			runtime.GC()
			before := totalAlloc()
			if err := p.writeRaw(cat2(dataHeader(id, 0, claim), []byte("abc"))); err != nil {
				t.Fatal(err)
			}
			if tc.reset {
				if rst := p.expectRst(id); rst.Status != mspdy.FlowControlError {
					t.Fatalf("RST_STREAM status %d, want FLOW_CONTROL_ERROR", rst.Status)
				}
			} else {
				st := streamOf(s, id)
				waitUntil(t, "the claim is admitted", func() bool {
					st.mu.Lock()
					defer st.mu.Unlock()
					return st.received == claim
				})
			}
			allocated := totalAlloc() - before
			t.Logf("claimed %d bytes, sent 3; our side allocated %d bytes", claim, allocated)
			if allocated > allocBound {
				t.Errorf("allocated %d bytes for a DATA frame of which 3 bytes came, bound %d", allocated, allocBound)
			}
			// The rest of the frame: the session reads (or drops) it and
			// goes on.
			if err := p.writeRaw(bytes.Repeat([]byte{'d'}, claim-3)); err != nil {
				t.Fatal(err)
			}
			if tc.reset {
				pingClean(t, p, pingID(tc.client))
				if tc.client {
					r := recvResult(t, res)
					var se *StreamError
					if !errors.As(r.err, &se) || se.Status != StatusFlowControlError || se.Remote {
						t.Fatalf("reading the response: %v, want a local FLOW_CONTROL_ERROR reset", r.err)
					}
					clientExchange(t, s, p, enc)
				} else {
					serverExchange(t, p, enc, 3)
				}
			} else {
				p.mustWrite(dataFrameOf(id, nil, true))
				rep := p.expect("SYN_REPLY", func(f mspdy.Frame) bool {
					if r, ok := f.(*mspdy.RstStreamFrame); ok {
						t.Fatalf("unexpected %#v", r)
					}
					_, ok := f.(*mspdy.SynReplyFrame)
					return ok
				}).(*mspdy.SynReplyFrame)
				if got := rep.Headers.Get("x-body-bytes"); got != strconv.Itoa(claim) {
					t.Fatalf("handler read %s bytes, want %d", got, claim)
				}
				serverExchange(t, p, enc, 3)
			}
			waitUntil(t, "every stream ended", func() bool { return s.OpenStreams() == 0 })
			if got := s.budget.Load(); got != int64(s.cfg.SessionWindow) {
				t.Fatalf("budget %d after every stream ended, want %d", got, s.cfg.SessionWindow)
			}
			if s.Err() != nil {
				t.Fatal(s.Err())
			}
		})
	}
}

// pingID is a PING id of the raw peer's role: our client echoes even
// ids, our server odd ones.
func pingID(ourClient bool) uint32 {
	if ourClient {
		return pingFromServer
	}
	return pingFromClient
}

// ctxReq is newReq with a deadline d from now, so that a request that
// hangs fails the test instead of blocking it (its context is cancelled
// when the test ends).
func ctxReq(t *testing.T, method, url string, body io.Reader, d time.Duration) *http.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// zeros is an endless body.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

var chunk64k = make([]byte, 64<<10)

// stalledStreams reports how much the given streams of s buffer, and the
// sum of their receive windows. full: each buffers its whole window.
func stalledStreams(s *Session, ids []uint32) (buffered, windows int64, full bool) {
	full = true
	for _, id := range ids {
		st := streamOf(s, id)
		if st == nil {
			return 0, 0, false
		}
		st.mu.Lock()
		buffered += int64(st.buffered)
		windows += st.recvWin.size
		if int64(st.buffered) != st.recvWin.size {
			full = false
		}
		st.mu.Unlock()
	}
	return buffered, windows, full
}

// TestStalledStreamsIsolated: eight streams whose application never reads
// fill their receive windows; a ninth stream on the same session still
// moves 4 MiB at once, because session credit goes back on receipt (a
// session window returned on consumption would be held by the stalled
// streams). What the session buffers is what the stalled windows allow,
// at most 8 × 64 KiB + SessionWindow; the budget is whole again once they
// end. Both directions: our client not reading responses, our server's
// handlers not reading request bodies. With a tight budget (SessionWindow
// 1 MiB, less than the stalled streams hold) the ninth stream runs on its
// guaranteed 64 KiB window.
func TestStalledStreamsIsolated(t *testing.T) {
	const stalled = 8
	const size = 4 << 20
	const prompt = 5 * time.Second // 4 MiB over loopback, race detector on
	budgets := []struct {
		name          string
		stream, sessn int32
	}{
		{"default budget", 0, 0},
		{"tight budget", 1 << 20, 1 << 20},
	}
	for _, b := range budgets {
		cfg := func() *Config {
			c := testConfig()
			c.StreamWindow, c.SessionWindow = b.stream, b.sessn
			return c
		}
		t.Run(b.name+"/downloads", func(t *testing.T) {
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/big" {
					w.Header().Set("Content-Length", strconv.Itoa(size))
					for range size / len(chunk64k) {
						w.Write(chunk64k)
					}
					return
				}
				for { // until the client resets the stream
					if _, err := w.Write(chunk64k); err != nil {
						return
					}
				}
			})
			cs, _ := pair(t, h, cfg(), cfg())
			var bodies []io.Closer
			var ids []uint32
			defer func() {
				for _, b := range bodies {
					b.Close()
				}
			}()
			for range stalled {
				resp, err := cs.RoundTrip(ctxReq(t, "GET", "https://x/stall", nil, rawTimeout))
				if err != nil {
					t.Fatal(err)
				}
				bodies = append(bodies, resp.Body)
				ids = append(ids, resp.Body.(*responseBody).st.id)
			}
			checkStalled(t, cs, ids, func() {
				start := time.Now()
				resp, err := cs.RoundTrip(ctxReq(t, "GET", "https://x/big", nil, prompt))
				if err != nil {
					t.Fatal(err)
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || n != size {
					t.Fatalf("ninth stream: %d bytes, %v", n, err)
				}
				if d := time.Since(start); d > prompt {
					t.Fatalf("ninth stream took %v for 4 MiB", d)
				}
			}, func() {
				for _, b := range bodies {
					b.Close()
				}
			})
		})
		t.Run(b.name+"/uploads", func(t *testing.T) {
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/sink" {
					n, err := io.Copy(io.Discard, r.Body)
					if err != nil || n != size {
						t.Errorf("sink: %d bytes, %v", n, err)
					}
					return
				}
				w.WriteHeader(200)
				w.(http.Flusher).Flush()
				<-r.Context().Done() // never reads the body
			})
			cs, ss := pair(t, h, cfg(), cfg())
			var bodies []io.Closer
			defer func() {
				for _, b := range bodies {
					b.Close()
				}
			}()
			for range stalled {
				resp, err := cs.RoundTrip(ctxReq(t, "POST", "https://x/hold", io.NopCloser(zeros{}), rawTimeout))
				if err != nil {
					t.Fatal(err)
				}
				bodies = append(bodies, resp.Body)
			}
			var ids []uint32
			for i := range stalled {
				ids = append(ids, uint32(2*i+1)) // the server sees the client's ids
			}
			checkStalled(t, ss, ids, func() {
				start := time.Now()
				req := ctxReq(t, "POST", "https://x/sink", bytes.NewReader(make([]byte, size)), prompt)
				resp, err := cs.RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("ninth stream: status %d", resp.StatusCode)
				}
				if d := time.Since(start); d > prompt {
					t.Fatalf("ninth stream took %v for 4 MiB", d)
				}
			}, func() {
				for _, b := range bodies {
					b.Close()
				}
			})
		})
	}
}

// checkStalled waits for the stalled streams ids of s to fill their
// windows, checks what s buffers, runs ninth (a transfer on another
// stream), then end (which ends the stalled streams), and checks that
// the budget is whole again.
func checkStalled(t *testing.T, s *Session, ids []uint32, ninth, end func()) {
	t.Helper()
	waitUntil(t, "the stalled streams fill their windows", func() bool {
		_, _, full := stalledStreams(s, ids)
		return full
	})
	buffered, windows, _ := stalledStreams(s, ids)
	limit := int64(len(ids))*defaultWindow + int64(s.cfg.SessionWindow)
	t.Logf("%d stalled streams buffer %d bytes (their windows %d; bound %d); budget left %d",
		len(ids), buffered, windows, limit, s.budget.Load())
	if buffered > limit {
		t.Fatalf("stalled streams buffer %d bytes, more than %d × 64 KiB + SessionWindow = %d", buffered, len(ids), limit)
	}
	ninth()
	// The stalled streams took nothing more meanwhile.
	if b, _, _ := stalledStreams(s, ids); b != buffered {
		t.Fatalf("stalled streams buffer %d bytes after the ninth stream, %d before", b, buffered)
	}
	end()
	waitUntil(t, "every stream ended", func() bool { return s.OpenStreams() == 0 })
	if got := s.budget.Load(); got != int64(s.cfg.SessionWindow) {
		t.Fatalf("budget %d after every stream ended, want SessionWindow %d", got, s.cfg.SessionWindow)
	}
}

// quietFor reads p's frames for d, answering PINGs, and fails on any
// RST_STREAM or GOAWAY. It returns the DATA payloads that came.
func quietFor(t *testing.T, p *rawPeer, d time.Duration) []byte {
	t.Helper()
	var data []byte
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			return data
		case f, ok := <-p.frames:
			if !ok {
				t.Fatalf("raw peer: connection ended (%v) in a quiet period", p.rerr)
			}
			switch f := f.(type) {
			case *mspdy.RstStreamFrame, *mspdy.GoAwayFrame:
				t.Fatalf("unexpected %#v during %v of quiet", f, d)
			case *mspdy.PingFrame:
				p.mustWrite(&mspdy.PingFrame{Id: f.Id})
			case *mspdy.DataFrame:
				data = append(data, f.Data...)
			}
		}
	}
}

// idleConfig is testConfig with a 200 ms StreamIdleTimeout.
func idleConfig() *Config {
	cfg := testConfig()
	cfg.StreamIdleTimeout = idleTimeout
	return cfg
}

const idleTimeout = 200 * time.Millisecond

// expectIdleReset waits for RST_STREAM CANCEL on id and checks that it came
// about one StreamIdleTimeout after since (the watchdog ticks four times
// per timeout and resets between one timeout and one and a quarter after
// the wait began; the bounds leave room for a loaded machine).
func expectIdleReset(t *testing.T, p *rawPeer, id uint32, since time.Time) {
	t.Helper()
	rst := p.expectRst(id)
	d := time.Since(since)
	if rst.Status != mspdy.Cancel {
		t.Fatalf("RST_STREAM status %d, want CANCEL", rst.Status)
	}
	if d < idleTimeout*3/4 || d > 5*idleTimeout {
		t.Fatalf("reset %v after the stream began to wait, want about %v", d, idleTimeout)
	}
	t.Logf("stream %d reset %v after it began to wait", id, d)
}

// isLocalIdleReset reports whether err is our reset of a stream (CANCEL)
// with cause.
func isLocalIdleReset(err, cause error) bool {
	var se *StreamError
	return errors.Is(err, cause) && errors.As(err, &se) && !se.Remote && se.Status == StatusCancel
}

// TestStreamIdleWatchdog: with StreamIdleTimeout 200 ms, a stream waiting
// on a party that makes no progress is reset (RST_STREAM CANCEL) with a
// cause the application can test, and the session lives on; a stream that
// is merely quiet, or waits on the shared session window, is left alone.
func TestStreamIdleWatchdog(t *testing.T) {
	t.Run("unread response", func(t *testing.T) {
		cs, p := rawServer(t, idleConfig())
		settle(t, cs, p, pingFromServer)
		resc := goRoundTripResp(t, cs, ctxReq(t, "GET", "https://x/", nil, rawTimeout))
		id := uint32(p.expectSynStream().StreamId)
		p.mustWrite(synReply(id, replyBlock("200"), false))
		p.mustWrite(dataFrameOf(id, []byte("never read"), false))
		since := time.Now()
		expectIdleReset(t, p, id, since)
		resp := recvResp(t, resc)
		defer resp.Body.Close()
		_, err := resp.Body.Read(make([]byte, 100))
		if !isLocalIdleReset(err, ErrStreamIdle) {
			t.Fatalf("Read after the watchdog reset: %v, want a local CANCEL with ErrStreamIdle", err)
		}
		pingAlive2(t, p)
	})

	t.Run("request body idle before the reply", func(t *testing.T) {
		cs, p := rawServer(t, idleConfig())
		settle(t, cs, p, pingFromServer)
		pr, pw := io.Pipe()
		res := goRoundTrip(cs, ctxReq(t, "POST", "https://x/up", pr, rawTimeout))
		syn := p.expectSynStream()
		since := time.Now()
		if syn.CFHeader.Flags&mspdy.ControlFlagFin != 0 {
			t.Fatal("SYN_STREAM with FIN for a request with a body")
		}
		expectIdleReset(t, p, uint32(syn.StreamId), since)
		r := recvResult(t, res)
		if !isLocalIdleReset(r.err, ErrRequestBodyTimeout) {
			t.Fatalf("RoundTrip: %v, want a local CANCEL with ErrRequestBodyTimeout", r.err)
		}
		// The body was closed, so its writer (the slow client) is told.
		if _, err := pw.Write([]byte("late")); !errors.Is(err, io.ErrClosedPipe) {
			t.Fatalf("writing the request body after the reset: %v, want io.ErrClosedPipe", err)
		}
		pingAlive2(t, p)
	})

	t.Run("request body idle after the reply", func(t *testing.T) {
		t.Parallel() // waits out several timeouts; touches nothing shared
		// A bidirectional stream: the answer came, the client sends when
		// it has something to say.
		cs, p := rawServer(t, idleConfig())
		settle(t, cs, p, pingFromServer)
		pr, pw := io.Pipe()
		defer pw.Close()
		res := goRoundTripResp(t, cs, ctxReq(t, "POST", "https://x/chat", pr, rawTimeout))
		id := uint32(p.expectSynStream().StreamId)
		p.mustWrite(synReply(id, replyBlock("200"), false))
		resp := recvResp(t, res)
		defer resp.Body.Close()
		if got := quietFor(t, p, 3*idleTimeout); len(got) != 0 {
			t.Fatalf("DATA %q from an idle body", got)
		}
		if _, err := pw.Write([]byte("late")); err != nil {
			t.Fatalf("writing the request body: %v", err)
		}
		pw.Close()
		var got []byte
		p.expect("the request body's FIN", func(f mspdy.Frame) bool {
			d, ok := f.(*mspdy.DataFrame)
			if ok {
				got = append(got, d.Data...)
			}
			return ok && d.Flags&mspdy.DataFlagFin != 0
		})
		if string(got) != "late" {
			t.Fatalf("request body %q, want \"late\"", got)
		}
		p.mustWrite(dataFrameOf(id, []byte("bye"), true))
		b, err := io.ReadAll(resp.Body)
		if err != nil || string(b) != "bye" {
			t.Fatalf("response body %q, %v", b, err)
		}
	})

	t.Run("quiet response", func(t *testing.T) {
		t.Parallel() // waits out several timeouts; touches nothing shared
		// An event stream between events: nothing buffered, nobody blocked.
		cs, p := rawServer(t, idleConfig())
		settle(t, cs, p, pingFromServer)
		res := goRoundTripResp(t, cs, ctxReq(t, "GET", "https://x/events", nil, rawTimeout))
		id := uint32(p.expectSynStream().StreamId)
		p.mustWrite(synReply(id, replyBlock("200"), false))
		p.mustWrite(dataFrameOf(id, []byte("event1"), false))
		resp := recvResp(t, res)
		defer resp.Body.Close()
		buf := make([]byte, 6)
		if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "event1" {
			t.Fatalf("first event %q, %v", buf, err)
		}
		quietFor(t, p, 3*idleTimeout)
		p.mustWrite(dataFrameOf(id, []byte("event2"), true))
		b, err := io.ReadAll(resp.Body)
		if err != nil || string(b) != "event2" {
			t.Fatalf("second event %q, %v", b, err)
		}
	})

	t.Run("quiet handler", func(t *testing.T) {
		t.Parallel() // waits out several timeouts; touches nothing shared
		next := make(chan struct{})
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "event1")
			w.(http.Flusher).Flush()
			<-next
			io.WriteString(w, "event2")
		})
		ss, p := rawClient(t, idleConfig(), h)
		settle(t, ss, p, pingFromClient)
		p.mustWrite(synStream(1, reqBlock("GET", "/events"), true))
		p.expect("event1", func(f mspdy.Frame) bool {
			d, ok := f.(*mspdy.DataFrame)
			return ok && string(d.Data) == "event1"
		})
		quietFor(t, p, 3*idleTimeout)
		close(next)
		p.expect("event2 with FIN", func(f mspdy.Frame) bool {
			d, ok := f.(*mspdy.DataFrame)
			return ok && string(d.Data) == "event2" && d.Flags&mspdy.DataFlagFin != 0
		})
	})

	t.Run("handler blocked on the stream window", func(t *testing.T) {
		werr := make(chan error, 1)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for {
				if _, err := w.Write(chunk64k); err != nil {
					werr <- err
					return
				}
			}
		})
		ss, p := rawClient(t, idleConfig(), h)
		// The session window is open: only the stream's is shut.
		p.mustWrite(&mspdy.WindowUpdateFrame{StreamId: 0, DeltaWindowSize: 1 << 30})
		settle(t, ss, p, pingFromClient)
		p.mustWrite(synStream(1, reqBlock("GET", "/"), true))
		var got int
		p.expect("the stream's 64 KiB window, spent", func(f mspdy.Frame) bool {
			if d, ok := f.(*mspdy.DataFrame); ok {
				got += len(d.Data)
			}
			return got == defaultWindow
		})
		expectIdleReset(t, p, 1, time.Now())
		select {
		case err := <-werr:
			if !isLocalIdleReset(err, ErrStreamIdle) {
				t.Fatalf("handler Write: %v, want a local CANCEL with ErrStreamIdle", err)
			}
		case <-time.After(rawTimeout):
			t.Fatal("handler still blocked after the reset")
		}
		pingAlive(t, p)
	})

	t.Run("upload blocked on the stream window", func(t *testing.T) {
		cs, p := rawServer(t, idleConfig())
		p.mustWrite(&mspdy.WindowUpdateFrame{StreamId: 0, DeltaWindowSize: 1 << 30})
		settle(t, cs, p, pingFromServer)
		res := goRoundTripResp(t, cs, ctxReq(t, "POST", "https://x/up", io.NopCloser(zeros{}), rawTimeout))
		id := uint32(p.expectSynStream().StreamId)
		// Answer at once, so that the request body's own timer is out of
		// play: only the window the peer never opens is.
		p.mustWrite(synReply(id, replyBlock("200"), false))
		var got int
		p.expect("the stream's 64 KiB window, spent", func(f mspdy.Frame) bool {
			if d, ok := f.(*mspdy.DataFrame); ok {
				got += len(d.Data)
			}
			return got == defaultWindow
		})
		expectIdleReset(t, p, id, time.Now())
		resp := recvResp(t, res)
		defer resp.Body.Close()
		if _, err := resp.Body.Read(make([]byte, 10)); !isLocalIdleReset(err, ErrStreamIdle) {
			t.Fatalf("Read after the reset: %v, want a local CANCEL with ErrStreamIdle", err)
		}
		pingAlive2(t, p)
	})

	t.Run("handler blocked on the session window", func(t *testing.T) {
		t.Parallel() // waits out several timeouts; touches nothing shared
		// The session window is shared: waiting for it says nothing about
		// this stream's peer, so the stream is not reset for it. A peer
		// that returns no session credit for a whole timeout while streams
		// wait for it has wedged every stream on the session, though: the
		// session is closed, not left hanging.
		const size = 256 << 10
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(size))
			for range size / len(chunk64k) {
				if _, err := w.Write(chunk64k); err != nil {
					return
				}
			}
		})
		ss, p := rawClient(t, idleConfig(), h)
		p.mustWrite(&mspdy.SettingsFrame{FlagIdValues: []mspdy.SettingsFlagIdValue{{Id: mspdy.SettingsInitialWindowSize, Value: 1 << 20}}})
		settle(t, ss, p, pingFromClient)
		p.mustWrite(synStream(1, reqBlock("GET", "/"), true))
		start := time.Now()
		got := 0
		var fs []mspdy.Frame
		for f := p.next(); f != nil; f = p.next() {
			if d, ok := f.(*mspdy.DataFrame); ok {
				got += len(d.Data)
			}
			fs = append(fs, f)
		}
		waited := time.Since(start)
		if got != defaultWindow {
			t.Fatalf("%d bytes sent within the session's 64 KiB window", got)
		}
		var ga *mspdy.GoAwayFrame
		for _, f := range fs {
			switch f := f.(type) {
			case *mspdy.RstStreamFrame:
				t.Fatalf("stream reset for waiting on the session window: %+v", f)
			case *mspdy.GoAwayFrame:
				ga = f
			}
		}
		if ga == nil || ga.Status != mspdy.GoAwayProtocolError {
			t.Fatalf("session closed without GOAWAY PROTOCOL_ERROR (frames %v)", fs)
		}
		if waited < idleTimeout {
			t.Fatalf("session closed after %v, before the idle timeout %v", waited, idleTimeout)
		}
		waitDone(t, ss)
		if err := ss.Err(); !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "session window") {
			t.Fatalf("session cause %v", err)
		}
	})

	t.Run("session wait ended by a reset", func(t *testing.T) {
		t.Parallel() // waits out several timeouts; touches nothing shared
		// A stream that waited for session credit and then ended (the
		// peer reset it) waits no more: it is not kept among the waiters,
		// and the session is not closed for credit that nobody waits for.
		werr := make(chan error, 1)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for range 4 {
				if _, err := w.Write(chunk64k); err != nil {
					werr <- err
					return
				}
			}
			werr <- nil
		})
		ss, p := rawClient(t, idleConfig(), h)
		p.mustWrite(&mspdy.SettingsFrame{FlagIdValues: []mspdy.SettingsFlagIdValue{{Id: mspdy.SettingsInitialWindowSize, Value: 1 << 20}}})
		settle(t, ss, p, pingFromClient)
		p.mustWrite(synStream(1, reqBlock("GET", "/"), true))
		got := 0
		p.expect("the session's 64 KiB window, spent", func(f mspdy.Frame) bool {
			if d, ok := f.(*mspdy.DataFrame); ok {
				got += len(d.Data)
			}
			return got == defaultWindow
		})
		waiters := func() int {
			ss.mu.Lock()
			defer ss.mu.Unlock()
			return len(ss.winWaiters)
		}
		waitUntil(t, "the handler waits for session credit", func() bool { return waiters() == 1 })
		p.mustWrite(&mspdy.RstStreamFrame{StreamId: 1, Status: mspdy.Cancel})
		expectFailure(t, werr, "the handler's writes to a reset stream succeeded", "handler still blocked after the reset")
		if n := waiters(); n != 0 {
			t.Fatalf("%d ended streams kept waiting for session credit", n)
		}
		if data := quietFor(t, p, 3*idleTimeout); len(data) != 0 {
			t.Fatalf("DATA %d bytes after the reset", len(data))
		}
		pingAlive(t, p)
	})
}

// pingNoSyn sends a PING from the raw server and waits for its echo,
// failing on any SYN_STREAM that comes first: our client sent none.
func pingNoSyn(t *testing.T, p *rawPeer) {
	t.Helper()
	p.mustWrite(&mspdy.PingFrame{Id: pingFromServer})
	p.expect("PING echo", func(f mspdy.Frame) bool {
		switch f := f.(type) {
		case *mspdy.SynStreamFrame:
			t.Fatalf("unexpected SYN_STREAM %d", f.StreamId)
		case *mspdy.PingFrame:
			return f.Id == pingFromServer
		}
		return false
	})
}

// TestStreamQueueTimeout: when every stream slot is taken (the peer's
// MAX_CONCURRENT_STREAMS or ours, whichever is lower), RoundTrip waits up
// to StreamQueueTimeout for one and then fails with ErrStreamQueueTimeout,
// retryable, without sending anything; a slot that frees in time is
// taken; the stream ids stay consecutive.
func TestStreamQueueTimeout(t *testing.T) {
	const queue = 200 * time.Millisecond
	cases := []struct {
		name    string
		peerMax uint32 // 0: the peer says nothing
		ourMax  uint32 // 0: the default
	}{
		{"peer allows one stream", 1, 0},
		{"we allow one stream", 0, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.StreamQueueTimeout = queue
			cfg.MaxConcurrentStreams = tc.ourMax
			cs, p := rawServer(t, cfg)
			if tc.peerMax != 0 {
				p.mustWrite(&mspdy.SettingsFrame{FlagIdValues: []mspdy.SettingsFlagIdValue{{Id: mspdy.SettingsMaxConcurrentStreams, Value: tc.peerMax}}})
			}
			settle(t, cs, p, pingFromServer)
			first := goRoundTrip(cs, ctxReq(t, "GET", "https://x/first", nil, rawTimeout))
			if id := p.expectSynStream().StreamId; id != 1 {
				t.Fatalf("first stream %d", id)
			}

			start := time.Now()
			_, err := cs.RoundTrip(ctxReq(t, "GET", "https://x/second", nil, rawTimeout))
			d := time.Since(start)
			if !errors.Is(err, ErrStreamQueueTimeout) || !IsRetryable(err) {
				t.Fatalf("RoundTrip with every slot busy: %v (retryable %v), want a retryable ErrStreamQueueTimeout", err, IsRetryable(err))
			}
			if d < queue || d > 3*queue {
				t.Fatalf("RoundTrip failed after %v, want about %v", d, queue)
			}
			pingNoSyn(t, p)

			// A slot that frees while we wait is taken.
			third := goRoundTrip(cs, ctxReq(t, "GET", "https://x/third", nil, rawTimeout))
			time.Sleep(queue / 4)
			p.mustWrite(synReply(1, replyBlock("200"), true))
			if r := recvResult(t, first); r.err != nil {
				t.Fatalf("first: %v", r.err)
			}
			if id := p.expectSynStream().StreamId; id != 3 {
				t.Fatalf("third request on stream %d, want 3 (the second took no id)", id)
			}
			p.mustWrite(synReply(3, replyBlock("200"), true))
			if r := recvResult(t, third); r.err != nil || r.resp.StatusCode != 200 {
				t.Fatalf("third: %+v", r)
			}
		})
	}
}

// TestSendHeaderLimits: a request whose headers the peer would refuse
// fails with ErrHeadersTooLarge before a stream is opened (nothing reaches
// the wire, no id is spent); at exactly the limits it goes out and our
// own server accepts it, so the send-side check and the receive-side one
// agree on where the limits are.
func TestSendHeaderLimits(t *testing.T) {
	lim := testConfig().headerLimits()
	// padTo returns a request whose header block is size bytes and has
	// values values in all.
	padTo := func(t *testing.T, size, values int) *http.Request {
		req := ctxReq(t, "GET", "https://x/limits", nil, rawTimeout)
		for i := range values - 5 { // requestBlock adds five pseudo-headers
			req.Header["X-H"+strconv.Itoa(i)] = []string{""}
		}
		base, n := requestBlockSize(req)
		if n != values {
			t.Fatalf("test bug: %d values, want %d", n, values)
		}
		if base > size {
			t.Fatalf("test bug: %d values need %d bytes, want %d", values, base, size)
		}
		req.Header["X-H0"] = []string{strings.Repeat("p", size-base)}
		if got, _ := requestBlockSize(req); got != size {
			t.Fatalf("test bug: block of %d bytes, want %d", got, size)
		}
		return req
	}
	over := []struct {
		name string
		req  func(t *testing.T) *http.Request
	}{
		{"2000 headers", func(t *testing.T) *http.Request {
			req := ctxReq(t, "GET", "https://x/", nil, rawTimeout)
			for name := range headerCount(2000) {
				req.Header.Set(name, "v")
			}
			return req
		}},
		{"one header over MaxHeaderBytes", func(t *testing.T) *http.Request {
			req := ctxReq(t, "GET", "https://x/", nil, rawTimeout)
			req.Header.Set("X-Big", strings.Repeat("b", lim.bytes))
			return req
		}},
		{"NUL-separated values over MaxHeaderCount", func(t *testing.T) *http.Request {
			req := ctxReq(t, "GET", "https://x/", nil, rawTimeout)
			req.Header.Set("X-Nul", strings.Repeat("\x00", lim.values))
			return req
		}},
		{"one byte over MaxHeaderBytes", func(t *testing.T) *http.Request { return padTo(t, lim.bytes+1, 100) }},
		{"one value over MaxHeaderCount", func(t *testing.T) *http.Request { return padTo(t, 64<<10, lim.values+1) }},
	}
	for _, tc := range over {
		t.Run(tc.name, func(t *testing.T) {
			cs, p := rawServer(t, nil)
			settle(t, cs, p, pingFromServer)
			_, err := cs.RoundTrip(tc.req(t))
			if !errors.Is(err, ErrHeadersTooLarge) {
				t.Fatalf("RoundTrip: %v, want ErrHeadersTooLarge", err)
			}
			pingNoSyn(t, p)
			clientExchange(t, cs, p, newBlockEncoder(t))
		})
	}
	t.Run("at the limits", func(t *testing.T) {
		seen := make(chan int, 2)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seen <- len(r.Header)
		})
		cs, _ := pair(t, h, nil, nil)
		for _, values := range []int{100, lim.values} {
			size := lim.bytes
			if values == lim.values {
				size = 64 << 10
			}
			resp, err := cs.RoundTrip(padTo(t, size, values))
			if err != nil {
				t.Fatalf("RoundTrip at the limits (%d bytes, %d values): %v", size, values, err)
			}
			resp.Body.Close()
			// The handler sees every header but the pseudo-headers.
			if got := <-seen; resp.StatusCode != 200 || got != values-5 {
				t.Fatalf("status %d; the handler saw %d headers, want %d", resp.StatusCode, got, values-5)
			}
		}
	})
}

// TestResponseHeaderLimits: a handler whose response headers the peer
// would refuse has its stream reset (INTERNAL_ERROR) instead; the handler
// is told (ErrHeadersTooLarge from Flush) and the session serves on.
func TestResponseHeaderLimits(t *testing.T) {
	flushErr := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/many" {
			for name := range headerCount(2000) {
				w.Header().Set(name, "v")
			}
			flushErr <- http.NewResponseController(w).Flush()
			return
		}
		okHandler(w, r)
	})
	ss, p := rawClient(t, nil, h)
	p.mustWrite(synStream(1, reqBlock("GET", "/many"), true))
	if rst := p.expectRst(1); rst.Status != mspdy.InternalError {
		t.Fatalf("RST_STREAM status %d, want INTERNAL_ERROR", rst.Status)
	}
	if err := <-flushErr; !errors.Is(err, ErrHeadersTooLarge) {
		t.Fatalf("handler's Flush: %v, want ErrHeadersTooLarge", err)
	}
	pingAlive(t, p)
	p.mustWrite(synStream(3, reqBlock("GET", "/ok"), true))
	rep := p.expect("SYN_REPLY 3", func(f mspdy.Frame) bool {
		r, ok := f.(*mspdy.SynReplyFrame)
		return ok && r.StreamId == 3
	}).(*mspdy.SynReplyFrame)
	if !strings.HasPrefix(rep.Headers.Get(":status"), "200") {
		t.Fatalf("reply %v", rep.Headers)
	}
	if ss.Err() != nil {
		t.Fatal(ss.Err())
	}
}

// TestHeaderDictionary ties our copy of the SPDY/3 dictionary to moby's:
// the zlib header of a block moby's framer compresses names the preset
// dictionary by its Adler-32, which must be that of ours; and blocks it
// compresses, the second referring back into the first, inflate to what
// was sent.
func TestHeaderDictionary(t *testing.T) {
	var buf bytes.Buffer
	fr, err := mspdy.NewFramer(&buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := reqBlock("GET", "/dictionary", "user-agent", "spdy-origin test", "accept-encoding", "gzip,deflate")
	if err := fr.WriteFrame(synStream(1, first, true)); err != nil {
		t.Fatal(err)
	}
	frame1 := bytes.Clone(buf.Bytes())
	buf.Reset()
	second := reqBlock("GET", "/dictionary/2", "user-agent", "spdy-origin test", "x-multi", "a\x00b")
	if err := fr.WriteFrame(synStream(3, second, true)); err != nil {
		t.Fatal(err)
	}
	frame2 := bytes.Clone(buf.Bytes())

	const blockAt = 8 + 10 // control frame header, SYN_STREAM fields
	z := frame1[blockAt:]
	cmf, flg := z[0], z[1]
	if cmf&0x0f != 8 || (uint16(cmf)<<8|uint16(flg))%31 != 0 || flg&0x20 == 0 {
		t.Fatalf("zlib header %#x %#x: not deflate with a preset dictionary", cmf, flg)
	}
	if got, want := binary.BigEndian.Uint32(z[2:6]), adler32.Checksum(headerDictionary); got != want {
		t.Fatalf("moby's DICTID %#08x, adler32 of our headerDictionary %#08x", got, want)
	}

	in := newInflater()
	for i, c := range []struct {
		frame []byte
		want  http.Header
	}{{frame1, first}, {frame2, second}} {
		payload := c.frame[blockAt:]
		block, over, err := in.inflate(bufio.NewReader(bytes.NewReader(payload)), len(payload), testConfig().headerLimits())
		if err != nil || over {
			t.Fatalf("block %d: over %v, %v", i+1, over, err)
		}
		h, err := parseHeaderBlock(block, 1000)
		if err != nil {
			t.Fatalf("block %d: %v", i+1, err)
		}
		want := http.Header{}
		for k, v := range c.want {
			if k[0] != ':' {
				k = http.CanonicalHeaderKey(k)
			}
			want[k] = strings.Split(strings.Join(v, "\x00"), "\x00")
		}
		if !reflect.DeepEqual(h, want) {
			t.Fatalf("block %d inflated to %v, want %v", i+1, h, want)
		}
	}
}

// mobyPeer runs a moby/spdystream Connection (no flow control: it never
// sends SETTINGS or WINDOW_UPDATE, drops ours, and writes whatever it is
// given) on conn, and stops it when the test ends.
func mobyPeer(t *testing.T, conn net.Conn, server bool, h spdystream.StreamHandler) *spdystream.Connection {
	t.Helper()
	c, err := spdystream.NewConnection(conn, server)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		c.Serve(h)
	}()
	t.Cleanup(func() {
		conn.Close()
		select {
		case <-served:
		case <-time.After(rawTimeout):
			t.Error("spdystream Serve did not return after its connection closed")
		}
		// After our GOAWAY, spdystream's shutdown goroutine offers its
		// close error for a second to whoever waits: take it, so that no
		// goroutine outlives the test. (Serve has returned: a shutdown
		// that has not started never will.)
		if goroutineRunning("spdystream.(*Connection).shutdown") {
			c.Wait(2 * time.Second)
		}
	})
	return c
}

// goroutineRunning reports whether a goroutine is in fn.
func goroutineRunning(fn string) bool {
	buf := make([]byte, 1<<20)
	return bytes.Contains(buf[:runtime.Stack(buf, true)], []byte(fn+"("))
}

// writePattern writes n bytes of the pattern stream to a moby stream in
// 32 KiB DATA frames, whatever our windows say, then FIN once fin is
// closed.
func writePattern(s *spdystream.Stream, n int, fin <-chan struct{}) error {
	buf := make([]byte, 32<<10)
	pat := newPattern()
	for n > 0 {
		k := min(n, len(buf))
		pat.Read(buf[:k])
		if err := s.WriteData(buf[:k], false); err != nil {
			return err
		}
		n -= k
	}
	<-fin
	return s.WriteData(nil, true)
}

// closed is a closed channel.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// overrun describes what a stream holds when a peer that ignores windows
// has sent everything before the application read anything.
func overrun(st *stream) (received, window, extra int64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.received, st.recvWin.size, st.extra
}

// TestOldPeerOverrun: moby/spdystream's Connection never sent SETTINGS
// INITIAL_WINDOW_SIZE and ignores windows. A 4 MiB body it sends to a
// reader that reads nothing until the end overruns the stream's window;
// that is tolerated within the session's budget and StreamWindow
// (tolerateOverrunLocked): the window grows by the excess, taken from the
// budget, the body arrives whole, and the budget is whole again after.
// Beyond StreamWindow the stream alone is reset (FLOW_CONTROL_ERROR).
// Both roles: our client downloading, our server receiving an upload.
func TestOldPeerOverrun(t *testing.T) {
	const size = 4 << 20
	cases := []struct {
		name         string
		streamWindow int32
		ok           bool
	}{
		{"within the budget", 0, true},
		{"beyond StreamWindow", 2 << 20, false},
	}
	for _, tc := range cases {
		cfg := func() *Config {
			c := testConfig()
			c.StreamWindow = tc.streamWindow
			c.SessionWindow = 64 << 20
			return c
		}
		// checkHeld checks what the stream holds once everything arrived.
		checkHeld := func(t *testing.T, s *Session, st *stream) {
			received, window, extra := overrun(st)
			t.Logf("received %d bytes unread; window %d, of which %d from the budget (%d left)", received, window, extra, s.budget.Load())
			if received != size || window < size || extra != window-defaultWindow {
				t.Fatalf("received %d, window %d, extra %d: want all %d bytes within a window grown to hold them", received, window, extra, size)
			}
			if got, want := s.budget.Load(), int64(s.cfg.SessionWindow)-extra; got != want {
				t.Fatalf("budget %d, want SessionWindow − %d = %d", got, extra, want)
			}
		}
		t.Run(tc.name+"/our client", func(t *testing.T) {
			ours, theirs := tcpPair(t)
			wrote := make(chan error, 1)
			// FIN waits until the overrun was checked: with both FINs the
			// stream ends, and its budget goes back (see
			// TestFinishedUnreadResponsesWithinBudget).
			fin := make(chan struct{})
			mobyPeer(t, theirs, true, func(s *spdystream.Stream) {
				s.SendReply(http.Header{":status": {"200"}, ":version": {"HTTP/1.1"}, "content-length": {strconv.Itoa(size)}}, false)
				go io.Copy(io.Discard, s)
				go func() { wrote <- writePattern(s, size, fin) }()
			})
			cs, err := NewClient(ours, cfg())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cs.Close(); waitDone(t, cs) })
			resp, err := cs.RoundTrip(ctxReq(t, "GET", "https://moby/", nil, rawTimeout))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			st := resp.Body.(*responseBody).st
			if tc.ok {
				waitUntil(t, "the whole body arrived", func() bool { r, _, _ := overrun(st); return r == size })
				checkHeld(t, cs, st)
			} else {
				// Nothing reads until the overrun was judged: the
				// kernel's socket buffers could otherwise hold the rest
				// while a read makes room for it.
				waitUntil(t, "the stream was reset", func() bool {
					st.mu.Lock()
					defer st.mu.Unlock()
					return st.state.has(stAborted)
				})
			}
			close(fin)
			select {
			case err := <-wrote:
				// (Writing to a stream we reset fails.)
				if err != nil && tc.ok {
					t.Fatalf("spdystream: %v", err)
				}
			case <-time.After(rawTimeout):
				t.Fatal("spdystream did not finish writing")
			}
			if tc.ok {
				b, err := io.ReadAll(resp.Body)
				if err != nil || len(b) != size || !checkPattern(b, 0) {
					t.Fatalf("body: %d bytes, %v, intact %v", len(b), err, checkPattern(b, 0))
				}
			} else {
				b, err := io.ReadAll(resp.Body)
				var se *StreamError
				if !errors.As(err, &se) || se.Status != StatusFlowControlError || se.Remote {
					r, w, x := overrun(st)
					t.Fatalf("reading the body: %d bytes, %v, want a local FLOW_CONTROL_ERROR reset (received %d window %d extra %d state %b)", len(b), err, r, w, x, st.state)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), rawTimeout)
			defer cancel()
			if _, err := cs.Ping(ctx); err != nil {
				t.Fatalf("session after the body: %v", err)
			}
			waitUntil(t, "every stream ended", func() bool { return cs.OpenStreams() == 0 })
			if got := cs.budget.Load(); got != int64(cs.cfg.SessionWindow) {
				t.Fatalf("budget %d after the stream ended, want %d", got, cs.cfg.SessionWindow)
			}
		})
		t.Run(tc.name+"/our server", func(t *testing.T) {
			theirs, ours := tcpPair(t)
			mc := mobyPeer(t, theirs, false, spdystream.NoOpStreamHandler)
			var ss *Session
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				st := r.Body.(*requestBody).st
				deadline := time.Now().Add(rawTimeout)
				for {
					st.mu.Lock()
					done := st.state.has(stRemoteFin) || st.err != nil
					st.mu.Unlock()
					if done {
						break
					}
					if time.Now().After(deadline) {
						t.Error("the request body never ended")
						return
					}
					time.Sleep(time.Millisecond)
				}
				if tc.ok {
					checkHeld(t, ss, st)
				}
				b, err := io.ReadAll(r.Body)
				if err != nil {
					w.WriteHeader(http.StatusBadRequest)
					return
				}
				if !checkPattern(b, 0) {
					t.Error("request body corrupt")
				}
				io.WriteString(w, strconv.Itoa(len(b)))
			})
			var err error
			ss, err = NewServer(ours, cfg(), h)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ss.Close(); waitDone(t, ss); ss.handlersWG.Wait() })
			hdr := http.Header{":method": {"POST"}, ":path": {"/up"}, ":version": {"HTTP/1.1"}, ":host": {"origin"}, ":scheme": {"https"}, "content-length": {strconv.Itoa(size)}}
			s, err := mc.CreateStream(hdr, nil, false)
			if err != nil {
				t.Fatal(err)
			}
			if err := writePattern(s, size, closed); err != nil {
				t.Fatalf("spdystream: %v", err)
			}
			// (Always wait: spdystream's reader blocks handing a reset to
			// a stream nobody waits on.)
			err = s.WaitTimeout(rawTimeout)
			if tc.ok {
				if err != nil {
					t.Fatalf("no reply: %v", err)
				}
				b, _ := io.ReadAll(s)
				if string(b) != strconv.Itoa(size) {
					t.Fatalf("the handler read %q bytes, want %d", b, size)
				}
			} else if !errors.Is(err, spdystream.ErrReset) {
				t.Fatalf("spdystream's stream: %v, want it reset", err)
			}
			waitUntil(t, "every stream ended", func() bool { return ss.OpenStreams() == 0 })
			if got := ss.budget.Load(); got != int64(ss.cfg.SessionWindow) {
				t.Fatalf("budget %d after the stream ended, want %d", got, ss.cfg.SessionWindow)
			}
			if ss.Err() != nil {
				t.Fatal(ss.Err())
			}
		})
	}
}

// TestFinishedUnreadResponsesWithinBudget: Config.SessionWindow and flow.go
// promise that a session buffers at most MaxConcurrentStreams × 64 KiB +
// SessionWindow. A response whose last byte and FIN have arrived but which
// the application has not read yet still buffers its data; the stream has
// ended, though, so its slot and its share of the budget are given back
// (removeStream) and the next stream is granted a full window again. A
// server that fills each window and ends the response (within every
// window we grant) then makes an application that holds responses unread
// (a reverse proxy writing to slow clients) buffer without bound: here
// four responses of 1 MiB against a bound of 1.125 MiB, and as many more
// as are requested. Data a finished stream still buffers must keep
// counting (slot and budget) until it is read or the body is closed, or
// RoundTrip must wait for a slot (ErrStreamQueueTimeout) instead.
func TestFinishedUnreadResponsesWithinBudget(t *testing.T) {
	const responses = 4
	cfg := testConfig()
	cfg.MaxConcurrentStreams = 2
	cfg.StreamWindow, cfg.SessionWindow = 1<<20, 1<<20
	cfg.StreamQueueTimeout = 300 * time.Millisecond
	cs, p := rawServer(t, cfg)
	settle(t, cs, p, pingFromServer)
	bound := int64(cfg.MaxConcurrentStreams)*defaultWindow + int64(cfg.SessionWindow)

	var bodies []*responseBody
	defer func() {
		for _, b := range bodies {
			b.Close()
		}
	}()
	for i := range responses {
		type rt struct {
			resp *http.Response
			err  error
		}
		res := make(chan rt, 1)
		go func() {
			resp, err := cs.RoundTrip(ctxReq(t, "GET", "https://x/"+strconv.Itoa(i), nil, rawTimeout))
			res <- rt{resp, err}
		}()
		// The stream's window as we grant it: 64 KiB, plus the
		// WINDOW_UPDATE queued right behind its SYN_STREAM, if any.
		var id uint32
		window := int64(defaultWindow)
		queued := false
		for id == 0 && !queued {
			select {
			case f := <-p.frames:
				if syn, ok := f.(*mspdy.SynStreamFrame); ok {
					id = uint32(syn.StreamId)
				}
			case r := <-res:
				if !errors.Is(r.err, ErrStreamQueueTimeout) {
					t.Fatalf("response %d: RoundTrip: %v", i, r.err)
				}
				queued = true // waiting for a slot is a way to keep the bound
			case <-time.After(rawTimeout):
				t.Fatal("no SYN_STREAM")
			}
		}
		if queued {
			break
		}
		p.mustWrite(&mspdy.PingFrame{Id: pingFromServer})
		p.expect("PING echo", func(f mspdy.Frame) bool {
			if wu, ok := f.(*mspdy.WindowUpdateFrame); ok && uint32(wu.StreamId) == id {
				window += int64(wu.DeltaWindowSize)
			}
			pf, ok := f.(*mspdy.PingFrame)
			return ok && pf.Id == pingFromServer
		})
		// Fill the window exactly, and end the response.
		p.mustWrite(synReply(id, replyBlock("200", "content-length", strconv.FormatInt(window, 10)), false))
		for left := window; left > 0; left -= maxDataFrame {
			p.mustWrite(dataFrameOf(id, make([]byte, min(left, maxDataFrame)), left <= maxDataFrame))
		}
		var r rt
		select {
		case r = <-res:
		case <-time.After(rawTimeout):
			t.Fatal("RoundTrip did not return")
		}
		if r.err != nil {
			t.Fatalf("response %d: %v", i, r.err)
		}
		b := r.resp.Body.(*responseBody)
		bodies = append(bodies, b)
		waitUntil(t, "the response is all buffered", func() bool {
			b.st.mu.Lock()
			defer b.st.mu.Unlock()
			return int64(b.st.buffered) == window
		})
		t.Logf("response %d: stream %d, %d bytes buffered unread; %d open streams, budget %d", i, id, window, cs.OpenStreams(), cs.budget.Load())
	}
	var buffered int64
	for _, b := range bodies {
		b.st.mu.Lock()
		buffered += int64(b.st.buffered)
		b.st.mu.Unlock()
	}
	if buffered > bound {
		t.Errorf("%d unread responses buffer %d bytes, more than MaxConcurrentStreams × 64 KiB + SessionWindow = %d", len(bodies), buffered, bound)
	}
}

// TestSynReplyForPeerStream: a SYN_REPLY from the peer for a stream the
// peer itself opened (and which is open: its handler runs) is answered
// with RST_STREAM; the stream must then be over on our side too: a reset
// closes the stream at once (SPDY/3, abrupt termination), so no frame may
// follow it on the wire, and the handler's context must end and its
// writes fail. The reset is ours (PROTOCOL_ERROR, resetLocal), not a bare
// INVALID_STREAM queued while the handler goes on.
func TestSynReplyForPeerStream(t *testing.T) {
	release := make(chan struct{}) // never closed before the handler is done: only its context may end its wait
	defer close(release)
	handlerDone := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
			handlerDone <- errors.New("the handler's context did not end")
			return
		case <-r.Context().Done():
		}
		_, err := io.WriteString(w, "late answer")
		if err == nil {
			err = http.NewResponseController(w).Flush()
		}
		handlerDone <- err
	})
	ss, p := rawClient(t, nil, h)
	settle(t, ss, p, pingFromClient)
	p.mustWrite(synStream(1, reqBlock("GET", "/hold"), true))
	p.mustWrite(synReply(1, replyBlock("200"), false))
	if rst := p.expectRst(1); rst.Status != mspdy.ProtocolError {
		t.Fatalf("RST_STREAM status %d, want PROTOCOL_ERROR", rst.Status)
	}
	expectFailure(t, handlerDone, "the handler's write to a stream we reset succeeded", "handler still running: its context did not end")
	p.mustWrite(&mspdy.PingFrame{Id: pingFromClient})
	p.expect("PING echo", func(f mspdy.Frame) bool {
		switch f := f.(type) {
		case *mspdy.SynReplyFrame:
			t.Fatalf("SYN_REPLY for stream %d after we reset it", f.StreamId)
		case *mspdy.DataFrame:
			t.Fatalf("DATA for stream %d after we reset it", f.StreamId)
		case *mspdy.PingFrame:
			return f.Id == pingFromClient
		}
		return false
	})
}
