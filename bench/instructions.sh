#!/usr/bin/env bash
#
# instructions.sh: instructions per transaction of the benchmark's pgbench
# scripts, counted by callgrind: a figure that other work on the machine
# does not move, unlike throughput and CPU time (and that `perf stat`
# cannot give on a VM without hardware counters).
#
#   bench/instructions.sh [SCRIPT...]   (or: make -C bench instructions)
#
# SCRIPT names a file of bench/scripts/ without .sql (default: replay_ext
# replay_raw fresh_ext fresh_raw; http_unprotected and http_unique are the
# statements of the HTTP example's requests, all prepared).  Starts a cluster with stock settings
# (tools/cluster.sh: shared_buffers = 128MB, fsync on), loads 10^5 keys per
# implementation, stops it and starts its postmaster again under valgrind
# --tool=callgrind.  For each script, pgbench (-M prepared, one client)
# runs INSTR_SMALL and then INSTR_BIG transactions, each on a connection of
# its own; per transaction = the difference of the two backends'
# instructions / (INSTR_BIG - INSTR_SMALL), so that connection start and
# exit cancel out.  The callgrind files stay in bench/tmp/instructions/
# (callgrind_annotate --inclusive=yes FILE shows where they go); with
# INSTR_FUNCS="f g ..." the same difference is printed for those functions
# (inclusive).  Needs valgrind (apt-get install valgrind).
#
# Settings: INSTR_SMALL=200 INSTR_BIG=1200, BENCH_INSTALL=1 (build and
# install the extension first; 0: the installed one), BENCH_TMP=bench/tmp;
# INSTR_PRELOAD=1 (the server preloads the module, as README.md installs
# it; 0: not), INSTR_NKEYS=1000 (the keys the scripts draw from, of the
# 10^5 in each table) and INSTR_WARM=3000 (transactions of each script run
# first and not counted, so that every key has been looked up once, as the
# reserve that created a key has in real use; INSTR_NKEYS=100000
# INSTR_WARM=0 counts first look-ups instead); INSTR_MODE=prepared (pgbench
# -M: simple, extended, prepared).

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
SMALL=${INSTR_SMALL:-200}
BIG=${INSTR_BIG:-1200}
INSTALL=${BENCH_INSTALL:-1}
TMP=${BENCH_TMP:-$BENCH_DIR/tmp}
OUT=$TMP/instructions
CLUSTER=$TMP/instructions-cluster
HASH=6d1f1b6bbf2f5a3c4a7e0a5f2b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708
SCRIPTS=${*:-replay_ext replay_raw fresh_ext fresh_raw}
PRELOAD=${INSTR_PRELOAD:-1}
NKEYS=${INSTR_NKEYS:-1000}
WARM=${INSTR_WARM:-3000}

die()
{
	echo "instructions: $*" >&2
	exit 1
}

PG_BINDIR=$("${PG_CONFIG:-pg_config}" --bindir 2>/dev/null) || PG_BINDIR=
[[ -x $PG_BINDIR/pgbench ]] || PG_BINDIR=/usr/lib/postgresql/15/bin
PATH=$PG_BINDIR:$PATH
command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
command -v callgrind_annotate >/dev/null || die "callgrind_annotate not found"

if [[ $INSTALL != 0 ]]; then
	make -s -C "$ROOT" NO_CLIENT=1 install >"$TMP/install.log" 2>&1 ||
		{ cat "$TMP/install.log" >&2; die "make install failed"; }
fi

USER_OF_SERVER=$("$ROOT/tools/cluster.sh" user)
as_server()
{
	if [[ $(id -un) == "$USER_OF_SERVER" ]]; then
		"$@"
	else
		runuser -u "$USER_OF_SERVER" -- "$@"
	fi
}

cleanup()
{
	as_server "$PG_BINDIR/pg_ctl" -D "$CLUSTER/data" -m fast -w -t 120 stop >/dev/null 2>&1 || true
	rm -rf "$CLUSTER"
}
trap cleanup EXIT

rm -rf "$OUT"
mkdir -p "$OUT"
preload=
[[ $PRELOAD == 0 ]] || preload="shared_preload_libraries=idempotency"
CLUSTER_OPTS="shared_buffers=128MB huge_pages=off fsync=on max_connections=20 $preload" \
	"$ROOT/tools/cluster.sh" start "$CLUSTER" >/dev/null
# shellcheck disable=SC1091
. "$CLUSTER/env"
psql -X -q -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION idempotency' -f "$BENCH_DIR/setup.sql" \
	-f "$BENCH_DIR/plpgsql_baseline.sql" >/dev/null
for t in idem_keys bl_keys raw_keys; do
	psql -X -q -v ON_ERROR_STOP=1 -c "SELECT bench_load('$t', 1, 100000)" \
		-c "VACUUM ANALYZE $t" >/dev/null
done
psql -X -q -c CHECKPOINT
"$ROOT/tools/cluster.sh" stop "$CLUSTER" >/dev/null

chown "$USER_OF_SERVER" "$OUT" 2>/dev/null || true
as_server valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" \
	"$PG_BINDIR/postgres" -D "$CLUSTER/data" >"$OUT/server.log" 2>&1 &
for _ in $(seq 120); do
	psql -X -A -t -c 'SELECT 1' >/dev/null 2>&1 && break
	sleep 1
done
psql -X -A -t -c 'SELECT 1' >/dev/null || die "the server under callgrind did not start"

# run SCRIPT N: the callgrind file of the backend that ran N transactions
run()
{
	local before f best=0 bestf= ir
	before=$(ls "$OUT")
	pgbench -n -M "${INSTR_MODE:-prepared}" -c 1 -j 1 -t "$2" -D hash="$HASH" -D nkeys="$NKEYS" \
		-D maxkey=10000000000 -f "$BENCH_DIR/scripts/$1.sql" >"$OUT/$1-$2.pgbench" 2>&1 ||
		die "pgbench $1 failed: $(tail -n 1 "$OUT/$1-$2.pgbench")"
	sleep 3
	# pgbench's connections: the one that ran the transactions did the most
	for f in $(comm -13 <(echo "$before") <(ls "$OUT") | grep '^cg\.'); do
		ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$OUT/$f")
		if [[ -n $ir ]] && ((ir > best)); then
			best=$ir
			bestf=$f
		fi
	done
	[[ -n $bestf ]] || die "no callgrind file for $1"
	mv "$OUT/$bestf" "$OUT/$1-$2.cg"
	echo "$best"
}

inclusive()
{
	callgrind_annotate --inclusive=yes --threshold=100 --auto=no "$1" 2>/dev/null |
		awk -v f="$2" 'NF >= 3 {n = $(NF - 1); sub(/.*:/, "", n)}
			n == f {gsub(",", "", $1); s += $1} END {print s + 0}'
}

for s in $SCRIPTS; do
	((WARM == 0)) || run "$s" "$WARM" >/dev/null
	a=$(run "$s" "$SMALL")
	b=$(run "$s" "$BIG")
	printf '%-16s %9.0f instructions per transaction\n' "$s" "$(((b - a) / (BIG - SMALL)))"
	for fn in ${INSTR_FUNCS:-}; do
		fa=$(inclusive "$OUT/$s-$SMALL.cg" "$fn")
		fb=$(inclusive "$OUT/$s-$BIG.cg" "$fn")
		printf '    %-36s %9.0f\n' "$fn" "$(((fb - fa) / (BIG - SMALL)))"
	done
done
