# docs.sh: docs/operations.md typed literally on a Debian 12 frontend.
#
# The page promises that in its sections "Moving a Cyrus frontend from
# Cyrus's lmtpd to lmtpgate" and "Outage drill: the murder master is down"
# every ```sh block can be run as written, as root, in document order, and
# that a ```text block right after one shows (part of) what it prints. The
# checks below take those blocks from the copy the package installs
# (lib/docblocks.awk), run each with bash -e inside the container, match
# its output (lib/docmatch.awk) and, between the steps, look at what the
# step should have done beyond its output: where the mail went, what
# Postfix logged, which Cyrus services still answer. The rollback of the
# migration and the section for a frontend without Cyrus are examples to
# adapt (indented blocks); their checks mirror them and hold the page to
# the lines they mirror.
#
# The checks run in order on one container: check_docs_frontend sets up
# the frontend as it is before the migration, check_docs_migration and
# check_docs_drill follow the page from there (each refuses to start
# unless the one before it completed), check_docs_drill puts the shipped
# configuration back.

OPS=/usr/share/doc/lmtpgate/operations.md
DOCS=$WORK/docs        # the extracted blocks and their outputs, in the container
ALICE_MBOX_CONF=/srv/murder/backend1/imapd.conf

# How many blocks the two sections hold today. Fewer means the parser
# lost some (or the page lost steps): the check fails rather than run less.
DOCS_MIN_MIGRATION_SH=10
DOCS_MIN_MIGRATION_TEXT=8
DOCS_MIN_DRILL_SH=4
DOCS_MIN_DRILL_TEXT=3

# docs_extract: the installed page's blocks into $DOCS; the list of them
# ("N SECTION STEP" per line) into $DOCS/blocks.
docs_extract() {
	rm -rf "$CT_ROOT$DOCS"
	mkdir -p "$CT_ROOT$DOCS/blocks.d"
	ct cat "$OPS" >"$CT_ROOT$DOCS/operations.md" || fail "cannot read $OPS in the container"
	awk -v dir="$CT_ROOT$DOCS/blocks.d" -f "$here/lib/docblocks.awk" "$CT_ROOT$DOCS/operations.md" \
		>"$CT_ROOT$DOCS/blocks" || fail "$OPS does not follow its own convention for command blocks (see above)"
}

# docs_count SECTION sh|text: how many blocks of that kind the section has.
docs_count() {
	local n sec step c=0
	while read -r n sec step; do
		[ "$sec" = "$1" ] || continue
		if [ "$2" = sh ] || [ -e "$CT_ROOT$DOCS/blocks.d/$n.txt" ]; then c=$((c + 1)); fi
	done <"$CT_ROOT$DOCS/blocks"
	echo "$c"
}

# docs_require_counts SECTION MIN-SH MIN-TEXT
docs_require_counts() {
	local sh text
	sh=$(docs_count "$1" sh)
	text=$(docs_count "$1" text)
	echo "$1: $sh command blocks, $text with their output"
	[ "$sh" -ge "$2" ] || fail "$1: $sh command blocks found in $OPS, want at least $2"
	[ "$text" -ge "$3" ] || fail "$1: $text output blocks found in $OPS, want at least $3"
}

# docs_selftest: the matcher tells a match from a mismatch (a matcher that
# accepts everything would make every check below pass).
docs_selftest() {
	local d=$CT_ROOT$DOCS/selftest
	mkdir -p "$d"
	printf 'x\n…\na … c …\nlast\n' >"$d/want"
	printf 'x\nfoo\na b c d\nmore\nlast  \n' >"$d/good"
	printf 'x\na b c d\n' >"$d/short"
	printf 'last\nx\na b c d\n' >"$d/order"
	printf 'x\nab c d\nlast\n' >"$d/glob"
	LC_ALL=C awk -f "$here/lib/docmatch.awk" "$d/want" "$d/good" >/dev/null || fail "docmatch.awk rejects a matching output"
	local bad
	for bad in short order glob; do
		if LC_ALL=C awk -f "$here/lib/docmatch.awk" "$d/want" "$d/$bad" >/dev/null; then
			fail "docmatch.awk accepts a mismatching output ($bad)"
		fi
	done
}

# docs_block N: block N's commands, as on the page.
docs_block() { cat "$CT_ROOT$DOCS/blocks.d/$1.sh"; }

# docs_run N: run block N as root with bash -e in /root, stdin from
# /dev/null, and match its output (stdout and stderr, as a terminal shows
# them) against block N's text block if it has one. Fails with the block,
# its output and the first expected line that did not match.
docs_run() {
	local n=$1 b=$CT_ROOT$DOCS/blocks.d/$1 rc=0 why=""
	echo "--- block $n:"
	sed 's/^/    # /' "$b.sh"
	timeout 180 nsenter -t "$CT_LEADER" -m -u -i -n -p -C -- \
		env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8 SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 \
		/bin/bash -c "cd /root && exec /bin/bash -e $DOCS/blocks.d/$n.sh" </dev/null >"$b.out" 2>&1 || rc=$?
	sed 's/^/    /' "$b.out"
	if [ $rc -ne 0 ]; then
		why="exit status $rc"
	elif [ -e "$b.txt" ] && ! why=$(LC_ALL=C awk -f "$here/lib/docmatch.awk" "$b.txt" "$b.out"); then
		:
	else
		return 0
	fi
	{
		echo "block $n of $OPS failed: $why"
		if [ -e "$b.txt" ]; then
			echo "the page says it prints:"
			sed 's/^/    /' "$b.txt"
		fi
	} >&2
	return 1
}

# docs_subject N: the Subject: of the message block N sends
# (printf 'Subject: …\n…' | sendmail …).
docs_subject() {
	local s
	s=$(docs_block "$1" | sed -n 's/.*Subject: \([^\]*\)\\n.*/\1/p' | head -n 1)
	[ -n "$s" ] || fail "block $1 sends no message with a Subject: the check could find"
	echo "$s"
}

# alice_has SUBJECT: a message with SUBJECT is in user.alice on backend1.
alice_has() {
	local mbox
	mbox=$(ct /usr/lib/cyrus/bin/mbpath -C "$ALICE_MBOX_CONF" user.alice) || return 1
	ct grep -rlqF --include='[0-9]*.' -e "Subject: $1" "$mbox"
}

# wait_alice SUBJECT: wait (a minute at most) for SUBJECT in user.alice;
# on failure show the queue and Postfix's log.
wait_alice() {
	if ! wait_for 60 "\"$1\" in user.alice on backend1" alice_has "$1"; then
		echo "--- postqueue -p"
		ct postqueue -p
		echo "--- journalctl -u postfix@- -n 20"
		journal -u postfix@- -n 20
		return 1
	fi
}

# postfix_sent MARK SOCKET: Postfix logged, since MARK, a status=sent to
# alice@example.org through SOCKET.
postfix_sent() {
	local got
	got=$(journal -u postfix@- --since="$1" --grep 'status=sent' -o cat)
	expect_match "$got" "to=<alice@example\\.org>, relay=[^,]*\\[${2//./\\.}\\], .*status=sent \\(250 " "Postfix's log since the message was sent"
}

# session_in_both MARK: the SESSIONID=<…> in the reply Postfix logged (since
# MARK) for its delivery through lmtpgate is LMTPGATE_SESSION of lmtpgate's
# journal line for that delivery, as the page says.
session_in_both() {
	local sid out
	sid=$(journal -u postfix@- --since="$1" --grep 'status=sent' -o cat |
		sed -n 's|.*\[/run/lmtpgate/lmtp\.sock\].* SESSIONID=<\([^>]*\)>.*|\1|p' | tail -n 1)
	[ -n "$sid" ] || fail "no SESSIONID=<…> in Postfix's status=sent line for lmtpgate's socket"
	out=$(journal_since "$1" -o cat "LMTPGATE_SESSION=$sid")
	expect_match "$out" '^delivered alice@example\.org → user\.alice on ' "journalctl -u lmtpgate LMTPGATE_SESSION=$sid"
}

# unchroots_debian_default: the fixture's Postfix had lmtp outside the
# chroot already (Debian's way to reach Cyrus's socket), so there the
# page's `postconf -F …chroot=n` changes nothing. Run against a copy of
# Debian's default master.cf (chroot y), the same command (every
# `postconf -F` line of the page's blocks) must turn it off.
unchroots_debian_default() {
	local cmds
	cmds=$(cat "$CT_ROOT$DOCS"/blocks.d/*.sh | grep -E '^postconf -F ' || true)
	[ -n "$cmds" ] || fail "no postconf -F line in the page's blocks"
	ct_sh "set -e; d=\$(mktemp -d); cp /etc/postfix/main.cf \$d/; cp /usr/share/postfix/master.cf.dist \$d/master.cf
		postconf -c \$d -F lmtp/unix/chroot | grep -qx 'lmtp/unix/chroot = y'
		$(printf '%s\n' "$cmds" | sed 's/^postconf /postconf -c $d /')
		postconf -c \$d -F lmtp/unix/chroot | grep -qx 'lmtp/unix/chroot = n'
		rm -r \$d" || fail "the page's $(printf '%s' "$cmds" | tr '\n' ' ')does not take lmtp out of the chroot of Debian's default master.cf"
}

# greets ADDR: a server at the socat address ADDR sends a greeting line.
greets() { ct timeout 5 socat -T 3 - "$1" </dev/null 2>/dev/null | head -n 1 | grep -q .; }
silent() { ! greets "$1"; }

# The frontend as it is before the migration: Debian's Cyrus frontend
# (guest/murder.sh) with Cyrus's lmtpd on /run/cyrus/socket/lmtp, and
# Postfix delivering there the way Debian's README.postfix of cyrus-common
# says: postfix in group mail (which owns /run/cyrus/socket), its lmtp
# client outside the chroot (the socket is not inside it), an "lmtp" port
# in /etc/services for Cyrus's own proxy (Debian's file has none; Cyrus's
# lmtpd reaches the backends at <server>:lmtp). lmtpgate is installed with
# its shipped configuration and has not run yet. A message to
# alice@example.org reaches her mailbox on the backend through Cyrus's
# lmtpd, so what follows proves the switch.
check_docs_frontend() {
	restore_config
	local want got c
	want=$(ct dpkg-query -W -f '${Conffiles}' lmtpgate | awk '$1 == "/etc/lmtpgate/lmtpgate.yaml" { print $2 }')
	got=$(ct md5sum "$CONF" | cut -d' ' -f1)
	expect_eq "$got" "$want" "md5sum of $CONF (the package's conffile)"
	ct systemctl -q stop lmtpgate.service
	ct rm -f /var/lib/lmtpgate/mode

	ct_sh "grep -q '^lmtp[[:space:]]' /etc/services || printf 'lmtp\t\t2003/tcp\t\t\t# Cyrus LMTP\n' >>/etc/services"
	ct adduser --quiet postfix mail
	ct sed -i -E 's/^(lmtp +unix +- +- +)y( +- +- +lmtp)$/\1n\2/' /etc/postfix/master.cf
	expect_match "$(ct postconf -F lmtp/unix/chroot)" '^lmtp/unix/chroot = n$' "Postfix's lmtp chroot"
	ct postconf -e 'myhostname = frontend.example.org' 'mydestination = $myhostname, example.org, localhost' \
		'mailbox_transport = lmtp:unix:/run/cyrus/socket/lmtp'
	ct systemctl restart postfix
	greets UNIX-CONNECT:/run/cyrus/socket/lmtp || fail "Cyrus's lmtpd does not answer on /run/cyrus/socket/lmtp"

	c=$(mark)
	printf 'Subject: before the migration\n\nThrough Cyrus lmtpd.\n' | ct /usr/sbin/sendmail alice@example.org
	wait_alice "before the migration"
	postfix_sent "$c" /run/cyrus/socket/lmtp
	expect_eq "$(prop lmtpgate.service ActiveState)" inactive "lmtpgate.service before the migration"
	ct touch "$WORK/docs-frontend.ready"
}

# The migration, steps 1 to 6, block by block, with what each step must
# have done: after step 4 the message is in alice's mailbox and Postfix
# logged its 250 from lmtpgate's socket; after step 5 Cyrus's lmtpd no
# longer answers while its master, its mupdate replica and an IMAP session
# opened before the HUP live on.
check_docs_migration() {
	ct test -e "$WORK/docs-frontend.ready" || fail "the frontend before the migration was not set up (check_docs_frontend)"
	docs_selftest
	docs_extract
	docs_require_counts migration "$DOCS_MIN_MIGRATION_SH" "$DOCS_MIN_MIGRATION_TEXT"
	local n sec step prev="" subj="" c4="" sent4="" done4="" done5="" cyrus_pid="" imap_fd=""
	while read -r n sec step; do
		[ "$sec" = migration ] || continue
		if [ "$step" != "$prev" ]; then
			case "$prev" in
			4)
				[ -n "$sent4" ] || fail "step 4 sends no message"
				subj=$(docs_subject "$sent4")
				wait_alice "$subj"
				postfix_sent "$c4" /run/lmtpgate/lmtp.sock
				expect_match "$(ct id -nG postfix)" '(^| )lmtpgate( |$)' "id -nG postfix after step 4"
				session_in_both "$c4"
				unchroots_debian_default
				done4=1
				;;
			5)
				wait_for 30 "Cyrus's lmtpd to stop answering on /run/cyrus/socket/lmtp" silent UNIX-CONNECT:/run/cyrus/socket/lmtp
				echo "after step 5: $(ct sh -c 'ls -l /run/cyrus/socket/lmtp 2>&1; socat - UNIX-CONNECT:/run/cyrus/socket/lmtp </dev/null 2>&1 | tail -n 1')"
				expect_eq "$(prop cyrus-imapd.service MainPID)" "$cyrus_pid" "cyrus-imapd.service MainPID after step 5 (a HUP, not a restart)"
				greets TCP:127.0.0.1:3905 || fail "the frontend's mupdate replica (127.0.0.1:3905) stopped answering in step 5"
				printf 'a2 NOOP\r\n' >&"$imap_fd"
				wait_for 30 "the IMAP session opened before step 5 to answer" ct grep -q '^a2 OK' "$WORK/imap.out"
				printf 'a3 LOGOUT\r\n' >&"$imap_fd"
				exec {imap_fd}>&-
				done5=1
				;;
			esac
			case "$step" in
			4) c4=$(mark) ;;
			5)
				cyrus_pid=$(prop cyrus-imapd.service MainPID)
				# An IMAP session to the frontend's Cyrus, driven
				# through a FIFO, that must outlive step 5.
				ct rm -f "$WORK/imap.in" "$WORK/imap.out"
				ct mkfifo "$WORK/imap.in"
				ct_sh "socat -t 5 - TCP:127.0.0.1:143 <$WORK/imap.in >$WORK/imap.out 2>&1" &
				# Opened read-write, so that this never blocks.
				exec {imap_fd}<>"$CT_ROOT$WORK/imap.in"
				printf 'a1 NOOP\r\n' >&"$imap_fd"
				wait_for 30 "the frontend's imapd to answer NOOP" ct grep -q '^a1 OK' "$WORK/imap.out"
				;;
			esac
			prev=$step
		fi
		docs_run "$n"
		if [ "$step" = 4 ] && docs_block "$n" | grep -q 'sendmail '; then sent4=$n; fi
	done <"$CT_ROOT$DOCS/blocks"
	[ -n "$done4" ] && [ -n "$done5" ] || fail "the migration has no step 4 or 5 followed by another step"
	ct touch "$WORK/docs-migrated"
}

# The outage drill as the page has it, with the master really down: it is
# stopped before the first block and started again before
# `lmtpgate mode clear`. The message sent during the outage reaches
# alice's mailbox, delivered in no-master mode, and afterwards the mode is
# the configuration's again.
check_docs_drill() {
	ct test -e "$WORK/docs-migrated" || fail "the migration did not complete (check_docs_migration)"
	trap 'ct systemctl start murder-master.service; ct rm -f /var/lib/lmtpgate/mode; restore_config' EXIT
	docs_extract
	docs_require_counts drill "$DOCS_MIN_DRILL_SH" "$DOCS_MIN_DRILL_TEXT"
	local n sec step c subj="" cleared=""
	ct systemctl -q stop murder-master.service
	silent TCP:127.0.0.10:3905 || fail "the master still answers after systemctl stop murder-master.service"
	c=$(mark)
	while read -r n sec step; do
		[ "$sec" = drill ] || continue
		if docs_block "$n" | grep -q 'lmtpgate mode clear'; then
			[ -z "$subj" ] || wait_alice "$subj"
			ct systemctl -q start murder-master.service
			wait_for 30 "the master to answer again" greets TCP:127.0.0.10:3905
			cleared=1
		fi
		docs_run "$n"
		if docs_block "$n" | grep -q 'sendmail '; then subj=$(docs_subject "$n"); fi
	done <"$CT_ROOT$DOCS/blocks"
	[ -n "$subj" ] || fail "the drill sends no message during the outage"
	[ -n "$cleared" ] || fail "the drill never runs lmtpgate mode clear"
	local e
	e=$(journal_since "$c" -o export LMTPGATE_RCPT=alice@example.org LMTPGATE_CODE=250)
	expect_match "$e" '^LMTPGATE_MODE=no-master$' "the delivery during the outage (journal)"
	expect_match "$(ct lmtpgate status)" '^mode: +master \(from config\), ' "lmtpgate status after the drill"
	expect_eq "$(ct lmtpgate mode | head -n 1)" "master (from config)" "lmtpgate mode after the drill"
	ct test ! -e /var/lib/lmtpgate/mode || fail "/var/lib/lmtpgate/mode is still there after lmtpgate mode clear"
	murder wait
}

# The rollback of step 5 as the page gives it (an indented block, so
# mirrored here line by line, and each line must still be on the page):
# Cyrus's lmtpd answers again and Postfix delivers through it.
DOCS_ROLLBACK=(
	"cp /etc/cyrus.conf.before-lmtpgate /etc/cyrus.conf"
	"systemctl kill --kill-who=main --signal=HUP cyrus-imapd.service"
	"postconf -e mailbox_transport=lmtp:unix:/run/cyrus/socket/lmtp"
	"postfix reload"
)

check_docs_rollback() {
	ct test -e "$WORK/docs-migrated" || fail "the migration did not complete (check_docs_migration)"
	local line c
	for line in "${DOCS_ROLLBACK[@]}"; do
		ct grep -qxF -- "    $line" "$OPS" || fail "$OPS no longer gives the rollback command: $line"
	done
	for line in "${DOCS_ROLLBACK[@]}"; do
		echo "# $line"
		ct_sh "$line"
	done
	wait_for 30 "Cyrus's lmtpd to answer on /run/cyrus/socket/lmtp again" greets UNIX-CONNECT:/run/cyrus/socket/lmtp
	c=$(mark)
	printf 'Subject: after the rollback\n\nThrough Cyrus lmtpd again.\n' | ct /usr/sbin/sendmail alice@example.org
	wait_alice "after the rollback"
	postfix_sent "$c" /run/cyrus/socket/lmtp
}

# REPLICA_STATUS is the line the section "A frontend without Cyrus" shows
# in `lmtpgate status`; the check holds the page to it.
REPLICA_STATUS='source:   master-replica  ok    streaming, … mailboxes, current'

# master_conns: lmtpgate's TCP connections to the master, as ss shows them.
master_conns() { ct ss -Htnp state established | grep -F '127.0.0.10:3905' | grep -F '"lmtpgate"' || true; }
no_master_conn() { [ -z "$(master_conns)" ]; }

# status_matches LINE: `lmtpgate status` has a line LINE ("…" for any text).
status_matches() {
	ct lmtpgate status >"$CT_ROOT$DOCS/status.out" 2>&1 || return 1
	printf '%s\n' "$1" >"$CT_ROOT$DOCS/status.want"
	LC_ALL=C awk -f "$here/lib/docmatch.awk" "$CT_ROOT$DOCS/status.want" "$CT_ROOT$DOCS/status.out" >/dev/null
}

# delivered_from SOURCE: a message to alice gets 250 and lmtpgate's journal
# says SOURCE found her mailbox.
delivered_from() {
	local c out
	c=$(mark)
	out=$(lmtp send "$UNIX_ADDR" sender@example.org alice@example.org)
	expect_match "$out" '^S: 250 2\.1\.5 <alice@example.org> Delivered to user\.alice on ' "delivery to alice ($2)"
	out=$(journal_since "$c" -o export LMTPGATE_RCPT=alice@example.org)
	expect_match "$out" "^LMTPGATE_SOURCE=$1\$" "the source of alice's delivery ($2)"
}

# The section "A frontend without Cyrus: lmtpgate's own replica of the
# master", mirrored one to one (its blocks are examples to adapt, so the
# check adapts them to this murder: the master at 127.0.0.10:3905 without
# TLS, Debian's unixhierarchysep): the shipped configuration without
# imapd.conf stops with the message the page quotes; configured as the
# page says, lmtpgate routes from master-replica; no-master mode leaves no
# connection to the master; and a restart while the master is down still
# routes, from the snapshot.
check_docs_replica() {
	trap 'ct systemctl start murder-master.service; ct rm -f /var/lib/lmtpgate/mode; ct sh -c ": >/etc/lmtpgate/proxy.pw; : >/etc/lmtpgate/mupdate.pw"; restore_config' EXIT
	restore_config
	local out
	ct grep -qF -- "$REPLICA_STATUS" "$OPS" || fail "$OPS no longer shows: $REPLICA_STATUS"

	# The shipped configuration on a host without /etc/imapd.conf (hidden
	# in a mount namespace of its own).
	ct mkdir -p /run/docs-test-etc
	out=$(ct unshare -m sh -c 'mount -t tmpfs none /run/docs-test-etc &&
		mkdir /run/docs-test-etc/lmtpgate && mount --bind /etc/lmtpgate /run/docs-test-etc/lmtpgate &&
		mount --rbind /run/docs-test-etc /etc && exec lmtpgate check' 2>&1) &&
		fail "lmtpgate check passed without /etc/imapd.conf: $out"
	ct rmdir /run/docs-test-etc
	printf '%s\n' 'lmtpgate: /etc/lmtpgate/lmtpgate.yaml: imapd_conf: open /etc/imapd.conf: no such file or directory (no Cyrus on this host? …' \
		>"$CT_ROOT$DOCS/noimapd.want"
	printf '%s\n' "$out" >"$CT_ROOT$DOCS/noimapd.out"
	LC_ALL=C awk -f "$here/lib/docmatch.awk" "$CT_ROOT$DOCS/noimapd.want" "$CT_ROOT$DOCS/noimapd.out" ||
		fail "lmtpgate check without /etc/imapd.conf says: $out"

	use_config '
		s/^imapd_conf: .*/imapd_conf: ""/
		s/^  order: \[mailboxes-db\]$/  order: [master-replica]/
		/^  master_mupdate:$/,/^  master_replica:$/ {
			s/^    address:$/    address: 127.0.0.10:3905/
			s/^    authname:$/    authname: mupdate/
		}
		/^backends:$/,/^metrics:$/ s/^  authname:$/  authname: proxy/
		s/^  unixhierarchysep:$/  unixhierarchysep: false/'
	trap 'ct systemctl start murder-master.service; ct rm -f /var/lib/lmtpgate/mode; ct sh -c ": >/etc/lmtpgate/proxy.pw; : >/etc/lmtpgate/mupdate.pw"; restore_config' EXIT
	ct sh -c "printf '%s\n' mupdatepw >/etc/lmtpgate/mupdate.pw; printf '%s\n' proxypw >/etc/lmtpgate/proxy.pw"
	ct rm -f /var/lib/lmtpgate/master-replica.snapshot
	echo "--- lmtpgate check --connect"
	out=$(ct lmtpgate check --connect 2>&1) || fail "lmtpgate check --connect: $out"
	echo "$out"
	expect_match "$out" '^master-replica at 127\.0\.0\.10:3905: MUPDATE login as "mupdate" OK ' "lmtpgate check --connect"
	ct systemctl restart lmtpgate.service
	wait_for 30 "lmtpgate status to show the replica streaming" status_matches "$REPLICA_STATUS"
	echo "--- lmtpgate status"
	ct lmtpgate status
	delivered_from master-replica "master mode"

	ct lmtpgate mode no-master
	wait_for 30 "lmtpgate's connection to the master to close in no-master mode" no_master_conn
	delivered_from master-replica "no-master mode"
	ct lmtpgate mode clear
	wait_for 30 "lmtpgate's stream to the master after lmtpgate mode clear" status_matches "$REPLICA_STATUS"
	[ -n "$(master_conns)" ] || fail "no connection to the master after lmtpgate mode clear"

	# The master down, lmtpgate restarted: it routes from its snapshot.
	ct systemctl -q stop murder-master.service
	ct systemctl restart lmtpgate.service
	ct test -s /var/lib/lmtpgate/master-replica.snapshot || fail "no snapshot in /var/lib/lmtpgate"
	delivered_from master-replica "restarted with the master down"
	echo "--- lmtpgate status, the master down"
	ct lmtpgate status
	status_matches 'source:   master-replica  stale …, … mailboxes (…), stale …' || fail "lmtpgate status does not mark the replica stale with the master down: $(cat "$CT_ROOT$DOCS/status.out")"
	ct systemctl -q start murder-master.service
	murder wait

	# The pre-flight the page gives for this setup must try the backends
	# too: with a snapshot there is a directory that names them.
	echo "--- lmtpgate check --connect, with a snapshot"
	out=$(ct lmtpgate check --connect 2>&1) || fail "lmtpgate check --connect: $out"
	echo "$out"
	expect_match "$out" '^backend 127\.0\.0\.2: LMTP login as "proxy" OK ' "lmtpgate check --connect with only master-replica and its snapshot"
}
