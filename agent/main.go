// Command spdy-origin-agent puts a server that sits behind NAT on the internet through
// a Caddy server running the spdy_origin module. It dials the proxy over TLS, registers
// with a PUT (the Amahi spdy-proxy handshake, see dial.go), then becomes the SPDY/3.1
// server on that connection and answers the proxy's streams from an upstream URL (--to,
// serve.go) or a directory (--root, files.go). agent.go keeps the sessions up:
// reconnect with backoff, several connections per proxy, several proxies, and a
// graceful drain on SIGINT/SIGTERM.
//
// Start reading at agent.go (Agent.Run); this file only turns flags into Options.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/spdy-origin/spdy-origin/spdy"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3"; otherwise the
// module version from the build info, or "devel".
var version = ""

func agentVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

const envPrefix = "SPDY_ORIGIN_"

// cliConfig is the parsed command line before validation into Options.
type cliConfig struct {
	opts        Options
	logLevel    zapcore.Level
	logFormat   string
	showVersion bool
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// envName maps a flag name to its environment variable: insecure-skip-verify →
// SPDY_ORIGIN_INSECURE_SKIP_VERIFY.
func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseArgs parses args (without the program name) and env (os.Environ-style lookups).
// Flags given on the command line win over the environment. A *usageError means
// "print usage and exit 2"; flag.ErrHelp means -h was asked for.
func parseArgs(args []string, getenv func(string) string, usage io.Writer) (*cliConfig, error) {
	fs := flag.NewFlagSet("spdy-origin-agent", flag.ContinueOnError)
	fs.SetOutput(usage)
	var (
		proxies     stringList
		token       = fs.String("token", "", "bearer `token` the proxy expects (prefer the env var: command lines are visible to other users)")
		to          = fs.String("to", "", "upstream `URL` to reverse-proxy to, e.g. http://127.0.0.1:8080 (exclusive with --root)")
		root        = fs.String("root", "", "`directory` to serve as static files (exclusive with --to)")
		caFile      = fs.String("ca-file", "", "PEM `file` with extra CA certificates to trust for the proxy, e.g. Caddy's 'tls internal' root")
		insecure    = fs.Bool("insecure-skip-verify", false, "do NOT verify the proxy's TLS certificate (testing only; dangerous)")
		conns       = fs.Int("connections", 2, "parallel sessions to each proxy")
		name        = fs.String("name", "", "agent `name` sent to the proxy for its logs and metrics (default: host name)")
		drain       = fs.Duration("drain-timeout", 30*time.Second, "on SIGINT/SIGTERM, how long in-flight requests may finish")
		logLevel    = fs.String("log-level", "info", "log `level`: debug, info, warn, error")
		logFormat   = fs.String("log-format", "console", "log `format`: console or json")
		maxStreams  = fs.Uint("max-streams", spdy.DefaultMaxConcurrentStreams, "concurrent requests the proxy may send over one session (SPDY MAX_CONCURRENT_STREAMS)")
		maxUpgrades = fs.Int("max-upgrades", spdy.DefaultMaxUpgradedStreams, "WebSockets (and other upgraded streams) at once per session; more get 503")
		showVersion = fs.Bool("version", false, "print the version and exit")
	)
	fs.Var(&proxies, "proxy", "proxy registration `URL`, e.g. https://example.com/.well-known/spdy-origin (repeatable; env: comma-separated)")
	fs.Usage = func() {
		fmt.Fprintf(usage, "Usage: spdy-origin-agent --proxy URL --token TOKEN (--to URL | --root DIR) [flags]\n\n")
		fmt.Fprintf(usage, "Serves a local HTTP server or directory on the internet through Caddy's spdy_origin handler.\n")
		fmt.Fprintf(usage, "Every flag except --version can also be set by an environment variable %s<FLAG>, e.g. %s, %s.\n\nFlags:\n",
			envPrefix, envName("token"), envName("proxy"))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err // already printed by fs with usage
	}
	if fs.NArg() > 0 {
		return nil, usageErrorf("unexpected argument %q", fs.Arg(0))
	}
	// Environment for flags not set on the command line.
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		// --version has no environment variable: a SPDY_ORIGIN_VERSION that a
		// container image or package sets for its own purposes must not stop the agent.
		if set[f.Name] || envErr != nil || f.Name == "version" {
			return
		}
		v := getenv(envName(f.Name))
		if v == "" {
			return
		}
		vals := []string{v}
		if f.Name == "proxy" {
			vals = strings.Split(v, ",")
		}
		for _, one := range vals {
			if one = strings.TrimSpace(one); one == "" {
				continue
			}
			if err := fs.Set(f.Name, one); err != nil {
				envErr = usageErrorf("%s=%q: %v", envName(f.Name), v, err)
				return
			}
		}
	})
	if envErr != nil {
		return nil, envErr
	}

	c := &cliConfig{showVersion: *showVersion}
	if c.showVersion {
		return c, nil
	}
	lvl, err := zapcore.ParseLevel(*logLevel)
	if err != nil {
		return nil, usageErrorf("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	c.logLevel = lvl
	switch *logFormat {
	case "console", "json":
		c.logFormat = *logFormat
	default:
		return nil, usageErrorf("--log-format %q: want console or json", *logFormat)
	}

	o := &c.opts
	if len(proxies) == 0 {
		return nil, usageErrorf("--proxy is required (or %s)", envName("proxy"))
	}
	for _, p := range proxies {
		u, err := url.Parse(p)
		if err != nil {
			return nil, usageErrorf("--proxy %q: %v", p, err)
		}
		if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, usageErrorf("--proxy %q: want https://host[:port]/path", p)
		}
		o.Proxies = append(o.Proxies, u)
	}
	if *token == "" {
		return nil, usageErrorf("--token is required (or %s)", envName("token"))
	}
	o.Token = *token
	switch {
	case *to != "" && *root != "":
		return nil, usageErrorf("--to and --root are exclusive; give one")
	case *to == "" && *root == "":
		return nil, usageErrorf("one of --to URL or --root DIR is required")
	case *to != "":
		u, err := url.Parse(*to)
		if err != nil {
			return nil, usageErrorf("--to %q: %v", *to, err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, usageErrorf("--to %q: want http://host:port or https://host:port", *to)
		}
		o.To = u
	default:
		o.Root = *root
	}
	o.CAFile = *caFile
	o.InsecureSkipVerify = *insecure
	if *conns < 1 || *conns > 64 {
		return nil, usageErrorf("--connections %d: want 1..64", *conns)
	}
	o.Connections = *conns
	if *drain < 0 {
		return nil, usageErrorf("--drain-timeout must not be negative")
	}
	o.DrainTimeout = *drain
	if *maxStreams < 1 || *maxStreams > 1<<31-1 {
		return nil, usageErrorf("--max-streams %d: want 1..2147483647", *maxStreams)
	}
	o.MaxStreams = uint32(*maxStreams)
	if *maxUpgrades < 1 {
		return nil, usageErrorf("--max-upgrades %d: want at least 1", *maxUpgrades)
	}
	o.MaxUpgrades = *maxUpgrades
	o.Name = *name
	if o.Name == "" {
		o.Name, _ = os.Hostname()
	}
	return c, nil
}

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...)}
}

func newLogger(level zapcore.Level, format string, w zapcore.WriteSyncer) *zap.Logger {
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	if format == "json" {
		enc = zapcore.NewJSONEncoder(ec)
	} else {
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	}
	return zap.New(zapcore.NewCore(enc, w, level), zap.ErrorOutput(w))
}

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is main without os.Exit, for tests. Exit codes: 0 ok, 1 runtime failure, 2 usage.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	c, err := parseArgs(args, getenv, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		var ue *usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "spdy-origin-agent: %v\n\nRun 'spdy-origin-agent -h' for usage.\n", err)
		}
		return 2
	}
	if c.showVersion {
		fmt.Fprintf(stdout, "spdy-origin-agent %s (%s %s/%s)\n", agentVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	}
	log := newLogger(c.logLevel, c.logFormat, zapcore.Lock(zapcore.AddSync(stderr)))
	defer func() { _ = log.Sync() }()

	a, err := NewAgent(c.opts, log)
	if err != nil {
		fmt.Fprintf(stderr, "spdy-origin-agent: %v\n\nRun 'spdy-origin-agent -h' for usage.\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	signalled := make(chan struct{})
	go func() {
		defer close(signalled)
		<-ctx.Done()
		log.Info("signal received: draining sessions (send it again to exit at once)",
			zap.Duration("drain_timeout", c.opts.DrainTimeout))
		stop() // a second signal kills the process the default way
	}()
	err = a.Run(ctx)
	stop()
	<-signalled
	if err != nil {
		log.Error("agent failed", zap.Error(err))
		return 1
	}
	return 0
}
