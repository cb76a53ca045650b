#!/usr/bin/env bash
#
# stress.sh: many clients, one key per round, the handler runs once.
#
# STRESS_CLIENTS psql processes (default 32) each play STRESS_ROUNDS rounds
# (default 50).  Round r has one key, "stress-r", shared by every client.
# A client reserves it (separate autocommit statements, as an application
# does); when it gets it fresh it runs the "handler": it inserts a row into
# a side table, holds the key a moment so that the others queue behind it,
# and commits a body naming itself, then lags a moment (so that the next
# round's key is raced for by the others rather than taken by the same
# client again).  Otherwise it replays what it got.
# Every fifth round the first owner's handler "fails" once: it releases the
# key instead, and one of the waiters takes over (a release hand-off under
# load); the failed client then reserves again like any retry.  All clients
# start together behind an advisory-lock gate.
#
# Then, for every round: exactly one side-table row (one execution), exactly
# one client saw the key fresh and it is the one that wrote the row, every
# client got the same body, naming that executor, and the stored record
# agrees.  No client may report an error.  Prints the timing figures and
# ends with "N passed, M failed"; exits non-zero on failure.
#
# It runs twice (STRESS_VARIANTS, default "plain,indexes"): on the key table
# as the extension makes it, and again with two indexes a DBA might add, a
# btree on expires_at and an expression index on lower(key), which make the
# extension write through the executor (src/idem_storage.c,
# check_key_table).  After each run amcheck's bt_index_check(index, true)
# checks every index of idem_keys, each entry against the heap and every
# heap tuple against the index; the added indexes are dropped afterwards.
# Each run has keys of its own ("stress-r", "stress-indexes-r").

set -uo pipefail

# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

CLIENTS=${STRESS_CLIENTS:-32}
ROUNDS=${STRESS_ROUNDS:-50}
DB=${STRESS_DB:-idem_stress}
HOLD=${STRESS_HOLD:-0.002}		# seconds the handler holds the key
AFTER=${STRESS_AFTER:-0.005}	# seconds the executor lags after its commit
LIMIT=${STRESS_TIME_LIMIT:-50}	# seconds before the clients are stopped
GATE_KEY=4242					# the start gate (an application advisory lock)
VARIANTS=${STRESS_VARIANTS:-plain,indexes}

work=$IDEM_TMP
rm -rf "$work"
mkdir -p "$work"

q() { psql_q -d "$DB" "$@"; }

client_pids=()
gate_pid=

cleanup()
{
	local p
	for p in "${client_pids[@]}" $gate_pid; do
		kill "$p" 2>/dev/null
	done
	exec 7>&- 2>/dev/null
}
trap cleanup EXIT

# --- the database -----------------------------------------------------------

admin_db=${PGDATABASE:-postgres}
if ! out=$(psql_q -d "$admin_db" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" 2>&1) ||
	! out=$(psql_q -d "$admin_db" -c "CREATE DATABASE $DB" 2>&1); then
	fail "create database $DB" "$out"
	finish
	exit 1
fi
check "extension and side tables are created" q <<'SQL'
CREATE EXTENSION idempotency;
-- one row per execution of the handler
CREATE TABLE stress_effects (round integer, client integer, attempt integer);
-- rounds whose first handler failed (and released the key)
CREATE TABLE stress_failures (round integer PRIMARY KEY);
-- what every client got, loaded from the clients' output afterwards
CREATE TABLE stress_results (client integer, round integer, kind text,
							 attempt integer, body text, waited_ms numeric,
							 done boolean);  -- idem_commit's or idem_release's result
SQL

# Room for the clients, the gate and the checks, beside whatever else is
# connected
room=$(q -c "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')" 2>&1)
if ! [[ $room =~ ^[0-9]+$ ]] || ((room < CLIENTS + 2)); then
	fail "the server has room for $CLIENTS clients" \
		"only $room connections are free; lower STRESS_CLIENTS or raise max_connections"
	finish
	exit 1
fi

# --- the clients' scripts ---------------------------------------------------

# reserve_into R: reserve round R's key into :fresh, :attempt, :body
reserve_into()
{
	printf "SELECT fresh, attempt, coalesce(convert_from(body, 'UTF8'), '') AS body, round(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000, 3) AS waited FROM idem_reserve('%s-%d', wait_timeout => '30s') \\\\gset\n" "$keys" "$1"
}

# handler R C: run the handler of round R as client C and say so
handler()
{
	local r=$1 c=$2
	cat <<SQL
INSERT INTO stress_effects VALUES ($r, $c, :attempt);
SELECT pg_sleep($HOLD) AS slept \\gset
SELECT idem_commit('$keys-$r', NULL, 200, convert_to('round $r by client $c', 'UTF8')) AS committed \\gset
\\echo $c|$r|fresh|:attempt|round $r by client $c|:waited|:committed
SELECT pg_sleep($AFTER) AS slept \\gset
SQL
}

replay() { printf '\\echo %d|%d|replay|:attempt|:body|:waited|\n' "$2" "$1"; }

# say LINE: print LINE as it is (psql meta-commands keep their backslash)
say() { printf '%s\n' "$1"; }

write_client()
{
	local c=$1 r
	{
		echo "SET application_name = 'idem-stress-$c';"
		echo "SELECT pg_advisory_lock_shared($GATE_KEY) AS gate \\gset"
		echo "SELECT pg_advisory_unlock_shared($GATE_KEY) AS gate \\gset"
		for ((r = 1; r <= ROUNDS; r++)); do
			reserve_into "$r"
			say "\\if :fresh"
			if ((r % 5 == 0)); then
				# the first owner of this round fails once and releases
				echo "WITH f AS (INSERT INTO stress_failures VALUES ($r) ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) = 1 AS failed FROM f \\gset"
				say "\\if :failed"
				echo "SELECT idem_release('$keys-$r') AS released \\gset"
				say "\\echo $c|$r|released|:attempt||:waited|:released"
				reserve_into "$r"
				say "\\if :fresh"
				handler "$r" "$c"
				say "\\else"
				replay "$r" "$c"
				say "\\endif"
				say "\\else"
				handler "$r" "$c"
				say "\\endif"
			else
				handler "$r" "$c"
			fi
			say "\\else"
			replay "$r" "$c"
			say "\\endif"
		done
	} >"$work/client-$c.sql"
}

# --- the run ----------------------------------------------------------------

got() { q -c "$1"; }

# stress_run VARIANT: write the clients' scripts, run them, check the
# outcome; keys are named after the variant
stress_run()
{
	local variant=$1 keys c p i queued start_ns end_ns deadline client_failures
	local elapsed errors figures
	keys=stress
	[[ $variant == plain ]] || keys=stress-$variant
	q -c "TRUNCATE stress_effects, stress_failures, stress_results" >/dev/null
	rm -f "$work"/client-* "$work/gate.fifo" "$work/gate.out" "$work/results.txt"

	for ((c = 1; c <= CLIENTS; c++)); do
		write_client "$c"
	done

	# The gate: a session of ours holds the advisory lock until every client
	# is connected and queued on it.
	mkfifo "$work/gate.fifo"
	psql -XAtq -v ON_ERROR_STOP=1 -d "$DB" <"$work/gate.fifo" >"$work/gate.out" 2>&1 &
	gate_pid=$!
	exec 7>"$work/gate.fifo"
	echo "SELECT pg_advisory_lock($GATE_KEY);" >&7
	say "\\echo locked" >&7
	for ((i = 0; i < 100; i++)); do
		grep -q locked "$work/gate.out" 2>/dev/null && break
		sleep 0.05
	done

	for ((c = 1; c <= CLIENTS; c++)); do
		psql -XAtq -v ON_ERROR_STOP=1 -d "$DB" -f "$work/client-$c.sql" \
			>"$work/client-$c.out" 2>"$work/client-$c.err" &
		client_pids+=($!)
	done

	queued=0
	for ((i = 0; i < 200; i++)); do
		queued=$(q -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $GATE_KEY AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())" 2>/dev/null) || queued=0
		((queued >= CLIENTS)) && break
		sleep 0.05
	done
	check_eq "$variant: all $CLIENTS clients connected and queued at the gate" "$CLIENTS" "$queued"

	start_ns=$(date +%s%N)
	echo "SELECT pg_advisory_unlock($GATE_KEY);" >&7
	exec 7>&-

	deadline=$((SECONDS + LIMIT))
	client_failures=0
	for p in "${client_pids[@]}"; do
		while kill -0 "$p" 2>/dev/null && ((SECONDS < deadline)); do
			sleep 0.05
		done
		if kill -0 "$p" 2>/dev/null; then
			kill "$p" 2>/dev/null
		fi
		wait "$p" || client_failures=$((client_failures + 1))
	done
	end_ns=$(date +%s%N)
	client_pids=()
	wait "$gate_pid" 2>/dev/null
	gate_pid=

	elapsed=$(awk -v ns=$((end_ns - start_ns)) 'BEGIN { printf "%.2f", ns / 1e9 }')

	# --- the checks -------------------------------------------------------------

	check_eq "$variant: every client exited 0" 0 "$client_failures"

	errors=$(cat "$work"/client-*.err)
	if [[ -z $errors ]]; then
		ok "$variant: no client reported an error"
	else
		fail "$variant: no client reported an error" "$(printf '%s\n' "$errors" | sort | uniq -c | sort -rn | head -n 10)"
	fi

	cat "$work"/client-*.out >"$work/results.txt"
	check "$variant: the clients' results load" q -c "\\copy stress_results FROM pstdin WITH (DELIMITER '|', NULL '')" <"$work/results.txt"

	check_eq "$variant: every client has one result per round" \
		"$((CLIENTS * ROUNDS)) $ROUNDS" \
		"$(got "SELECT count(*) || ' ' || count(DISTINCT round) FROM stress_results WHERE kind <> 'released'")"
	check_eq "$variant: no client has two results for a round" 0 \
		"$(got "SELECT count(*) FROM (SELECT client, round FROM stress_results WHERE kind <> 'released' GROUP BY 1, 2 HAVING count(*) > 1) d")"
	check_eq "$variant: one side-table row per round ($ROUNDS rows, one per key)" \
		"$ROUNDS $ROUNDS" \
		"$(got "SELECT count(*) || ' ' || count(DISTINCT round) FROM stress_effects")"
	check_eq "$variant: exactly one client got each round fresh" "$ROUNDS" \
		"$(got "SELECT count(*) FROM (SELECT round FROM stress_results WHERE kind = 'fresh' GROUP BY round HAVING count(*) = 1) d")"
	check_eq "$variant: the client that got it fresh is the one that ran the handler" 0 \
		"$(got "SELECT count(*) FROM (SELECT round, client FROM stress_results WHERE kind = 'fresh') r FULL JOIN stress_effects e USING (round, client) WHERE r.round IS NULL OR e.round IS NULL")"
	check_eq "$variant: every client got the same body per round" 0 \
		"$(got "SELECT count(*) FROM (SELECT round FROM stress_results WHERE kind <> 'released' GROUP BY round HAVING count(DISTINCT body) <> 1) d")"
	check_eq "$variant: that body names the executor" 0 \
		"$(got "SELECT count(*) FROM stress_results r JOIN stress_effects e USING (round) WHERE r.kind <> 'released' AND r.body <> format('round %s by client %s', e.round, e.client)")"
	check_eq "$variant: the stored records agree: committed, status 200, the executor's body" 0 \
		"$(got "SELECT count(*) FROM stress_effects e LEFT JOIN LATERAL idem_get('$keys-' || e.round) g ON true WHERE g.state IS DISTINCT FROM 'committed' OR g.status IS DISTINCT FROM 200 OR convert_from(g.body, 'UTF8') IS DISTINCT FROM format('round %s by client %s', e.round, e.client)")"
	check_eq "$variant: every round's first handler failed once and released ($((ROUNDS / 5)) rounds)" \
		"$((ROUNDS / 5)) $((ROUNDS / 5))" \
		"$(got "SELECT (SELECT count(*) FROM stress_failures) || ' ' || (SELECT count(*) FROM stress_results WHERE kind = 'released')")"
	check_eq "$variant: every idem_commit and idem_release of an owner returned true" 0 \
		"$(got "SELECT count(*) FROM stress_results WHERE kind IN ('fresh', 'released') AND done IS NOT TRUE")"
	check_eq "$variant: a release is not a takeover: every execution is attempt 1" 0 \
		"$(got "SELECT count(*) FROM stress_effects WHERE attempt <> 1")"
	check_eq "$variant: no key is left in flight, no key lock left held" "0 0" \
		"$(got "SELECT (SELECT count(*) FROM idem_keys WHERE state = 'in_flight') || ' ' || (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 18756)")"

	figures=$(got "SELECT format('%s executions (by %s distinct clients), %s replays (%s of them waited 1 ms or more, longest %s ms), %s releases',
		count(*) FILTER (WHERE kind = 'fresh'),
		count(DISTINCT client) FILTER (WHERE kind = 'fresh'),
		count(*) FILTER (WHERE kind = 'replay'),
		count(*) FILTER (WHERE kind = 'replay' AND waited_ms >= 1),
		round(max(waited_ms) FILTER (WHERE kind = 'replay'), 1),
		count(*) FILTER (WHERE kind = 'released'))
		FROM stress_results")
	echo "# $variant: $CLIENTS clients x $ROUNDS rounds in ${elapsed}s" \
		"($(awk -v n=$((CLIENTS * ROUNDS)) -v s="$elapsed" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }') requests/s): $figures"
}

# The indexes a DBA might add to the key table
extra_indexes="stress_idem_keys_expires_at stress_idem_keys_lower_key"
add_indexes()
{
	q -c "CREATE INDEX stress_idem_keys_expires_at ON idem_keys (expires_at)" \
		-c "CREATE INDEX stress_idem_keys_lower_key ON idem_keys (lower(key))"
}
drop_indexes()
{
	local ix
	for ix in $extra_indexes; do
		q -c "DROP INDEX IF EXISTS $ix" || return 1
	done
}

# amcheck on every index of idem_keys: "name ok" per index, or the error
check_indexes()
{
	local variant=$1 out want
	want=$(q -c "SELECT string_agg(c.relname || ' ok', ', ' ORDER BY c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'idem_keys'::regclass")
	out=$(q -c "SELECT string_agg(c.relname || ' ok', ', ' ORDER BY c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid, LATERAL bt_index_check(c.oid, true) WHERE i.indrelid = 'idem_keys'::regclass" 2>&1)
	check_eq "$variant: amcheck finds every index of idem_keys intact (bt_index_check, heapallindexed: ${want//' ok'/})" "$want" "$out"
}

have_amcheck=no
if out=$(q -c "SET client_min_messages = warning" -c "CREATE EXTENSION IF NOT EXISTS amcheck" 2>&1); then
	have_amcheck=yes
fi

IFS=, read -ra variants <<<"$VARIANTS"
for variant in "${variants[@]}"; do
	case $variant in
		plain)
			stress_run plain
			;;
		indexes)
			if ! out=$(add_indexes 2>&1); then
				fail "indexes: a btree on expires_at and one on lower(key) are added to idem_keys" "$out"
				continue
			fi
			ok "indexes: a btree on expires_at and one on lower(key) are added to idem_keys"
			stress_run indexes
			;;
		*)
			fail "STRESS_VARIANTS names known variants" "unknown variant $variant (plain, indexes)"
			continue
			;;
	esac
	if [[ $have_amcheck == yes ]]; then
		check_indexes "$variant"
	else
		skip "$variant: amcheck finds every index of idem_keys intact" "CREATE EXTENSION amcheck failed: $out"
	fi
	if [[ $variant == indexes ]]; then
		check "indexes: the added indexes are dropped again" drop_indexes
	fi
done

if ((_lib_failed == 0)) && [[ -z ${STRESS_KEEP:-} ]]; then
	psql_q -d "$admin_db" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1
fi

finish
