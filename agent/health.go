package agent

// /healthz and /readyz: plain-text answers for service managers, load
// balancers and people with curl.
//
//   - /healthz is 200 while at least one session is up (takes requests),
//     else 503 with the reason: each proxy's last failures, or that the
//     agent is draining. It answers "can this agent serve at all?".
//   - /readyz is 200 only while every --proxy has a session up and the
//     agent is not draining. It answers "is this agent fully in service?":
//     an upgrade starts the new agent, waits for its /readyz, and only
//     then stops the old one (README: High availability and upgrades).

import (
	"fmt"
	"net/http"
	"strings"
)

func (a *Agent) healthz(w http.ResponseWriter, _ *http.Request) {
	snap := a.sessions.snapshot()
	up := snap.up()
	total := 0
	for _, n := range up {
		total += n
	}
	var b strings.Builder
	code := http.StatusOK
	switch {
	case total > 0:
		fmt.Fprintf(&b, "ok: %d session(s) up\n", total)
	case snap.stopping:
		code = http.StatusServiceUnavailable
		b.WriteString("no session up: the agent is shutting down (draining)\n")
	default:
		code = http.StatusServiceUnavailable
		b.WriteString("no session up\n")
	}
	writeProxies(&b, snap, up)
	writeText(w, code, b.String())
}

func (a *Agent) readyz(w http.ResponseWriter, _ *http.Request) {
	snap := a.sessions.snapshot()
	up := snap.up()
	var missing []string
	for _, p := range snap.proxies {
		if up[p] == 0 {
			missing = append(missing, p)
		}
	}
	var b strings.Builder
	code := http.StatusServiceUnavailable
	switch {
	case snap.stopping:
		b.WriteString("not ready: the agent is shutting down (draining)\n")
	case len(missing) > 0:
		fmt.Fprintf(&b, "not ready: no session up to %s\n", strings.Join(missing, ", "))
	default:
		code = http.StatusOK
		b.WriteString("ready: every proxy has a session up\n")
	}
	writeProxies(&b, snap, up)
	writeText(w, code, b.String())
}

// writeProxies adds one line per proxy: sessions up, or why none is.
func writeProxies(b *strings.Builder, snap snapshot, up map[string]int) {
	for _, p := range snap.proxies {
		if n := up[p]; n > 0 {
			fmt.Fprintf(b, "%s: %d session(s) up\n", p, n)
		} else {
			fmt.Fprintf(b, "%s: down: %s\n", p, snap.whyDown(p))
		}
	}
}

func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = fmt.Fprint(w, body)
}
