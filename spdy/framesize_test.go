package spdy

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	mspdy "github.com/moby/spdystream/spdy"
)

// tlsRecord is the plaintext TLS puts in one record at most.
const tlsRecord = 16 << 10

// TestDataFramesFillTLSRecords: a large response goes out in frames of
// MaxDataFrame, which with their header are four full TLS records. Frames
// of 64 KiB took a fifth record of 8 bytes, and a write of its own, each.
func TestDataFramesFillTLSRecords(t *testing.T) {
	const size = 1 << 20
	body := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	_, p := rawClient(t, testConfig(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(body)
	}))
	openWindows(p)
	p.mustWrite(synStream(1, reqBlock("GET", "/"), true))
	got := 0
	for got < size {
		f := p.expect("DATA", func(f mspdy.Frame) bool { _, ok := f.(*mspdy.DataFrame); return ok })
		d := f.(*mspdy.DataFrame)
		got += len(d.Data)
		if got < size && (len(d.Data) != MaxDataFrame || (len(d.Data)+frameHeaderLen)%tlsRecord != 0) {
			t.Fatalf("a DATA frame of %d bytes inside a %d-byte body: want %d, %d full TLS records with its header", len(d.Data), size, MaxDataFrame, (MaxDataFrame+frameHeaderLen)/tlsRecord)
		}
	}
	if got != size {
		t.Fatalf("%d bytes, want %d", got, size)
	}
}

// TestWriteOf64KiBIsOneFrame: a handler that writes 64 KiB at a time (a
// common buffer size) gets one frame per write, not a frame of
// MaxDataFrame and one of 8 bytes.
func TestWriteOf64KiBIsOneFrame(t *testing.T) {
	const size, piece = 1 << 20, 64 << 10
	body := bytes.Repeat([]byte("fedcba9876543210"), size/16)
	_, p := rawClient(t, testConfig(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		for off := 0; off < size; off += piece {
			w.Write(body[off : off+piece])
		}
	}))
	openWindows(p)
	p.mustWrite(synStream(1, reqBlock("GET", "/"), true))
	got := 0
	for got < size {
		f := p.expect("DATA", func(f mspdy.Frame) bool { _, ok := f.(*mspdy.DataFrame); return ok })
		d := f.(*mspdy.DataFrame)
		if len(d.Data) != piece {
			t.Fatalf("a DATA frame of %d bytes after %d: want one frame of %d per write", len(d.Data), got, piece)
		}
		got += len(d.Data)
	}
}

// openWindows has the raw peer give our session 16 MiB of credit per
// stream and for the session, so that window updates do not cut frames.
func openWindows(p *rawPeer) {
	p.mustWrite(&mspdy.SettingsFrame{FlagIdValues: []mspdy.SettingsFlagIdValue{{Id: mspdy.SettingsInitialWindowSize, Value: 1 << 24}}})
	p.mustWrite(&mspdy.WindowUpdateFrame{StreamId: 0, DeltaWindowSize: 1 << 24})
}

// recordReader gives at most one TLS record's worth per Read, as a
// client's body read from TLS does.
type recordReader struct{ r io.Reader }

func (r recordReader) Read(p []byte) (int, error) {
	return r.r.Read(p[:min(len(p), tlsRecord)])
}

// TestUploadFramesAreFull: a request body of known length, at least
// bulkBody, goes in full frames of MaxDataFrame, though each read gives
// 16 KiB; a body of unknown length goes on as each read gives it, so that
// a stream waiting for an answer to what it sent is not held back.
func TestUploadFramesAreFull(t *testing.T) {
	for _, tc := range []struct {
		name     string
		declared bool
		want     int // frame size, but for the last
	}{
		{"declared upload", true, MaxDataFrame},
		{"unknown length", false, tlsRecord},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const size = 2 << 20
			cs, p := rawServer(t, testConfig())
			openWindows(p)
			body := bytes.Repeat([]byte("x"), size)
			req := newReq(t, "POST", "http://x/up", recordReader{bytes.NewReader(body)})
			if tc.declared {
				req.ContentLength = size
				req.Header.Set("Content-Length", strconv.Itoa(size))
			} else {
				req.ContentLength = -1
			}
			res := goRoundTrip(cs, req)
			syn := p.expectSynStream()
			got := 0
			for got < size {
				f := p.expect("DATA", func(f mspdy.Frame) bool { _, ok := f.(*mspdy.DataFrame); return ok })
				d := f.(*mspdy.DataFrame)
				got += len(d.Data)
				if got < size && len(d.Data) != tc.want {
					t.Fatalf("a DATA frame of %d bytes after %d of %d: want %d", len(d.Data), got-len(d.Data), size, tc.want)
				}
			}
			p.mustWrite(synReply(uint32(syn.StreamId), replyBlock("200"), true))
			if r := recvResult(t, res); r.err != nil {
				t.Fatal(r.err)
			}
		})
	}
}

// slowReader gives one TLS record's worth every gap.
type slowReader struct {
	r   io.Reader
	gap time.Duration
}

func (r slowReader) Read(p []byte) (int, error) {
	time.Sleep(r.gap)
	return r.r.Read(p[:min(len(p), tlsRecord)])
}

// TestSlowUploadIsNotIdle: an upload filling its frames from several reads
// keeps the request body's idle watchdog quiet as long as each read brings
// bytes, though a frame takes longer to fill than the timeout.
func TestSlowUploadIsNotIdle(t *testing.T) {
	cfg := idleConfig()
	gap := cfg.StreamIdleTimeout / 2
	cs, p := rawServer(t, cfg)
	openWindows(p)
	size := bulkBody
	body := bytes.Repeat([]byte("y"), size)
	// The first frame takes four reads, two timeouts; the rest come at once.
	slow := slowReader{bytes.NewReader(body[:MaxDataFrame]), gap}
	req := newReq(t, "POST", "http://x/up", recordReader{io.MultiReader(slow, bytes.NewReader(body[MaxDataFrame:]))})
	req.ContentLength = int64(size)
	req.Header.Set("Content-Length", strconv.Itoa(size))
	res := goRoundTrip(cs, req)
	syn := p.expectSynStream()
	got := 0
	for got < size {
		f := p.expect("DATA", func(f mspdy.Frame) bool {
			if r, ok := f.(*mspdy.RstStreamFrame); ok {
				t.Fatalf("stream reset (%v) while its body was still coming, %d bytes in", r.Status, got)
			}
			_, ok := f.(*mspdy.DataFrame)
			return ok
		})
		got += len(f.(*mspdy.DataFrame).Data)
	}
	p.mustWrite(synReply(uint32(syn.StreamId), replyBlock("200"), true))
	if r := recvResult(t, res); r.err != nil {
		t.Fatal(r.err)
	}
}

// TestFullFrameFillsTailFirst: a frame of MaxDataFrame is kept in the
// buffer it was read into only when the stream's last buffer is (nearly)
// full; after a small frame it fills that buffer's tail first, so that a
// stream holds at most its buffered bytes, one buffer and ownSlack per
// buffer, whatever the mix of frame sizes.
func TestFullFrameFillsTailFirst(t *testing.T) {
	cs, p := rawServer(t, testConfig())
	res := goRoundTripResp(t, cs, newReq(t, "GET", "http://x/", nil))
	id := uint32(p.expectSynStream().StreamId)
	p.mustWrite(synReply(id, replyBlock("200"), false))
	resp := recvResp(t, res)
	defer resp.Body.Close()
	p.mustWrite(dataFrameOf(id, []byte("head"), false))
	p.mustWrite(dataFrameOf(id, bytes.Repeat([]byte("z"), MaxDataFrame), false))
	cs.mu.Lock()
	st := cs.streams[id]
	cs.mu.Unlock()
	waitUntil(t, "both frames buffered", func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.buffered == MaxDataFrame+4
	})
	st.mu.Lock()
	var lens []int
	for _, c := range st.chunks {
		lens = append(lens, len(c))
	}
	st.mu.Unlock()
	if len(lens) != 1 || lens[0] != MaxDataFrame+4 {
		t.Fatalf("stream buffers %v after frames of 4 and %d bytes; want one of %d", lens, MaxDataFrame, MaxDataFrame+4)
	}
	got, err := io.ReadAll(io.LimitReader(resp.Body, MaxDataFrame+4))
	if err != nil || string(got[:4]) != "head" || bytes.Count(got[4:], []byte("z")) != MaxDataFrame {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
}
