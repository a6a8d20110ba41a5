# reload.sh: systemctl reload with a good and a broken configuration, and
# the mode switch.

# A good configuration (the shipped one with mode: no-master) is applied by
# `systemctl reload lmtpgate` without a restart.
check_reload_good() {
	restore_config
	activate
	local pid out
	pid=$(main_pid)
	use_config 's/^mode: master$/mode: no-master/'
	out=$(ct systemctl reload lmtpgate 2>&1) || fail "systemctl reload failed: $out"
	out=$(ct lmtpgate status)
	expect_match "$out" '^mode: +no-master \(from (config|/etc/lmtpgate/lmtpgate.yaml)\)' "lmtpgate status after the reload"
	expect_match "$out" '^last reload: ' "lmtpgate status"
	expect_no_match "$out" 'FAILED' "lmtpgate status"
	expect_eq "$(main_pid)" "$pid" "MainPID (a reload is no restart)"
}

# A broken configuration makes `systemctl reload` fail, at priority err in
# the journal with the reason; the daemon keeps serving with the previous
# configuration, and `lmtpgate status` shows the failure.
check_reload_broken() {
	restore_config
	activate
	use_config 's/^mode: master$/mode: no-master/'
	ct systemctl reload lmtpgate
	local pid c out
	pid=$(main_pid)
	c=$(mark)
	use_config 's/^mode: master$/mode: nomaster/'
	if out=$(ct systemctl reload lmtpgate 2>&1); then
		fail "systemctl reload accepted a broken configuration: $out"
	fi
	echo "systemctl reload: $out"
	expect_eq "$(main_pid)" "$pid" "MainPID after the rejected reload"
	out=$(ct lmtpgate status)
	expect_match "$out" '^mode: +no-master ' "mode in force after the rejected reload (the previous one)"
	expect_match "$out" '^last reload: .*FAILED: .*nomaster' "lmtpgate status"
	out=$(lmtp lhlo "$UNIX_ADDR") || fail "no LMTP after the rejected reload: $out"
	out=$(journal_since "$c" -p err -o cat)
	expect_match "$out" 'nomaster' "journalctl -u lmtpgate -p err names the bad value"
}

# `lmtpgate mode no-master` switches without editing the file, and
# `lmtpgate mode master` switches back; the override file stays until it
# is deleted (what the shipped configuration's comment says), after which
# a reload hands control back to the file.
check_mode_switch() {
	restore_config
	activate
	local out
	ct lmtpgate mode no-master
	expect_match "$(ct lmtpgate status)" '^mode: +no-master \(from /var/lib/lmtpgate/mode\)' "status after mode no-master"
	expect_eq "$(ct lmtpgate mode | head -n 1)" "no-master (from /var/lib/lmtpgate/mode)" "lmtpgate mode"
	out=$(lmtp send "$UNIX_ADDR" sender@example.org alice@example.org)
	expect_match "$out" '^S: 250 2\.1\.5 <alice@example.org> Delivered to user\.alice on ' "delivery in no-master mode"
	ct lmtpgate mode master
	expect_match "$(ct lmtpgate status)" '^mode: +master \(from /var/lib/lmtpgate/mode\)' "status after mode master"
	ct rm /var/lib/lmtpgate/mode
	ct systemctl reload lmtpgate
	out=$(ct lmtpgate status)
	expect_match "$out" '^mode: +master ' "status after deleting the override"
	expect_no_match "$out" '/var/lib/lmtpgate/mode' "status after deleting the override"
}
