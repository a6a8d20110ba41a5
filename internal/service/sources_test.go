package service

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/config"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/mupdate/fakemupdate"
)

func loadConfig(t *testing.T, dir, yaml string) *config.Config {
	t.Helper()
	p := filepath.Join(dir, "lmtpgate.yaml")
	if err := os.WriteFile(p, []byte("state_dir: "+dir+"\n"+yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A reload keeps every source whose settings did not change (no dropped
// MUPDATE connection, no re-read of mailboxes.db), and switching to
// no-master closes the master's client and opens none.
func TestBuildReusesUnchangedSourcesAndDropsTheMaster(t *testing.T) {
	master, local := fakemupdate.New(t), fakemupdate.New(t)
	master.Set("user.alice", "be1!default", "alice\tlrswipkxtecdan\t")
	local.Set("user.alice", "be1!default", "alice\tlrswipkxtecdan\t")
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	yaml := `lookup:
  order: [master-mupdate, local-mupdate]
  master_mupdate: {address: "` + master.Addr() + `", authname: mupdate, password: mupdatepw}
  local_mupdate: {address: "` + local.Addr() + `", authname: mupdate, password: mupdatepw}
`
	ctx := context.Background()
	st1, err := build(ctx, loadConfig(t, dir, yaml), nil, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	res := st1.rt.Chain.Resolve(ctx, "user.alice", false)
	if res.Status != lookup.Found || res.Source != "master-mupdate" {
		t.Fatalf("first state: %+v", res)
	}
	st2, err := build(ctx, loadConfig(t, dir, "mode: no-master\n"+yaml), st1, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st2.parts[config.SourceMasterMupdate]; ok {
		t.Fatal("no-master state still has the master")
	}
	if st2.parts[config.SourceLocalMupdate].obj != st1.parts[config.SourceLocalMupdate].obj {
		t.Fatal("unchanged local-mupdate was rebuilt")
	}
	if st2.parts["backends"].obj != st1.parts["backends"].obj {
		t.Fatal("unchanged backend pool was rebuilt")
	}
	retire(st1, st2)
	if s := st1.parts[config.SourceMasterMupdate].obj.(*cachedMupdate).client.Stats().State; s != "closed" {
		t.Fatalf("master client state %q after retire, want closed", s)
	}
	finds := master.Finds()
	for range 5 {
		res := st2.rt.Chain.Resolve(ctx, "user.alice", false)
		if res.Status != lookup.Found || res.Source != "local-mupdate" {
			t.Fatalf("no-master state: %+v", res)
		}
	}
	if master.Finds() != finds {
		t.Fatal("the master was asked in no-master mode")
	}
	if got := st2.cfg.Order(); !slices.Equal(got, []string{"local-mupdate"}) {
		t.Fatalf("order %v", got)
	}
	retire(st2, nil)
}

func TestRestartOnlySettings(t *testing.T) {
	dir := t.TempDir()
	base := "lookup: {order: [mailboxes-db], mailboxes_db: /x}\n"
	a := loadConfig(t, dir, base)
	b := loadConfig(t, dir, base+"listen: [\"tcp:127.0.0.1:2003\"]\nlmtp: {max_message_size: 10}\n")
	got := restartOnly(a, b)
	if !slices.Contains(got, "listen") || !slices.Contains(got, "lmtp") || len(got) != 2 {
		t.Fatalf("restartOnly = %v", got)
	}
	if got := restartOnly(a, a); len(got) != 0 {
		t.Fatalf("restartOnly(same) = %v", got)
	}
}
