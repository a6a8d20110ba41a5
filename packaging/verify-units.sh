#!/bin/sh
# verify-units.sh: check lmtpgate's systemd units without a running systemd.
#
#   packaging/verify-units.sh [UNITDIR]   check the units in UNITDIR (default:
#                                         the repository's systemd/)
#   packaging/verify-units.sh --installed check the units as a package
#                                         installed them on this machine
#
# `systemd-analyze verify` refuses a unit whose ExecStart= binary is missing
# and needs the standard targets (sysinit.target, sockets.target, ...). For
# the repository's units we therefore build a throw-away root: a copy of the
# host's unit directory, our units, and /usr/sbin/lmtpgate (the binary named
# by $LMTPGATE_BIN, else a stub), and point --root= at it.
#
# Besides verify, the service must rate <= $MAX_EXPOSURE (default 2.0) in
# `systemd-analyze security --offline=true`; the score is printed.
set -eu

MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}
here=$(cd "$(dirname "$0")/.." && pwd)

command -v systemd-analyze >/dev/null 2>&1 || {
	echo "verify-units: systemd-analyze not found (apt-get install systemd)" >&2
	exit 1
}

check_score() {
	# $@: extra systemd-analyze options.
	out=$(systemd-analyze security --offline=true "$@" lmtpgate.service 2>&1) || {
		echo "$out" >&2
		echo "verify-units: systemd-analyze security failed" >&2
		exit 1
	}
	score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for lmtpgate.service: \([0-9.]*\).*/\1/p')
	if [ -z "$score" ]; then
		printf '%s\n' "$out" >&2
		echo "verify-units: no exposure score in the output" >&2
		exit 1
	fi
	echo "verify-units: lmtpgate.service exposure $score (limit $MAX_EXPOSURE)"
	if ! awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'; then
		printf '%s\n' "$out" | grep '✗' >&2 || true
		echo "verify-units: exposure $score is above $MAX_EXPOSURE" >&2
		exit 1
	fi
}

if [ "${1:-}" = "--installed" ]; then
	for u in lmtpgate.socket lmtpgate.service; do
		[ -f "/lib/systemd/system/$u" ] || [ -f "/usr/lib/systemd/system/$u" ] || {
			echo "verify-units: $u is not installed" >&2
			exit 1
		}
	done
	# The man pages are installed too, so let verify check Documentation=.
	systemd-analyze verify --man=yes lmtpgate.socket lmtpgate.service
	check_score
	echo "verify-units: installed units OK"
	exit 0
fi

unitdir=${1:-$here/systemd}
root=$(mktemp -d "${TMPDIR:-/tmp}/lmtpgate-units.XXXXXX")
trap 'rm -rf "$root"' EXIT INT TERM

mkdir -p "$root/lib/systemd/system" "$root/etc/systemd/system" "$root/usr/sbin"
for d in /lib/systemd/system /usr/lib/systemd/system; do
	[ -d "$d" ] && cp -r "$d/." "$root/lib/systemd/system/"
done
cp "$unitdir/lmtpgate.socket" "$unitdir/lmtpgate.service" "$root/lib/systemd/system/"
if [ -n "${LMTPGATE_BIN:-}" ]; then
	cp "$LMTPGATE_BIN" "$root/usr/sbin/lmtpgate"
else
	printf '#!/bin/sh\nexit 0\n' >"$root/usr/sbin/lmtpgate"
fi
chmod 0755 "$root/usr/sbin/lmtpgate"

# The man pages are checked by mandoc (packaging/package-test.sh); `man`
# cannot look into --root.
systemd-analyze verify --root="$root" --man=no lmtpgate.socket lmtpgate.service
check_score --root="$root"
echo "verify-units: units in $unitdir OK"
