#!/bin/bash
# run.sh: lmtpgate under a real systemd 252 (make test-systemd).
#
# Builds the .deb from this tree twice, at the tree's version and at a
# higher one for the upgrade (as packaging/package-test.sh does), boots
# Debian 12 in systemd-nspawn with a private network (the container has
# only its own loopback, so nothing it listens on is reachable from
# outside), and checks the installed package as a black box: systemctl,
# journalctl, the lmtpgate command and LMTP on its socket, with Debian's
# Cyrus as the murder frontend and Postfix as the MTA.
#
# The Debian tree is built once with debootstrap and cached outside the
# clone (lib/tree.sh); every run boots an overlay of it, so a rerun starts
# in seconds and no run changes the cache.
#
# Output: "ok N - ..." / "not ok N - ..." per check, "# " diagnostics, and
# a final "N passed, N failed"; the exit status is non-zero if any check
# failed. Needs root, systemd-nspawn (package systemd-container),
# debootstrap and Go; `make test-systemd` installs the packages.
#
# Environment:
#   LMTPGATE_TEST_CACHE      cache directory (default /var/cache/lmtpgate-test)
#   LMTPGATE_SYSTEMD_ONLY    run only the checks whose function name matches
#                            this regular expression (the set-up always runs)
#   LMTPGATE_SYSTEMD_VERBOSE print the diagnostics of passing checks too
#   LMTPGATE_SYSTEMD_KEEP    keep the run's overlay directory afterwards
set -u

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
cd "$top" || exit 1

. "$here/lib/tap.sh"
. "$here/lib/tree.sh"
. "$here/lib/container.sh"
. "$here/lib/helpers.sh"
for f in "$here"/checks/*.sh; do
	. "$f"
done

trap ct_cleanup EXIT
trap t_abort INT TERM

preflight() {
	local missing="" tool
	[ "$(id -u)" = 0 ] || missing="root privileges"
	for tool in systemd-nspawn debootstrap nsenter mount go git; do
		command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
	done
	if [ -n "$missing" ]; then
		echo "run.sh: missing: $missing (make test-systemd installs the packages)" >&2
		exit 1
	fi
}

# build_packages: the .deb of this tree and of the same tree at a higher
# version, with packaging/build.sh as `make package` uses it.
build_packages() {
	VERSION=$(packaging/version.sh)
	# A ".1" suffix sorts after the plain version in dpkg.
	VERSION2=$VERSION.1
	local v log
	for v in "$VERSION" "$VERSION2"; do
		log=$(mktemp)
		if ! packaging/build.sh "$v" amd64 >"$log" 2>&1; then
			cat "$log"
			rm -f "$log"
			echo "run.sh: packaging/build.sh $v amd64 failed" >&2
			exit 1
		fi
		rm -f "$log"
	done
}

# prepare_container: mount an overlay of the cached tree and put in what
# the checks bring: the two packages, guest/ and a scratch directory.
prepare_container() {
	local tree
	tree=$(tree_path) || exit 1
	ct_mount "$tree" || { echo "run.sh: cannot mount an overlay of $tree" >&2; exit 1; }
	mkdir -p "$CT_ROOT/root/debs/v1" "$CT_ROOT/root/debs/v2" "$CT_ROOT$GUEST" "$CT_ROOT$WORK"
	cp "build/packages/lmtpgate_${VERSION}-1_amd64.deb" "$CT_ROOT/root/debs/v1/"
	cp "build/packages/lmtpgate_${VERSION2}-1_amd64.deb" "$CT_ROOT/root/debs/v2/"
	cp "$here"/guest/* "$CT_ROOT$GUEST/"
	echo frontend >"$CT_ROOT/etc/hostname"
}

# reboot_container: power off and boot the same overlay again. It runs in
# this shell, not in a check's subshell, because the container's PID 1
# changes.
reboot_container() {
	ct_poweroff
	ct_boot || CT_LEADER=""
}

main() {
	local t0=$SECONDS
	preflight
	build_packages
	echo "# packages $VERSION and $VERSION2 built in $((SECONDS - t0)) s"
	t0=$SECONDS
	prepare_container
	echo "# tree ready in $((SECONDS - t0)) s"
	t0=$SECONDS
	ct_boot || { echo "not ok 1 - boot Debian 12 in systemd-nspawn"; echo "0 passed, 1 failed"; exit 1; }
	echo "# booted systemd $(ct systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p') in $((SECONDS - t0)) s"

	# One line per check, in this order: later checks start from the state
	# the earlier ones leave (the package installed, the murder up). A
	# check is a function in checks/*.sh; "setup" marks those that
	# LMTPGATE_SYSTEMD_ONLY never skips.
	t "Cyrus murder up: master, backend1, Debian's cyrus-imapd as frontend" check_murder setup
	t "install: apt install ./lmtpgate_*_amd64.deb" check_install setup
	t "install: socket enabled, listening 0660 root:lmtpgate; service waits; user cyrus, group lmtpgate" check_installed_units
	t "install: systemd-analyze verify clean, security exposure <= 1.5" check_analyze
	t "socket activation over the unix socket" check_activation_unix
	t "docs: a Debian frontend before the migration: Postfix -> Cyrus's lmtpd -> backend" check_docs_frontend
	t "docs: operations.md's migration, steps 1-6, typed as written" check_docs_migration
	t "docs: operations.md's outage drill, typed as written, the master down" check_docs_drill
	t "docs: rolling the migration back as operations.md says" check_docs_rollback
	t "docs: a frontend without Cyrus: master-replica, no-master without a connection, snapshot" check_docs_replica
	t "journal: one entry per recipient, every documented LMTPGATE_* field" check_journal_fields
	t "reload: a good configuration is applied" check_reload_good
	t "reload: a broken one fails visibly and keeps the old one" check_reload_broken
	t "mode: lmtpgate mode no-master and back" check_mode_switch
	t "socket activation over the documented TCP drop-in" check_tcp_dropin
	t "start failure: logged at err with the fix, bounded by the start limit" check_start_failure
	t "watchdog: a SIGSTOPped daemon is killed and restarted" check_watchdog
	t "stop: an idle session gets 421, the stop does not wait" check_stop_idle
	t "stop: a client mid-transaction gets 421 after shutdown_timeout" check_stop_mid_transaction
	t "stop: the largest shutdown_timeout check accepts never ends in Result=timeout" check_stop_largest_timeout
	t "upgrade: local edit kept, service restarted, socket kept" check_upgrade
	reboot_container
	t "reboot: socket enabled and activating after a reboot" check_after_reboot
	t "remove: stopped, disabled, configuration kept" check_remove
	t "purge: nothing left" check_purge

	ct_poweroff
	echo "# the suite took $SECONDS s"
	t_summary
}

main "$@"
