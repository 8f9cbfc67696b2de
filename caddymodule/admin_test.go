package caddymodule

import (
	"encoding/json"
	"net/http"
	"testing"
)

// TestAdminPools: GET /spdy_origin/pools on the admin API lists the pool's
// sessions with the agent's identity.
func TestAdminPools(t *testing.T) {
	loadConfig(t, spdyRoute("admin", nil))
	startAgent(t, "admin-A")
	waitSessions(t, "admin", 1)

	// Admin API lists the session with its identity.
	ar, err := http.Get(adminBase + "/spdy_origin/pools")
	if err != nil {
		t.Fatal(err)
	}
	var list []poolSnapshot
	err = json.NewDecoder(ar.Body).Decode(&list)
	ar.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	var found *poolSnapshot
	for i := range list {
		if list[i].Name == "admin" {
			found = &list[i]
		}
	}
	if found == nil || len(found.Sessions) != 1 || found.Sessions[0].Agent.Name != "admin-A" ||
		found.Sessions[0].Agent.Instance != "inst-admin-A" || found.Sessions[0].RemoteAddr == "" ||
		found.Sessions[0].ConnectedSince.IsZero() {
		t.Fatalf("admin pools: %+v", list)
	}

}
