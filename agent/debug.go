package agent

// The --debug-addr server: Go's net/http/pprof (CPU, heap, allocation,
// goroutine and mutex profiles) for finding where the agent spends its CPU
// and memory. Off by default. A profile shows request paths and what the
// agent holds, so it listens on loopback unless an address beyond it is
// written out in full.

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"go.uber.org/zap"
)

// debugListenAddr checks --debug-addr: "" is off; ":6060" (no host) means
// 127.0.0.1:6060, never every interface; a host must be given explicitly
// to listen beyond loopback (then startDebug warns).
func debugListenAddr(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || !isHostPort(s) {
		return "", usageErrorf("--debug-addr %q: want host:port, e.g. 127.0.0.1:6060", s)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// startDebug serves /debug/pprof/ on --debug-addr until the returned stop
// is called. Without --debug-addr it does nothing.
func (a *Agent) startDebug() (stop func(), err error) {
	if a.opts.DebugAddr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", a.opts.DebugAddr)
	if err != nil {
		return nil, fmt.Errorf("--debug-addr: %w", err)
	}
	if !isLoopback(ln.Addr()) {
		a.log.Warn("!!! pprof debug endpoint listens beyond loopback, without authentication: anyone who reaches it "+
			"can read the agent's memory profile and slow it down with profiles; use 127.0.0.1 !!!", zap.Stringer("addr", ln.Addr()))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          zap.NewStdLog(a.log.Named("debug")),
	}
	stop = serveUntilStopped(srv, ln, a.log, "debug endpoint")
	a.log.Info("serving pprof on /debug/pprof/", zap.Stringer("addr", ln.Addr()))
	return stop, nil
}
