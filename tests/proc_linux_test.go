package tests

import "syscall"

// childAttr makes moat die with the test binary, so an interrupted run
// leaves no gateway listening.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
