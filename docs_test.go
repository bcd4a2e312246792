package filemap

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// Every relative link in the documentation leads somewhere: a file of the
// repository, and a heading of it when the link names one. The docs link to
// one another by section, and a renamed heading would otherwise break a
// link silently.
func TestDocLinks(t *testing.T) {
	docs, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	docs = append(docs, "README.md", "THREAT_MODEL.md")
	anchors := map[string]map[string]bool{} // by file, as cleaned paths
	checked := 0
	for _, doc := range docs {
		links, err := docLinks(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			if isExternal(l.target) {
				continue
			}
			checked++
			path, anchor, _ := strings.Cut(l.target, "#")
			file := doc
			if path != "" {
				if filepath.IsAbs(path) {
					t.Errorf("%s:%d: link %q is absolute; links between docs are relative", doc, l.line, l.target)
					continue
				}
				file = filepath.Join(filepath.Dir(doc), path)
			}
			if _, err := os.Stat(file); err != nil {
				t.Errorf("%s:%d: link %q: %v", doc, l.line, l.target, err)
				continue
			}
			if anchor == "" {
				continue
			}
			if anchors[file] == nil {
				if anchors[file], err = headingAnchors(file); err != nil {
					t.Fatal(err)
				}
			}
			if !anchors[file][anchor] {
				t.Errorf("%s:%d: link %q: %s has no heading with anchor #%s", doc, l.line, l.target, file, anchor)
			}
		}
	}
	if checked == 0 {
		t.Fatal("found no relative links in the docs: the parser is broken")
	}
}

func TestHeadingAnchor(t *testing.T) {
	seen := map[string]int{}
	for _, c := range []struct{ heading, want string }{
		{"Restarts and upgrades", "restarts-and-upgrades"},
		{"Huge folios (`--huge`)", "huge-folios---huge"},
		{"`filemap bench`", "filemap-bench"},
		{"VM snapshot restore (Firecracker)", "vm-snapshot-restore-firecracker"},
		{"The [library](library.md) and `go_test`", "the-library-and-go_test"},
		{"Limits", "limits"},
		{"Limits", "limits-1"}, // a second heading of the same text
	} {
		if got := headingAnchor(c.heading, seen); got != c.want {
			t.Errorf("headingAnchor(%q) = %q, want %q", c.heading, got, c.want)
		}
	}
}

type docLink struct {
	target string
	line   int
}

var (
	inlineLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	codeSpan   = regexp.MustCompile("`[^`]*`")
	headingRE  = regexp.MustCompile(`^#{1,6}\s+(.*?)\s*#*\s*$`)
)

// docLinks returns the targets of the inline links of a Markdown file,
// outside code blocks and code spans.
func docLinks(path string) ([]docLink, error) {
	var links []docLink
	err := eachProseLine(path, func(n int, line string) {
		for _, m := range inlineLink.FindAllStringSubmatch(codeSpan.ReplaceAllString(line, ""), -1) {
			links = append(links, docLink{target: m[1], line: n})
		}
	})
	return links, err
}

// headingAnchors returns the anchors GitHub gives the headings of a
// Markdown file.
func headingAnchors(path string) (map[string]bool, error) {
	anchors := map[string]bool{}
	seen := map[string]int{}
	err := eachProseLine(path, func(_ int, line string) {
		if m := headingRE.FindStringSubmatch(line); m != nil {
			anchors[headingAnchor(m[1], seen)] = true
		}
	})
	return anchors, err
}

var linkText = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)

// headingAnchor is GitHub's anchor for a heading: its text, links reduced
// to their text, in lower case, with punctuation other than '-' and '_'
// dropped and spaces made '-'; a repeated anchor gets "-1", "-2"...
func headingAnchor(heading string, seen map[string]int) string {
	text := strings.ToLower(linkText.ReplaceAllString(heading, "$1"))
	var b strings.Builder
	for _, r := range text {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	a := b.String()
	if n := seen[a]; n > 0 {
		seen[a] = n + 1
		return fmt.Sprintf("%s-%d", a, n)
	}
	seen[a] = 1
	return a
}

// eachProseLine calls f with each line of a Markdown file that is not in a
// code block, fenced or indented, and its line number.
func eachProseLine(path string, f func(n int, line string)) error {
	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	s := bufio.NewScanner(file)
	fenced := false
	for n := 1; s.Scan(); n++ {
		line := s.Text()
		switch {
		case strings.HasPrefix(strings.TrimSpace(line), "```"):
			fenced = !fenced
		case fenced, strings.HasPrefix(line, "    "), strings.HasPrefix(line, "\t"):
		default:
			f(n, line)
		}
	}
	if err := s.Err(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// isExternal reports whether a link leaves the repository: a URL with a
// scheme, such as https: or mailto:.
func isExternal(target string) bool {
	scheme, _, ok := strings.Cut(target, ":")
	return ok && scheme != "" && !strings.ContainsAny(scheme, "/#.")
}
