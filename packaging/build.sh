#!/bin/sh
# build.sh: build lmtpgate and its .deb and .rpm for one architecture.
#
#   packaging/build.sh [VERSION [ARCH]]
#
# VERSION defaults to packaging/version.sh, ARCH (a GOARCH: amd64, arm64)
# to the host's. Writes build/ARCH/lmtpgate and
#   build/packages/lmtpgate_VERSION-1_DEBARCH.deb
#   build/packages/lmtpgate-VERSION-1.RPMARCH.rpm
# (the Debian and rpm naming conventions; "-1" is the package revision).
# The binary is static (CGO_ENABLED=0), so cross-building needs nothing but
# Go. nfpm is pinned and fetched through the Go module proxy.
set -eu

NFPM=${NFPM:-github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2}

cd "$(dirname "$0")/.."
VERSION=${1:-$(packaging/version.sh)}
ARCH=${2:-$(go env GOARCH)}
case "$ARCH" in
amd64) debarch=amd64 rpmarch=x86_64 ;;
arm64) debarch=arm64 rpmarch=aarch64 ;;
*) echo "build.sh: unsupported ARCH $ARCH (amd64 or arm64)" >&2; exit 2 ;;
esac
case "$VERSION" in
[0-9]*) ;;
*) echo "build.sh: VERSION must start with a digit, got '$VERSION'" >&2; exit 2 ;;
esac
case "$VERSION" in
*-* | *' '*) echo "build.sh: VERSION must not contain '-' or spaces: '$VERSION'" >&2; exit 2 ;;
esac

mkdir -p "build/$ARCH" build/packages
if [ -n "${LMTPGATE_PREBUILT:-}" ]; then
	# For testing the packaging alone: package this binary instead.
	cp "$LMTPGATE_PREBUILT" "build/$ARCH/lmtpgate"
else
	# -s -w: no symbol table or DWARF in the packaged binary (Debian
	# policy 10.1, lintian unstripped-binary-or-object); Go's own stack
	# traces do not need them.
	CGO_ENABLED=0 GOOS=linux GOARCH=$ARCH go build -trimpath \
		-ldflags "-s -w -X main.version=$VERSION" -o "build/$ARCH/lmtpgate" ./cmd/lmtpgate
fi

# Staging tree for generated files. nfpm.yaml names fixed paths under
# build/pkgroot/ (nfpm does not expand variables in contents), so it is
# rebuilt for every architecture.
root=build/pkgroot
rm -rf "$root"
mkdir -p "$root/usr/sbin" "$root/usr/share/man/man8" "$root/usr/share/man/man5" \
	"$root/usr/share/doc/lmtpgate"
cp "build/$ARCH/lmtpgate" "$root/usr/sbin/lmtpgate"
# -n: no name or time stamp in the gzip header, for reproducible packages
# (lintian: gzip-file-is-not-multi-member / package-contains-timestamped-gzip).
gzip -9nc man/lmtpgate.8 >"$root/usr/share/man/man8/lmtpgate.8.gz"
gzip -9nc man/lmtpgate.yaml.5 >"$root/usr/share/man/man5/lmtpgate.yaml.5.gz"

if [ -f README.md ]; then
	cp README.md "$root/usr/share/doc/lmtpgate/README.md"
else
	echo "build.sh: warning: README.md missing, shipping a stub" >&2
	printf '# lmtpgate\n\nSee lmtpgate(8), lmtpgate.yaml(5) and operations.md in this directory.\n' \
		>"$root/usr/share/doc/lmtpgate/README.md"
fi

# A Debian-format changelog entry for this build. The date is the commit's,
# so rebuilding the same commit gives the same file.
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
when=$(git log -1 --format=%cD HEAD 2>/dev/null || date -R)
maint=$(sed -n 's/^maintainer: //p' nfpm.yaml)
{
	printf 'lmtpgate (%s-1) unstable; urgency=medium\n\n' "$VERSION"
	printf '  * Build from commit %s.\n\n' "$commit"
	printf ' -- %s  %s\n' "$maint" "$when"
} >build/changelog
gzip -9nc build/changelog >"$root/usr/share/doc/lmtpgate/changelog.Debian.gz"
cp "$root/usr/share/doc/lmtpgate/changelog.Debian.gz" "$root/usr/share/doc/lmtpgate/changelog.gz"

deb="build/packages/lmtpgate_${VERSION}-1_${debarch}.deb"
rpm="build/packages/lmtpgate-${VERSION}-1.${rpmarch}.rpm"
rm -f "$deb" "$rpm"
export VERSION ARCH
go run "$NFPM" package --config nfpm.yaml --packager deb --target "$deb"
go run "$NFPM" package --config nfpm.yaml --packager rpm --target "$rpm"
echo "$deb"
echo "$rpm"
