#!/usr/bin/env bash
#
# package.sh: the package install test.
#
#   test/package.sh              build the packages (debian/build-deb.sh,
#                                what `make deb` runs), install them, test
#   test/package.sh --no-build   use the .deb files already in build/deb
#
# Runs the steps of the README's Installation section as written there:
#
#   1. `apt install ./build/deb/*.deb` (as root or through sudo): the four
#      packages postgresql-15-idempotency, libidem1, libidem-dev and
#      idem-tools, and their -dbgsym packages; then checks that the
#      installed files are the packages' (dpkg -S, dpkg --verify);
#   2. a Debian cluster of its own (pg_createcluster, with its
#      configuration under test/tmp/package/etc through
#      PG_CLUSTER_CONF_ROOT, its data, log and socket directory beside it,
#      no TCP port, trust authentication), started without preloading;
#      `CREATE EXTENSION idempotency`: the functions work, the counters
#      are not available yet;
#   3. `pg_conftool 15 <cluster> set shared_preload_libraries idempotency`,
#      `pg_ctlcluster 15 <cluster> restart`: `counters_available = t`, the
#      purge launcher runs and (with idem.purge_interval = 1s) a purge
#      worker deletes an expired key, and a lease waiter is woken by the
#      owner's commit (well before the one-second re-look that would stand
#      in for a lost wake-up);
#   4. the roles: what PUBLIC may call, what needs `GRANT pg_monitor` or
#      `GRANT EXECUTE`;
#   5. the upgrade: `CREATE EXTENSION idempotency VERSION '1.1'`, then
#      `ALTER EXTENSION idempotency UPDATE` to the package's version.
#
# Then a reserve / commit / replay in SQL, a small C program compiled
# against the -dev package with `pkg-config --cflags --libs libidem` (and
# once more against the static library) and run on the cluster, and the
# idem tool.  Ends with "N passed, M failed"; exit 1 when M > 0.
#
# The packages install into the same directories as `make install` of the
# extension and overwrite what it put there (the client that `make install`
# puts under /usr/local stays; the C checks make sure they use the
# package's header and libraries, not those).  At the end the cluster is
# dropped, the packages are purged and `make install` (the README's
# installation from source) runs again at the top of the repository, so
# that the other suites find the extension of the work tree as before
# (KEEP_PACKAGES=1 leaves the packages installed instead).
#
# Environment: DEB_OUT (where the .deb files are; default build/deb),
# PG_MAJOR (default 15), KEEP_PACKAGES=1, KEEP_TMP=1 (keep test/tmp/package).

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${DEB_OUT:-$ROOT/build/deb}
PG_MAJOR=${PG_MAJOR:-15}
TMP=$ROOT/test/tmp/package
# the Debian cluster of the test: its name, and its configuration kept
# apart from /etc/postgresql
PG_CLUSTER=pkgtest
CONF_ROOT=$TMP/etc
MA=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
EXT_PKG=postgresql-$PG_MAJOR-idempotency
PACKAGES=("$EXT_PKG" libidem1 libidem-dev idem-tools)
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin

build=yes
case ${1:-} in
	--no-build) build=no ;;
	'') ;;
	*)
		echo "usage: $0 [--no-build]" >&2
		exit 2
		;;
esac

passed=0
failed=0

ok()
{
	passed=$((passed + 1))
	printf 'ok - %s\n' "$1"
}

fail()
{
	failed=$((failed + 1))
	printf 'not ok - %s\n' "$1"
	if [[ $# -gt 1 ]]; then
		shift
		printf '%s\n' "$@" | sed 's/^/#   /'
	fi
}

# check DESC CMD...: ok when CMD exits 0, else fail with its output
check()
{
	local desc=$1 out rc
	shift
	out=$("$@" 2>&1)
	rc=$?
	if [[ $rc -eq 0 ]]; then
		ok "$desc"
	else
		fail "$desc" "exit $rc: $*" "$(printf '%s\n' "$out" | tail -n 25)"
	fi
	return $rc
}

check_eq()
{
	if [[ $2 == "$3" ]]; then
		ok "$1"
	else
		fail "$1" "want: $2" "got:  $3"
	fi
}

finish()
{
	echo "$passed passed, $failed failed"
	[[ $failed -eq 0 ]]
}

note()
{
	printf '# %s\n' "$*"
}

sudo=()
if [[ $(id -u) -ne 0 ]]; then
	if ! command -v sudo >/dev/null 2>&1; then
		fail "root or sudo to install packages" "run as root, or install sudo"
		finish
		exit 1
	fi
	sudo=(sudo)
fi

psql_q()
{
	"$PG_BIN/psql" -XAtq -v ON_ERROR_STOP=1 "$@"
}

installed_version()
{
	dpkg-query -W -f='${db:Status-Status} ${Version}' "$1" 2>/dev/null |
		sed -n 's/^installed //p'
}

# every package this test may install: the four, their -dbgsym packages,
# and (once known) whatever else build/deb holds
all_packages=("${PACKAGES[@]}" "${PACKAGES[@]/%/-dbgsym}")

add_package()
{
	local p
	for p in "${all_packages[@]}"; do
		[[ $p != "$1" ]] || return 0
	done
	all_packages+=("$1")
}

# the installed ones of all_packages
installed_packages()
{
	local pkg
	for pkg in "${all_packages[@]}"; do
		[[ -z $(installed_version "$pkg") ]] || printf '%s\n' "$pkg"
	done
}

# cluster CMD ARGS...: a postgresql-common command (pg_createcluster,
# pg_ctlcluster, pg_conftool, pg_dropcluster) on the test's own clusters
cluster()
{
	PG_CLUSTER_CONF_ROOT=$CONF_ROOT "$@"
}

restore()
{
	if [[ -d $CONF_ROOT/$PG_MAJOR/$PG_CLUSTER ]]; then
		cluster pg_dropcluster --stop "$PG_MAJOR" "$PG_CLUSTER" >"$TMP/dropcluster.log" 2>&1 ||
			note "pg_dropcluster --stop $PG_MAJOR $PG_CLUSTER failed: see $TMP/dropcluster.log"
	fi
	if [[ ${KEEP_PACKAGES:-0} == 1 ]]; then
		note "KEEP_PACKAGES=1: the packages stay installed"
	else
		local installed=()
		mapfile -t installed < <(installed_packages)
		if ((${#installed[@]} > 0)); then
			"${sudo[@]}" dpkg --purge "${installed[@]}" >"$TMP/purge.log" 2>&1 ||
				note "dpkg --purge ${installed[*]} failed: see $TMP/purge.log"
		fi
		# the other suites use the extension of the work tree: the README's
		# installation from source, `make && sudo make install`
		if make -C "$ROOT" >"$TMP/make-install.log" 2>&1 &&
			"${sudo[@]}" make -C "$ROOT" install >>"$TMP/make-install.log" 2>&1; then
			note "purged the packages; make install put the work tree's extension back"
		else
			note "purged the packages; make install failed (see $TMP/make-install.log):" \
				"run it by hand"
		fi
	fi
	if [[ ${KEEP_TMP:-0} != 1 ]]; then
		rm -rf "$TMP/c"
	fi
}

rm -rf "$TMP"
mkdir -p "$TMP"

# ---- the packages -----------------------------------------------------

if [[ $build == yes ]]; then
	if ! check "the packages build (dpkg-buildpackage, log in $OUT/build.log)" \
		env QUIET=1 DEB_OUT="$OUT" bash "$ROOT/debian/build-deb.sh"; then
		finish
		exit 1
	fi
fi

version=$(cd "$ROOT" && dpkg-parsechangelog -S Version)
ext_version=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$ROOT/idempotency.control")
arch=$(dpkg --print-architecture)

debs=()
missing=()
for pkg in "${PACKAGES[@]}"; do
	f=$OUT/${pkg}_${version}_$arch.deb
	if [[ -f $f ]]; then
		debs+=("$f")
	else
		missing+=("$(basename "$f")")
	fi
done
if ((${#missing[@]} > 0)); then
	fail "the four packages of version $version are in $OUT" "missing: ${missing[*]}"
	finish
	exit 1
fi
ok "the four packages of version $version are in $OUT"

# The README installs every .deb of build/deb (the four and their -dbgsym
# packages): so does this test.
debs=("$OUT"/*.deb)
for f in "${debs[@]}"; do
	add_package "$(dpkg-deb -f "$f" Package)"
done
note "installing ${#debs[@]} .deb files: $(printf '%s ' "${debs[@]##*/}")"

# The Debian version follows the extension's: default_version 1.1 goes with
# 1.1.0 (or 1.1.0-N); a bump of the control file needs a changelog entry.
upstream=${version%%-*}
case $upstream in
	"$ext_version" | "$ext_version".*)
		ok "debian/changelog's version $version follows default_version $ext_version"
		;;
	*)
		fail "debian/changelog's version $version follows default_version $ext_version" \
			"add a debian/changelog entry (dch -v $ext_version.0) for the new version"
		;;
esac

# So does the PGXN distribution's (META.json).
if command -v python3 >/dev/null 2>&1; then
	meta_versions=$(python3 -c 'import json, sys
m = json.load(open(sys.argv[1]))
print(m["version"], m["provides"]["idempotency"]["version"])' "$ROOT/META.json" 2>&1)
else
	# the two "version" members, in the order of the file
	meta_versions=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$ROOT/META.json" |
		head -n 2 | paste -sd ' ')
fi
check_eq "META.json's versions are $upstream" "$upstream $upstream" "$meta_versions"

# The library package is named after the soname.
soname=$(dpkg-deb --fsys-tarfile "$OUT/libidem1_${version}_$arch.deb" |
	tar -xOf - --wildcards "./usr/lib/$MA/libidem.so.*.*" 2>/dev/null |
	{ cat >"$TMP/libidem.so" && readelf -d "$TMP/libidem.so"; } |
	sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
check_eq "libidem1 ships the soname libidem.so.1" "libidem.so.1" "$soname"

# ---- install ----------------------------------------------------------

# Files of the extension that `make install` left (not owned by a package)
# are overwritten by the package's.
made=()
for f in /usr/lib/postgresql/$PG_MAJOR/lib/idempotency.so \
	/usr/share/postgresql/$PG_MAJOR/extension/idempotency.control; do
	if [[ -e $f ]] && ! dpkg -S "$f" >/dev/null 2>&1; then
		made+=("$f")
	fi
done
((${#made[@]} == 0)) || note "make install had put ${made[*]}: the packages replace them"

# A run before this one may have left the packages installed: start clean.
mapfile -t old < <(installed_packages)
if ((${#old[@]} > 0)); then
	"${sudo[@]}" dpkg --purge "${old[@]}" >/dev/null 2>&1 || true
fi

trap restore EXIT

# the README's command: apt install ./build/deb/*.deb (-y: nobody answers)
install_debs()
{
	local log=$TMP/apt-install.log
	if "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt install -y "${debs[@]}" \
		>"$log" 2>&1; then
		return 0
	fi
	# dependencies from the archive with stale package lists
	"${sudo[@]}" apt-get update >>"$log" 2>&1
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt install -y "${debs[@]}" \
		>>"$log" 2>&1 || { cat "$log"; return 1; }
}

if ! check "apt install ./build/deb/*.deb" install_debs; then
	finish
	exit 1
fi

for pkg in "${PACKAGES[@]}"; do
	check_eq "$pkg $version is installed" "$version" "$(installed_version "$pkg")"
done

# owner PATH PACKAGE: dpkg -S says PACKAGE installed PATH
owner()
{
	local got
	got=$(dpkg -S "$1" 2>/dev/null | sed -n "s|^\([^:]*\)\(:[a-z0-9]*\)\?: $1\$|\1|p" | head -n 1)
	check_eq "dpkg -S $1: $2" "$2" "$got"
}

extdir=/usr/share/postgresql/$PG_MAJOR/extension
owner "/usr/lib/postgresql/$PG_MAJOR/lib/idempotency.so" "$EXT_PKG"
owner "$extdir/idempotency.control" "$EXT_PKG"
for f in "$ROOT"/sql/idempotency--*.sql; do
	owner "$extdir/$(basename "$f")" "$EXT_PKG"
done
owner "/usr/lib/$MA/libidem.so.1" libidem1
owner "/usr/lib/$MA/libidem.so" libidem-dev
owner "/usr/lib/$MA/libidem.a" libidem-dev
owner "/usr/lib/$MA/pkgconfig/libidem.pc" libidem-dev
owner /usr/include/idem.h libidem-dev
owner /usr/bin/idem idem-tools
owner /usr/share/man/man1/idem.1.gz idem-tools

# the files on disk are the packages' own (checksums)
check "dpkg --verify: the installed files match the packages" \
	bash -c '[[ -z $(dpkg --verify "$@" 2>&1) ]] || { dpkg --verify "$@" 2>&1; exit 1; }' \
	_ "${PACKAGES[@]}"

# ---- the README's Installation steps, on a Debian cluster --------------

# A cluster of its own, as `pg_createcluster 15 main` makes on a new
# server, but with its configuration, data, log and unix socket under
# $TMP, no TCP port, and trust authentication; started without preloading.
mkdir -p "$TMP/sock"
cluster_owner=$(id -un)
[[ $(id -u) -ne 0 ]] || cluster_owner=postgres
if [[ $(id -u) -eq 0 ]]; then
	chown "$cluster_owner:" "$TMP/sock"
fi
if ! check "pg_createcluster $PG_MAJOR $PG_CLUSTER (configuration in $CONF_ROOT)" \
	cluster pg_createcluster --quiet -u "$cluster_owner" -d "$TMP/data" \
	-l "$TMP/postgresql.log" -s "$TMP/sock" -p 5432 -o listen_addresses= \
	-o fsync=off --start "$PG_MAJOR" "$PG_CLUSTER" -- --auth=trust; then
	finish
	exit 1
fi
export PGHOST=$TMP/sock PGPORT=5432 PGUSER=postgres PGDATABASE=postgres
unset PGSERVICE PGHOSTADDR

# CREATE EXTENSION works without preloading; the counters are not there yet
check "CREATE EXTENSION idempotency" psql_q -c 'CREATE EXTENSION idempotency'
check_eq "the installed extension is version $ext_version" "$ext_version" \
	"$(psql_q -c "SELECT extversion FROM pg_extension WHERE extname = 'idempotency'" 2>&1)"
check_eq "not preloaded: counters_available = f" "f" \
	"$(psql_q -c 'SELECT counters_available FROM idem_stats' 2>&1)"

# shared_preload_libraries, as the README sets it on Debian
check "pg_conftool $PG_MAJOR $PG_CLUSTER set shared_preload_libraries idempotency" \
	cluster pg_conftool "$PG_MAJOR" "$PG_CLUSTER" set shared_preload_libraries idempotency
check "pg_ctlcluster $PG_MAJOR $PG_CLUSTER restart" \
	cluster pg_ctlcluster "$PG_MAJOR" "$PG_CLUSTER" restart
check_eq "preloaded: counters_available = t" "t" \
	"$(psql_q -c 'SELECT counters_available FROM idem_stats' 2>&1)"
check_eq "preloaded: the purge launcher runs" "1" \
	"$(psql_q -c "SELECT count(*) FROM pg_stat_activity
	               WHERE backend_type = 'idempotency purge launcher'" 2>&1)"

# A purge worker deletes an expired key: a response kept for 1 s, purged
# by a round of the workers once idem.purge_interval is 1 s (reloaded).
purged_by_worker()
{
	local i
	psql_q -c "ALTER SYSTEM SET idem.purge_interval = '1s'" \
		-c 'SELECT pg_reload_conf()' \
		-c "SELECT fresh FROM idem_reserve('pkg-expiring', ttl => '1s')" \
		-c "SELECT idem_commit('pkg-expiring', NULL, 200, 'gone soon'::bytea)" \
		>/dev/null || return 1
	for i in $(seq 60); do
		sleep 0.5
		[[ $(psql_q -c 'SELECT purged >= 1 FROM idem_stats') != t ]] || return 0
	done
	psql_q -c 'SELECT purged, expired FROM idem_stats'
	return 1
}
check "a purge worker deletes an expired key (idem.purge_interval = 1s)" purged_by_worker

# A lease waiter, woken by the owner's commit (made from another session,
# with the owner token): it gets the stored response at once.  Without a
# wake-up a waiter would look again only after up to a second; three
# rounds in under half a second each leave little room for luck.
lease_waiter()
{
	local key=pkg-lease-$1 token i n t0 t1 got
	token=$(psql_q -c "SELECT owner FROM idem_reserve('$key', lease => '30s')") ||
		return 1
	psql_q -c "SELECT fresh, status, convert_from(body, 'UTF8')
	             FROM idem_reserve('$key', wait_timeout => '20s')" \
		>"$TMP/waiter.out" 2>&1 &
	local waiter=$!
	for i in $(seq 200); do
		n=$(psql_q -c "SELECT count(*) FROM pg_stat_activity
		                WHERE wait_event_type = 'Extension'
		                  AND query LIKE '%$key%' AND pid <> pg_backend_pid()")
		[[ $n != 1 ]] || break
		sleep 0.05
	done
	if [[ $n != 1 ]]; then
		wait "$waiter"
		echo "the waiter did not wait: $(cat "$TMP/waiter.out")"
		return 1
	fi
	t0=$(date +%s%N)
	psql_q -c "SELECT idem_commit('$key', NULL, 200, 'woken'::bytea, owner => '$token')" \
		>/dev/null || return 1
	wait "$waiter"
	t1=$(date +%s%N)
	got=$(cat "$TMP/waiter.out")
	echo "$got in $(((t1 - t0) / 1000000)) ms"
	[[ $got == 'f|200|woken' && $((t1 - t0)) -lt 500000000 ]]
}
for round in 1 2 3; do
	check "a lease waiter is woken by the owner's commit (round $round, < 500 ms)" \
		lease_waiter "$round"
done
check_eq "the waits are counted" "t" \
	"$(psql_q -c 'SELECT waits >= 3 FROM idem_stats' 2>&1)"

# The roles, as the README grants them: PUBLIC may reserve and commit;
# idem_stats needs pg_monitor; an operator function needs GRANT EXECUTE.
psql_q -c 'CREATE ROLE app LOGIN' -c 'CREATE ROLE ops LOGIN' >/dev/null 2>&1
check_eq "as a role with no grant: reserve and commit" $'t\nt' \
	"$(PGUSER=app psql_q -c "SELECT fresh FROM idem_reserve('pkg-role')" \
		-c "SELECT idem_commit('pkg-role', NULL, 200, 'ok'::bytea)" 2>&1)"
check_eq "as a role with no grant: idem_stats and idem_evict are refused" \
	$'42501\n42501' \
	"$(for q in 'SELECT * FROM idem_stats' "SELECT idem_evict('pkg-role')"; do
		PGUSER=ops "$PG_BIN/psql" -XAtq -v ON_ERROR_STOP=1 -v VERBOSITY=verbose \
			-c "$q" 2>&1 | sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\):.*/\1/p'
	done)"
check "GRANT pg_monitor TO ops; GRANT EXECUTE ON FUNCTION idem_evict(text, text) TO ops" \
	psql_q -c 'GRANT pg_monitor TO ops' \
	-c 'GRANT EXECUTE ON FUNCTION idem_evict(text, text) TO ops'
check_eq "then ops reads idem_stats and evicts" $'t\nt' \
	"$(PGUSER=ops psql_q -c 'SELECT counters_available FROM idem_stats' \
		-c "SELECT idem_evict('pkg-role')" 2>&1)"

# The upgrade, as the README runs it once the new package is installed
check_eq "CREATE EXTENSION idempotency VERSION '1.1', then ALTER EXTENSION idempotency UPDATE" \
	"1.1 $ext_version" \
	"$(psql_q -c 'CREATE DATABASE pkg_upgrade' &&
		PGDATABASE=pkg_upgrade psql_q -c "CREATE EXTENSION idempotency VERSION '1.1'" \
			-c "SELECT extversion FROM pg_extension WHERE extname = 'idempotency'" \
			-c 'ALTER EXTENSION idempotency UPDATE' \
			-c "SELECT extversion FROM pg_extension WHERE extname = 'idempotency'" 2>&1 |
		paste -sd' ')"

# ---- the extension, from the package ----------------------------------

sql_out=$(psql_q 2>&1 <<'SQL'
SELECT fresh, state, attempt
  FROM idem_reserve('pkg-sql', idem_request_hash('POST', '/charges', '{"amount":100}'));
SELECT idem_commit('pkg-sql', idem_request_hash('POST', '/charges', '{"amount":100}'),
                   201, '{"id":"ch_1"}'::bytea, '{"content-type":"application/json"}');
SQL
)
check_eq "SQL: reserve a new key (fresh), then commit its response" \
	$'t|in_flight|1\nt' "$sql_out"
check_eq "SQL: another session replays the stored response" 't|201|{"id":"ch_1"}' \
	"$(psql_q -c "SELECT NOT fresh, status, convert_from(body, 'UTF8')
	                FROM idem_reserve('pkg-sql', idem_request_hash('POST', '/charges', '{\"amount\":100}'))" 2>&1)"
check_eq "preloaded from the package: counters available, the replay counted" 't|t' \
	"$(psql_q -c 'SELECT counters_available, replays >= 1 FROM idem_stats' 2>&1)"

# ---- libidem-dev: a C program built with pkg-config --------------------

mkdir -p "$TMP/c"
cat >"$TMP/c/pkgtest.c" <<'EOF'
/* pkgtest KEY: reserve, commit and replay KEY through libidem, on the
 * cluster of libpq's environment; prints "fresh replay <body>" */
#include <idem.h>
#include <stdio.h>
#include <string.h>

int
main(int argc, char **argv)
{
	idem_conn  *conn = idem_connect(NULL);
	idem_record *rec = NULL;
	idem_opts	opts;
	char		hash[IDEM_HASH_SIZE];
	const void *body;
	size_t		len;
	idem_outcome r1, r2, c;

	const char *key = argc > 1 ? argv[1] : "pkg-c";

	if (conn == NULL || !idem_connected(conn))
	{
		fprintf(stderr, "connect: %s\n", conn ? idem_errmsg(conn) : "out of memory");
		return 1;
	}
	if (idem_request_hash(hash, "POST", "/pkg", "body", 4) != 0)
		return 1;
	memset(&opts, 0, sizeof opts);
	opts.request_hash = hash;
	opts.scope = "package-test";

	r1 = idem_reserve(conn, key, &opts, &rec);
	idem_record_free(rec);
	rec = NULL;
	c = idem_commit(conn, key, &opts, 200, "from C", 6, NULL);
	r2 = idem_reserve(conn, key, &opts, &rec);
	if (r1 != IDEM_FRESH || c != IDEM_FRESH || r2 != IDEM_REPLAY || rec == NULL)
	{
		fprintf(stderr, "reserve %s, commit %s, reserve %s: %s\n",
				idem_outcome_name(r1), idem_outcome_name(c),
				idem_outcome_name(r2), idem_errmsg(conn));
		return 1;
	}
	body = idem_record_body(rec, &len);
	printf("%s %s %.*s\n", idem_outcome_name(r1), idem_outcome_name(r2),
		   (int) len, (const char *) body);
	idem_record_free(rec);
	idem_free(conn);
	return 0;
}
EOF

# Only the system's pkg-config directories: a libidem.pc that
# `make -C client install` put under /usr/local must not stand in for the
# package's.
export PKG_CONFIG_LIBDIR=/usr/lib/$MA/pkgconfig:/usr/lib/pkgconfig:/usr/share/pkgconfig
header_version=$(sed -n 's/^#define IDEM_VERSION_\(MAJOR\|MINOR\|PATCH\)[[:space:]]*\([0-9]*\).*/\2/p' \
	/usr/include/idem.h | paste -sd.)
check_eq "pkg-config --modversion libidem matches the installed header" \
	"$header_version" "$(pkg-config --modversion libidem 2>&1)"

# `make install` also installs the client under /usr/local, which the
# compiler, the linker and the loader search before /usr: let pkg-config
# name the system directories (-L/usr/lib/<multiarch> comes before the
# default ones), link the static library by its path, run with
# LD_LIBRARY_PATH when a /usr/local libidem.so.1 would be loaded, and
# check that the header the compiler takes is the package's (when another
# one, different, comes first, put the package's first with -I).
export PKG_CONFIG_ALLOW_SYSTEM_LIBS=1 PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1
extra_cflags=
which_header()
{
	printf '#include <idem.h>\n' | cc $(pkg-config --cflags libidem) $extra_cflags -M -x c - 2>&1 |
		grep -o '[^ ]*/idem\.h' | head -n 1
}
hdr=$(which_header)
if [[ $hdr != /usr/include/idem.h ]] && ! cmp -s "${hdr:-/nonexistent}" /usr/include/idem.h; then
	note "the compiler finds ${hdr:-no idem.h} first (not from a package, and different): putting the package's first"
	mkdir -p "$TMP/c/inc"
	ln -sf /usr/include/idem.h "$TMP/c/inc/idem.h"
	extra_cflags="-I$TMP/c/inc"
	hdr=$(readlink -f "$(which_header)")
fi
if [[ $hdr == /usr/include/idem.h ]] || cmp -s "${hdr:-/nonexistent}" /usr/include/idem.h; then
	ok "the compiler takes idem.h from libidem-dev"
else
	fail "the compiler takes idem.h from libidem-dev" "it takes ${hdr:-none}"
fi
export extra_cflags

run_env=()
if check "cc pkgtest.c \$(pkg-config --cflags --libs libidem)" \
	bash -c 'cc -Wall -Werror $extra_cflags -o "$1/pkgtest" "$1/pkgtest.c" $(pkg-config --cflags --libs libidem)' \
	_ "$TMP/c"; then
	# (the loader may name it through /lib, a link to /usr/lib)
	pkglib=$(readlink -f "/usr/lib/$MA/libidem.so.1")
	lib=$(ldd "$TMP/c/pkgtest" | sed -n 's/^[[:space:]]*libidem\.so\.1 => \([^ ]*\).*/\1/p')
	if [[ -n $lib && $(readlink -f "$lib") != "$pkglib" ]]; then
		note "the loader finds $lib first (not from a package): running with LD_LIBRARY_PATH=/usr/lib/$MA"
		run_env=(env "LD_LIBRARY_PATH=/usr/lib/$MA")
		lib=$("${run_env[@]}" ldd "$TMP/c/pkgtest" |
			sed -n 's/^[[:space:]]*libidem\.so\.1 => \([^ ]*\).*/\1/p')
	fi
	check_eq "the program loads libidem.so.1 from libidem1" "$pkglib" "$(readlink -f "${lib:-none}")"
	check_eq "the program reserves, commits and replays on the cluster" \
		"fresh replay from C" "$("${run_env[@]}" "$TMP/c/pkgtest" pkg-c-shared 2>&1)"
fi

# The static library: linked in, with libidem's own dependencies from
# pkg-config's Requires.private.
if check "cc pkgtest.c with libidem.a (pkg-config --static)" \
	bash -c 'cc -Wall -Werror $extra_cflags -o "$1/pkgtest-static" "$1/pkgtest.c" $(pkg-config --cflags libidem) \
		"/usr/lib/$2/libidem.a" $(pkg-config --static --libs libidem | sed "s/-lidem\b//")' \
	_ "$TMP/c" "$MA"; then
	if ldd "$TMP/c/pkgtest-static" | grep -q libidem; then
		fail "the static build does not load libidem.so" "$(ldd "$TMP/c/pkgtest-static")"
	else
		ok "the static build does not load libidem.so"
	fi
	check_eq "the static build reserves, commits and replays on the cluster" \
		"fresh replay from C" "$("$TMP/c/pkgtest-static" pkg-c-static 2>&1)"
fi

# ---- idem-tools -------------------------------------------------------

help=$(/usr/bin/idem --help 2>&1)
if [[ $? -eq 0 && $help == *Usage:* ]]; then
	ok "idem --help"
else
	fail "idem --help" "$help"
fi
check_eq "idem --version names the library's version" "idem (libidem) $header_version" \
	"$(/usr/bin/idem --version 2>&1)"

runs=$TMP/c/runs
: >"$runs"
first=$(/usr/bin/idem exec --key pkg-cli --scope package-test -- \
	sh -c "echo run >>'$runs'; echo hello from idem" 2>&1)
second=$(/usr/bin/idem exec --key pkg-cli --scope package-test -- \
	sh -c "echo run >>'$runs'; echo hello from idem" 2>&1)
check_eq "idem exec runs the command once, then replays its output" \
	$'hello from idem\nhello from idem\n1' "$first"$'\n'"$second"$'\n'"$(wc -l <"$runs")"
check "idem stats" /usr/bin/idem stats

finish
