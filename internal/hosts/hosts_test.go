package hosts

import (
	"strings"
	"testing"
)

func TestParsePattern(t *testing.T) {
	tests := []struct {
		in, want, err string
	}{
		{in: "media.example.com", want: "media.example.com"},
		{in: "Media.Example.COM.", want: "media.example.com"},
		{in: " *.Example.com ", want: "*.example.com"},
		{in: "*", want: "*"},
		{in: "nas_1.lan", want: "nas_1.lan"},
		{in: "127.0.0.1", want: "127.0.0.1"},
		{in: "localhost", want: "localhost"},
		{in: "", err: "empty host pattern"},
		{in: ".", err: "empty host pattern"},
		{in: "a..b", err: "empty label"},
		{in: ".a.b", err: "empty label"},
		{in: "a.example.com:8443", err: `no port (ports are ignored when hosts are matched; write "a.example.com")`},
		{in: "[::1]", err: "IPv6"},
		{in: "::1", err: "IPv6"},
		{in: "http://a.example.com", err: "not a URL"},
		{in: "a.example.com/x", err: "not a URL"},
		{in: "a.*.example.com", err: "whole first label"},
		{in: "*a.example.com", err: "whole first label"},
		{in: "**.example.com", err: "whole first label"},
		{in: "*.", err: "whole first label"},
		{in: "a b.com", err: "not allowed"},
		{in: "é.com", err: "not allowed"},
		{in: strings.Repeat("a", 64) + ".com", err: "longer than 63"},
		{in: strings.Repeat("a.", 127) + "ab", err: "longer than 253"},
	}
	for _, tt := range tests {
		got, err := ParsePattern(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParsePattern(%q) = %q, %v; want error containing %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParsePattern(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestCanonical(t *testing.T) {
	for in, want := range map[string]string{
		"A.Test":          "a.test",
		"a.test:8443":     "a.test",
		"a.test.":         "a.test",
		"A.TEST.:443":     "a.test",
		"[::1]:443":       "::1",
		"[::1]":           "::1",
		"[a.test]":        "a.test",
		"127.0.0.1:80":    "127.0.0.1",
		"":                "",
		"a.test:notaport": "a.test",
	} {
		if got := Canonical(in); got != want {
			t.Errorf("Canonical(%q) = %q, want %q", in, got, want)
		}
	}
}

// Canonical runs on every proxied request (the proxy's routing, the agent's
// routes): a Host already canonical, with or without a port, costs no
// allocation.
func TestCanonicalDoesNotAllocate(t *testing.T) {
	for _, in := range []string{"a.test", "a.test:8443", "[::1]:443"} {
		if n := testing.AllocsPerRun(100, func() { _ = Canonical(in) }); n != 0 {
			t.Errorf("Canonical(%q) allocates %v times per call, want 0", in, n)
		}
	}
}

func TestTableLookup(t *testing.T) {
	var tab Table[string]
	for _, p := range []string{"example.com", "*.example.com", "*.b.example.com", "a.b.example.com", "*"} {
		if !tab.Add(p, p) {
			t.Fatalf("Add(%q) refused", p)
		}
	}
	if tab.Add("*.example.com", "again") || tab.Add("*", "again") || tab.Add("example.com", "again") {
		t.Fatal("a duplicate pattern was added")
	}
	if tab.Len() != 5 {
		t.Fatalf("Len = %d", tab.Len())
	}
	tests := map[string]string{
		"example.com":       "example.com",     // exact, not the wildcard
		"x.example.com":     "*.example.com",   // one label under
		"x.y.example.com":   "*.example.com",   // two labels under
		"x.b.example.com":   "*.b.example.com", // the longer suffix wins
		"b.example.com":     "*.example.com",   // *.b.example.com does not match b.example.com
		"a.b.example.com":   "a.b.example.com", // exact beats every wildcard
		"z.a.b.example.com": "*.b.example.com",
		"other.org":         "*",
		"xexample.com":      "*", // not under example.com
		"":                  "*",
	}
	for host, want := range tests {
		if got, ok := tab.Lookup(host); !ok || got != want {
			t.Errorf("Lookup(%q) = %q, %v; want %q", host, got, ok, want)
		}
	}

	var noCatchAll Table[int]
	noCatchAll.Add("*.example.com", 1)
	for _, host := range []string{"example.com", "com", "", "example.com.evil"} {
		if _, ok := noCatchAll.Lookup(host); ok {
			t.Errorf("Lookup(%q) matched without a catch-all", host)
		}
	}
}

func TestSet(t *testing.T) {
	s := NewSet("a.test", "*.b.test", "a.test")
	if s.Len() != 2 {
		t.Fatalf("Len = %d, want 2 (duplicates ignored)", s.Len())
	}
	for host, want := range map[string]bool{"a.test": true, "x.b.test": true, "b.test": false, "c.test": false} {
		if got := s.Match(host); got != want {
			t.Errorf("Match(%q) = %v, want %v", host, got, want)
		}
	}
	var none *Set
	if none.Match("a.test") || none.Len() != 0 {
		t.Fatal("a nil Set matched")
	}
}

func TestTableDelete(t *testing.T) {
	var tab Table[string]
	for _, p := range []string{"a.test", "*.a.test", "*"} {
		tab.Add(p, p)
	}
	for _, p := range []string{"a.test", "*.a.test", "*"} {
		if !tab.Delete(p) {
			t.Errorf("Delete(%q) found nothing", p)
		}
		if tab.Delete(p) {
			t.Errorf("Delete(%q) twice removed something", p)
		}
	}
	if tab.Len() != 0 {
		t.Fatalf("Len = %d after deleting everything", tab.Len())
	}
	for _, host := range []string{"a.test", "x.a.test", "other.test"} {
		if _, ok := tab.Lookup(host); ok {
			t.Errorf("Lookup(%q) matched in an empty table", host)
		}
	}
	if !tab.Add("*.a.test", "again") {
		t.Fatal("a deleted pattern cannot be added again")
	}
}

// A pattern stays in a Multiset until each Add is taken back.
func TestMultiset(t *testing.T) {
	var m Multiset
	if m.Match("a.test") || m.Len() != 0 || m.Remove("a.test") {
		t.Fatal("the zero Multiset is not empty")
	}
	if !m.Add("*.b.test") || m.Add("*.b.test") || !m.Add("a.test") || !m.Add("*") {
		t.Fatal("Add reported a pattern new when it was not, or the reverse")
	}
	if m.Len() != 3 || !m.Match("x.b.test") || !m.Match("other.test") {
		t.Fatalf("Len = %d, Match(x.b.test) = %v, Match(other.test) = %v", m.Len(), m.Match("x.b.test"), m.Match("other.test"))
	}
	if !m.Remove("*") || !m.Remove("a.test") || m.Match("other.test") || m.Match("a.test") {
		t.Fatal("a pattern added once outlived its Remove")
	}
	if m.Remove("*.b.test") || !m.Match("x.b.test") {
		t.Fatal("a pattern added twice left at the first Remove")
	}
	if got := m.Patterns(); len(got) != 1 || got[0] != "*.b.test" {
		t.Fatalf("Patterns = %v, want [*.b.test]", got)
	}
	if !m.Remove("*.b.test") || m.Match("x.b.test") || m.Len() != 0 || len(m.Patterns()) != 0 {
		t.Fatal("a pattern stayed after its last Remove")
	}
}

func TestCovers(t *testing.T) {
	tests := []struct {
		outer, inner string
		want         bool
	}{
		{"*", "*", true},
		{"*", "a.test", true},
		{"*", "*.test", true},
		{"a.test", "a.test", true},
		{"a.test", "b.test", false},
		{"a.test", "*", false},
		{"a.test", "*.a.test", false},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "a.b.example.com", true},
		{"*.example.com", "*.example.com", true},
		{"*.example.com", "*.b.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "*.com", false},
		{"*.example.com", "xexample.com", false},
		{"*.example.com", "*", false},
		{"*.b.example.com", "*.example.com", false},
	}
	for _, tt := range tests {
		if got := Covers(tt.outer, tt.inner); got != tt.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", tt.outer, tt.inner, got, tt.want)
		}
	}
}

// FuzzPattern: whatever ParsePattern accepts is canonical (parsing it again
// gives it back), and a canonical host that matches nothing else is matched
// by itself as a pattern.
func FuzzPattern(f *testing.F) {
	for _, s := range []string{"a.test", "*.example.com", "*", "A.B.", "x:1", "[::1]", "a..b", "*.*.a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePattern(s)
		if err != nil {
			return
		}
		again, err := ParsePattern(p)
		if err != nil || again != p {
			t.Fatalf("ParsePattern(%q) = %q, but ParsePattern(%q) = %q, %v", s, p, p, again, err)
		}
		if !Covers(p, p) {
			t.Fatalf("%q does not cover itself", p)
		}
		if p != CatchAll && !IsWildcard(p) && !NewSet(p).Match(Canonical(p)) {
			t.Fatalf("%q does not match itself", p)
		}
	})
}

func TestSpecificity(t *testing.T) {
	s := NewSet("*", "*.example.com", "*.a.example.com", "www.example.com")
	for host, want := range map[string]int{
		"www.example.com":   Exact,
		"b.a.example.com":   1 + len("a.example.com"),
		"x.example.com":     1 + len("example.com"),
		"a.example.com":     1 + len("example.com"),
		"elsewhere.org":     0,
		"localhost":         0,
		"x.y.a.example.com": 1 + len("a.example.com"),
	} {
		if got := s.Specificity(host); got != want {
			t.Errorf("Specificity(%q) = %d, want %d", host, got, want)
		}
	}
	if got := NewSet("*.example.com").Specificity("example.org"); got != NoMatch {
		t.Errorf("no pattern matches: %d, want NoMatch", got)
	}
	var none *Set
	if got := none.Specificity("a"); got != NoMatch {
		t.Errorf("nil set: %d, want NoMatch", got)
	}
	// Any wildcard ranks below an exact name, whatever its length.
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61)
	if got := NewSet("*." + long).Specificity("x." + long); got >= Exact {
		t.Errorf("a 253-byte wildcard ranks %d, not below Exact", got)
	}
}
