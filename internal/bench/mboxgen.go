package bench

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
)

// SynthMailbox names the i-th generated personal mailbox's user: u0000001.
// The zero padding keeps the names in byte order, as a Cyrus database
// stores its keys.
func SynthMailbox(i int) string { return fmt.Sprintf("u%07d", i) }

// WriteFlatMailboxes writes a Cyrus 3 flat-format mailboxes.db at path
// holding user.<SynthMailbox(i)> for i in [0, n), each on
// servers[i%len(servers)], plus user.<x> on servers[0] for every x in
// extra (which must sort after the generated names, e.g. "v..."). The file
// is written beside path and renamed over it, as Cyrus replaces a flat
// database, so a reader never sees half of it.
func WriteFlatMailboxes(path string, n int, servers []string, extra ...string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".mailboxes.db.")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriterSize(tmp, 1<<20)
	rec := func(user, server string) {
		// Key: 'N' then the name with the hierarchy separator as 0x1F;
		// value: the dlist of a Cyrus 3 mailbox record (T type, P
		// partition, S server, A ACL).
		fmt.Fprintf(w, "Nuser\x1f%s\t%%(T er P default S %s M 1718000000 A %%(%s lrswipkxtecdan))\n", user, server, user)
	}
	for i := range n {
		rec(SynthMailbox(i), servers[i%len(servers)])
	}
	for _, x := range extra {
		rec(x, servers[0])
	}
	if err := w.Flush(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
