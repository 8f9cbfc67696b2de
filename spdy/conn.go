package spdy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"sync"
)

type tlsState = tls.ConnectionState

type connectionStater interface {
	ConnectionState() tls.ConnectionState
}

// connTLSState returns a function giving conn's TLS state, or nil for a
// plain connection. The state is read once, on first use.
func connTLSState(conn net.Conn) func() *tlsState {
	cs, ok := conn.(connectionStater)
	if !ok {
		return func() *tlsState { return nil }
	}
	return sync.OnceValue(func() *tlsState {
		st := cs.ConnectionState()
		if !st.HandshakeComplete {
			return nil
		}
		return &st
	})
}

// BufferedConn returns a net.Conn that first yields the bytes already
// buffered in br, then reads from c. Use it to hand a connection to
// NewClient or NewServer after reading an HTTP handshake through br: SPDY
// frames the peer sent right behind the handshake are in br, not in c.
// If c reports a TLS state (as *tls.Conn does), so does the result.
func BufferedConn(c net.Conn, br *bufio.Reader) net.Conn {
	if br == nil || br.Buffered() == 0 {
		return c
	}
	pending, _ := br.Peek(br.Buffered())
	r := io.MultiReader(bytes.NewReader(bytes.Clone(pending)), c)
	if cs, ok := c.(connectionStater); ok {
		return &bufferedTLSConn{bufferedConn{Conn: c, r: r}, cs}
	}
	return &bufferedConn{Conn: c, r: r}
}

type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// NetConn returns the connection c reads through to, as tls.Conn does.
func (c *bufferedConn) NetConn() net.Conn { return c.Conn }

// tcpConnOf returns the TCP connection under c, through TLS and wrappers
// that offer NetConn, or nil.
func tcpConnOf(c net.Conn) *net.TCPConn {
	for range 8 {
		switch x := c.(type) {
		case *net.TCPConn:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}

type bufferedTLSConn struct {
	bufferedConn
	cs connectionStater
}

func (c *bufferedTLSConn) ConnectionState() tls.ConnectionState { return c.cs.ConnectionState() }
