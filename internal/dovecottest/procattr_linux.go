package dovecottest

import "syscall"

// childAttr puts the Dovecot master in its own process group (so that its
// children can be killed with it if it hangs) and makes it die with the
// test binary, so a crashed or killed test run leaves no server behind:
// Dovecot's children exit when their master goes.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
