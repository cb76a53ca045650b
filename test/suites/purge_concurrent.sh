#!/usr/bin/env bash
#
# purge_concurrent.sh: two purges at once, each from its own scan position,
# each deleting batch after batch in one transaction (idem_purge() from
# SQL), with idem.purge_delay between the batches so that they overlap.
#
# The key table holds, in this order, 3000 records A (expiring in a few
# seconds), 3000 records B (expired) and, later, 3000 records C (expired).
# Session P1 purges B first (A has not expired yet): its scan position is
# then past B, at C.  Once A has expired, P1 and a new session P2 (whose
# scan starts at the beginning of the table, at A) both run idem_purge()
# behind a gate: P1 deletes C and then wraps around to A, while P2 deletes
# A and then goes on to C.  Had a purge waited for the rows the other had
# locked, each would wait for the other (a deadlock, 40P01 for one of
# them); a purge takes only the rows no one else has locked, so both end,
# and between them every expired record goes, each once.

set -uo pipefail

# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

DB=idem_purge_concurrent
GATE=4343
work=$IDEM_TMP
rm -rf "$work"
mkdir -p "$work"

PGOPTIONS="-c client_min_messages=warning" psql_q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null ||
	{ fail "a database of its own"; finish; exit; }
cleanup()
{
	jobs -p | xargs -r kill 2>/dev/null
	wait 2>/dev/null
	psql_q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
}
trap cleanup EXIT
psql_q -d $DB -c 'CREATE EXTENSION idempotency'

# committed records: PREFIX, count, ttl
make_records()
{
	psql_q -d $DB -c "DO \$\$
		BEGIN
			FOR i IN 1..$2 LOOP
				PERFORM idem_reserve('$1-' || i, ttl => '$3');
				PERFORM idem_commit('$1-' || i, NULL, 200, 'x'::bytea);
			END LOOP;
		END \$\$"
}

expired() { psql_q -d $DB -c "SELECT count(*) FROM idem_keys WHERE expires_at <= now() AND key LIKE '$1-%'"; }

# the sessions holding (granted) or waiting for (not granted) the gate
at_gate() { psql_q -d $DB -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $GATE AND $1 granted"; }

# wait_for TENTHS COMMAND...: until COMMAND succeeds, at most TENTHS / 10 s
# (COMMAND runs anew each time: a function, not an expansion)
wait_for()
{
	local n=$1
	shift
	for _ in $(seq "$n"); do
		"$@" && return 0
		sleep 0.1
	done
	return 1
}

# purge NAME [SQL]: a session that runs SQL, then waits at the gate and
# purges with a pause between its batches (its output in $work/NAME.out)
purge()
{
	{
		[[ -n ${2:-} ]] && echo "$2"
		echo "SELECT pg_advisory_lock_shared($GATE);"
		echo "SET idem.purge_delay = '300ms';"
		echo "SELECT 'second', idem_purge();"
	} >"$work/$1.sql"
	psql -XAt -v ON_ERROR_STOP=1 -d $DB -f "$work/$1.sql" >"$work/$1.out" 2>"$work/$1.err"
}

# the gate, held until both purges wait behind it
psql_q -d $DB -c "SELECT pg_advisory_lock($GATE), pg_sleep(600)" >/dev/null 2>&1 &
gate_pid=$!
gate_held() { [[ $(at_gate '') == 1 ]]; }
wait_for 100 gate_held

start=$(date +%s.%N)
make_records a 3000 '10 seconds'
make_records b 3000 '1 millisecond'
sleep 0.1

# P1: purges B, then waits at the gate and purges again
purge p1 "SELECT 'first', idem_purge(3000);" &
p1_pid=$!
b_purged() { [[ $(psql_q -d $DB -c "SELECT count(*) FROM idem_keys WHERE key LIKE 'b-%'") == 0 ]]; }
wait_for 200 b_purged
check_eq "P1's first purge deletes the 3000 expired records B, A not yet expired" \
	"0|3000" "$(psql_q -d $DB -c "SELECT count(*) FILTER (WHERE key LIKE 'b-%'), count(*) FILTER (WHERE key LIKE 'a-%') FROM idem_keys")"
make_records c 3000 '1 millisecond'

# P2: a new session, whose scan starts at the beginning of the table
purge p2 &
p2_pid=$!

# open the gate once A has expired and both wait at it
both_at_gate() { [[ $(at_gate NOT) == 2 && $(expired a) == 3000 ]]; }
wait_for 300 both_at_gate
waiting=$(at_gate NOT)
check_eq "both purges wait at the gate, A has expired" "2 3000" "$waiting $(expired a)"
kill "$gate_pid" 2>/dev/null
psql_q -d $DB -c "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = $GATE AND granted AND mode = 'ExclusiveLock'" >/dev/null

rc1=0 rc2=0
wait "$p1_pid" || rc1=$?
wait "$p2_pid" || rc2=$?
check_eq "both purges end without an error" "0 0 ||" \
	"$rc1 $rc2 |$(tr '\n' ' ' <"$work/p1.err")|$(tr '\n' ' ' <"$work/p2.err")"
n1=$(sed -n 's/^second|//p' "$work/p1.out")
n2=$(sed -n 's/^second|//p' "$work/p2.out")
check_eq "between them they delete the 6000 expired records A and C, each once" \
	6000 "$((${n1:-0} + ${n2:-0}))"
check_eq "no expired record is left" 0 \
	"$(psql_q -d $DB -c "SELECT count(*) FROM idem_keys WHERE expires_at <= now()")"
if ((${n1:-0} > 0 && ${n2:-0} > 0)); then
	ok "both purges deleted records (P1 $n1, P2 $n2): their batches overlapped"
else
	fail "both purges deleted records" "P1 $n1, P2 $n2"
fi
echo "# purges: P1 $n1 records, P2 $n2 records, $(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)") s in all"

finish
