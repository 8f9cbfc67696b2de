//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package agent

import (
	"errors"
	"io"
	"net"
	"os"
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

// fill reads into a pooled buffer, taken only once the read will not
// block: an attempt that would block gives the buffer back and waits for
// the poller before it tries again. It returns the buffer (nil when nothing
// was read) and the bytes read into it.
func (l *lazyReader) fill() (*[h1ReadBuffer]byte, int, error) {
	if l.raw == nil {
		return l.fillBlocking()
	}
	var (
		buf  *[h1ReadBuffer]byte
		n    int
		rerr error
	)
	err := l.raw.Read(func(fd uintptr) bool {
		buf = h1ReadBufs.Get().(*[h1ReadBuffer]byte)
		for {
			n, rerr = syscall.Read(int(fd), buf[:])
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			h1ReadBufs.Put(buf)
			buf = nil
			return false
		}
		return true
	})
	if err == nil && rerr != nil {
		err = &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", rerr)}
	}
	if n <= 0 {
		if buf != nil {
			h1ReadBufs.Put(buf)
		}
		if err == nil {
			err = io.EOF // read(2) returns 0 at the peer's close
		}
		return nil, 0, err
	}
	return buf, n, err
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
