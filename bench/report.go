//go:build linux

package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

const (
	pTunnel = "tunnel"
	pRP     = "reverse_proxy"
	// pRPTLS is the yardstick for what the tunnel cannot avoid: the same
	// Caddy's reverse_proxy to the origin over HTTPS (HTTP/1.1), so that
	// every byte is encrypted and decrypted twice, as in the tunnel.
	pRPTLS = "rp_https"
	// pRPRelay is the yardstick for the tunnel's topology: the same Caddy's
	// reverse_proxy over HTTPS (HTTP/1.1) to a relay process that terminates
	// TLS and pumps the bytes to the plain origin (tlspump.go): two TLS hops,
	// one more process and one more loopback hop, as in the tunnel, with the
	// least work that process can do.
	pRPRelay = "rp_relay"
	pDirect  = "direct"
)

var pathNames = []string{pTunnel, pRP, pRPTLS, pRPRelay, pDirect}

// row is one line of the table. vals holds the figure for each path that has one.
type row struct {
	metric string
	unit   string
	prec   int
	vals   map[string]float64
	note   string // shown instead of figures when vals is empty, or after them
	// target, if set, states a goal (on a ratio, or on the tunnel figure
	// itself); targetMet says whether this run meets it (nil: not judged).
	target    string
	targetMet *bool
	// floor is what rp_relay, the topology with the least work in its
	// second process, scores against the same bounds ("" without it).
	floor string
}

// judge sets the row's target to text and judges it: every check must hold
// (a ratio missing, because a path was not measured, leaves it unjudged).
func (r *row) judge(text string, checks ...check) {
	r.target = text
	met := true
	for _, c := range checks {
		v, ok := r.ratio(c.to)
		if !ok {
			r.targetMet = nil
			return
		}
		if c.max > 0 && v > c.max || c.min > 0 && v < c.min {
			met = false
		}
	}
	r.targetMet = boolp(met)
	r.floor = r.floorFor(checks)
}

// floorFor states rp_relay's ratios on the target's bounds, and whether
// they hold: a bound that rp_relay misses too is below what the tunnel's
// topology (one more process and TLS hop than reverse_proxy) allows.
func (r *row) floorFor(checks []check) string {
	relay, ok := r.vals[pRPRelay]
	if !ok {
		return ""
	}
	var parts []string
	held := true
	for _, c := range checks {
		o, ok := r.vals[c.to]
		if !ok || o == 0 {
			return ""
		}
		v := relay / o
		parts = append(parts, fmt.Sprintf("%.2f× %s", v, shortPath(c.to)))
		if c.max > 0 && v > c.max || c.min > 0 && v < c.min {
			held = false
		}
	}
	verdict := "holds there"
	if !held {
		verdict = "missed there too"
	}
	return "rp_relay: " + strings.Join(parts, ", ") + ", " + verdict
}

func shortPath(p string) string {
	if p == pRP {
		return "rp"
	}
	return p
}

// check is one bound on tunnel÷to: at least min, at most max (0: none).
type check struct {
	to       string
	min, max float64
}

func (r *row) ratio(to string) (float64, bool) {
	t, ok1 := r.vals[pTunnel]
	o, ok2 := r.vals[to]
	if !ok1 || !ok2 || o == 0 {
		return 0, false
	}
	return t / o, true
}

type report struct {
	rows    []*row
	grids   []*grid
	machine []string
	notes   []string
	started time.Time
	args    string
}

func (rep *report) add(r *row) *row {
	rep.rows = append(rep.rows, r)
	return r
}

func (rep *report) note(format string, a ...any) {
	rep.notes = append(rep.notes, fmt.Sprintf(format, a...))
}

func boolp(b bool) *bool { return &b }

func fmtVal(v float64, prec int) string {
	return fmt.Sprintf("%.*f", prec, v)
}

// cells renders a row as: metric, a figure per path (pathNames), a ratio per
// ratioPaths, target.
func (r *row) cells() []string {
	c := []string{r.metric}
	if r.unit != "" {
		c[0] += " (" + r.unit + ")"
	}
	for _, p := range pathNames {
		if v, ok := r.vals[p]; ok {
			c = append(c, fmtVal(v, r.prec))
		} else {
			c = append(c, "—")
		}
	}
	for _, p := range ratioPaths {
		if v, ok := r.ratio(p); ok {
			c = append(c, fmt.Sprintf("%.2f×", v))
		} else {
			c = append(c, "—")
		}
	}
	t := r.target
	if r.targetMet != nil {
		if *r.targetMet {
			t += " ✔ met"
		} else {
			t += " ✘ missed"
		}
	}
	if r.floor != "" {
		t += " (" + r.floor + ")"
	}
	c = append(c, t)
	return c
}

// ratioPaths are the paths each tunnel figure is divided by, in header's order.
var ratioPaths = []string{pRP, pRPTLS, pRPRelay, pDirect}

var header = []string{"measurement", pTunnel, pRP, pRPTLS, pRPRelay, pDirect, "tunnel÷rp", "tunnel÷rp_https", "tunnel÷rp_relay", "tunnel÷direct", "target"}

// grid is a table of its own shape, printed after the paths table: the priority
// section's, whose columns are configurations of the tunnel rather than paths.
type grid struct {
	title string
	cols  []string // the first is the metric's
	rows  []gridRow
	notes []string
}

type gridRow struct {
	cells []string // one per column
	note  string
}

func (g *grid) add(note string, cells ...string) {
	g.rows = append(g.rows, gridRow{cells: cells, note: note})
}

// text renders the tables for the terminal.
func (rep *report) text() string {
	var b strings.Builder
	if len(rep.rows) > 0 {
		alignTable(&b, header, rep.pathRows())
		b.WriteString("\n")
	}
	for _, g := range rep.grids {
		b.WriteString(g.title + "\n\n")
		alignTable(&b, g.cols, g.rows)
		for _, n := range g.notes {
			b.WriteString("note: " + n + "\n")
		}
		b.WriteString("\n")
	}
	for _, m := range rep.machine {
		b.WriteString(m + "\n")
	}
	for _, n := range rep.notes {
		b.WriteString("note: " + n + "\n")
	}
	return b.String()
}

// pathRows are the paths table's rows, as a grid's.
func (rep *report) pathRows() []gridRow {
	out := make([]gridRow, len(rep.rows))
	for i, r := range rep.rows {
		out[i] = gridRow{cells: r.cells(), note: r.note}
	}
	return out
}

// alignTable writes rows under cols in aligned columns: the first and last
// left-aligned, the others right-aligned; a row's note, if any, under it.
func alignTable(b *strings.Builder, cols []string, rows []gridRow) {
	w := make([]int, len(cols))
	for _, rr := range append([]gridRow{{cells: cols}}, rows...) {
		for i, c := range rr.cells {
			w[i] = max(w[i], len([]rune(c)))
		}
	}
	line := func(rr []string) {
		for i, c := range rr {
			pad := w[i] - len([]rune(c))
			if i == 0 || i == len(rr)-1 {
				b.WriteString(c + strings.Repeat(" ", pad))
			} else {
				b.WriteString(strings.Repeat(" ", pad) + c)
			}
			if i < len(rr)-1 {
				b.WriteString("  ")
			}
		}
		b.WriteString("\n")
	}
	line(cols)
	total := 0
	for _, x := range w {
		total += x + 2
	}
	b.WriteString(strings.Repeat("─", total-2) + "\n")
	for _, rr := range rows {
		line(rr.cells)
		if rr.note != "" {
			b.WriteString("    ↳ " + rr.note + "\n")
		}
	}
}

// markdownTable writes rows under cols as a markdown table: the first and last
// column left-aligned, the others right-aligned; a row's note in its first cell.
func markdownTable(b *strings.Builder, cols []string, rows []gridRow) {
	esc := func(s string) string { return strings.ReplaceAll(s, "|", "\\|") }
	b.WriteString("| " + strings.Join(cols, " | ") + " |\n|---|" + strings.Repeat("--:|", len(cols)-2) + "---|\n")
	for _, r := range rows {
		c := slices.Clone(r.cells)
		for i := range c {
			c[i] = esc(c[i])
		}
		if r.note != "" {
			c[0] += "<br>_" + esc(r.note) + "_"
		}
		b.WriteString("| " + strings.Join(c, " | ") + " |\n")
	}
	b.WriteString("\n")
}

// markdown renders the tables for bench/results.md (included by README.md).
func (rep *report) markdown() string {
	var b strings.Builder
	b.WriteString("<!-- written by `make bench` (go run ./bench); do not edit by hand -->\n")
	cmd := "make bench"
	if rep.args != "" {
		cmd = "go run ./bench " + rep.args
	}
	when := rep.started.UTC().Format("2006-01-02 15:04 UTC")
	if len(rep.rows) > 0 {
		fmt.Fprintf(&b, "**Tunnel vs Caddy reverse_proxy vs direct**, `%s`, %s.\n\n", cmd, when)
		markdownTable(&b, header, rep.pathRows())
	}
	for _, g := range rep.grids {
		fmt.Fprintf(&b, "**%s**, `%s`, %s.\n\n", g.title, cmd, when)
		markdownTable(&b, g.cols, g.rows)
		for _, n := range g.notes {
			b.WriteString("- " + n + "\n")
		}
		b.WriteString("\n")
	}
	for _, m := range rep.machine {
		b.WriteString("- " + m + "\n")
	}
	for _, n := range rep.notes {
		b.WriteString("- " + n + "\n")
	}
	return b.String()
}

// machineInfo describes where the numbers come from.
func machineInfo(caddyBin, agentBin string) []string {
	cpu := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	var u syscall.Utsname
	kernel := "unknown kernel"
	if syscall.Uname(&u) == nil {
		kernel = cstr(u.Sysname[:]) + " " + cstr(u.Release[:]) + " " + cstr(u.Machine[:])
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				mem = ", " + strings.TrimSpace(rest) + " RAM"
			}
		}
	}
	out := []string{
		fmt.Sprintf("machine: %s, %d cores%s; kernel %s; bench built with %s", cpu, runtime.NumCPU(), mem, kernel, runtime.Version()),
	}
	if v, err := exec.Command(caddyBin, "version").Output(); err == nil {
		out = append(out, "caddy: "+strings.TrimSpace(string(v)))
	}
	if v, err := exec.Command(agentBin, "--version").CombinedOutput(); err == nil {
		out = append(out, "agent: "+strings.TrimSpace(strings.SplitN(string(v), "\n", 2)[0]))
	}
	return out
}

func cstr(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}
