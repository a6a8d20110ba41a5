package systemdtest_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"

	"github.com/lmtpgate/lmtpgate/internal/sdnotify"
	"github.com/lmtpgate/lmtpgate/internal/systemdtest"
)

const helperEnv = "LMTPGATE_SYSTEMDTEST_HELPER"

// TestMain turns the test binary into a small socket-activated daemon when
// re-executed with helperEnv set, so StartActivated is tested against
// go-systemd's activation package, the code the daemon itself uses.
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(activatedHelper())
	}
	os.Exit(m.Run())
}

func activatedHelper() int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "helper: "+format+"\n", a...)
		return 2
	}
	if lp := os.Getenv("LISTEN_PID"); lp != strconv.Itoa(os.Getpid()) {
		return fail("LISTEN_PID=%q, getpid()=%d", lp, os.Getpid())
	}
	fds := os.Getenv("LISTEN_FDS")
	byName, err := activation.ListenersWithNames()
	if err != nil {
		return fail("activation: %v", err)
	}
	lmtp, metrics := byName["lmtp"], byName["metrics"]
	if len(lmtp) != 1 || len(metrics) != 1 {
		return fail("listeners by name: %v", byName)
	}
	if err := sdnotify.New().Ready(fmt.Sprintf("pid=%d", os.Getpid())); err != nil {
		return fail("notify: %v", err)
	}
	c, err := lmtp[0].Accept()
	if err != nil {
		return fail("accept: %v", err)
	}
	defer c.Close()
	fmt.Fprintf(c, "220 pid=%d fds=%s args=%q\r\n", os.Getpid(), fds, os.Args[1:])
	return 0
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func tcpListenerFile(t *testing.T) (*net.TCPListener, *os.File) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	return ln, f
}

func TestStartActivated(t *testing.T) {
	lmtp, lmtpFile := tcpListenerFile(t)
	_, metricsFile := tcpListenerFile(t)
	notify := systemdtest.ListenNotify(t, t.TempDir())

	cmd := exec.Command(os.Args[0], "arg one", "$HOME", "-x")
	cmd.Env = append(os.Environ(), helperEnv+"=1", "NOTIFY_SOCKET="+notify.Path(),
		"LISTEN_PID=1", "LISTEN_FDS=9") // stale values must be replaced
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := systemdtest.StartActivated(t, cmd, []*os.File{lmtpFile, metricsFile}, []string{"lmtp", "metrics"}); err != nil {
		t.Fatal(err)
	}
	lmtpFile.Close()
	metricsFile.Close()
	// Stop waiting as soon as the helper exits, so a failing helper
	// reports its stderr at once.
	wctx, exited := context.WithCancel(ctx(t))
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait(); exited() }()

	m, err := notify.WaitFor(wctx, "READY", "1")
	if err != nil {
		t.Fatalf("no READY: %v (helper stderr: %s)", err, stderr.String())
	}
	// The pid the binary runs as is the pid os/exec started: the shim
	// exec'd in place.
	if want := fmt.Sprintf("pid=%d", cmd.Process.Pid); m["STATUS"] != want {
		t.Errorf("STATUS=%q, want %q", m["STATUS"], want)
	}

	c, err := net.Dial("tcp", lmtp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading greeting: %v (helper stderr: %s)", err, stderr.String())
	}
	want := fmt.Sprintf("220 pid=%d fds=2 args=%q\r\n", cmd.Process.Pid, []string{"arg one", "$HOME", "-x"})
	if line != want {
		t.Errorf("greeting %q, want %q", line, want)
	}
	if err := <-waited; err != nil {
		t.Errorf("helper: %v, stderr: %s", err, stderr.String())
	}
}

func TestStartActivatedRejects(t *testing.T) {
	_, f := tcpListenerFile(t)
	tests := []struct {
		name  string
		cmd   func() *exec.Cmd
		files []*os.File
		names []string
	}{
		{"no files", func() *exec.Cmd { return exec.Command("/bin/true") }, nil, nil},
		{"names mismatch", func() *exec.Cmd { return exec.Command("/bin/true") }, []*os.File{f}, []string{"a", "b"}},
		{"colon in name", func() *exec.Cmd { return exec.Command("/bin/true") }, []*os.File{f}, []string{"a:b"}},
		{"extra files", func() *exec.Cmd {
			c := exec.Command("/bin/true")
			c.ExtraFiles = []*os.File{f}
			return c
		}, []*os.File{f}, nil},
		{"binary missing", func() *exec.Cmd { return exec.Command("lmtpgate-no-such-binary") }, []*os.File{f}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := tc.cmd()
			if err := systemdtest.StartActivated(t, cmd, tc.files, tc.names); err == nil {
				cmd.Wait()
				t.Error("StartActivated succeeded")
			}
		})
	}
}

func TestStartActivatedDefaultNames(t *testing.T) {
	_, f := tcpListenerFile(t)
	var out strings.Builder
	cmd := exec.Command("/bin/sh", "-c", `echo "$LISTEN_FDS $LISTEN_FDNAMES $LISTEN_PID $$"`)
	cmd.Stdout = &out
	if err := systemdtest.StartActivated(t, cmd, []*os.File{f}, nil); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(out.String())
	if len(fields) != 4 || fields[0] != "1" || fields[1] != "unknown" || fields[2] != fields[3] {
		t.Errorf("child saw %q, want LISTEN_FDS=1 LISTEN_FDNAMES=unknown LISTEN_PID=$$", out.String())
	}
}

func send(t *testing.T, path string, msgs ...string) {
	t.Helper()
	c, err := net.Dial("unixgram", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, m := range msgs {
		if _, err := c.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestNotifyListener(t *testing.T) {
	l := systemdtest.ListenNotify(t, t.TempDir())
	send(t, l.Path(), "STATUS=starting", "RELOADING=1\nMONOTONIC_USEC=5", "READY=1\nSTATUS=up\nnonsense", "STOPPING=1")

	m, raw, err := l.Next(ctx(t))
	if err != nil || raw != "STATUS=starting" || m["STATUS"] != "starting" {
		t.Fatalf("Next = %v %q %v", m, raw, err)
	}
	m, err = l.WaitFor(ctx(t), "READY", "1")
	if err != nil || m["STATUS"] != "up" || len(m) != 2 {
		t.Fatalf("WaitFor READY = %v, %v", m, err)
	}
	m, err = l.WaitFor(ctx(t), "STOPPING", "")
	if err != nil || m["STOPPING"] != "1" {
		t.Fatalf("WaitFor STOPPING = %v, %v", m, err)
	}
	if all := l.All(); len(all) != 4 || all[1] != "RELOADING=1\nMONOTONIC_USEC=5" {
		t.Errorf("All = %q", all)
	}
	// Nothing more arrives: a bounded wait must end with an error.
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := l.Next(short); err == nil {
		t.Error("Next returned without a message")
	}
}

func TestLongDirectoryFallsBackToShortPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	l := systemdtest.ListenNotify(t, dir)
	if len(l.Path()) > 107 {
		t.Fatalf("path %q does not fit in sun_path", l.Path())
	}
	send(t, l.Path(), "READY=1")
	if _, err := l.WaitFor(ctx(t), "READY", "1"); err != nil {
		t.Fatal(err)
	}
}

func binField(name, value string) string {
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(value)))
	return name + "\n" + string(n[:]) + value + "\n"
}

func TestParseJournal(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    map[string]string
		wantErr bool
	}{
		{"simple", "MESSAGE=hi\nPRIORITY=6\n", map[string]string{"MESSAGE": "hi", "PRIORITY": "6"}, false},
		{"value with =", "A=b=c\n", map[string]string{"A": "b=c"}, false},
		{"empty value", "A=\n", map[string]string{"A": ""}, false},
		{"binary", binField("MESSAGE", "a\nb=c\n") + "X=1\n", map[string]string{"MESSAGE": "a\nb=c\n", "X": "1"}, false},
		{"binary empty", binField("M", ""), map[string]string{"M": ""}, false},
		{"trailing empty line", "A=1\n\n", map[string]string{"A": "1"}, false},
		{"data after empty line", "A=1\n\nB=2\n", nil, true},
		{"no final newline", "A=1", nil, true},
		{"lowercase name", "message=x\n", nil, true},
		{"underscore name", "_PID=1\n", nil, true},
		{"digit first", "1A=x\n", nil, true},
		{"name too long", strings.Repeat("A", 65) + "=x\n", nil, true},
		{"binary short length", "M\n\x01\x00", nil, true},
		{"binary length overflows", "M\n\xff\xff\xff\xff\xff\xff\xff\xffab\n", nil, true},
		{"binary missing newline", "M\n\x01\x00\x00\x00\x00\x00\x00\x00ab", nil, true},
		{"empty", "", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := systemdtest.ParseJournal([]byte(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

// recordingTB captures the listener's cleanup complaints instead of failing.
type recordingTB struct {
	*testing.T
	mu   sync.Mutex
	errs []string
}

func (r *recordingTB) Errorf(format string, a ...any) {
	r.mu.Lock()
	r.errs = append(r.errs, fmt.Sprintf(format, a...))
	r.mu.Unlock()
}

func sendFD(t *testing.T, path string, payload []byte, fd int) {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, err := c.WriteMsgUnix(payload, unix.UnixRights(fd), &net.UnixAddr{Name: path, Net: "unixgram"}); err != nil {
		t.Fatal(err)
	}
}

func memfd(t *testing.T, content string, seals int) int {
	t.Helper()
	fd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.Write(fd, []byte(content)); err != nil {
		t.Fatal(err)
	}
	if seals != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
			t.Fatal(err)
		}
	}
	return fd
}

func TestJournalListener(t *testing.T) {
	var rec *recordingTB
	t.Run("inner", func(t *testing.T) {
		rec = &recordingTB{T: t}
		l := systemdtest.ListenJournal(rec, t.TempDir())
		sealed := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE | unix.F_SEAL_SEAL
		send(t, l.Path(),
			"MESSAGE=one\n",
			"bad name=x\n",
			binField("MESSAGE", "two\nlines")+"PRIORITY=3\n")
		sendFD(t, l.Path(), nil, memfd(t, "MESSAGE=three\n", sealed))
		sendFD(t, l.Path(), nil, memfd(t, "MESSAGE=unsealed\n", 0))
		sendFD(t, l.Path(), []byte("MESSAGE=inline\n"), memfd(t, "MESSAGE=both\n", sealed))
		send(t, l.Path(), "MESSAGE=last\n")

		e, err := l.WaitFor(ctx(t), func(e map[string]string) bool { return e["MESSAGE"] == "last" })
		if err != nil || e["MESSAGE"] != "last" {
			t.Fatalf("WaitFor = %v, %v", e, err)
		}
		var msgs []string
		for _, e := range l.Entries() {
			msgs = append(msgs, e["MESSAGE"])
		}
		if got := strings.Join(msgs, "|"); got != "one|two\nlines|three|last" {
			t.Errorf("entries %q", got)
		}
		if l.MemfdEntries() != 1 {
			t.Errorf("MemfdEntries = %d, want 1", l.MemfdEntries())
		}
		if n := len(l.Errors()); n != 3 {
			t.Errorf("Errors = %v, want 3 (bad name, unsealed, inline+fd)", l.Errors())
		}
	})
	if len(rec.errs) != 3 {
		t.Errorf("cleanup reported %d errors, want 3: %q", len(rec.errs), rec.errs)
	}
}

func FuzzParseJournal(f *testing.F) {
	f.Add([]byte("MESSAGE=hi\nPRIORITY=6\n"))
	f.Add([]byte(binField("MESSAGE", "a\nb")))
	f.Add([]byte("M\n\xff\xff\xff\xff\xff\xff\xff\x7f"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := systemdtest.ParseJournal(b)
		if err == nil && len(m) == 0 {
			t.Error("no error and no fields")
		}
		for k := range m {
			if !systemdtest.ValidFieldName(k) {
				t.Errorf("accepted invalid name %q", k)
			}
		}
	})
}
