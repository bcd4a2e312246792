//go:build race

package filemap

// raceEnabled says the race detector is on: its shadow memory, several
// times the program's own and never given back, makes a process's RSS say
// nothing about the program's memory.
const raceEnabled = true
