#!/usr/bin/env bash
#
# purge_launcher.sh: the purge launcher and its per-database purge workers,
# on a preloaded cluster of this suite's own with idem.purge_interval = 1s.
# Databases created after the server started: the extension in "one" and
# "two", not in "three" (which has a table of its own named idem_keys), and
# in the template "tmpl".  The expired keys of one and two go within two
# intervals and their live keys stay; three and the template are left
# alone; DROP DATABASE succeeds at once while a purge worker is connected
# to the database; idem.purge_database = 'one' restricts purging to one, a
# name that matches nothing is logged once, and a template is purged when
# named.
#
. "$(dirname "$0")/../lib.sh"

dir=$IDEM_TMP/cluster
cleanup() { bash "$IDEM_ROOT/tools/cluster.sh" stop "$dir" >/dev/null 2>&1; }
trap cleanup EXIT

CLUSTER_OPTS="shared_preload_libraries=idempotency idem.purge_interval=1s" \
	bash "$IDEM_ROOT/tools/cluster.sh" start "$dir" >/dev/null ||
	{ fail "start a preloaded cluster"; finish; exit 1; }
# shellcheck disable=SC1091
. "$dir/env"
log=$dir/log/postgresql.log
export PGDATABASE=postgres

# reload with one setting changed (or reset, with DEFAULT)
set_conf()
{
	psql_q -c "ALTER SYSTEM SET $1 = $2" -c "SELECT pg_reload_conf()" >/dev/null
}

# N keys of prefix P in database DB, committed, living TTL
add_keys()
{
	psql_q -d "$1" -c "SELECT count(idem_commit(k, NULL, 200, 'x'::bytea))
		FROM (SELECT '$2-' || g AS k, idem_reserve('$2-' || g, ttl => '$4')
		        FROM generate_series(1, $3) g) s" >/dev/null
}

keys() { psql_q -d "$1" -c "SELECT count(*) FROM idem_keys WHERE key LIKE '$2-%'"; }

# waits up to $3 seconds for the keys of prefix $2 in $1 to be gone
wait_gone()
{
	local end=$((SECONDS + $3))
	while ((SECONDS < end)); do
		[[ $(keys "$1" "$2") == 0 ]] && return 0
		sleep 0.1
	done
	return 1
}

check_eq "the launcher runs, connected to no database" 1 \
	"$(psql_q -c "SELECT count(*) FROM pg_stat_activity
		WHERE backend_type = 'idempotency purge launcher' AND datid IS NULL")"

# three databases and a template made after the start
for db in one two three tmpl; do
	psql_q -c "CREATE DATABASE $db"
done
for db in one two tmpl; do
	psql_q -d "$db" -c 'CREATE EXTENSION idempotency'
done
psql_q -c "ALTER DATABASE tmpl IS_TEMPLATE true"
psql_q -d three -c "CREATE TABLE idem_keys (key text, expires_at timestamptz)" \
	-c "INSERT INTO idem_keys SELECT 'exp-' || g, now() - interval '1 day'
		FROM generate_series(1, 100) g"
psql_q -c 'SELECT idem_stats_reset()' -d one >/dev/null

for db in one two tmpl; do
	add_keys "$db" exp 500 '1 second'
	add_keys "$db" live 50 '1 hour'
done
start=$(date +%s.%N)
gone=0
for db in one two; do
	wait_gone "$db" exp 6 && gone=$((gone + 1))
done
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
check_eq "the expired keys of one and two are purged" 2 "$gone"
# ttl 1s + two intervals of 1s
check_eq "within two intervals after expiry (${elapsed}s)" 1 "$(echo "$elapsed <= 3.5" | bc)"
check_eq "their live keys are kept" "50 50" "$(keys one live) $(keys two live)"
check_eq "purged records are counted" t \
	"$(psql_q -d one -c 'SELECT purged >= 1000 FROM idem_stats')"
sleep 1
check_eq "the template is not purged unless named" 500 "$(keys tmpl exp)"
check_eq "the table of three named idem_keys is left alone" 100 \
	"$(psql_q -d three -c 'SELECT count(*) FROM idem_keys')"
check_eq "nothing in the log about three" 0 "$(grep -c '"three"' "$log")"

# DROP DATABASE while a purge worker is connected to it: a backlog of 50k
# expired keys purged 100 at a time with a pause of 20 ms keeps one busy
# for some 10 s; DROP DATABASE would wait 5 s for it and fail
psql_q -d two -c "INSERT INTO idem_keys (scope, key, state, status, body, attempt, ttl,
	created_at, expires_at, committed_at)
	SELECT 'bulk', 'bulk-' || g, 'committed', 200, 'x', 1, '1 second',
	       now(), now() - interval '1 second', now()
	  FROM generate_series(1, 50000) g"
set_conf idem.purge_batch_size 100
set_conf idem.purge_delay "'20ms'"
busy=0
for _ in $(seq 1 50); do
	busy=$(psql_q -c "SELECT count(*) FROM pg_stat_activity
		WHERE backend_type = 'idempotency purge worker' AND datname = 'two'")
	[[ $busy == 1 ]] && break
	sleep 0.1
done
check_eq "a purge worker is connected to two" 1 "$busy"
start=$(date +%s.%N)
check "DROP DATABASE two while it purges" psql_q -c "DROP DATABASE two"
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
check_eq "DROP DATABASE took under 2.5 s (${elapsed}s), not 5 s and an error" 1 "$(echo "$elapsed < 2.5" | bc)"
set_conf idem.purge_batch_size DEFAULT
set_conf idem.purge_delay DEFAULT
sleep 2.5
check_eq "the launcher still runs" 1 \
	"$(psql_q -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'idempotency purge launcher'")"

# idem.purge_database = 'one': one only
set_conf idem.purge_database "'one'"
psql_q -c "CREATE DATABASE four"
psql_q -d four -c 'CREATE EXTENSION idempotency'
add_keys one exp2 200 '1 second'
add_keys four exp2 200 '1 second'
wait_gone one exp2 6
check_eq "named: the expired keys of one are purged" 0 "$(keys one exp2)"
sleep 1.5
check_eq "named: those of four, created meanwhile, are kept" 200 "$(keys four exp2)"

# back to every database: four is purged from the next round on
set_conf idem.purge_database "''"
wait_gone four exp2 4
check_eq "every database again: four is purged" 0 "$(keys four exp2)"

# a name that matches nothing is logged once, however many rounds
set_conf idem.purge_database "'nosuch'"
sleep 3.2
check_eq "a database that does not exist is logged once" 1 \
	"$(grep -c 'database "nosuch" named by "idem.purge_database" does not exist' "$log")"

# a template is purged when named
set_conf idem.purge_database "'tmpl'"
wait_gone tmpl exp 4
check_eq "a named template is purged" "0 50" "$(keys tmpl exp) $(keys tmpl live)"

# a named database without the extension is logged once
set_conf idem.purge_database "'three'"
sleep 3.2
check_eq "a named database without the extension is logged once" 1 \
	"$(grep -c 'extension "idempotency" is not installed in database "three"' "$log")"
check_eq "the table of three is still left alone" 100 \
	"$(psql_q -d three -c 'SELECT count(*) FROM idem_keys')"

errors=$(grep -E '(ERROR|FATAL|PANIC|server process .* was terminated):' "$log")
check_eq "no error, crash or failed connection in the server log" "" "$errors"

finish
