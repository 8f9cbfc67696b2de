package spdy

// Benchmarks: our SPDY/3.1 sessions against golang.org/x/net/http2 (h2c,
// prior knowledge) as the yardstick, same workloads, same process, both
// over one loopback TCP connection.
//
//	go test -run='^$' -bench=. -benchtime=3s ./spdy/
//
// Fairness: both sides get the same flow-control windows (8 MiB per stream,
// 32 MiB per connection, in both directions) and the same largest DATA
// frame (64 KiB: our maxDataFrame; h2's MaxReadFrameSize on both ends,
// which is what the peer may send). The handler and the client loop are
// shared code; each op's allocations are counted for client and server
// together, since both live in this process. The h2 client is an
// http2.Transport with AllowHTTP and a DialTLSContext that dials plain TCP
// (it opens exactly one connection: every workload fits in the server's
// stream limit); the h2 server is http2.Server.ServeConn on the accepted
// connection.
//
// Workloads:
//   - Bulk: one stream at a time downloads bulkSize bytes (MB/s is payload).
//   - Bulk8: 8 streams at once (b.SetParallelism) each download bulk8Size.
//   - Small1: POST 1 KiB, answer 1 KiB, one request at a time.
//   - Small64: the same with 64 requests in flight at once.

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/net/http2"
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
	srv := &http2.Server{
		MaxConcurrentStreams:         1000,
		MaxReadFrameSize:             benchFrame,
		MaxUploadBufferPerStream:     benchWindow,
		MaxUploadBufferPerConnection: benchConnWn,
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { srv.ServeConn(c, &http2.ServeConnOpts{Handler: http.HandlerFunc(benchHandler)}) })
		}
	})
	t1 := &http.Transport{HTTP2: &http.HTTP2Config{
		MaxReadFrameSize:              benchFrame,
		MaxReceiveBufferPerStream:     benchWindow,
		MaxReceiveBufferPerConnection: benchConnWn,
	}}
	tr, err := http2.ConfigureTransports(t1)
	if err != nil {
		b.Fatal(err)
	}
	// ConfigureTransports gives the http2.Transport the windows above (via
	// t1.HTTP2) but a pool that never dials (t1 would); with ConnPool reset
	// it dials through DialTLSContext like a standalone http2.Transport.
	tr.ConnPool = nil
	var dials atomic.Int32
	tr.AllowHTTP = true
	tr.DialTLSContext = func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	b.Cleanup(func() {
		tr.CloseIdleConnections()
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
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
