package caddymodule

import (
	"net/netip"
	"sync"
	"time"
)

// authLimiterMaxEntries caps the address prefixes one pool's limiter
// tracks. Memory bound: an entry is a netip.Prefix key and an authEntry
// (88 bytes), about 155 bytes in the map as measured by
// TestAuthLimiterMemoryBound, so a full table is about 1.5 MB per pool
// however many addresses an attacker sprays.
const authLimiterMaxEntries = 10000

// authPruneEvery spaces the scans for expired entries, so that a sprayer
// hitting a full table costs one scan a second, not one a request.
const authPruneEvery = time.Second

// authLimiter counts wrong or missing tokens per address prefix: once a
// prefix has sent max of them within window, its further wrong tokens get
// 429 for window from the one that reached max. It never sees a
// valid token (serveRegistration accepts those before asking it), so an
// attacker who shares the agent's address (CGNAT, an office NAT, the same
// LAN) locks out only other wrong tokens, never the agent.
//
// Spraying addresses cannot flush a lockout: an entry leaves the table
// only once its window and lockout have both expired, and when the table
// is full, failures from prefixes it does not track are counted in one
// shared overflow entry. A sprayer thus locks out that overflow entry,
// which costs nothing to anyone holding a valid token.
//
// The counts live in the pool's authTable, which outlives config reloads;
// max and window are the settings of the handler that holds this limiter,
// so loading a config never changes the limits a live one applies.
type authLimiter struct {
	*authTable
	max    int
	window time.Duration
}

// authTable is what a pool's limiters count in.
type authTable struct {
	now func() time.Time // time.Now, but tests move it

	mu       sync.Mutex
	entries  map[netip.Prefix]authEntry
	overflow authEntry
	pruned   time.Time // last scan for expired entries
}

type authEntry struct {
	fails   int       // wrong tokens counted since first
	first   time.Time // start of the counting window
	blocked time.Time // locked out until
}

// authFailure is what the limiter made of one wrong token.
type authFailure struct {
	prefix    string        // what it was counted against, for logs
	fails     int           // wrong tokens counted in the window
	lockedFor time.Duration // time left in the prefix's lockout; 0: none
	wasLocked bool          // locked out before this one: answer 429, not 401
}

// started reports whether this failure began the lockout.
func (f authFailure) started() bool { return f.lockedFor > 0 && !f.wasLocked }

// Names in logs for the entries that are not one prefix.
const (
	overflowPrefix = "overflow (prefixes beyond the tracked maximum)"
	unparsedPrefix = "unparsed client address"
)

// newAuthLimiter returns a limiter with a table of its own.
func newAuthLimiter(max int, window time.Duration) *authLimiter {
	return &authLimiter{authTable: newAuthTable(), max: max, window: window}
}

func newAuthTable() *authTable {
	return &authTable{now: time.Now, entries: make(map[netip.Prefix]authEntry)}
}

// authTables holds one table per pool name for the life of the process,
// so that a config reload (frequent with tools that generate configs) does
// not lift a lockout.
var authTables sync.Map // pool name → *authTable

// poolAuthLimiter returns a limiter with these settings that counts in the
// pool's table.
func poolAuthLimiter(pool string, max int, window time.Duration) *authLimiter {
	v, _ := authTables.LoadOrStore(pool, newAuthTable())
	return &authLimiter{authTable: v.(*authTable), max: max, window: window}
}

// authPrefix is the unit of accounting: an IPv4 address, or the /64 of an
// IPv6 address. One subscriber gets a /64 or more, so counting single
// IPv6 addresses would give every attacker 2^64 fresh starts. Addresses
// that do not parse share the zero prefix.
func authPrefix(ip string) netip.Prefix {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return netip.Prefix{}
	}
	a = a.Unmap().WithZone("")
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

// fail counts a wrong or missing token from ip.
func (l *authLimiter) fail(ip string) authFailure {
	key := authPrefix(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if now.Sub(l.pruned) >= authPruneEvery {
		l.pruneLocked(now)
	}
	name := unparsedPrefix
	if key.IsValid() {
		name = key.String()
	}
	e, tracked := l.entries[key]
	overflow := !tracked && len(l.entries) >= authLimiterMaxEntries
	if overflow {
		e, name = l.overflow, overflowPrefix
	}
	f := l.countLocked(&e, now)
	f.prefix = name
	if overflow {
		l.overflow = e
	} else {
		l.entries[key] = e
	}
	return f
}

// countLocked counts one wrong token in e, unless e is locked out.
func (l *authLimiter) countLocked(e *authEntry, now time.Time) authFailure {
	if d := e.blocked.Sub(now); d > 0 {
		return authFailure{fails: e.fails, lockedFor: d, wasLocked: true}
	}
	if now.Sub(e.first) > l.window {
		e.fails, e.first = 0, now
	}
	e.fails++
	f := authFailure{fails: e.fails}
	if e.fails >= l.max {
		e.blocked = now.Add(l.window)
		f.lockedFor = l.window
	}
	return f
}

// pruneLocked drops the entries whose window and lockout have both
// expired: they hold nothing a new entry would not.
func (l *authLimiter) pruneLocked(now time.Time) {
	l.pruned = now
	for k, e := range l.entries {
		if l.expired(e, now) {
			delete(l.entries, k)
		}
	}
	if l.expired(l.overflow, now) {
		l.overflow = authEntry{}
	}
}

func (l *authLimiter) expired(e authEntry, now time.Time) bool {
	return now.Sub(e.first) > l.window && !now.Before(e.blocked)
}
