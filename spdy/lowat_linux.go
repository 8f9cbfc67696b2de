package spdy

import (
	"net"
	"syscall"
)

// tcpNotSentLowat is TCP_NOTSENT_LOWAT (linux/tcp.h).
const tcpNotSentLowat = 25

// setNotSentLowat limits how many unsent bytes the kernel queues on the TCP
// connection under c (through TLS and our wrappers), so that what is
// waiting to go out waits in our priority queues, where an urgent frame can
// pass it, and not in a send buffer the kernel may have grown to megabytes.
// In-flight (sent, unacknowledged) data is not limited, so neither is
// throughput. It reports whether it applied.
func setNotSentLowat(c net.Conn, n int) bool {
	tc := tcpConnOf(c)
	if tc == nil {
		return false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpNotSentLowat, n)
	}); err != nil {
		return false
	}
	return serr == nil
}
