package spdy

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// hopHeaders are connection-specific headers SPDY forbids in header blocks
// (SPDY/3 section 3.2.1; RFC 9110 section 7.6.1): the session is the
// connection. Upgrade is carried for upgrade requests only (see below).
var hopHeaders = map[string]bool{
	"Connection":        true,
	"Keep-Alive":        true,
	"Proxy-Connection":  true,
	"Transfer-Encoding": true,
	"Te":                true,
	"Trailer":           true,
	"Upgrade":           true,
	"Host":              true,
}

// isUpgrade reports whether h asks to switch protocols (RFC 9110 7.8).
func isUpgrade(h http.Header) bool {
	return h.Get("Upgrade") != "" && headerHasToken(h, "Connection", "upgrade")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h[name] {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}

// requestBlock builds req's SYN_STREAM header block in w. With trailers
// (the peer understands them), the trailers req.Trailer names are declared.
func requestBlock(w *blockWriter, req *http.Request, upgrade, trailers bool) {
	w.reset()
	skip := ""
	if req.ContentLength > 0 {
		skip = "Content-Length" // set below, from the body's length
	}
	w.header(req.Header, upgrade, false, skip)
	if trailers && len(req.Trailer) > 0 {
		w.field("trailer", strings.Join(slices.Sorted(maps.Keys(req.Trailer)), ", "))
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	scheme := req.URL.Scheme
	if scheme == "" {
		scheme = "https"
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	w.field(":method", method)
	w.field(":path", req.URL.RequestURI())
	w.field(":version", "HTTP/1.1")
	w.field(":host", host)
	w.field(":scheme", scheme)
	if req.ContentLength > 0 {
		w.field("content-length", strconv.FormatInt(req.ContentLength, 10))
	}
}

// responseBlock builds a SYN_REPLY header block in w. With trailers, the
// Trailer header goes along and the headers it declares do not: they come
// at the end (trailers.go).
func responseBlock(w *blockWriter, status int, hdr http.Header, trailers bool) {
	w.reset()
	w.header(hdr, status == http.StatusSwitchingProtocols, trailers, "")
	w.field(":status", statusLine(status))
	w.field(":version", "HTTP/1.1")
}

func statusLine(code int) string {
	if text := http.StatusText(code); text != "" {
		return strconv.Itoa(code) + " " + text
	}
	return strconv.Itoa(code)
}

// parseStatus reads ":status", which peers send as "200" or "200 OK".
func parseStatus(v string) (int, error) {
	code := v
	if i := strings.IndexByte(v, ' '); i >= 0 {
		code = v[:i]
	}
	n, err := strconv.Atoi(code)
	if err != nil || n < 100 || n > 999 {
		return 0, fmt.Errorf("%w: bad :status %q", ErrProtocol, v)
	}
	return n, nil
}

// parseVersion reads ":version" ("HTTP/1.1"), defaulting to 1.1.
func parseVersion(v string) (string, int, int) {
	if major, minor, ok := http.ParseHTTPVersion(v); ok {
		return v, major, minor
	}
	return "HTTP/1.1", 1, 1
}

// pseudoHeaders are the SPDY/3 pseudo-headers of requests and responses.
type pseudoHeaders struct {
	method, path, version, host, status string
}

// splitHeaders takes the pseudo-headers out of a received block and returns
// the rest as an http.Header. parseHeaderBlock stored names canonical
// already (pseudo-header names, not being tokens, as they are), and the
// block's map is reused.
func splitHeaders(block http.Header) (pseudoHeaders, http.Header) {
	var p pseudoHeaders
	for k, vv := range block {
		if !strings.HasPrefix(k, ":") {
			continue
		}
		v := ""
		if len(vv) > 0 {
			v = vv[0]
		}
		switch k {
		case ":method":
			p.method = v
		case ":path":
			p.path = v
		case ":version":
			p.version = v
		case ":host":
			p.host = v
		case ":status":
			p.status = v
		}
		delete(block, k)
	}
	if block == nil {
		block = make(http.Header)
	}
	return p, block
}

// contentLength parses a Content-Length header; -1 if absent or invalid.
func contentLength(h http.Header) int64 {
	v := h.Get("Content-Length")
	if v == "" {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}
