#!/bin/bash
# lmtp-client.sh: a scripted LMTP client for the real-systemd checks. It
# runs inside the container and talks to lmtpgate through socat, so it
# sees exactly what an MTA would.
#
#   lmtp-client.sh lhlo ADDR               greeting, LHLO, QUIT
#   lmtp-client.sh send ADDR FROM RCPT...  one message to the recipients
#   lmtp-client.sh hold-idle ADDR READY    LHLO, then wait for the server
#   lmtp-client.sh hold-data ADDR READY    LHLO, MAIL, RCPT, DATA and half a
#                                          message, then wait for the server
#
# ADDR is a socat address: UNIX-CONNECT:/run/lmtpgate/lmtp.sock or
# TCP:127.0.0.1:2003. The transcript goes to stdout, "C: " before what the
# client sent and "S: " before what the server answered. hold-* create the
# file READY once the session is in place and then print whatever the
# server sends until it closes the connection (then "S: <EOF>"); they give
# up after $HOLD_MAX seconds (default 300).
#
# SUBJECT in the environment sets the test message's subject.
set -u

die() { echo "lmtp-client: $*" >&2; exit 2; }

# The last line of a reply: the code and a space, or the code alone.
LAST_LINE='^([0-9]{3})( |$)'


# open ADDR: start socat as a coprocess; fd IN reads from the server, OUT
# writes to it.
open_conn() {
	coproc LMTP { exec socat -t 2 - "$1" 2>/dev/null; }
	exec {IN}<&"${LMTP[0]}" {OUT}>&"${LMTP[1]}"
}

say() {
	echo "C: $1"
	printf '%s\r\n' "$1" >&"$OUT"
}

# reply: read one (possibly multi-line) reply; its code goes to CODE.
# Returns 1 on end of file or after 60 s without a complete reply.
reply() {
	local line
	CODE=""
	while IFS= read -r -t 60 line <&"$IN"; do
		line=${line%$'\r'}
		echo "S: $line"
		if [[ $line =~ $LAST_LINE ]]; then
			CODE=${BASH_REMATCH[1]}
			return 0
		fi
	done
	echo "S: <EOF>"
	return 1
}

expect() {
	reply || die "connection ended, wanted $1"
	[[ $CODE == "$1" ]] || die "got $CODE, wanted $1"
}

# drain: print what the server sends until it closes the connection.
drain() {
	local line
	while IFS= read -r -t "${HOLD_MAX:-300}" line <&"$IN"; do
		echo "S: ${line%$'\r'}"
	done
	echo "S: <EOF>"
}

message() {
	local id
	id="<$(date +%s%N).$$@lmtpgate.test>"
	printf 'From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: %s\r\nDate: %s\r\n\r\n' \
		"$1" "$2" "${SUBJECT:-lmtpgate systemd test}" "$id" "$(date -R)"
	printf 'A test message from the real-systemd suite.\r\n'
}

cmd_lhlo() {
	open_conn "$1"
	expect 220
	say "LHLO client.test"
	expect 250
	say "QUIT"
	expect 221
}

cmd_send() {
	local addr=$1 from=$2
	shift 2
	open_conn "$addr"
	expect 220
	say "LHLO client.test"
	expect 250
	say "MAIL FROM:<$from>"
	expect 250
	local r accepted=0
	for r in "$@"; do
		say "RCPT TO:<$r>"
		reply || die "connection ended after RCPT"
		[[ $CODE == 2* ]] && accepted=$((accepted + 1))
	done
	if [ "$accepted" -gt 0 ]; then
		say "DATA"
		expect 354
		message "$from" "$1" | while IFS= read -r l; do echo "C: ${l%$'\r'}"; done
		message "$from" "$1" >&"$OUT"
		say "."
		# LMTP: one reply per accepted recipient (RFC 2033 4.2).
		local i
		for i in $(seq 1 "$accepted"); do
			reply || die "connection ended before every recipient's reply"
		done
	fi
	say "QUIT"
	reply || true
}

cmd_hold_idle() {
	open_conn "$1"
	expect 220
	say "LHLO client.test"
	expect 250
	touch "$2"
	drain
}

cmd_hold_data() {
	open_conn "$1"
	expect 220
	say "LHLO client.test"
	expect 250
	say "MAIL FROM:<sender@example.org>"
	expect 250
	say "RCPT TO:<alice@example.org>"
	expect 250
	say "DATA"
	expect 354
	say "Subject: a transaction left open"
	say ""
	say "The client stops here, before the final dot."
	touch "$2"
	drain
}

[ $# -ge 2 ] || die "usage: lmtp-client.sh lhlo|send|hold-idle|hold-data ADDR ..."
case "$1" in
lhlo) cmd_lhlo "$2" ;;
send) [ $# -ge 4 ] || die "send ADDR FROM RCPT..."; shift; cmd_send "$@" ;;
hold-idle) [ $# -eq 3 ] || die "hold-idle ADDR READY"; cmd_hold_idle "$2" "$3" ;;
hold-data) [ $# -eq 3 ] || die "hold-data ADDR READY"; cmd_hold_data "$2" "$3" ;;
*) die "unknown command $1" ;;
esac
