package agent

// The command line: flags, their environment variables, the --config file
// (config.go), and Main.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/spdy-origin/spdy-origin/internal/hosts"
	"github.com/spdy-origin/spdy-origin/spdy"
)

// version and commit are set at build time (make dist does) with
//
//	-ldflags "-X github.com/spdy-origin/spdy-origin/agent.version=v1.2.3
//	          -X github.com/spdy-origin/spdy-origin/agent.commit=0123abcd..."
//
// Otherwise version is the module version from the build info, or "devel", and
// commit is the VCS revision the go command stamped, or "unknown".
var version, commit = "", ""

func agentVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

func agentCommit() string {
	if commit != "" {
		return commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && s.Value != "" {
				return s.Value
			}
		}
	}
	return "unknown"
}

const envPrefix = "SPDY_ORIGIN_"

// Main runs the agent as the spdy-origin-agent command: args without the program
// name, getenv for the SPDY_ORIGIN_* variables (os.Getenv), usage and logs to stderr.
// It runs until SIGINT or SIGTERM, then drains. It returns the exit code: 0 ok (or
// -h, --version, a --check-config that passed), 1 runtime failure, 2 usage or
// configuration error.
func Main(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
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
		fmt.Fprintf(stdout, "spdy-origin-agent %s (commit %s, %s %s/%s)\n", agentVersion(), agentCommit(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	}
	return c.start(stdout, stderr)
}

// start builds the agent c describes and runs it until SIGINT or SIGTERM;
// with --check-config it stops after building it (every check a start
// makes, nothing dialled or listened on) and prints the configuration.
// It returns Main's exit code.
func (c *cliConfig) start(stdout, stderr io.Writer) int {
	log := newLogger(c.logLevel, c.logFormat, zapcore.Lock(zapcore.AddSync(stderr)))
	defer func() { _ = log.Sync() }()
	for _, w := range c.warnings {
		log.Warn(w)
	}

	a, err := NewAgent(c.opts, log)
	if err != nil {
		fmt.Fprintf(stderr, "spdy-origin-agent: %v\n\nRun 'spdy-origin-agent -h' for usage.\n", err)
		return 2
	}
	if c.checkOnly {
		a.closeIdle()
		c.writeSummary(stdout, a)
		return 0
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

// cliConfig is the parsed command line before validation into Options.
type cliConfig struct {
	opts        Options
	logLevel    zapcore.Level
	logFormat   string
	showVersion bool
	checkOnly   bool     // --check-config
	configFile  string   // --config, for --check-config's summary
	warnings    []string // to log once the logger exists
	// sources says, for each flag name, where its value came from:
	// "flag", "env SPDY_ORIGIN_…", "file PATH" or "default".
	sources map[string]string
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

// cliFlags holds the flags' values as parsed, before they are checked.
type cliFlags struct {
	proxies, to, root     stringList
	token, caFile, name   string
	upstreamCAFile        string
	metricsAddr           string
	debugAddr             string
	config                string
	insecure, showVersion bool
	checkConfig           bool
	conns, maxUpgrades    int
	notSentLowat          int
	maxStreams            uint
	drain                 time.Duration
	logLevel, logFormat   string

	// from names where a flag's value came from when not from the
	// command line (an environment variable, the --config file), for errors.
	from     map[string]string
	warnings []string
}

// define declares every flag on fs.
func (f *cliFlags) define(fs *flag.FlagSet) {
	fs.StringVar(&f.token, "token", "", "bearer `token` the proxy expects (prefer the env var: command lines are visible to other users)")
	fs.Var(&f.to, "to", "`[HOST=]URL` of an upstream to reverse-proxy to: http://127.0.0.1:8080, https://… (h2 when offered), or h2c://127.0.0.1:50051 for cleartext HTTP/2 such as gRPC; "+
		"with HOST= (media.example.com, *.example.com) only for that host, without it for every other host (repeatable; env: comma-separated)")
	fs.Var(&f.root, "root", "`[HOST=]DIR`: a directory to serve as static files, for HOST or, without it, every other host (repeatable; env: comma-separated)")
	fs.StringVar(&f.config, "config", "", "TOML `file` with settings: keys are the flags' names (to = [\"a.example.com=http://127.0.0.1:8080\", ...]); "+
		"the command line, then the environment, win over it")
	fs.StringVar(&f.caFile, "ca-file", "", "PEM `file` with extra CA certificates to trust for the proxy, e.g. Caddy's 'tls internal' root")
	fs.StringVar(&f.upstreamCAFile, "upstream-ca-file", "", "PEM `file` with extra CA certificates to trust for an https:// --to upstream (a self-signed or private-CA upstream)")
	fs.BoolVar(&f.insecure, "insecure-skip-verify", false, "do NOT verify the proxy's TLS certificate (testing only; dangerous)")
	fs.IntVar(&f.conns, "connections", 2, "parallel sessions to each proxy")
	fs.StringVar(&f.name, "name", "", "agent `name` sent to the proxy for its logs and metrics (default: host name)")
	fs.DurationVar(&f.drain, "drain-timeout", 30*time.Second, "on SIGINT/SIGTERM, how long in-flight requests may finish")
	fs.StringVar(&f.logLevel, "log-level", "info", "log `level`: debug, info, warn, error")
	fs.StringVar(&f.logFormat, "log-format", "console", "log `format`: console or json")
	fs.UintVar(&f.maxStreams, "max-streams", spdy.DefaultMaxConcurrentStreams, "concurrent requests the proxy may send over one session (SPDY MAX_CONCURRENT_STREAMS)")
	fs.IntVar(&f.maxUpgrades, "max-upgrades", spdy.DefaultMaxUpgradedStreams, "WebSockets (and other upgraded streams) at once per session; more get 503")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus /metrics, /healthz and /readyz on this `host:port`, e.g. 127.0.0.1:9464 (default: off; no authentication, keep it local)")
	fs.StringVar(&f.debugAddr, "debug-addr", "", "serve Go's pprof profiles on this `host:port` (default: off; \":6060\" is 127.0.0.1:6060; no authentication)")
	fs.BoolVar(&f.showVersion, "version", false, "print the version (and commit) and exit")
	fs.BoolVar(&f.checkConfig, "check-config", false, "check the flags, environment and --config file as a start would (routes, directories, CA files, limits), "+
		"print the resulting configuration and exit: 0 if it is fine, 2 if not; nothing is dialled")
	fs.IntVar(&f.notSentLowat, "tcp-notsent-lowat", 0, "least unsent `bytes` the kernel may queue on a session's TCP connection (TCP_NOTSENT_LOWAT; raised to 10 ms of the link's rate, up to 1 MiB); 0: 32 KiB, -1: the kernel's setting")
	fs.Var(&f.proxies, "proxy", "proxy registration `URL`, e.g. https://example.com/.well-known/spdy-origin (repeatable; env: comma-separated)")
}

// hiddenFlags are advanced knobs that -h leaves out (README's Priorities
// section describes them); their environment variables work as for any flag.
var hiddenFlags = map[string]bool{"tcp-notsent-lowat": true}

// printDefaults is fs.PrintDefaults without hiddenFlags.
func printDefaults(fs *flag.FlagSet, w io.Writer) {
	visible := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	visible.SetOutput(w)
	fs.VisitAll(func(f *flag.Flag) {
		if !hiddenFlags[f.Name] {
			visible.Var(f.Value, f.Name, f.Usage)
			visible.Lookup(f.Name).DefValue = f.DefValue
		}
	})
	visible.PrintDefaults()
}

// parseArgs parses args (without the program name) and env (os.Environ-style lookups).
// Flags given on the command line win over the environment. A *usageError means
// "print usage and exit 2"; flag.ErrHelp means -h was asked for.
func parseArgs(args []string, getenv func(string) string, usage io.Writer) (*cliConfig, error) {
	fs := flag.NewFlagSet("spdy-origin-agent", flag.ContinueOnError)
	fs.SetOutput(usage)
	var f cliFlags
	f.define(fs)
	fs.Usage = func() {
		fmt.Fprintf(usage, "Usage: spdy-origin-agent --proxy URL --token TOKEN (--to [HOST=]URL | --root [HOST=]DIR)... [flags]\n")
		fmt.Fprintf(usage, "       spdy-origin-agent --config agent.toml [flags]\n\n")
		fmt.Fprintf(usage, "Serves local HTTP servers or directories, chosen by host name, on the internet through Caddy's spdy_origin handler.\n")
		fmt.Fprintf(usage, "Every flag except --version and --check-config can also be set by an environment variable %s<FLAG>, e.g. %s, %s.\n\nFlags:\n",
			envPrefix, envName("token"), envName("proxy"))
		printDefaults(fs, usage)
	}
	if err := fs.Parse(args); err != nil {
		return nil, err // already printed by fs with usage
	}
	if fs.NArg() > 0 {
		return nil, usageErrorf("unexpected argument %q", fs.Arg(0))
	}
	onCommandLine := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { onCommandLine[fl.Name] = true })
	f.from = map[string]string{}
	if err := setFromEnv(fs, getenv, givenIn(fs), f.from); err != nil {
		return nil, err
	}
	if f.config != "" {
		w, err := applyConfigFile(fs, f.config, givenIn(fs), f.from)
		if err != nil {
			return nil, err
		}
		f.warnings = w
	}
	c, err := f.check()
	if err != nil {
		return nil, err
	}
	c.sources = map[string]string{}
	fs.VisitAll(func(fl *flag.Flag) {
		switch src := f.from[fl.Name]; {
		case onCommandLine[fl.Name]:
			c.sources[fl.Name] = "flag"
		case src == envName(fl.Name):
			c.sources[fl.Name] = "env " + src
		case src != "":
			c.sources[fl.Name] = "file " + src
		default:
			c.sources[fl.Name] = "default"
		}
	})
	return c, nil
}

// givenIn reports, for a flag name, whether fs already has a value for it
// from a source that wins over the next one; a route flag counts as given
// when either is (the routes are one setting).
func givenIn(fs *flag.FlagSet) func(name string) bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return func(name string) bool {
		if slices.Contains(routeFlags, name) {
			return slices.ContainsFunc(routeFlags, func(n string) bool { return set[n] })
		}
		return set[name]
	}
}

// noEnv are the flags without an environment variable: they are not
// settings but things to do instead of running. A SPDY_ORIGIN_VERSION that a
// container image or package sets for its own purposes, or a
// SPDY_ORIGIN_CHECK_CONFIG left in a service's environment file, must not
// turn the agent into one that prints something and exits 0.
var noEnv = map[string]bool{"version": true, "check-config": true}

// setFromEnv sets every flag that given says the command line did not set
// from its environment variable, if that is set, and records it in from.
func setFromEnv(fs *flag.FlagSet, getenv func(string) string, given func(string) bool, from map[string]string) error {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if given(f.Name) || envErr != nil || noEnv[f.Name] {
			return
		}
		v := getenv(envName(f.Name))
		if v == "" {
			return
		}
		from[f.Name] = envName(f.Name)
		vals := []string{v}
		if repeatable[f.Name] {
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
	return envErr
}

// check checks the flags and turns them into a cliConfig.
func (f *cliFlags) check() (*cliConfig, error) {
	c := &cliConfig{showVersion: f.showVersion, checkOnly: f.checkConfig, configFile: f.config, warnings: f.warnings}
	if c.showVersion {
		return c, nil
	}
	lvl, err := zapcore.ParseLevel(f.logLevel)
	if err != nil {
		return nil, usageErrorf("--log-level %q: want debug, info, warn or error", f.logLevel)
	}
	c.logLevel = lvl
	switch f.logFormat {
	case "console", "json":
		c.logFormat = f.logFormat
	default:
		return nil, usageErrorf("--log-format %q: want console or json", f.logFormat)
	}
	if err := f.proxyOptions(&c.opts); err != nil {
		return nil, err
	}
	if err := f.originOptions(&c.opts); err != nil {
		return nil, err
	}
	if err := f.limitOptions(&c.opts); err != nil {
		return nil, err
	}
	if f.metricsAddr != "" {
		if !isHostPort(f.metricsAddr) {
			return nil, usageErrorf("--metrics-addr %q: want host:port, e.g. 127.0.0.1:9464", f.metricsAddr)
		}
		c.opts.MetricsAddr = f.metricsAddr
	}
	if c.opts.DebugAddr, err = debugListenAddr(f.debugAddr); err != nil {
		return nil, err
	}
	return c, nil
}

// isHostPort reports whether addr is host:port with a numeric port (the
// host may be empty: every address), as a listener takes it.
func isHostPort(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	_, err = strconv.ParseUint(port, 10, 16)
	return err == nil
}

// proxyOptions checks where and how the agent registers: --proxy, --token,
// --ca-file, --insecure-skip-verify and --name.
func (f *cliFlags) proxyOptions(o *Options) error {
	if len(f.proxies) == 0 {
		return usageErrorf("--proxy is required (or %s)", envName("proxy"))
	}
	for _, p := range f.proxies {
		u, err := url.Parse(p)
		if err != nil {
			return usageErrorf("--proxy %q: %v", p, err)
		}
		if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return usageErrorf("--proxy %q: want https://host[:port]/path", p)
		}
		o.Proxies = append(o.Proxies, u)
	}
	if f.token == "" {
		return usageErrorf("--token is required (or %s)", envName("token"))
	}
	o.Token = f.token
	o.CAFile = f.caFile
	o.InsecureSkipVerify = f.insecure
	o.Name = f.name
	if o.Name == "" {
		o.Name, _ = os.Hostname()
	}
	return nil
}

// originOptions checks what the agent serves: the routes of --to and --root.
func (f *cliFlags) originOptions(o *Options) error {
	if len(f.to)+len(f.root) == 0 {
		return usageErrorf("at least one --to [HOST=]URL or --root [HOST=]DIR is required (or %s, %s, or to/root in --config)",
			envName("to"), envName("root"))
	}
	for _, v := range f.to {
		host, target := splitRoute(v, true)
		u, err := url.Parse(target)
		if err == nil {
			err = checkUpstreamURL(u)
		}
		if err == nil {
			err = checkRouteHost(host)
		}
		if err != nil {
			return usageErrorf("%s %q: %v", f.flagRef("to"), v, err)
		}
		o.Routes = append(o.Routes, Route{Host: host, To: u})
	}
	for _, v := range f.root {
		host, dir := splitRoute(v, false)
		err := checkRouteHost(host)
		if err == nil && dir == "" {
			err = errors.New("no directory")
		}
		if err != nil {
			return usageErrorf("%s %q: %v", f.flagRef("root"), v, err)
		}
		o.Routes = append(o.Routes, Route{Host: host, Root: dir})
	}
	// The same checks NewAgent makes, now, as usage errors.
	if _, err := o.routes(); err != nil {
		return usageErrorf("%s", err)
	}
	o.UpstreamCAFile = f.upstreamCAFile
	if o.UpstreamCAFile != "" && !o.hasHTTPSUpstream() {
		return usageErrorf("--upstream-ca-file needs an https:// --to upstream")
	}
	return nil
}

// checkRouteHost checks a route's host pattern ("": every host).
func checkRouteHost(host string) error {
	if host == "" {
		return nil
	}
	_, err := hosts.ParsePattern(host)
	return err
}

// splitRoute splits a --to or --root value into its host pattern ("" for
// every host) and its URL or directory. A value is HOST=TARGET when what
// precedes its first '=' could be a host: for a URL, no "://" (a bare
// URL's query may hold '='); for a directory, no '/' or '\\' (write
// ./a=b for a directory named a=b).
func splitRoute(v string, isURL bool) (host, target string) {
	h, t, ok := strings.Cut(v, "=")
	switch {
	case !ok, h == "":
		return "", v
	case isURL && strings.Contains(h, "://"):
		return "", v
	case !isURL && strings.ContainsAny(h, `/\`):
		return "", v
	}
	return h, t
}

// flagRef names a flag in an error, with where its value came from when
// not from the command line: "--to", "--to (from SPDY_ORIGIN_TO)".
func (f *cliFlags) flagRef(name string) string {
	if src := f.from[name]; src != "" {
		return fmt.Sprintf("--%s (from %s)", name, src)
	}
	return "--" + name
}

// limitOptions checks the numbers: --connections, --drain-timeout, --max-streams
// and --max-upgrades, and takes --tcp-notsent-lowat (any value: negative means
// the kernel's setting).
func (f *cliFlags) limitOptions(o *Options) error {
	if f.conns < 1 || f.conns > 64 {
		return usageErrorf("--connections %d: want 1..64", f.conns)
	}
	o.Connections = f.conns
	if f.drain < 0 {
		return usageErrorf("--drain-timeout must not be negative")
	}
	o.DrainTimeout = f.drain
	if f.maxStreams < 1 || f.maxStreams > 1<<31-1 {
		return usageErrorf("--max-streams %d: want 1..2147483647", f.maxStreams)
	}
	o.MaxStreams = uint32(f.maxStreams)
	if f.maxUpgrades < 1 {
		return usageErrorf("--max-upgrades %d: want at least 1", f.maxUpgrades)
	}
	o.MaxUpgrades = f.maxUpgrades
	o.NotSentLowat = f.notSentLowat
	return nil
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
