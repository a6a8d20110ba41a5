#!/bin/sh
# version.sh: print the version of this source tree, for the binary
# (-X main.version=) and for the .deb and .rpm packages.
#
#   tag v1.2.3 on HEAD          -> 1.2.3
#   7 commits after tag v1.2.3  -> 1.2.3+git20250301120000.7.abc1234
#   no tag yet                  -> 0.1.0~git20250301120000.abc1234
#   uncommitted changes         -> any of the above + ".dirty"
#
# Why these shapes: dpkg and rpm (>= 4.10) both sort "~" before anything,
# even the end of the string, so 0.1.0~git... snapshots come before the
# first real release 0.1.0 and upgrade to it; "+git..." after a tag sorts
# after that tag and before the next one. The UTC commit time comes before
# the hash so that snapshots sort in commit order (a hash does not). No "-"
# appears: dpkg reserves it for the Debian revision and rpm forbids it.
set -eu
cd "$(dirname "$0")/.."

if ! command -v git >/dev/null 2>&1 || ! git rev-parse --git-dir >/dev/null 2>&1; then
	# A source tarball without git: the caller must say.
	echo "0.0.0~unknown"
	exit 0
fi

hash=$(git rev-parse --short=7 HEAD)
when=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S HEAD)
dirty=""
if ! git diff --quiet HEAD -- 2>/dev/null; then
	dirty=".dirty"
fi

if desc=$(git describe --tags --long --match 'v[0-9]*' HEAD 2>/dev/null); then
	# vX.Y.Z-N-gHASH
	tag=${desc%-*-g*}
	rest=${desc#"$tag"-}
	n=${rest%%-*}
	base=${tag#v}
	if [ "$n" = 0 ]; then
		echo "$base$dirty"
	else
		echo "$base+git$when.$n.$hash$dirty"
	fi
else
	echo "0.1.0~git$when.$hash$dirty"
fi
