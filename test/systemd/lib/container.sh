# container.sh: boot the cached tree in systemd-nspawn and run commands in it.
#
# Each run mounts an overlay (the cached tree read-only below, a scratch
# directory above), so the container may install, purge and reboot without
# touching the cache. --private-network gives the container nothing but
# its own loopback: whatever it listens on stays inside. The container is
# not registered with a host systemd (--register=no --keep-unit), because
# the machines this runs on need not have one.

CT_NAME=${CT_NAME:-lmtpgate-systemd-$$}
CT_RUN=""         # scratch directory of this run (upper, work, root)
CT_ROOT=""        # the overlay: the container's root directory, seen from the host
CT_NSPAWN_PID=""  # the systemd-nspawn process this run started
CT_LEADER=""      # the container's PID 1, as the host sees it

# ct_gc removes the scratch directories of earlier runs that were killed
# before their trap could run, once they are an hour old and unmounted.
ct_gc() {
	local d
	for d in "$CACHE_ROOT"/run.*; do
		[ -d "$d" ] || continue
		mountpoint -q "$d/root" && continue
		[ -n "$(find "$d" -maxdepth 0 -mmin +60)" ] || continue
		rm -rf "$d"
	done
}

# ct_mount TREE: mount an overlay of TREE for this run.
ct_mount() {
	local tree=$1
	ct_gc
	CT_RUN=$(mktemp -d "$CACHE_ROOT/run.XXXXXX")
	mkdir -p "$CT_RUN/upper" "$CT_RUN/work" "$CT_RUN/root"
	mount -t overlay overlay -o "lowerdir=$tree,upperdir=$CT_RUN/upper,workdir=$CT_RUN/work" "$CT_RUN/root" || return 1
	CT_ROOT=$CT_RUN/root
}

# ct_boot: boot the overlay and wait until systemd has finished starting
# up. Fails (and leaves nothing running) if it does not come up.
ct_boot() {
	# setsid: a Ctrl-C on the terminal goes to this script, whose trap
	# powers the container off, not straight to nspawn.
	setsid systemd-nspawn -q -b -D "$CT_ROOT" -M "$CT_NAME" --private-network \
		--register=no --keep-unit --link-journal=no --console=passive \
		</dev/null >>"$CT_RUN/nspawn.log" 2>&1 &
	CT_NSPAWN_PID=$!
	local i pid
	CT_LEADER=""
	for i in $(seq 1 600); do
		# nspawn forks a short-lived helper before the container's PID 1,
		# so look at its children until one is systemd with its private
		# bus socket up.
		for pid in $(pgrep -P "$CT_NSPAWN_PID"); do
			if [ -S "/proc/$pid/root/run/systemd/private" ]; then
				CT_LEADER=$pid
			fi
		done
		[ -n "$CT_LEADER" ] && break
		if ! kill -0 "$CT_NSPAWN_PID" 2>/dev/null; then
			echo "# systemd-nspawn exited during boot:"
			sed 's/^/#   /' "$CT_RUN/nspawn.log"
			CT_NSPAWN_PID=""
			return 1
		fi
		sleep 0.1
	done
	if [ -z "$CT_LEADER" ]; then
		echo "# the container did not come up within 60 s; systemd-nspawn said:"
		tail -n 30 "$CT_RUN/nspawn.log" | sed 's/^/#   /'
		ct_poweroff
		return 1
	fi
	# "degraded" (some unit failed) is not a boot failure; the checks
	# say what they need.
	local state
	state=$(timeout 60 nsenter -t "$CT_LEADER" -m -u -i -n -p -C -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		systemctl is-system-running --wait 2>&1)
	case "$state" in
	running | degraded) return 0 ;;
	esac
	echo "# the container's systemd did not finish starting: $state"
	ct systemctl list-jobs --no-pager 2>&1 | sed 's/^/#   /'
	return 1
}

# ct CMD...: run CMD inside the container, as root, with a clean
# environment, in all of the container's namespaces.
ct() {
	nsenter -t "$CT_LEADER" -m -u -i -n -p -C -- \
		env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8 \
		SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 "$@"
}

# ct_sh SCRIPT: run a shell snippet inside the container.
ct_sh() { ct /bin/bash -c "$1"; }

# ct_poweroff: shut the container down cleanly, or kill the nspawn process
# this run started if it does not stop within 60 s.
ct_poweroff() {
	[ -n "$CT_NSPAWN_PID" ] || return 0
	if kill -0 "$CT_NSPAWN_PID" 2>/dev/null; then
		if [ -n "$CT_LEADER" ] && [ -S "/proc/$CT_LEADER/root/run/systemd/private" ]; then
			ct systemctl poweroff --no-block >/dev/null 2>&1 || true
		else
			# nspawn turns SIGTERM into a poweroff request for the
			# container's systemd.
			kill -TERM "$CT_NSPAWN_PID" 2>/dev/null || true
		fi
	fi
	local i
	for i in $(seq 1 600); do
		kill -0 "$CT_NSPAWN_PID" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$CT_NSPAWN_PID" 2>/dev/null; then
		echo "# the container did not power off; killing systemd-nspawn $CT_NSPAWN_PID"
		kill -KILL "$CT_NSPAWN_PID" 2>/dev/null || true
	fi
	wait "$CT_NSPAWN_PID" 2>/dev/null || true
	CT_NSPAWN_PID="" CT_LEADER=""
}

# ct_cleanup: power off, unmount the overlay, delete the run's scratch
# directory. Safe to call more than once and after a partial start.
ct_cleanup() {
	ct_poweroff
	# systemd-nspawn removes its propagation directory when it exits, but
	# not when it was killed; remove this run's (empty) one.
	rmdir "/run/systemd/nspawn/propagate/$CT_NAME" 2>/dev/null || true
	if [ -n "$CT_RUN" ]; then
		if mountpoint -q "$CT_RUN/root"; then
			umount "$CT_RUN/root" || umount -l "$CT_RUN/root"
		fi
		if [ -n "${LMTPGATE_SYSTEMD_KEEP:-}" ]; then
			echo "# kept $CT_RUN (LMTPGATE_SYSTEMD_KEEP)"
		else
			rm -rf "$CT_RUN"
		fi
		CT_RUN="" CT_ROOT=""
	fi
}
