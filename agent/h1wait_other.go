//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package agent

import (
	"errors"
	"syscall"
)

// Elsewhere a read takes its buffer before it waits, and an idle
// connection is taken as alive (a request that finds it closed is retried
// when it can be replayed).

func waitReadable(syscall.RawConn) error { return nil }

func readWhenReady(syscall.RawConn, func() []byte, func([]byte)) ([]byte, int, error) {
	return nil, 0, errors.ErrUnsupported
}

func idleConnAlive(syscall.RawConn) bool { return true }
