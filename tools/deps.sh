#!/usr/bin/env bash
#
# deps.sh: install what building and testing need, when it is missing.
#
# Checks for each need by what it provides (a file, a program, a Perl
# module), so that a machine that has everything costs no apt call at all.
# When something is missing: `apt-get update` (skipped when the package
# lists are less than an hour old; done anyway if the install then fails),
# then one `apt-get install` of the missing packages, through sudo when not
# root.  Prints one line saying what it did.
#
#   tools/deps.sh             install what is missing
#   tools/deps.sh --dry-run   (or DEPS_DRY_RUN=1) print the packages it would
#                             install, one a line on stdout, and install
#                             nothing; needs neither root nor apt
#
# Debian 12 packages; PG_MAJOR (default 15) chooses the PostgreSQL version,
# PG_CONFIG the pg_config asked where the server headers are.

set -euo pipefail

DRY_RUN=${DEPS_DRY_RUN:-0}
case ${1:-} in
	--dry-run) DRY_RUN=1 ;;
	"") ;;
	*)
		echo "usage: deps.sh [--dry-run]" >&2
		exit 2
		;;
esac
[[ $DRY_RUN == 0 ]] || DRY_RUN=1

PG_MAJOR=${PG_MAJOR:-15}
PG_BIN_DEFAULT=/usr/lib/postgresql/$PG_MAJOR/bin

missing=()

need()
{
	local pkg=$1
	shift
	if ! "$@" >/dev/null 2>&1; then
		missing+=("$pkg")
	fi
}

have() { command -v "$1"; }

pg_config_cmd()
{
	if [[ -n ${PG_CONFIG:-} ]]; then
		echo "$PG_CONFIG"
	elif command -v pg_config >/dev/null 2>&1; then
		echo pg_config
	else
		echo "$PG_BIN_DEFAULT/pg_config"
	fi
}

# The server headers.  Not pgxs.mk: on Debian 12 that ships in
# postgresql-client-N, so it is there on machines that cannot build a
# server module; postgres.h comes only with postgresql-server-dev-N.
have_server_headers()
{
	local dir
	dir=$("$(pg_config_cmd)" --includedir-server) && [[ -f $dir/postgres.h ]]
}

# pgxs.mk itself (postgresql-client-N), which the Makefile includes
have_pgxs_makefile()
{
	local pgxs
	pgxs=$("$(pg_config_cmd)" --pgxs) && [[ -f $pgxs ]]
}

have_isolation_regress()
{
	local dir
	dir=$("$(pg_config_cmd)" --pkglibdir) || dir=/usr/lib/postgresql/$PG_MAJOR/lib
	[[ -x $dir/pgxs/src/test/isolation/pg_isolation_regress &&
		-x $dir/pgxs/src/test/regress/pg_regress ]]
}

need "postgresql-server-dev-$PG_MAJOR" have_server_headers
need "postgresql-client-$PG_MAJOR" have_pgxs_makefile
need "postgresql-client-$PG_MAJOR" have_isolation_regress
need "postgresql-$PG_MAJOR" test -x "$PG_BIN_DEFAULT/postgres"
need libpq-dev test -f /usr/include/postgresql/libpq-fe.h
need libssl-dev test -f /usr/include/openssl/ssl.h
need gcc have gcc
# the C library's headers: gcc only recommends libc6-dev, and apt is run
# without recommends
need libc6-dev test -f /usr/include/stdio.h
need make have make
need pkg-config have pkg-config
need valgrind have valgrind
need gdb have gdb
need clang have clang
need libclang-rt-14-dev compgen -G '/usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a'
need curl have curl
need bc have bc
# json-c: libidem reads the stored headers with it, the HTTP example
# (examples/http) its JSON; the example also needs libmicrohttpd, and
# libcurl (below) for its mail API client
need libmicrohttpd-dev test -f /usr/include/microhttpd.h
need libjson-c-dev test -f /usr/include/json-c/json.h
need libipc-run-perl perl -MIPC::Run -e 1
need perl have prove
# tests in front of a connection pooler, and SQL fuzzing
need pgbouncer test -x /usr/sbin/pgbouncer
need sqlsmith have sqlsmith
# building Citus from source for the scale-out suite (test/suites/citus.sh);
# libcurl also for the HTTP example
need patch have patch
need liblz4-dev test -f /usr/include/lz4.h
need libzstd-dev test -f /usr/include/zstd.h
need libcurl4-openssl-dev test -f /usr/include/x86_64-linux-gnu/curl/curl.h
need libkrb5-dev test -f /usr/include/gssapi/gssapi.h

# One package may stand for two needs (the client package carries pgxs.mk,
# pg_regress and pg_isolation_regress): install each once.
if ((${#missing[@]} > 0)); then
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
fi

if [[ $DRY_RUN == 1 ]]; then
	if ((${#missing[@]} > 0)); then
		printf '%s\n' "${missing[@]}"
	fi
	echo "deps: dry run: ${#missing[@]} package(s) would be installed" >&2
	exit 0
fi

if ((${#missing[@]} == 0)); then
	echo "deps: everything needed is installed"
	exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
	command -v sudo >/dev/null 2>&1 ||
		{ echo "deps: missing ${missing[*]}, and not root and no sudo to install them" >&2; exit 1; }
	sudo=(sudo)
fi

# apt's chatter goes to a log, shown only when a step fails.
log=$(mktemp)
trap 'rm -f "$log"' EXIT

run_logged()
{
	"$@" >>"$log" 2>&1
}

give_up()
{
	cat "$log" >&2
	echo "deps: could not install ${missing[*]}" >&2
	exit 1
}

apt_update()
{
	run_logged "${sudo[@]}" apt-get update
}

apt_install()
{
	run_logged "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends "${missing[@]}"
}

updated=no
if [[ -z $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -60 2>/dev/null | head -n 1) ]]; then
	apt_update || give_up
	updated=yes
fi
if ! apt_install; then
	[[ $updated == no ]] || give_up
	apt_update || give_up
	updated=yes
	apt_install || give_up
fi

if [[ $updated == yes ]]; then
	echo "deps: ran apt-get update and installed ${missing[*]}"
else
	echo "deps: installed ${missing[*]} (package lists were fresh)"
fi
