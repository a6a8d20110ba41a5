//go:build race

package replica

// raceEnabled: the race detector's shadow memory makes RSS meaningless.
const raceEnabled = true
