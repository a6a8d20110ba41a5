#!/bin/sh
# package-test.sh: build the amd64 .deb and .rpm and check them end to end.
# Run as root on a Debian 12 machine prepared by `make deps` (Cyrus, rpm,
# lintian, mandoc, systemd). It installs, upgrades, removes and purges the
# .deb on this machine, and leaves the machine as it found it, also on
# failure.
#
#   UPDATE_GOLDEN=1 packaging/package-test.sh   rewrite the golden file lists
#   LMTPGATE_PREBUILT=/path/to/lmtpgate ...     package that binary instead
#                                               (skips the murder delivery)
set -eu

cd "$(dirname "$0")/.."
top=$(pwd)
golden=packaging/testdata
work=$(mktemp -d "${TMPDIR:-/tmp}/lmtpgate-pkgtest.XXXXXX")
created_policy=""
installed=""

fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
step() { echo "package-test: == $*"; }

cleanup() {
	rc=$?
	if [ -n "$installed" ] && dpkg-query -W lmtpgate >/dev/null 2>&1; then
		dpkg -P lmtpgate >/dev/null 2>&1 || true
	fi
	if [ -n "$created_policy" ]; then
		rm -f /usr/sbin/policy-rc.d
	fi
	rm -rf "$work"
	if [ $rc -ne 0 ]; then echo "package-test: FAILED" >&2; fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || fail "must run as root (it installs the package)"
for t in dpkg-deb rpm lintian mandoc systemd-analyze go gzip; do
	command -v "$t" >/dev/null 2>&1 || fail "$t not found (make deps)"
done
if dpkg-query -W -f '${Status}' lmtpgate 2>/dev/null | grep -q installed; then
	fail "lmtpgate is already installed here; remove it first"
fi

version=$(packaging/version.sh)
# Upgrades must go to a higher version; a ".1" suffix sorts after the plain
# version in dpkg and rpm alike.
version2="$version.1"

step "man pages"
for m in man/lmtpgate.8 man/lmtpgate.yaml.5; do
	out=$(mandoc -Tlint -W warning "$m" 2>&1) || true
	[ -z "$out" ] || fail "mandoc warnings in $m: $out"
done

step "units (repository)"
packaging/verify-units.sh

step "build $version"
packaging/build.sh "$version" amd64 >"$work/build.log" 2>&1 || { cat "$work/build.log"; fail "build"; }
deb=build/packages/lmtpgate_${version}-1_amd64.deb
rpm=build/packages/lmtpgate-${version}-1.x86_64.rpm
[ -f "$deb" ] || fail "$deb not built"
[ -f "$rpm" ] || fail "$rpm not built"

step "arm64 build"
packaging/build.sh "$version" arm64 >"$work/build-arm64.log" 2>&1 || { cat "$work/build-arm64.log"; fail "arm64 build"; }
[ -f "build/packages/lmtpgate_${version}-1_arm64.deb" ] || fail "arm64 .deb not built"
[ -f "build/packages/lmtpgate-${version}-1.aarch64.rpm" ] || fail "arm64 .rpm not built"

step "package contents"
# mode owner/group path, without sizes and dates.
dpkg-deb -c "$deb" | awk '{print $1, $2, $NF}' | sort >"$work/deb.list"
# path mode owner group config-flag (rpm --dump: path size mtime digest
# mode owner group isconfig isdoc rdev symlink).
rpm -qp --dump "$rpm" 2>/dev/null | awk '{print $1, $5, $6, $7, $8}' | sort >"$work/rpm.list"
if [ "${UPDATE_GOLDEN:-}" = 1 ]; then
	cp "$work/deb.list" "$golden/deb-contents.txt"
	cp "$work/rpm.list" "$golden/rpm-contents.txt"
fi
diff -u "$golden/deb-contents.txt" "$work/deb.list" || fail ".deb contents differ from $golden/deb-contents.txt"
diff -u "$golden/rpm-contents.txt" "$work/rpm.list" || fail ".rpm contents differ from $golden/rpm-contents.txt"
dpkg-deb -f "$deb" Version | grep -qx "${version}-1" || fail ".deb Version field"
dpkg-deb -e "$deb" "$work/control"
grep -qx /etc/lmtpgate/lmtpgate.yaml "$work/control/conffiles" || fail "lmtpgate.yaml is not a conffile"
rpm -qp --configfiles "$rpm" 2>/dev/null | grep -qx /etc/lmtpgate/lmtpgate.yaml || fail "lmtpgate.yaml is not %config in the .rpm"
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm" 2>/dev/null | grep -q '^cn /etc/lmtpgate/lmtpgate.yaml$' ||
	fail "lmtpgate.yaml is not %config(noreplace) in the .rpm"
rpm -qp --scripts "$rpm" 2>/dev/null | grep -q 'postinstall scriptlet' || fail ".rpm has no %post"

step "lintian"
lintian --tag-display-limit 0 "$deb" >"$work/lintian.out" 2>&1 || true
grep -v 'running with root privileges' "$work/lintian.out" || true
if grep -q '^E:' "$work/lintian.out"; then fail "lintian errors"; fi

step "install"
if [ ! -e /usr/sbin/policy-rc.d ]; then
	# Keep dpkg from starting services on this machine, as Debian's
	# container images do.
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod 0755 /usr/sbin/policy-rc.d
	created_policy=1
fi
installed=1
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb"
[ -x /usr/sbin/lmtpgate ] || fail "binary not installed"
getent passwd cyrus >/dev/null || fail "user cyrus missing after install"
getent group lmtpgate >/dev/null || fail "group lmtpgate (the LMTP socket's) missing after install"
for f in /etc/lmtpgate/proxy.pw /etc/lmtpgate/mupdate.pw; do
	[ "$(stat -c '%a %U:%G %s' "$f")" = "600 root:root 0" ] || fail "$f: $(stat -c '%a %U:%G %s' "$f")"
done
[ "$(stat -c '%a %U:%G' /etc/lmtpgate)" = "750 root:mail" ] || fail "/etc/lmtpgate mode"
[ -L /etc/systemd/system/sockets.target.wants/lmtpgate.socket ] || fail "lmtpgate.socket not enabled"

step "units (installed)"
packaging/verify-units.sh --installed

step "lmtpgate check on the shipped configuration says what is missing"
# A fresh install has no proxy password yet and, with Cyrus not running,
# no readable mailboxes.db: check must fail naming both, and pass once
# they are there.
if /usr/sbin/lmtpgate check -c /etc/lmtpgate/lmtpgate.yaml >"$work/check.out" 2>&1; then
	cat "$work/check.out"
	fail "lmtpgate check passes a configuration that cannot deliver"
fi
cat "$work/check.out"
grep -q 'backends.password: empty' "$work/check.out" || fail "check does not name the empty backend password"
printf 'secret\n' >/etc/lmtpgate/proxy.pw
if [ -r /var/lib/cyrus/mailboxes.db ]; then
	/usr/sbin/lmtpgate check -c /etc/lmtpgate/lmtpgate.yaml || fail "lmtpgate check rejects the shipped config with a password"
fi
: >/etc/lmtpgate/proxy.pw

step "lmtpgate check on a host without Cyrus says what to do"
# No /etc/imapd.conf there: the same file with imapd_conf pointing nowhere.
sed "s|^imapd_conf: /etc/imapd.conf\$|imapd_conf: $work/no-such/imapd.conf|" \
	/etc/lmtpgate/lmtpgate.yaml >"$work/nocyrus.yaml"
if /usr/sbin/lmtpgate check -c "$work/nocyrus.yaml" >"$work/nocyrus.out" 2>&1; then
	fail "lmtpgate check accepted a missing imapd.conf"
fi
cat "$work/nocyrus.out"
grep -q 'HOSTS WITHOUT CYRUS' "$work/nocyrus.out" || fail "lmtpgate check does not point at HOSTS WITHOUT CYRUS"

if [ -z "${LMTPGATE_PREBUILT:-}" ]; then
	step "delivery through a real murder"
	LMTPGATE_PACKAGE_TEST=1 LMTPGATE_PACKAGE_VERSION="$version" \
		go test -count=1 -v -run 'TestInstalled' ./test/package/ || fail "installed-package tests"
else
	echo "package-test: LMTPGATE_PREBUILT set: delivery test skipped"
fi

step "upgrade to $version2 keeps a local edit"
printf '# local edit by package-test\n' >>/etc/lmtpgate/lmtpgate.yaml
printf 'secret\n' >/etc/lmtpgate/proxy.pw
packaging/build.sh "$version2" amd64 >"$work/build2.log" 2>&1 || { cat "$work/build2.log"; fail "build $version2"; }
DEBIAN_FRONTEND=noninteractive dpkg -i "build/packages/lmtpgate_${version2}-1_amd64.deb" </dev/null
[ "$(dpkg-query -W -f '${Version}' lmtpgate)" = "${version2}-1" ] || fail "upgrade did not happen"
grep -q '^# local edit by package-test$' /etc/lmtpgate/lmtpgate.yaml || fail "upgrade lost the config edit"
grep -qx secret /etc/lmtpgate/proxy.pw || fail "upgrade touched proxy.pw"
[ ! -e /etc/lmtpgate/lmtpgate.yaml.dpkg-new ] || fail "dpkg left lmtpgate.yaml.dpkg-new"

step "remove keeps the configuration"
dpkg -r lmtpgate
[ ! -e /usr/sbin/lmtpgate ] || fail "binary left after remove"
grep -q '^# local edit by package-test$' /etc/lmtpgate/lmtpgate.yaml || fail "remove deleted the config"
[ -e /etc/lmtpgate/proxy.pw ] || fail "remove deleted proxy.pw"
[ ! -e /etc/systemd/system/sockets.target.wants/lmtpgate.socket ] || fail "socket still enabled after remove"

step "purge leaves nothing"
dpkg -P lmtpgate
installed=""
if dpkg -S lmtpgate 2>/dev/null | grep -v '^diversion'; then fail "dpkg still knows files of lmtpgate"; fi
left=$(find /etc /lib /usr /var /run -xdev \( -name '*lmtpgate*' \) \
	-not -path "$top/*" -not -path '/var/cache/*' -not -path '/root/*' \
	-not -path '/usr/local/go/*' \
	-not -path '/run/systemd/nspawn/propagate/lmtpgate-systemd-*' 2>/dev/null | grep -v "^$work" || true)
[ -z "$left" ] || fail "left after purge: $left"

echo "package-test: OK ($deb, $rpm)"
