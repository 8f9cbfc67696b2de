package spdy

import (
	"encoding/binary"
	"fmt"
)

// The frame layer (SPDY/3 section 2.2): the 8-byte frame header, the fixed
// part of each control frame and the length each type allows. Pure
// functions over bytes, with no session state; reader.go reads frames with
// them and writer.go writes them (header blocks are compressed by the
// session's deflater, headerblock.go).

// Control frame types, flags and settings ids (SPDY/3 section 2.6).
const (
	typeSynStream    = 1
	typeSynReply     = 2
	typeRstStream    = 3
	typeSettings     = 4
	typePing         = 6
	typeGoAway       = 7
	typeHeaders      = 8
	typeWindowUpdate = 9

	flagFin            = 0x01
	flagUnidirectional = 0x02

	settingMaxConcurrentStreams = 4
	settingInitialWindowSize    = 7

	frameHeaderLen = 8
	// maxSettingsLen bounds a SETTINGS frame: 1023 entries is more than
	// any peer sends, and the frame is read whole.
	maxSettingsLen = 8 << 10
)

// frameHeader is the first 8 bytes of a frame.
type frameHeader struct {
	control  bool
	version  uint16 // control frames
	typ      uint16 // control frames
	streamID uint32 // DATA frames
	flags    uint8
	length   int // of the payload, 24 bits
}

func parseFrameHeader(b []byte) frameHeader {
	w0, w1 := binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:])
	h := frameHeader{flags: uint8(w1 >> 24), length: int(w1 & 0xffffff)}
	if w0&0x80000000 == 0 {
		h.streamID = w0 & 0x7fffffff
		return h
	}
	h.control, h.version, h.typ = true, uint16(w0>>16)&0x7fff, uint16(w0)
	return h
}

// appendDataHeader appends the header of a DATA frame carrying n bytes.
func appendDataHeader(b []byte, id uint32, fin bool, n int) []byte {
	flagsLen := uint32(n)
	if fin {
		flagsLen |= flagFin << 24
	}
	b = binary.BigEndian.AppendUint32(b, id&0x7fffffff)
	return binary.BigEndian.AppendUint32(b, flagsLen)
}

// fixedLen is how many bytes of a control frame's payload come before its
// header block (SYN_STREAM, SYN_REPLY, HEADERS) or make it up (the others),
// and checkControlLength says whether length is right for typ. Unknown
// types report known false: they are skipped (SPDY/3 section 2.2.1).
func fixedLen(typ uint16) (n int, known bool) {
	switch typ {
	case typeSynStream:
		return 10, true // stream id, associated id, priority, slot
	case typeSynReply, typeHeaders, typePing:
		return 4, true // stream id (PING: its id)
	case typeRstStream, typeGoAway, typeWindowUpdate:
		return 8, true // stream id and status, or delta
	case typeSettings:
		return 4, true // entry count, then 8 bytes per entry
	}
	return 0, false
}

func checkControlLength(typ uint16, length int) error {
	n, _ := fixedLen(typ)
	var ok bool
	switch typ {
	case typeSynStream, typeSynReply, typeHeaders:
		ok = length >= n // a header block follows
	case typeSettings:
		ok = length >= n && (length-n)%8 == 0 && length <= maxSettingsLen
	default:
		ok = length == n
	}
	if !ok {
		return fmt.Errorf("%w: control frame type %d with bad length %d", ErrProtocol, typ, length)
	}
	return nil
}

// synStreamFixed is the fixed part of a SYN_STREAM.
type synStreamFixed struct {
	id, assoc uint32
	priority  uint8 // 0 highest .. 7
}

func parseSynStreamFixed(p []byte) synStreamFixed {
	return synStreamFixed{
		id:       binary.BigEndian.Uint32(p) & 0x7fffffff,
		assoc:    binary.BigEndian.Uint32(p[4:]) & 0x7fffffff,
		priority: p[8] >> 5,
	}
}

// parseWords reads the two 32-bit words of RST_STREAM (stream id, status),
// GOAWAY (last good stream id, status) and WINDOW_UPDATE (stream id,
// delta); the reserved top bit of the first, and of a delta, is cleared by
// the caller where the type says so.
func parseWords(p []byte) (a, b uint32) {
	return binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])
}

// setting is one SETTINGS entry.
type setting struct {
	id    uint32 // 24 bits
	value uint32
}

// settingsList is the entries of a SETTINGS payload, read in place (no
// allocation per frame); valid as long as the payload is.
type settingsList []byte

func (l settingsList) len() int { return len(l) / 8 }

func (l settingsList) at(i int) setting {
	e := l[8*i:]
	return setting{id: binary.BigEndian.Uint32(e) & 0xffffff, value: binary.BigEndian.Uint32(e[4:])}
}

// parseSettings reads a SETTINGS payload whose length checkControlLength
// accepted.
func parseSettings(p []byte) (settingsList, error) {
	count := binary.BigEndian.Uint32(p)
	if uint64(count)*8 > uint64(len(p)-4) {
		return nil, fmt.Errorf("%w: SETTINGS claims %d entries in %d bytes", ErrProtocol, count, len(p))
	}
	return settingsList(p[4 : 4+8*int(count)]), nil
}

// appendControlHeader appends a control frame's 8-byte header.
func appendControlHeader(b []byte, typ uint16, flags uint8, length int) []byte {
	b = binary.BigEndian.AppendUint16(b, 0x8000|3)
	b = binary.BigEndian.AppendUint16(b, typ)
	return binary.BigEndian.AppendUint32(b, uint32(flags)<<24|uint32(length)&0xffffff)
}

// appendWords appends a control frame made of two 32-bit words
// (RST_STREAM, GOAWAY, WINDOW_UPDATE).
func appendWords(b []byte, typ uint16, a, c uint32) []byte {
	b = appendControlHeader(b, typ, 0, 8)
	b = binary.BigEndian.AppendUint32(b, a)
	return binary.BigEndian.AppendUint32(b, c)
}

func appendRst(b []byte, id uint32, status RSTStatus) []byte {
	return appendWords(b, typeRstStream, id&0x7fffffff, uint32(status))
}

func appendWindowUpdate(b []byte, id, delta uint32) []byte {
	return appendWords(b, typeWindowUpdate, id&0x7fffffff, delta&0x7fffffff)
}

func appendGoAway(b []byte, lastGood, status uint32) []byte {
	return appendWords(b, typeGoAway, lastGood&0x7fffffff, status)
}

func appendPing(b []byte, id uint32) []byte {
	return binary.BigEndian.AppendUint32(appendControlHeader(b, typePing, 0, 4), id)
}

func appendSettings(b []byte, entries ...setting) []byte {
	b = appendControlHeader(b, typeSettings, 0, 4+8*len(entries))
	b = binary.BigEndian.AppendUint32(b, uint32(len(entries)))
	for _, e := range entries {
		b = binary.BigEndian.AppendUint32(b, e.id&0xffffff)
		b = binary.BigEndian.AppendUint32(b, e.value)
	}
	return b
}

// appendHeaderFrame appends the header and fixed part of SYN_STREAM,
// SYN_REPLY or HEADERS whose compressed block, blockLen bytes, follows.
func appendHeaderFrame(b []byte, typ uint16, flags uint8, id uint32, priority uint8, blockLen int) []byte {
	n, _ := fixedLen(typ)
	b = appendControlHeader(b, typ, flags, n+blockLen)
	b = binary.BigEndian.AppendUint32(b, id&0x7fffffff)
	if typ == typeSynStream {
		b = binary.BigEndian.AppendUint32(b, 0) // associated stream: none
		b = append(b, priority<<5, 0)           // priority, slot
	}
	return b
}
