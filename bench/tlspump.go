//go:build linux

package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// The rp_relay path's relay: the least work a second process with TLS in front of
// it can do. It terminates TLS and pumps bytes both ways between each accepted
// connection and a plain TCP connection of its own to the origin (one origin
// connection per accepted connection; no HTTP parsing; io.Copy's 32 KiB buffers).
// Caddy reaches it as rp_https reaches the origin (HTTPS, HTTP/1.1), so rp_relay
// has the tunnel's topology — two TLS hops, one more process and one more loopback
// hop — without SPDY and without the agent's HTTP work:
//
//	client ══TLS══ Caddy ══TLS══ relay ── origin (plain HTTP/1.1)
//
// It runs as its own process (the bench re-executed with -serve-relay), so the
// scheduler and the CPU accounting see it as they see the agent.

// serveTLSPump accepts TLS connections on ln and pumps each to its own new TCP
// connection to the address to. It returns when ln fails (is closed).
func serveTLSPump(ln net.Listener, to string, tc *tls.Config) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go pumpTLS(tls.Server(c, tc), to)
	}
}

// pumpTLS handshakes with the client c, dials to and copies both directions until
// both have ended. A direction that ends with EOF half-closes its destination (a
// TLS close_notify and FIN towards the client, a FIN towards the origin), so each
// side sees the other's end of stream; one that fails closes both connections.
func pumpTLS(c *tls.Conn, to string) {
	defer c.Close()
	hctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := c.HandshakeContext(hctx)
	cancel()
	if err != nil {
		return
	}
	d, err := net.DialTimeout("tcp", to, 10*time.Second)
	if err != nil {
		return
	}
	defer d.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	pump := func(dst io.Writer, src io.Reader, closeWrite func()) {
		defer wg.Done()
		if _, err := io.Copy(dst, src); err != nil {
			c.Close()
			d.Close()
			return
		}
		closeWrite()
	}
	go pump(d, c, func() { d.(*net.TCPConn).CloseWrite() })
	go pump(c, d, func() {
		c.CloseWrite()                          // close_notify
		c.NetConn().(*net.TCPConn).CloseWrite() // and FIN
	})
	wg.Wait()
}

// runRelayOnly is the -serve-relay mode: the rp_relay path's relay process. It
// serves until killed; it returns only an error.
func runRelayOnly(listen, to, certFile, keyFile string) error {
	if listen == "" || to == "" {
		return errors.New("-serve-relay needs -relay-listen and -relay-to")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	fmt.Println("relay ready")
	return serveTLSPump(ln, to, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
}

// startTLSRelay runs the rp_relay relay (this program re-executed with
// -serve-relay) in front of the plain origin, with the origin's certificate, and
// returns once it completes a TLS handshake; addr is its host:port.
func (b *bench) startTLSRelay(ctx context.Context, certFile, keyFile string) (p *proc, addr string, err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	addr = "127.0.0.1:" + strconv.Itoa(port)
	p, err = startProc("relay", filepath.Join(b.dir, "relay.log"), nil, self, "-serve-relay",
		"-relay-listen", addr, "-relay-to", b.originPlain, "-relay-cert", certFile, "-relay-key", keyFile)
	if err != nil {
		return nil, "", err
	}
	tc, err := b.originTLSConfig()
	if err != nil {
		return nil, "", err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, tc)
		if err == nil {
			c.Close()
			return p, addr, nil
		}
		if p.exited() || time.Now().After(deadline) {
			return nil, "", fmt.Errorf("relay not ready: %v\n%s", err, p.logTail(10))
		}
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
