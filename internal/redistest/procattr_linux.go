package redistest

import "syscall"

// childAttr makes redis-server die with the test binary, so a crashed or
// killed test run leaves no server behind.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
