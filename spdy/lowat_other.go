//go:build !linux

package spdy

import "net"

// setNotSentLowat is Linux only (TCP_NOTSENT_LOWAT); elsewhere the kernel's
// send buffer stays as it is.
func setNotSentLowat(net.Conn, int) bool { return false }
