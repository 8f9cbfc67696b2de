package e2e

// gRPC through the whole chain: a grpc-go client speaks HTTP/2 over TLS to
// Caddy (spdy_origin, no extra config), each RPC becomes one SPDY stream to
// the real agent, which proxies it over cleartext HTTP/2 (--to h2c://) to a
// grpc-go server. The service is hand-written (grpc.ServiceDesc, a codec
// that passes []byte through), so no protoc is needed.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/spdy-origin/spdy-origin/agent"
)

// bytesCodec marshals *[]byte messages as they are: the tests need no
// protobuf schema, only bytes they can count and hash.
type bytesCodec struct{}

func (bytesCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("bytesCodec: cannot marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(*b)}, nil
}

func (bytesCodec) Unmarshal(data mem.BufferSlice, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("bytesCodec: cannot unmarshal into %T", v)
	}
	*b = data.Materialize() // a copy: data is freed when we return
	return nil
}

func (bytesCodec) Name() string { return "bytes" }

// grpcServer implements the test service e2e.Tunnel.
type grpcServer struct {
	// firstSeen is closed by the client once the first message of a
	// ServerStream call arrived; the server sends the rest only then, so
	// a proxy that held messages back until the end fails the call.
	firstSeen chan struct{}
	// holdEnded receives ctx.Err() of each Hold and Ticker call when it ended.
	holdEnded chan error
}

const grpcService = "e2e.Tunnel"

// grpcDesc is the service: unary Echo, Fail and Hold; server-streaming
// Stream, Ticker and Slow; client-streaming Collect; bidirectional Bidi.
var grpcDesc = grpc.ServiceDesc{
	ServiceName: grpcService,
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Echo", Handler: unary((*grpcServer).echo)},
		{MethodName: "Fail", Handler: unary((*grpcServer).fail)},
		{MethodName: "Hold", Handler: unary((*grpcServer).hold)},
	},
	Streams: []grpc.StreamDesc{
		{StreamName: "Stream", ServerStreams: true, Handler: streaming((*grpcServer).stream)},
		{StreamName: "Ticker", ServerStreams: true, Handler: streaming((*grpcServer).ticker)},
		{StreamName: "Slow", ServerStreams: true, Handler: streaming((*grpcServer).slow)},
		{StreamName: "Collect", ClientStreams: true, Handler: streaming((*grpcServer).collect)},
		{StreamName: "Bidi", ServerStreams: true, ClientStreams: true, Handler: streaming((*grpcServer).bidi)},
	},
}

func unary(f func(*grpcServer, context.Context, []byte) ([]byte, error)) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		var in []byte
		if err := dec(&in); err != nil {
			return nil, err
		}
		out, err := f(srv.(*grpcServer), ctx, in)
		if err != nil {
			return nil, err
		}
		return &out, nil
	}
}

func streaming(f func(*grpcServer, grpc.ServerStream) error) grpc.StreamHandler {
	return func(srv any, ss grpc.ServerStream) error { return f(srv.(*grpcServer), ss) }
}

// binTrailer is a binary metadata value: gRPC sends -bin keys base64-encoded.
var binTrailer = []byte{0, 1, 2, 0xfe, 0xff, '\r', '\n', 0}

// echo answers the request with "echo: " and the request, and sets header
// and trailing metadata (the trailer echoes the request's x-request).
func (s *grpcServer) echo(ctx context.Context, in []byte) ([]byte, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if err := grpc.SetHeader(ctx, metadata.Pairs("x-header", "from the server")); err != nil {
		return nil, err
	}
	if err := grpc.SetTrailer(ctx, metadata.Pairs(
		"x-trailer", "one", "x-trailer", "two",
		"x-echo", fmt.Sprint(md.Get("x-request")),
		"x-trailer-bin", string(binTrailer),
	)); err != nil {
		return nil, err
	}
	return append([]byte("echo: "), in...), nil
}

// failMessage has what grpc-message must percent-encode: non-ASCII, '%',
// a newline.
const failMessage = "précondition échouée: 100% sûr\nsecond line"

func failDetails() *errdetails.ErrorInfo {
	return &errdetails.ErrorInfo{Reason: "QUOTA_EXCEEDED", Domain: "e2e.spdy-origin.test", Metadata: map[string]string{"limit": "42"}}
}

// fail returns FailedPrecondition with a details message, plus a trailer.
func (s *grpcServer) fail(ctx context.Context, _ []byte) ([]byte, error) {
	if err := grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "with the error")); err != nil {
		return nil, err
	}
	st, err := status.New(codes.FailedPrecondition, failMessage).WithDetails(failDetails())
	if err != nil {
		return nil, err
	}
	return nil, st.Err()
}

// hold answers nothing until the call ends; it reports why it ended.
func (s *grpcServer) hold(ctx context.Context, _ []byte) ([]byte, error) {
	<-ctx.Done()
	s.holdEnded <- ctx.Err()
	return nil, status.FromContextError(ctx.Err()).Err()
}

// indexed is message i of a stream: the index in 8 bytes, then pad bytes.
func indexed(i int, pad int) []byte {
	b := make([]byte, 8+pad)
	binary.BigEndian.PutUint64(b, uint64(i))
	for j := 8; j < len(b); j++ {
		b[j] = byte(i + j)
	}
	return b
}

// stream sends the number of messages the request asks for (decimal), each
// indexed; after the first it waits until the client has seen it.
func (s *grpcServer) stream(ss grpc.ServerStream) error {
	var in []byte
	if err := ss.RecvMsg(&in); err != nil {
		return err
	}
	n, err := strconv.Atoi(string(in))
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "count %q: %v", in, err)
	}
	for i := range n {
		m := indexed(i, 24)
		if err := ss.SendMsg(&m); err != nil {
			return err
		}
		if i == 0 {
			select {
			case <-s.firstSeen:
			case <-time.After(10 * time.Second):
				return status.Error(codes.Aborted, "the client did not get the first message within 10s: a proxy buffered the stream")
			case <-ss.Context().Done():
				return ss.Context().Err()
			}
		}
	}
	return nil
}

// ticker sends an indexed message every 5ms until the call ends.
func (s *grpcServer) ticker(ss grpc.ServerStream) error {
	var in []byte
	if err := ss.RecvMsg(&in); err != nil {
		return err
	}
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		m := indexed(i, 1000)
		if err := ss.SendMsg(&m); err != nil {
			<-ss.Context().Done()
			s.holdEnded <- ss.Context().Err()
			return err
		}
		select {
		case <-ss.Context().Done():
			s.holdEnded <- ss.Context().Err()
			return ss.Context().Err()
		case <-t.C:
		}
	}
}

// slow sends two messages, each after a pause of the request's duration.
func (s *grpcServer) slow(ss grpc.ServerStream) error {
	var in []byte
	if err := ss.RecvMsg(&in); err != nil {
		return err
	}
	d, err := time.ParseDuration(string(in))
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "pause %q: %v", in, err)
	}
	for i := range 2 {
		select {
		case <-time.After(d):
		case <-ss.Context().Done():
			return ss.Context().Err()
		}
		m := indexed(i, 8)
		if err := ss.SendMsg(&m); err != nil {
			return err
		}
	}
	return nil
}

// collect reads every message and answers "<count> <sha256 of all bytes>".
func (s *grpcServer) collect(ss grpc.ServerStream) error {
	h := sha256.New()
	n := 0
	for {
		var m []byte
		err := ss.RecvMsg(&m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		n++
		h.Write(m)
	}
	out := fmt.Appendf(nil, "%d %x", n, h.Sum(nil))
	return ss.SendMsg(&out)
}

// bidi sends x-count messages of x-size bytes (bidiMessage) while it
// reads what the client sends; the trailer reports what it received:
// count, sha256 and how long receiving took.
func (s *grpcServer) bidi(ss grpc.ServerStream) error {
	md, _ := metadata.FromIncomingContext(ss.Context())
	count, _ := strconv.Atoi(first(md.Get("x-count")))
	size, _ := strconv.Atoi(first(md.Get("x-size")))
	start := time.Now()
	type result struct {
		n   int
		sum []byte
		d   time.Duration
		err error
	}
	got := make(chan result, 1)
	go func() {
		h := sha256.New()
		n := 0
		for {
			var m []byte
			err := ss.RecvMsg(&m)
			if err == io.EOF {
				got <- result{n: n, sum: h.Sum(nil), d: time.Since(start)}
				return
			}
			if err != nil {
				got <- result{err: err}
				return
			}
			n++
			h.Write(m)
		}
	}()
	base := bidiBase(size, 's')
	for i := range count {
		m := bidiMessage(base, i)
		if err := ss.SendMsg(&m); err != nil {
			return err
		}
	}
	r := <-got
	if r.err != nil {
		return r.err
	}
	ss.SetTrailer(metadata.Pairs("x-received", strconv.Itoa(r.n), "x-received-sha256", hex.EncodeToString(r.sum),
		"x-receive-ns", strconv.FormatInt(int64(r.d), 10)))
	return nil
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// bidiBase is the content both sides derive bidi messages from (dir tells
// the directions apart), so each side can hash what the other should get.
func bidiBase(size int, dir byte) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i*7) ^ dir
	}
	return b
}

// bidiMessage is message i: base with the index in its first 8 bytes, in a
// buffer of its own (gRPC may still hold a sent message's bytes).
func bidiMessage(base []byte, i int) []byte {
	m := bytes.Clone(base)
	binary.BigEndian.PutUint64(m, uint64(i))
	return m
}

// bidiSum is the sha256 of count bidi messages from base.
func bidiSum(base []byte, count int) string {
	h := sha256.New()
	for i := range count {
		h.Write(bidiMessage(base, i))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// grpcE2E is a gRPC test's setup: the grpc-go server behind the real agent
// over h2c, and a client connection through Caddy.
type grpcE2E struct {
	*e2e
	srv  *grpcServer
	conn *grpc.ClientConn
}

// setupGRPC starts the gRPC server, Caddy with the plain spdy_origin handler
// for pool (nothing gRPC-specific), the agent with --to h2c://, and a client.
func setupGRPC(t *testing.T, pool string) *grpcE2E {
	t.Helper()
	return setupGRPCWith(t, pool, nil, nil)
}

// setupGRPCWith is setupGRPC with extra spdy_origin handler and server fields.
func setupGRPCWith(t *testing.T, pool string, handler, server map[string]any) *grpcE2E {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &grpcServer{firstSeen: make(chan struct{}), holdEnded: make(chan error, 16)}
	gs := grpc.NewServer(grpc.ForceServerCodecV2(bytesCodec{}))
	gs.RegisterService(&grpcDesc, srv)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)

	to := &url.URL{Scheme: "h2c", Host: ln.Addr().String()}
	e := setupE2EWith(t, pool, handler, server, func(o *agent.Options) { o.To = to })
	conn, err := grpc.NewClient(fmt.Sprintf("passthrough:///localhost:%d", ports().https),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{ServerName: "localhost", RootCAs: caddyRoots(t, true)})),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(bytesCodec{})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &grpcE2E{e2e: e, srv: srv, conn: conn}
}

func method(name string) string { return "/" + grpcService + "/" + name }

// waitHoldEnded waits for a Hold or Ticker handler to end and returns why.
func (g *grpcE2E) waitHoldEnded(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case err := <-g.srv.holdEnded:
		return err
	case <-time.After(within):
		t.Fatalf("the server's handler was still running %s after the client gave up", within)
		return nil
	}
}

// TestGrpcUnaryStatusAndTrailers: a unary call's reply, header metadata and
// trailing metadata (repeated keys, a binary -bin value) arrive intact; a
// non-OK status keeps its code, its percent-encoded non-ASCII message and
// its details message (grpc-status-details-bin), with the trailer set beside it.
func TestGrpcUnaryStatusAndTrailers(t *testing.T) {
	g := setupGRPC(t, "grpc-unary")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	req := []byte("hello through the tunnel")
	var resp []byte
	var header, trailer metadata.MD
	err := g.conn.Invoke(metadata.AppendToOutgoingContext(ctx, "x-request", "req-value"), method("Echo"), &req, &resp,
		grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		t.Fatalf("Echo: %v", err)
	}
	if want := "echo: hello through the tunnel"; string(resp) != want {
		t.Errorf("Echo reply %q, want %q", resp, want)
	}
	if got := header.Get("x-header"); len(got) != 1 || got[0] != "from the server" {
		t.Errorf("header x-header = %q", got)
	}
	if got := trailer.Get("x-trailer"); len(got) != 2 || got[0] != "one" || got[1] != "two" {
		t.Errorf("trailer x-trailer = %q, want [one two]", got)
	}
	if got := trailer.Get("x-echo"); len(got) != 1 || got[0] != "[req-value]" {
		t.Errorf("trailer x-echo = %q: the request metadata did not reach the server", got)
	}
	if got := trailer.Get("x-trailer-bin"); len(got) != 1 || got[0] != string(binTrailer) {
		t.Errorf("trailer x-trailer-bin = %q, want %q", got, binTrailer)
	}

	trailer = nil
	err = g.conn.Invoke(ctx, method("Fail"), &req, &resp, grpc.Trailer(&trailer))
	st := status.Convert(err)
	if st.Code() != codes.FailedPrecondition || st.Message() != failMessage {
		t.Fatalf("Fail: status %v %q, want %v %q", st.Code(), st.Message(), codes.FailedPrecondition, failMessage)
	}
	details := st.Details()
	if len(details) != 1 {
		t.Fatalf("Fail: %d details, want 1: %v", len(details), details)
	}
	if d, ok := details[0].(*errdetails.ErrorInfo); !ok || !proto.Equal(d, failDetails()) {
		t.Errorf("Fail: details %v, want %v", details[0], failDetails())
	}
	if got := trailer.Get("x-trailer"); len(got) != 1 || got[0] != "with the error" {
		t.Errorf("Fail: trailer x-trailer = %q", got)
	}
}

// TestGrpcServerStreaming: 10,000 messages of a server-streaming call arrive
// in order, and one by one: the server sends the second message only after
// the client has the first (Caddy flushes each; nothing waits for the end).
func TestGrpcServerStreaming(t *testing.T) {
	g := setupGRPC(t, "grpc-sstream")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	const n = 10_000
	start := time.Now()
	cs, err := g.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method("Stream"))
	if err != nil {
		t.Fatal(err)
	}
	req := []byte(strconv.Itoa(n))
	if err := cs.SendMsg(&req); err != nil {
		t.Fatal(err)
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var firstAfter time.Duration
	for i := range n {
		var m []byte
		if err := cs.RecvMsg(&m); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if len(m) != 32 || binary.BigEndian.Uint64(m) != uint64(i) || !bytes.Equal(m, indexed(i, 24)) {
			t.Fatalf("message %d: got index %d, %d bytes", i, binary.BigEndian.Uint64(m), len(m))
		}
		if i == 0 {
			firstAfter = time.Since(start)
			close(g.srv.firstSeen)
		}
	}
	var extra []byte
	if err := cs.RecvMsg(&extra); err != io.EOF {
		t.Fatalf("after %d messages: %v, want io.EOF (status OK)", n, err)
	}
	d := time.Since(start)
	t.Logf("server streaming: first message after %s, %d messages in %s (%.0f msg/s)",
		firstAfter.Round(time.Millisecond), n, d.Round(time.Millisecond), n/d.Seconds())
}

// TestGrpcClientStreaming: 1,000 messages of varied sizes (empty ones
// included) from the client reach the server whole and in order.
func TestGrpcClientStreaming(t *testing.T) {
	g := setupGRPC(t, "grpc-cstream")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	cs, err := g.conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true}, method("Collect"))
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	h := sha256.New()
	total := 0
	for i := range n {
		m := make([]byte, (i*997)%20_000)
		_, _ = rand.Read(m)
		h.Write(m)
		total += len(m)
		if err := cs.SendMsg(&m); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var resp []byte
	if err := cs.RecvMsg(&resp); err != nil {
		t.Fatalf("Collect: %v", err)
	}
	if want := fmt.Sprintf("%d %x", n, h.Sum(nil)); string(resp) != want {
		t.Fatalf("server received %q, want %q", resp, want)
	}
	t.Logf("client streaming: %d messages, %d bytes", n, total)
}

// TestGrpcBidiThroughput: a bidirectional call with 1 MiB messages both ways
// at once (full duplex over an HTTP/2 client): each side's bytes arrive
// intact; the throughput each way is logged.
func TestGrpcBidiThroughput(t *testing.T) {
	g := setupGRPC(t, "grpc-bidi")
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()

	const size = 1 << 20
	count := 64
	if raceEnabled {
		count = 32
	}
	start := time.Now()
	cs, err := g.conn.NewStream(metadata.AppendToOutgoingContext(ctx, "x-count", strconv.Itoa(count), "x-size", strconv.Itoa(size)),
		&grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method("Bidi"))
	if err != nil {
		t.Fatal(err)
	}
	sendErr := make(chan error, 1)
	go func() {
		base := bidiBase(size, 'c')
		for i := range count {
			m := bidiMessage(base, i)
			if err := cs.SendMsg(&m); err != nil {
				sendErr <- fmt.Errorf("sending message %d: %w", i, err)
				return
			}
		}
		sendErr <- cs.CloseSend()
	}()
	h := sha256.New()
	n := 0
	var recvDone time.Duration
	for {
		var m []byte
		err := cs.RecvMsg(&m)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d messages: %v", n, err)
		}
		if len(m) != size {
			t.Fatalf("message %d: %d bytes", n, len(m))
		}
		n++
		h.Write(m)
		recvDone = time.Since(start)
	}
	if err := <-sendErr; err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(h.Sum(nil)), bidiSum(bidiBase(size, 's'), count); n != count || got != want {
		t.Fatalf("client received %d messages, sha256 ok %v; want %d", n, got == want, count)
	}
	tr := cs.Trailer()
	if got, want := first(tr.Get("x-received-sha256")), bidiSum(bidiBase(size, 'c'), count); first(tr.Get("x-received")) != strconv.Itoa(count) || got != want {
		t.Fatalf("server received %s messages, sha256 ok %v; want %d", first(tr.Get("x-received")), got == want, count)
	}
	serverRecv, _ := strconv.ParseInt(first(tr.Get("x-receive-ns")), 10, 64)
	mb := float64(count*size) / 1e6
	t.Logf("bidi, %d x 1 MiB messages each way at once: client→server %.1f MB/s (%s), server→client %.1f MB/s (%s)",
		count, mb/time.Duration(serverRecv).Seconds(), time.Duration(serverRecv).Round(time.Millisecond),
		mb/recvDone.Seconds(), recvDone.Round(time.Millisecond))
}

// TestGrpcDeadlineAndCancel: a call whose deadline passes and a streaming
// call the client cancels both end on the server: the handler's context is
// done (DeadlineExceeded or Canceled) within a bounded time, and the stream
// leaves the agent's session.
func TestGrpcDeadlineAndCancel(t *testing.T) {
	g := setupGRPC(t, "grpc-cancel")
	req := []byte("x")

	// Deadline: the client gives up after 300ms; grpc-timeout travels with
	// the request, and the client's RST_STREAM follows it through the tunnel.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	start := time.Now()
	var resp []byte
	err := g.conn.Invoke(ctx, method("Hold"), &req, &resp)
	cancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Hold with a 300ms deadline: %v, want DeadlineExceeded", err)
	}
	if err := g.waitHoldEnded(t, 5*time.Second); !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		t.Fatalf("server handler ended with %v", err)
	} else {
		t.Logf("deadline: server handler's context done %s after the call began: %v", time.Since(start).Round(time.Millisecond), err)
	}

	// Cancel: a server stream is running (messages arriving) when the
	// client cancels; only the RST_STREAM can tell the server.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	cs, err := g.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method("Ticker"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SendMsg(&req); err != nil {
		t.Fatal(err)
	}
	_ = cs.CloseSend()
	for i := range 3 {
		var m []byte
		if err := cs.RecvMsg(&m); err != nil {
			t.Fatalf("tick %d: %v", i, err)
		}
	}
	cancel()
	start = time.Now()
	var m []byte
	for err == nil {
		err = cs.RecvMsg(&m)
	}
	if status.Code(err) != codes.Canceled {
		t.Fatalf("after cancel: %v, want Canceled", err)
	}
	if err := g.waitHoldEnded(t, 5*time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("server handler ended with %v, want context.Canceled", err)
	}
	t.Logf("cancel: server handler's context done %s after the client cancelled", time.Since(start).Round(time.Millisecond))
	waitUntil(t, 5*time.Second, "the agent session's streams to close", func() bool {
		ps := poolState(t, g.pool)
		return len(ps.Sessions) == 1 && ps.Sessions[0].OpenStreams == 0
	})
}

// TestGrpcAgentKilled: the agent's connection dies while a server stream is
// sending and a unary call waits for its answer: both calls fail with a
// non-OK status (never a clean end with messages missing), and the server's
// handlers are cancelled.
func TestGrpcAgentKilled(t *testing.T) {
	g := setupGRPC(t, "grpc-kill")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req := []byte("x")

	cs, err := g.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method("Ticker"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SendMsg(&req); err != nil {
		t.Fatal(err)
	}
	_ = cs.CloseSend()
	unaryErr := make(chan error, 1)
	go func() {
		var resp []byte
		unaryErr <- g.conn.Invoke(ctx, method("Hold"), &req, &resp)
	}()
	for i := range 5 {
		var m []byte
		if err := cs.RecvMsg(&m); err != nil {
			t.Fatalf("tick %d: %v", i, err)
		}
	}
	waitUntil(t, 5*time.Second, "both calls on the agent's session", func() bool {
		ps := poolState(t, g.pool)
		return len(ps.Sessions) == 1 && ps.Sessions[0].OpenStreams == 2
	})

	// Cut the agent's connection the way its death would, and keep it from
	// reconnecting.
	start := time.Now()
	g.fwd.kill()

	n := 5
	for err == nil {
		var m []byte
		if err = cs.RecvMsg(&m); err == nil {
			if got := binary.BigEndian.Uint64(m); got != uint64(n) {
				t.Fatalf("tick %d arrived as %d", n, got)
			}
			n++
		}
	}
	if err == io.EOF || status.Code(err) == codes.OK {
		t.Fatalf("server stream ended cleanly after %d messages when the agent died", n)
	}
	t.Logf("server stream: %d messages, then %v after %s", n, err, time.Since(start).Round(time.Millisecond))
	select {
	case err := <-unaryErr:
		if status.Code(err) == codes.OK {
			t.Fatal("unary call succeeded after the agent died")
		}
		t.Logf("unary call waiting for its answer: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("unary call still waiting 10s after the agent died")
	}
	for range 2 {
		if err := g.waitHoldEnded(t, 10*time.Second); !errors.Is(err, context.Canceled) {
			t.Errorf("server handler ended with %v, want context.Canceled", err)
		}
	}
	waitUntil(t, 5*time.Second, "the dead session to leave the pool", func() bool { return len(poolState(t, g.pool).Sessions) == 0 })
}

// TestGrpcQuietStreams pins down what the README tells users of long-lived
// streams. Two limits, each 1 minute by default (here 500ms, with pauses of
// 1-1.5s), cut a call whose client is silent: Caddy's read_idle_timeout
// (Caddyfile read_body_idle) limits any wait for the client's next bytes;
// spdy_origin's stream_idle_timeout limits it until the server's response
// headers, which grpc-go sends with its first message (here: with its only
// one, at the end). With both raised, the call works. A server that is
// silent is cut by neither, before its first message or between two.
func TestGrpcQuietStreams(t *testing.T) {
	for _, c := range []struct {
		name            string
		handler, server map[string]any
		want            codes.Code
	}{
		// 408 from the transport: gRPC maps it to Unknown.
		{"client silent/stream_idle_timeout", map[string]any{"stream_idle_timeout": "500ms"}, map[string]any{"read_idle_timeout": "-1s"}, codes.Unknown},
		// Caddy's body read fails; reverse_proxy answers 502: Unavailable.
		{"client silent/read_idle_timeout", map[string]any{"stream_idle_timeout": "1m"}, map[string]any{"read_idle_timeout": "500ms"}, codes.Unavailable},
		{"client silent/both raised", map[string]any{"stream_idle_timeout": "1m"}, map[string]any{"read_idle_timeout": "1m"}, codes.OK},
		{"server silent", map[string]any{"stream_idle_timeout": "500ms"}, map[string]any{"read_idle_timeout": "500ms"}, codes.OK},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := setupGRPCWith(t, "grpc-quiet-"+strings.NewReplacer(" ", "-", "/", "-").Replace(c.name), c.handler, c.server)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var err error
			if strings.HasPrefix(c.name, "client") {
				err = quietClient(ctx, g)
			} else {
				err = quietServer(ctx, g)
			}
			if status.Code(err) != c.want {
				t.Fatalf("%v, want code %v", err, c.want)
			}
			t.Logf("%s: %v", c.name, err)
		})
	}
}

// quietClient makes a Collect call that pauses 1.5s between its two messages.
func quietClient(ctx context.Context, g *grpcE2E) error {
	cs, err := g.conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true}, method("Collect"))
	if err != nil {
		return err
	}
	m := []byte("before the pause")
	if err := cs.SendMsg(&m); err != nil {
		return err
	}
	time.Sleep(1500 * time.Millisecond)
	m = []byte("after the pause")
	_ = cs.SendMsg(&m) // io.EOF once the call failed; RecvMsg says why
	_ = cs.CloseSend()
	var resp []byte
	if err := cs.RecvMsg(&resp); err != nil {
		return err
	}
	if !strings.HasPrefix(string(resp), "2 ") {
		return fmt.Errorf("server received %q, want 2 messages", resp)
	}
	return nil
}

// quietServer makes a Slow call: 1s before each of its two messages.
func quietServer(ctx context.Context, g *grpcE2E) error {
	cs, err := g.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method("Slow"))
	if err != nil {
		return err
	}
	req := []byte("1s")
	if err := cs.SendMsg(&req); err != nil {
		return err
	}
	_ = cs.CloseSend()
	for i := range 2 {
		var m []byte
		if err := cs.RecvMsg(&m); err != nil {
			return err
		}
		if binary.BigEndian.Uint64(m) != uint64(i) {
			return fmt.Errorf("message %d arrived as %d", i, binary.BigEndian.Uint64(m))
		}
	}
	var m []byte
	if err := cs.RecvMsg(&m); err != io.EOF {
		return fmt.Errorf("after 2 messages: %w", err)
	}
	return nil
}
