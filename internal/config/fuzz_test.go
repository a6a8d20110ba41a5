package config

import (
	"os"
	"testing"
)

// FuzzParseImapdConf: an imapd.conf is outside bytes (an operator's file);
// whatever it holds, the parser must answer without panicking.
func FuzzParseImapdConf(f *testing.F) {
	f.Add([]byte("configdirectory: /var/lib/cyrus\n# comment\n\nvirtdomains: userid\n"))
	f.Add([]byte("bad line\n"))
	f.Add([]byte("a:\nb: c: d\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseImapdConf("imapd.conf", data)
		if err != nil {
			return
		}
		c.Bool("lmtp_downcase_rcpt")
		c.Int("maxmessagesize")
	})
}

// FuzzParse: a broken configuration must be an error, never a panic, on
// start and on every reload.
func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile("../../etc/lmtpgate/lmtpgate.yaml"); err == nil {
		f.Add(data)
	}
	f.Add([]byte("lookup: {order: [mailboxes-db], mailboxes_db: /x}\nbackends: {port: 2003}\n"))
	f.Add([]byte("mode: no-master\nlookup:\n  order: [master-mupdate]\n"))
	f.Add([]byte("listen: [\"tcp:[::1]:2003\"]\nshutdown_timeout: 30\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		// state_dir points nowhere, so no mode file is read from the host.
		c, err := Parse("fuzz.yaml", append([]byte("state_dir: /nonexistent-lmtpgate-fuzz\n"), data...))
		if err == nil && c == nil {
			t.Fatal("nil config without error")
		}
	})
}
