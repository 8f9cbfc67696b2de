//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package agent

import (
	"errors"
	"syscall"
)

// peekState looks at the socket without taking anything from it or
// blocking: whether bytes (or the peer's close, or an error) are waiting.
func peekState(fd uintptr) (ready, eof bool, err error) {
	var b [1]byte
	n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	switch {
	case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EINTR):
		return false, false, nil
	case err != nil:
		return true, false, err
	}
	return true, n == 0, nil
}

// waitReadable blocks until rc has something to read (or its deadline
// passes), without a buffer: the runtime's poller does the waiting.
func waitReadable(rc syscall.RawConn) error {
	if rc == nil {
		return nil
	}
	return rc.Read(func(fd uintptr) bool {
		ready, _, _ := peekState(fd)
		return ready
	})
}

// idleConnAlive tells whether an idle connection is still open with
// nothing unasked waiting on it.
func idleConnAlive(rc syscall.RawConn) bool {
	if rc == nil {
		return true
	}
	alive := false
	err := rc.Control(func(fd uintptr) {
		ready, _, _ := peekState(fd)
		alive = !ready
	})
	return err == nil && alive
}
