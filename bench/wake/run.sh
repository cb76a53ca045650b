#!/usr/bin/env bash
#
# run.sh: wake latency of lease owners' waiters, and the cost of lease
# owners on the hot path.
#
#   bench/wake/run.sh          (or: make -C bench wake)
#
# Starts a throwaway cluster of its own twice (tools/cluster.sh, port 59000
# and up, fsync on): once with the module in shared_preload_libraries
# (waiters of a lease owner's key sleep on a condition variable and are
# woken by the commit) and once without (they read the record again, 1 ms
# backing off to 8 ms).  In each:
#
#   wake     wakebench (bench/wake/wakebench.c): per round a new key, an
#            owner, W waiters blocked in idem_reserve on it, the owner
#            commits; a waiter's latency is its reserve returning minus the
#            owner's commit returning (one process, one clock).  Lease
#            owners, and session owners (waiters queue in the lock manager)
#            for comparison; alternated, lease first in odd rounds.
#   pgbench  reserve + commit of a new key, autocommit: fresh_lease.sql
#            (a token per client, a 30 s lease) against fresh_session.sql,
#            pgbench -M prepared, alternated round by round.
#
# Writes bench/results/wake.md (tables, the commands, the machine); the
# raw samples stay in bench/tmp/wake/data until the next run.  A benchmark
# reports: it never fails on speed, only when it cannot run.
#
# Settings (environment):
#   WAKE_WAITERS=32 WAKE_ROUNDS=50     wakebench --waiters / --rounds
#   WAKE_PGBENCH_SECONDS=15 WAKE_PGBENCH_ROUNDS=2
#   WAKE_PGBENCH_CLIENTS=8 WAKE_PGBENCH_THREADS=2
#   WAKE_PORT=59000          first port tried for the cluster
#   WAKE_CLUSTER_OPTS=       more postgresql.conf settings (see tools/cluster.sh)
#   WAKE_TMP=bench/tmp/wake  WAKE_OUT=bench/results/wake.md
#
# Measures the extension installed where pg_config (the first in PATH)
# says; the report names it and the tree's commit.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_DIR=$(cd "$HERE/.." && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)

WAITERS=${WAKE_WAITERS:-32}
ROUNDS=${WAKE_ROUNDS:-50}
PGB_SECONDS=${WAKE_PGBENCH_SECONDS:-15}
PGB_ROUNDS=${WAKE_PGBENCH_ROUNDS:-2}
PGB_CLIENTS=${WAKE_PGBENCH_CLIENTS:-8}
PGB_THREADS=${WAKE_PGBENCH_THREADS:-2}
PORT=${WAKE_PORT:-59000}
TMP=${WAKE_TMP:-$BENCH_DIR/tmp/wake}
OUT=${WAKE_OUT:-$BENCH_DIR/results/wake.md}
WAKEBENCH=$BENCH_DIR/build/wakebench
CLUSTER=$TMP/cluster
DATA=$TMP/data
T_START=$(date +%s)

log()
{
	printf '[wake %s +%ss] %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - T_START))" "$*" >&2
}

die()
{
	echo "bench/wake: $*" >&2
	exit 1
}

PG_BINDIR=$(pg_config --bindir 2>/dev/null) || PG_BINDIR=
[[ -x $PG_BINDIR/pgbench ]] || PG_BINDIR=/usr/lib/postgresql/15/bin
PATH=$PG_BINDIR:$PATH
for tool in pgbench psql; do
	command -v "$tool" >/dev/null || die "$tool not found"
done
[[ -x $WAKEBENCH ]] || make -s -C "$BENCH_DIR" build/wakebench >/dev/null ||
	die "could not build wakebench"

cleanup()
{
	local rc=$?
	"$ROOT/tools/cluster.sh" stop "$CLUSTER" >/dev/null 2>&1 || true
	rm -rf "$CLUSTER"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$DATA"
mkdir -p "$DATA" "$(dirname "$OUT")"

psql_q()
{
	psql -X -q -A -t -v ON_ERROR_STOP=1 "$@"
}

# start_cluster PRELOAD: a new cluster, with the module preloaded or not
start_cluster()
{
	local preload=$1 opts="max_connections=100 fsync=on"
	# (tools/cluster.sh preloads nothing unless told)
	[[ $preload == preloaded ]] && opts+=" shared_preload_libraries=idempotency"
	opts+=$'\n'"${WAKE_CLUSTER_OPTS:-}"
	# (once more after a failure: the machine is shared, ports come and go)
	CLUSTER_PORT=$PORT CLUSTER_OPTS=$opts "$ROOT/tools/cluster.sh" start "$CLUSTER" >/dev/null ||
		{ sleep 2; CLUSTER_PORT=$PORT CLUSTER_OPTS=$opts "$ROOT/tools/cluster.sh" start "$CLUSTER" >/dev/null; } ||
		die "could not start a cluster"
	# shellcheck disable=SC1091
	. "$CLUSTER/env"
	export PGHOST PGPORT PGUSER PGDATABASE
	psql_q -c 'CREATE EXTENSION idempotency' >/dev/null
	log "cluster on port $PGPORT, shared_preload_libraries = '$(psql_q -c 'SHOW shared_preload_libraries')'"
}

# wake PRELOAD OWNER ROUND: one wakebench run; its summary line goes to
# $DATA/wake.tsv
wake()
{
	local preload=$1 owner=$2 round=$3 line
	line=$("$WAKEBENCH" --owner "$owner" --waiters "$WAITERS" --rounds "$ROUNDS" \
		--out "$DATA/wake-$preload-$owner-$round.dat") ||
		die "wakebench --owner $owner failed ($preload)"
	log "wake $preload $owner: $line"
	printf '%s\t%s\t%s\t%s\n' "$preload" "$owner" "$round" "$line" >>"$DATA/wake.tsv"
}

# pgb PRELOAD OWNER ROUND: one pgbench run; tps and latency to
# $DATA/pgbench.tsv
pgb()
{
	local preload=$1 owner=$2 round=$3 log_file tps lat failed
	log_file=$DATA/pgbench-$preload-$owner-$round.log
	pgbench -n -M prepared -c "$PGB_CLIENTS" -j "$PGB_THREADS" -T "$PGB_SECONDS" \
		-f "$HERE/fresh_$owner.sql" >"$log_file" 2>&1 ||
		{ cat "$log_file" >&2; die "pgbench failed ($preload $owner)"; }
	tps=$(sed -nE 's/^tps = ([0-9.]+) \(without initial connection time\)/\1/p' "$log_file")
	lat=$(sed -nE 's/^latency average = ([0-9.]+) ms/\1/p' "$log_file")
	failed=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$log_file")
	log "pgbench $preload $owner round $round: tps $tps, latency $lat ms"
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$preload" "$owner" "$round" "$tps" "$lat" "${failed:-0}" \
		>>"$DATA/pgbench.tsv"
}

# the two owner kinds of round r: lease first in odd rounds
order_of()
{
	if (($1 % 2 == 1)); then echo lease session; else echo session lease; fi
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$DATA/wake.tsv"
: >"$DATA/pgbench.tsv"
for preload in preloaded not_preloaded; do
	start_cluster "$preload"
	PG_VERSION=$(psql_q -c 'SHOW server_version')
	EXT_VERSION=$(psql_q -c "SELECT extversion FROM pg_extension WHERE extname = 'idempotency'")
	for r in 1 2; do
		for owner in $(order_of "$r"); do
			wake "$preload" "$owner" "$r"
		done
	done
	for ((r = 1; r <= PGB_ROUNDS; r++)); do
		for owner in $(order_of "$r"); do
			pgb "$preload" "$owner" "$r"
		done
	done
	"$ROOT/tools/cluster.sh" stop "$CLUSTER" >/dev/null
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the report ---------------------------------------------------------

field()
{
	# field NAME LINE: the value of NAME=... in a wakebench line
	sed -nE "s/.*(^|[[:space:]])$1=([^[:space:]]+).*/\\2/p" <<<"$2"
}

ms()
{
	awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'
}

label_of()
{
	case $1 in
		preloaded) echo "preloaded" ;;
		*) echo "not preloaded" ;;
	esac
}

# pooled PRELOAD OWNER: a table row of the percentiles over every sample
# of both runs (nearest rank)
pooled()
{
	local preload=$1 owner=$2
	cat "$DATA/wake-$preload-$owner-"*.dat | awk '{ print $1 }' | sort -g |
		awk -v o="$owner" -v m="$(label_of "$preload")" '
			{ v[NR] = $1 }
			function pct(p,  i) { i = int(p * NR); if (i < p * NR) i++; if (i < 1) i = 1; return v[i] / 1000 }
			END { if (NR) printf "| %s | %s | %d | %.2f | %.2f | %.2f | %.2f |\n",
				o, m, NR, pct(0.50), pct(0.95), pct(0.99), v[NR] / 1000 }'
}

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
MODULE=$(pg_config --pkglibdir)/idempotency.so
MODULE="\`$MODULE\` of $(date -u -r "$MODULE" '+%Y-%m-%d %H:%M UTC' 2>/dev/null || echo '?')"
{
	echo "# Wake latency of lease owners' waiters"
	echo
	echo "Written by \`make -C bench wake\` (bench/wake/run.sh) on $(date -u '+%Y-%m-%d %H:%M UTC'),"
	echo "tree at $COMMIT, the installed extension $EXT_VERSION ($MODULE),"
	echo "PostgreSQL $PG_VERSION."
	echo
	echo "## Waiters woken by the owner's commit"
	echo
	echo "$WAITERS waiters blocked in \`idem_reserve\` on one key, the owner commits; per run"
	echo "$ROUNDS rounds ($((WAITERS * ROUNDS)) samples), two runs of each (alternated with the other"
	echo "owner kind), pooled.  Latency: the waiter's reserve returning minus the owner's"
	echo "\`idem_commit\` returning, in ms, on one clock in one process (negative: the waiter"
	echo "had its answer before the owner had its own).  *from sent*: minus the commit being"
	echo "sent instead."
	echo
	echo "| owner | module | samples | p50 | p95 | p99 | max |"
	echo "|---|---|---:|---:|---:|---:|---:|"
	for owner in lease session; do
		for preload in preloaded not_preloaded; do
			pooled "$preload" "$owner"
		done
	done
	echo
	echo "Each run:"
	echo
	echo "| owner | module | run | p50 | p95 | p99 | max | p50 from sent | p99 from sent | waiters seen waiting on | failed |"
	echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"
	for preload in preloaded not_preloaded; do
		for owner in lease session; do
			while IFS=$'\t' read -r p o r line; do
				[[ $p == "$preload" && $o == "$owner" ]] || continue
				printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
					"$owner" "$(label_of "$p")" "$r" \
					"$(ms "$(field p50_us "$line")")" "$(ms "$(field p95_us "$line")")" \
					"$(ms "$(field p99_us "$line")")" "$(ms "$(field max_us "$line")")" \
					"$(ms "$(field sent_p50_us "$line")")" "$(ms "$(field sent_p99_us "$line")")" \
					"\`$(field wait_event "$line")\`" "$(field failed "$line")"
			done <"$DATA/wake.tsv"
		done
	done
	echo
	echo "Command: \`bench/build/wakebench --owner lease|session --waiters $WAITERS --rounds $ROUNDS --out FILE\`"
	echo "(libpq's environment names the cluster)."
	echo
	echo "## Reserve + commit of new keys: lease owners against session owners"
	echo
	echo "Transactions per second (one transaction = one reserve and one commit"
	echo "statement) and pgbench's average latency; rounds alternate the order."
	echo
	echo "| module | owner | round | tps | latency ms | failed |"
	echo "|---|---|---:|---:|---:|---:|"
	while IFS=$'\t' read -r p o r tps lat failed; do
		printf '| %s | %s | %s | %.0f | %s | %s |\n' "$(label_of "$p")" "$o" "$r" "$tps" "$lat" "$failed"
	done <"$DATA/pgbench.tsv"
	echo
	for preload in preloaded not_preloaded; do
		awk -F'\t' -v p="$preload" -v label="$(label_of "$preload")" '
			$1 == p { s[$2] += $4; n[$2]++ }
			END {
				if (n["lease"] && n["session"]) {
					l = s["lease"] / n["lease"]; q = s["session"] / n["session"];
					printf "- %s: lease owners %.0f tps, session owners %.0f tps (mean of %d rounds): lease/session = **%.2f**\n",
						label, l, q, n["lease"], l / q
				}
			}' "$DATA/pgbench.tsv"
	done
	echo
	echo "Command: \`pgbench -n -M prepared -c $PGB_CLIENTS -j $PGB_THREADS -T $PGB_SECONDS -f bench/wake/fresh_lease.sql\`"
	echo "and the same with \`-f bench/wake/fresh_session.sql\`."
	echo
	echo "## Where"
	echo
	echo "- cluster: tools/cluster.sh (fsync on, max_connections = 100, otherwise defaults),"
	echo "  once with \`shared_preload_libraries = 'idempotency'\` and once without;"
	echo "  clients and server on one machine over the unix socket."
	echo "- machine: $(nproc) CPU ($(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)),"
	echo "  $(awk '/MemTotal/ {printf "%.0f GB", $2 / 1048576}' /proc/meminfo) RAM; load average before: $LOAD_BEFORE, after: $LOAD_AFTER"
	echo "  (the machine is shared: figures move with its load)."
	echo "- raw samples: bench/tmp/wake/data (wake-*.dat: latency from the commit returning"
	echo "  and from it being sent, in µs; pgbench-*.log)."
} >"$OUT"
log "wrote $OUT"
cat "$OUT"
