# shellcheck shell=bash
# lib.sh: helpers for the suite scripts in test/suites/.  Source it:
#
#   . "$(dirname "$0")/../lib.sh"
#   check "the extension installs" psql_q -c 'CREATE EXTENSION idempotency'
#   [[ $(psql_q -c 'select 1') == 1 ]] && ok "select 1" || fail "select 1"
#   finish
#
#   ok DESC            count a pass and print "ok - DESC"
#   fail DESC [MORE]   count a failure and print "not ok - DESC" (and MORE)
#   check DESC CMD...  run CMD: ok when it exits 0, else fail with its output
#   check_eq DESC WANT GOT
#                      ok when the strings are equal, else fail showing both
#   skip DESC REASON   count a skip (not a pass) and print, TAP style,
#                      "ok - DESC # SKIP REASON": a check that could not run
#                      here (a tool or a right is missing)
#   skip_all REASON    the whole suite cannot run here: prints "1..0 # SKIP
#                      REASON", counts one skip, finishes and exits 0
#   psql_q ARGS...     psql -XAtq -v ON_ERROR_STOP=1 on the test cluster
#   finish             print "N passed, M failed, K skipped"; returns 1 if
#                      M > 0
#
# Environment: run-all.sh exports the cluster's PGHOST, PGPORT, PGUSER and
# PGDATABASE (postgres, where it has run CREATE EXTENSION idempotency),
# CLUSTER_DIR, and IDEM_TEST_USER (the unprivileged user clusters run as).
# Run by hand, the suite finds the cluster in $CLUSTER_DIR/env (default
# test/tmp/cluster/env, as left by `tools/cluster.sh start test/tmp/cluster`;
# create the extension there first).  Also set: IDEM_ROOT (the repository),
# IDEM_TMP (a scratch directory of the suite's own, reachable by
# IDEM_TEST_USER when run-all runs it) and PG_BINDIR, first in PATH.

IDEM_ROOT=${IDEM_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export IDEM_ROOT

if [[ -z ${PGHOST:-} ]]; then
	CLUSTER_DIR=${CLUSTER_DIR:-$IDEM_ROOT/test/tmp/cluster}
	if [[ -r $CLUSTER_DIR/env ]]; then
		# shellcheck disable=SC1091
		. "$CLUSTER_DIR/env"
	else
		echo "lib.sh: no cluster: run tools/cluster.sh start $CLUSTER_DIR" \
			"(or set PGHOST and friends)" >&2
	fi
fi

if [[ -z ${PG_BINDIR:-} ]]; then
	PG_BINDIR=$(pg_config --bindir 2>/dev/null) || PG_BINDIR=
	[[ -x $PG_BINDIR/psql ]] || PG_BINDIR=/usr/lib/postgresql/15/bin
fi
export PG_BINDIR
case ":$PATH:" in
	*":$PG_BINDIR:"*) ;;
	*) PATH=$PG_BINDIR:$PATH ;;
esac

if [[ -z ${IDEM_TMP:-} ]]; then
	IDEM_TMP=$IDEM_ROOT/test/tmp/$(basename "$0" .sh)
fi
mkdir -p "$IDEM_TMP"
export IDEM_TMP

_lib_passed=0
_lib_failed=0
_lib_skipped=0

ok()
{
	_lib_passed=$((_lib_passed + 1))
	printf 'ok - %s\n' "$1"
}

fail()
{
	_lib_failed=$((_lib_failed + 1))
	printf 'not ok - %s\n' "$1"
	if [[ $# -gt 1 ]]; then
		shift
		printf '%s\n' "$@" | sed 's/^/#   /'
	fi
	return 0
}

skip()
{
	_lib_skipped=$((_lib_skipped + 1))
	printf 'ok - %s # SKIP %s\n' "$1" "${2:-no reason given}"
}

skip_all()
{
	printf '1..0 # SKIP %s\n' "$1"
	skip "$(basename "$0" .sh)" "$1"
	finish
	exit
}

check()
{
	local desc=$1 out
	shift
	if out=$("$@" 2>&1); then
		ok "$desc"
	else
		fail "$desc" "command failed (exit $?): $*" "$(printf '%s\n' "$out" | tail -n 20)"
	fi
}

check_eq()
{
	if [[ $2 == "$3" ]]; then
		ok "$1"
	else
		fail "$1" "want: $2" "got:  $3"
	fi
}

psql_q()
{
	psql -XAtq -v ON_ERROR_STOP=1 "$@"
}

finish()
{
	echo "$_lib_passed passed, $_lib_failed failed, $_lib_skipped skipped"
	[[ $_lib_failed -eq 0 ]]
}
