//go:build race

package tests

// raceEnabled: the test binary runs with -race, so moat is built with it too.
const raceEnabled = true
