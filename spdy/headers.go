package spdy

import (
	"fmt"
	"maps"
	"net/http"
	"net/textproto"
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

// copyHeaders adds h to dst with lowercase names, leaving out hop-by-hop
// headers and those the Connection header names. With keepUpgrade the
// Upgrade header survives: it is what makes a stream an upgrade request.
// "TE: trailers", the one TE value HTTP/2 allows (RFC 9113 8.2.2), is kept:
// gRPC servers ask for it. With trailers, the Trailer header that declares
// them is kept too (trailers.go).
func copyHeaders(dst, h http.Header, keepUpgrade, trailers bool) {
	var named map[string]bool
	for _, v := range h["Connection"] {
		for f := range strings.SplitSeq(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				if named == nil {
					named = make(map[string]bool)
				}
				named[textproto.CanonicalMIMEHeaderKey(f)] = true
			}
		}
	}
	for k, vv := range h {
		switch {
		case len(vv) == 0:
		case k == "Te":
			if headerHasToken(h, "Te", "trailers") {
				dst["te"] = []string{"trailers"}
			}
		case k == "Trailer" && trailers:
			dst["trailer"] = vv
		case (hopHeaders[k] || named[k]) && !(keepUpgrade && k == "Upgrade"):
		default:
			dst[strings.ToLower(k)] = vv
		}
	}
}

// requestHeaders builds a SYN_STREAM header block for req. With trailers
// (the peer understands them), the trailers req.Trailer names are declared.
func requestHeaders(req *http.Request, upgrade, trailers bool) http.Header {
	h := make(http.Header, len(req.Header)+6)
	copyHeaders(h, req.Header, upgrade, false)
	if trailers && len(req.Trailer) > 0 {
		h["trailer"] = []string{strings.Join(slices.Sorted(maps.Keys(req.Trailer)), ", ")}
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	scheme := req.URL.Scheme
	if scheme == "" {
		scheme = "https"
	}
	path := req.URL.RequestURI()
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	h[":method"] = []string{method}
	h[":path"] = []string{path}
	h[":version"] = []string{"HTTP/1.1"}
	h[":host"] = []string{host}
	h[":scheme"] = []string{scheme}
	if req.ContentLength > 0 {
		h["content-length"] = []string{strconv.FormatInt(req.ContentLength, 10)}
	}
	return h
}

// responseHeaders builds a SYN_REPLY header block. With trailers, the
// Trailer header goes along and the headers it declares do not: they come
// at the end (trailers.go).
func responseHeaders(status int, hdr http.Header, trailers bool) http.Header {
	h := make(http.Header, len(hdr)+2)
	copyHeaders(h, hdr, status == http.StatusSwitchingProtocols, trailers)
	if trailers {
		for _, k := range declaredTrailers(hdr) {
			delete(h, strings.ToLower(k))
		}
	}
	h[":status"] = []string{statusLine(status)}
	h[":version"] = []string{"HTTP/1.1"}
	return h
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
// the rest as an http.Header. The codec stored names with Header.Add, so
// they are canonical already (pseudo-header names, not being tokens, are
// left as they are), and the block's map is reused.
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
