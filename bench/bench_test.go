package main

import (
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

func TestPatternRoundTrip(t *testing.T) {
	for _, n := range []int64{0, 1, patternSize - 1, patternSize, 3*patternSize + 17} {
		var c patternChecker
		if _, err := io.CopyBuffer(&c, &patternReader{n: n}, make([]byte, 4093)); err != nil {
			t.Fatal(err)
		}
		if err := c.err(n); err != nil {
			t.Errorf("n=%d: %v", n, err)
		}
		if n > 0 {
			if err := c.err(n + 1); err == nil {
				t.Errorf("n=%d: a short body passed the check", n)
			}
		}
	}
}

func TestPatternCheckerFindsCorruption(t *testing.T) {
	b, _ := io.ReadAll(&patternReader{n: 2*patternSize + 100})
	b[patternSize+5] ^= 1
	var c patternChecker
	c.Write(b[:1000])
	c.Write(b[1000:])
	err := c.err(int64(len(b)))
	if err == nil || !strings.Contains(err.Error(), "1048581") {
		t.Fatalf("err = %v, want a mismatch at byte 1048581", err)
	}
}

func TestProcReaders(t *testing.T) {
	kb, err := rssKiB(os.Getpid())
	if err != nil || kb <= 0 {
		t.Fatalf("rssKiB = %d, %v", kb, err)
	}
	if _, err := cpuTime(os.Getpid()); err != nil {
		t.Fatal(err)
	}
}

func TestCaddyfile(t *testing.T) {
	got := caddyfile(2019, 8080, []site{{port: 8443, hosts: []string{"localhost", "10.0.0.1"}, body: "spdy_origin {\n\ttoken x\n}"}})
	for _, want := range []string{"admin 127.0.0.1:2019", "http_port 8080", "https://localhost:8443, https://10.0.0.1:8443 {", "\ttls internal", "\tspdy_origin {\n\t\ttoken x\n\t}"} {
		if !strings.Contains(got, want) {
			t.Errorf("Caddyfile lacks %q:\n%s", want, got)
		}
	}
}

// echoServer echoes every connection until EOF, then half-closes its side.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().String()
}

func TestDelayRelayDelaysEachDirection(t *testing.T) {
	const delay = 20 * time.Millisecond
	r, err := startDelayRelay(echoServer(t), delay, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	c, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4)
	for i := 0; i < 3; i++ {
		t0 := time.Now()
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		// One round trip is two delays; the first also pays the connect's round trip.
		if el := time.Since(t0); el < 2*delay {
			t.Fatalf("round trip %d took %s, want ≥ %s", i, el, 2*delay)
		}
		if string(buf) != "ping" {
			t.Fatalf("got %q", buf)
		}
	}
}

func TestDelayRelayForwardsBulkAndHalfClose(t *testing.T) {
	// A queue smaller than the transfer, so the bound is exercised.
	r, err := startDelayRelay(echoServer(t), 5*time.Millisecond, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	c, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 6*patternSize + 12345
	werr := make(chan error, 1)
	go func() {
		_, err := io.CopyBuffer(c, &patternReader{n: n}, make([]byte, 7000))
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	var chk patternChecker
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	// io.Copy returns at EOF: the echo server saw our FIN through the relay and sent
	// its own back.
	if _, err := io.Copy(&chk, c); err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if err := chk.err(n); err != nil {
		t.Fatal(err)
	}
}

func TestRelayQueueBlocksWhenFull(t *testing.T) {
	q := &relayQueue{limit: 100}
	q.cond.L = &q.mu
	if !q.waitRoom(60) {
		t.Fatal("empty queue has no room")
	}
	q.push(relayChunk{data: make([]byte, 60), at: time.Now()})
	got := make(chan bool, 1)
	go func() { got <- q.waitRoom(60) }()
	select {
	case <-got:
		t.Fatal("waitRoom returned with 60 of 100 bytes queued and 60 more wanted")
	case <-time.After(50 * time.Millisecond):
	}
	c, _ := q.front()
	if len(q.popDue(c.at)) != 1 {
		t.Fatal("popDue did not return the due chunk")
	}
	q.release(60)
	if ok := <-got; !ok {
		t.Fatal("waitRoom reported a dead writer")
	}
	q.fail()
	if q.waitRoom(1 << 20) {
		t.Fatal("waitRoom after fail reported room")
	}
	if _, ok := q.front(); ok {
		t.Fatal("front after fail returned a chunk")
	}
}

func TestDelayRelayCloseEndsConnections(t *testing.T) {
	r, err := startDelayRelay(echoServer(t), time.Millisecond, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	r.close() // waits for every pump
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(b); err == nil {
		t.Fatal("read after close succeeded")
	}
}
