// Command netsim runs a simulated object store for people, as
// scripts/netsim.sh up and down do with it:
//
//	netsim up PROFILE   start one with the network of PROFILE, measure it, print
//	                    the environment for the AWS SDK, then "ready"; run until
//	                    SIGINT or SIGTERM
//	netsim clean        remove the namespaces of simulated networks whose runs died
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/filemap/filemap/internal/netsim"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "netsim: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	switch {
	case len(args) == 2 && args[0] == "up":
		return up(args[1])
	case len(args) == 1 && args[0] == "clean":
		removed, err := netsim.RemoveLeftovers()
		for _, name := range removed {
			fmt.Printf("removed network namespace %s\n", name)
		}
		return err
	}
	var names []string
	for _, p := range netsim.Profiles() {
		names = append(names, p.Name)
	}
	return fmt.Errorf("usage: netsim up %s | netsim clean", strings.Join(names, "|"))
}

func up(name string) error {
	p, err := netsim.ProfileNamed(name)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s, err := netsim.Start(ctx, p)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Printf("profile %s\nnamespace %s, store at %s (around the toxics: %s)\n", p, s.Link.Netns, s.Endpoint, s.Store.Endpoint)
	f, err := s.Measure(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("measured: %s\n", f)
	if err := f.Check(p, 0.25); err != nil {
		fmt.Printf("warning: off its profile by more than 25%%: %v\n", err)
	}
	fmt.Println("for the AWS SDK and CLI, and filemap serve:")
	for _, kv := range s.Env() {
		fmt.Printf("  export %s\n", kv)
	}
	fmt.Println("ready")
	select {
	case <-ctx.Done():
		return nil
	case <-s.Exited():
		return errors.New("a server of the simulated store exited")
	}
}
