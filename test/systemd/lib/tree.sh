# tree.sh: the cached Debian 12 tree the container boots.
#
# debootstrap takes one to two and a half minutes and the package installs
# as long again, so the tree is built once and kept outside the clone, under
# $LMTPGATE_TEST_CACHE (default /var/cache/lmtpgate-test). Its name carries
# a hash of everything that goes into it (suite, mirror, apt sources,
# package lists, this recipe's version), so changing any of them builds a
# new tree and a rerun with the same inputs reuses the old one. Each run
# boots an overlay of it (container.sh), so no run changes the cache.

TREE_RECIPE=1
TREE_SUITE=bookworm
# What debootstrap installs: enough to boot systemd with journald and dbus.
TREE_BASE_PKGS="systemd systemd-sysv dbus"
# What the checks need inside the container: Debian's Cyrus as a murder
# frontend (and, from directories, the backend and master), Postfix as the
# MTA, and small clients for LMTP and IMAP.
TREE_PKGS="cyrus-imapd cyrus-murder cyrus-clients cyrus-admin sasl2-bin postfix \
adduser netcat-openbsd socat swaks procps iproute2"

CACHE_ROOT=${LMTPGATE_TEST_CACHE:-/var/cache/lmtpgate-test}/systemd-suite

# tree_mirror prints the first Debian mirror named by this machine's apt
# sources (deb822 "URIs:" lines), the one debootstrap fetches from.
tree_mirror() {
	local f uri
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' "$f" | grep -v security | head -n1)
		if [ -n "$uri" ]; then
			echo "$uri"
			return 0
		fi
	done
	return 1
}

# tree_key prints the cache key: a hash of every input of the tree.
tree_key() {
	{
		echo "recipe $TREE_RECIPE suite $TREE_SUITE mirror $1"
		echo "base $TREE_BASE_PKGS"
		echo "pkgs $TREE_PKGS"
		cat /etc/apt/sources.list.d/*.sources 2>/dev/null
	} | sha256sum | cut -c1-16
}

# tree_path prints the path of the cached tree, building it first if it is
# not there. Progress goes to stderr.
tree_path() {
	local mirror key tree
	mirror=$(tree_mirror) || { echo "tree: no URIs: in /etc/apt/sources.list.d/*.sources" >&2; return 1; }
	key=$(tree_key "$mirror")
	tree=$CACHE_ROOT/tree-$key
	if [ ! -f "$tree/.complete" ]; then
		tree_build "$mirror" "$tree" >&2 || return 1
	fi
	echo "$tree"
}

# tree_build makes the tree in a scratch directory next to its final place
# and renames it only when complete, so an interrupted build never leaves a
# half tree that a later run would take for a good one.
tree_build() {
	local mirror=$1 tree=$2 tmp rc=0
	tmp=$tree.build.$$
	mkdir -p "$CACHE_ROOT"
	rm -rf "$tmp"
	echo "tree: building $tree from $mirror (a few minutes; cached afterwards)"
	local t0=$SECONDS
	if ! debootstrap --variant=minbase --include="${TREE_BASE_PKGS// /,}" \
		"$TREE_SUITE" "$tmp" "$mirror" >"$tmp.log" 2>&1; then
		tail -n 30 "$tmp.log"
		echo "tree: debootstrap failed (log: $tmp.log)"
		rm -rf "$tmp"
		return 1
	fi
	echo "tree: debootstrap done in $((SECONDS - t0)) s"
	tree_install "$tmp" >>"$tmp.log" 2>&1 || rc=$?
	tree_unmount "$tmp"
	if [ $rc -ne 0 ]; then
		tail -n 30 "$tmp.log"
		echo "tree: package install failed (log: $tmp.log)"
		rm -rf "$tmp"
		return 1
	fi
	touch "$tmp/.complete"
	# Older trees (other keys) are of no further use.
	local old
	for old in "$CACHE_ROOT"/tree-*; do
		case "$old" in "$tree" | "$tree".* | "$tmp" | "$tmp".*) continue ;; esac
		rm -rf "$old"
	done
	rm -rf "$tree"
	mv "$tmp" "$tree"
	mv "$tmp.log" "$tree.log"
	echo "tree: ready in $((SECONDS - t0)) s"
}

# tree_install installs TREE_PKGS with the machine's own apt sources
# (updates and security included), with a policy-rc.d that keeps every
# daemon from starting in the chroot; it is removed again so that packages
# installed in the booted container start their services as on a real
# host.
tree_install() {
	local t=$1
	cp /etc/apt/sources.list.d/*.sources "$t/etc/apt/sources.list.d/"
	rm -f "$t/etc/apt/sources.list"
	cp /etc/resolv.conf "$t/etc/resolv.conf"
	printf '#!/bin/sh\nexit 101\n' >"$t/usr/sbin/policy-rc.d"
	chmod 0755 "$t/usr/sbin/policy-rc.d"
	mount -t proc proc "$t/proc"
	mount --rbind /dev "$t/dev"
	mount --make-rslave "$t/dev"
	chroot "$t" apt-get update -qq || return 1
	# shellcheck disable=SC2086
	chroot "$t" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends $TREE_PKGS || return 1
	chroot "$t" apt-get clean
	rm -f "$t/usr/sbin/policy-rc.d" "$t/etc/resolv.conf"
	# No root password, no getty: the container is driven with nsenter.
	# A fixed machine-id would be shared by every run; let systemd make
	# one at each boot instead.
	: >"$t/etc/machine-id"
}

tree_unmount() {
	local t=$1
	if mountpoint -q "$t/dev"; then umount -R "$t/dev" || umount -lR "$t/dev"; fi
	if mountpoint -q "$t/proc"; then umount "$t/proc" || umount -l "$t/proc"; fi
}
