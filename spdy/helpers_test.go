package spdy

import (
	"net"
	"net/http"
	"testing"
	"time"
)

// testConfig is DefaultConfig with timers short enough for tests.
func testConfig() *Config {
	c := DefaultConfig()
	c.PingInterval = -1 // keepalive off
	c.WriteTimeout = 5 * time.Second
	return c
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- nil
			return
		}
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	return a, b
}

// pair starts a client session and a server session serving h over loopback
// TCP, and closes both when the test ends.
func pair(t testing.TB, h http.Handler, ccfg, scfg *Config) (*Session, *Session) {
	t.Helper()
	if ccfg == nil {
		ccfg = testConfig()
	}
	if scfg == nil {
		scfg = testConfig()
	}
	a, b := tcpPair(t)
	cs, err := NewClient(a, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := NewServer(b, scfg, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.Close()
		ss.Close()
		<-cs.readerDone
		<-ss.readerDone
		<-cs.writerDone
		<-ss.writerDone
		ss.handlersWG.Wait()
	})
	return cs, ss
}

// blockSize is the size of h as a header block we send and its number of
// values as the receiver counts them (blockWriter).
func blockSize(h http.Header) (size, values int) {
	var w blockWriter
	w.reset()
	for k, vv := range h {
		w.field(k, vv...)
	}
	return len(w.block()), w.values
}

// requestBlockSize is blockSize of the block RoundTrip sends for req.
func requestBlockSize(req *http.Request) (size, values int) {
	var w blockWriter
	requestBlock(&w, req, false, false)
	return len(w.block()), w.values
}
