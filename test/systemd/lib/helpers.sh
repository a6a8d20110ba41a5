# helpers.sh: what the checks share: talking LMTP, reading unit state and
# the journal, swapping configurations in and out.

GUEST=/usr/local/lib/lmtpgate-test   # guest/ inside the container
WORK=/root/lmtpgate-test             # the checks' scratch files inside it
CONF=/etc/lmtpgate/lmtpgate.yaml
SHIPPED=$WORK/lmtpgate.yaml.shipped  # the configuration as installed
UNIX_ADDR=UNIX-CONNECT:/run/lmtpgate/lmtp.sock

# lmtp ARGS...: guest/lmtp-client.sh inside the container.
lmtp() { ct /bin/bash "$GUEST/lmtp-client.sh" "$@"; }

# murder ARGS...: guest/murder.sh inside the container.
murder() { ct /bin/bash "$GUEST/murder.sh" "$@"; }

# prop UNIT PROPERTY: one property of a unit, as systemctl show prints it.
prop() { ct systemctl show -p "$2" --value "$1"; }

# activate: make sure lmtpgate.service runs, the way the MTA does it: by
# connecting to the socket.
activate() {
	if [ "$(prop lmtpgate.service ActiveState)" != active ]; then
		lmtp lhlo "$UNIX_ADDR" >/dev/null || fail "no LMTP greeting on /run/lmtpgate/lmtp.sock"
		wait_for 30 "lmtpgate.service to be active" is_active lmtpgate.service
	fi
}

is_active() { [ "$(prop "$1" ActiveState)" = active ]; }

main_pid() { prop lmtpgate.service MainPID; }

# mark: the time now, to the microsecond, in the form journalctl --since
# takes ("@SECONDS.FRACTION"). (journalctl 252 with --after-cursor and a
# match on an LMTPGATE_* field finds nothing, so checks look at the journal
# since a point in time instead of a cursor.)
mark() { ct date +@%s.%N; }

# journal ARGS...: journalctl ARGS. journald takes log messages in
# asynchronously; --sync first makes sure that everything logged before
# this call is in.
journal() {
	ct journalctl --sync
	ct journalctl --no-pager -q "$@"
}

# journal_since MARK ARGS...: the journal of lmtpgate.service since MARK.
journal_since() {
	local since=$1
	shift
	journal -u lmtpgate.service --since="$since" "$@"
}

# use_config SED-SCRIPT: install the shipped configuration edited by
# SED-SCRIPT; the check's exit puts the shipped one back (restore_config).
use_config() {
	trap restore_config EXIT
	# Written in place, so the file keeps the package's owner and mode.
	sed -e "$1" "$CT_ROOT$SHIPPED" >"$CT_ROOT$CONF"
}

# restore_config puts the shipped configuration back and leaves the units
# as a fresh install has them: socket listening, nothing failed. The service
# is stopped if it ran with another configuration.
restore_config() {
	if ! ct cmp -s "$SHIPPED" "$CONF"; then
		ct cp "$SHIPPED" "$CONF"
		ct systemctl -q stop lmtpgate.service 2>/dev/null || true
	fi
	ct systemctl reset-failed lmtpgate.service lmtpgate.socket 2>/dev/null || true
	ct systemctl start lmtpgate.socket || true
}

# hold MODE NAME: start guest/lmtp-client.sh hold-MODE in the background
# and wait until its session is in place. Its transcript is
# $WORK/NAME.out; end_hold NAME waits for it to end.
hold() {
	local mode=$1 name=$2
	ct rm -f "$WORK/$name.ready" "$WORK/$name.out"
	ct_sh "HOLD_MAX=300 /bin/bash $GUEST/lmtp-client.sh hold-$mode $UNIX_ADDR $WORK/$name.ready >$WORK/$name.out 2>&1" &
	HOLD_PID=$!
	wait_for 30 "the $mode client's session" ct test -e "$WORK/$name.ready"
}

# end_hold NAME: wait (at most 60 s) for the held client to see the end of
# its session and print its transcript.
end_hold() {
	local i
	for i in $(seq 1 300); do
		kill -0 "$HOLD_PID" 2>/dev/null || break
		sleep 0.2
	done
	wait "$HOLD_PID" 2>/dev/null || true
	ct cat "$WORK/$1.out"
}

# stop_service: systemctl stop lmtpgate.service; prints how many seconds
# it took.
stop_service() {
	local t0 t1
	t0=$(date +%s.%N)
	ct systemctl -q stop lmtpgate.service
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", b - a }'
}
