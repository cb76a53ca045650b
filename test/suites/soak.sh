#!/usr/bin/env bash
#
# soak.sh: 100 libidem clients on 200 overlapping keys for SOAK_SECONDS,
# killed and cut off at random; then every committed response is checked
# against the handler executions behind it.
#
# The load is test/soak/soak.c (see its header for the operations): 100
# clients (SOAK_CLIENTS) reserve, commit, release, replay, get, probe with
# another request hash and purge on keys soak-0 .. soak-199 (SOAK_KEYS)
# with ttls of 0.5-2 s, so keys expire, are purged and reserved again all
# the time.  A client that owns a key runs its "handler" and then, in ONE
# transaction, idem_commit and the handler's side effect (a row in
# soak_effects, with the record's attempt, created_at and expires_at read
# back by idem_get inside the transaction).  So an owner killed after its
# handler ran but before its COMMIT leaves neither a response nor an
# effect, and "the handler ran at most once per committed response" is
# exact: effects and committed responses are the same set.  Meanwhile the
# master kills a client with SIGKILL about every 0.4 s (a new one takes
# its slot) and terminates a client's backend with pg_terminate_backend
# about every 0.6 s (the client reconnects and retries its commit,
# adopting its reservation when nobody took it over); every other victim
# is the owner of an in-flight key, the others are picked at random.  A
# monitor client, never killed, does the same operations and samples its
# backend's memory (pg_backend_memory_contexts) every second.
#
# Owners: SOAK_LEASE_PCT (30) percent of the client slots are lease owners
# (a lease of 1-3 s on the handle, its token recorded in soak_owners so
# that the master's kills and terminations find the owners of in-flight
# keys by token too); the others are session owners.  One in seven of a
# lease owner's handlers works for half to twice its lease, renewing it
# with idem_extend every third of it; about one in twenty stalls past its
# lease without renewing, so that its key is taken over and its commit
# fenced (IDEM_LEASE_LOST), or adopted when nobody came.  A killed lease
# owner's key stays in flight until its lease runs out, whatever happens
# to its session.
#
# Checks: for every key, consecutive effects are separated by the expiry
# of the earlier one's record (no second handler run while a committed
# response was live), and no reservation at all (even one whose handler
# was then killed or released) was made fresh while a committed response
# of its key was live; every effect has exactly one handler run (a "fresh"
# event) and every commit a client saw succeed has its effect; every
# response replayed or read names its key and has its effect (nothing
# replayed that was not committed with its effect); no live owner ever
# lost its reservation (commit/release answering anything but success; for
# a lease owner, commit, release or renewal refused before its lease, as it
# last renewed it, had run out); no key of a lease owner was taken over
# before that lease ran out;
# no error but the documented ones (IK409, IK422 only after a probe made
# the key's hash differ, IK404 only when adopting, 40001, and connection
# loss only for backends the master terminated); no backend crashed; no
# key is left stuck in flight (once the last lease ran out); the monitor's
# backend memory did not grow
# from the second quarter of the run (after warm-up) to the last quarter
# (highest samples of each; SOAK_MEM_SLACK, default 5%, + 256 kB).
#
# SOAK_SECONDS (default 25) bounds the load; `SOAK_SECONDS=300 bash
# test/suites/soak.sh` is the long run.  Needs room for SOAK_CLIENTS + 20
# connections: when the harness's cluster has less, the suite starts a
# cluster of its own (tools/cluster.sh, max_connections = clients + 100).
# SOAK_KEEP=1 keeps the database idem_soak for a look.

set -uo pipefail

# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SOAK_SECONDS=${SOAK_SECONDS:-25}
SOAK_CLIENTS=${SOAK_CLIENTS:-100}
SOAK_KEYS=${SOAK_KEYS:-200}
SOAK_SEED=${SOAK_SEED:-$(((RANDOM << 15) | RANDOM))}
SOAK_MEM_SLACK=${SOAK_MEM_SLACK:-5}		# percent, plus 256 kB
SOAK_LEASE_PCT=${SOAK_LEASE_PCT:-30}
export SOAK_SECONDS SOAK_CLIENTS SOAK_KEYS SOAK_SEED SOAK_LEASE_PCT
DB=idem_soak
work=$IDEM_TMP
own_cluster=

rm -rf "$work/logs"
mkdir -p "$work/logs"

cleanup()
{
	if [[ -n $own_cluster ]]; then
		bash "$IDEM_ROOT/tools/cluster.sh" stop "$own_cluster" >/dev/null 2>&1
	fi
}
trap cleanup EXIT

echo "# soak: $SOAK_CLIENTS clients ($SOAK_LEASE_PCT% lease owners), $SOAK_KEYS keys, ${SOAK_SECONDS}s, seed $SOAK_SEED"

# ---- the program --------------------------------------------------------------

if ! out=$(make -s --no-print-directory -C "$IDEM_ROOT/test/soak" 2>&1); then
	fail "test/soak/soak.c builds" "$out"
	finish
	exit 1
fi
ok "test/soak/soak.c builds"
SOAK=$IDEM_ROOT/test/soak/build/soak

# ---- a server with room for the clients ------------------------------------------

room()
{
	psql_q -d postgres -c "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')" 2>/dev/null
}
need=$((SOAK_CLIENTS + 20))
have=$(room) || have=0
if ((${have:-0} < need)); then
	echo "# the cluster has room for ${have:-0} connections, the soak needs $need: starting one of its own"
	own_cluster=$work/cluster
	if ! CLUSTER_OPTS="max_connections=$((SOAK_CLIENTS + 100))" \
		bash "$IDEM_ROOT/tools/cluster.sh" start "$own_cluster" >"$work/cluster.out" 2>&1; then
		fail "a cluster with max_connections = $((SOAK_CLIENTS + 100)) starts" "$(cat "$work/cluster.out")"
		own_cluster=
		finish
		exit 1
	fi
	# shellcheck disable=SC1091
	. "$own_cluster/env"
	CLUSTER_DIR=$own_cluster
	have=$(room) || have=0
fi
if ((${have:-0} >= need)); then
	ok "the server has room for $need connections ($have free)"
else
	fail "the server has room for $need connections" "only ${have:-0} free"
	finish
	exit 1
fi

q() { psql_q -d "$DB" "$@"; }

if ! out=$(psql_q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" 2>&1) ||
	! out=$(psql_q -d postgres -c "CREATE DATABASE $DB" 2>&1); then
	fail "create database $DB" "$out"
	finish
	exit 1
fi
check "extension and tables are created" q <<'SQL'
CREATE EXTENSION idempotency;
-- the handler's side effect: one row per committed response, written in
-- the transaction of its idem_commit
CREATE TABLE soak_effects (
	key text NOT NULL,
	uid text PRIMARY KEY,			-- slot.gen.seq of the handler run
	slot integer NOT NULL,
	gen integer NOT NULL,
	attempt integer,
	created_at timestamptz,			-- of the reservation (idem_get in the transaction)
	expires_at timestamptz,			-- of the committed record
	state text,						-- as idem_get saw it after idem_commit
	committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- one row per release of a handler run's reservation, written in the
-- transaction of its idem_release: a client killed once the release is
-- done but before it logs the "released" event leaves the row all the same
CREATE TABLE soak_releases (
	uid text PRIMARY KEY,			-- slot.gen.seq of the handler run
	key text NOT NULL
);
-- the lease owners' tokens, for the master to find who owns a key
CREATE TABLE soak_owners (
	token text PRIMARY KEY,
	slot integer NOT NULL,
	gen integer NOT NULL
);
-- every process's log, loaded afterwards
CREATE TABLE soak_events (
	kind text, slot integer, gen integer, key text, uid text,
	attempt integer, sqlstate text, detail text
);
SQL

log_file=
if [[ -n ${CLUSTER_DIR:-} && -r $CLUSTER_DIR/log/postgresql.log ]]; then
	log_file=$CLUSTER_DIR/log/postgresql.log
	log_start=$(stat -c %s "$log_file")
fi

# ---- the run ---------------------------------------------------------------------

start=$SECONDS
PGDATABASE=$DB timeout -k 10 $((SOAK_SECONDS + 60)) "$SOAK" run "$work/logs" >"$work/soak.out" 2>&1
rc=$?
elapsed=$((SECONDS - start))
cat "$work/soak.out"
check_eq "the soak program ended cleanly (every client exited 0 or was killed by it)" 0 "$rc"
# a client that did not stop: the last things it logged
sed -n 's/^soak: client \([0-9]*\) (generation \([0-9]*\),.*/\1-\2/p' "$work/soak.out" |
	while read -r c; do
		echo "# last events of client-$c:"
		tail -n 5 "$work/logs/client-$c.log" | sed 's/^/#   /'
	done

# the backends of killed clients go away once they notice
for ((i = 0; i < 100; i++)); do
	left=$(q -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'soak-%'")
	[[ $left == 0 ]] && break
	sleep 0.1
done
check_eq "no soak backend is left" 0 "$left"
if [[ $left != 0 ]]; then
	# what they are doing, and the locks they wait for or hold
	q -c "SELECT pid, application_name, state, wait_event_type, wait_event, now() - query_start AS running, left(query, 120) FROM pg_stat_activity WHERE application_name LIKE 'soak-%'" | sed 's/^/#   /'
	q -c "SELECT l.pid, l.locktype, l.mode, l.granted, l.objid, l.objsubid FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.application_name LIKE 'soak-%'" | sed 's/^/#   lock /'
	grep -h -E '^(exit|done)' "$work"/logs/master.log | sed 's/^/#   /'
fi

cat "$work"/logs/*.log >"$work/events.tsv"
check "the logs load" q -c "\\copy soak_events FROM pstdin WITH (FORMAT text, NULL '')" <"$work/events.tsv"
q -c "CREATE INDEX ON soak_events (kind, uid); ANALYZE soak_events; ANALYZE soak_effects" >/dev/null

got() { q -c "$1"; }

# ---- at most once -----------------------------------------------------------------

check_eq "every effect was written with its committed record (state seen in the transaction)" 0 \
	"$(got "SELECT count(*) FROM soak_effects WHERE state IS DISTINCT FROM 'committed' OR created_at IS NULL OR expires_at IS NULL")"

# Each handler run's reservation was made between its "created" (the
# start of the reserve's statement, server time) and "returned" (when the
# call returned, client time; same machine).  A reservation made fresh
# while another response of its key was live is a violation when the
# whole call fell inside that response's life: after its commit and before
# its expiry.  (created alone is not enough: a reserve that started just
# before an expiry may find the record already purged by a purge that
# started just after it, and rightly make a new one.)
q -c "CREATE TABLE soak_fresh AS SELECT key, uid, attempt,
	'epoch'::timestamptz + substring(detail FROM 'created=(-?[0-9]+)')::bigint * interval '1 microsecond' AS created,
	'epoch'::timestamptz + substring(detail FROM 'returned=(-?[0-9]+)')::bigint * interval '1 microsecond' AS returned
	FROM soak_events WHERE kind = 'fresh'; CREATE INDEX ON soak_fresh (key); ANALYZE soak_fresh" >/dev/null

bad=$(got "SELECT string_agg(format('%s: %s (reserved %s .. %s) while %s was live (%s .. %s)', key, uid, created, returned, prev_uid, prev_commit, prev_exp), E'\n') FROM (
	SELECT e.key, e.uid, f.created, f.returned,
		lag(e.uid) OVER w AS prev_uid, lag(e.committed_at) OVER w AS prev_commit,
		lag(e.expires_at) OVER w AS prev_exp
	FROM soak_effects e JOIN soak_fresh f USING (uid)
	WINDOW w AS (PARTITION BY e.key ORDER BY e.created_at, e.committed_at)) x
	WHERE prev_exp IS NOT NULL AND returned < prev_exp")
if [[ -z $bad ]]; then
	ok "per key, no handler committed again while an earlier response was live"
else
	fail "per key, no handler committed again while an earlier response was live" "$(head -n 10 <<<"$bad")"
fi
check_eq "no reservation was fresh while a committed response of its key was live (all handler runs, committed or not)" "" \
	"$(got "SELECT string_agg(format('%s: %s reserved %s .. %s while %s was live (%s .. %s)', f.key, f.uid, f.created, f.returned, e.uid, e.committed_at, e.expires_at), E'\n')
		FROM soak_fresh f JOIN soak_effects e ON e.key = f.key AND e.uid <> f.uid
		WHERE f.created >= e.committed_at AND f.returned < e.expires_at")"
check_eq "every effect comes from exactly one handler run of its key (a 'fresh' event)" 0 \
	"$(got "SELECT count(*) FROM soak_effects e WHERE (SELECT count(*) FROM soak_events v WHERE v.kind = 'fresh' AND v.uid = e.uid AND v.key = e.key) <> 1")"
check_eq "every commit a client saw succeed has its effect" 0 \
	"$(got "SELECT count(*) FROM soak_events v WHERE v.kind IN ('committed', 'adopted') AND NOT EXISTS (SELECT FROM soak_effects e WHERE e.uid = v.uid AND e.key = v.key)")"
check_eq "every release a client saw succeed has its row, and every row its handler run" 0 \
	"$(got "SELECT (SELECT count(*) FROM soak_events v WHERE v.kind = 'released' AND NOT EXISTS (SELECT FROM soak_releases r WHERE r.uid = v.uid AND r.key = v.key))
		+ (SELECT count(*) FROM soak_releases r WHERE NOT EXISTS (SELECT FROM soak_events v WHERE v.kind = 'fresh' AND v.uid = r.uid AND v.key = r.key))")"
check_eq "a released or rolled-back handler run left no effect" 0 \
	"$(got "SELECT count(*) FROM soak_events v JOIN soak_effects e USING (uid) WHERE v.kind IN ('released', 'rolled_back')")"
check_eq "every response replayed or read has its effect, under its key" 0 \
	"$(got "SELECT count(*) FROM soak_events v WHERE v.kind IN ('replay', 'get') AND v.uid <> '' AND NOT EXISTS (SELECT FROM soak_effects e WHERE e.uid = v.uid AND e.key = v.key)")"
check_eq "the effects' attempts match their handler runs' attempts" 0 \
	"$(got "SELECT count(*) FROM soak_effects e JOIN soak_events v ON v.kind = 'fresh' AND v.uid = e.uid WHERE v.attempt <> e.attempt")"

# Lease owners: when each one's lease ran out as far as it knew (its
# reservation's lease_expires_at, then each renewal's).  A reservation is
# a key's fresh events with one created_at (a lease owner that reserves
# its own key again, e.g. after its release was lost with its connection,
# gets it fresh again), made between its first call's created (the start
# of the statement, which may then wait) and returned.  A lease owner's
# reservation that was never committed nor released (no row in
# soak_effects nor soak_releases, each written in the transaction of the
# commit or release: the client's "released" event is lost when it is
# killed between its release and that event) was given up only when its
# lease ran out: no other reservation of its key may have been made fresh
# after it and returned before that.
q -c "CREATE TABLE soak_lease AS SELECT uid,
	'epoch'::timestamptz + max(substring(detail FROM 'lease_end=(-?[0-9]+)')::bigint) * interval '1 microsecond' AS lease_end
	FROM soak_events WHERE kind IN ('fresh', 'extended') AND detail LIKE '%lease_end=%' GROUP BY uid;
	CREATE UNIQUE INDEX ON soak_lease (uid);
	CREATE TABLE soak_resv AS SELECT f.key, f.created, min(f.returned) AS returned,
		min(f.attempt) AS attempt, string_agg(f.uid, ',') AS uids, max(l.lease_end) AS lease_end,
		bool_or(EXISTS (SELECT FROM soak_effects e WHERE e.uid = f.uid)
			 OR EXISTS (SELECT FROM soak_releases r WHERE r.uid = f.uid)) AS finished
	FROM soak_fresh f LEFT JOIN soak_lease l USING (uid) GROUP BY f.key, f.created;
	CREATE INDEX ON soak_resv (key, created);
	ANALYZE soak_resv" >/dev/null
check_eq "a lease owner's key was taken over (or made anew) only after its lease ran out" "" \
	"$(got "SELECT string_agg(format('%s: %s (attempt %s, reserved %s .. %s) while %s (reserved %s .. %s, never committed nor released) held its lease until %s',
			f.key, f.uids, f.attempt, f.created, f.returned, p.uids, p.created, p.returned, p.lease_end), E'\n')
		FROM soak_resv f JOIN soak_resv p ON p.key = f.key AND p.created <> f.created AND p.returned < f.created
		WHERE NOT p.finished AND p.lease_end IS NOT NULL AND f.returned <= p.lease_end")"
# the takeovers of a lease owner's key: the attempt before was a lease's
q -c "CREATE TABLE soak_takeover AS SELECT f.* FROM soak_resv f
	WHERE f.attempt > 1 AND (SELECT p.lease_end IS NOT NULL FROM soak_resv p
		WHERE p.key = f.key AND p.attempt = f.attempt - 1 AND p.returned < f.returned
		ORDER BY p.returned DESC LIMIT 1)" >/dev/null

violations=$(got "SELECT string_agg(format('%s slot %s gen %s key %s uid %s [%s] %s', kind, slot, gen, key, uid, sqlstate, detail), E'\n') FROM (SELECT * FROM soak_events WHERE kind = 'violation' LIMIT 20) v")
if [[ -z $violations ]]; then
	ok "no live owner lost its key, no response named another key"
else
	fail "no live owner lost its key, no response named another key" "$violations"
fi

# ---- errors ----------------------------------------------------------------------

errors=$(got "SELECT string_agg(format('%s x [%s] %s', n, sqlstate, detail), E'\n') FROM (
	SELECT sqlstate, left(regexp_replace(detail, '[0-9]+', 'N', 'g'), 160) AS detail, count(*) AS n
	FROM soak_events WHERE kind = 'error' AND slot >= 0
	  AND sqlstate NOT IN ('IK409', 'IK422', 'IK404', '40001')
	  AND detail NOT LIKE '%: connection: %' AND detail NOT LIKE 'reconnect failed:%'
	GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 10) e")
if [[ -z $errors ]]; then
	ok "no error but the documented ones (IK409, IK422, IK404, 40001, connection loss)"
else
	fail "no error but the documented ones (IK409, IK422, IK404, 40001, connection loss)" "$errors"
fi
check_eq "the master saw no error" 0 "$(got "SELECT count(*) FROM soak_events WHERE kind = 'error' AND slot < 0")"
# A probe that got the key fresh said so (probe_fresh) before releasing it;
# one killed before it could say anything left its "probe" unfinished.
check_eq "IK422 only for a probe's other hash, or on a key a probe held" 0 \
	"$(got "WITH probed AS (
		SELECT key FROM soak_events WHERE kind = 'probe_fresh'
		UNION
		SELECT key FROM soak_events WHERE kind IN ('probe', 'probe_fresh') OR detail = 'probe'
		GROUP BY slot, gen, key
		HAVING count(*) FILTER (WHERE kind = 'probe') > count(*) FILTER (WHERE kind <> 'probe'))
	SELECT count(*) FROM soak_events m WHERE m.kind = 'mismatch' AND m.detail <> 'probe'
	  AND (m.detail = 'hashed=0' OR m.key NOT IN (SELECT key FROM probed))")"
check_eq "a connection was lost only by a backend the master terminated" "" \
	"$(got "SELECT string_agg(DISTINCT format('slot %s gen %s: %s %s', slot, gen, sqlstate, detail), E'\n') FROM soak_events c
		WHERE c.kind = 'conn_lost' AND substring(c.detail FROM '^pid=([0-9]+)') NOT IN (
			SELECT substring(detail FROM '^pid=([0-9]+)') FROM soak_events WHERE kind = 'terminate')")"
if [[ -n $log_file ]]; then
	crashes=$(tail -c +"$((log_start + 1))" "$log_file" | grep -E 'terminated by signal|terminated abnormally|PANIC|reinitializing|TRAP' | head -n 5)
	check_eq "the server log shows no crashed backend" "" "$crashes"
fi

# ---- nothing stuck ----------------------------------------------------------------

# a lease owner killed near the end holds its key until its lease runs out
lease_left=$(q -c "SELECT least(30, greatest(0, extract(epoch FROM max(lease_expires_at) - clock_timestamp()))) + 0.05
	FROM idem_keys WHERE state = 'in_flight'")
[[ -n $lease_left ]] && sleep "$lease_left"

# (a statement_timeout: a key whose lock nobody may take must fail the
# check, not hang it)
stuck=$(q -v keys="$SOAK_KEYS" 2>&1 <<'SQL'
BEGIN;
SET LOCAL statement_timeout = '60s';
CREATE FUNCTION pg_temp.stuck(n integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
	stuck integer := 0;
BEGIN
	FOR k IN 0 .. n - 1 LOOP
		BEGIN
			PERFORM idem_reserve('soak-' || k, NULL, '1s', '0');
		EXCEPTION WHEN SQLSTATE 'IK409' THEN
			stuck := stuck + 1;
		END;
	END LOOP;
	RETURN stuck;
END
$$;
SELECT pg_temp.stuck(:keys);
ROLLBACK;
SQL
)
check_eq "afterwards no key is stuck: each is taken over or replayed at once (wait 0)" 0 "$stuck"

# ---- memory -----------------------------------------------------------------------

# the monitor's samples: "bytes contexts ops", one a second
mapfile -t mem < <(got "SELECT split_part(detail, ' ', 1) || ' ' || split_part(detail, ' ', 2) || ' ' || split_part(detail, ' ', 3) FROM soak_events WHERE kind = 'mem' ORDER BY split_part(detail, ' ', 3)::bigint")
n=${#mem[@]}
if ((n >= 8)); then
	# early: the highest sample of the second quarter (after warm-up);
	# late: the highest of the last quarter; memory oscillates by a few
	# kB from sample to sample as contexts are made and reset
	early=$(printf '%s\n' "${mem[@]:$((n / 4)):$((n / 4))}" | awk '$1 > m { m = $1; o = $3 } END { print m, o }')
	late=$(printf '%s\n' "${mem[@]:$((n - n / 4))}" | awk '$1 > m { m = $1; o = $3 } END { print m, o }')
	read -r early early_ops <<<"$early"
	read -r late late_ops <<<"$late"
	read -r first first_ctx _ <<<"${mem[0]}"
	read -r last last_ctx last_ops <<<"${mem[$((n - 1))]}"
	limit=$((early + early * SOAK_MEM_SLACK / 100 + 262144))
	echo "# monitor backend memory (sum of pg_backend_memory_contexts.total_bytes): first $first bytes ($first_ctx contexts), early max $early (around op $early_ops), late max $late (around op $late_ops), last $last ($last_ctx contexts, $last_ops ops); $n samples"
	if ((late <= limit)); then
		ok "the monitor's backend memory did not grow ($early -> $late bytes, limit $limit)"
	else
		fail "the monitor's backend memory did not grow" "early max $early bytes, late max $late (limit $limit)" \
			"$(printf '%s\n' "${mem[@]}" | awk 'NR % 5 == 1')"
	fi
else
	fail "the monitor sampled its backend's memory (at least 8 samples)" "$n samples"
fi

# ---- figures ----------------------------------------------------------------------

figures=$(got "SELECT format('%s operations (%s reserves: %s fresh of which %s takeovers, %s replays, %s IK409, %s IK422; %s gets, %s purges removing %s records); %s committed responses (%s adopted after a reconnect), %s releases, %s rolled back; %s kill -9, %s pg_terminate_backend, %s reconnects',
	(SELECT count(*) FROM soak_events WHERE kind IN ('fresh', 'replay', 'in_flight', 'mismatch', 'get', 'purge', 'probe_fresh', 'error')),
	(SELECT count(*) FROM soak_events WHERE kind IN ('fresh', 'replay', 'in_flight', 'mismatch', 'probe_fresh')),
	(SELECT count(*) FROM soak_events WHERE kind = 'fresh'),
	(SELECT count(*) FROM soak_events WHERE kind = 'fresh' AND attempt > 1),
	(SELECT count(*) FROM soak_events WHERE kind = 'replay'),
	(SELECT count(*) FROM soak_events WHERE kind = 'in_flight'),
	(SELECT count(*) FROM soak_events WHERE kind = 'mismatch'),
	(SELECT count(*) FROM soak_events WHERE kind = 'get'),
	(SELECT count(*) FROM soak_events WHERE kind = 'purge'),
	(SELECT coalesce(sum(detail::bigint), 0) FROM soak_events WHERE kind = 'purge'),
	(SELECT count(*) FROM soak_effects),
	(SELECT count(*) FROM soak_events WHERE kind = 'adopted'),
	(SELECT count(*) FROM soak_events WHERE kind = 'released'),
	(SELECT count(*) FROM soak_events WHERE kind = 'rolled_back'),
	(SELECT count(*) FROM soak_events WHERE kind = 'kill'),
	(SELECT count(*) FROM soak_events WHERE kind = 'terminate'),
	(SELECT count(*) FROM soak_events WHERE kind = 'conn_lost'))")
echo "# ${elapsed}s: $figures"
lease_figures=$(got "SELECT format('lease owners: %s lease reservations, %s renewals, %s stalls past the lease, %s kill -9 of a lease owner holding a key; %s takeovers of a lease owner''s key (each after its lease ran out), %s fenced commits, %s renewals or releases refused after the lease ran out, %s commits adopting an expired lease nobody took over, %s reservations fresh again to their owner',
	(SELECT count(*) FROM soak_events WHERE kind = 'fresh' AND detail LIKE '%lease_end=%'),
	(SELECT count(*) FROM soak_events WHERE kind = 'extended'),
	(SELECT count(*) FROM soak_events WHERE kind = 'stall'),
	(SELECT count(*) FROM soak_events WHERE kind = 'kill' AND detail LIKE '%owner=lease'),
	(SELECT count(*) FROM soak_takeover),
	(SELECT count(*) FROM soak_events WHERE kind = 'fenced'),
	(SELECT count(*) FROM soak_events WHERE kind = 'lease_lost'),
	(SELECT count(*) FROM soak_events s JOIN soak_effects e USING (uid) WHERE s.kind = 'stall'),
	(SELECT count(*) - count(DISTINCT (key, created)) FROM soak_fresh))")
echo "# $lease_figures"
if ((SOAK_LEASE_PCT >= 10)); then
	check_eq "lease owners reserved, renewed, stalled and had keys taken over" t \
		"$(got "SELECT (SELECT count(*) FROM soak_events WHERE kind = 'fresh' AND detail LIKE '%lease_end=%') > 0
			AND (SELECT count(*) FROM soak_events WHERE kind = 'extended') > 0
			AND (SELECT count(*) FROM soak_events WHERE kind = 'stall') > 0
			AND (SELECT count(*) FROM soak_takeover) > 0")"
fi
check_eq "some owners were killed, some backends terminated, some keys taken over" t \
	"$(got "SELECT (SELECT count(*) FROM soak_events WHERE kind = 'kill') > 0 AND (SELECT count(*) FROM soak_events WHERE kind = 'terminate') > 0 AND (SELECT count(*) FROM soak_events WHERE kind = 'fresh' AND attempt > 1) > 0")"
check_eq "every key was committed, keys were committed again after expiry" t \
	"$(got "SELECT count(DISTINCT key) = $SOAK_KEYS AND count(*) >= 2 * $SOAK_KEYS FROM soak_effects")"

if ((_lib_failed == 0)) && [[ -z ${SOAK_KEEP:-} ]]; then
	psql_q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1
elif ((_lib_failed > 0)); then
	echo "# kept: database $DB, logs in $work/logs (seed $SOAK_SEED)"
fi

finish
