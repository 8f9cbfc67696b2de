package main

import (
	"io"
	"os"
	"strings"
	"testing"
)

func TestPatternRoundTrip(t *testing.T) {
	for _, n := range []int64{0, 1, patternSize - 1, patternSize, 3*patternSize + 17} {
		var c patternChecker
		if _, err := io.CopyBuffer(&c, &patternReader{n: n}, make([]byte, 4093)); err != nil {
			t.Fatal(err)
		}
		if err := c.err(n); err != nil {
			t.Errorf("n=%d: %v", n, err)
		}
		if n > 0 {
			if err := c.err(n + 1); err == nil {
				t.Errorf("n=%d: a short body passed the check", n)
			}
		}
	}
}

func TestPatternCheckerFindsCorruption(t *testing.T) {
	b, _ := io.ReadAll(&patternReader{n: 2*patternSize + 100})
	b[patternSize+5] ^= 1
	var c patternChecker
	c.Write(b[:1000])
	c.Write(b[1000:])
	err := c.err(int64(len(b)))
	if err == nil || !strings.Contains(err.Error(), "1048581") {
		t.Fatalf("err = %v, want a mismatch at byte 1048581", err)
	}
}

func TestProcReaders(t *testing.T) {
	kb, err := rssKiB(os.Getpid())
	if err != nil || kb <= 0 {
		t.Fatalf("rssKiB = %d, %v", kb, err)
	}
	if _, err := cpuTime(os.Getpid()); err != nil {
		t.Fatal(err)
	}
}

func TestCaddyfile(t *testing.T) {
	got := caddyfile(2019, 8080, []site{{port: 8443, hosts: []string{"localhost", "10.0.0.1"}, body: "spdy_origin {\n\ttoken x\n}"}})
	for _, want := range []string{"admin 127.0.0.1:2019", "http_port 8080", "https://localhost:8443, https://10.0.0.1:8443 {", "\ttls internal", "\tspdy_origin {\n\t\ttoken x\n\t}"} {
		if !strings.Contains(got, want) {
			t.Errorf("Caddyfile lacks %q:\n%s", want, got)
		}
	}
}
