package spdy

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/adler32"
	"io"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"sync"
)

// Header blocks (SPDY/3 section 2.6.10) are zlib-compressed with a preset
// dictionary, in one compression context per direction that lives as long
// as the session. Each block ends with a sync flush, so a block is always
// decodable from its own frame plus the history of the context.
//
// We inflate blocks ourselves instead of through the codec because the
// codec cannot survive a block it refuses: it stops reading mid-block, the
// shared context falls out of step, and the whole session is lost for one
// stream's headers. It also inflates before it checks sizes, and for ids it
// never looks at. Here every block is inflated to its end (so the context
// stays in step and a refused block costs only its stream), output beyond
// the limit is counted and dropped (so memory stays bounded by the limit,
// not by the claim), and the id is checked by the caller before deciding
// whether the block is kept at all.
//
// The context across frames is carried as deflate's window: at a sync
// flush, the decompressor's whole state is the last 32 KiB of output, so
// each block is inflated by a fresh raw-deflate reader primed with that
// window as its dictionary. This makes the end of a frame's input an
// ordinary end of input rather than a sticky error.

// deflateWindow is the history a deflate back-reference may reach.
const deflateWindow = 32 << 10

// inflateChunk is how much inflated output is read at a time.
const inflateChunk = 16 << 10

// headerDictionary is the zlib dictionary of SPDY/3 (section 2.6.10.1): 65
// length-prefixed words followed by one run of common values.
var headerDictionary = func() []byte {
	words := []string{
		"options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
		"accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
		"cache-control", "connection", "content-base", "content-encoding", "content-language",
		"content-length", "content-location", "content-md5", "content-range", "content-type", "date",
		"etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
		"if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
		"max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
		"retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent",
		"vary", "via", "warning", "www-authenticate", "method", "get", "status", "200 OK", "version",
		"HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
	}
	tail := "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505" +
		"203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request" +
		"401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented" +
		"503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 " +
		"Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif," +
		"application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=" +
		"gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
	var b []byte
	for _, w := range words {
		b = binary.BigEndian.AppendUint32(b, uint32(len(w)))
		b = append(b, w...)
	}
	return append(b, tail...)
}()

// refusal is a frame we refuse at the level of its stream: a header block
// (inflated to its end, so the compression context is intact) or a DATA
// frame. Only the stream is lost; Status is the RST_STREAM status to send.
type refusal struct {
	Status RSTStatus
	Reason string
}

func (e *refusal) Error() string { return "spdy: " + e.Reason }

// headerLimits bound one received (or sent) header block.
type headerLimits struct {
	bytes  int // inflated size of the block
	values int // header values, counting each NUL-separated part
}

// inflateCap is how much one block may inflate to before the session is
// given up: senders check the same limit before sending, so beyond a few
// times it a peer is not sending a big request, it is burning our CPU.
// Within it, an over-limit block costs its stream only.
func (l headerLimits) inflateCap() int { return 4 * l.bytes }

// payloadReader reads the n bytes of one frame's payload from the
// connection's buffer, byte by byte as deflate wants them, and stops there.
type payloadReader struct {
	r   *bufio.Reader
	n   int
	err error // a read error of the connection (not the end of the payload)
}

func (p *payloadReader) ReadByte() (byte, error) {
	if p.n <= 0 {
		return 0, io.EOF
	}
	c, err := p.r.ReadByte()
	if err != nil {
		p.err = err
		return 0, err
	}
	p.n--
	return c, nil
}

func (p *payloadReader) Read(b []byte) (int, error) {
	if p.n <= 0 {
		return 0, io.EOF
	}
	if len(b) > p.n {
		b = b[:p.n]
	}
	k, err := p.r.Read(b)
	p.n -= k
	if err != nil {
		p.err = err
	}
	return k, err
}

// inflater decompresses the header blocks one peer sends us. It is used by
// the session's reader goroutine only.
type inflater struct {
	fl      io.ReadCloser // raw deflate; reset for each block
	src     payloadReader
	started bool   // the zlib stream header has been read
	hist    []byte // the context: at least the last deflateWindow bytes of output
	block   []byte // the current block, while within the limit
	chunk   []byte
}

func newInflater() *inflater {
	z := &inflater{hist: make([]byte, 0, 4*deflateWindow), chunk: make([]byte, inflateChunk)}
	z.hist = append(z.hist, headerDictionary...)
	return z
}

// inflate reads an n-byte compressed header block from r and inflates it
// to its end. It returns the block if it fits within limit bytes, or nil
// and over=true if it did not (the output was counted and dropped). A
// non-nil error is a session error: the context is lost or the connection
// failed.
func (z *inflater) inflate(r *bufio.Reader, n int, lim headerLimits) (block []byte, over bool, err error) {
	z.src = payloadReader{r: r, n: n}
	if !z.started {
		if err := z.readZlibHeader(); err != nil {
			return nil, false, err
		}
		z.started = true
	}
	if z.fl == nil {
		z.fl = flate.NewReaderDict(&z.src, z.hist)
	} else if err := z.fl.(flate.Resetter).Reset(&z.src, z.hist); err != nil {
		return nil, false, fmt.Errorf("%w: header decompressor: %v", ErrProtocol, err)
	}
	z.block = z.block[:0]
	total, limit, hardCap := 0, lim.bytes, lim.inflateCap()
	for {
		k, rerr := z.fl.Read(z.chunk)
		if k > 0 {
			total += k
			if total > hardCap {
				return nil, false, fmt.Errorf("%w: a header block inflates beyond %d bytes", ErrProtocol, hardCap)
			}
			out := z.chunk[:k]
			z.remember(out)
			if !over && len(z.block)+k <= limit {
				if len(z.block)+k > cap(z.block) {
					// Double, and go straight to the limit from half
					// of it: at most twice the block is allocated in
					// all (append grows big slices by a quarter, five
					// times the block).
					c := max(2*cap(z.block), len(z.block)+k, 4<<10)
					if 2*c > limit {
						c = limit
					}
					grown := make([]byte, len(z.block), c)
					copy(grown, z.block)
					z.block = grown
				}
				z.block = append(z.block, out...)
			} else {
				over = true
			}
		}
		if rerr == nil {
			continue
		}
		if z.src.err != nil {
			return nil, false, z.src.err
		}
		// A sync-flushed block ends without a final deflate block, so the
		// decompressor sees the end of the frame as an unexpected end.
		if !errors.Is(rerr, io.ErrUnexpectedEOF) || z.src.n != 0 {
			if errors.Is(rerr, io.EOF) {
				rerr = errors.New("the peer ended its compression stream")
			}
			return nil, false, fmt.Errorf("%w: header block does not decompress: %v", ErrProtocol, rerr)
		}
		break
	}
	if cap(z.block) > 64<<10 {
		// Do not keep a big block's buffer for the session's lifetime.
		block, z.block = z.block, nil
	} else {
		block = z.block
	}
	if over {
		return nil, true, nil
	}
	return block, false, nil
}

// readZlibHeader checks the 2-byte zlib header and the dictionary id that
// start the first block.
func (z *inflater) readZlibHeader() error {
	var h [6]byte
	if _, err := io.ReadFull(&z.src, h[:]); err != nil {
		if z.src.err != nil {
			return z.src.err
		}
		return fmt.Errorf("%w: header block too short for a zlib header", ErrProtocol)
	}
	cmf, flg := h[0], h[1]
	if cmf&0x0f != 8 || (uint16(cmf)<<8|uint16(flg))%31 != 0 || flg&0x20 == 0 ||
		binary.BigEndian.Uint32(h[2:]) != adler32.Checksum(headerDictionary) {
		return fmt.Errorf("%w: header block is not zlib with the SPDY/3 dictionary", ErrProtocol)
	}
	return nil
}

// remember appends inflated output to the context.
func (z *inflater) remember(p []byte) {
	if len(p) >= deflateWindow {
		z.hist = append(z.hist[:0], p[len(p)-deflateWindow:]...)
		return
	}
	if len(z.hist)+len(p) > cap(z.hist) {
		n := copy(z.hist, z.hist[len(z.hist)-(deflateWindow-len(p)):])
		z.hist = z.hist[:n]
	}
	z.hist = append(z.hist, p...)
}

// parseHeaderBlock decodes an inflated block: a count, then per header a
// length-prefixed lowercase name and a length-prefixed value in which NUL
// separates several values. Names are stored canonically (pseudo-headers
// as they are). The block is checked whole before anything is allocated,
// so a refused block costs nothing. A malformed block is a *refusal.
func parseHeaderBlock(b []byte, maxValues int) (http.Header, error) {
	count, values, err := checkHeaderBlock(b, maxValues)
	if err != nil {
		return nil, err
	}
	// One string holds every name and value, and one slice every value, so
	// that a block costs a handful of allocations, not several per header
	// (names of common headers are constants: lookupCanonical).
	all := string(b)
	vals := make([]string, values)
	h := make(http.Header, count)
	off := 4
	for range count {
		name, rest, _ := lengthPrefixed(b[off:])
		nameAt := off + 4
		value, _, _ := lengthPrefixed(rest)
		valueAt := nameAt + len(name) + 4
		off = valueAt + len(value)
		key := all[nameAt : nameAt+len(name)]
		if key[0] != ':' {
			key = lookupCanonical(name, key)
		}
		if _, dup := h[key]; dup {
			return nil, &refusal{Status: StatusProtocolError, Reason: fmt.Sprintf("header %q appears twice", name)}
		}
		v, n := all[valueAt:off], 0
		for {
			i := strings.IndexByte(v, 0)
			if i < 0 {
				vals[n] = v
				n++
				break
			}
			vals[n] = v[:i]
			n++
			v = v[i+1:]
		}
		h[key] = vals[:n:n]
		vals = vals[n:]
	}
	return h, nil
}

// lookupCanonical returns the canonical form of the lowercase header name
// (whose string is s): a constant for common headers, else a new string.
func lookupCanonical(name []byte, s string) string {
	if c, ok := commonCanonical[string(name)]; ok {
		return c
	}
	return textproto.CanonicalMIMEHeaderKey(s)
}

// commonCanonical maps lowercase names of headers seen on most requests
// and responses to their canonical forms.
var commonCanonical = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{
		"accept", "accept-charset", "accept-encoding", "accept-language", "accept-ranges",
		"access-control-allow-origin", "age", "alt-svc", "authorization", "cache-control",
		"connection", "content-disposition", "content-encoding", "content-language",
		"content-length", "content-location", "content-range", "content-type", "cookie",
		"date", "etag", "expect", "expires", "forwarded", "from", "host", "if-match",
		"if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "keep-alive",
		"last-modified", "link", "location", "max-forwards", "origin", "pragma", "priority",
		"proxy-authorization", "proxy-connection", "range", "referer", "retry-after",
		"sec-fetch-dest", "sec-fetch-mode", "sec-fetch-site", "sec-fetch-user",
		"sec-websocket-accept", "sec-websocket-extensions", "sec-websocket-key",
		"sec-websocket-protocol", "sec-websocket-version", "server", "set-cookie",
		"strict-transport-security", "te", "trailer", "transfer-encoding", "upgrade",
		"user-agent", "vary", "via", "www-authenticate", "x-content-type-options",
		"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip", "x-request-id",
	} {
		m[k] = textproto.CanonicalMIMEHeaderKey(k)
	}
	return m
}()

// checkHeaderBlock checks a block's structure, names and value count, and
// returns its header and value counts.
func checkHeaderBlock(b []byte, maxValues int) (count uint32, values int, err error) {
	bad := func(format string, a ...any) error {
		return &refusal{Status: StatusProtocolError, Reason: fmt.Sprintf(format, a...)}
	}
	if len(b) < 4 {
		return 0, 0, bad("no header count")
	}
	count = binary.BigEndian.Uint32(b)
	b = b[4:]
	if uint64(count) > uint64(len(b)/8) {
		return 0, 0, bad("header count %d does not fit in %d bytes", count, len(b))
	}
	for range count {
		name, rest, ok := lengthPrefixed(b)
		if !ok {
			return 0, 0, bad("truncated header name")
		}
		value, rest, ok := lengthPrefixed(rest)
		if !ok {
			return 0, 0, bad("truncated value of %q", name)
		}
		b = rest
		if len(name) == 0 {
			return 0, 0, bad("empty header name")
		}
		if hasUpper(name) {
			return 0, 0, bad("header name %q is not lowercase", name)
		}
		values += 1 + bytes.Count(value, []byte{0})
		if values > maxValues {
			return 0, 0, &refusal{Status: StatusFrameTooLarge, Reason: fmt.Sprintf("more than %d header values", maxValues)}
		}
	}
	if len(b) != 0 {
		return 0, 0, bad("%d bytes after the last header", len(b))
	}
	return count, values, nil
}

func lengthPrefixed(b []byte) (field, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, nil, false
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-4) {
		return nil, nil, false
	}
	return b[4 : 4+n], b[4+n:], true
}

func hasUpper(b []byte) bool {
	for _, c := range b {
		if 'A' <= c && c <= 'Z' {
			return true
		}
	}
	return false
}

// blockWriter builds a header block to send, straight from the request or
// response (no intermediate header map), and counts what the peer's limits
// count.
type blockWriter struct {
	b      []byte
	n      uint32 // headers
	values int    // values, NUL-separated parts each
}

func (w *blockWriter) reset() {
	w.b = append(w.b[:0], 0, 0, 0, 0)
	w.n, w.values = 0, 0
}

// field adds name (lowercased here) with values joined by NUL.
func (w *blockWriter) field(name string, values ...string) {
	w.n++
	w.b = binary.BigEndian.AppendUint32(w.b, uint32(len(name)))
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		w.b = append(w.b, c)
	}
	at := len(w.b)
	w.b = append(w.b, 0, 0, 0, 0)
	for i, v := range values {
		if i > 0 {
			w.b = append(w.b, 0)
		}
		w.b = append(w.b, v...)
		w.values += 1 + strings.Count(v, "\x00")
	}
	binary.BigEndian.PutUint32(w.b[at:], uint32(len(w.b)-at-4))
}

// header adds h's fields, leaving out hop-by-hop headers and those the
// Connection header names, and skip (a name the caller sets itself). With
// keepUpgrade the Upgrade header survives: it is what makes a stream an
// upgrade request. "TE: trailers", the one TE value HTTP/2 allows (RFC 9113
// 8.2.2), is kept: gRPC servers ask for it. With trailers, the Trailer
// header that declares them is kept too (trailers.go), and the fields it
// declares are left out: they come at the end.
func (w *blockWriter) header(h http.Header, keepUpgrade, trailers bool, skip string) {
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
	var declared []string
	if trailers {
		declared = declaredTrailers(h)
	}
	for k, vv := range h {
		switch {
		case len(vv) == 0 || k == skip:
		case k == "Te":
			if headerHasToken(h, "Te", "trailers") {
				w.field("te", "trailers")
			}
		case k == "Trailer":
			if trailers {
				w.field("trailer", vv...)
			}
		case (hopHeaders[k] || named[k]) && !(keepUpgrade && k == "Upgrade"):
		case slices.Contains(declared, k):
		default:
			w.field(k, vv...)
		}
	}
}

// block returns the finished block; it is valid until the next reset.
func (w *blockWriter) block() []byte {
	binary.BigEndian.PutUint32(w.b, w.n)
	return w.b
}

// checkLimits reports a block the peer would refuse under the limits we
// apply ourselves (both ends use the same defaults).
func (w *blockWriter) checkLimits(lim headerLimits) error {
	switch {
	case len(w.b) > lim.bytes:
		return fmt.Errorf("%w: %d bytes (limit %d)", ErrHeadersTooLarge, len(w.b), lim.bytes)
	case w.values > lim.values:
		return fmt.Errorf("%w: %d values (limit %d)", ErrHeadersTooLarge, w.values, lim.values)
	}
	return nil
}

// blockBufs recycles the blocks queued for the writer; putBlock puts them
// back.
var blockBufs = sync.Pool{New: func() any { return new(blockWriter) }}

// maxPooledBlock is the largest block buffer that goes back to blockBufs.
// A bigger one (a big header block, or one refused for its size) is left to
// the collector: pooled, it would be reused for blocks of a few hundred
// bytes and kept for as long as the pool is in use.
const maxPooledBlock = 32 << 10

func putBlock(w *blockWriter) {
	if cap(w.b) <= maxPooledBlock {
		blockBufs.Put(w)
	}
}

// deflater compresses the header blocks we send, in the session's one
// compression context for this direction (by whoever holds the session's
// wlock, in the order the frames go out). The level is a CPU choice: peers need only the
// dictionary (SPDY/3 section 2.6.10.1).
type deflater struct {
	zw  *zlib.Writer
	out bytes.Buffer
}

// headerCompression is the zlib level of the header blocks we send.
// Measured on small requests (spdy's Small1/Small64 benchmarks): levels 2
// to 9 cost the same here (blocks are a few hundred bytes), while
// BestSpeed is slower, for encoder and decoder alike: it writes a dynamic
// Huffman table for every block, where the others pick fixed codes for
// small ones.
const headerCompression = zlib.DefaultCompression

func newDeflater() *deflater {
	d := &deflater{}
	// Only an invalid level fails, and headerCompression is valid.
	d.zw, _ = zlib.NewWriterLevelDict(&d.out, headerCompression, headerDictionary)
	return d
}

// compress returns raw compressed and sync-flushed (valid until the next
// call).
func (d *deflater) compress(raw []byte) ([]byte, error) {
	if d.out.Cap() > maxPooledBlock {
		// Do not keep a big block's buffer for the session's lifetime.
		d.out = bytes.Buffer{}
	}
	d.out.Reset()
	if _, err := d.zw.Write(raw); err != nil {
		return nil, err
	}
	if err := d.zw.Flush(); err != nil {
		return nil, err
	}
	return d.out.Bytes(), nil
}
