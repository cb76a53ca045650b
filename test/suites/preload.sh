#!/usr/bin/env bash
#
# preload.sh: the extension in shared_preload_libraries, on a cluster of
# this suite's own: the counters behind idem_stats move as the calls say,
# idem_stats_reset zeroes them, and the purge worker deletes expired keys
# within two intervals in the database idem.purge_database names (every
# database: purge_launcher.sh).  Also measures what the worker costs
# concurrent reserves (reported, never a gate).
#
. "$(dirname "$0")/../lib.sh"

dir=$IDEM_TMP/cluster
cleanup() { bash "$IDEM_ROOT/tools/cluster.sh" stop "$dir" >/dev/null 2>&1; }
trap cleanup EXIT

CLUSTER_OPTS="shared_preload_libraries=idempotency idem.purge_interval=1s idem.purge_batch_size=500 idem.purge_database=postgres" \
	bash "$IDEM_ROOT/tools/cluster.sh" start "$dir" >/dev/null ||
	{ fail "start a preloaded cluster"; finish; exit 1; }
# shellcheck disable=SC1091
. "$dir/env"
# the purge worker purges the database "postgres" only
export PGDATABASE=postgres
psql_q -c 'CREATE EXTENSION idempotency'

counter() { psql_q -c "SELECT $1 FROM idem_stats"; }

check_eq "counters are available when preloaded" t "$(counter counters_available)"
check_eq "no note when preloaded" "" "$(counter note)"
psql_q -c 'SELECT idem_stats_reset()' >/dev/null

# fresh, replay, commit, release, mismatch
psql_q -c "SELECT fresh FROM idem_reserve('c1', 'h')" >/dev/null
psql_q -c "SELECT idem_commit('c1', 'h', 200, 'x'::bytea)" >/dev/null
psql_q -c "SELECT fresh FROM idem_reserve('c1', 'h')" >/dev/null
psql_q -c "SELECT fresh FROM idem_reserve('c1', 'h')" >/dev/null
psql_q -c "SELECT fresh FROM idem_reserve('c2')" -c "SELECT idem_release('c2')" >/dev/null
psql_q -c "SELECT idem_reserve('c1', 'other')" >/dev/null 2>&1
check_eq "reserves counted" 4 "$(counter reserves)"
check_eq "a fresh reserve increments fresh" 2 "$(counter fresh)"
check_eq "a replay increments replays" 2 "$(counter replays)"
check_eq "commits counted" 1 "$(counter commits)"
check_eq "releases counted" 1 "$(counter releases)"
check_eq "a hash mismatch increments mismatches" 1 "$(counter mismatches)"
check_eq "the mismatch is an error" 1 "$(counter errors)"

# a wait that times out, and a wait that ends with a replay
psql_q -c "SELECT fresh FROM idem_reserve('c3')" -c "SELECT pg_sleep(1.5)" \
	-c "SELECT idem_commit('c3', NULL, 200, 'three'::bytea)" >/dev/null &
owner=$!
sleep 0.3
psql_q -c "SELECT idem_reserve('c3', wait_timeout => '100ms')" >/dev/null 2>&1
got=$(psql_q -c "SELECT convert_from(body, 'UTF8') FROM idem_reserve('c3', wait_timeout => '10s')")
wait "$owner"
check_eq "the waiter got the owner's response" three "$got"
check_eq "a wait timeout is counted" 1 "$(counter wait_timeouts)"
check_eq "both waits are counted" 2 "$(counter waits)"
check_eq "wait time is summed" t "$(counter 'wait_time_ms > 100')"

# an owner terminated while a waiter waits: the waiter takes over
psql_q -c "SELECT fresh FROM idem_reserve('c4')" -c "SELECT pg_sleep(30)" >/dev/null 2>&1 &
owner=$!
sleep 0.3
psql_q -c "SELECT attempt FROM idem_reserve('c4', wait_timeout => '20s')" >"$IDEM_TMP/c4" 2>&1 &
waiter=$!
sleep 0.3
psql_q -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
	WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()" >/dev/null
wait "$waiter"
wait "$owner" 2>/dev/null
check_eq "the waiter took the key over with attempt 2" 2 "$(cat "$IDEM_TMP/c4")"
check_eq "the takeover is counted" 1 "$(counter takeovers)"

# location hints in shared memory: a key looked up on one connection is
# found by the next connection without reading the primary key's index
index_blocks()
{
	psql_q <<-SQL
		BEGIN;
		SELECT pg_stat_get_xact_blocks_fetched('idem_keys_pkey'::regclass) AS b \\gset
		SELECT state FROM idem_reserve('$1', 'h');
		SELECT pg_stat_get_xact_blocks_fetched('idem_keys_pkey'::regclass) - :b;
		COMMIT;
	SQL
}
psql_q -c "SELECT fresh FROM idem_reserve('h1', 'h')" \
	-c "SELECT idem_commit('h1', 'h', 200, 'hinted'::bytea)" >/dev/null
check_eq "hints: another connection replays without the index" "committed 0" \
	"$(index_blocks h1 | tr '\n' ' ' | sed 's/ $//')"
psql_q -c "DELETE FROM idem_keys WHERE key = 'h1'" >/dev/null
check_eq "hints: a key deleted by SQL is fresh again, found in the index" "in_flight" \
	"$(psql_q -c "SELECT state FROM idem_reserve('h1', 'h')" -c "SELECT idem_release('h1')" | head -n 1)"

# hints past the end of the table after VACUUM cut it down, left by
# connections that are gone: the look-ups go to the index
psql_q -c "SELECT count(*) FROM generate_series(1, 2000) i,
	LATERAL idem_reserve('ht-' || i, 'h') r, LATERAL idem_commit('ht-' || i, 'h', 200, 'x') c" >/dev/null
size_before=$(psql_q -c "SELECT pg_relation_size('idem_keys')")
psql_q -c "SELECT count(*) FROM generate_series(1, 2000) i, LATERAL idem_reserve('ht-' || i, 'h') r" >/dev/null
psql_q -c "DELETE FROM idem_keys WHERE key LIKE 'ht-%'" -c "VACUUM (INDEX_CLEANUP ON) idem_keys" >/dev/null
check_eq "hints: VACUUM truncated the table" t \
	"$(psql_q -c "SELECT pg_relation_size('idem_keys') < $size_before / 4")"
check_eq "hints: keys whose hints are past the end are absent" "0" \
	"$(psql_q -c "SELECT count(*) FROM generate_series(1, 2000) i, LATERAL idem_get('ht-' || i) g
		WHERE g.state IS NOT NULL" 2>&1)"
check_eq "hints: one of them reserved again is fresh" "true 1" \
	"$(psql_q -c "SELECT fresh || ' ' || attempt FROM idem_reserve('ht-2000', 'h')" -c "SELECT idem_release('ht-2000')" | head -n 1)"
check_eq "hints: idem.location_hints is shown" 262144 "$(psql_q -c 'SHOW idem.location_hints')"

# reset
psql_q -c 'SELECT idem_stats_reset()' >/dev/null
check_eq "reset zeroes the counters" "0 0 0" "$(counter "reserves || ' ' || replays || ' ' || takeovers")"
check_eq "reset time is recorded" t "$(counter 'stats_reset > now() - interval '"'"'1 minute'"'"'')"

# the purge worker: 2000 keys expiring in 1s go within two intervals
psql_q -c "SELECT count(*) FROM (SELECT idem_reserve('exp-' || g, ttl => '1 second')
	FROM generate_series(1, 2000) g) s" >/dev/null
psql_q -c "SELECT count(idem_commit('exp-' || g, NULL, 200, 'x'::bytea))
	FROM generate_series(1, 2000) g" >/dev/null
start=$(date +%s.%N)
left=-1
for _ in $(seq 1 60); do
	sleep 0.1
	left=$(psql_q -c "SELECT count(*) FROM idem_keys WHERE key LIKE 'exp-%'")
	[[ $left == 0 ]] && break
done
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
check_eq "the purge worker deleted all 2000 expired keys" 0 "$left"
# ttl 1s + two intervals of 1s
check_eq "within two intervals after expiry (${elapsed}s)" 1 "$(echo "$elapsed <= 3.5" | bc)"
check_eq "purged records are counted" t "$(counter 'purged >= 2000')"
check_eq "the purge launcher shows in pg_stat_activity" 1 \
	"$(psql_q -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'idempotency purge launcher'")"

# what the worker costs concurrent reserves: pgbench reserve+commit with
# 100k keys expiring meanwhile, worker on vs off (reported only)
cat >"$IDEM_TMP/rc.sql" <<'EOF'
\set k random(1, 1000000000)
SELECT fresh FROM idem_reserve('w' || :client_id || '-' || :k, ttl => '1 hour');
SELECT idem_commit('w' || :client_id || '-' || :k, NULL, 200, '\x7b7d'::bytea);
EOF
measure()
{
	psql_q -c "INSERT INTO idem_keys (scope, key, state, status, body, attempt, ttl,
		created_at, expires_at, committed_at)
		SELECT 'bulk', 'e' || g, 'committed', 200, '\x7b7d', 1, '1 second',
		       now(), now() + interval '1 second', now()
		  FROM generate_series(1, 100000) g" >/dev/null
	pgbench -n -M prepared -c 4 -j 2 -T 5 -f "$IDEM_TMP/rc.sql" 2>&1 |
		awk '/latency average/ {lat=$4} /^tps/ {tps=$3} END {printf "%s ms avg, %.0f tps", lat, tps}'
}
psql_q -d postgres -c "ALTER SYSTEM SET idem.purge_interval = 0" -c "SELECT pg_reload_conf()" >/dev/null
off=$(measure)
psql_q -c "SELECT idem_purge()" >/dev/null
psql_q -d postgres -c "ALTER SYSTEM SET idem.purge_interval = '1s'" -c "SELECT pg_reload_conf()" >/dev/null
on=$(measure)
echo "# reserve+commit, 4 clients, 100k keys expiring: worker off: $off; worker on (1s): $on"
ok "purge worker cost measured (off: $off; on: $on)"

finish
