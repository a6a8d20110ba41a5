# journal.sh: one journal entry per recipient, with the documented fields.

# The fields docs/operations.md promises; the check also takes every
# LMTPGATE_* name the installed copy of that page lists, so a field
# documented later is held to the same promise.
JOURNAL_FIELDS="LMTPGATE_RCPT LMTPGATE_MAILBOX LMTPGATE_BACKEND LMTPGATE_SOURCE LMTPGATE_CODE
LMTPGATE_SESSION LMTPGATE_DURATION_MS LMTPGATE_FROM LMTPGATE_MODE LMTPGATE_ERROR"

documented_fields() {
	{
		echo "$JOURNAL_FIELDS" | tr ' ' '\n'
		ct sed -n '/^Fields:/,/^$/p' /usr/share/doc/lmtpgate/operations.md | grep -o 'LMTPGATE_[A-Z_]*'
	} | grep . | sort -u
}

# entries MARK RCPT: the journal entries (export format) of lmtpgate for
# RCPT since MARK, found the way the docs show: LMTPGATE_RCPT=.
entries() { journal_since "$1" -o export "LMTPGATE_RCPT=$2"; }

count_entries() { entries "$1" "$2" | grep -ac '^__CURSOR='; }

# field ENTRIES NAME: the value of NAME in the first entry.
field() { printf '%s\n' "$1" | sed -n "s/^$2=//p" | head -n1; }

# A delivery to alice, bob and a mailbox that does not exist, then one to
# alice while her backend is down: every recipient gets exactly one entry
# per transaction, each documented field appears, and the values are the
# ones the transaction had.
check_journal_fields() {
	restore_config
	activate
	local c out e all f
	c=$(mark)
	out=$(lmtp send "$UNIX_ADDR" sender@example.org alice@example.org bob@example.org nosuch@example.org)
	expect_match "$out" '^S: 550 5\.1\.1' "RCPT of nosuch"
	expect_eq "$(printf '%s\n' "$out" | grep -c '^S: 250 2\.1\.5 <.*> Delivered to ')" 2 "delivered recipients"
	for r in alice@example.org bob@example.org nosuch@example.org; do
		expect_eq "$(count_entries "$c" "$r")" 1 "journal entries for $r"
	done
	e=$(entries "$c" alice@example.org)
	expect_eq "$(field "$e" LMTPGATE_CODE)" 250 "alice: LMTPGATE_CODE"
	expect_eq "$(field "$e" LMTPGATE_MAILBOX)" user.alice "alice: LMTPGATE_MAILBOX"
	expect_eq "$(field "$e" LMTPGATE_BACKEND)" 127.0.0.2 "alice: LMTPGATE_BACKEND"
	expect_eq "$(field "$e" LMTPGATE_SOURCE)" mailboxes-db "alice: LMTPGATE_SOURCE"
	expect_eq "$(field "$e" LMTPGATE_FROM)" sender@example.org "alice: LMTPGATE_FROM"
	expect_eq "$(field "$e" LMTPGATE_MODE)" master "alice: LMTPGATE_MODE"
	expect_match "$(field "$e" LMTPGATE_DURATION_MS)" '^[0-9]+$' "alice: LMTPGATE_DURATION_MS"
	expect_eq "$(field "$(entries "$c" bob@example.org)" LMTPGATE_SESSION)" "$(field "$e" LMTPGATE_SESSION)" "bob's and alice's LMTPGATE_SESSION"
	expect_eq "$(field "$(entries "$c" nosuch@example.org)" LMTPGATE_CODE)" 550 "nosuch: LMTPGATE_CODE"
	all=$e

	# The backend down: alice's recipient is deferred after DATA, and the
	# entry says why.
	ct systemctl -q stop murder-backend1.service
	trap 'ct systemctl start murder-backend1.service' EXIT
	c=$(mark)
	out=$(lmtp send "$UNIX_ADDR" sender@example.org alice@example.org)
	expect_match "$out" '^S: 451 ' "alice's reply with her backend down"
	expect_eq "$(count_entries "$c" alice@example.org)" 1 "journal entries for alice, backend down"
	e=$(entries "$c" alice@example.org)
	expect_eq "$(field "$e" LMTPGATE_CODE)" 451 "alice, backend down: LMTPGATE_CODE"
	[ -n "$(field "$e" LMTPGATE_ERROR)" ] || fail "alice, backend down: no LMTPGATE_ERROR in $e"
	all+=$'\n'$e

	for f in $(documented_fields); do
		printf '%s\n' "$all" | grep -q "^$f=" || fail "documented field $f in none of the entries"
	done
	ct systemctl start murder-backend1.service
	trap - EXIT
	murder wait
}
