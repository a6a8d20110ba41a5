# frontend.sh: lmtpgate as it will be deployed: Debian's Cyrus as the
# murder frontend, Postfix as the MTA, the shipped configuration unchanged.

OPS=/usr/share/doc/lmtpgate/operations.md

# doc_says TEXT: fail unless the installed docs/operations.md has a line
# containing TEXT (so the check below follows what the docs say, and
# notices when they change).
doc_says() {
	ct grep -qF -- "$1" "$OPS" || fail "$OPS no longer says: $1"
}

# The shipped /etc/lmtpgate/lmtpgate.yaml, Postfix set up exactly as the
# Postfix section of docs/operations.md says (and nothing more), and a
# message injected with Postfix's sendmail reaches alice's mailbox on the
# backend.
check_frontend_postfix() {
	restore_config
	local want got
	want=$(ct dpkg-query -W -f '${Conffiles}' lmtpgate | awk '$1 == "/etc/lmtpgate/lmtpgate.yaml" { print $2 }')
	got=$(ct md5sum "$CONF" | cut -d' ' -f1)
	expect_eq "$got" "$want" "md5sum of $CONF (the package's conffile)"

	doc_says "adduser postfix mail"
	doc_says "systemctl restart postfix"
	doc_says "mailbox_transport = lmtp:unix:/run/lmtpgate/lmtp.sock"
	doc_says "lmtp      unix  -       -       n       -       -       lmtp"
	ct adduser postfix mail
	ct systemctl restart postfix
	ct postconf -e "mailbox_transport = lmtp:unix:/run/lmtpgate/lmtp.sock"
	# Debian runs lmtp chrooted; the docs say to set its 5th column to n.
	ct sed -i 's/^lmtp\( *\)unix\( *\)-\( *\)-\( *\)y\( *\)-\( *\)-\( *\)lmtp$/lmtp\1unix\2-\3-\4n\5-\6-\7lmtp/' /etc/postfix/master.cf
	expect_match "$(ct grep '^lmtp ' /etc/postfix/master.cf)" '^lmtp +unix +- +- +n +- +- +lmtp$' "master.cf lmtp line"
	ct postfix reload

	local token mbox
	token="frontend-$(date +%s%N)"
	printf 'From: sender@example.org\nTo: alice@localhost\nSubject: %s\n\nThrough Postfix and lmtpgate.\n' "$token" |
		ct /usr/sbin/sendmail -f sender@example.org alice@localhost
	mbox=$(ct /usr/lib/cyrus/bin/mbpath -C /srv/murder/backend1/imapd.conf user.alice)
	if ! wait_for 60 "the message in user.alice on backend1" ct grep -rlq --include='[0-9]*.' -e "Subject: $token" "$mbox"; then
		echo "--- postqueue -p"
		ct postqueue -p
		echo "--- journalctl -u postfix@-"
		journal -u postfix@- -n 15
		return 1
	fi
	got=$(journal -u postfix@- --grep 'status=sent' -o cat | tail -n 1)
	expect_match "$got" 'to=<alice@localhost>, relay=[^,]*\[/run/lmtpgate/lmtp.sock\].*status=sent \(250 ' "Postfix's log"
}
