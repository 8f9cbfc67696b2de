package spdy

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Trailers travel in a HEADERS frame (SPDY/3 section 2.6.7) that carries
// FIN after the stream's last DATA, both ways. They follow net/http's
// conventions on each side: a "Trailer" header declares them, and the
// values come in Request.Trailer / Response.Trailer once the body reached
// EOF; a handler sets declared keys after writing its body, or any key
// with http.TrailerPrefix.
//
// amahi/spdy panics on a HEADERS frame, so we send one only when
// Config.PeerTrailers says the peer announced it understands them (at
// registration). Otherwise trailers are dropped, logged once per session.
// Receiving them is always safe.

// declaredTrailers returns the canonical names h's Trailer header declares.
func declaredTrailers(h http.Header) []string {
	var keys []string
	for _, v := range h["Trailer"] {
		for k := range strings.SplitSeq(v, ",") {
			if k = strings.TrimSpace(k); k != "" {
				keys = append(keys, http.CanonicalHeaderKey(k))
			}
		}
	}
	return keys
}

// announced returns a Trailer map with the keys h declares and nil values,
// as net/http gives Request.Trailer and Response.Trailer before EOF, and
// removes the Trailer header from h as net/http does.
func announced(h http.Header) http.Header {
	keys := declaredTrailers(h)
	h.Del("Trailer")
	if len(keys) == 0 {
		return nil
	}
	t := make(http.Header, len(keys))
	for _, k := range keys {
		t[k] = nil
	}
	return t
}

// collectTrailers returns the trailers a handler or a request set: values
// of the keys declared in declared, and keys with http.TrailerPrefix in h.
func collectTrailers(h http.Header, declared []string) http.Header {
	var t http.Header
	add := func(k string, vv []string) {
		if len(vv) == 0 {
			return
		}
		if t == nil {
			t = make(http.Header)
		}
		t[http.CanonicalHeaderKey(k)] = vv
	}
	for _, k := range declared {
		add(k, h[k])
	}
	for k, vv := range h {
		if rest, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			add(rest, vv)
		}
	}
	return t
}

// receiveTrailers records a HEADERS frame's block for the reader; FIN ends
// the stream's receiving side as DATA's does. All of a stream's trailers
// together must fit the limits of one header block, so that HEADERS after
// HEADERS without FIN cannot grow them: beyond, it returns a *refusal.
func (st *stream) receiveTrailers(h http.Header, fin bool, lim headerLimits) error {
	st.mu.Lock()
	if st.state.has(stRemoteFin) {
		st.mu.Unlock()
		st.resetLocal(StatusStreamAlreadyClosed, errors.New("HEADERS after the stream's FIN"))
		return nil
	}
	heldBytes, heldValues := headerSize(st.trailer)
	newBytes, newValues := headerSize(h)
	if heldBytes+newBytes > lim.bytes || heldValues+newValues > lim.values {
		st.mu.Unlock()
		return &refusal{Status: StatusFrameTooLarge, Reason: fmt.Sprintf("trailers over %d bytes or %d values, all HEADERS frames together", lim.bytes, lim.values)}
	}
	if st.trailer == nil {
		st.trailer = make(http.Header, len(h))
	}
	for k, vv := range h {
		st.trailer[k] = append(st.trailer[k], vv...)
	}
	st.mu.Unlock()
	if fin {
		st.endRemote()
	}
	return nil
}

// headerSize is the size of h's fields as a header block counts them
// (names, values joined by NUL, and their length fields) and its number of
// values.
func headerSize(h http.Header) (size, values int) {
	for k, vv := range h {
		size += 8 + len(k) + max(len(vv)-1, 0)
		for _, v := range vv {
			size += len(v)
		}
		values += len(vv)
	}
	return size, values
}

// fillTrailers copies the trailers that arrived into t, creating it if it
// is nil; it is called when the body reached EOF.
func (st *stream) fillTrailers(t *http.Header) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.trailer) == 0 {
		return
	}
	if *t == nil {
		*t = make(http.Header, len(st.trailer))
	}
	for k, vv := range st.trailer {
		(*t)[k] = vv
	}
}

// sendTrailers ends the stream's sending side with a HEADERS frame carrying
// t and FIN, after all its DATA; or, when the peer did not say it
// understands HEADERS, with an empty DATA frame with FIN, dropping t.
func (st *stream) sendTrailers(t http.Header) error {
	s := st.s
	if !s.cfg.PeerTrailers {
		s.dropTrailers(st, t)
		return st.closeWrite()
	}
	block := blockBufs.Get().(*blockWriter)
	block.reset()
	for k, vv := range t {
		block.field(k, vv...)
	}
	if err := block.checkLimits(s.limits); err != nil {
		putBlock(block)
		st.resetLocal(StatusInternalError, err)
		return err
	}
	return st.sendHeaderFrame(typeHeaders, block, true, false)
}

// dropTrailers logs, once per session, trailers that cannot be sent.
func (s *Session) dropTrailers(st *stream, t http.Header) {
	if s.trailersDropped.CompareAndSwap(false, true) {
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		s.log.Warnw("spdy: dropping trailers: the peer did not say it understands HEADERS frames (an older or amahi-style peer); logged once per session",
			"remote", s.remoteAddr.String(), "stream", st.id, "trailers", strings.Join(keys, ","))
	}
}
