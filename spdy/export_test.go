package spdy

// Internals exported to the external tests (package spdy_test): the header
// block parsers, for the fuzz targets in fuzz_test.go.

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
)

// BlockInflater inflates a sequence of header block payloads in one
// compression context, as a session's reader does.
type BlockInflater struct {
	z   *inflater
	lim headerLimits
}

func NewBlockInflater(maxBytes, maxValues int) *BlockInflater {
	return &BlockInflater{z: newInflater(), lim: headerLimits{bytes: maxBytes, values: maxValues}}
}

// InflateCap is the size past which a block ends the session.
func (b *BlockInflater) InflateCap() int { return b.lim.inflateCap() }

// Block inflates one frame's header block payload. kept is the length of
// the inflated block kept (0 when over); over reports a block beyond
// maxBytes; h is the parsed block when kept, and perr why it was refused
// when it does not parse. err is a session error (the context is lost).
func (b *BlockInflater) Block(payload []byte) (h http.Header, kept int, over bool, perr, err error) {
	block, over, err := b.z.inflate(bufio.NewReader(bytes.NewReader(payload)), len(payload), b.lim)
	if err != nil || over {
		return nil, len(block), over, nil, err
	}
	h, perr = parseHeaderBlock(block, b.lim.values)
	return h, len(block), false, perr, nil
}

// ParseHeaderBlock is parseHeaderBlock.
func ParseHeaderBlock(b []byte, maxValues int) (http.Header, error) {
	return parseHeaderBlock(b, maxValues)
}

// BlockSize is blockSize: what the send side counts for h.
func BlockSize(h http.Header) (size, values int) { return blockSize(h) }

// HeaderSize is headerSize: what a received stream's trailers count.
func HeaderSize(h http.Header) (size, values int) { return headerSize(h) }

// RefusalStatus reports the RST_STREAM status of a refused block.
func RefusalStatus(err error) (RSTStatus, bool) {
	var r *refusal
	if errors.As(err, &r) {
		return r.Status, true
	}
	return 0, false
}
