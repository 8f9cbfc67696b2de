package spdy_test

// Fuzz targets: arbitrary bytes as the peer's side of a connection, to a
// session in each role. Whatever arrives, the session must not panic, must
// end once the input is exhausted and the connection closed, and must leave
// no goroutine behind (including handler and RoundTrip goroutines).
//
//	go test -run='^$' -fuzz=FuzzServerSession -fuzztime=60s ./spdy/
//	go test -run='^$' -fuzz=FuzzClientSession -fuzztime=60s ./spdy/
//
// The seed corpus in testdata/fuzz/Fuzz{Server,Client}Session is written by
// TestGenerateFuzzCorpus (SPDY_GEN_FUZZ_CORPUS=1 go test -run
// TestGenerateFuzzCorpus ./spdy/) from frames encoded with
// github.com/moby/spdystream/spdy: valid conversations, protocol violations,
// truncations and garbage. Plain `go test` runs every seed.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	mspdy "github.com/moby/spdystream/spdy"
	"go.uber.org/goleak"

	"github.com/spdy-origin/spdy-origin/spdy"
)

func fuzzConfig() *spdy.Config {
	cfg := spdy.DefaultConfig()
	cfg.PingInterval = -1 // keepalive off
	cfg.WriteTimeout = 2 * time.Second
	// smallest windows and limits, so that short inputs can overflow them
	cfg.StreamWindow = 64 << 10
	cfg.SessionWindow = 64 << 10
	cfg.MaxConcurrentStreams = 4
	cfg.MaxHeaderBytes = 4 << 10
	cfg.MaxHeaderCount = 32
	cfg.MaxUpgradedStreams = 1
	return cfg
}

// fuzzHandler reads the whole request body and answers with a small body.
var fuzzHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "text/plain")
	w.Write(bytes.Repeat([]byte("r"), 3000))
})

const fuzzWait = 5 * time.Second

// fuzzFeed writes data as the peer, reading (and dropping) everything the
// session sends, then closes the peer's end and waits for s to end.
func fuzzFeed(t *testing.T, s *spdy.Session, peer net.Conn, data []byte) {
	t.Helper()
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		io.Copy(io.Discard, peer)
	}()
	// A session that stops reading must not stall the fuzzer forever; it
	// then has to notice the close below.
	peer.SetWriteDeadline(time.Now().Add(fuzzWait))
	start := time.Now()
	_, err := peer.Write(data) // an error means the session closed its end early: fine
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("session stopped reading its connection for %v (read %d of %d bytes?), stats %+v", time.Since(start), 0, len(data), s.Stats())
	}
	peer.Close()
	select {
	case <-s.Done():
	case <-time.After(fuzzWait):
		t.Fatalf("session still running %v after its input ended (stats %+v)", fuzzWait, s.Stats())
	}
	<-drained
}

func FuzzServerSession(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		ignore := goleak.IgnoreCurrent()
		ours, peer := net.Pipe()
		s, err := spdy.NewServer(ours, fuzzConfig(), fuzzHandler)
		if err != nil {
			t.Fatal(err)
		}
		fuzzFeed(t, s, peer, data)
		s.Close()
		goleak.VerifyNone(t, ignore, goleak.IgnoreAnyFunction("github.com/spdy-origin/spdy-origin/spdy.(*workerPool).work"))
	})
}

func FuzzClientSession(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		ignore := goleak.IgnoreCurrent()
		ours, peer := net.Pipe()
		drainSyn := make(chan struct{})
		s, err := spdy.NewClient(ours, fuzzConfig())
		if err != nil {
			t.Fatal(err)
		}
		// Open stream 1 before the input arrives, so that replies, data and
		// resets in the input meet a live request. The peer's end must be
		// read for the SYN_STREAM to leave.
		go func() {
			defer close(drainSyn)
			buf := make([]byte, 32<<10)
			deadline := time.Now().Add(fuzzWait)
			for s.Stats().OpenStreams == 0 && time.Now().Before(deadline) {
				peer.SetReadDeadline(time.Now().Add(2 * time.Millisecond))
				peer.Read(buf)
			}
			peer.SetReadDeadline(time.Time{})
		}()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		rtDone := make(chan struct{})
		go func() {
			defer close(rtDone)
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://fuzz.test/upload?x=1", strings.NewReader("hello, fuzz"))
			req.ContentLength = int64(len("hello, fuzz"))
			resp, err := s.RoundTrip(req)
			if err != nil {
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}()
		<-drainSyn
		fuzzFeed(t, s, peer, data)
		select {
		case <-rtDone:
		case <-time.After(fuzzWait):
			t.Fatalf("RoundTrip (or reading its body) still blocked %v after the session ended", fuzzWait)
		}
		s.Close()
		goleak.VerifyNone(t, ignore, goleak.IgnoreAnyFunction("github.com/spdy-origin/spdy-origin/spdy.(*workerPool).work"))
	})
}

// ---- seed corpus generator -------------------------------------------------

// fuzzFrames encodes frames with one Framer (one header compression context,
// as on a real connection).
func fuzzFrames(frames ...mspdy.Frame) []byte {
	var buf bytes.Buffer
	fr, err := mspdy.NewFramer(&buf, bytes.NewReader(nil))
	if err != nil {
		panic(err)
	}
	for _, f := range frames {
		if err := fr.WriteFrame(f); err != nil {
			panic(fmt.Sprintf("encode %T: %v", f, err))
		}
	}
	return buf.Bytes()
}

func fuzzReqHeaders(method, path string, extra ...string) http.Header {
	h := http.Header{
		":method":  {method},
		":path":    {path},
		":version": {"HTTP/1.1"},
		":host":    {"origin.test"},
		":scheme":  {"https"},
	}
	for i := 0; i+1 < len(extra); i += 2 {
		h[extra[i]] = append(h[extra[i]], extra[i+1])
	}
	return h
}

func fuzzRespHeaders(status string, extra ...string) http.Header {
	h := http.Header{":status": {status}, ":version": {"HTTP/1.1"}}
	for i := 0; i+1 < len(extra); i += 2 {
		h[extra[i]] = append(h[extra[i]], extra[i+1])
	}
	return h
}

func syn(id uint32, flags mspdy.ControlFlags, h http.Header) *mspdy.SynStreamFrame {
	return &mspdy.SynStreamFrame{StreamId: mspdy.StreamId(id), Headers: h, CFHeader: mspdy.ControlFrameHeader{Flags: flags}}
}

func reply(id uint32, flags mspdy.ControlFlags, h http.Header) *mspdy.SynReplyFrame {
	return &mspdy.SynReplyFrame{StreamId: mspdy.StreamId(id), Headers: h, CFHeader: mspdy.ControlFrameHeader{Flags: flags}}
}

func dataFrame(id uint32, fin bool, n int) *mspdy.DataFrame {
	f := &mspdy.DataFrame{StreamId: mspdy.StreamId(id), Data: bytes.Repeat([]byte("d"), n)}
	if fin {
		f.Flags = mspdy.DataFlagFin
	}
	return f
}

func settings(kv ...uint32) *mspdy.SettingsFrame {
	f := &mspdy.SettingsFrame{}
	for i := 0; i+1 < len(kv); i += 2 {
		f.FlagIdValues = append(f.FlagIdValues, mspdy.SettingsFlagIdValue{Id: mspdy.SettingsId(kv[i]), Value: kv[i+1]})
	}
	return f
}

func wu(id, delta uint32) *mspdy.WindowUpdateFrame {
	return &mspdy.WindowUpdateFrame{StreamId: mspdy.StreamId(id), DeltaWindowSize: delta}
}

func rst(id uint32, status mspdy.RstStreamStatus) *mspdy.RstStreamFrame {
	return &mspdy.RstStreamFrame{StreamId: mspdy.StreamId(id), Status: status}
}

func goaway(last uint32, status mspdy.GoAwayStatus) *mspdy.GoAwayFrame {
	return &mspdy.GoAwayFrame{LastGoodStreamId: mspdy.StreamId(last), Status: status}
}

// rawControl builds a control frame header by hand (for versions, types and
// lengths the Framer will not write).
func rawControl(version, typ uint16, flags uint8, length uint32, payload []byte) []byte {
	b := []byte{byte(0x80 | version>>8), byte(version), byte(typ >> 8), byte(typ), flags, byte(length >> 16), byte(length >> 8), byte(length)}
	return append(b, payload...)
}

func rawData(id uint32, flags uint8, length uint32, payload []byte) []byte {
	b := []byte{byte(id >> 24 & 0x7f), byte(id >> 16), byte(id >> 8), byte(id), flags, byte(length >> 16), byte(length >> 8), byte(length)}
	return append(b, payload...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

const (
	setMaxStreams = uint32(mspdy.SettingsMaxConcurrentStreams)
	setWindow     = uint32(mspdy.SettingsInitialWindowSize)
)

// fuzzServerSeeds are inputs from a client to our server.
func fuzzServerSeeds() map[string][]byte {
	get := fuzzFrames(settings(setWindow, 1<<20, setMaxStreams, 100), wu(0, 1<<20), syn(1, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/", "user-agent", "fuzz")))
	post := fuzzFrames(
		syn(1, 0, fuzzReqHeaders("POST", "/up?a=b", "content-length", "3000", "x-multi", "a\x00b")),
		dataFrame(1, false, 1000), dataFrame(1, false, 1000), wu(1, 5000), wu(0, 5000), dataFrame(1, true, 1000),
	)
	seeds := map[string][]byte{
		"get":  get,
		"post": post,
		"three-streams": fuzzFrames(
			syn(1, 0, fuzzReqHeaders("POST", "/a")), syn(3, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/b")),
			syn(5, 0, fuzzReqHeaders("PUT", "/c")), dataFrame(5, false, 10), dataFrame(1, true, 20), dataFrame(5, true, 0),
			&mspdy.PingFrame{Id: 1}, goaway(0, mspdy.GoAwayOK),
		),
		"ping-settings-goaway": fuzzFrames(&mspdy.PingFrame{Id: 1}, &mspdy.PingFrame{Id: 2}, settings(setWindow, 1000, 1, 5, 5, 7), goaway(0, mspdy.GoAwayOK)),
		"syn-then-rst":         fuzzFrames(syn(1, 0, fuzzReqHeaders("POST", "/")), dataFrame(1, false, 100), rst(1, mspdy.Cancel), dataFrame(1, false, 100)),
		"too-many-streams": fuzzFrames(
			syn(1, 0, fuzzReqHeaders("GET", "/1")), syn(3, 0, fuzzReqHeaders("GET", "/2")), syn(5, 0, fuzzReqHeaders("GET", "/3")),
			syn(7, 0, fuzzReqHeaders("GET", "/4")), syn(9, 0, fuzzReqHeaders("GET", "/5")), syn(11, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/6")),
		),
		"even-id-and-reused-id": fuzzFrames(syn(2, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/")), syn(3, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/")), syn(3, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/")), syn(1, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/"))),
		"data-unknown-stream":   fuzzFrames(dataFrame(7, false, 10), wu(9, 10), rst(11, mspdy.Cancel), syn(1, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/"))),
		"data-after-fin":        fuzzFrames(syn(1, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/")), dataFrame(1, false, 10), dataFrame(1, true, 10)),
		"window-overflow":       fuzzFrames(syn(1, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/")), wu(1, 0x7fffffff), wu(1, 0x7fffffff), wu(0, 0x7fffffff), wu(0, 0x7fffffff)),
		"window-zero-delta":     cat(fuzzFrames(syn(1, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/"))), rawControl(3, 9, 0, 8, []byte{0, 0, 0, 1, 0, 0, 0, 0})),
		"settings-window-shrink": fuzzFrames(
			syn(1, 0, fuzzReqHeaders("POST", "/")), settings(setWindow, 0), dataFrame(1, true, 10), settings(setWindow, 0x7fffffff), settings(setWindow, 0x80000000),
		),
		"flow-control-violation": fuzzFrames(syn(1, 0, fuzzReqHeaders("POST", "/")), dataFrame(1, false, 40000), dataFrame(1, true, 40000)),
		"unidirectional-and-headers": fuzzFrames(
			syn(1, mspdy.ControlFlagUnidirectional, fuzzReqHeaders("GET", "/")),
			syn(3, 0, fuzzReqHeaders("POST", "/")),
			&mspdy.HeadersFrame{StreamId: 3, Headers: http.Header{"x-trailer": {"t"}}},
			&mspdy.HeadersFrame{StreamId: 3, Headers: http.Header{"x-more": {"m"}}, CFHeader: mspdy.ControlFrameHeader{Flags: mspdy.ControlFlagFin}},
		),
		"missing-pseudo-headers": fuzzFrames(
			syn(1, mspdy.ControlFlagFin, http.Header{":method": {"GET"}}),
			syn(3, mspdy.ControlFlagFin, http.Header{"host": {"x"}, "connection": {"close"}}),
			syn(5, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "http://absolute.test/path", "content-length", "-5")),
			syn(7, mspdy.ControlFlagFin, fuzzReqHeaders("CONNECT", "origin.test:443")),
			syn(9, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/", "upgrade", "websocket", "connection", "upgrade")),
		),
		"upgrade":              fuzzFrames(syn(1, 0, fuzzReqHeaders("GET", "/ws", "upgrade", "websocket")), dataFrame(1, false, 50), dataFrame(1, true, 5)),
		"bad-version":          cat(rawControl(2, 4, 0, 4, []byte{0, 0, 0, 0}), get),
		"unknown-type":         cat(rawControl(3, 0xff, 0, 4, []byte{1, 2, 3, 4}), rawControl(3, 5, 0, 0, nil), get),
		"noop-and-credential":  cat(rawControl(3, 10, 0, 6, []byte{0, 1, 0, 0, 0, 0}), get),
		"huge-control-length":  rawControl(3, 1, 0, 0xffffff, []byte{0, 0, 0, 1}),
		"huge-data-length":     cat(fuzzFrames(syn(1, 0, fuzzReqHeaders("POST", "/"))), rawData(1, 0, 0xffffff, []byte("abc"))),
		"short-ping":           cat(rawControl(3, 6, 0, 2, []byte{0, 1}), get),
		"short-rst":            cat(fuzzFrames(syn(1, 0, fuzzReqHeaders("POST", "/"))), rawControl(3, 3, 0, 4, []byte{0, 0, 0, 1})),
		"settings-count-lies":  rawControl(3, 4, 0, 12, []byte{0, 0, 0, 100, 0, 0, 0, 7, 0, 1, 0, 0}),
		"corrupt-header-block": cat(rawControl(3, 1, 1, 30, append([]byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 0}, bytes.Repeat([]byte{0x78}, 20)...))),
		"data-stream-zero":     cat(get, rawData(0, 0, 5, []byte("hello"))),
		"truncated-mid-frame":  post[:len(post)-700],
		"truncated-header":     get[:len(get)/2],
		"garbage":              []byte("GET / HTTP/1.1\r\nHost: not-spdy\r\n\r\n"),
		"empty":                {},
		"only-header":          {0x80, 0x03, 0x00, 0x01},
	}
	// header bomb: many headers beyond MaxHeaderCount, one large value beyond MaxHeaderBytes
	many := fuzzReqHeaders("GET", "/many")
	for i := range 40 {
		many[fmt.Sprintf("x-h%d", i)] = []string{"v"}
	}
	seeds["too-many-headers"] = fuzzFrames(syn(1, mspdy.ControlFlagFin, many), syn(3, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/ok")))
	seeds["huge-header-value"] = fuzzFrames(syn(1, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/big", "x-big", strings.Repeat("b", 8<<10))), syn(3, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/ok")))
	return seeds
}

// fuzzClientSeeds are inputs from a server to our client, which has opened
// stream 1 (a POST with an 11-byte body) before they arrive.
func fuzzClientSeeds() map[string][]byte {
	ok := fuzzFrames(settings(setWindow, 1<<20, setMaxStreams, 100), wu(0, 1<<20), reply(1, 0, fuzzRespHeaders("200 OK", "content-length", "20", "content-type", "text/plain")), dataFrame(1, false, 10), dataFrame(1, true, 10))
	return map[string][]byte{
		"ok":                ok,
		"reply-fin":         fuzzFrames(reply(1, mspdy.ControlFlagFin, fuzzRespHeaders("204"))),
		"status-forms":      fuzzFrames(reply(1, 0, fuzzRespHeaders("200")), dataFrame(1, true, 5)),
		"reset-mid-body":    fuzzFrames(reply(1, 0, fuzzRespHeaders("200", "content-length", "100")), dataFrame(1, false, 50), rst(1, mspdy.InternalError)),
		"refused":           fuzzFrames(rst(1, mspdy.RefusedStream)),
		"goaway-before":     fuzzFrames(goaway(0, mspdy.GoAwayOK)),
		"goaway-after":      fuzzFrames(goaway(1, mspdy.GoAwayInternalError), reply(1, 0, fuzzRespHeaders("200")), dataFrame(1, true, 3)),
		"push-refused":      fuzzFrames(&mspdy.SynStreamFrame{StreamId: 2, AssociatedToStreamId: 1, Headers: fuzzReqHeaders("GET", "/pushed"), CFHeader: mspdy.ControlFrameHeader{Flags: mspdy.ControlFlagUnidirectional}}, dataFrame(2, true, 5), reply(1, mspdy.ControlFlagFin, fuzzRespHeaders("200"))),
		"server-odd-stream": fuzzFrames(syn(3, 0, fuzzReqHeaders("GET", "/")), syn(4, mspdy.ControlFlagFin, fuzzReqHeaders("GET", "/"))),
		"pings":             fuzzFrames(&mspdy.PingFrame{Id: 2}, &mspdy.PingFrame{Id: 1}, &mspdy.PingFrame{Id: 0xffffffff}),
		"double-reply":      fuzzFrames(reply(1, 0, fuzzRespHeaders("200")), reply(1, 0, fuzzRespHeaders("500")), dataFrame(1, true, 1)),
		"data-before-reply": fuzzFrames(dataFrame(1, false, 10), reply(1, 0, fuzzRespHeaders("200")), dataFrame(1, true, 1)),
		"headers-frames": fuzzFrames(reply(1, 0, fuzzRespHeaders("200")), &mspdy.HeadersFrame{StreamId: 1, Headers: http.Header{"x-trailer": {"t"}}},
			&mspdy.HeadersFrame{StreamId: 1, Headers: http.Header{"x-late": {"l"}}, CFHeader: mspdy.ControlFrameHeader{Flags: mspdy.ControlFlagFin}}),
		"reply-unknown-stream": fuzzFrames(reply(3, 0, fuzzRespHeaders("200")), reply(5, mspdy.ControlFlagFin, fuzzRespHeaders("200")), dataFrame(7, true, 3)),
		"bad-status":           fuzzFrames(reply(1, 0, http.Header{":status": {"abc"}, ":version": {"HTTP/1.1"}}), dataFrame(1, true, 1)),
		"no-status":            fuzzFrames(reply(1, mspdy.ControlFlagFin, http.Header{"x": {"y"}})),
		"switching-protocols":  fuzzFrames(reply(1, 0, fuzzRespHeaders("101", "upgrade", "websocket")), dataFrame(1, false, 10), dataFrame(1, true, 10)),
		"window-games": fuzzFrames(settings(setWindow, 0), wu(1, 1), wu(0, 1), settings(setWindow, 1<<30), wu(1, 0x7fffffff), wu(1, 0x7fffffff),
			reply(1, 0, fuzzRespHeaders("200")), dataFrame(1, true, 0)),
		"flow-control-violation": fuzzFrames(reply(1, 0, fuzzRespHeaders("200")), dataFrame(1, false, 40000), dataFrame(1, false, 40000), dataFrame(1, true, 1)),
		"content-length-lies":    fuzzFrames(reply(1, 0, fuzzRespHeaders("200", "content-length", "5")), dataFrame(1, true, 50)),
		"content-length-short":   fuzzFrames(reply(1, 0, fuzzRespHeaders("200", "content-length", "500")), dataFrame(1, true, 50)),
		"hop-by-hop":             fuzzFrames(reply(1, 0, fuzzRespHeaders("200", "connection", "close", "transfer-encoding", "chunked", "keep-alive", "1")), dataFrame(1, true, 2)),
		"bad-version":            cat(rawControl(2, 2, 0, 4, []byte{0, 0, 0, 1}), ok),
		"huge-data-length":       cat(fuzzFrames(reply(1, 0, fuzzRespHeaders("200"))), rawData(1, 0, 0xffffff, []byte("xyz"))),
		"corrupt-header-block":   rawControl(3, 2, 0, 24, append([]byte{0, 0, 0, 1}, bytes.Repeat([]byte{0xff}, 20)...)),
		"truncated":              ok[:len(ok)-5],
		"garbage":                []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"),
		"empty":                  {},
	}
}

// TestGenerateFuzzCorpus rewrites testdata/fuzz/Fuzz*Session from the seeds
// above. It only runs with SPDY_GEN_FUZZ_CORPUS=1.
func TestGenerateFuzzCorpus(t *testing.T) {
	if os.Getenv("SPDY_GEN_FUZZ_CORPUS") != "1" {
		t.Skip("set SPDY_GEN_FUZZ_CORPUS=1 to regenerate testdata/fuzz")
	}
	for target, seeds := range map[string]map[string][]byte{
		"FuzzServerSession": fuzzServerSeeds(),
		"FuzzClientSession": fuzzClientSeeds(),
	} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range seeds {
			content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if err := os.WriteFile(filepath.Join(dir, "seed-"+name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("%s: %d seeds", dir, len(seeds))
	}
}

// TestFuzzCorpusPresent guards against the corpus going missing: the fuzz
// targets would then silently run nothing in plain `go test`. (Contents are
// not compared: header blocks are encoded from maps, in random order.)
func TestFuzzCorpusPresent(t *testing.T) {
	for target, seeds := range map[string]map[string][]byte{
		"FuzzServerSession": fuzzServerSeeds(),
		"FuzzClientSession": fuzzClientSeeds(),
	} {
		for name := range seeds {
			got, err := os.ReadFile(filepath.Join("testdata", "fuzz", target, "seed-"+name))
			if err != nil {
				t.Errorf("%v (regenerate with SPDY_GEN_FUZZ_CORPUS=1 go test -run TestGenerateFuzzCorpus ./spdy/)", err)
				continue
			}
			if !bytes.HasPrefix(got, []byte("go test fuzz v1\n[]byte(")) {
				t.Errorf("%s/seed-%s is not a fuzz corpus file", target, name)
			}
		}
	}
}

// ---- header blocks ---------------------------------------------------------

// Header block parsers, fuzzed alone (through the internals export_test.go
// exposes): the inflater, which bounds what a block costs, and the parser
// of inflated blocks.
//
//	go test -run='^$' -fuzz=FuzzHeaderBlock -fuzztime=60s ./spdy/
//	go test -run='^$' -fuzz=FuzzParseHeaderBlock -fuzztime=60s ./spdy/

const (
	fuzzMaxBytes  = 4 << 10
	fuzzMaxValues = 32
)

// rawBlock encodes an uncompressed header block from name/value pairs, as
// given (no lowercasing, duplicates kept), for seeds.
func rawBlock(kv ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(kv)/2))
	for _, s := range kv {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}

// mobyBlocks compresses each header block with moby's framer, in one
// context, and returns the blocks' payloads (SYN_REPLY frames: the block
// follows the stream id).
func mobyBlocks(t testing.TB, hs ...http.Header) [][]byte {
	var buf bytes.Buffer
	fr, err := mspdy.NewFramer(&buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, h := range hs {
		buf.Reset()
		if err := fr.WriteFrame(&mspdy.SynReplyFrame{StreamId: 1, Headers: h}); err != nil {
			t.Fatal(err)
		}
		out = append(out, bytes.Clone(buf.Bytes()[8+4:]))
	}
	return out
}

// headersFrom derives a header map from arbitrary bytes: a name from each
// line's first bytes (lowercase letters), the line as the value, its NULs
// separating several values.
func headersFrom(data []byte) http.Header {
	h := http.Header{}
	for i, line := range bytes.SplitN(data, []byte{'\n'}, 40) {
		name := []byte("x-")
		for _, c := range line[:min(len(line), 6)] {
			name = append(name, 'a'+c%26)
		}
		name = append(name, byte('a'+i%26))
		h[string(name)] = strings.Split(string(line), "\x00")
	}
	return h
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// canonical is h as the parser returns it: canonical names.
func canonical(h http.Header) http.Header {
	out := http.Header{}
	for k, v := range h {
		out[http.CanonicalHeaderKey(k)] = v
	}
	return out
}

func FuzzHeaderBlock(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("garbage, not zlib"))
	blocks := mobyBlocks(f,
		fuzzRespHeaders("200 OK", "content-type", "text/plain", "x-multi", "a\x00b"),
		http.Header{"x-nul": {strings.Repeat("\x00", 100)}},
		http.Header{"x-big": {strings.Repeat("b", 64<<10)}},
	)
	for _, p := range blocks {
		f.Add(p) // the first carries the zlib header; the others would follow it
	}
	f.Add(blocks[0][:6])  // the zlib header alone
	f.Add(blocks[0][:20]) // truncated
	f.Fuzz(func(t *testing.T, data []byte) {
		// Arbitrary bytes as a frame's block, twice in one context: no
		// panic; nothing kept beyond the limit; what is kept and parses
		// holds no more values than allowed; a refusal names its status.
		in := spdy.NewBlockInflater(fuzzMaxBytes, fuzzMaxValues)
		for range 2 {
			h, kept, over, perr, err := in.Block(data)
			if err != nil {
				if !errors.Is(err, spdy.ErrProtocol) {
					t.Fatalf("session error %v, not a protocol error", err)
				}
				break
			}
			if kept > fuzzMaxBytes {
				t.Fatalf("kept %d bytes of a block, limit %d", kept, fuzzMaxBytes)
			}
			if over && h != nil {
				t.Fatal("a block over the limit was parsed")
			}
			if perr != nil {
				if st, ok := spdy.RefusalStatus(perr); !ok || st != spdy.StatusProtocolError && st != spdy.StatusFrameTooLarge {
					t.Fatalf("block refused with %v (status %v)", perr, st)
				}
			}
			if h != nil {
				if _, values := spdy.BlockSize(h); values > fuzzMaxValues {
					t.Fatalf("%d values kept, limit %d", values, fuzzMaxValues)
				}
			}
		}

		// Valid blocks built from the input, compressed by moby's framer
		// in one context, inflate to what was sent.
		h1 := headersFrom(data)
		h2 := headersFrom(append([]byte("second\n"), data...))
		in = spdy.NewBlockInflater(1<<20, 1<<16)
		for i, p := range mobyBlocks(t, h1, h2) {
			want := canonical([]http.Header{h1, h2}[i])
			got, _, over, perr, err := in.Block(p)
			if err != nil || over || perr != nil {
				t.Fatalf("block %d: over %v, refused %v, error %v", i+1, over, perr, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("block %d inflated to %q, want %q", i+1, got, want)
			}
		}
	})
}

func FuzzParseHeaderBlock(f *testing.F) {
	f.Add([]byte{})
	f.Add(rawBlock(":status", "200 OK", ":version", "HTTP/1.1", "content-type", "text/html"))
	f.Add(rawBlock("x-multi", "a\x00b\x00c", "x-empty", ""))
	f.Add(rawBlock("x-nul", strings.Repeat("\x00", 40)))
	f.Add(rawBlock("X-Upper", "v"))
	f.Add(rawBlock("x-dup", "1", "x-dup", "2"))
	f.Add(rawBlock("", "empty name"))
	f.Add(append(rawBlock("x-trailing", "v"), 0))
	f.Add([]byte{0, 0, 0, 9, 0, 0, 0, 1, 'a'}) // count beyond the bytes
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := spdy.ParseHeaderBlock(data, fuzzMaxValues)
		if err != nil {
			if st, ok := spdy.RefusalStatus(err); !ok || st != spdy.StatusProtocolError && st != spdy.StatusFrameTooLarge {
				t.Fatalf("refused with %v (status %v)", err, st)
			}
			return
		}
		// What parses is what the send side counts: the same size to the
		// byte, and values within the limit.
		size, values := spdy.BlockSize(h)
		if size != len(data) {
			t.Fatalf("block of %d bytes parsed to headers the send side counts as %d", len(data), size)
		}
		if values > fuzzMaxValues {
			t.Fatalf("%d values, limit %d", values, fuzzMaxValues)
		}
		// The trailers' bound counts the same, but for the header count.
		if ts, tv := spdy.HeaderSize(h); ts != size-4 || tv != values {
			t.Fatalf("headerSize %d bytes, %d values; the send side counts %d-4, %d", ts, tv, size, values)
		}
		// Encoded again (names lowercase, values NUL-joined), it parses
		// to the same headers. (Only ASCII letters are lowered: names on
		// the wire may hold any other byte, which strings.ToLower would
		// rewrite.)
		var kv []string
		for k, v := range h {
			kv = append(kv, asciiLower(k), strings.Join(v, "\x00"))
		}
		again, err := spdy.ParseHeaderBlock(rawBlock(kv...), fuzzMaxValues)
		if err != nil || !reflect.DeepEqual(again, h) {
			t.Fatalf("re-encoded block parsed to %q, %v; want %q", again, err, h)
		}
	})
}
