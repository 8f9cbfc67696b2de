package spdy

// Benchmarks: our SPDY/3.1 sessions against net/http's HTTP/2 (h2c, prior
// knowledge) as the yardstick, same workloads, same process, both over one
// loopback TCP connection.
//
//	go test -run='^$' -bench=. -benchtime=3s ./spdy/
//
// Fairness: both sides get the same largest flow-control windows (8 MiB per
// stream, 32 MiB per connection, in both directions; ours start smaller and
// grow up to that, see flow.go) and the same largest DATA frame (64 KiB:
// our maxDataFrame; h2's MaxReadFrameSize on both ends, which is what the
// peer may send). The handler and the client loop are shared code; each
// op's allocations are counted for client and server together, since both
// live in this process. The h2 side is net/http's own HTTP/2 with
// unencrypted HTTP/2 as its only protocol, one connection (every workload
// fits in the server's stream limit).
//
// Workloads:
//   - Bulk: one stream at a time downloads bulkSize bytes (MB/s is payload).
//   - Bulk8: 8 streams at once (b.SetParallelism) each download bulk8Size.
//   - Small1: POST 1 KiB, answer 1 KiB, one request at a time.
//   - Small64: the same with 64 requests in flight at once.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
)

const (
	bulkSize    = 16 << 20
	bulk8Size   = 4 << 20
	smallSize   = 1 << 10
	benchWindow = 8 << 20
	benchConnWn = 32 << 20
	benchFrame  = 64 << 10
)

var (
	benchChunk = bytes.Repeat([]byte("spdy-origin-0123"), 4096) // 64 KiB
	benchSmall = bytes.Repeat([]byte("s"), smallSize)
)

func benchHandler(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/bulk":
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		for n > 0 {
			k := min(n, len(benchChunk))
			if _, err := w.Write(benchChunk[:k]); err != nil {
				return
			}
			n -= k
		}
	case "/small":
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(benchSmall)
	}
}

type benchTarget struct {
	rt   http.RoundTripper
	base string // URL prefix
}

func startSPDY(b *testing.B) benchTarget {
	cfg := DefaultConfig()
	cfg.StreamWindow = benchWindow
	cfg.SessionWindow = benchConnWn
	if v, err := strconv.Atoi(os.Getenv("SPDY_BENCH_NOTSENT_LOWAT")); err == nil {
		cfg.NotSentLowat = v // to measure its cost: -1 leaves the kernel's setting
	}
	a, c := tcpPair(b)
	cs, err := NewClient(a, cfg)
	if err != nil {
		b.Fatal(err)
	}
	ss, err := NewServer(c, cfg, http.HandlerFunc(benchHandler))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cs.Close()
		ss.Close()
		<-cs.readerDone
		<-ss.readerDone
		<-cs.writerDone
		<-ss.writerDone
		ss.handlersWG.Wait()
	})
	return benchTarget{rt: cs, base: "https://bench"}
}

func startH2C(b *testing.B) benchTarget {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	h2 := &http.HTTP2Config{
		MaxConcurrentStreams:          1000,
		MaxReadFrameSize:              benchFrame,
		MaxReceiveBufferPerStream:     benchWindow,
		MaxReceiveBufferPerConnection: benchConnWn,
	}
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true) // prior knowledge, no TLS, no HTTP/1
	srv := &http.Server{Handler: http.HandlerFunc(benchHandler), Protocols: &h2c, HTTP2: h2}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	var dials atomic.Int32
	tr := &http.Transport{
		Protocols: &h2c,
		HTTP2:     h2,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	b.Cleanup(func() {
		tr.CloseIdleConnections()
		srv.Close()
		<-served
		if n := dials.Load(); n > 1 {
			b.Logf("h2c used %d connections", n)
		}
	})
	return benchTarget{rt: tr, base: "http://" + ln.Addr().String()}
}

var benchTransports = []struct {
	name  string
	start func(*testing.B) benchTarget
}{
	{"spdy", startSPDY},
	{"h2c", startH2C},
}

// get downloads url and returns how many body bytes came. It returns errors
// rather than failing b: RunParallel bodies may not call b.Fatal.
func (bt benchTarget) get(url string, buf []byte) (int64, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := bt.rt.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var n int64
	for {
		k, err := resp.Body.Read(buf)
		n += int64(k)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func (bt benchTarget) small(buf []byte) error {
	req, err := http.NewRequest("POST", bt.base+"/small", bytes.NewReader(benchSmall))
	if err != nil {
		return err
	}
	resp, err := bt.rt.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n := 0
	for {
		k, err := resp.Body.Read(buf[n:])
		n += k
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if n != smallSize {
		return fmt.Errorf("small response of %d bytes", n)
	}
	return nil
}

func (bt benchTarget) mustGet(b *testing.B, url string, buf []byte, want int64) {
	if n, err := bt.get(url, buf); err != nil || n != want {
		b.Fatalf("got %d of %d bytes: %v", n, want, err)
	}
}

func BenchmarkBulk(b *testing.B) {
	for _, tr := range benchTransports {
		b.Run(tr.name, func(b *testing.B) {
			bt := tr.start(b)
			url := bt.base + "/bulk?n=" + strconv.Itoa(bulkSize)
			buf := make([]byte, 64<<10)
			bt.mustGet(b, url, buf, bulkSize) // warm up windows and connections
			b.SetBytes(bulkSize)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				bt.mustGet(b, url, buf, bulkSize)
			}
		})
	}
}

// parallelism returns the SetParallelism factor giving about n goroutines.
func parallelism(n int) int {
	return max(1, (n+runtime.GOMAXPROCS(0)-1)/runtime.GOMAXPROCS(0))
}

func BenchmarkBulk8(b *testing.B) {
	for _, tr := range benchTransports {
		b.Run(tr.name, func(b *testing.B) {
			bt := tr.start(b)
			url := bt.base + "/bulk?n=" + strconv.Itoa(bulk8Size)
			bt.mustGet(b, url, make([]byte, 64<<10), bulk8Size)
			b.SetBytes(bulk8Size)
			b.ReportAllocs()
			b.SetParallelism(parallelism(8))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, 64<<10)
				for pb.Next() {
					if n, err := bt.get(url, buf); err != nil || n != bulk8Size {
						b.Errorf("got %d bytes: %v", n, err)
						return
					}
				}
			})
		})
	}
}

func BenchmarkSmall1(b *testing.B) {
	for _, tr := range benchTransports {
		b.Run(tr.name, func(b *testing.B) {
			bt := tr.start(b)
			buf := make([]byte, 2*smallSize)
			if err := bt.small(buf); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(2 * smallSize)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := bt.small(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkSmall64(b *testing.B) {
	for _, tr := range benchTransports {
		b.Run(tr.name, func(b *testing.B) {
			bt := tr.start(b)
			if err := bt.small(make([]byte, 2*smallSize)); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(2 * smallSize)
			b.ReportAllocs()
			b.SetParallelism(parallelism(64))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, 2*smallSize)
				for pb.Next() {
					if err := bt.small(buf); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
