//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package agent

import "syscall"

// Elsewhere a read takes its buffer before it waits, and an idle
// connection is taken as alive (a request that finds it closed is retried
// when it can be replayed).

func waitReadable(syscall.RawConn) error { return nil }

func (l *lazyReader) fill() (*[h1ReadBuffer]byte, int, error) { return l.fillBlocking() }

func idleConnAlive(syscall.RawConn) bool { return true }
