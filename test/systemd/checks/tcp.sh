# tcp.sh: LMTP over TCP through the drop-in the docs describe.

# The drop-in of docs/operations.md and the comment in lmtpgate.socket,
# made with `systemctl edit lmtpgate.socket` (driven through script(1),
# since systemctl edits only on a terminal) and applied with the command
# they give: lmtpgate then answers on 127.0.0.1:2003 and still on the unix
# socket.
check_tcp_dropin() {
	restore_config
	activate
	local unit=/lib/systemd/system/lmtpgate.socket ops=/usr/share/doc/lmtpgate/operations.md f out
	for f in "$unit" "$ops"; do
		ct grep -qF 'ListenStream=127.0.0.1:2003' "$f" || fail "$f does not show ListenStream=127.0.0.1:2003"
		ct grep -qF 'systemctl edit lmtpgate.socket' "$f" || fail "$f does not say systemctl edit lmtpgate.socket"
		ct grep -qF 'systemctl restart lmtpgate.socket' "$f" || fail "$f does not say systemctl restart lmtpgate.socket"
	done
	trap 'ct systemctl revert lmtpgate.socket >/dev/null 2>&1; restore_config' EXIT
	printf '[Socket]\nListenStream=127.0.0.1:2003\n' >"$CT_ROOT$WORK/tcp-dropin.conf"
	ct script -qec "SYSTEMD_EDITOR='cp $WORK/tcp-dropin.conf' systemctl edit lmtpgate.socket" /dev/null >/dev/null
	local c
	c=$(mark)
	ct systemctl restart lmtpgate.socket
	expect_eq "$(prop lmtpgate.socket Listen | tr '\n' ' ')" "/run/lmtpgate/lmtp.sock (Stream) 127.0.0.1:2003 (Stream) " "lmtpgate.socket Listen"
	out=$(lmtp lhlo TCP:127.0.0.1:2003) || fail "LHLO over TCP: $out"
	expect_match "$out" '^S: 220 .*LMTP' "greeting on 127.0.0.1:2003"
	out=$(lmtp lhlo "$UNIX_ADDR") || fail "LHLO over the unix socket: $out"
	out=$(journal_since "$c" -o verbose MESSAGE="lmtpgate started")
	expect_match "$out" 'LMTPGATE_LISTEN=.*tcp:127\.0\.0\.1:2003' "the running daemon's listeners"
	expect_match "$out" 'LMTPGATE_LISTEN=.*unix:/run/lmtpgate/lmtp\.sock' "the running daemon's listeners"
	ct systemctl revert lmtpgate.socket >/dev/null
	ct systemctl restart lmtpgate.socket
	trap restore_config EXIT
	expect_eq "$(prop lmtpgate.socket Listen)" "/run/lmtpgate/lmtp.sock (Stream)" "lmtpgate.socket Listen after systemctl revert"
}
