//go:build race

package e2e

// raceEnabled: the race detector slows the TLS + HTTP/2 + SPDY pipeline
// about tenfold, so big transfers shrink unless SPDY_ORIGIN_TEST_FULL_SIZE=1.
const raceEnabled = true
