package replica

import (
	"bufio"
	"bytes"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/mupdate"
)

// FuzzStream feeds the dump and stream readers what a master might send
// and checks the list they build against a plain map fed the same
// responses through mupdate.ReadResponse. Whatever the bytes, nothing
// panics, and a list is never half right.
func FuzzStream(f *testing.F) {
	f.Add([]byte("U01 MAILBOX {10+}\r\nuser.alice {17+}\r\n127.0.0.2!default {21+}\r\nalice\tlrswipkxtecdan\t\r\n" +
		"U01 RESERVE {10+}\r\nuser.newby {17+}\r\n127.0.0.3!default\r\n" +
		"U01 OK \"streaming starts\"\r\n" +
		"U01 DELETE {10+}\r\nuser.alice\r\n" +
		"U01 MAILBOX {10+}\r\nuser.newby {17+}\r\n127.0.0.3!default {0+}\r\n\r\n" +
		"N1 OK \"Noop done\"\r\n"))
	f.Add([]byte("* COMPRESS \"DEFLATE\"\r\nU01 MAILBOX a b!c d\r\nU01 DELETE a\r\nU01 MAILBOX a b! \"\"\r\nU01 OK done\r\n"))
	f.Add([]byte("U01 MAILBOX {3}\r\nx!y {1}\r\n! NIL\r\nU01 OK\r\nU01 RESERVE x y\r\n* BYE \"Server Unable\"\r\n"))
	f.Add([]byte("U01 BAD \"Please login first\"\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 256
		// What the replica builds.
		sc := mupdate.NewScanner(bufio.NewReaderSize(bytes.NewReader(data), 16), max)
		b := newBuilder(0)
		var progress atomic.Int64
		if err := readDump(sc, b, &progress); err != nil {
			return
		}
		l := b.finish()
		d := &draft{prev: &view{base: l, n: l.Len()}}
		for sc.Scan() == nil {
			if err := untagged(sc); err != errTagged {
				if err != nil {
					break
				}
				continue
			}
			if string(sc.Tag()) != updateTag {
				break
			}
			c, err := pushed(sc)
			if err != nil {
				break
			}
			d.apply(c)
		}
		v := d.prev
		if d.next != nil {
			v = d.next
		}

		// What a map makes of the same responses.
		model := map[string]lookup.Entry{}
		br := bufio.NewReader(bytes.NewReader(data))
		dumping := true
		for {
			r, err := mupdate.ReadResponse(br, max)
			if err != nil || r.Tag == "*" && r.Kind == "BYE" {
				break
			}
			if r.Tag == "*" {
				continue
			}
			if r.Tag != updateTag {
				if dumping {
					t.Fatalf("readDump accepted a response tagged %q", r.Tag)
				}
				break
			}
			if dumping && r.Kind == "OK" {
				dumping = false
				continue
			}
			if r.Kind == "DELETE" && len(r.Args) == 1 && r.Args[0] != "" {
				delete(model, r.Args[0])
				continue
			}
			e, ok := modelEntry(r)
			if !ok {
				if dumping {
					t.Fatalf("readDump accepted %v", r)
				}
				break
			}
			model[e.Name] = e
		}
		if dumping {
			t.Fatal("readDump returned without the OK")
		}
		if v.n != len(model) {
			t.Fatalf("view counts %d mailboxes, the model %d", v.n, len(model))
		}
		for name, want := range model {
			got, ok := v.lookup(name)
			if !ok || got != want {
				t.Fatalf("lookup(%q) = %+v, %v; want %+v", name, got, ok, want)
			}
		}
		n := 0
		v.forEach(func(e lookup.Entry) error {
			n++
			if _, ok := model[e.Name]; !ok {
				t.Fatalf("the view has %q, the model does not", e.Name)
			}
			return nil
		})
		if n != len(model) {
			t.Fatalf("forEach saw %d mailboxes, want %d", n, len(model))
		}
	})
}

func modelEntry(r mupdate.Response) (lookup.Entry, bool) {
	var e lookup.Entry
	switch {
	case r.Kind == "MAILBOX" && len(r.Args) == 3:
		e.ACL = r.Args[2]
	case r.Kind == "RESERVE" && len(r.Args) == 2:
		e.State = lookup.Reserved
	default:
		return e, false
	}
	e.Name = r.Args[0]
	e.Server, e.Partition, _ = strings.Cut(r.Args[1], "!")
	return e, e.Name != "" && e.Server != ""
}
