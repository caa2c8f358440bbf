//go:build !linux

package smtptest

import "syscall"

func childAttr() *syscall.SysProcAttr { return nil }
