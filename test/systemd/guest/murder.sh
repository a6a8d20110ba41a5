#!/bin/bash
# murder.sh: a small Cyrus murder inside the test container, run as root.
#
#   murder.sh setup              write the configuration and start it all
#   murder.sh create MAILBOX...  create mailboxes on backend1 (as admin) and
#                                wait until the frontend's replica has them
#   murder.sh frontend-has MBOX  succeed if the frontend's mailboxes.db
#                                lists MBOX on backend1
#   murder.sh wait               wait until every server greets
#
# The frontend is Debian's own Cyrus (cyrus-imapd.service, /etc/imapd.conf,
# /etc/cyrus.conf, mailboxes.db in /var/lib/cyrus), changed only as a
# murder frontend needs: a mupdate replica on 127.0.0.1:3905, the master's
# address and credentials, the backends' proxy credentials. The master
# (mupdate -m) and one backend run from directories under /srv/murder as
# units of their own. Addresses are loopback aliases of the container's
# private network:
#
#   frontend  Debian's cyrus-imapd; replica 127.0.0.1:3905
#   master    murder-master.service; 127.0.0.10:3905; servername 127.0.0.10
#   backend1  murder-backend1.service; LMTP 127.0.0.2:2003 (AUTH required),
#             IMAP on a unix socket for the admin; servername 127.0.0.2
#
# Mailbox names use Debian's settings on every server (unixhierarchysep:
# no, altnamespace: no): "user.alice".
set -eu

MURDER=/srv/murder
MASTER_IP=127.0.0.10
BACKEND_IP=127.0.0.2
FRONTEND_NAME=frontend.example.org
SASLDB=/etc/sasldb2

common_conf() { # DIR SERVERNAME
	cat <<EOC
configdirectory: $1/conf
partition-default: $1/spool
servername: $2
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: $SASLDB
sasl_mech_list: PLAIN LOGIN
allowplaintext: yes
lmtpsocket: $1/run/lmtp
idlesocket: $1/run/idle
notifysocket: $1/run/notify
mboxname_lockpath: $1/run/lock
proc_path: $1/run/proc
sievedir: $1/sieve
unixhierarchysep: no
altnamespace: no
syslog_prefix: murder-${1##*/}
EOC
}

make_instance() { # NAME
	local d=$MURDER/$1 sub
	for sub in "" conf conf/db conf/socket conf/proc conf/log conf/msg conf/user \
		conf/quota conf/ptclient conf/sync conf/lock spool run sieve; do
		mkdir -p "$d/$sub"
	done
	chown -R cyrus:mail "$d"
	chmod 0750 "$d"
}

unit() { # NAME DESCRIPTION EXTRA-UNIT-LINES EXTRA-SERVICE-LINES
	cat >"/etc/systemd/system/murder-$1.service" <<EOU
[Unit]
Description=$2
$3

[Service]
$4
ExecStart=/usr/sbin/cyrmaster -C $MURDER/$1/imapd.conf -M $MURDER/$1/cyrus.conf -p $MURDER/$1/run/master.pid

[Install]
WantedBy=multi-user.target
EOU
}

setup_master() {
	make_instance master
	{
		common_conf "$MURDER/master" "$MASTER_IP"
		# The MUPDATE server lets only admins authenticate.
		echo "admins: admin mupdate"
	} >"$MURDER/master/imapd.conf"
	cat >"$MURDER/master/cyrus.conf" <<EOC
START {
}
SERVICES {
  mupdate cmd="mupdate -m -C $MURDER/master/imapd.conf" listen="$MASTER_IP:3905" prefork=1
}
EVENTS {
}
EOC
	unit master "Cyrus murder master (mupdate -m) for the lmtpgate tests" "" ""
}

setup_backend() {
	make_instance backend1
	{
		common_conf "$MURDER/backend1" "$BACKEND_IP"
		echo "admins: admin"
		echo "proxyservers: proxy"
		echo "lmtp_admins: proxy admin"
		echo "mupdate_server: $MASTER_IP:3905"
		echo "mupdate_authname: mupdate"
		echo "mupdate_password: mupdatepw"
	} >"$MURDER/backend1/imapd.conf"
	cat >"$MURDER/backend1/cyrus.conf" <<EOC
START {
  mupdatepush cmd="ctl_mboxlist -m -C $MURDER/backend1/imapd.conf"
}
SERVICES {
  imap cmd="imapd -C $MURDER/backend1/imapd.conf" listen="$MURDER/backend1/run/imap" prefork=0
  lmtp cmd="lmtpd -C $MURDER/backend1/imapd.conf" listen="$BACKEND_IP:2003" prefork=1
}
EVENTS {
}
EOC
	# The backend pushes its mailbox list to the master at start
	# (mupdatepush) and Cyrus's master exits if that fails: wait for the
	# master's port first.
	unit backend1 "Cyrus murder backend1 for the lmtpgate tests" \
		"After=murder-master.service
Wants=murder-master.service" \
		"ExecStartPre=/bin/sh -c 'for i in \$(seq 1 300); do nc -z $MASTER_IP 3905 && exit 0; sleep 0.1; done; exit 1'"
}

setup_frontend() {
	cat >>/etc/imapd.conf <<EOC

# Murder frontend (lmtpgate's real-systemd tests).
servername: $FRONTEND_NAME
# The replica, like the master, lets only admins authenticate.
admins: admin mupdate
mupdate_server: $MASTER_IP:3905
mupdate_authname: mupdate
mupdate_password: mupdatepw
mupdate_retry_delay: 2
proxy_authname: proxy
proxy_password: proxypw
serverlist: $BACKEND_IP
sasl_mech_list: PLAIN LOGIN
EOC
	# Debian's cyrus.conf names nntpd and httpd, which come with
	# cyrus-nntpd and cyrus-caldav (not installed): master refuses to
	# start with a service it cannot find. Add the mupdate replica that
	# keeps the frontend's mailboxes.db in sync with the master.
	sed -i -e 's/^\([[:space:]]*\)\(nntp\|http\)\([[:space:]]\)/\1#\2\3/' \
		-e 's/^SERVICES {$/SERVICES {\n\tmupdate\tcmd="mupdate" listen="127.0.0.1:3905" prefork=1/' \
		/etc/cyrus.conf
}

setup_sasl() {
	local realm u
	for realm in "$FRONTEND_NAME" "$MASTER_IP" "$BACKEND_IP"; do
		for u in admin proxy mupdate; do
			printf '%spw' "$u" | saslpasswd2 -p -c -f "$SASLDB" -u "$realm" "$u"
		done
	done
	# Debian's cyrus user is in group sasl, which owns the file.
	chown root:sasl "$SASLDB"
	chmod 0640 "$SASLDB"
}

# greets ADDR: succeed if a server at ADDR (socat address) sends a line.
greets() {
	timeout 3 socat -T 2 - "$1" </dev/null 2>/dev/null | head -n1 | grep -q .
}

wait_greeting() { # ADDR WHAT
	local i
	for i in $(seq 1 300); do
		greets "$1" && return 0
		sleep 0.1
	done
	echo "murder.sh: $2 ($1) does not greet" >&2
	return 1
}

cmd_setup() {
	setup_sasl
	setup_master
	setup_backend
	setup_frontend
	systemctl daemon-reload
	systemctl enable --now murder-master.service
	wait_greeting "TCP:$MASTER_IP:3905" "master mupdate"
	systemctl enable --now murder-backend1.service
	wait_backend
	systemctl restart cyrus-imapd.service
	wait_replica
}

wait_backend() {
	wait_greeting "TCP:$BACKEND_IP:2003" "backend1 lmtpd"
	wait_greeting "UNIX-CONNECT:$MURDER/backend1/run/imap" "backend1 imapd"
}

# The replica greets only after its first full sync with the master.
wait_replica() { wait_greeting "TCP:127.0.0.1:3905" "the frontend's mupdate replica"; }

cmd_wait() {
	wait_greeting "TCP:$MASTER_IP:3905" "master mupdate"
	wait_backend
	wait_replica
}

# imap_admin COMMAND...: run IMAP commands on backend1 as admin; fails
# unless every one is answered OK.
imap_admin() {
	local script n=1 c out
	script=$'a0 LOGIN admin adminpw\r\n'
	for c in "$@"; do
		script+="a$n $c"$'\r\n'
		n=$((n + 1))
	done
	script+="a$n LOGOUT"$'\r\n'
	out=$(printf '%s' "$script" | socat -t 5 - "UNIX-CONNECT:$MURDER/backend1/run/imap")
	local i
	for i in $(seq 0 $((n - 1))); do
		if ! printf '%s\n' "$out" | grep -q "^a$i OK"; then
			echo "murder.sh: IMAP a$i failed:" >&2
			printf '%s\n' "$out" >&2
			return 1
		fi
	done
}

# ctl_mboxlist -d prints one JSON object per mailbox and line.
cmd_frontend_has() {
	/usr/lib/cyrus/bin/ctl_mboxlist -d 2>/dev/null | grep -F "\"$1\": {" | grep -qF "\"server\": \"$BACKEND_IP\""
}

cmd_create() {
	local m cmds=()
	for m in "$@"; do cmds+=("CREATE $m"); done
	imap_admin "${cmds[@]}"
	for m in "$@"; do
		local i ok=""
		for i in $(seq 1 100); do
			if cmd_frontend_has "$m"; then ok=1; break; fi
			sleep 0.1
		done
		[ -n "$ok" ] || { echo "murder.sh: $m did not reach the frontend's mailboxes.db" >&2; return 1; }
	done
}

case "${1:-}" in
setup) cmd_setup ;;
create) shift; cmd_create "$@" ;;
frontend-has) cmd_frontend_has "$2" ;;
wait) cmd_wait ;;
*) echo "usage: murder.sh setup | create MAILBOX... | frontend-has MAILBOX | wait" >&2; exit 2 ;;
esac
