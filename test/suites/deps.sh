#!/usr/bin/env bash
#
# deps.sh: tools/deps.sh finds what a machine lacks by the files that only
# the missing package provides.
#
# The case that once went wrong: a Debian 12 machine with the PostgreSQL
# server and client but no server headers.  There `pg_config --pgxs` names
# a pgxs.mk that exists (postgresql-client-15 ships it), yet postgres.h is
# absent, so the module cannot be built: deps.sh must still want
# postgresql-server-dev-15.  The machine is faked with a pg_config script
# (given as PG_CONFIG, and found first on PATH) whose --includedir-server
# points at an empty directory, or at one holding a postgres.h; deps.sh
# runs in its dry-run mode, which prints the packages it would install and
# installs nothing (an apt-get and a sudo that record their calls stand
# guard).  Needs no server.

set -uo pipefail

# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

DEPS=$IDEM_ROOT/tools/deps.sh
T=$IDEM_TMP
rm -rf "$T"
mkdir -p "$T/bin" "$T/headers-absent" "$T/headers-present" "$T/pgxs"
: >"$T/headers-present/postgres.h"
: >"$T/pgxs/pgxs.mk"

# The real pg_config, for every question but the two faked ones, so that
# the other needs are judged as on this machine.
real_pg_config=$(command -v pg_config 2>/dev/null) ||
	real_pg_config=/usr/lib/postgresql/15/bin/pg_config

# fake_pg_config PATH INCLUDEDIR: a pg_config whose server headers are in
# INCLUDEDIR and whose pgxs.mk exists
fake_pg_config()
{
	cat >"$1" <<-EOF
		#!/bin/sh
		case \$1 in
			--includedir-server) echo '$2' ;;
			--pgxs) echo '$T/pgxs/pgxs.mk' ;;
			*) [ -x '$real_pg_config' ] && exec '$real_pg_config' "\$@"; exit 1 ;;
		esac
	EOF
	chmod +x "$1"
}
fake_pg_config "$T/pg_config.absent" "$T/headers-absent"
fake_pg_config "$T/pg_config.present" "$T/headers-present"

# Installing anything would go through these: they record the call and
# fail.
for tool in apt-get sudo; do
	cat >"$T/bin/$tool" <<-EOF
		#!/bin/sh
		echo "$tool \$*" >>'$T/installer-calls'
		exit 1
	EOF
	chmod +x "$T/bin/$tool"
done

# dry_run NAME DIR ENV... : deps.sh's dry-run list, with DIR (if not
# empty) first on PATH after the installer guards and env(1) arguments ENV,
# in $T/NAME.out (stderr in $T/NAME.err); sets rc
dry_run()
{
	local name=$1 dir=$2
	shift 2
	env "$@" PATH="$T/bin:${dir:+$dir:}$PATH" bash "$DEPS" --dry-run \
		>"$T/$name.out" 2>"$T/$name.err"
	rc=$?
}

# has_pkg FILE PKG: PKG is one of the lines of FILE
has_pkg() { grep -qxF "$2" "$1"; }

# ---- PG_CONFIG names the fake --------------------------------------------------

rm -f "$T/installer-calls"
dry_run absent "" PG_CONFIG="$T/pg_config.absent"
check_eq "no server headers (PG_CONFIG): the dry run exits 0" 0 "$rc"
if has_pkg "$T/absent.out" postgresql-server-dev-15; then
	ok "no postgres.h, though pgxs.mk exists: postgresql-server-dev-15 is wanted"
else
	fail "no postgres.h, though pgxs.mk exists: postgresql-server-dev-15 is wanted" \
		"dry-run list: $(tr '\n' ' ' <"$T/absent.out")" "$(cat "$T/absent.err")"
fi

dry_run present "" PG_CONFIG="$T/pg_config.present"
check_eq "server headers there (PG_CONFIG): the dry run exits 0" 0 "$rc"
if has_pkg "$T/present.out" postgresql-server-dev-15; then
	fail "postgres.h present: postgresql-server-dev-15 is not wanted" \
		"dry-run list: $(tr '\n' ' ' <"$T/present.out")"
else
	ok "postgres.h present: postgresql-server-dev-15 is not wanted"
fi
check_eq "the headers decide nothing else: the two lists differ by the server headers only" \
	postgresql-server-dev-15 \
	"$(comm -23 <(sort "$T/absent.out") <(sort "$T/present.out") | tr '\n' ' ' | sed 's/ $//')"

# ---- the fake found on PATH, no PG_CONFIG ---------------------------------------

mkdir -p "$T/path-absent" "$T/path-present"
cp "$T/pg_config.absent" "$T/path-absent/pg_config"
cp "$T/pg_config.present" "$T/path-present/pg_config"
dry_run path-absent "$T/path-absent" -u PG_CONFIG
if ((rc == 0)) && has_pkg "$T/path-absent.out" postgresql-server-dev-15; then
	ok "pg_config from PATH, no postgres.h: postgresql-server-dev-15 is wanted"
else
	fail "pg_config from PATH, no postgres.h: postgresql-server-dev-15 is wanted" \
		"exit $rc, list: $(tr '\n' ' ' <"$T/path-absent.out")" "$(cat "$T/path-absent.err")"
fi
dry_run path-present "$T/path-present" -u PG_CONFIG
if ((rc == 0)) && ! has_pkg "$T/path-present.out" postgresql-server-dev-15; then
	ok "pg_config from PATH, postgres.h present: postgresql-server-dev-15 is not wanted"
else
	fail "pg_config from PATH, postgres.h present: postgresql-server-dev-15 is not wanted" \
		"exit $rc, list: $(tr '\n' ' ' <"$T/path-present.out")"
fi

# ---- DEPS_DRY_RUN=1 and what a dry run prints ------------------------------------

env PATH="$T/bin:$PATH" PG_CONFIG="$T/pg_config.absent" DEPS_DRY_RUN=1 \
	bash "$DEPS" >"$T/env.out" 2>"$T/env.err"
rc=$?
if ((rc == 0)) && cmp -s "$T/env.out" "$T/absent.out"; then
	ok "DEPS_DRY_RUN=1 gives the list --dry-run gives"
else
	fail "DEPS_DRY_RUN=1 gives the list --dry-run gives" "exit $rc" \
		"env: $(tr '\n' ' ' <"$T/env.out")" "arg: $(tr '\n' ' ' <"$T/absent.out")"
fi
bad_lines=$(grep -cvE '^[a-z0-9][a-z0-9.+-]+$' "$T/absent.out")
check_eq "stdout of a dry run holds package names only, one a line" 0 "$bad_lines"
if [[ -e $T/installer-calls ]]; then
	fail "a dry run calls neither apt-get nor sudo" "$(cat "$T/installer-calls")"
else
	ok "a dry run calls neither apt-get nor sudo"
fi

# Programs are found on PATH: with a PATH that holds only what deps.sh
# itself runs, the compiler, make and the tools the tests run are wanted.
mkdir -p "$T/minbin"
for tool in sort id; do
	ln -sf "$(command -v "$tool")" "$T/minbin/$tool"
done
cp "$T/pg_config.present" "$T/minbin/pg_config"
env PATH="$T/minbin" "$BASH" "$DEPS" --dry-run >"$T/minpath.out" 2>"$T/minpath.err"
rc=$?
for pkg in gcc make pkg-config sqlsmith; do
	if ((rc == 0)) && has_pkg "$T/minpath.out" "$pkg"; then
		ok "no $pkg program on PATH: $pkg is wanted"
	else
		fail "no $pkg program on PATH: $pkg is wanted" \
			"exit $rc, list: $(tr '\n' ' ' <"$T/minpath.out")" "$(cat "$T/minpath.err")"
	fi
done

bash "$DEPS" --no-such-option >"$T/usage.out" 2>&1
check_eq "an unknown option: exit 2" 2 "$?"

finish
