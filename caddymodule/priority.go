package caddymodule

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/spdy-origin/spdy-origin/spdy"
)

// Stream priorities (SPDY/3: 0 highest .. 7 lowest) the transport gives the
// requests it sends, so that the agent's uplink carries what a person is
// waiting for first and bulk last (spdy/schedule.go). Browsers say what a
// request is for: over HTTP/2 and HTTP/3 with the RFC 9218 Priority header
// (its urgency, u=0..7, maps one to one), and always with Sec-Fetch-Dest.
// Other clients (curl, apps) get RFC 9218's default urgency, 3, and range
// requests (media seeking, resumed downloads) a low one.

// Priorities by what a request fetches, when it has no Priority header.
const (
	priorityDocument = 0 // the page itself
	prioritySubres   = 1 // what renders it: styles, scripts, fonts
	priorityAPI      = 2 // fetch/XHR: an application waiting for data
	priorityImage    = 4
	priorityUpgrade  = 5 // WebSockets and other upgraded streams
	priorityRange    = 5 // parts of large files
	priorityMedia    = 6 // audio and video
)

// requestPriority is the SPDY priority of a proxied request.
func requestPriority(r *http.Request) uint8 {
	if u, ok := urgency(r.Header.Values("Priority")); ok {
		return u
	}
	switch strings.ToLower(r.Header.Get("Sec-Fetch-Dest")) {
	case "document", "iframe", "frame":
		return priorityDocument
	case "style", "script", "font", "manifest", "worker", "sharedworker", "serviceworker":
		return prioritySubres
	case "empty":
		return priorityAPI
	case "image":
		return priorityImage
	case "audio", "video", "track":
		return priorityMedia
	}
	switch {
	case r.Header.Get("Upgrade") != "" || r.Method == http.MethodConnect:
		return priorityUpgrade
	case r.Header.Get("Range") != "":
		return priorityRange
	}
	return spdy.DefaultPriority
}

// urgency reads u= from RFC 9218 Priority field values (a Structured Field
// dictionary: "u=1, i"); ok is false when none is valid.
func urgency(values []string) (uint8, bool) {
	for _, v := range values {
		for member := range strings.SplitSeq(v, ",") {
			key, val, found := strings.Cut(strings.TrimSpace(member), "=")
			if !found || key != "u" {
				continue
			}
			if n, err := strconv.Atoi(strings.TrimSpace(val)); err == nil && n >= 0 && n < spdy.Priorities {
				return uint8(n), true
			}
		}
	}
	return 0, false
}
