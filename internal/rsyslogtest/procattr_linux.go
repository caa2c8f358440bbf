package rsyslogtest

import "syscall"

// childAttr puts rsyslogd in its own process group and makes it die with
// the test binary, so a crashed or killed test run leaves no rsyslogd
// behind.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
