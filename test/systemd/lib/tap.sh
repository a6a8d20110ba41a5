# tap.sh: TAP-like reporting. Each check is a shell function run in a
# subshell with `set -e`, so the first failing command or assertion ends
# it; what it printed becomes "# " diagnostics under its result line.

T_N=0
T_PASSED=0
T_FAILED=0
T_FAILED_NAMES=()
T_CHECK_PID=""

# t_abort ends the check in progress (by its PID) when the script is
# interrupted; the EXIT trap then powers the container off.
t_abort() {
	if [ -n "$T_CHECK_PID" ]; then
		kill -TERM "$T_CHECK_PID" 2>/dev/null || true
	fi
	echo "# interrupted"
	exit 130
}

# t DESCRIPTION FUNCTION: run one check and report it.
t() {
	local desc=$1 fn=$2 out rc t0=$SECONDS
	T_N=$((T_N + 1))
	if [ -n "${LMTPGATE_SYSTEMD_ONLY:-}" ] && ! [[ $fn =~ $LMTPGATE_SYSTEMD_ONLY ]] && [ "${3:-}" != setup ]; then
		echo "ok $T_N - $desc # SKIP (LMTPGATE_SYSTEMD_ONLY)"
		return 0
	fi
	out=$(mktemp)
	# In the background and waited for, so that a signal to this script
	# is handled at once (t_abort) rather than after the check.
	(
		set -e
		"$fn"
	) >"$out" 2>&1 &
	T_CHECK_PID=$!
	wait "$T_CHECK_PID"
	rc=$?
	T_CHECK_PID=""
	if [ $rc -eq 0 ]; then
		T_PASSED=$((T_PASSED + 1))
		echo "ok $T_N - $desc ($((SECONDS - t0)) s)"
		if [ -n "${LMTPGATE_SYSTEMD_VERBOSE:-}" ]; then sed 's/^/# /' "$out"; fi
	else
		T_FAILED=$((T_FAILED + 1))
		T_FAILED_NAMES+=("$T_N $fn")
		echo "not ok $T_N - $desc ($((SECONDS - t0)) s)"
		sed 's/^/# /' "$out"
		t_explain
	fi
	rm -f "$out"
	return 0
}

# t_explain prints what usually explains a failure: lmtpgate's units and
# the last lines of their journal.
t_explain() {
	[ -n "$CT_LEADER" ] || { echo "#   (the container is not running)"; return 0; }
	echo "#   --- systemctl status lmtpgate.socket lmtpgate.service"
	ct systemctl status --no-pager -n 0 lmtpgate.socket lmtpgate.service 2>&1 | sed 's/^/#   /' | head -n 20
	echo "#   --- journalctl -u lmtpgate.service -u lmtpgate.socket -n 25"
	ct journalctl --no-pager -o short-precise -n 25 -u lmtpgate.service -u lmtpgate.socket 2>&1 | sed 's/^/#   /'
}

# t_summary prints the totals and returns non-zero if anything failed.
t_summary() {
	echo "1..$T_N"
	if [ $T_FAILED -gt 0 ]; then
		echo "# failed: ${T_FAILED_NAMES[*]}"
	fi
	echo "$T_PASSED passed, $T_FAILED failed"
	[ $T_FAILED -eq 0 ]
}

# fail MESSAGE: end the current check with MESSAGE. Messages go to stderr,
# so that they reach the report from inside a command substitution too.
fail() {
	echo "$*" >&2
	return 1
}

# expect_eq GOT WANT WHAT: fail unless GOT equals WANT.
expect_eq() {
	[ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"
}

# expect_match TEXT REGEX WHAT: fail unless TEXT matches the extended
# regular expression REGEX (grep -E, any line).
expect_match() {
	printf '%s\n' "$1" | grep -Eq -- "$2" && return 0
	{
		echo "$3: no line matches /$2/ in:"
		printf '%s\n' "$1" | sed 's/^/  /' | head -n 40
	} >&2
	return 1
}

# expect_no_match TEXT REGEX WHAT: fail if any line of TEXT matches REGEX.
expect_no_match() {
	printf '%s\n' "$1" | grep -Eq -- "$2" || return 0
	{
		echo "$3: a line matches /$2/:"
		printf '%s\n' "$1" | grep -E -- "$2" | sed 's/^/  /' | head -n 20
	} >&2
	return 1
}

# wait_for SECONDS WHAT CMD...: poll CMD every 0.2 s until it succeeds;
# fail after SECONDS. Only a guard against hangs: no check depends on how
# fast something happens unless it says so.
wait_for() {
	local max=$1 what=$2 deadline
	shift 2
	deadline=$((SECONDS + max))
	while ! "$@" >/dev/null 2>&1; do
		if [ $SECONDS -ge $deadline ]; then
			fail "timed out after $max s waiting for $what"
			return 1
		fi
		sleep 0.2
	done
}
