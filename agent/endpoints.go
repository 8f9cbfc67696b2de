package agent

// The --metrics-addr server: /metrics (metrics.go), /healthz and /readyz
// (health.go). It is off by default, and meant for a loopback address: it
// has no authentication.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// startEndpoints listens on --metrics-addr and serves until the returned
// stop is called. Without --metrics-addr it does nothing.
func (a *Agent) startEndpoints() (stop func(), err error) {
	if a.opts.MetricsAddr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", a.opts.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	a.endpointsAddr.Store(ln.Addr().String())
	if !isLoopback(ln.Addr()) {
		a.log.Warn("metrics and health endpoints listen beyond loopback, without authentication; "+
			"prefer 127.0.0.1 or a firewall", zap.Stringer("addr", ln.Addr()))
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{
		Registry:          a.metrics.reg, // promhttp_metric_handler_errors_total
		ErrorLog:          zap.NewStdLog(a.log.Named("metrics")),
		EnableOpenMetrics: true,
	}))
	mux.HandleFunc("GET /healthz", a.healthz)
	mux.HandleFunc("GET /readyz", a.readyz)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          zap.NewStdLog(a.log.Named("metrics")),
	}
	stop = serveUntilStopped(srv, ln, a.log, "metrics endpoint")
	a.log.Info("serving /metrics, /healthz and /readyz", zap.Stringer("addr", ln.Addr()))
	return stop, nil
}

// serveUntilStopped serves srv on ln (the --metrics-addr or --debug-addr
// server, named what in the log) until the returned stop is called, which
// lets requests finish for up to a second, then closes what is left.
func serveUntilStopped(srv *http.Server, ln net.Listener, log *zap.Logger, what string) (stop func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error(what+" stopped", zap.Error(err))
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			_ = srv.Close()
		}
		<-done
	}
}

// endpointAddr is where the endpoints listen ("" before Run or without
// --metrics-addr); for tests with port 0.
func (a *Agent) endpointAddr() string {
	s, _ := a.endpointsAddr.Load().(string)
	return s
}

func isLoopback(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}
