package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"
)

// watchDebounce lets an editor finish writing (write, rename, chmod)
// before the files are read again.
const watchDebounce = 300 * time.Millisecond

// watcher signals on changes in the folders that hold the config file
// and the policy files, debounced. Folders, not files, are watched: editors
// replace a file by renaming a new one over it.
type watcher struct {
	w    *fsnotify.Watcher
	dirs []string
	C    chan struct{} // one signal per burst of changes
	done chan struct{}
}

func newWatcher() (*watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	wt := &watcher{w: w, C: make(chan struct{}, 1), done: make(chan struct{})}
	go wt.run()
	return wt, nil
}

// watchDirs returns the folders to watch for a config file and its
// policy globs.
func watchDirs(configPath string, globs []string) []string {
	var dirs []string
	if configPath != "" {
		dirs = append(dirs, filepath.Dir(configPath))
	}
	for _, g := range globs {
		dirs = append(dirs, filepath.Dir(g))
	}
	slices.Sort(dirs)
	return slices.Compact(dirs)
}

// set makes the watcher watch exactly dirs; folders that do not exist are
// skipped (the reload that creates them is a SIGHUP away).
func (wt *watcher) set(dirs []string) {
	for _, d := range wt.dirs {
		if !slices.Contains(dirs, d) {
			wt.w.Remove(d)
		}
	}
	var now []string
	for _, d := range dirs {
		if slices.Contains(wt.dirs, d) {
			now = append(now, d)
			continue
		}
		if err := wt.w.Add(d); err == nil {
			now = append(now, d)
		}
	}
	wt.dirs = now
}

func (wt *watcher) run() {
	defer close(wt.done)
	var timer *time.Timer
	var fire <-chan time.Time
	for {
		select {
		case ev, ok := <-wt.w.Events:
			if !ok {
				return
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			if timer == nil {
				timer = time.NewTimer(watchDebounce)
			} else {
				timer.Reset(watchDebounce)
			}
			fire = timer.C
		case _, ok := <-wt.w.Errors:
			if !ok {
				return
			}
		case <-fire:
			fire = nil
			select {
			case wt.C <- struct{}{}:
			default: // a signal is already pending
			}
		}
	}
}

func (wt *watcher) close() {
	wt.w.Close()
	<-wt.done
}

// policyDigest lists the policy files the globs match and hashes their
// names and contents, so the reload event says exactly what runs.
func policyDigest(globs []string) (files []string, digest string) {
	h := sha256.New()
	for _, g := range globs {
		m, _ := filepath.Glob(g)
		slices.Sort(m)
		for _, f := range m {
			if slices.Contains(files, f) {
				continue
			}
			files = append(files, f)
			data, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			h.Write([]byte(f))
			h.Write([]byte{0})
			h.Write(data)
			h.Write([]byte{0})
		}
	}
	return files, hex.EncodeToString(h.Sum(nil))[:16]
}
