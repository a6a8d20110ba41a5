# install.sh: the package on a Debian 12 frontend, as a new user installs it.

# A Cyrus murder for lmtpgate to route into: Debian's cyrus-imapd as the
# frontend, a master and one backend (guest/murder.sh), mailboxes for
# alice and bob on the backend, known to the frontend's mailboxes.db.
check_murder() {
	murder setup
	murder create user.alice user.bob
}

# `apt install ./lmtpgate_*_amd64.deb` as docs/operations.md says.
check_install() {
	ct_sh "cd /root/debs/v1 && apt-get install -y -q ./lmtpgate_*_amd64.deb" >"$CT_ROOT$WORK/install.log" 2>&1 ||
		{ cat "$CT_ROOT$WORK/install.log"; fail "apt install failed"; }
	expect_eq "$(ct dpkg-query -W -f '${Status} ${Version}' lmtpgate)" "install ok installed $VERSION-1" "installed package"
	ct cp -p "$CONF" "$SHIPPED"
}

# The socket is enabled and listening as documented (0660 root:lmtpgate in
# a 0755 /run/lmtpgate), the service waits for the first connection, and
# the user the service runs as and the socket's group exist.
check_installed_units() {
	expect_eq "$(ct systemctl is-enabled lmtpgate.socket)" enabled "lmtpgate.socket enabled"
	expect_eq "$(prop lmtpgate.socket ActiveState)/$(prop lmtpgate.socket SubState)" active/listening "lmtpgate.socket state"
	expect_eq "$(prop lmtpgate.socket Listen)" "/run/lmtpgate/lmtp.sock (Stream)" "lmtpgate.socket Listen"
	expect_eq "$(prop lmtpgate.socket Triggers)" lmtpgate.service "lmtpgate.socket triggers"
	expect_eq "$(ct stat -c '%F %a %U:%G' /run/lmtpgate/lmtp.sock)" "socket 660 root:lmtpgate" "the LMTP socket"
	expect_eq "$(ct stat -c %a /run/lmtpgate)" 755 "mode of /run/lmtpgate"
	expect_eq "$(prop lmtpgate.service ActiveState)" inactive "lmtpgate.service before the first connection"
	local pw
	pw=$(ct getent passwd cyrus) || fail "no user cyrus"
	expect_eq "$(echo "$pw" | cut -d: -f4)" "$(ct getent group mail | cut -d: -f3)" "primary group of cyrus (want mail)"
	ct getent group lmtpgate >/dev/null || fail "no group lmtpgate (the LMTP socket's group)"
}

# `systemd-analyze verify` finds nothing to complain about in the installed
# units and `systemd-analyze security` rates the service at most 1.5.
check_analyze() {
	local out score
	out=$(ct systemd-analyze verify --man=no lmtpgate.socket lmtpgate.service 2>&1) ||
		fail "systemd-analyze verify failed: $out"
	[ -z "$out" ] || fail "systemd-analyze verify: $out"
	out=$(ct systemd-analyze security lmtpgate.service 2>&1) || fail "systemd-analyze security failed: $out"
	score=$(echo "$out" | sed -n 's/.*Overall exposure level for lmtpgate.service: \([0-9.]*\).*/\1/p')
	[ -n "$score" ] || fail "no exposure level in: $out"
	echo "exposure $score"
	awk -v s="$score" 'BEGIN { exit !(s <= 1.5) }' || {
		echo "$out" | grep '✗'
		fail "exposure $score is above 1.5"
	}
}

# The first connection to the unix socket starts the service, which
# answers it: nothing is refused while it starts.
check_activation_unix() {
	restore_config
	ct systemctl -q stop lmtpgate.service
	local c out
	c=$(mark)
	out=$(lmtp lhlo "$UNIX_ADDR") || fail "LHLO over the unix socket: $out"
	expect_match "$out" '^S: 220 .*LMTP' "greeting"
	expect_match "$out" '^S: 221' "QUIT"
	expect_eq "$(prop lmtpgate.service ActiveState)" active "lmtpgate.service after the first connection"
	out=$(journal_since "$c" -o verbose MESSAGE="lmtpgate started")
	expect_match "$out" 'LMTPGATE_SOCKET_ACTIVATED=true' "the daemon took its socket from systemd"
}
