# start.sh: a start that fails on the configuration.

# A broken configuration: the reason is logged at priority err or worse
# with the key and what it wants, and the restarts end: the start limit
# leaves the service failed after a few tries instead of restarting it
# every RestartSec= for ever. The socket goes down with it
# (service-start-limit-hit); docs/operations.md tells how to bring both
# back once the file is fixed, and the check does exactly that.
check_start_failure() {
	restore_config
	ct systemctl -q stop lmtpgate.service
	ct systemctl reset-failed lmtpgate.service lmtpgate.socket
	local c burst restarts out
	burst=$(prop lmtpgate.service StartLimitBurst)
	echo "StartLimitIntervalUSec=$(prop lmtpgate.service StartLimitIntervalUSec) StartLimitBurst=$burst RestartUSec=$(prop lmtpgate.service RestartUSec)"
	c=$(mark)
	use_config 's/^mode: master$/mode: nomaster/'
	if ct systemctl start lmtpgate.service 2>/dev/null; then
		fail "lmtpgate.service started with a broken configuration"
	fi
	# A guard against hangs only: a start limit is reached within a
	# minute or two, a restart loop never.
	if ! wait_for 120 "lmtpgate.service to end up failed" is_failed; then
		echo "NRestarts=$(prop lmtpgate.service NRestarts) ActiveState=$(prop lmtpgate.service ActiveState)"
		return 1
	fi
	restarts=$(prop lmtpgate.service NRestarts)
	echo "failed after $restarts restarts; lmtpgate.socket: $(prop lmtpgate.socket ActiveState) ($(prop lmtpgate.socket Result))," \
		"/run/lmtpgate/lmtp.sock: $(ct stat -c %F /run/lmtpgate/lmtp.sock 2>&1)"
	[ "$restarts" -ge 1 ] || fail "no restart at all: NRestarts=$restarts"
	# NRestarts counts the restart that the start limit refused.
	[ "$restarts" -le "$burst" ] || fail "NRestarts=$restarts, more than StartLimitBurst=$burst"
	# It stays failed: no restart is pending.
	sleep 5
	expect_eq "$(prop lmtpgate.service ActiveState)/$(prop lmtpgate.service NRestarts)" "failed/$restarts" "lmtpgate.service 5 s later"
	out=$(journal_since "$c" -p err -o cat)
	expect_match "$out" 'mode: "nomaster" is not a mode \(want master or no-master\)' "journalctl -u lmtpgate -p err"

	# The fix, then what docs/operations.md says to do.
	ct grep -qF 'systemctl reset-failed lmtpgate.service lmtpgate.socket' /usr/share/doc/lmtpgate/operations.md ||
		fail "operations.md does not say how to recover from a start limit"
	ct cp "$SHIPPED" "$CONF"
	ct systemctl reset-failed lmtpgate.service lmtpgate.socket
	ct systemctl start lmtpgate.socket
	out=$(lmtp lhlo "$UNIX_ADDR") || fail "no LMTP after the recovery: $out"
}

is_failed() { [ "$(prop lmtpgate.service ActiveState)" = failed ]; }
