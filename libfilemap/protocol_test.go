package libfilemap

import (
	"encoding/binary"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/filemap/filemap/proto"
)

// The specification a third client is written from: docs/protocol.md. These
// tests check its tables against the code, so that it cannot drift from it.
const specPath = "../docs/protocol.md"

// table is a markdown table: its header cells and its rows' cells, with
// backticks dropped.
type table struct {
	header []string
	rows   [][]string
}

// specTables returns the spec's tables, and the payload sections' tables by
// name: the first table under each "### `Name`" heading.
func specTables(t *testing.T) (tables []table, sections map[string]table) {
	t.Helper()
	b, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}
	sections = map[string]table{}
	var cur *table
	section := ""
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") {
			// A payload's section is headed by its name in backticks.
			section = ""
			if name, ok := strings.CutPrefix(line, "### `"); ok {
				section = strings.TrimSuffix(name, "`")
			}
			continue
		}
		if !strings.HasPrefix(line, "|") {
			if cur != nil {
				tables = append(tables, *cur)
				if section != "" {
					sections[section] = *cur
					section = ""
				}
				cur = nil
			}
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i, c := range cells {
			cells[i] = strings.ReplaceAll(strings.TrimSpace(c), "`", "")
		}
		switch {
		case cur == nil:
			cur = &table{header: cells}
		case strings.Trim(strings.Join(cells, ""), "-") == "": // the |---| row
		default:
			cur.rows = append(cur.rows, cells)
		}
	}
	return tables, sections
}

// find returns the table whose header starts with the given cells.
func find(t *testing.T, tables []table, header ...string) table {
	t.Helper()
	for _, tb := range tables {
		if len(tb.header) >= len(header) && reflect.DeepEqual(tb.header[:len(header)], header) {
			return tb
		}
	}
	t.Fatalf("%s has no table headed %q", specPath, header)
	return table{}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%s: %q is not a number", specPath, s)
	}
	return n
}

// TestSpecHeader checks the header layout table against EncodeHeader: each
// field's bytes hold what the table says they hold, and the fields tile the
// header.
func TestSpecHeader(t *testing.T) {
	tables, _ := specTables(t)
	h := proto.Header{Type: 0x7b, NFds: 3, ID: 0x11223344, Length: 0x5566}
	buf := make([]byte, proto.HeaderSize)
	proto.EncodeHeader(buf, h)
	want := map[string]uint64{"magic": 'F' | 'M'<<8, "version": proto.Version, "type": uint64(h.Type),
		"nfds": uint64(h.NFds), "flags": 0, "reserved": 0, "id": uint64(h.ID), "length": uint64(h.Length)}
	next := 0
	for _, row := range find(t, tables, "offset", "size", "field", "value").rows {
		off, size, field := atoi(t, row[0]), atoi(t, row[1]), row[2]
		if off != next {
			t.Errorf("field %s at offset %d, want %d (the fields must tile the header)", field, off, next)
		}
		next = off + size
		w, ok := want[field]
		if !ok {
			t.Errorf("field %q: the header has no such field", field)
			continue
		}
		delete(want, field)
		var got uint64
		for i := size - 1; i >= 0; i-- { // little-endian
			got = got<<8 | uint64(buf[off+i])
		}
		if got != w {
			t.Errorf("field %s: bytes [%d, %d) of an encoded header hold %#x, want %#x", field, off, off+size, got, w)
		}
	}
	if next != proto.HeaderSize {
		t.Errorf("the fields end at %d, the header at %d", next, proto.HeaderSize)
	}
	for f := range want {
		t.Errorf("the table lacks field %s", f)
	}
	if binary.LittleEndian.Uint32(buf[8:]) != h.ID {
		t.Fatal("EncodeHeader is not little-endian: the test's premise is wrong")
	}
}

func TestSpecConstants(t *testing.T) {
	tables, _ := specTables(t)
	want := map[string]int{"Version": proto.Version, "HeaderSize": proto.HeaderSize,
		"MaxPayload": proto.MaxPayload, "MaxFds": proto.MaxFds}
	for _, row := range find(t, tables, "constant", "value").rows {
		w, ok := want[row[0]]
		if !ok {
			t.Errorf("constant %s: proto has no such constant here", row[0])
			continue
		}
		delete(want, row[0])
		if got := atoi(t, row[1]); got != w {
			t.Errorf("%s is %d in the spec, %d in proto", row[0], got, w)
		}
	}
	for c := range want {
		t.Errorf("the spec's constants lack %s", c)
	}
}

// protoSource is proto/proto.go parsed: its Type constants and its structs.
type protoSource struct {
	types   map[string]int             // constant name → value
	structs map[string]*ast.StructType // every struct type
}

func parseProto(t *testing.T) protoSource {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "../proto/proto.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	ps := protoSource{types: map[string]int{}, structs: map[string]*ast.StructType{}}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok {
			continue
		}
		for _, s := range g.Specs {
			switch s := s.(type) {
			case *ast.ValueSpec:
				if id, ok := s.Type.(*ast.Ident); ok && id.Name == "Type" && g.Tok == token.CONST {
					lit := s.Values[0].(*ast.BasicLit)
					v, err := strconv.ParseInt(lit.Value, 0, 16)
					if err != nil {
						t.Fatal(err)
					}
					ps.types[s.Names[0].Name] = int(v)
				}
			case *ast.TypeSpec:
				if st, ok := s.Type.(*ast.StructType); ok {
					ps.structs[s.Name.Name] = st
				}
			}
		}
	}
	if len(ps.types) == 0 || len(ps.structs) == 0 {
		t.Fatal("found no Type constants or structs in proto/proto.go")
	}
	return ps
}

// TestSpecTypes checks the message table against proto's Type constants:
// every constant is there with its value and name, and every payload it
// names has a section of its own.
func TestSpecTypes(t *testing.T) {
	tables, sections := specTables(t)
	ps := parseProto(t)
	seen := map[string]bool{}
	for _, row := range find(t, tables, "type", "value", "name").rows {
		c, v, name := row[0], atoi(t, row[1]), row[2]
		seen[c] = true
		if pv, ok := ps.types[c]; !ok {
			t.Errorf("type %s: proto has no such constant", c)
		} else if pv != v {
			t.Errorf("%s is %d in the spec, %d in proto", c, v, pv)
		}
		if got := proto.Type(v).String(); got != name {
			t.Errorf("type %d is named %q in the spec, %q by proto", v, name, got)
		}
		for _, payload := range []string{row[3], row[5]} {
			if payload == "" {
				continue
			}
			if _, ok := sections[payload]; !ok {
				t.Errorf("%s names payload %s, which has no section", c, payload)
			}
		}
	}
	for c := range ps.types {
		if !seen[c] {
			t.Errorf("the spec's message table lacks %s", c)
		}
	}
}

// TestSpecPayloads checks each payload section's field table against the
// struct in proto: the same JSON names, in the same order, with the JSON
// types their Go types encode as. Every struct of proto is a payload and
// has its section.
func TestSpecPayloads(t *testing.T) {
	_, sections := specTables(t)
	ps := parseProto(t)
	for name, st := range ps.structs {
		if name == "Header" {
			continue // the frame header, not a JSON payload: TestSpecHeader
		}
		sec, ok := sections[name]
		if !ok {
			t.Errorf("payload %s has no section ### `%s`", name, name)
			continue
		}
		if !reflect.DeepEqual(sec.header, []string{"field", "JSON type", "meaning"}) {
			t.Errorf("section %s: table headed %q, want field, JSON type, meaning", name, sec.header)
			continue
		}
		want := jsonFields(t, name, st)
		var got []string
		for _, row := range sec.rows {
			got = append(got, row[0]+": "+row[1])
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("section %s lists\n\t%q\nproto.%s encodes\n\t%q", name, got, name, want)
		}
	}
	for name := range sections {
		if _, ok := ps.structs[name]; !ok {
			t.Errorf("section %s names no struct of proto", name)
		}
	}
}

// jsonFields is "name: JSON type" for each field of st, as encoding/json
// writes it.
func jsonFields(t *testing.T, name string, st *ast.StructType) []string {
	var out []string
	for _, f := range st.Fields.List {
		if f.Tag == nil {
			t.Errorf("proto.%s.%s has no json tag", name, f.Names[0].Name)
			continue
		}
		tag, _ := strconv.Unquote(f.Tag.Value)
		jname, _, _ := strings.Cut(reflect.StructTag(tag).Get("json"), ",")
		out = append(out, jname+": "+jsonType(t, f.Type))
	}
	return out
}

func jsonType(t *testing.T, e ast.Expr) string {
	switch e := e.(type) {
	case *ast.Ident:
		switch e.Name {
		case "int", "int32", "int64", "uint", "uint8", "uint32", "uint64":
			return "integer"
		case "float64":
			return "number"
		case "string":
			return "string"
		case "bool":
			return "boolean"
		}
		return "object of " + e.Name
	case *ast.ArrayType:
		return "array of " + strings.TrimPrefix(jsonType(t, e.Elt), "object of ")
	case *ast.StarExpr: // a pointer: the object, or absent
		return jsonType(t, e.X)
	case *ast.MapType:
		return "object of " + strings.TrimPrefix(jsonType(t, e.Value), "object of ")
	}
	t.Errorf("a field of type %T: the test does not know its JSON type", e)
	return fmt.Sprint(e)
}
