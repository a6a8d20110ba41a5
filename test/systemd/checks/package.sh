# package.sh: upgrade, reboot, remove and purge of the installed package.

# An upgrade to a newer build of the same tree (as packaging/package-test.sh
# makes it) keeps a local edit of the configuration, restarts the running
# service on the new binary, and leaves the listening socket alone: the
# same socket file before and after, so the MTA is never refused.
check_upgrade() {
	restore_config
	activate
	local pid ino out
	pid=$(main_pid)
	ino=$(ct stat -c %i /run/lmtpgate/lmtp.sock)
	printf '# a local edit, kept across upgrades\n' >>"$CT_ROOT$CONF"
	ct cp -p "$CONF" "$SHIPPED"
	ct_sh "cd /root/debs/v2 && apt-get install -y -q ./lmtpgate_*_amd64.deb" >"$CT_ROOT$WORK/upgrade.log" 2>&1 ||
		{ cat "$CT_ROOT$WORK/upgrade.log"; fail "apt install of the newer package failed"; }
	expect_eq "$(ct dpkg-query -W -f '${Version}' lmtpgate)" "$VERSION2-1" "installed version"
	ct grep -qx '# a local edit, kept across upgrades' "$CONF" || fail "the upgrade lost the local edit"
	ct sh -c 'ls /etc/lmtpgate/*.dpkg-* 2>/dev/null' && fail "dpkg left a copy of the configuration"
	wait_for 30 "lmtpgate.service active after the upgrade" is_active lmtpgate.service
	[ "$(main_pid)" != "$pid" ] || fail "the service was not restarted (MainPID $pid)"
	expect_match "$(ct lmtpgate status)" "^lmtpgate $VERSION2," "the running daemon's version"
	expect_eq "$(prop lmtpgate.socket ActiveState)" active "lmtpgate.socket after the upgrade"
	expect_eq "$(ct stat -c %i /run/lmtpgate/lmtp.sock)" "$ino" "inode of the LMTP socket (kept, not re-created)"
	out=$(lmtp lhlo "$UNIX_ADDR") || fail "no LMTP after the upgrade: $out"
}

# After the container was powered off and booted again (reboot_container
# in run.sh): the socket is enabled and listening, the service waits for
# the first connection and starts on it, and mail is delivered.
check_after_reboot() {
	[ -n "$CT_LEADER" ] || fail "the container did not boot again"
	expect_eq "$(ct systemctl is-enabled lmtpgate.socket)" enabled "lmtpgate.socket after the reboot"
	expect_eq "$(prop lmtpgate.socket ActiveState)/$(prop lmtpgate.socket SubState)" active/listening "lmtpgate.socket after the reboot"
	expect_eq "$(prop lmtpgate.service ActiveState)" inactive "lmtpgate.service before the first connection"
	local out
	out=$(lmtp lhlo "$UNIX_ADDR") || fail "LHLO after the reboot: $out"
	expect_eq "$(prop lmtpgate.service ActiveState)" active "lmtpgate.service after the first connection"
	murder wait
	out=$(lmtp send "$UNIX_ADDR" sender@example.org alice@example.org)
	expect_match "$out" '^S: 250 2\.1\.5 <alice@example.org> Delivered to user\.alice on ' "a delivery after the reboot"
}

# apt remove stops and disables everything and keeps /etc/lmtpgate.
check_remove() {
	ct_sh "apt-get remove -y -q lmtpgate" >"$CT_ROOT$WORK/remove.log" 2>&1 ||
		{ cat "$CT_ROOT$WORK/remove.log"; fail "apt remove failed"; }
	ct test ! -e /usr/sbin/lmtpgate || fail "/usr/sbin/lmtpgate is still there"
	ct test ! -e /lib/systemd/system/lmtpgate.socket || fail "lmtpgate.socket is still there"
	ct test ! -e /etc/systemd/system/sockets.target.wants/lmtpgate.socket || fail "lmtpgate.socket is still enabled"
	expect_eq "$(prop lmtpgate.socket LoadState)/$(prop lmtpgate.socket ActiveState)" not-found/inactive "lmtpgate.socket"
	expect_eq "$(prop lmtpgate.service ActiveState)" inactive "lmtpgate.service"
	ct test ! -e /run/lmtpgate/lmtp.sock || fail "the LMTP socket file is still there"
	ct grep -qx '# a local edit, kept across upgrades' "$CONF" || fail "remove deleted the configuration"
	ct test -e /etc/lmtpgate/proxy.pw || fail "remove deleted /etc/lmtpgate/proxy.pw"
}

# apt purge leaves nothing of lmtpgate behind but the cyrus user.
check_purge() {
	ct_sh "apt-get purge -y -q lmtpgate" >"$CT_ROOT$WORK/purge.log" 2>&1 ||
		{ cat "$CT_ROOT$WORK/purge.log"; fail "apt purge failed"; }
	if ct dpkg-query -W -f '${Status}\n' lmtpgate 2>/dev/null | grep -q installed; then
		fail "dpkg still lists lmtpgate: $(ct dpkg-query -W -f '${Status}' lmtpgate)"
	fi
	local left
	# / and the tmpfs file systems the container mounts (/run, /tmp).
	# /etc/cyrus.conf.before-lmtpgate is the operator's, made by the
	# migration in docs/operations.md (check_docs_migration).
	left=$(ct find / /run /tmp -xdev \( -path "$GUEST" -o -path /root -o -path /etc/cyrus.conf.before-lmtpgate \) -prune -o \
		-name '*lmtpgate*' -print 2>/dev/null)
	[ -z "$left" ] || fail "left after purge: $left"
	ct getent passwd cyrus >/dev/null || fail "purge deleted the user cyrus"
}
