// Package pty opens pseudo-terminals, for tests of what a command shows on
// a terminal: the slave end stands for the user's terminal, and what the
// command writes there is read from the master end.
package pty

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Open opens a new pseudo-terminal of cols columns (0: the size the kernel
// gives it, none). The caller closes both ends.
func Open(cols int) (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	fd := int(master.Fd())
	// A new pseudo-terminal is locked until its master unlocks it.
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("unlock the pseudo-terminal: %w", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("the pseudo-terminal's number: %w", err)
	}
	name := fmt.Sprintf("/dev/pts/%d", n)
	slave, err = os.OpenFile(name, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	if cols > 0 {
		if err := unix.IoctlSetWinsize(int(slave.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: uint16(cols)}); err != nil {
			master.Close()
			slave.Close()
			return nil, nil, fmt.Errorf("set %s's size: %w", name, err)
		}
	}
	return master, slave, nil
}

// Copy copies what is written to the terminal to w as it comes, until
// every holder of its slave end has closed it.
func Copy(w io.Writer, master *os.File) error {
	_, err := io.Copy(w, master)
	if errors.Is(err, unix.EIO) { // the slave's last holder closed it: the end
		err = nil
	}
	return err
}

// Screen is what a terminal cols wide (0: unbounded) shows after out: its
// rows, blanks at their ends trimmed, and whether a line ran past the
// right edge and wrapped. \r returns to the start of the row, \n starts
// the next.
func Screen(out []byte, cols int) (rows []string, wrapped bool) {
	cells := [][]rune{nil}
	row, col := 0, 0
	newline := func() {
		row, col = row+1, 0
		if row == len(cells) {
			cells = append(cells, nil)
		}
	}
	for _, c := range string(out) {
		switch c {
		case '\r':
			col = 0
		case '\n':
			newline()
		default:
			if cols > 0 && col == cols {
				wrapped = true
				newline()
			}
			for len(cells[row]) <= col {
				cells[row] = append(cells[row], ' ')
			}
			cells[row][col] = c
			col++
		}
	}
	for _, r := range cells {
		rows = append(rows, strings.TrimRight(string(r), " "))
	}
	return rows, wrapped
}
