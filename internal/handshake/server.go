package handshake

import (
	"fmt"
	"net"
	"strings"
	"time"
)

// AcceptTimeout bounds writing the 200: an agent that does not read it
// must not hold the proxy's goroutine.
const AcceptTimeout = 10 * time.Second

// Accept answers a registration on conn, the connection the proxy's HTTP
// server handed over (hijacked) after checking the PUT: it writes the 200
// with body, in one write and within AcceptTimeout, and clears conn's
// deadlines. From then on conn carries SPDY, read through the reader the
// HTTP server returned with it (it may hold the agent's first frames).
//
// caps are announced in HeaderCapabilities; send them only to an agent that
// announced capabilities itself (an Amahi origin has no use for them).
func Accept(conn net.Conn, body string, caps Capabilities) error {
	_ = conn.SetDeadline(time.Time{})
	_ = conn.SetWriteDeadline(time.Now().Add(AcceptTimeout))
	capLine := ""
	if len(caps) > 0 {
		capLine = HeaderCapabilities + ": " + strings.Join(caps, ", ") + "\r\n"
	}
	answer := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n%sContent-Length: %d\r\n\r\n%s", capLine, len(body), body)
	if _, err := conn.Write([]byte(answer)); err != nil {
		return fmt.Errorf("writing the 200: %w", err)
	}
	if err := conn.SetWriteDeadline(time.Time{}); err != nil {
		return fmt.Errorf("writing the 200: %w", err)
	}
	return nil
}
