//go:build !unix

package mailbox

import (
	"fmt"
	"os"
)

// lockFile only opens the file where flock does not exist: the
// in-process lock still keeps two POP3 sessions apart.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("mailbox: %w", err)
	}
	return f, nil
}

func unlockFile(f *os.File) error { return f.Close() }
