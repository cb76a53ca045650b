#!/usr/bin/env bash
#
# citus.sh: the extension on a Citus cluster of its own, a coordinator and
# two workers, every call made on the coordinator.
#
# Citus is not packaged by Debian: when it is not installed, the suite
# builds it from the source tarball CITUS_SOURCE (with the patch
# CITUS_PATCH, if given) and installs it.  Without either, the whole suite
# is skipped, saying why.  .ci/run passes the release kept beside the
# project.
#
# What it checks, after idem_distribute() (twice: the second is a no-op):
#   - records live in the shards: the coordinator counts them, the shell
#     tables on the workers are empty, and each record sits in the shard
#     that Citus's own routing assigns to its key, on that shard's node;
#   - replays are byte for byte (every byte value, headers);
#   - IK422, IK404, IK409 and the class-22 checks (a NULL key too, which
#     must not reach Citus's routing) answer from the coordinator;
#   - every reservation is lease-owned; a lease that runs out is taken over
#     (attempt 2) and the old token is fenced;
#   - 16 concurrent callers of one key, for a key on each worker: one
#     execution, every caller answered with its response;
#   - the one-transaction pattern with a table co-located by the key:
#     exactly once, and a rolled-back transaction leaves nothing;
#   - idem_purge on the coordinator purges the shards of every worker;
#   - a shard moved to the other worker keeps its committed keys.
# Knobs: CITUS_SOURCE, CITUS_PATCH, CITUS_CALLERS (16).

set -uo pipefail

# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

CALLERS=${CITUS_CALLERS:-16}
work=$IDEM_TMP
CLUSTER_SH=$IDEM_ROOT/tools/cluster.sh
nodes=(coord w1 w2)
declare -A port

cleanup()
{
	local n
	for n in "${nodes[@]}"; do
		bash "$CLUSTER_SH" stop "$work/$n" >/dev/null 2>&1
	done
}
trap cleanup EXIT

# --- Citus itself ------------------------------------------------------------

citus_installed()
{
	[[ -f $(pg_config --sharedir)/extension/citus.control &&
		-f $(pg_config --pkglibdir)/citus.so ]]
}

build_citus()
{
	local build=$work/citus-build sudo=()
	[[ $(id -u) -ne 0 ]] && sudo=(sudo)
	rm -rf "$build"
	mkdir -p "$build"
	tar -xzf "$CITUS_SOURCE" -C "$build" || return 1
	# the tarball may or may not have a top directory
	if [[ ! -x $build/configure ]]; then
		build=$(dirname "$(find "$build" -maxdepth 2 -name configure | head -n 1)")
	fi
	if [[ -n ${CITUS_PATCH:-} ]]; then
		(cd "$build" && patch -p1 <"$CITUS_PATCH") || return 1
	fi
	(cd "$build" && ./configure && make -j"$(nproc)" && "${sudo[@]}" make install) \
		>"$work/citus-build.log" 2>&1
}

rm -rf "$work"
mkdir -p "$work"

if ! citus_installed; then
	if [[ -z ${CITUS_SOURCE:-} || ! -f ${CITUS_SOURCE:-} ]]; then
		skip_all "Citus is not installed and CITUS_SOURCE names no source tarball (see the README's Scale-out section)"
	fi
	started=$SECONDS
	if build_citus && citus_installed; then
		ok "Citus built from $(basename "$CITUS_SOURCE") and installed ($((SECONDS - started)) s)"
	else
		fail "Citus builds from $CITUS_SOURCE" "$(tail -n 30 "$work/citus-build.log")"
		finish
		exit 1
	fi
fi

# --- three nodes -------------------------------------------------------------

opts="shared_preload_libraries='citus,idempotency'; wal_level=logical;"
opts+=" max_connections=200; max_prepared_transactions=50;"
opts+=" citus.node_conninfo='sslmode=disable'; idem.purge_interval=0"
for n in "${nodes[@]}"; do
	if ! out=$(CLUSTER_PORT=${CITUS_PORT:-54420} CLUSTER_OPTS=$opts \
		bash "$CLUSTER_SH" start "$work/$n" 2>&1); then
		fail "node $n starts" "$out"
		finish
		exit 1
	fi
	port[$n]=$(sed -n 's/^export PGPORT=//p' "$work/$n/env")
done
ok "a coordinator and two workers started (ports ${port[coord]}, ${port[w1]}, ${port[w2]})"

export PGHOST=127.0.0.1 PGUSER=postgres PGDATABASE=postgres
on() { local n=$1; shift; psql -XAtq -v ON_ERROR_STOP=1 -p "${port[$n]}" "$@"; }
co() { on coord "$@"; }

# the SQLSTATE of a statement on the coordinator, or "ok"
state_of()
{
	co -c "DO \$\$ BEGIN EXECUTE \$q\$$1\$q\$; RAISE NOTICE 'ok';
		EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%', SQLSTATE; END \$\$" 2>&1 |
		sed -n 's/^NOTICE:  //p'
}

setup_ok=1
for n in "${nodes[@]}"; do
	on "$n" -c "CREATE EXTENSION citus" -c "CREATE EXTENSION idempotency" ||
		setup_ok=0
done
co -c "SELECT citus_set_coordinator_host('127.0.0.1', ${port[coord]})" \
	-c "SELECT citus_add_node('127.0.0.1', ${port[w1]})" \
	-c "SELECT citus_add_node('127.0.0.1', ${port[w2]})" >/dev/null || setup_ok=0
if ((setup_ok == 0)); then
	fail "citus and idempotency are created on every node, the workers added"
	finish
	exit 1
fi
ok "citus and idempotency are created on every node, the workers added"

check "idem_distribute() distributes the key table" co -c "SELECT idem_distribute()"
check "idem_distribute() again is a no-op" co -c "SELECT idem_distribute()"
check_eq "the key table is hash-distributed by key, its shards on both workers" \
	"h|key|2" \
	"$(co -c "SELECT p.partmethod, column_to_column_name(p.logicalrelid, p.partkey),
			 (SELECT count(DISTINCT groupid) FROM pg_dist_placement pl
			    JOIN pg_dist_shard s USING (shardid)
			   WHERE s.logicalrelid = p.logicalrelid)
		FROM pg_dist_partition p WHERE p.logicalrelid = 'idem_keys'::regclass")"

# --- records in the shards, replays byte for byte ------------------------------

NKEYS=40
co -c "SELECT idem_reserve('k-' || i, 'h-' || i, owner => 'tok-' || i)
	     FROM generate_series(1, $NKEYS) i" >/dev/null &&
	co -c "SELECT idem_commit('k-' || i, 'h-' || i, 200 + i,
	                          decode(repeat(lpad(to_hex(i), 2, '0'), 3) || '00ff0a', 'hex')
	                              || (SELECT string_agg(decode(lpad(to_hex(b), 2, '0'), 'hex'), ''::bytea)
	                                    FROM generate_series(0, 255) b),
	                          jsonb_build_object('X-Key', jsonb_build_array('k-' || i)),
	                          owner => 'tok-' || i)
	     FROM generate_series(1, $NKEYS) i" >/dev/null
check_eq "$NKEYS keys reserved and committed through the coordinator; it counts them" \
	"$NKEYS" "$(co -c "SELECT count(*) FROM idem_keys WHERE key LIKE 'k-%'")"
check_eq "the shell tables on the workers hold nothing" "0|0" \
	"$(on w1 -c "SELECT pg_relation_size('idem_keys')")|$(on w2 -c "SELECT pg_relation_size('idem_keys')")"

# every key is in the shard Citus routes it to, on that shard's node
misplaced=0
while IFS='|' read -r key shard node_port; do
	[[ -z $key ]] && continue
	n=w1
	[[ $node_port == "${port[w2]}" ]] && n=w2
	got=$(on "$n" -c "SELECT count(*) FROM idem_keys_$shard WHERE key = '$key'" 2>&1)
	[[ $got == 1 ]] || misplaced=$((misplaced + 1))
done < <(co -c "SELECT 'k-' || i, s.shardid, n.nodeport
			FROM generate_series(1, $NKEYS) i,
			     LATERAL get_shard_id_for_distribution_column('idem_keys', 'k-' || i) s(shardid)
			JOIN pg_dist_placement p ON p.shardid = s.shardid
			JOIN pg_dist_node n ON n.groupid = p.groupid")
check_eq "each record sits in the shard Citus assigns to its key, on its node" 0 "$misplaced"

replay_sql="SELECT string_agg(r.state || ':' || r.status || ':' || md5(r.body) || ':' || r.headers::text, ',' ORDER BY i)
	FROM generate_series(1, $NKEYS) i, LATERAL idem_reserve('k-' || i, 'h-' || i) r
	WHERE NOT r.fresh"
want=$(co -c "SELECT string_agg('committed:' || (200 + i) || ':' ||
		md5(decode(repeat(lpad(to_hex(i), 2, '0'), 3) || '00ff0a', 'hex')
		    || (SELECT string_agg(decode(lpad(to_hex(b), 2, '0'), 'hex'), ''::bytea)
		          FROM generate_series(0, 255) b)) || ':' ||
		jsonb_build_object('X-Key', jsonb_build_array('k-' || i))::text, ',' ORDER BY i)
	FROM generate_series(1, $NKEYS) i")
got=$(co -c "$replay_sql")
check_eq "every committed key replays byte for byte from the coordinator" "$want" "$got"

# --- errors from the coordinator ------------------------------------------------

check_eq "IK422: another request with a committed key" IK422 "$(state_of "SELECT idem_reserve('k-1', 'other')")"
check_eq "IK404: commit without a reservation" IK404 "$(state_of "SELECT idem_commit('never', NULL, 200, NULL)")"
check_eq "22004: a NULL key is refused before Citus routes it" 22004 "$(state_of "SELECT idem_reserve(NULL)")"
check_eq "22004: idem_commit with a NULL key too" 22004 "$(state_of "SELECT idem_commit(NULL, NULL, 200, NULL)")"
check_eq "22001: a key over 255 bytes" 22001 "$(state_of "SELECT idem_reserve(repeat('k', 256))")"
check_eq "22023: a negative wait_timeout" 22023 "$(state_of "SELECT idem_reserve('e-1', wait_timeout => '-1s')")"
check_eq "the coordinator survived them all" 1 "$(co -c "SELECT 1")"

# --- leases: every reservation, takeover, fencing --------------------------------

check_eq "a reservation without a lease argument is lease-owned (30 s)" "t|t|t" \
	"$(co -c "SELECT fresh, owner IS NOT NULL, lease_expires_at BETWEEN now() + interval '29 seconds' AND now() + interval '31 seconds' FROM idem_reserve('l-1')")"
check_eq "another caller gets IK409 while the lease runs" IK409 \
	"$(state_of "SELECT idem_reserve('l-1', wait_timeout => '0')")"
co -c "SELECT idem_reserve('l-2', owner => 'old', lease => '400ms')" >/dev/null
sleep 0.6
check_eq "a lease that ran out is taken over at once (attempt 2)" "t|2|new" \
	"$(co -c "SELECT fresh, attempt, owner FROM idem_reserve('l-2', owner => 'new', lease => '30s', wait_timeout => '0')")"
check_eq "the old token's commit is fenced (IK409)" IK409 \
	"$(state_of "SELECT idem_commit('l-2', NULL, 200, 'late', owner => 'old')")"
check_eq "... and its extend" IK409 "$(state_of "SELECT idem_extend('l-2', 'old')")"
check_eq "the new owner extends and commits" "t|t" \
	"$(co -c "SELECT idem_extend('l-2', 'new', '1 min') > now()" -c "SELECT idem_commit('l-2', NULL, 201, 'new', owner => 'new')" | paste -sd'|')"
check_eq "the stored response is the new owner's" "201|new|2" \
	"$(co -c "SELECT status, convert_from(body, 'UTF8'), attempt FROM idem_get('l-2')")"

# --- concurrent callers of one key, a key on each worker -------------------------

co -c "CREATE TABLE effects (key text, caller text)" >/dev/null
# a key whose shard is on the given worker
key_on()
{
	co -c "SELECT k FROM (SELECT 'race-$1-' || i AS k FROM generate_series(1, 1000) i) x,
		LATERAL get_shard_id_for_distribution_column('idem_keys', x.k) s(shardid)
		JOIN pg_dist_placement p ON p.shardid = s.shardid
		JOIN pg_dist_node n ON n.groupid = p.groupid
		WHERE n.nodeport = ${port[$1]} LIMIT 1"
}
for w in w1 w2; do
	key=$(key_on "$w")
	pids=()
	for c in $(seq 1 "$CALLERS"); do
		cat >"$work/caller-$w-$c.sql" <<EOF
SELECT fresh, owner FROM idem_reserve('$key', wait_timeout => '30s') \gset
\if :fresh
INSERT INTO effects VALUES ('$key', 'c$c');
SELECT pg_sleep(0.3) \gset
SELECT idem_commit('$key', NULL, 200, convert_to('made by c$c', 'UTF8'), owner => :'owner') AS stored \gset
\endif
SELECT convert_from(body, 'UTF8') FROM idem_reserve('$key', wait_timeout => '30s');
EOF
		co -f "$work/caller-$w-$c.sql" >"$work/caller-$w-$c.out" 2>&1 &
		pids+=($!)
	done
	errors=0
	for p in "${pids[@]}"; do
		wait "$p" || errors=$((errors + 1))
	done
	executions=$(co -c "SELECT count(*) FROM effects WHERE key = '$key'")
	executor=$(co -c "SELECT caller FROM effects WHERE key = '$key'")
	bodies=$(cat "$work"/caller-"$w"-*.out | sort | uniq -c | awk '{ $1 = ""; print substr($0, 2) }' | paste -sd',')
	check_eq "$CALLERS concurrent callers of a key on $w: every caller answered" 0 "$errors"
	check_eq "... the handler ran once" 1 "$executions"
	check_eq "... every caller got the executor's response" "made by $executor" "$bodies"
done

# --- the one-transaction pattern, co-located ---------------------------------------

co -c "CREATE TABLE orders (key text, note text)" \
	-c "SELECT create_distributed_table('orders', 'key', colocate_with => 'idem_keys')" >/dev/null
pids=()
for c in $(seq 1 8); do
	cat >"$work/tx-$c.sql" <<EOF
BEGIN;
SELECT fresh, owner FROM idem_reserve('order-1', wait_timeout => '30s') \gset
\if :fresh
INSERT INTO orders VALUES ('order-1', 'by t$c');
SELECT idem_commit('order-1', NULL, 201, convert_to('order by t$c', 'UTF8'), owner => :'owner') AS stored \gset
\endif
COMMIT;
SELECT convert_from(body, 'UTF8') FROM idem_get('order-1');
EOF
	co -f "$work/tx-$c.sql" >"$work/tx-$c.out" 2>&1 &
	pids+=($!)
done
errors=0
for p in "${pids[@]}"; do
	wait "$p" || errors=$((errors + 1))
done
check_eq "one-transaction pattern, 8 callers: none failed" 0 "$errors"
check_eq "... exactly one order written" 1 "$(co -c "SELECT count(*) FROM orders WHERE key = 'order-1'")"
check_eq "... and every caller saw its response" \
	"order $(co -c "SELECT note FROM orders WHERE key = 'order-1'")" \
	"$(cat "$work"/tx-*.out | sort -u | paste -sd',')"
co -c "BEGIN" -c "SELECT idem_reserve('order-2')" \
	-c "INSERT INTO orders VALUES ('order-2', 'rolled back')" -c "ROLLBACK" >/dev/null
check_eq "a rolled-back transaction leaves no record and no order" "t|0" \
	"$(co -c "SELECT idem_get('order-2') IS NULL, (SELECT count(*) FROM orders WHERE key = 'order-2')")"

# --- purge across the shards ---------------------------------------------------------

co -c "SELECT idem_reserve('p-' || i, ttl => '1ms', owner => 'tok') FROM generate_series(1, 30) i" \
	-c "SELECT idem_commit('p-' || i, NULL, 200, NULL, owner => 'tok') FROM generate_series(1, 30) i" >/dev/null
sleep 0.1
purged=$(co -c "SELECT idem_purge()")
check "idem_purge on the coordinator purges the shards of both workers ($purged)" \
	test "$purged" -ge 30
check_eq "... none of the expired keys is left" 0 "$(co -c "SELECT count(*) FROM idem_keys WHERE key LIKE 'p-%'")"
check_eq "... and the live ones are kept" "$NKEYS" "$(co -c "SELECT count(*) FROM idem_keys WHERE key LIKE 'k-%'")"
check_eq "idem_stats on the coordinator counts the whole cluster's keys" \
	"$(co -c "SELECT count(*) FROM idem_keys WHERE state = 'committed'")" \
	"$(co -c "SELECT committed FROM idem_stats" 2>&1)"

counters()
{
	on "$1" -c "SELECT reserves || ' ' || commits FROM idem_stats"
}
read -r c_res c_com < <(counters coord)
read -r w1_res w1_com < <(counters w1)
read -r w2_res w2_com < <(counters w2)
check_eq "idem_stats on the coordinator adds up the workers' counters ($c_res reserves, $c_com commits)" \
	"$((w1_res + w2_res)) $((w1_com + w2_com))" "$c_res $c_com"
check "... which counted this suite's calls" test "$c_res" -ge "$((NKEYS * 2))"

# --- a shard move keeps its keys ---------------------------------------------------------

read -r shard from_port < <(co -F ' ' -c "SELECT s.shardid, n.nodeport
	FROM get_shard_id_for_distribution_column('idem_keys', 'k-1') s(shardid)
	JOIN pg_dist_placement p ON p.shardid = s.shardid
	JOIN pg_dist_node n ON n.groupid = p.groupid")
to_port=${port[w2]}
[[ $from_port == "${port[w2]}" ]] && to_port=${port[w1]}
if out=$(co -c "SELECT citus_move_shard_placement($shard, '127.0.0.1', $from_port, '127.0.0.1', $to_port, shard_transfer_mode => 'block_writes')" 2>&1); then
	ok "shard $shard of key k-1 moved from port $from_port to $to_port"
	check_eq "... its keys replay byte for byte from the new node" "$want" "$(co -c "$replay_sql")"
	check_eq "... and k-1 is in the shard on the new node" 1 \
		"$(psql -XAtq -p "$to_port" -c "SELECT count(*) FROM idem_keys_$shard WHERE key = 'k-1'")"
	check_eq "... new reservations of its keys work there" "t|1" \
		"$(co -c "SELECT fresh, attempt FROM idem_reserve('k-1-after-move')" 2>&1)"
else
	fail "shard $shard moves to the other worker" "$out"
fi

finish
