package spdy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	mspdy "github.com/moby/spdystream/spdy"
)

// encode is what moby's codec writes for f: our parsing is checked against
// an independent encoder.
func encode(t *testing.T, f mspdy.Frame) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	fr, err := mspdy.NewFramer(w, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteFrame(f); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	return buf.Bytes()
}

func TestParseFrameHeader(t *testing.T) {
	syn := &mspdy.SynStreamFrame{StreamId: 7, AssociatedToStreamId: 3, Priority: 5, Headers: reqBlock("GET", "/")}
	syn.CFHeader.Flags = mspdy.ControlFlagFin | mspdy.ControlFlagUnidirectional
	synBytes := encode(t, syn)
	cases := []struct {
		name  string
		frame []byte
		want  frameHeader
	}{
		{"DATA with FIN", appendDataHeader(nil, 0x7fffffff, true, 0xffffff),
			frameHeader{streamID: 0x7fffffff, flags: flagFin, length: 0xffffff}},
		{"DATA", appendDataHeader(nil, 1, false, 5), frameHeader{streamID: 1, length: 5}},
		{"PING", encode(t, &mspdy.PingFrame{Id: 9}), frameHeader{control: true, version: 3, typ: typePing, length: 4}},
		{"RST_STREAM", encode(t, &mspdy.RstStreamFrame{StreamId: 5, Status: mspdy.Cancel}),
			frameHeader{control: true, version: 3, typ: typeRstStream, length: 8}},
		{"SYN_STREAM flags", synBytes[:8], frameHeader{control: true, version: 3, typ: typeSynStream,
			flags: flagFin | flagUnidirectional, length: len(synBytes) - 8}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := parseFrameHeader(c.frame); got != c.want {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestControlFixedParts(t *testing.T) {
	syn := encode(t, &mspdy.SynStreamFrame{StreamId: 0x7ffffffd, AssociatedToStreamId: 4, Priority: 7, Headers: reqBlock("GET", "/")})
	if f := parseSynStreamFixed(syn[8:]); f != (synStreamFixed{id: 0x7ffffffd, assoc: 4, priority: 7}) {
		t.Fatalf("SYN_STREAM fixed part %+v", f)
	}
	wu := encode(t, &mspdy.WindowUpdateFrame{StreamId: 3, DeltaWindowSize: 1 << 30})
	if id, d := parseWords(wu[8:]); id != 3 || d != 1<<30 {
		t.Fatalf("WINDOW_UPDATE words %d %d", id, d)
	}
	ga := encode(t, &mspdy.GoAwayFrame{LastGoodStreamId: 11, Status: mspdy.GoAwayInternalError})
	if last, st := parseWords(ga[8:]); last != 11 || st != uint32(mspdy.GoAwayInternalError) {
		t.Fatalf("GOAWAY words %d %d", last, st)
	}
	set := encode(t, &mspdy.SettingsFrame{FlagIdValues: []mspdy.SettingsFlagIdValue{
		{Id: mspdy.SettingsMaxConcurrentStreams, Value: 100},
		{Flag: mspdy.FlagSettingsPersistValue, Id: mspdy.SettingsInitialWindowSize, Value: 1 << 20},
	}})
	got, err := parseSettings(set[8:])
	if err != nil || got.len() != 2 || got.at(0) != (setting{settingMaxConcurrentStreams, 100}) || got.at(1) != (setting{settingInitialWindowSize, 1 << 20}) {
		t.Fatalf("settings %+v, %v", got, err)
	}
	// A count claiming more entries than the frame holds.
	if _, err := parseSettings([]byte{0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 1}); !errors.Is(err, ErrProtocol) {
		t.Fatalf("short SETTINGS: %v", err)
	}
}

func TestCheckControlLength(t *testing.T) {
	cases := []struct {
		typ    uint16
		length int
		ok     bool
	}{
		{typeSynStream, 10, true}, {typeSynStream, 9, false}, {typeSynStream, 1 << 20, true},
		{typeSynReply, 4, true}, {typeSynReply, 3, false},
		{typeHeaders, 4, true}, {typeHeaders, 0, false},
		{typeRstStream, 8, true}, {typeRstStream, 9, false},
		{typeGoAway, 8, true}, {typeGoAway, 4, false},
		{typeWindowUpdate, 8, true}, {typeWindowUpdate, 12, false},
		{typePing, 4, true}, {typePing, 8, false},
		{typeSettings, 4, true}, {typeSettings, 12, true}, {typeSettings, 8, false},
		{typeSettings, maxSettingsLen, false}, {typeSettings, maxSettingsLen - 4, true},
	}
	for _, c := range cases {
		if err := checkControlLength(c.typ, c.length); (err == nil) != c.ok {
			t.Errorf("type %d length %d: %v, want ok=%v", c.typ, c.length, err, c.ok)
		}
	}
	if _, known := fixedLen(0xff); known {
		t.Error("an unknown type is known")
	}
}

// TestEncodeAgainstMoby: every frame we encode reads back, through moby's
// codec (an independent decoder), as what we meant; header blocks share one
// compression context across frames, as on a session.
func TestEncodeAgainstMoby(t *testing.T) {
	var wire bytes.Buffer
	z := newDeflater()
	var w blockWriter
	header := func(typ uint16, flags uint8, id uint32, pri uint8, fields ...string) {
		w.reset()
		for i := 0; i+1 < len(fields); i += 2 {
			w.field(fields[i], fields[i+1])
		}
		block, err := z.compress(w.block())
		if err != nil {
			t.Fatal(err)
		}
		wire.Write(appendHeaderFrame(nil, typ, flags, id, pri, len(block)))
		wire.Write(block)
	}
	header(typeSynStream, flagFin, 5, 6, ":method", "GET", ":path", "/a?b", "X-Multi", "one\x00two")
	header(typeSynReply, 0, 5, 0, ":status", "200 OK", "content-type", "text/plain")
	header(typeHeaders, flagFin, 5, 0, "grpc-status", "0")
	wire.Write(appendRst(nil, 7, StatusCancel))
	wire.Write(appendWindowUpdate(nil, 0, 1<<30))
	wire.Write(appendPing(nil, 9))
	wire.Write(appendGoAway(nil, 11, goAwayProtocolError))
	wire.Write(appendSettings(nil, setting{settingMaxConcurrentStreams, 100}, setting{settingInitialWindowSize, 1 << 16}))
	wire.Write(appendDataHeader(nil, 5, true, 3))
	wire.WriteString("abc")

	fr, err := mspdy.NewFramer(io.Discard, &wire)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		f, err := fr.ReadFrame()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("moby cannot read what we wrote (after %v): %v", got, err)
		}
		got = append(got, describe(f))
	}
	want := []string{
		"SYN_STREAM 5 pri 6 fin [:method=GET :path=/a?b x-multi=one,two]",
		"SYN_REPLY 5 [:status=200 OK content-type=text/plain]",
		"HEADERS 5 fin [grpc-status=0]",
		"RST_STREAM 7 5", "WINDOW_UPDATE 0 1073741824", "PING 9", "GOAWAY 11 1",
		"SETTINGS [4=100 7=65536]", "DATA 5 fin abc",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("moby read:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func describe(f mspdy.Frame) string {
	fields := func(h http.Header) string {
		var kv []string
		for k, vv := range h {
			kv = append(kv, strings.ToLower(k)+"="+strings.Join(vv, ","))
		}
		slices.Sort(kv)
		return fmt.Sprint(kv)
	}
	fin := func(fl mspdy.ControlFlags) string {
		if fl&mspdy.ControlFlagFin != 0 {
			return " fin"
		}
		return ""
	}
	switch f := f.(type) {
	case *mspdy.SynStreamFrame:
		return fmt.Sprintf("SYN_STREAM %d pri %d%s %s", f.StreamId, f.Priority, fin(f.CFHeader.Flags), fields(f.Headers))
	case *mspdy.SynReplyFrame:
		return fmt.Sprintf("SYN_REPLY %d%s %s", f.StreamId, fin(f.CFHeader.Flags), fields(f.Headers))
	case *mspdy.HeadersFrame:
		return fmt.Sprintf("HEADERS %d%s %s", f.StreamId, fin(f.CFHeader.Flags), fields(f.Headers))
	case *mspdy.RstStreamFrame:
		return fmt.Sprintf("RST_STREAM %d %d", f.StreamId, f.Status)
	case *mspdy.WindowUpdateFrame:
		return fmt.Sprintf("WINDOW_UPDATE %d %d", f.StreamId, f.DeltaWindowSize)
	case *mspdy.PingFrame:
		return fmt.Sprintf("PING %d", f.Id)
	case *mspdy.GoAwayFrame:
		return fmt.Sprintf("GOAWAY %d %d", f.LastGoodStreamId, f.Status)
	case *mspdy.SettingsFrame:
		var kv []string
		for _, e := range f.FlagIdValues {
			kv = append(kv, fmt.Sprintf("%d=%d", e.Id, e.Value))
		}
		return fmt.Sprintf("SETTINGS %v", kv)
	case *mspdy.DataFrame:
		s := ""
		if f.Flags&mspdy.DataFlagFin != 0 {
			s = " fin"
		}
		return fmt.Sprintf("DATA %d%s %s", f.StreamId, s, f.Data)
	}
	return fmt.Sprintf("%T", f)
}

// TestParseSettingsAllocs: a SETTINGS frame is read in place, without an
// allocation per frame (a peer may send them at will).
func TestParseSettingsAllocs(t *testing.T) {
	p := appendSettings(nil, setting{settingMaxConcurrentStreams, 100}, setting{settingInitialWindowSize, 1 << 20})[frameHeaderLen:]
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := parseSettings(p); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per SETTINGS frame parsed, want 0", allocs)
	}
}
