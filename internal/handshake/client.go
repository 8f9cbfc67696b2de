package handshake

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// ErrTokenRejected is what a *StatusError unwraps to when spdy_origin
// checked the token and refused it: a 401 with its challenge
// (TokenChallenge). Any other 401 is ErrBlocked.
var ErrTokenRejected = errors.New("token rejected by proxy")

// excerptLen caps the body excerpt a StatusError keeps.
const excerptLen = 256

// Request is one registration, as the agent sends it.
type Request struct {
	// URL is the proxy's registration URL; with an empty path (or "/")
	// the PUT goes to DefaultPath. Its host is the Host header.
	URL *url.URL
	// Token is sent as "Authorization: Bearer <Token>".
	Token string
	// Identity fills the Spdy-Origin-Agent-* headers, the User-Agent
	// (spdy-origin-agent/<Version>) and the one-line body.
	Identity Identity
	// Capabilities are announced in HeaderCapabilities (none: no header).
	Capabilities Capabilities
	// Hosts are the host patterns the agent routes, announced in
	// HeaderHosts (none: no header, meaning every host).
	Hosts []string
}

// Result is an accepted registration.
type Result struct {
	// Body is the 200's body, at most MaxResponseBody bytes; spdy_origin
	// names the session and pool in it.
	Body []byte
	// Reader reads the connection from the first byte after the body: the
	// proxy's first SPDY frames may already be buffered in it, so the SPDY
	// session must read through it (spdy.BufferedConn).
	Reader *bufio.Reader
	// Capabilities are what the proxy announced on its 200.
	Capabilities Capabilities
}

// StatusError is an answer other than 200 to the registration.
type StatusError struct {
	StatusCode int
	Status     string      // the status line's text, e.g. "503 Service Unavailable"
	Header     http.Header // e.g. WWW-Authenticate on a 401
	// RetryAfter is the Retry-After of a 429 or 503 (delay-seconds or an
	// HTTP date); 0 when absent, invalid, or on another status.
	RetryAfter time.Duration
	// Body is a one-line, printable excerpt of the answer's body (at most
	// 256 bytes read), for the agent's log.
	Body string
}

func (e *StatusError) Error() string {
	var b strings.Builder
	switch {
	case e.TokenRejected():
		b.WriteString(ErrTokenRejected.Error())
	case e.RefusedHost() != "":
		fmt.Fprintf(&b, "%s: the token may not serve %s", ErrHostRefused, e.RefusedHost())
	case e.Blocked():
		b.WriteString(ErrBlocked.Error())
	default:
		b.WriteString("proxy refused registration")
	}
	b.WriteString(": HTTP ")
	b.WriteString(e.Status)
	if name := e.challengeHeader(); name != "" && e.Blocked() {
		if c := e.Challenge(); c != "" {
			fmt.Fprintf(&b, " (%s: %s)", name, c)
		} else {
			fmt.Fprintf(&b, " (no %s challenge)", name)
		}
	}
	if e.Body != "" {
		fmt.Fprintf(&b, ": %q", e.Body)
	}
	return b.String()
}

// Unwrap makes spdy_origin's token refusal match ErrTokenRejected, its
// refusal of an announced host ErrHostRefused, and a refusal by anything in
// front of it (any other 401, a 403 without HeaderRefusedHost, a 407)
// ErrBlocked.
func (e *StatusError) Unwrap() error {
	switch {
	case e.TokenRejected():
		return ErrTokenRejected
	case e.RefusedHost() != "":
		return ErrHostRefused
	case e.Blocked():
		return ErrBlocked
	}
	return nil
}

// RegisterURL returns the URL the PUT goes to: proxy, with DefaultPath when
// it has no path.
func RegisterURL(proxy *url.URL) *url.URL {
	u := *proxy
	if u.Path == "" || u.Path == "/" {
		u.Path, u.RawPath = DefaultPath, ""
	}
	return &u
}

// Register sends the registration PUT on conn (TLS already done) and reads
// the answer. On 200 it returns the body and the reader the SPDY session
// must continue from; any other answer is a *StatusError. ctx bounds the
// whole exchange: its deadline becomes conn's, and cancelling it sets conn's
// deadline in the past, so an exchange ctx cut short fails with
// os.ErrDeadlineExceeded (check ctx.Err() to tell why). conn's deadline is
// cleared on success; on error the caller closes conn.
func Register(ctx context.Context, conn net.Conn, r Request) (*Result, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	req, err := r.httpRequest()
	if err != nil {
		return nil, err
	}
	bw := bufio.NewWriter(conn)
	if err := req.Write(bw); err != nil {
		return nil, fmt.Errorf("sending registration to proxy: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("sending registration to proxy: %w", err)
	}

	// The header is read through a limit, which is lifted for the body and
	// the SPDY session behind it (the body has its own).
	lr := &io.LimitedReader{R: conn, N: MaxResponseHeaderBytes}
	br := bufio.NewReaderSize(headerLimit{lr}, 16<<10)
	resp, err := http.ReadResponse(br, req)
	lr.N = math.MaxInt64
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("proxy closed the connection without answering: %w", err)
		}
		return nil, fmt.Errorf("reading registration response: %w", err)
	}
	body, err := readAnswer(resp)
	if err != nil {
		return nil, err
	}
	stop()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("registration: %w", ctx.Err())
	}
	_ = conn.SetDeadline(time.Time{})
	return &Result{Body: body, Reader: br, Capabilities: ReadCapabilities(resp.Header)}, nil
}

// ErrResponseHeaderTooLarge: the answer's status line and header exceed
// MaxResponseHeaderBytes; it is not spdy_origin's.
var ErrResponseHeaderTooLarge = fmt.Errorf("proxy's response header exceeds %d bytes (is this an spdy_origin endpoint?)", MaxResponseHeaderBytes)

// headerLimit reads through an io.LimitedReader, failing with
// ErrResponseHeaderTooLarge, not io.EOF, once the limit is reached.
type headerLimit struct{ lr *io.LimitedReader }

func (h headerLimit) Read(p []byte) (int, error) {
	if h.lr.N <= 0 {
		return 0, ErrResponseHeaderTooLarge
	}
	return h.lr.Read(p)
}

// httpRequest is the PUT as net/http writes it.
func (r Request) httpRequest() (*http.Request, error) {
	id := r.Identity
	body := fmt.Sprintf("spdy-origin-agent %s name=%s instance=%s\n", id.Version, id.Name, id.Instance)
	req, err := http.NewRequest(http.MethodPut, RegisterURL(r.URL).String(), strings.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("building registration request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+r.Token)
	req.Header.Set("User-Agent", "spdy-origin-agent/"+id.Version)
	req.Header.Set("Content-Type", "text/plain; charset=utf-8")
	id.setHeaders(req.Header)
	if len(r.Capabilities) > 0 {
		req.Header.Set(HeaderCapabilities, strings.Join(r.Capabilities, ", "))
	}
	if len(r.Hosts) > 0 {
		req.Header.Set(HeaderHosts, strings.Join(r.Hosts, ", "))
	}
	return req, nil
}

// readAnswer reads the body of a 200, which must be delimited and at most
// MaxResponseBody bytes, or returns the *StatusError of another status.
// Either way the body is read to its end or not at all, so that what
// follows it on the connection stays in the reader.
func readAnswer(resp *http.Response) ([]byte, error) {
	if resp.StatusCode != http.StatusOK {
		excerpt, _ := io.ReadAll(io.LimitReader(resp.Body, excerptLen))
		_ = resp.Body.Close()
		e := &StatusError{
			StatusCode: resp.StatusCode,
			Status:     resp.Status,
			Header:     resp.Header,
			Body:       printable(excerpt),
		}
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
			e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		}
		return nil, e
	}
	// An undelimited body runs until the connection closes: SPDY could never start.
	if resp.ContentLength < 0 && !isChunked(resp.TransferEncoding) {
		_ = resp.Body.Close()
		return nil, errors.New("proxy answered 200 without Content-Length: cannot tell where the SPDY session starts (is this an spdy_origin endpoint?)")
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBody+1))
	if err != nil {
		return nil, fmt.Errorf("reading registration response body: %w", err)
	}
	if len(body) > MaxResponseBody {
		return nil, fmt.Errorf("registration response body exceeds %d bytes; is this an spdy_origin endpoint?", MaxResponseBody)
	}
	// The body is at EOF: closing it consumes nothing more of the reader.
	_ = resp.Body.Close()
	return body, nil
}

func isChunked(te []string) bool {
	return len(te) > 0 && te[0] == "chunked"
}

// printable returns a one-line, valid UTF-8 excerpt of b for logs.
func printable(b []byte) string {
	b = bytes.TrimSpace(b)
	var s strings.Builder
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		b = b[size:]
		switch {
		case r == utf8.RuneError && size <= 1:
			s.WriteRune('?')
		case r == '\n' || r == '\r' || r == '\t':
			s.WriteByte(' ')
		case r < 0x20 || r == 0x7f:
			s.WriteRune('?')
		default:
			s.WriteRune(r)
		}
	}
	return s.String()
}

// parseRetryAfter reads delay-seconds or an HTTP date; 0 when absent or invalid.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil {
		if secs < 0 {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
