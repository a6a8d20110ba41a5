# stop.sh: systemctl stop with sessions open.
#
# The promise (lmtpgate(8), the unit, the shipped configuration): on
# SIGTERM lmtpgate stops accepting, lets open transactions finish for up
# to shutdown_timeout, then answers 421 to whatever is left and exits,
# within the unit's TimeoutStopSec= so that systemd never has to kill it.

# expect_421 TRANSCRIPT: the held client got a 421 reply before the
# connection ended, not just a closed connection.
expect_421() {
	expect_match "$1" '^S: 421[ -]' "what the client got at the stop"
}

# An idle session (LHLO done, no transaction): the stop does not wait for
# it, the client is told 421, and systemd sees a clean stop.
check_stop_idle() {
	restore_config
	activate
	local took out
	hold idle stop-idle
	took=$(stop_service)
	out=$(end_hold stop-idle)
	echo "stop took $took s"
	expect_eq "$(prop lmtpgate.service Result)" success "Result of the stop"
	expect_421 "$out"
	# No transaction was open: nothing to wait for.
	awk -v t="$took" 'BEGIN { exit !(t < 10) }' || fail "an idle stop took $took s"
}

# A client that stopped in the middle of DATA: after shutdown_timeout (5 s
# here) it is answered 421, and the stop is clean.
check_stop_mid_transaction() {
	restore_config
	use_config 's/^shutdown_timeout: .*/shutdown_timeout: 5s/'
	ct systemctl -q stop lmtpgate.service
	activate
	local took out
	hold data stop-data
	took=$(stop_service)
	out=$(end_hold stop-data)
	echo "stop took $took s (shutdown_timeout 5s, TimeoutStopSec=$(prop lmtpgate.service TimeoutStopUSec))"
	expect_eq "$(prop lmtpgate.service Result)" success "Result of the stop"
	expect_421 "$out"
}

# largest_shutdown_timeout: the largest shutdown_timeout, in whole seconds
# up to a day, that `lmtpgate check` accepts in the shipped configuration.
largest_shutdown_timeout() {
	local lo=1 hi=86400 mid probe=$WORK/probe.yaml
	accepts() {
		sed -e "s/^shutdown_timeout: .*/shutdown_timeout: ${1}s/" "$CT_ROOT$SHIPPED" >"$CT_ROOT$probe"
		ct lmtpgate check -c "$probe" >/dev/null 2>&1
	}
	accepts "$lo" || fail "lmtpgate check rejects shutdown_timeout: 1s"
	if accepts "$hi"; then
		echo "$hi"
		return 0
	fi
	while [ $((hi - lo)) -gt 1 ]; do
		mid=$(((lo + hi) / 2))
		if accepts "$mid"; then lo=$mid; else hi=$mid; fi
	done
	echo "$lo"
}

# With the largest shutdown_timeout that `lmtpgate check` accepts and a
# transaction that never finishes, the stop still ends before systemd's
# TimeoutStopSec= (never Result=timeout) and the client gets 421.
check_stop_largest_timeout() {
	restore_config
	local max took out
	max=$(largest_shutdown_timeout)
	echo "lmtpgate check accepts shutdown_timeout up to ${max}s; TimeoutStopSec=$(prop lmtpgate.service TimeoutStopUSec)"
	use_config "s/^shutdown_timeout: .*/shutdown_timeout: ${max}s/"
	ct systemctl -q stop lmtpgate.service
	activate
	hold data stop-max
	took=$(stop_service) || true
	out=$(end_hold stop-max)
	echo "stop took $took s"
	expect_eq "$(prop lmtpgate.service Result)" success "Result of the stop"
	expect_421 "$out"
}
