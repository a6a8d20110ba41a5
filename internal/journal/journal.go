// Package journal is a log/slog handler that writes each record as one entry
// in journald's native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL), so that
// the structured fields of a recipient outcome (LMTPGATE_RCPT,
// LMTPGATE_BACKEND, …) can be matched with journalctl instead of parsed out
// of text.
//
// go-systemd's journal package speaks the same protocol but its socket path
// is a package variable set at build time, and it takes a map of fields; this
// handler needs an injectable socket for tests, one datagram per record with
// a fixed field mapping, and a fallback that never loses a record.
package journal

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where journald listens for native-protocol datagrams.
const DefaultSocket = "/run/systemd/journal/socket"

// DefaultIdentifier is the SYSLOG_IDENTIFIER of our entries, what
// journalctl -t selects on.
const DefaultIdentifier = "lmtpgate"

// truncateAt is the longest value kept when an entry fits neither in a
// datagram nor in a memfd. It leaves room for many fields within the
// default socket send buffer (net.core.wmem_default, 208 KiB).
const truncateAt = 16 << 10

// sendTimeout bounds one send. journald can stall under load; a logging
// call must then fall back to stderr rather than block a delivery.
const sendTimeout = 5 * time.Second

// Options configures a Handler. The zero value is usable.
type Options struct {
	// Socket is journald's native socket; default DefaultSocket.
	Socket string
	// Level is the minimum level written; default slog.LevelInfo.
	Level slog.Leveler
	// Identifier is SYSLOG_IDENTIFIER; default DefaultIdentifier.
	Identifier string
	// Fallback receives a record as text when journald cannot take it;
	// default os.Stderr.
	Fallback io.Writer
}

// Handler is a slog.Handler writing native journald entries. It is safe for
// concurrent use; handlers derived with WithAttrs and WithGroup share the
// socket.
type Handler struct {
	s      *sink
	level  slog.Leveler
	attrs  []field // from WithAttrs, already named
	prefix string  // "LMTPGATE_" plus the open groups, each followed by '_'
	text   slog.Handler
}

// sink is the state shared by a handler and those derived from it.
type sink struct {
	conn       *net.UnixConn
	addr       *net.UnixAddr
	identifier string
	warned     atomic.Bool // fallback reason written once
	fallback   io.Writer

	// Test hooks: maxDatagram > 0 makes larger payloads fail as EMSGSIZE
	// would; noMemfd makes the memfd path fail.
	maxDatagram int
	noMemfd     bool
}

type field struct{ name, value string }

// NewHandler opens an unbound datagram socket for sending to opts.Socket.
// It does not check that journald listens: a record that cannot be sent goes
// to opts.Fallback. Use ShouldUse to decide whether to log to journald.
func NewHandler(opts Options) (*Handler, error) {
	if opts.Socket == "" {
		opts.Socket = DefaultSocket
	}
	if opts.Level == nil {
		opts.Level = slog.LevelInfo
	}
	if opts.Identifier == "" {
		opts.Identifier = DefaultIdentifier
	}
	if opts.Fallback == nil {
		opts.Fallback = os.Stderr
	}
	// An unconnected socket, addressed on every send, keeps working when
	// journald restarts and re-creates its socket; a connected one would
	// get ECONNREFUSED forever. Autobind (empty name) as sd-journal does.
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("journal: creating socket: %w", err)
	}
	s := &sink{
		conn:       conn,
		addr:       &net.UnixAddr{Name: opts.Socket, Net: "unixgram"},
		identifier: opts.Identifier,
		fallback:   opts.Fallback,
	}
	return &Handler{
		s:      s,
		level:  opts.Level,
		prefix: "LMTPGATE_",
		// The fallback handler gets the same attributes and groups; level
		// filtering already happened in Enabled.
		text: slog.NewTextHandler(opts.Fallback, &slog.HandlerOptions{Level: slog.Level(-1 << 30)}),
	}, nil
}

// Close closes the socket shared by h and the handlers derived from it.
func (h *Handler) Close() error { return h.s.conn.Close() }

// Enabled implements slog.Handler.
func (h *Handler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	h2 := *h
	h2.attrs = append([]field(nil), h.attrs...)
	for _, a := range attrs {
		h2.attrs = appendAttr(h2.attrs, h.prefix, a)
	}
	h2.text = h.text.WithAttrs(attrs)
	return &h2
}

// WithGroup implements slog.Handler. Group names become part of the field
// name: WithGroup("tls").Info("", "version", v) gives LMTPGATE_TLS_VERSION.
func (h *Handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.prefix = h.prefix + sanitize(name) + "_"
	h2.text = h.text.WithGroup(name)
	return &h2
}

// Handle implements slog.Handler. It returns an error only if the record
// could be written neither to journald nor to the fallback writer.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	fields := make([]field, 0, 8+len(h.attrs)+r.NumAttrs())
	fields = append(fields,
		field{"MESSAGE", r.Message},
		field{"PRIORITY", strconv.Itoa(Priority(r.Level))},
		field{"SYSLOG_IDENTIFIER", h.s.identifier},
	)
	if r.PC != 0 {
		f, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		if f.File != "" {
			fields = append(fields,
				field{"CODE_FILE", f.File},
				field{"CODE_LINE", strconv.Itoa(f.Line)},
				field{"CODE_FUNC", f.Function})
		}
	}
	fields = append(fields, h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		fields = appendAttr(fields, h.prefix, a)
		return true
	})

	err := h.s.send(fields)
	if err == nil {
		return nil
	}
	if h.s.warned.CompareAndSwap(false, true) {
		fmt.Fprintf(h.s.fallback, "lmtpgate: cannot log to journald at %s (%v); logging here instead\n", h.s.addr.Name, err)
	}
	if ferr := h.text.Handle(ctx, r); ferr != nil {
		return errors.Join(err, ferr)
	}
	return nil
}

// LevelNotice is syslog's notice (priority 5), which slog lacks: a normal
// but significant event, such as a deferred recipient.
const LevelNotice = slog.LevelInfo + 2

// Priority maps a slog level to a syslog priority (RFC 5424 §6.2.1), the
// journald PRIORITY field: Debug→7 debug, Info→6 info, LevelNotice→5
// notice, Warn→4 warning, Error and above→3 err. Levels between the named
// ones take the lower neighbour's priority (slog.LevelInfo+1 is still info).
func Priority(l slog.Level) int {
	switch {
	case l < slog.LevelInfo:
		return 7
	case l < LevelNotice:
		return 6
	case l < slog.LevelWarn:
		return 5
	case l < slog.LevelError:
		return 4
	default:
		return 3
	}
}

// send tries, in the order journald's own clients (sd_journal_sendv) do: one
// datagram; if too large for the socket, the payload in a sealed memfd passed
// with SCM_RIGHTS; and last, as sd-journal cannot, the entry with long values
// truncated so that at least the event reaches the journal.
func (s *sink) send(fields []field) error {
	payload := encode(fields)
	err := s.sendDatagram(payload)
	if err == nil || !isTooLarge(err) {
		return err
	}
	merr := s.sendMemfd(payload)
	if merr == nil {
		return nil
	}
	short := make([]field, len(fields))
	for i, f := range fields {
		short[i] = field{f.name, truncate(f.value)}
	}
	if terr := s.sendDatagram(encode(short)); terr != nil {
		return errors.Join(err, merr, terr)
	}
	return nil
}

func (s *sink) sendDatagram(payload []byte) error {
	if s.maxDatagram > 0 && len(payload) > s.maxDatagram {
		return &net.OpError{Op: "write", Net: "unixgram", Err: os.NewSyscallError("sendmsg", syscall.EMSGSIZE)}
	}
	if err := s.conn.SetWriteDeadline(time.Now().Add(sendTimeout)); err != nil {
		return err
	}
	_, _, err := s.conn.WriteMsgUnix(payload, nil, s.addr)
	return err
}

func (s *sink) sendMemfd(payload []byte) error {
	if s.noMemfd {
		return errors.New("memfd disabled")
	}
	fd, err := unix.MemfdCreate("lmtpgate-journal", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd")
	defer f.Close()
	if _, err := f.Write(payload); err != nil {
		return fmt.Errorf("writing memfd: %w", err)
	}
	// journald maps only sealed memfds, so the sender cannot change the
	// entry under it (server_process_native_file).
	seals := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		return fmt.Errorf("sealing memfd: %w", err)
	}
	if err := s.conn.SetWriteDeadline(time.Now().Add(sendTimeout)); err != nil {
		return err
	}
	_, _, err = s.conn.WriteMsgUnix(nil, unix.UnixRights(int(f.Fd())), s.addr)
	return err
}

func isTooLarge(err error) bool {
	return errors.Is(err, syscall.EMSGSIZE) || errors.Is(err, syscall.ENOBUFS)
}

func truncate(v string) string {
	if len(v) <= truncateAt {
		return v
	}
	cut := truncateAt
	for cut > 0 && !utf8.RuneStart(v[cut]) {
		cut--
	}
	return v[:cut] + "… (truncated from " + strconv.Itoa(len(v)) + " bytes)"
}

// encode serialises an entry. A value with a newline uses the binary form
// (NAME\n, 64-bit little-endian length, value, \n); journald would otherwise
// end the value at the newline and read the rest as a field name.
func encode(fields []field) []byte {
	n := 0
	for _, f := range fields {
		n += len(f.name) + len(f.value) + 10
	}
	var b bytes.Buffer
	b.Grow(n)
	for _, f := range fields {
		b.WriteString(f.name)
		if strings.IndexByte(f.value, '\n') >= 0 {
			b.WriteByte('\n')
			var l [8]byte
			binary.LittleEndian.PutUint64(l[:], uint64(len(f.value)))
			b.Write(l[:])
		} else {
			b.WriteByte('=')
		}
		b.WriteString(f.value)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// fixedNames maps the log keys whose field names differ from the generic
// upper-casing, so that journalctl users get readable names.
var fixedNames = map[string]string{
	"dur_ms": "DURATION_MS",
	"err":    "ERROR",
}

// appendAttr flattens a into fields, following the slog.Handler rules:
// resolve LogValuers, drop empty attributes, inline groups with an empty
// key, drop empty groups.
func appendAttr(fields []field, prefix string, a slog.Attr) []field {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return fields
	}
	if a.Value.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p = prefix + sanitize(a.Key) + "_"
		}
		for _, ga := range a.Value.Group() {
			fields = appendAttr(fields, p, ga)
		}
		return fields
	}
	key, ok := fixedNames[a.Key]
	if !ok {
		key = sanitize(a.Key)
	}
	return append(fields, field{fieldName(prefix + key), formatValue(a.Value)})
}

// fieldName cuts a name to journald's 64-character limit; longer names are
// dropped by journald (journal_field_valid), losing the value.
func fieldName(name string) string {
	if len(name) > 64 {
		name = name[:64]
	}
	return name
}

// sanitize makes s usable in a journald field name: ASCII letters
// upper-cased, digits and '_' kept, every other character replaced by '_'.
// The "LMTPGATE_" prefix guarantees the name starts with a letter.
func sanitize(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		switch {
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_':
			b.WriteRune(r)
		case r >= 'a' && r <= 'z':
			b.WriteRune(r - 'a' + 'A')
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

func formatValue(v slog.Value) string {
	switch v.Kind() {
	case slog.KindString:
		return v.String()
	case slog.KindTime:
		return v.Time().Format(time.RFC3339Nano)
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return safeError(x)
		case []byte:
			return string(x)
		}
	}
	return v.String()
}

// safeError calls Error without letting a panicking implementation (a nil
// pointer inside a wrapped error) take the daemon down from a log call.
func safeError(err error) (s string) {
	defer func() {
		if p := recover(); p != nil {
			s = fmt.Sprintf("!PANIC in Error(): %v", p)
		}
	}()
	return err.Error()
}

// ReplaceLevel is a slog.HandlerOptions.ReplaceAttr for the text and JSON
// handlers that names LevelNotice "NOTICE" rather than "INFO+2".
func ReplaceLevel(groups []string, a slog.Attr) slog.Attr {
	if a.Key == slog.LevelKey && len(groups) == 0 {
		if l, ok := a.Value.Any().(slog.Level); ok && l >= LevelNotice && l < slog.LevelWarn {
			return slog.String(slog.LevelKey, "NOTICE")
		}
	}
	return a
}
