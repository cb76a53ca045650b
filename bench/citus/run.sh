#!/usr/bin/env bash
#
# run.sh: what scale-out on Citus costs per request.  `make -C bench citus`.
#
# Starts a Citus coordinator with two workers and a single plain node, all
# on this machine, and runs with pgbench, in the same run, alternated:
#   fresh   reserve + commit of new keys (lease owners)
#   replay  reserve of committed keys
# through the coordinator and against the single node.  Needs Citus
# installed (test/suites/citus.sh builds it from CITUS_SOURCE).  Writes
# bench/results/citus.md.  It reports; it never fails on speed.
#
# Knobs: CITUS_BENCH_SECONDS (10), CITUS_BENCH_ROUNDS (2),
# CITUS_BENCH_CLIENTS (8), CITUS_BENCH_PORT (59400).

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SECONDS_EACH=${CITUS_BENCH_SECONDS:-10}
ROUNDS=${CITUS_BENCH_ROUNDS:-2}
CLIENTS=${CITUS_BENCH_CLIENTS:-8}
PORT=${CITUS_BENCH_PORT:-59400}
TMP=$ROOT/bench/tmp/citus
OUT=$ROOT/bench/results/citus.md
CLUSTER_SH=$ROOT/tools/cluster.sh
nodes=(coord w1 w2 single)
declare -A port

if [[ ! -f $(pg_config --pkglibdir)/citus.so ]]; then
	echo "citus bench: Citus is not installed (test/suites/citus.sh builds it from CITUS_SOURCE)" >&2
	exit 1
fi

cleanup()
{
	for n in "${nodes[@]}"; do
		bash "$CLUSTER_SH" stop "$TMP/$n" >/dev/null 2>&1 || true
	done
}
trap cleanup EXIT

rm -rf "$TMP"
mkdir -p "$TMP"
for n in "${nodes[@]}"; do
	opts="shared_preload_libraries='idempotency'; max_connections=200"
	if [[ $n != single ]]; then
		opts="shared_preload_libraries='citus,idempotency'; wal_level=logical;"
		opts+=" max_connections=200; max_prepared_transactions=50;"
		opts+=" citus.node_conninfo='sslmode=disable'"
	fi
	CLUSTER_PORT=$PORT CLUSTER_OPTS=$opts bash "$CLUSTER_SH" start "$TMP/$n" >/dev/null
	port[$n]=$(sed -n 's/^export PGPORT=//p' "$TMP/$n/env")
done
export PGHOST=127.0.0.1 PGUSER=postgres PGDATABASE=postgres
on() { local n=$1; shift; psql -XAtq -v ON_ERROR_STOP=1 -p "${port[$n]}" "$@"; }
for n in coord w1 w2; do
	on "$n" -c "CREATE EXTENSION citus" -c "CREATE EXTENSION idempotency"
done
on single -c "CREATE EXTENSION idempotency"
on coord -c "SELECT citus_set_coordinator_host('127.0.0.1', ${port[coord]})" \
	-c "SELECT citus_add_node('127.0.0.1', ${port[w1]})" \
	-c "SELECT citus_add_node('127.0.0.1', ${port[w2]})" \
	-c "SELECT idem_distribute()" >/dev/null
for n in coord single; do
	on "$n" -c "SELECT idem_reserve('r-' || i, owner => 'p', lease => '1h') FROM generate_series(1, 10000) i" >/dev/null
	on "$n" -c "SELECT idem_commit('r-' || i, NULL, 200, '\x7b226f6b223a747275657d'::bytea, owner => 'p') FROM generate_series(1, 10000) i" >/dev/null
done

declare -A tps
run_one()
{
	local target=$1 workload=$2 out
	out=$(pgbench -n -M prepared -c "$CLIENTS" -j 2 -T "$SECONDS_EACH" \
		-p "${port[$target]}" -f "$HERE/$workload.sql" 2>&1)
	sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out"
}
for r in $(seq 1 "$ROUNDS"); do
	for w in fresh replay; do
		for t in single coord; do
			v=$(run_one "$t" "$w")
			tps[$w,$t]="${tps[$w,$t]:-} $v"
			echo "round $r: $w on $t: $v tps"
		done
	done
	v=$(run_one coord replay_delegated)
	tps[delegated,coord]="${tps[delegated,coord]:-} $v"
	echo "round $r: replay, shard function called directly, on coord: $v tps"
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
{
	echo "# Scale-out on Citus: per-request cost"
	echo
	echo "\`make -C bench citus\` ($(date -u +%Y-%m-%d), $(nproc) cores, every node on this machine):"
	echo "pgbench -n -M prepared -c $CLIENTS -j 2 -T $SECONDS_EACH, $ROUNDS rounds alternated, median tps."
	echo "The coordinator routes each call to the worker of the key's shard; three servers share the same cores."
	echo
	echo "| workload | single node | coordinator + 2 workers | ratio |"
	echo "|---|--:|--:|--:|"
	for w in fresh replay; do
		s=$(median <<<"${tps[$w,single]}")
		c=$(median <<<"${tps[$w,coord]}")
		printf '| %s | %.0f | %.0f | %.2f |\n' \
			"$([[ $w == fresh ]] && echo 'reserve + commit, new keys (lease)' || echo 'replay of a committed key')" \
			"$s" "$c" "$(echo "$c / $s" | bc -l)"
	done
	s=$(median <<<"${tps[replay,single]}")
	c=$(median <<<"${tps[delegated,coord]}")
	printf '| %s | %.0f | %.0f | %.2f |\n' \
		"replay, the distributed shard function called directly (Citus delegation alone)" \
		"$s" "$c" "$(echo "$c / $s" | bc -l)"
	echo
	echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work was running on the machine)."
} >"$OUT"
cat "$OUT"
