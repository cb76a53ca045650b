#!/usr/bin/env bash
#
# demo.sh: the demo program of `make demo` (examples/demo) against the
# suite's cluster, in databases of its own.
#
# Builds it (warnings are errors), runs it and checks its exit code, the
# key lines of its report (one execution, identical responses, one charge
# row, the takeover with attempt 2, the mismatch) and what it left in the
# database; runs it again in the same database with other settings, and
# under valgrind (no error, no leak); and
# checks that it fails when it should: exit 2 without the extension, exit 1
# with "[FAILED]" when the database holds two charge rows for a key.

# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

DEMO_DIR=$IDEM_ROOT/examples/demo
DEMO=$DEMO_DIR/build/demo
T=$IDEM_TMP
DB=idem_demo_$$
DB_NOEXT=idem_demo_noext_$$
DB_BROKEN=idem_demo_broken_$$

if ! out=$(make -s --no-print-directory -C "$DEMO_DIR" 2>&1); then
	fail "the demo builds with -Wall -Wextra -Werror" "$out"
	finish
	exit 1
fi
ok "the demo builds with -Wall -Wextra -Werror"

# only libidem's public header and libpq's client header
includes=$(sed -n 's/^#include [<"]\(.*\)[>"].*/\1/p' "$DEMO_DIR/demo.c" |
	grep -v -x -e idem.h -e libpq-fe.h |
	grep -v -x -E '(errno|inttypes|pthread|signal|stdarg|stdio|stdlib|string|time|unistd|poll)\.h|sys/(types|wait)\.h' || true)
check_eq "the demo includes idem.h, libpq-fe.h and libc headers only" "" "$includes"

cleanup()
{
	local db
	for db in "$DB" "$DB_NOEXT" "$DB_BROKEN"; do
		psql_q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
	done
}
trap cleanup EXIT

# run_demo OUT ARGS...: runs the demo with stdout and stderr in OUT; sets rc
run_demo()
{
	local out=$1
	shift
	timeout -k 5 120 "$DEMO" "$@" >"$out" 2>&1
	rc=$?
}

# has OUT DESC PATTERN: ok when a line of OUT matches the extended regex
has()
{
	if grep -qE -- "$3" "$1"; then
		ok "$2"
	else
		fail "$2" "no line matches: $3" "$(cat "$1")"
	fi
}

# ---- usage ---------------------------------------------------------------------

run_demo "$T/help" -h
if [[ $rc == 0 ]] && grep -q '^usage: demo' "$T/help"; then
	ok "demo -h prints its usage"
else
	fail "demo -h prints its usage" "exit $rc" "$(cat "$T/help")"
fi
for args in "-n 1" "-n 101" "-s -1" "-x" "a b"; do
	# shellcheck disable=SC2086 # the words are the arguments
	run_demo "$T/out" $args
	check_eq "bad usage exits 2: demo $args" 2 "$rc"
done

# ---- without the extension ---------------------------------------------------

psql_q -d postgres -c "CREATE DATABASE $DB_NOEXT" >/dev/null
run_demo "$T/noext" "dbname=$DB_NOEXT"
if [[ $rc == 2 ]] && grep -q 'CREATE EXTENSION idempotency' "$T/noext"; then
	ok "without the extension: exit 2, saying to create it"
else
	fail "without the extension: exit 2, saying to create it" "exit $rc" "$(cat "$T/noext")"
fi

# ---- the demo as make demo runs it ---------------------------------------------

psql_q -d postgres -c "CREATE DATABASE $DB" >/dev/null
psql_q -d "$DB" -c "CREATE EXTENSION idempotency"
run_demo "$T/run1" "dbname=$DB"
check_eq "the demo exits 0" 0 "$rc"
has "$T/run1" "report: 20 concurrent requests" '^1\. 20 concurrent charge requests, same key, same body$'
has "$T/run1" "one execution: 1 fresh, 19 replays" 'handler ran once: 1 fresh, 19 replays, 0 errors +\[ok\]$'
has "$T/run1" "20 identical responses" 'identical responses \(status, headers, [0-9]+ body bytes\): 20 of 20 +\[ok\]$'
has "$T/run1" "one charge row for scenario 1" 'charge rows for the key in the database: 1 +\[ok\]$'
has "$T/run1" "the waiters' wake times are reported" '^    waiters: 19 woke [0-9.]+ ms \(median\) / [0-9.]+ ms \(max\) after the COMMIT'
has "$T/run1" "the child was killed before its commit" '^    kill -9 [0-9]+: killed before its commit$'
has "$T/run1" "the retry takes over with attempt 2" '^    retry: reserve -> fresh, attempt 2, [0-9.]+ ms after the kill'
has "$T/run1" "the final record: committed, attempt 2" '^    final record: committed, attempt 2, status 201'
has "$T/run1" "one charge row after the kill, by attempt 2" 'charge rows for the key: 1 \(attempt 2; the killed one rolled back\) +\[ok\]$'
has "$T/run1" "another body: mismatch, IK422, 422" '^    reserve -> mismatch, SQLSTATE IK422, HTTP 422: '
has "$T/run1" "all 10 checks passed" '^demo: all 10 checks passed in [0-9.]+ s$'
if grep -q 'FAILED' "$T/run1"; then
	fail "no check failed" "$(grep FAILED "$T/run1")"
else
	ok "no check failed"
fi

# the waiters wake within milliseconds of the owner's commit (generous
# bound: a loaded CI machine)
max_wake=$(sed -nE 's/^    waiters: [0-9]+ woke [0-9.]+ ms \(median\) \/ ([0-9.]+) ms \(max\).*/\1/p' "$T/run1")
if [[ -n $max_wake ]] && (($(echo "$max_wake < 1000" | bc))); then
	ok "the last waiter woke within a second of the commit ($max_wake ms)"
else
	fail "the last waiter woke within a second of the commit" "max: ${max_wake:-none}"
fi

# what it left in the database
key1=$(sed -nE 's/^    key (charge-[0-9a-f]+-1) .*/\1/p' "$T/run1")
key2=$(sed -nE 's/^    key (charge-[0-9a-f]+-2)$/\1/p' "$T/run1")
check_eq "scenario 1's key: committed by attempt 1, status 201" "committed|1|201" \
	"$(psql_q -d "$DB" -c "SELECT state, attempt, status FROM idem_get('$key1', 'demo')")"
check_eq "scenario 2's key: committed by attempt 2, status 201" "committed|2|201" \
	"$(psql_q -d "$DB" -c "SELECT state, attempt, status FROM idem_get('$key2', 'demo')")"
check_eq "charges: one row per key, the second by attempt 2" "$key1|1|1
$key2|1|2" \
	"$(psql_q -d "$DB" -c "SELECT idem_key, count(*), max(attempt) FROM charges GROUP BY idem_key ORDER BY idem_key")"
stored=$(psql_q -d "$DB" -c "SELECT convert_from(body, 'UTF8') FROM idem_get('$key1', 'demo')")
if [[ -n $stored ]] && grep -qxF "    response: 201 $stored" "$T/run1"; then
	ok "the report shows the stored response"
else
	fail "the report shows the stored response" "stored: $stored" "$(grep response: "$T/run1")"
fi
# (a closed connection's backend takes a moment to go)
for ((i = 0; i < 50; i++)); do
	left=$(psql_q -d postgres -c "SELECT count(*) FROM pg_stat_activity WHERE datname = '$DB'")
	[[ $left == 0 ]] && break
	sleep 0.1
done
check_eq "no session is left in the demo's database" 0 "$left"

# ---- again, in the same database, with more requests -------------------------

run_demo "$T/run2" -n 32 -s 100 "dbname=$DB"
check_eq "a second run in the same database (32 requests, 100 ms) exits 0" 0 "$rc"
has "$T/run2" "second run: 1 fresh, 31 replays" 'handler ran once: 1 fresh, 31 replays, 0 errors +\[ok\]$'
has "$T/run2" "second run: 32 identical responses" ': 32 of 32 +\[ok\]$'
check_eq "charges after two runs: four keys, one row each" "4|4" \
	"$(psql_q -d "$DB" -c "SELECT count(*), count(DISTINCT idem_key) FROM charges")"

# ---- under valgrind ------------------------------------------------------------

if command -v valgrind >/dev/null 2>&1; then
	timeout -k 5 300 valgrind --error-exitcode=99 --leak-check=full \
		--show-leak-kinds=definite,indirect,possible \
		--errors-for-leak-kinds=definite,indirect,possible --quiet \
		"$DEMO" -n 4 -s 50 "dbname=$DB" >"$T/valgrind" 2>&1
	rc=$?
	if [[ $rc == 0 ]] && grep -q '^demo: all 10 checks passed' "$T/valgrind"; then
		ok "the demo runs clean under valgrind (no error, no leak)"
	else
		fail "the demo runs clean under valgrind (no error, no leak)" "exit $rc" \
			"$(tail -n 40 "$T/valgrind")"
	fi
else
	fail "the demo runs clean under valgrind" "valgrind is not installed (tools/deps.sh installs it)"
fi

# ---- the demo's checks fail when the database disagrees ----------------------

# a trigger that writes every charge twice: the demo must notice
psql_q -d postgres -c "CREATE DATABASE $DB_BROKEN" >/dev/null
psql_q -d "$DB_BROKEN" >/dev/null <<'EOF'
CREATE EXTENSION idempotency;
CREATE TABLE charges (id bigserial PRIMARY KEY, idem_key text NOT NULL,
	amount integer NOT NULL, attempt integer NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION charge_twice() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF pg_trigger_depth() = 1 THEN
		INSERT INTO charges (idem_key, amount, attempt)
			VALUES (NEW.idem_key, NEW.amount, NEW.attempt);
	END IF;
	RETURN NULL;
END $$;
CREATE TRIGGER charge_twice AFTER INSERT ON charges
	FOR EACH ROW EXECUTE FUNCTION charge_twice();
EOF
run_demo "$T/broken" -n 4 -s 50 "dbname=$DB_BROKEN"
check_eq "with two rows per charge the demo exits 1" 1 "$rc"
has "$T/broken" "... and marks the row count [FAILED]" 'charge rows for the key in the database: 2 +\[FAILED\]$'
has "$T/broken" "... and says how many checks failed" '^demo: [0-9]+ of 10 checks FAILED$'

finish
