package caddymodule

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// blocked returns how long ip's wrong tokens are still refused with 429.
func (l *authLimiter) blocked(ip string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, tracked := l.entries[authPrefix(ip)]
	if !tracked && len(l.entries) >= authLimiterMaxEntries {
		e = l.overflow
	}
	return max(e.blocked.Sub(l.now()), 0)
}

// fakeClock makes l's time move only when the test says.
func fakeClock(l *authLimiter) (advance func(time.Duration)) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	l.now = func() time.Time { return now }
	return func(d time.Duration) { now = now.Add(d) }
}

// sprayAddr is the i-th of many distinct IPv4 addresses.
func sprayAddr(i int) string {
	return fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
}

func TestAuthLimiter(t *testing.T) {
	l := newAuthLimiter(3, time.Hour)
	advance := fakeClock(l)
	for i := range 2 {
		if f := l.fail("192.0.2.1"); f.lockedFor != 0 || f.fails != i+1 {
			t.Fatalf("failure %d: %+v, want counted and not locked out", i+1, f)
		}
	}
	if f := l.fail("192.0.2.1"); !f.started() || f.wasLocked || f.lockedFor != time.Hour || f.prefix != "192.0.2.1/32" {
		t.Fatalf("third failure: %+v, want the start of an hour's lockout of 192.0.2.1/32", f)
	}
	if f := l.fail("192.0.2.1"); !f.wasLocked || f.started() || f.lockedFor != time.Hour {
		t.Fatalf("failure while locked out: %+v, want a refusal with an hour left", f)
	}
	if l.blocked("192.0.2.2") != 0 {
		t.Fatal("another address is locked out")
	}
	// The lockout ends after the window, and counting starts afresh.
	advance(time.Hour + time.Second)
	if f := l.fail("192.0.2.1"); f.lockedFor != 0 || f.fails != 1 {
		t.Fatalf("after the lockout: %+v, want a fresh count", f)
	}
	// Failures further apart than the window do not add up.
	advance(2 * time.Hour)
	if f := l.fail("192.0.2.1"); f.fails != 1 {
		t.Fatalf("a failure two windows later counted as %d", f.fails)
	}
}

// Spraying more source addresses than the table holds must not lift a
// lockout (the old table was cleared when full), and must not grow it.
func TestAuthLimiterSprayKeepsLockout(t *testing.T) {
	l := newAuthLimiter(3, time.Hour)
	for range 3 {
		l.fail("192.0.2.1")
	}
	if l.blocked("192.0.2.1") <= 0 {
		t.Fatal("not locked out")
	}
	var overflow int
	for i := range 3 * authLimiterMaxEntries {
		if f := l.fail(sprayAddr(i)); f.prefix == overflowPrefix {
			overflow++
		}
	}
	if l.blocked("192.0.2.1") <= 0 {
		t.Fatal("spraying addresses lifted the lockout")
	}
	if n := len(l.entries); n > authLimiterMaxEntries {
		t.Fatalf("%d entries, more than the cap of %d", n, authLimiterMaxEntries)
	}
	// The sprayer's excess shares the overflow entry, which is now locked
	// out: an untracked address's wrong token gets 429.
	if overflow != 3*authLimiterMaxEntries-(authLimiterMaxEntries-1) {
		t.Fatalf("%d failures in the overflow entry", overflow)
	}
	if f := l.fail("198.51.100.7"); !f.wasLocked || f.prefix != overflowPrefix {
		t.Fatalf("untracked address with the table full: %+v, want the locked-out overflow entry", f)
	}
}

// Expired entries leave the table, so prefixes that come later are tracked
// on their own again; a locked-out one stays until its lockout ends.
func TestAuthLimiterPrunesExpired(t *testing.T) {
	l := newAuthLimiter(3, time.Minute)
	advance := fakeClock(l)
	for i := range authLimiterMaxEntries - 1 {
		l.fail(sprayAddr(i))
	}
	advance(30 * time.Second)
	for range 3 {
		l.fail("192.0.2.1") // the table's last place
	}
	// The sprayed entries' window is over; the lockout (begun 30s after
	// them) is not.
	advance(31 * time.Second)
	if f := l.fail("198.51.100.7"); f.prefix != "198.51.100.7/32" {
		t.Fatalf("after the window, a new address went to %q, want its own entry", f.prefix)
	}
	if n := len(l.entries); n != 2 {
		t.Fatalf("%d entries after pruning, want 2 (the new one and the lockout)", n)
	}
	if l.blocked("192.0.2.1") <= 0 {
		t.Fatal("pruning lifted a lockout")
	}
	advance(time.Minute)
	l.fail("198.51.100.8")
	if _, ok := l.entries[authPrefix("192.0.2.1")]; ok {
		t.Fatal("an expired lockout was kept")
	}
}

func TestAuthLimiterIPv6Prefix(t *testing.T) {
	l := newAuthLimiter(3, time.Hour)
	l.fail("2001:db8:1:2::1")
	l.fail("2001:db8:1:2::2")
	if f := l.fail("2001:db8:1:2:aaaa::3"); !f.started() || f.prefix != "2001:db8:1:2::/64" {
		t.Fatalf("third failure in one /64: %+v, want the /64 locked out", f)
	}
	if l.blocked("2001:db8:1:2:ffff::9") <= 0 {
		t.Fatal("addresses of one /64 not accounted together")
	}
	if l.blocked("2001:db8:1:3::1") != 0 {
		t.Fatal("the next /64 is locked out too")
	}
	if n := len(l.entries); n != 1 {
		t.Fatalf("%d entries for one /64, want 1", n)
	}
}

func TestAuthPrefix(t *testing.T) {
	for ip, want := range map[string]string{
		"192.0.2.1":             "192.0.2.1/32",
		"::ffff:192.0.2.1":      "192.0.2.1/32",
		"2001:db8::1":           "2001:db8::/64",
		"2001:db8:0:0:ffff::1":  "2001:db8::/64",
		"fe80::1%eth0":          "fe80::/64",
		"2001:db8:a:b:c:d:e:f0": "2001:db8:a:b::/64",
	} {
		if got := authPrefix(ip); got != netip.MustParsePrefix(want) {
			t.Errorf("authPrefix(%q) = %v, want %v", ip, got, want)
		}
	}
	if got := authPrefix("not-an-ip"); got.IsValid() {
		t.Errorf("authPrefix of garbage = %v, want the zero prefix", got)
	}
}

// The table stays at the cap, whatever is sprayed. The bytes per entry in
// authLimiterMaxEntries's comment are what this logs when run alone (go
// test -v -run TestAuthLimiterMemoryBound); in a full run, other tests'
// garbage skews the heap figures, so they are not asserted.
func TestAuthLimiterMemoryBound(t *testing.T) {
	l := newAuthLimiter(1<<30, time.Hour) // counting, never locking out
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 5 * authLimiterMaxEntries {
		l.fail(fmt.Sprintf("2001:db8:%x:%x::1", i>>16, i&0xffff))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if n := len(l.entries); n != authLimiterMaxEntries {
		t.Fatalf("%d entries, want the cap %d", n, authLimiterMaxEntries)
	}
	if l.overflow.fails != 4*authLimiterMaxEntries {
		t.Fatalf("overflow entry counted %d failures, want the %d beyond the cap", l.overflow.fails, 4*authLimiterMaxEntries)
	}
	if after.HeapAlloc > before.HeapAlloc {
		per := float64(after.HeapAlloc-before.HeapAlloc) / authLimiterMaxEntries
		t.Logf("%d entries: about %.0f bytes each, %.2f MB in all", authLimiterMaxEntries, per, per*authLimiterMaxEntries/1e6)
	}
	runtime.KeepAlive(l)
}
