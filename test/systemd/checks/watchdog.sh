# watchdog.sh: a frozen daemon is killed and replaced.

# SIGSTOP stops the daemon's main loop and so its WATCHDOG=1 pings:
# systemd must kill it (SIGABRT) and start a new one within WatchdogSec=
# plus a margin for the kill and the restart (RestartSec=, start-up).
check_watchdog() {
	restore_config
	activate
	local pid wd_usec wd restart_usec max c t0 elapsed out
	pid=$(main_pid)
	wd_usec=$(prop lmtpgate.service WatchdogUSec)
	wd=$(ct systemd-analyze timespan "$wd_usec" | sed -n 's/^ *μs: //p')
	restart_usec=$(ct systemd-analyze timespan "$(prop lmtpgate.service RestartUSec)" | sed -n 's/^ *μs: //p')
	[ "${wd:-0}" -gt 0 ] || fail "no watchdog: WatchdogUSec=$wd_usec"
	max=$(((wd + restart_usec) / 1000000 + 10))
	echo "WatchdogSec=$wd_usec RestartSec=$(prop lmtpgate.service RestartUSec); allowing $max s"
	c=$(mark)
	t0=$SECONDS
	ct kill -STOP "$pid"
	trap 'ct kill -CONT '"$pid"' 2>/dev/null || true' EXIT
	wait_for $((max + 30)) "a new lmtpgate process" new_daemon_running "$pid"
	elapsed=$((SECONDS - t0))
	echo "replaced after $elapsed s"
	[ "$elapsed" -le "$max" ] || fail "replaced after $elapsed s, more than WatchdogSec + RestartSec + 10 s = $max s"
	out=$(journal_since "$c" -o cat)
	expect_match "$out" 'Watchdog timeout' "systemd's log"
	ct test ! -e "/proc/$pid" || fail "the frozen process $pid still exists"
	out=$(lmtp lhlo "$UNIX_ADDR") || fail "no LMTP from the new daemon: $out"
	trap - EXIT
}

new_daemon_running() {
	local now
	now=$(main_pid)
	[ "$now" != 0 ] && [ "$now" != "$1" ] && is_active lmtpgate.service
}
