package caddymodule

import (
	"flag"
	"os"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"
)

var updateGolden = flag.Bool("update", false, "rewrite testdata/adapt.json from the adapter's output")

// TestAdaptGolden checks the Caddyfile adapter's output for spdy_origin: the
// directive is ordered before reverse_proxy without a global order option,
// matchers work, and the transport and upstream source adapt.
func TestAdaptGolden(t *testing.T) {
	in, err := os.ReadFile("testdata/adapt.caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	if *updateGolden {
		out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(in, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile("testdata/adapt.json.tmp", out, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Skip("wrote testdata/adapt.json.tmp; indent it into testdata/adapt.json after review")
	}
	want, err := os.ReadFile("testdata/adapt.json")
	if err != nil {
		t.Fatal(err)
	}
	caddytest.AssertAdapt(t, string(in), "caddyfile", string(want))
}
