// Command lmtpdemo is `make demo`: it stands up a real Cyrus murder on
// loopback (a mupdate master, two backends, a frontend with its mupdate
// replica), creates a few mailboxes, starts lmtpgate on the frontend,
// delivers one message to recipients on both backends, and shows where
// every copy landed, read back over IMAP.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/murderlab"
)

func main() {
	bin := flag.String("lmtpgate", "build/lmtpgate", "lmtpgate binary")
	keep := flag.Bool("keep", false, "keep the lab running until Ctrl-C")
	flag.Parse()
	if err := run(*bin, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run(bin string, keep bool) error {
	if err := murderlab.Available(); err != nil {
		return err
	}
	bin, _ = filepath.Abs(bin)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "lmtpgate-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	lab, err := startMurder(ctx, dir)
	if err != nil {
		return err
	}
	defer lab.Close()
	gate, err := startGate(ctx, bin, dir, lab)
	if err != nil {
		return err
	}
	defer gate.stop()
	if err := showDelivery(ctx, lab, gate.addr); err != nil {
		return err
	}
	step("lmtpgate resolve -v carol@example.org")
	out, _ := exec.Command(bin, "resolve", "-c", gate.cfg, "-v", "carol@example.org").CombinedOutput()
	fmt.Print(indent(string(out)))
	step("lmtpgate status")
	out, _ = exec.Command(bin, "status", "-c", gate.cfg).CombinedOutput()
	fmt.Print(indent(string(out)))
	step("lmtpgate's log (one line per recipient)")
	logs, _ := os.ReadFile(gate.log)
	fmt.Print(indent(string(logs)))

	if keep {
		step("Lab and lmtpgate keep running; press Ctrl-C to stop")
		ch := make(chan os.Signal, 1)
		signalNotify(ch)
		<-ch
	}
	step("Stopping lmtpgate and the murder")
	return nil
}

// startMurder stands up the murder and creates the demo's mailboxes.
func startMurder(ctx context.Context, dir string) (*murderlab.Lab, error) {
	step("Starting a Cyrus 3.6 murder on loopback in %s", dir)
	lab, err := murderlab.Start(ctx, murderlab.Options{Dir: filepath.Join(dir, "murder")})
	if err != nil {
		return nil, err
	}
	fmt.Printf("    mupdate master   %s\n", lab.MasterMupdateAddr())
	for i := 1; i <= lab.Backends(); i++ {
		fmt.Printf("    backend%d         %s (lmtpd %s)\n", i, lab.BackendServer(i), lab.BackendLMTPAddr(i))
	}
	fmt.Printf("    frontend replica %s, mailboxes.db %s\n", lab.ReplicaMupdateAddr(), lab.FrontendMailboxesDB())

	step("Creating mailboxes over IMAP on the backends")
	boxes := []struct {
		backend int
		name    string
		acl     map[string]string
	}{
		{1, "user/alice", nil},
		{1, "user/alice/Sub", map[string]string{"anyone": "p"}},
		{1, "bb/sales", map[string]string{"anyone": "lrsp"}},
		{2, "user/carol", nil},
	}
	for _, b := range boxes {
		if err := lab.CreateMailbox(ctx, b.backend, b.name, b.acl); err != nil {
			lab.Close()
			return nil, err
		}
		fmt.Printf("    backend%d: %s\n", b.backend, b.name)
	}
	for _, n := range []string{"user.alice", "user.alice.Sub", "bb.sales", "user.carol"} {
		if err := lab.WaitFrontend(ctx, n, true); err != nil {
			lab.Close()
			return nil, err
		}
	}
	return lab, nil
}

// demoGate is the running lmtpgate.
type demoGate struct {
	addr, cfg, log string
	cmd            *exec.Cmd
}

func (g *demoGate) stop() {
	g.cmd.Process.Signal(syscall.SIGTERM)
	g.cmd.Wait()
}

// startGate writes lmtpgate's configuration for the lab and starts it.
func startGate(ctx context.Context, bin, dir string, lab *murderlab.Lab) (*demoGate, error) {
	step("Starting lmtpgate on the frontend (lookup order: mailboxes-db, local-mupdate, master-mupdate)")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	g := &demoGate{addr: l.Addr().String(), cfg: filepath.Join(dir, "lmtpgate.yaml"), log: filepath.Join(dir, "lmtpgate.log")}
	l.Close()
	c := lab.Creds()
	cfg := fmt.Sprintf(`hostname: frontend.demo
listen: ["tcp:%s"]
imapd_conf: %s
control_socket: %s/control.sock
state_dir: %s
lookup:
  order: [mailboxes-db, local-mupdate, master-mupdate]
  local_mupdate: {address: "%s", authname: %s, password: %s}
  master_mupdate: {address: "%s", authname: %s, password: %s}
backends:
  authname: %s
  password: %s
`, g.addr, lab.FrontendImapdConf(), dir, dir, lab.ReplicaMupdateAddr(), c.Mupdate, c.MupdatePassword, lab.MasterMupdateAddr(), c.Mupdate, c.MupdatePassword, c.Proxy, c.ProxyPassword)
	if err := os.WriteFile(g.cfg, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	fmt.Print(indent(cfg))
	logf, err := os.Create(g.log)
	if err != nil {
		return nil, err
	}
	g.cmd = exec.Command(bin, "serve", "-c", g.cfg)
	g.cmd.Stdout, g.cmd.Stderr = logf, logf
	if err := g.cmd.Start(); err != nil {
		return nil, err
	}
	if err := waitPort(ctx, g.addr); err != nil {
		g.stop()
		return nil, err
	}
	fmt.Printf("    lmtpgate listening on %s (pid %d)\n", g.addr, g.cmd.Process.Pid)
	return g, nil
}

// showDelivery delivers one message and shows where each copy landed.
func showDelivery(ctx context.Context, lab *murderlab.Lab, lmtpAddr string) error {
	step("Delivering one message over LMTP")
	rcpts := []string{"alice@example.org", "alice+Sub@example.org", "+bb/sales@example.org", "carol@example.org", "nosuch@example.org"}
	msgID := fmt.Sprintf("<demo.%d@lmtpgate>", time.Now().UnixNano())
	results, err := deliver(lmtpAddr, rcpts, msgID)
	if err != nil {
		return err
	}
	for _, r := range rcpts {
		fmt.Printf("    %-26s %s\n", r, results[r])
	}

	step("Where each copy landed (read back over IMAP from the backends)")
	where := []struct {
		rcpt    string
		backend int
		mailbox string
	}{
		{"alice@example.org", 1, "user/alice"},
		{"alice+Sub@example.org", 1, "user/alice/Sub"},
		{"+bb/sales@example.org", 1, "bb/sales"},
		{"carol@example.org", 2, "user/carol"},
	}
	for _, w := range where {
		msgs, err := lab.Messages(ctx, w.backend, w.mailbox)
		if err != nil {
			return err
		}
		n := 0
		for _, m := range msgs {
			if strings.TrimSpace(m.MessageID) == msgID {
				n++
			}
		}
		fmt.Printf("    %-26s -> backend%d (%s) %-15s %d copy\n", w.rcpt, w.backend, lab.BackendServer(w.backend), w.mailbox, n)
	}
	return nil
}

func deliver(addr string, rcpts []string, msgID string) (map[string]string, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("mta.demo"); err != nil {
		return nil, err
	}
	if err := c.Mail("sender@example.org", nil); err != nil {
		return nil, err
	}
	res := map[string]string{}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			res[r] = "RCPT " + err.Error()
		}
	}
	w, err := c.Data()
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "From: sender@example.org\r\nSubject: hello from lmtpgate\r\nMessage-ID: %s\r\nDate: %s\r\n\r\nDelivered through lmtpgate.\r\n", msgID, time.Now().Format(time.RFC1123Z))
	resp, err := w.CloseWithLMTPResponse()
	var lerr smtp.LMTPDataError
	if err != nil && !errors.As(err, &lerr) {
		return nil, err
	}
	for r := range resp {
		res[r] = "250 delivered"
	}
	for r, e := range lerr {
		res[r] = "after DATA " + e.Error()
	}
	c.Quit()
	return res, nil
}

func waitPort(ctx context.Context, addr string) error {
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("lmtpgate did not start listening on %s", addr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ") + "\n"
}
