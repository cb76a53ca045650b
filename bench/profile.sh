#!/usr/bin/env bash
#
# profile.sh: where the time of a replay goes, against the raw floor's
# primary-key SELECT.
#
#   bench/profile.sh          (or: make -C bench profile)
#
# Starts a throwaway cluster with stock settings (shared_buffers = 128MB,
# huge_pages = off, fsync on), loads the extension and the raw floor's
# table with PROFILE_KEYS committed keys each, and for each of
# scripts/replay_ext.sql and scripts/replay_raw.sql runs pgbench with one
# client while `perf record` samples its backend (call graphs from DWARF:
# the Debian server binary has no frame pointers).  It prints, per
# implementation, the instructions and server CPU per replay (perf stat,
# when the machine lets it count) and the share of the backend's samples
# spent in the parts of the path named below (inclusive: a function and
# what it calls), and leaves the full reports in bench/tmp/profile/.
#
# Settings (environment): PROFILE_SECONDS=8 (per implementation),
# PROFILE_KEYS=100000, PROFILE_FREQ=2000 (samples per second),
# BENCH_INSTALL=1 (build and install the extension first; 0: the installed
# one), BENCH_TMP=bench/tmp.

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
SECS=${PROFILE_SECONDS:-8}
NKEYS=${PROFILE_KEYS:-100000}
FREQ=${PROFILE_FREQ:-2000}
INSTALL=${BENCH_INSTALL:-1}
TMP=${BENCH_TMP:-$BENCH_DIR/tmp}
OUT=$TMP/profile
CLUSTER=$TMP/profile-cluster
HASH=6d1f1b6bbf2f5a3c4a7e0a5f2b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708

die()
{
	echo "profile: $*" >&2
	exit 1
}

PG_BINDIR=$("${PG_CONFIG:-pg_config}" --bindir 2>/dev/null) || PG_BINDIR=
[[ -x $PG_BINDIR/pgbench ]] || PG_BINDIR=/usr/lib/postgresql/15/bin
PATH=$PG_BINDIR:$PATH
command -v perf >/dev/null || die "perf not found (apt-get install linux-perf)"

if [[ $INSTALL != 0 ]]; then
	make -s -C "$ROOT" NO_CLIENT=1 install >"$TMP/install.log" 2>&1 ||
		{ cat "$TMP/install.log" >&2; die "make install failed"; }
fi

cleanup()
{
	"$ROOT/tools/cluster.sh" stop "$CLUSTER" >/dev/null 2>&1 || true
	rm -rf "$CLUSTER"
}
trap cleanup EXIT
mkdir -p "$OUT"
CLUSTER_OPTS="shared_buffers=128MB huge_pages=off fsync=on max_connections=100" \
	"$ROOT/tools/cluster.sh" start "$CLUSTER" >/dev/null
# shellcheck disable=SC1091
. "$CLUSTER/env"
psql -X -q -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION idempotency' -f "$BENCH_DIR/setup.sql" \
	-f "$BENCH_DIR/plpgsql_baseline.sql" >/dev/null
for t in idem_keys raw_keys; do
	psql -X -q -v ON_ERROR_STOP=1 -c "SELECT bench_load('$t', 1, $NKEYS)" \
		-c "VACUUM ANALYZE $t" >/dev/null
done
psql -X -q -c CHECKPOINT

# the parts of the path, as the symbols perf finds (inclusive shares)
PARTS='PortalStart ExecInitFunctionScan ExecInitIndexScan
ExecInitTableFunctionResult ExecInitResultTypeTL PortalRun
ExecMakeTableFunctionResult ExecScan reserve idem_storage_read probe
index_getnext_slot index_beginscan table_open index_open index_close
table_slot_create fill_record make_reservation heap_form_tuple
idem_reservation_tupdesc idem_arg_key idem_check_scope classify
idem_owner_alive tuplestore_begin_heap tuplestore_puttuple
tuplestore_gettupleslot SendRowDescriptionMessage CommitTransactionCommand
pq_getbyte secure_write entry_SYSCALL_64_after_hwframe'

for impl in ext raw; do
	log=$OUT/$impl.pgbench
	pgbench -n -M prepared -c 1 -j 1 -T $((SECS + 3)) -D hash="$HASH" -D nkeys="$NKEYS" \
		-f "$BENCH_DIR/scripts/replay_$impl.sql" >"$log" 2>&1 &
	pgb=$!
	sleep 1
	pid=$(psql -X -A -t -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench' LIMIT 1")
	[[ -n $pid ]] || die "no pgbench backend"
	# instructions and CPU time of the backend for one second, then samples
	perf stat -e instructions,task-clock -p "$pid" -x, -o "$OUT/$impl.stat" -- sleep 1 2>/dev/null || true
	perf record -q -F "$FREQ" --call-graph=dwarf,16384 -p "$pid" -o "$OUT/$impl.data" -- sleep "$SECS" 2>/dev/null
	wait "$pgb"
	tps=$(sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' "$log")
	perf report -q -i "$OUT/$impl.data" --children --no-demangle --sort symbol --stdio -g none \
		--percent-limit 0.01 2>/dev/null >"$OUT/$impl.children.txt" || true
	perf report -q -i "$OUT/$impl.data" --no-children --sort dso,symbol --stdio -g none \
		--percent-limit 0.3 2>/dev/null >"$OUT/$impl.self.txt" || true
	ins=$(awk -F, '$3 ~ /instructions/ {print $1}' "$OUT/$impl.stat" 2>/dev/null)
	clk=$(awk -F, '$3 ~ /task-clock/ {print $1}' "$OUT/$impl.stat" 2>/dev/null)
	echo "== $impl: $tps tps with one client (the second of perf stat: ${ins:-?} instructions, ${clk:-?} ms of CPU)"
	for p in $PARTS; do
		awk -v p="$p" '$4 == p {printf "   %-32s %7s inclusive, %7s self\n", p, $1, $2; exit}' \
			"$OUT/$impl.children.txt"
	done
	echo "   top self:"
	head -n 25 "$OUT/$impl.self.txt" | sed 's/^/   /'
done
