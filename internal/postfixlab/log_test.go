package postfixlab

import (
	"strings"
	"testing"
)

func TestParseLine(t *testing.T) {
	for _, tc := range []struct {
		name string
		line string
		ok   bool
		want Event
	}{
		{"sent over inet", `Dec 01 21:13:13 mta postfix/lmtp[141]: 4jfDBd0CTwz1SCbW: to=<alice@example.org>, relay=127.0.0.1[127.0.0.1]:2424, delay=0.02, delays=0.01/0.01/0/0, dsn=2.1.5, status=sent (250 2.1.5 Ok, delivered)`, true,
			Event{Time: "Dec 01 21:13:13", Program: "postfix/lmtp", PID: 141, QueueID: "4jfDBd0CTwz1SCbW", To: "alice@example.org", Relay: "127.0.0.1[127.0.0.1]:2424", Delay: 0.02, DSN: "2.1.5", Status: "sent", Reply: "250 2.1.5 Ok, delivered"}},
		{"deferred over unix with conn_use", `Dec 01 21:25:54 mta postfix/lmtp[477]: 4jfDT82mHdz1SDSk: to=<carol@example.org>, relay=mta.test[/tmp/lg/lmtp.sock], conn_use=2, delay=6.1, delays=6.1/0/0/0.02, dsn=4.4.3, status=deferred (host mta.test[/tmp/lg/lmtp.sock] said: 451 4.4.3 <carol@example.org> Server(s) unavailable (in reply to end of DATA command))`, true,
			Event{Time: "Dec 01 21:25:54", Program: "postfix/lmtp", PID: 477, QueueID: "4jfDT82mHdz1SDSk", To: "carol@example.org", Relay: "mta.test[/tmp/lg/lmtp.sock]", Delay: 6.1, DSN: "4.4.3", Status: "deferred", Reply: "host mta.test[/tmp/lg/lmtp.sock] said: 451 4.4.3 <carol@example.org> Server(s) unavailable (in reply to end of DATA command)"}},
		{"orig_to and a syslog date", `Dec  1 21:13:13 mta postfix/lmtp[9]: 3F2A1B4C5D: to=<a@example.org>, orig_to=<b@example.org>, relay=none, delay=10, delays=1/2/3/4, dsn=5.1.1, status=bounced (host x said: 550 5.1.1 unknown)`, true,
			Event{Time: "Dec  1 21:13:13", Program: "postfix/lmtp", PID: 9, QueueID: "3F2A1B4C5D", To: "a@example.org", OrigTo: "b@example.org", Relay: "none", Delay: 10, DSN: "5.1.1", Status: "bounced", Reply: "host x said: 550 5.1.1 unknown"}},
		{"message-id", `Dec 01 21:13:13 mta postfix/cleanup[138]: 4jfDBd0CTwz1SCbW: message-id=<x1@t>`, true,
			Event{Time: "Dec 01 21:13:13", Program: "postfix/cleanup", PID: 138, QueueID: "4jfDBd0CTwz1SCbW", Text: "message-id=<x1@t>", MessageID: "<x1@t>"}},
		{"removed", `Dec 01 21:13:13 mta postfix/qmgr[132]: 4jfDBd0CTwz1SCbW: removed`, true,
			Event{Time: "Dec 01 21:13:13", Program: "postfix/qmgr", PID: 132, QueueID: "4jfDBd0CTwz1SCbW", Text: "removed", Removed: true}},
		{"a long queue ID whose time digits hold a z", `Dec 01 21:13:13 mta postfix/qmgr[132]: 4jfDzd0CTwz1SCbW: removed`, true,
			Event{Time: "Dec 01 21:13:13", Program: "postfix/qmgr", PID: 132, QueueID: "4jfDzd0CTwz1SCbW", Text: "removed", Removed: true}},
		{"a warning is no message event", `Dec 01 21:12:55 mta postfix/postfix-script[123]: warning: not owned by postfix: /tmp/x`, false, Event{}},
		{"start-up", `Dec 01 21:13:11 mta postfix/master[130]: daemon started -- version 3.7.11, configuration /tmp/c`, false, Event{}},
		{"garbage", `to=<alice@example.org>, status=sent`, false, Event{}},
		{"a to= line without status", `Dec 01 21:13:13 mta postfix/smtpd[1]: 4jfDBd0CTwz1SCbW: to=<alice@example.org>, proto=ESMTP`, true,
			Event{Time: "Dec 01 21:13:13", Program: "postfix/smtpd", PID: 1, QueueID: "4jfDBd0CTwz1SCbW", Text: "to=<alice@example.org>, proto=ESMTP"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := ParseLine(tc.line)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v (%+v)", ok, tc.ok, got)
			}
			if !ok {
				return
			}
			if tc.want.Text == "" {
				tc.want.Text = got.Text
			}
			if got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestParseLogAndFinal(t *testing.T) {
	log := strings.Join([]string{
		`Dec 01 21:13:13 mta postfix/cleanup[138]: 4jfDBd0CTwz1SCbW: message-id=<x1@t>`,
		`Dec 01 21:13:13 mta postfix/master[130]: daemon started`,
		`Dec 01 21:13:13 mta postfix/lmtp[141]: 4jfDBd0CTwz1SCbW: to=<a@example.org>, relay=r, delay=1, delays=0/0/0/1, dsn=4.4.3, status=deferred (x)`,
		`Dec 01 21:13:18 mta postfix/lmtp[141]: 4jfDBd0CTwz1SCbW: to=<a@example.org>, relay=r, delay=5, delays=0/0/0/1, dsn=2.1.5, status=sent (250 2.1.5 ok)`,
		`Dec 01 21:13:18 mta postfix/qmgr[132]: 4jfDBd0CTwz1SCbW: removed`,
	}, "\n")
	evs := ParseLog(strings.NewReader(log))
	if len(evs) != 4 {
		t.Fatalf("%d events, want 4: %+v", len(evs), evs)
	}
	for i, want := range []struct{ delivery, final bool }{{false, false}, {true, false}, {true, true}, {false, false}} {
		if evs[i].Delivery() != want.delivery || evs[i].Final() != want.final {
			t.Errorf("event %d (%s): delivery %v final %v, want %v %v", i, evs[i].Text, evs[i].Delivery(), evs[i].Final(), want.delivery, want.final)
		}
	}
}

// FuzzParseLine: Postfix's log is outside bytes (a reply text is whatever
// the server said); parsing never panics, and a delivery event always has
// a recipient and a queue ID.
func FuzzParseLine(f *testing.F) {
	f.Add(`Dec 01 21:13:13 mta postfix/lmtp[141]: 4jfDBd0CTwz1SCbW: to=<alice@example.org>, relay=127.0.0.1[127.0.0.1]:2424, delay=0.02, delays=0.01/0.01/0/0, dsn=2.1.5, status=sent (250 2.1.5 Ok)`)
	f.Add(`Dec  1 21:13:13 mta postfix/lmtp[9]: 3F2A1B4C5D: to=<a, b@example.org>, orig_to=<b>, status=bounced (`)
	f.Fuzz(func(t *testing.T, line string) {
		e, ok := ParseLine(line)
		if !ok {
			return
		}
		if e.QueueID == "" {
			t.Fatalf("an event without a queue ID: %+v", e)
		}
		if e.Delivery() && !strings.HasPrefix(e.Text, "to=<") {
			t.Fatalf("a delivery parsed from %q", e.Text)
		}
	})
}
