package caddymodule

import (
	"net/http"
	"testing"
)

func TestRequestPriority(t *testing.T) {
	cases := []struct {
		name   string
		method string
		header http.Header
		want   uint8
	}{
		{"RFC 9218 urgency wins", "GET", http.Header{"Priority": {"u=6, i"}, "Sec-Fetch-Dest": {"document"}}, 6},
		{"urgency alone", "GET", http.Header{"Priority": {"i, u=0"}}, 0},
		{"invalid urgency ignored", "GET", http.Header{"Priority": {"u=9"}, "Sec-Fetch-Dest": {"image"}}, priorityImage},
		{"page", "GET", http.Header{"Sec-Fetch-Dest": {"document"}}, priorityDocument},
		{"stylesheet", "GET", http.Header{"Sec-Fetch-Dest": {"style"}}, prioritySubres},
		{"API call", "POST", http.Header{"Sec-Fetch-Dest": {"empty"}}, priorityAPI},
		{"video", "GET", http.Header{"Sec-Fetch-Dest": {"video"}, "Range": {"bytes=0-"}}, priorityMedia},
		{"WebSocket", "GET", http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}}, priorityUpgrade},
		{"extended CONNECT", "CONNECT", http.Header{}, priorityUpgrade},
		{"range from curl", "GET", http.Header{"Range": {"bytes=100-"}}, priorityRange},
		{"curl", "GET", http.Header{}, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, _ := http.NewRequest(c.method, "https://x/", nil)
			r.Header = c.header
			if got := requestPriority(r); got != c.want {
				t.Fatalf("priority %d, want %d", got, c.want)
			}
		})
	}
}
