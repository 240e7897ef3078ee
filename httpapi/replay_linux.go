package httpapi

import "syscall"

// peerClosed reports whether the peer of the socket closed or reset the connection,
// without consuming or waiting for anything: a peek of one byte that finds the end of
// the stream (0 bytes) or an error other than "nothing yet". It goes through Control,
// not Read, so a read deadline the server set on the connection (passed or not) does
// not matter.
func peerClosed(raw syscall.RawConn) bool {
	closed := false
	var buf [1]byte
	err := raw.Control(func(fd uintptr) {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == syscall.EAGAIN || err == syscall.EINTR:
		case err != nil:
			closed = true
		case n == 0:
			closed = true
		}
	})
	return closed || err != nil
}
