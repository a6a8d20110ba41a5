package service

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/control"
	"github.com/lmtpgate/lmtpgate/internal/mupdate/fakemupdate"
)

// TestResolveRacingReloads: `resolve` reads one snapshot, so an answer
// never mixes a chain with another snapshot's sources, however reloads
// interleave with it (run under -race, this also finds unguarded shared
// state).
func TestResolveRacingReloads(t *testing.T) {
	master := fakemupdate.New(t)
	master.Set("user.alice", "be1!default", "alice\tlrswipkxtecdan\t")
	dir := t.TempDir()
	db, err := os.ReadFile("../mboxlist/testdata/frontend.mailboxes.db.flat")
	if err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(dir, "mailboxes.db")
	os.WriteFile(dbPath, db, 0o600)
	path := filepath.Join(dir, "lmtpgate.yaml")
	common := "state_dir: " + dir + "\ncontrol_socket: \"\"\nlisten: [\"tcp:127.0.0.1:0\"]\nimapd_conf: \"\"\nbackends: {password: x}\n"
	configs := []string{
		common + "lookup: {order: [mailboxes-db], mailboxes_db: " + dbPath + "}\n",
		common + "lookup: {order: [master-mupdate], master_mupdate: {address: \"" + master.Addr() + "\", authname: " + fakemupdate.DefaultUser + ", password: " + fakemupdate.DefaultPassword + "}}\n",
	}
	os.WriteFile(path, []byte(configs[0]), 0o600)
	d, err := start(context.Background(), path, "test", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		d.stop()
		d.closeLog()
	}()

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range 60 {
			os.WriteFile(path, []byte(configs[i%2]), 0o600)
			if err := d.reload("test"); err != nil {
				t.Errorf("reload: %v", err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for range 300 {
			resp := d.handleControl(control.Request{Cmd: "resolve", Args: []string{"alice@example.org"}})
			if !resp.OK || len(resp.Resolved) != 1 {
				t.Errorf("resolve: %+v", resp)
				return
			}
			r := resp.Resolved[0]
			if len(r.Trace) != 1 || len(r.Sources) != 1 || r.Trace[0].Source != r.Sources[0].Name {
				t.Errorf("an answer mixed two snapshots: trace %+v, sources %+v", r.Trace, r.Sources)
				return
			}
		}
	}()
	wg.Wait()
}
