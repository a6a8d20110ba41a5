package mboxlist

import (
	"errors"
	"strings"
	"testing"
)

// render prints a parsed dlist in a canonical form so table tests can
// state the expected tree compactly: atoms bare, strings in <...>, NIL,
// kvlists as %[k=v ...] and lists as [a b].
func render(d dlist, i int) string {
	n := d.nodes[i]
	switch n.kind {
	case dAtom:
		return string(d.text(nil, i))
	case dString:
		return "<" + string(d.text(nil, i)) + ">"
	case dNil:
		return "NIL"
	case dKV, dList:
		var parts []string
		end := i + int(n.size)
		for c := i + 1; c < end; c += int(d.nodes[c].size) {
			parts = append(parts, render(d, c))
		}
		if n.kind == dList {
			return "[" + strings.Join(parts, " ") + "]"
		}
		var kv []string
		for j := 0; j+1 < len(parts); j += 2 {
			kv = append(kv, parts[j]+"="+parts[j+1])
		}
		return "%[" + strings.Join(kv, " ") + "]"
	}
	return "?"
}

func TestDlistParse(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty kvlist", "%()", "%[]"},
		{"empty list", "()", "[]"},
		{"atom", "default", "default"},
		{"NIL", "NIL", "NIL"},
		{"quoted NIL is a string", `"NIL"`, "<NIL>"},
		{"3.6 remote entry (a frontend remote entry)",
			"%(T er P default S backend1 M 1718000000 A %(fred lrswipkxtecdan))",
			"%[T=er P=default S=backend1 M=1718000000 A=%[fred=lrswipkxtecdan]]"},
		{"reserved with empty ACL (7.4 ex.4)",
			"%(T erz P default S backend2 M 1718000000 A %())",
			"%[T=erz P=default S=backend2 M=1718000000 A=%[]]"},
		{"I value with history list",
			"%(T e N user\x1falice P default V 1 C 1 F 1 M 2 A %(alice lrs) H ())",
			"%[T=e N=user\x1falice P=default V=1 C=1 F=1 M=2 A=%[alice=lrs] H=[]]"},
		{"quoted with escapes", `%(S "back\"end\\1")`, `%[S=<back"end\1>]`},
		{"quoted with 0x1F", "%(N \"user\x1ffred\")", "%[N=<user\x1ffred>]"},
		{"literal", "%(A {5}\r\nab cd)", "%[A=<ab cd>]"},
		{"literal plus", "%(A {3+}\r\n)())", "%[A=<)()>]"},
		{"literal bare LF", "%(A {2}\nxy)", "%[A=<xy>]"},
		{"zero literal", "%(A {0}\r\n)", "%[A=<>]"},
		{"nested lists", "%(H ((a b) (c)) X %(Y %(Z 1)))", "%[H=[[a b] [c]] X=%[Y=%[Z=1]]]"},
		{"trailing newline ok", "%(T e)\n", "%[T=e]"},
		{"double space tolerated", "%(T  e)", "%[T=e]"},
		{"space before close tolerated", "%(T e )", "%[T=e]"},
		{"NIL value", "%(S NIL P default)", "%[S=NIL P=default]"},
	}
	var p dparser
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := p.parse([]byte(tc.in))
			if err != nil {
				t.Fatalf("parse(%q): %v", tc.in, err)
			}
			if got := render(d, 0); got != tc.want {
				t.Errorf("parse(%q) = %s, want %s", tc.in, got, tc.want)
			}
			if int(d.nodes[0].size) != len(d.nodes) {
				t.Errorf("root size %d, nodes %d", d.nodes[0].size, len(d.nodes))
			}
		})
	}
}

func TestDlistErrors(t *testing.T) {
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"unterminated kvlist", "%(T e"},
		{"unterminated list", "(a b"},
		{"missing value", "%(T)"},
		{"odd kvlist", "%(T e P)"},
		{"percent without paren", "%{foo}"},
		{"lonely percent", "%"},
		{"unterminated quote", `%(S "abc)`},
		{"quote ending in backslash", `"abc\`},
		{"literal too long", "%(A {10}\r\nabc)"},
		{"literal huge", "%(A {99999999999999999999}\r\nabc)"},
		{"literal no length", "%(A {}\r\nabc)"},
		{"literal no brace", "%(A {3\r\nabc)"},
		{"literal no newline", "%(A {3}abc)"},
		{"trailing garbage", "%(T e) x"},
		{"close paren first", ")"},
		{"no space between items", "%(T e%(x y))"},
		{"kvlist key is list", "%((a) b)"},
		{"too deep", strings.Repeat("(", maxDlistDepth+5) + strings.Repeat(")", maxDlistDepth+5)},
	}
	var p dparser
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.parse([]byte(tc.in))
			if err == nil {
				t.Fatalf("parse(%q) succeeded, want error", tc.in)
			}
			if !errors.Is(err, errDlist) {
				t.Errorf("error %v does not wrap errDlist", err)
			}
		})
	}
}

func TestDlistParseAllocFree(t *testing.T) {
	var p dparser
	in := []byte("%(T er P default S backend1 M 1718000000 A %(fred lrswipkxtecdan anyone p))")
	if _, err := p.parse(in); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := p.parse(in); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("parse allocates %v times per record, want 0", allocs)
	}
}

// FuzzDlist checks that no input makes the parser panic, and that a
// successful parse yields a well-formed tree: spans inside the input and
// subtree sizes that add up.
func FuzzDlist(f *testing.F) {
	for _, s := range []string{
		"%(T er P default S backend1 M 1718000000 A %(fred lrswipkxtecdan))",
		"%(A %(fred lrswipkxtecdan) P default S backend1 T r M 1500000000)",
		"%(T e N user\x1falice P default A %(alice lrs) H ())",
		"%(A {5+}\r\nab cd)",
		`%(S "a\"b")`,
		"((a) (b c) NIL)",
		"%()",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var p dparser
		d, err := p.parse(in)
		if err != nil {
			return
		}
		if len(d.nodes) == 0 || int(d.nodes[0].size) != len(d.nodes) {
			t.Fatalf("bad root size for %q", in)
		}
		for i, n := range d.nodes {
			if n.size < 1 || i+int(n.size) > len(d.nodes) {
				t.Fatalf("node %d size %d out of range", i, n.size)
			}
			if n.start < 0 || n.end < n.start || int(n.end) > len(in) {
				t.Fatalf("node %d span [%d,%d) outside input of %d", i, n.start, n.end, len(in))
			}
			_ = d.text(nil, i)
		}
		_ = render(d, 0)
	})
}
