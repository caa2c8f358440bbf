package smtptest

import "syscall"

// childAttr makes a child process die with the test binary, so a crashed
// or killed test run leaves no server behind.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
