package agent

// --check-config: the configuration as a start would build it, printed
// instead of run.

import (
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
)

// writeSummary prints, for --check-config, the configuration a has been built
// from: one setting a line with where it came from (flag, env, file or
// default), each route on a line of its own, the token redacted. Optional
// settings left unset are left out.
func (c *cliConfig) writeSummary(w io.Writer, a *Agent) {
	o := c.opts
	fmt.Fprintln(w, "spdy-origin-agent: configuration OK (checked as a start would; nothing was dialled)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(setting, value, flagName string) {
		fmt.Fprintf(tw, "  %s\t%s\t(%s)\n", setting, value, c.sources[flagName])
	}
	if c.configFile != "" {
		row("config", c.configFile, "config")
	}
	for _, p := range o.Proxies {
		row("proxy", p.Redacted(), "proxy")
	}
	row("token", "[redacted]", "token")
	name := o.Name
	if c.sources["name"] == "default" {
		name += " (host name)"
	}
	row("name", name, "name")
	for _, r := range a.routes {
		src := "to"
		if r.To == nil {
			src = "root"
		}
		row("route", r.Host+" → "+r.describe(), src)
	}
	if o.CAFile != "" {
		row("ca-file", o.CAFile, "ca-file")
	}
	if o.UpstreamCAFile != "" {
		row("upstream-ca-file", o.UpstreamCAFile, "upstream-ca-file")
	}
	if o.InsecureSkipVerify {
		row("insecure-skip-verify", "true (the proxy's certificate is NOT verified)", "insecure-skip-verify")
	}
	row("connections", fmt.Sprintf("%d per proxy", o.Connections), "connections")
	row("max-streams", strconv.FormatUint(uint64(o.MaxStreams), 10), "max-streams")
	row("max-upgrades", strconv.Itoa(o.MaxUpgrades), "max-upgrades")
	row("drain-timeout", o.DrainTimeout.String(), "drain-timeout")
	metrics := o.MetricsAddr
	if metrics == "" {
		metrics = "off"
	}
	row("metrics-addr", metrics, "metrics-addr")
	if o.DebugAddr != "" {
		row("debug-addr", o.DebugAddr+" (pprof, no authentication)", "debug-addr")
	}
	if o.NotSentLowat != 0 {
		row("tcp-notsent-lowat", strconv.Itoa(o.NotSentLowat), "tcp-notsent-lowat")
	}
	row("log-level", c.logLevel.String(), "log-level")
	row("log-format", c.logFormat, "log-format")
	_ = tw.Flush()
}
