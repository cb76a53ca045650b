#!/usr/bin/env bash
#
# build-deb.sh: build the Debian packages (what `make deb` runs).
#
#   bash debian/build-deb.sh
#
# 1. Installs the build dependencies of debian/control when some are
#    missing (apt-get build-dep on this tree, through sudo when not root;
#    apt-get update first when the package lists are over an hour old).
# 2. Copies the working tree to a scratch directory, so that no build
#    output lands in the checkout: the files git tracks, as they are in the
#    work tree (uncommitted edits included; new files once `git add`ed, or
#    all untracked files that git does not ignore with DEB_UNTRACKED=1);
#    outside a git checkout, everything less build outputs.
# 3. Runs `dpkg-buildpackage -us -uc -b` there: pg_buildext builds and
#    installs the extension for each PostgreSQL version of debian/pgversions,
#    runs its regression suites against the installed files, and the client
#    library and the idem tool are built and installed beside it.
# 4. Puts the .deb, .changes and .buildinfo files and the build log in
#    build/deb/ (DEB_OUT sets another directory), which ignores itself for
#    git, and lists them.
#
# Environment: DEB_OUT (where the packages go), DEB_UNTRACKED=1 (see 2),
# DEB_BUILD_OPTIONS (e.g. nocheck: skip the regression suites and the
# nocheck build dependencies), KEEP_WORK=1 (keep the scratch directory),
# QUIET=1 (build log only to the file; its last lines are shown when the
# build fails).

set -euo pipefail

PROG=build-deb.sh
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${DEB_OUT:-$ROOT/build/deb}
QUIET=${QUIET:-0}

die()
{
	echo "$PROG: $*" >&2
	exit 1
}

cd "$ROOT"
[[ -f debian/control && -f debian/changelog ]] || die "no debian/ in $ROOT"

sudo=()
if [[ $(id -u) -ne 0 ]]; then
	command -v sudo >/dev/null 2>&1 && sudo=(sudo)
fi

log=$(mktemp)
work=
cleanup()
{
	rm -f "$log"
	if [[ -n $work && ${KEEP_WORK:-0} != 1 ]]; then
		rm -rf "$work"
	fi
}
trap cleanup EXIT

apt_lists_fresh()
{
	[[ -n $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -60 \
		2>/dev/null | head -n 1) ]]
}

# apt_get ARGS...: apt-get, its chatter in $log; on failure, once more
# after apt-get update
apt_get()
{
	local env=(env DEBIAN_FRONTEND=noninteractive)
	if ! apt_lists_fresh; then
		"${sudo[@]}" apt-get update >>"$log" 2>&1 || true
	fi
	if "${sudo[@]}" "${env[@]}" apt-get "$@" >>"$log" 2>&1; then
		return 0
	fi
	"${sudo[@]}" apt-get update >>"$log" 2>&1 || true
	"${sudo[@]}" "${env[@]}" apt-get "$@" >>"$log" 2>&1 && return 0
	cat "$log" >&2
	die "apt-get $* failed"
}

# nocheck in DEB_BUILD_OPTIONS also drops the <!nocheck> build dependencies
profiles=()
case " ${DEB_BUILD_OPTIONS:-} " in
	*" nocheck "*)
		export DEB_BUILD_PROFILES="${DEB_BUILD_PROFILES:+$DEB_BUILD_PROFILES }nocheck"
		profiles=(-P nocheck)
		;;
esac

# 1. build dependencies
if [[ $(id -u) -ne 0 && ${#sudo[@]} -eq 0 ]]; then
	can_install=no
else
	can_install=yes
fi
if ! command -v dpkg-checkbuilddeps >/dev/null 2>&1 ||
	! command -v dpkg-buildpackage >/dev/null 2>&1; then
	[[ $can_install == yes ]] || die "dpkg-dev is missing, and not root and no sudo"
	echo "$PROG: installing dpkg-dev"
	apt_get install -y --no-install-recommends dpkg-dev
fi
if ! dpkg-checkbuilddeps "${profiles[@]}" debian/control >"$log" 2>&1; then
	[[ $can_install == yes ]] || { cat "$log" >&2; die "not root and no sudo to install them"; }
	echo "$PROG: installing the build dependencies: $(sed -n 's/.*Unmet build dependencies: //p' "$log")"
	apt_get build-dep -y --no-install-recommends "${profiles[@]}" ./
	dpkg-checkbuilddeps "${profiles[@]}" debian/control ||
		die "build dependencies still unmet"
fi

# 2. a copy of the tree
version=$(dpkg-parsechangelog -S Version)
work=$(mktemp -d "${TMPDIR:-/tmp}/idempotency-deb.XXXXXX")
chmod 0755 "$work"
src=$work/idempotency-${version%%-*}
mkdir "$src"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	# the tracked files that exist (one deleted in the work tree is left
	# out), and with DEB_UNTRACKED=1 the untracked ones git does not ignore
	others=()
	[[ ${DEB_UNTRACKED:-0} != 1 ]] || others=(--others --exclude-standard)
	git -C "$ROOT" ls-files -z --cached "${others[@]}" |
		while IFS= read -r -d '' f; do
			if [[ -e $f || -L $f ]]; then printf '%s\0' "$f"; fi
		done |
		tar -C "$ROOT" --null --no-recursion -T - -cf - | tar -C "$src" -xf -
else
	tar -C "$ROOT" --exclude=./build --exclude=./test/tmp --exclude=./client/build \
		--exclude='*.o' --exclude='*.so' --exclude='*.bc' -cf - . | tar -C "$src" -xf -
fi

# 3. the build
echo "$PROG: dpkg-buildpackage -us -uc -b in $src (version $version)"
buildlog=$work/build.log
status=0
if [[ $QUIET == 1 ]]; then
	(cd "$src" && dpkg-buildpackage -us -uc -b) >"$buildlog" 2>&1 || status=$?
else
	set +e
	(cd "$src" && dpkg-buildpackage -us -uc -b) 2>&1 | tee "$buildlog"
	status=${PIPESTATUS[0]}
	set -e
fi

# 4. the results
mkdir -p "$OUT"
[[ -e $OUT/.gitignore ]] || printf '*\n' >"$OUT/.gitignore"
cp "$buildlog" "$OUT/build.log"
if [[ $status -ne 0 ]]; then
	if [[ $QUIET == 1 ]]; then
		tail -n 60 "$buildlog" >&2
	fi
	die "dpkg-buildpackage failed (log: $OUT/build.log)"
fi
rm -f "$OUT"/*.deb "$OUT"/*.ddeb "$OUT"/*.changes "$OUT"/*.buildinfo
shopt -s nullglob
results=("$work"/*.deb "$work"/*.ddeb "$work"/*.changes "$work"/*.buildinfo)
((${#results[@]} > 0)) || die "dpkg-buildpackage made no package"
cp "${results[@]}" "$OUT"/
echo "$PROG: packages in $OUT:"
for f in "$OUT"/*.deb; do
	printf '  %s\n' "$(basename "$f")"
done
