#!/usr/bin/env bash
#
# run.sh: the benchmark of the idempotency extension, in one run.
#
#   bench/run.sh               (or: make -C bench, make bench)
#   BENCH_QUICK=1 bench/run.sh a smoke run of about a minute
#
# Runs every workload under two server configurations, one after the other
# in the same run (BENCH_CONFIGS):
#
#   stock   PostgreSQL's defaults: shared_buffers = 128MB, huge_pages = off
#   tuned   shared_buffers a quarter of RAM (at most 8GB), in huge pages
#           that the run reserves when it runs as root
#
# both with fsync on and max_connections = BENCH_MAX_CONNECTIONS.  For each,
# it starts a throwaway cluster of its own (tools/cluster.sh), loads the
# extension, the PL/pgSQL baseline (plpgsql_baseline.sql) and the raw
# floor's table (setup.sql), and measures, alternating the implementations
# round by round (A B C, then C B A, ...) so that drifts of the machine
# fall on all of them alike (a private Redis, when there, serves both):
#
#   1  fresh    reserve + commit of a new key, autocommit      (pgbench)
#   6  fresh    the same with the key tables unlogged          (pgbench)
#   2  replay   reserve of a committed key                     (pgbench)
#   3  hotkey   32 waiters on one key, one owner commits       (idembench)
#   5  purge    reserve + commit while 1M expired keys are purged (pgbench)
#   4  scale    per-operation cost at 10^4, 10^6, 10^7 keys    (idembench)
#
# The raw data go to bench/tmp/data/CONFIG (kept until the next run, never
# committed), the report (results.md, summary.csv and the PNG plots) to
# bench/results/, written by report.py (make -C bench report writes it
# again from the last run's data).
# A benchmark measures: it never fails on speed.  It exits non-zero only
# when it could not run (no server, a script error); a workload that fails
# is reported as missing and the others go on.
#
# Settings (environment):
#   BENCH_CONFIGS="stock tuned"       server configurations, in this order
#   BENCH_SECONDS=10        length of each pgbench run (workloads 1, 2, 6)
#   BENCH_ROUNDS=2          rounds per workload (each runs every implementation)
#   BENCH_CLIENTS=8 BENCH_THREADS=2   pgbench -c / -j, idembench clients
#   BENCH_IMPLS="ext plpgsql raw"     implementations, in round order
#   BENCH_REDIS=auto        also Redis (workloads 1, 2) when redis-server is
#                           installed; 0 = never, 1 = required
#   BENCH_ASYNC=auto        workload 1 also with idem.async_reserve = on, when
#                           the extension has that setting; 0 = never
#   BENCH_WORKLOADS="1 6 2 3 5 4"     which workloads, in this order
#   BENCH_FRESH_KEYS=100000 keys stored before each run of 1, 5, 6
#   BENCH_REPLAY_KEYS=100000          committed keys replayed by 2
#   BENCH_HOT_WAITERS=32 BENCH_HOT_ROUNDS=100  workload 3 (one round that a
#                           busy machine stalls moves all 32 of its samples:
#                           enough rounds keep that out of the p99)
#   BENCH_PURGE_KEYS=1000000          expired keys purged by 5
#   BENCH_PURGE_BATCH=10000 keys per purge transaction (0: all in one call)
#   BENCH_PURGE_IDLE=BENCH_SECONDS (3 at least)  seconds before the purge starts
#   BENCH_PURGE_MAX=300     longest purge measured (pgbench then stops)
#   BENCH_SCALE_SIZES="10000 1000000 10000000"  workload 4
#   BENCH_SCALE_SECONDS=5   length of each idembench run of 4
#   BENCH_SHARED_BUFFERS=(a quarter of RAM, at most 8GB)  of the tuned
#                           configuration (stock: 128MB)
#   BENCH_MAX_CONNECTIONS=100
#   BENCH_HUGE_PAGES=auto   tuned: as root, reserve huge pages for
#                           shared_buffers for the run (vm.nr_hugepages, given
#                           back at the end); 0: leave the system's setting
#                           alone (stock always runs with huge_pages = off)
#   BENCH_PRELOAD=1         shared_preload_libraries = 'idempotency', as README.md
#                           installs it (with idem.purge_interval = 0: no purge
#                           worker beside the measured purge); 0: not preloaded
#   BENCH_CLUSTER_OPTS=     more postgresql.conf settings, both configurations
#                           (see tools/cluster.sh)
#   BENCH_INSTALL=1         build and install the extension from the working
#                           tree first; head: from a clean export of git HEAD
#                           (uncommitted edits left out); 0: measure the
#                           installed one
#   BENCH_INSTRUCTIONS=auto  at the end, the instructions per transaction of
#                           replays and reserve + commit against the raw
#                           floor, counted by callgrind (bench/instructions.sh,
#                           stock settings, about a minute) when valgrind is
#                           installed; 0 = never, 1 = required
#   BENCH_TMP=bench/tmp  BENCH_RESULTS=bench/results
#   BENCH_KEEP=0            1: leave the cluster running at the end (else it is
#                           stopped and its directory removed)
#
# BENCH_QUICK=1 changes the defaults to: 1 s runs, 10^4 stored keys in
# workloads 1, 2, 6, 3 hot-key rounds, 5 * 10^4 expired keys, scale sizes
# 10^4 and 10^5 (no 10^6, no 10^7).

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)

QUICK=${BENCH_QUICK:-0}
if [[ $QUICK == 1 ]]; then
	d_seconds=1 d_hot_rounds=3 d_fresh_keys=10000 d_purge_keys=50000
	d_scale_sizes="10000 100000" d_scale_seconds=1
else
	d_seconds=10 d_hot_rounds=100 d_fresh_keys=100000 d_purge_keys=1000000
	d_scale_sizes="10000 1000000 10000000" d_scale_seconds=5
fi
SECS=${BENCH_SECONDS:-$d_seconds}
ROUNDS=${BENCH_ROUNDS:-2}
CLIENTS=${BENCH_CLIENTS:-8}
THREADS=${BENCH_THREADS:-2}
IMPLS=${BENCH_IMPLS:-ext plpgsql raw}
REDIS=${BENCH_REDIS:-auto}
WORKLOADS=${BENCH_WORKLOADS:-1 6 2 3 5 4}
FRESH_KEYS=${BENCH_FRESH_KEYS:-$d_fresh_keys}
REPLAY_KEYS=${BENCH_REPLAY_KEYS:-$d_fresh_keys}
HOT_WAITERS=${BENCH_HOT_WAITERS:-32}
HOT_ROUNDS=${BENCH_HOT_ROUNDS:-$d_hot_rounds}
PURGE_KEYS=${BENCH_PURGE_KEYS:-$d_purge_keys}
PURGE_BATCH=${BENCH_PURGE_BATCH:-10000}
PURGE_IDLE=${BENCH_PURGE_IDLE:-$((SECS < 3 ? 3 : SECS))}
PURGE_MAX=${BENCH_PURGE_MAX:-300}
PRELOAD=${BENCH_PRELOAD:-1}
SCALE_SIZES=${BENCH_SCALE_SIZES:-$d_scale_sizes}
SCALE_SECS=${BENCH_SCALE_SECONDS:-$d_scale_seconds}
# a quarter of the machine's memory, at most 8 GB: with 10^7 keys per
# implementation (3.9 GB of table and index each) workload 4 then runs
# from shared_buffers, as a tuned server would
d_shared_buffers=$(awk '/MemTotal/ {mb = int($2 / 1024 / 4); if (mb > 8192) mb = 8192; print mb "MB"}' /proc/meminfo)
SHARED_BUFFERS=${BENCH_SHARED_BUFFERS:-$d_shared_buffers}
CONFIGS=${BENCH_CONFIGS:-stock tuned}
HUGE_PAGES=${BENCH_HUGE_PAGES:-auto}
MAX_CONNECTIONS=${BENCH_MAX_CONNECTIONS:-100}
INSTALL=${BENCH_INSTALL:-1}
TMP=${BENCH_TMP:-$BENCH_DIR/tmp}
RESULTS=${BENCH_RESULTS:-$BENCH_DIR/results}
KEEP=${BENCH_KEEP:-0}

HASH=6d1f1b6bbf2f5a3c4a7e0a5f2b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708
KEY_STEP=100000
CLUSTER=$TMP/cluster
DATA_ROOT=$TMP/data
DATA=
CONFIG=
IDEMBENCH=$BENCH_DIR/build/idembench
REDIS_PORT=
REDIS_PID=
T_START=$(date +%s)

log()
{
	printf '[bench %s +%ss] %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - T_START))" "$*"
}

die()
{
	echo "bench: $*" >&2
	exit 1
}

# ---- preflight ------------------------------------------------------------

PG_BINDIR=$("${PG_CONFIG:-pg_config}" --bindir 2>/dev/null) || PG_BINDIR=
[[ -x $PG_BINDIR/pgbench ]] || PG_BINDIR=/usr/lib/postgresql/15/bin
PATH=$PG_BINDIR:$PATH
for tool in pgbench psql python3; do
	command -v "$tool" >/dev/null || die "$tool not found"
done
if ! command -v gnuplot >/dev/null; then
	if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		log "installing gnuplot-nox for the plots"
		apt-get install -y -q gnuplot-nox >/dev/null 2>&1 ||
			{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q gnuplot-nox >/dev/null 2>&1; } ||
			log "could not install gnuplot-nox: no plots"
	else
		log "gnuplot not found: no plots (apt-get install gnuplot-nox)"
	fi
fi

mkdir -p "$TMP"
case $INSTALL in
	0) ;;
	head)
		log "building and installing the extension from git HEAD ($(git -C "$ROOT" rev-parse --short HEAD))"
		rm -rf "$TMP/src"
		mkdir -p "$TMP/src"
		git -C "$ROOT" archive HEAD | tar -x -C "$TMP/src"
		make -s -C "$TMP/src" NO_CLIENT=1 install >"$TMP/install.log" 2>&1 ||
			{ cat "$TMP/install.log" >&2; die "make install failed"; }
		;;
	*)
		log "building and installing the extension from $ROOT"
		make -s -C "$ROOT" NO_CLIENT=1 install >"$TMP/install.log" 2>&1 ||
			{ cat "$TMP/install.log" >&2; die "make install failed"; }
		;;
esac
make -s -C "$BENCH_DIR" build >/dev/null || die "could not build idembench"

USE_REDIS=0
case $REDIS in
	0) ;;
	1) command -v redis-server >/dev/null || die "redis-server not found"; USE_REDIS=1 ;;
	*) command -v redis-server >/dev/null && USE_REDIS=1 ;;
esac

# ---- the cluster (and Redis) ------------------------------------------------

# Huge pages for shared_buffers (BENCH_HUGE_PAGES=auto): PostgreSQL's
# default huge_pages = try uses them when the system has them.  Without
# them every backend takes a page fault the first time it touches each 4 kB
# page of shared_buffers, and a TLB miss on most random accesses after
# that: costs that grow with the data touched, not with the work done.  As
# root the run reserves what it needs (vm.nr_hugepages) and gives them back
# at the end; 0 leaves the system as it is.
HUGE_BEFORE=
reserve_huge_pages()
{
	local sb_mb need size_kb
	[[ $HUGE_PAGES == 0 ]] && return 0
	size_kb=$(awk '/Hugepagesize/ {print $2}' /proc/meminfo)
	[[ -n $size_kb && -w /proc/sys/vm/nr_hugepages ]] || {
		log "huge pages: not available here (needs root); shared_buffers in normal pages"
		return 0
	}
	sb_mb=$(awk -v s="$SHARED_BUFFERS" 'BEGIN {
		n = s + 0; u = toupper(substr(s, length(n "") + 1));
		if (u ~ /^GB/) n *= 1024; else if (u ~ /^KB/) n /= 1024; else if (u !~ /^MB/) n = n * 8 / 1024;
		print int(n) }')
	# shared_buffers plus the rest of the shared memory segment (about 8%)
	need=$(((sb_mb * 1024 * 108 / 100 + 64 * 1024) / size_kb))
	HUGE_BEFORE=$(cat /proc/sys/vm/nr_hugepages)
	if ((HUGE_BEFORE >= need)); then
		HUGE_BEFORE=
		return 0
	fi
	echo "$need" >/proc/sys/vm/nr_hugepages 2>/dev/null || true
	log "huge pages: reserved $(cat /proc/sys/vm/nr_hugepages) of ${size_kb} kB (asked for $need; was $HUGE_BEFORE)"
}

cleanup()
{
	local rc=$?
	if [[ -n $REDIS_PID ]]; then
		kill "$REDIS_PID" 2>/dev/null || true
	fi
	if [[ $KEEP != 1 && -d $CLUSTER ]]; then
		# stopped and removed: with 10^7 keys per table it holds gigabytes
		"$ROOT/tools/cluster.sh" stop "$CLUSTER" >/dev/null 2>&1 || true
		rm -rf "$CLUSTER"
	fi
	if [[ -n $HUGE_BEFORE && ($KEEP != 1 || ! -d $CLUSTER) ]]; then
		echo "$HUGE_BEFORE" >/proc/sys/vm/nr_hugepages 2>/dev/null || true
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$DATA_ROOT"
mkdir -p "$DATA_ROOT" "$RESULTS"

if [[ $USE_REDIS == 1 ]]; then
	REDIS_PORT=$((${CLUSTER_PORT:-54320} + 1000))
	while (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null; do
		REDIS_PORT=$((REDIS_PORT + 1))
	done
	mkdir -p "$TMP/redis"
	# in memory only: no RDB snapshots, no append-only file
	redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
		--appendonly no --dir "$TMP/redis" --daemonize no \
		--logfile "$TMP/redis/redis.log" &
	REDIS_PID=$!
	for _ in $(seq 50); do
		redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
		sleep 0.1
	done
	redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 || die "redis-server did not start"
	log "redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on port $REDIS_PORT"
fi

psql_q()
{
	psql -X -q -A -t -v ON_ERROR_STOP=1 "$@"
}

# start_config NAME: a new cluster with the settings of configuration NAME,
# the extension and the baselines loaded; its raw data go to $DATA
start_config()
{
	local sb opts
	CONFIG=$1
	DATA=$DATA_ROOT/$CONFIG
	mkdir -p "$DATA"
	case $CONFIG in
		stock)
			sb=128MB
			opts="huge_pages=off"
			;;
		tuned)
			sb=$SHARED_BUFFERS
			opts="huge_pages=try"
			reserve_huge_pages
			;;
		*) die "unknown configuration $CONFIG (stock, tuned)" ;;
	esac
	[[ $PRELOAD == 0 ]] || opts="$opts shared_preload_libraries=idempotency idem.purge_interval=0"
	log "configuration $CONFIG: starting a cluster in $CLUSTER (shared_buffers=$sb, $opts, max_connections=$MAX_CONNECTIONS, fsync on)"
	start_cluster()
	{
		CLUSTER_OPTS="shared_buffers=$sb $opts max_connections=$MAX_CONNECTIONS fsync=on
${BENCH_CLUSTER_OPTS:-}" "$ROOT/tools/cluster.sh" start "$CLUSTER" >/dev/null
	}
	# (once more after a failure: the machine is shared, ports come and go)
	start_cluster || { sleep 2; start_cluster; } || die "could not start a cluster"
	# shellcheck disable=SC1091
	. "$CLUSTER/env"
	psql_q -c 'CREATE EXTENSION idempotency' -c 'CREATE EXTENSION pg_prewarm' -f "$BENCH_DIR/setup.sql" \
		-f "$BENCH_DIR/plpgsql_baseline.sql" >/dev/null
}

# stop_config: stops and removes the cluster (with 10^7 keys per table it
# holds gigabytes) and gives back the huge pages it had
stop_config()
{
	"$ROOT/tools/cluster.sh" stop "$CLUSTER" >/dev/null 2>&1 || true
	rm -rf "$CLUSTER"
	if [[ -n $HUGE_BEFORE ]]; then
		echo "$HUGE_BEFORE" >/proc/sys/vm/nr_hugepages 2>/dev/null || true
		HUGE_BEFORE=
	fi
}

# ---- what was measured, on what ---------------------------------------------

describe_config()
{
	{
		echo "config	$CONFIG"
		echo "date	$(date -u '+%Y-%m-%d %H:%M UTC')"
		echo "cpu	$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)"
		echo "cores	$(nproc)"
		echo "ram	$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
		echo "kernel	$(uname -sr)"
		echo "virt	$(lscpu 2>/dev/null | sed -n 's/^Hypervisor vendor:[[:space:]]*//p' | head -n 1)"
		echo "pg	$(psql_q -c 'SHOW server_version')"
		if [[ $(psql_q -c 'SHOW huge_pages') == off ]]; then
			echo "huge	in normal pages (huge_pages = off)"
		else
			echo "huge	$(awk '/HugePages_Total/ {t = $2} /HugePages_Free/ {f = $2} /HugePages_Rsvd/ {r = $2} /Hugepagesize/ {z = $2}
				END {if (t - f + r > 0) printf "in huge pages (%d of %d kB in use or reserved; huge_pages = try)", t - f + r, z;
					 else printf "in normal pages (no huge pages; huge_pages = try)"}' /proc/meminfo)"
		fi
		echo "settings	$(psql_q -F ' ' -c "SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name) FROM pg_settings WHERE name IN ('shared_buffers', 'huge_pages', 'max_connections', 'fsync', 'synchronous_commit', 'wal_level', 'max_wal_size', 'checkpoint_timeout', 'wal_sync_method', 'full_page_writes', 'shared_preload_libraries')")"
		echo "ext	$(psql_q -c "SELECT extversion FROM pg_extension WHERE extname = 'idempotency'")"
		case $INSTALL in
			0) echo "commit	installed build, tree at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" ;;
			head) echo "commit	$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" ;;
			*) echo "commit	$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- src sql 2>/dev/null || echo ' + uncommitted changes in src/ or sql/')" ;;
		esac
		echo "load_before	$(cut -d' ' -f1-3 /proc/loadavg)"
		echo "seconds	$SECS"
		echo "rounds	$ROUNDS"
		echo "clients	$CLIENTS"
		echo "threads	$THREADS"
		echo "impls	$IMPLS"
		echo "redis	$([[ $USE_REDIS == 1 ]] && redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p' || echo no)"
		echo "fresh_keys	$FRESH_KEYS"
		echo "replay_keys	$REPLAY_KEYS"
		echo "hot_waiters	$HOT_WAITERS"
		echo "hot_rounds	$HOT_ROUNDS"
		echo "purge_keys	$PURGE_KEYS"
		echo "purge_batch	$PURGE_BATCH"
		echo "scale_sizes	$SCALE_SIZES"
		echo "scale_seconds	$SCALE_SECS"
		echo "quick	$QUICK"
	} >"$DATA/machine.tsv"
}

# manifest of the configuration: workload variant impl round tps file extra
record()
{
	local IFS=$'\t'
	echo "$*" >>"$DATA/manifest.tsv"
}

table_of()
{
	case $1 in
		ext | ext_async) echo idem_keys ;;
		plpgsql) echo bl_keys ;;
		raw) echo raw_keys ;;
	esac
}

# the implementations of round r: forwards in odd rounds, backwards in even
impls_of_round()
{
	local r=$1 list=($2) i
	if ((r % 2 == 1)); then
		echo "${list[*]}"
	else
		for ((i = ${#list[@]} - 1; i >= 0; i--)); do
			printf '%s ' "${list[i]}"
		done
		echo
	fi
}

pg_impls=$IMPLS
all_impls=$IMPLS
[[ $USE_REDIS == 1 ]] && all_impls="$IMPLS redis"

# workload 1 also measures the extension with idem.async_reserve = on (one
# WAL flush per request instead of two), when the extension has it
pick_fresh_impls()
{
	fresh_impls=$all_impls
	case ${BENCH_ASYNC:-auto} in
		0) ;;
		*)
			if [[ " $IMPLS " == *" ext "* ]] &&
				[[ $(psql_q -c "SELECT idem_get('x') IS NULL" -c "SELECT current_setting('idem.async_reserve', true) IS NOT NULL") == *t ]]; then
				fresh_impls=${all_impls/ext/ext ext_async}
			elif [[ ${BENCH_ASYNC:-auto} == 1 ]]; then
				die "the installed extension has no setting idem.async_reserve"
			fi
			;;
	esac
}

# empties table t and stores keys 1..n (committed, live), then vacuums
reload()
{
	local t=$1 n=$2
	psql_q -c "TRUNCATE $t" -c "SELECT bench_load('$t', 1, $n)" \
		-c "VACUUM ANALYZE $t" >/dev/null
}

# CPU time (clock ticks) of the postmaster's children that have exited:
# the backends of finished pgbench runs (not the walwriter, checkpointer ...)
CLK_TCK=$(getconf CLK_TCK)
children_ticks()
{
	awk '{print $16 + $17}' "/proc/$(head -n 1 "$CLUSTER/data/postmaster.pid")/stat"
}

# WAL records, full-page images, bytes and flushes (wal_sync: the fsyncs
# of WAL by all the server's processes, the WAL writer's included) and the
# transactions committed in this database, so far
wal_counters()
{
	psql_q -F ' ' -c 'SELECT wal_records, wal_fpi, wal_bytes, wal_sync, (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) FROM pg_stat_wal'
}

# pgbench_run NAME SCRIPT SECONDS [VAR=VALUE...]: runs pgbench with a
# per-transaction log; prints the tps; the log lines go to $DATA/NAME.log,
# and to $DATA/NAME.cpu the server's CPU time, WAL and WAL flushes per
# transaction: the CPU of the run's backends (read from the postmaster once
# they have exited), which other work on the machine hardly disturbs
pgbench_run()
{
	local name=$1 script=$2 secs=$3 out wal0 t0 t1 wal n
	shift 3
	local vars=()
	for v in "$@"; do vars+=(-D "$v"); done
	rm -f "$DATA/$name".pgb*
	# (the backends of earlier sessions report their WAL when they exit)
	sleep 0.3
	wal0=$(wal_counters)
	sleep 0.3
	t0=$(children_ticks)
	if ! out=$(pgbench -n -M prepared -c "$CLIENTS" -j "$THREADS" -T "$secs" \
		-D hash="$HASH" "${vars[@]}" -f "$BENCH_DIR/scripts/$script.sql" \
		-l --log-prefix="$DATA/$name.pgb" 2>&1); then
		echo "$out" >"$DATA/$name.err"
		echo "bench: pgbench $script failed: $(grep -m1 -i error <<<"$out")" >&2
		rm -f "$DATA/$name".pgb*
		echo 0
		return 0
	fi
	sleep 0.3
	t1=$(children_ticks)
	wal=$(wal_counters)
	cat "$DATA/$name".pgb* >"$DATA/$name.log"
	rm -f "$DATA/$name".pgb*
	n=$(wc -l <"$DATA/$name.log")
	if ((n > 0)); then
		# WAL of the whole cluster meanwhile: records, full-page images,
		# bytes, flushes; and the commits (of the run, and of the few
		# statements of wal_counters itself)
		awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v a="$wal0" -v b="$wal" -v n="$n" \
			'BEGIN {split(a, x, " "); split(b, y, " ");
				printf "cpu_us=%.2f;wal_rec=%.3f;wal_fpi=%.4f;wal=%.1f;wal_sync=%.4f;commits=%.3f;n=%d\n", t / hz * 1e6 / n,
					(y[1] - x[1]) / n, (y[2] - x[2]) / n, (y[3] - x[3]) / n, (y[4] - x[4]) / n,
					(y[5] - x[5]) / n, n}' \
			>"$DATA/$name.cpu"
	fi
	sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' <<<"$out"
}

cpu_of()
{
	cat "$DATA/$1.cpu" 2>/dev/null || true
}

# latency column (microseconds) of a pgbench log
lat_of()
{
	awk '{print $3}' "$1"
}

# idembench_ops NAME IMPL OP NKEYS SECONDS: prints the tps; latencies go to
# $DATA/NAME.lat, the server's CPU per operation to $DATA/NAME.cpu
idembench_ops()
{
	local name=$1 impl=$2 op=$3 nkeys=$4 secs=$5 out t0 t1 n
	[[ $impl != redis ]] && { sleep 0.3; t0=$(children_ticks); }
	if ! out=$("$IDEMBENCH" ops --impl "$impl" --op "$op" --nkeys "$nkeys" \
		--clients "$CLIENTS" --seconds "$secs" --out "$DATA/$name.lat" \
		${REDIS_PORT:+--redis-port "$REDIS_PORT"} 2>"$DATA/$name.err"); then
		echo "bench: idembench $impl $op failed: $(head -n 1 "$DATA/$name.err")" >&2
		echo 0
		return 0
	fi
	n=$(sed -n 's/.* ops=\([0-9]*\) .*/\1/p' <<<"$out")
	if [[ $impl != redis ]] && ((n > 0)); then
		sleep 0.3
		t1=$(children_ticks)
		awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$n" \
			'BEGIN {printf "cpu_us=%.2f;n=%d\n", t / hz * 1e6 / n, n}' >"$DATA/$name.cpu"
	fi
	sed -n 's/.* tps=\([0-9.]*\) .*/\1/p' <<<"$out"
}

set_logged()
{
	local logged=$1 impl t
	for impl in $pg_impls; do
		t=$(table_of "$impl")
		if [[ $impl == ext ]]; then
			psql_q -c "SELECT idem_set_logged($logged)" >/dev/null
		elif [[ $logged == true ]]; then
			psql_q -c "ALTER TABLE $t SET LOGGED" >/dev/null
		else
			psql_q -c "ALTER TABLE $t SET UNLOGGED" >/dev/null
		fi
	done
}

# ---- workloads 1 and 6: reserve + commit of fresh keys ---------------------

fresh_workload()
{
	local variant=$1 r impl name tps impls=$all_impls opts
	[[ $variant == logged ]] && impls=$fresh_impls
	for ((r = 1; r <= ROUNDS; r++)); do
		for impl in $(impls_of_round "$r" "$impls"); do
			[[ $impl == redis && $variant == unlogged ]] && continue
			name=fresh-$variant-$impl-$r
			if [[ $impl == redis ]]; then
				redis-cli -p "$REDIS_PORT" flushall >/dev/null
				tps=$(idembench_ops "$name" redis fresh "$FRESH_KEYS" "$SECS")
			else
				reload "$(table_of "$impl")" "$FRESH_KEYS"
				psql_q -c CHECKPOINT
				opts=${PGOPTIONS:-}
				[[ $impl == ext_async ]] && opts="$opts -c idem.async_reserve=on"
				tps=$(PGOPTIONS=$opts pgbench_run "$name" "fresh_${impl%_async}" "$SECS" \
					maxkey=$((FRESH_KEYS * KEY_STEP)))
				[[ -s $DATA/$name.log ]] && lat_of "$DATA/$name.log" >"$DATA/$name.lat"
				rm -f "$DATA/$name.log"
			fi
			record fresh "$variant" "$impl" "$r" "$tps" "$name.lat" "$(cpu_of "$name")"
			log "workload 1 ($variant) round $r: $impl $tps tps"
		done
	done
}

w1()
{
	fresh_workload logged
}

w6()
{
	set_logged false
	fresh_workload unlogged
	set_logged true
}

# ---- workload 2: replays ------------------------------------------------------

w2()
{
	local r impl name tps t
	log "workload 2: loading $REPLAY_KEYS committed keys per implementation"
	local pids=()
	for impl in $pg_impls; do
		reload "$(table_of "$impl")" "$REPLAY_KEYS" &
		pids+=($!)
	done
	for pid in "${pids[@]}"; do
		wait "$pid" || die "loading the replay keys failed"
	done
	if [[ $USE_REDIS == 1 ]]; then
		redis-cli -p "$REDIS_PORT" flushall >/dev/null
		"$IDEMBENCH" redis-load --redis-port "$REDIS_PORT" --nkeys "$REPLAY_KEYS"
	fi
	# the keys were loaded by SQL: look each up once, as the reserve that
	# made a key would have, so that the location hints know where they are
	if [[ $PRELOAD != 0 && " $pg_impls " == *" ext "* ]]; then
		psql_q -c "SELECT count(*) FROM idem_keys k, LATERAL idem_get(k.key, k.scope) g" >/dev/null
	fi
	psql_q -c CHECKPOINT
	for ((r = 1; r <= ROUNDS; r++)); do
		for impl in $(impls_of_round "$r" "$all_impls"); do
			name=replay-$impl-$r
			if [[ $impl == redis ]]; then
				tps=$(idembench_ops "$name" redis replay "$REPLAY_KEYS" "$SECS")
			else
				tps=$(pgbench_run "$name" "replay_$impl" "$SECS" nkeys="$REPLAY_KEYS")
				[[ -s $DATA/$name.log ]] && lat_of "$DATA/$name.log" >"$DATA/$name.lat"
				rm -f "$DATA/$name.log"
			fi
			record replay logged "$impl" "$r" "$tps" "$name.lat" "$(cpu_of "$name")"
			log "workload 2 round $r: $impl $tps tps"
		done
	done
}

# ---- workload 3: hot key ---------------------------------------------------------

w3()
{
	local r impl name out
	for ((r = 1; r <= ROUNDS; r++)); do
		for impl in $(impls_of_round "$r" "$pg_impls"); do
			name=hotkey-$impl-$r
			if out=$("$IDEMBENCH" hotkey --impl "$impl" --waiters "$HOT_WAITERS" \
				--rounds "$HOT_ROUNDS" --out "$DATA/$name.lat" 2>"$DATA/$name.err"); then
				record hotkey "w$HOT_WAITERS" "$impl" "$r" 0 "$name.lat" ""
				log "workload 3 round $r: $impl: ${out#impl=* }"
			else
				echo "bench: hotkey $impl failed: $(tail -n 1 "$DATA/$name.err")" >&2
				record hotkey "w$HOT_WAITERS" "$impl" "$r" 0 "" "failed"
			fi
		done
	done
}

# ---- workload 5: purge while reserves run ------------------------------------------

# The purge of implementation $1, as one statement that prints the number of
# keys it deleted: in batches of PURGE_BATCH keys, each batch a transaction
# of its own (how a scheduled purge runs), or all at once (PURGE_BATCH=0)
purge_sql()
{
	local call
	if ((PURGE_BATCH == 0)); then
		case $1 in
			ext) echo "SELECT idem_purge()" ;;
			plpgsql) echo "SELECT bl_purge()" ;;
			raw) echo "WITH d AS (DELETE FROM raw_keys WHERE expires_at <= now() AND (state = 'committed' OR owner_pid IS NULL) RETURNING 1) SELECT count(*) FROM d" ;;
		esac
		return
	fi
	case $1 in
		ext) call="n := idem_purge($PURGE_BATCH);" ;;
		plpgsql) call="n := bl_purge($PURGE_BATCH);" ;;
		raw) call="DELETE FROM raw_keys WHERE ctid = ANY (ARRAY(SELECT ctid FROM raw_keys WHERE expires_at <= now() AND (state = 'committed' OR owner_pid IS NULL) LIMIT $PURGE_BATCH)); GET DIAGNOSTICS n = ROW_COUNT;" ;;
	esac
	cat <<-EOF
		DO \$\$
		DECLARE n bigint; total bigint := 0;
		BEGIN
			LOOP
				$call
				total := total + n;
				COMMIT;
				EXIT WHEN n < $PURGE_BATCH;
			END LOOP;
			PERFORM set_config('bench.purged', total::text, false);
		END \$\$;
		SELECT current_setting('bench.purged');
	EOF
}

w5()
{
	local r impl name t tps t0 t1 pid purged f
	for ((r = 1; r <= ROUNDS; r++)); do
		for impl in $(impls_of_round "$r" "$pg_impls"); do
			t=$(table_of "$impl")
			name=purge-$impl-$r
			# live keys 1..F, then expired keys F+1..F+P: fresh keys fall
			# anywhere in both ranges
			psql_q -c "TRUNCATE $t" -c "SELECT bench_load('$t', 1, $FRESH_KEYS)" \
				-c "SELECT bench_load('$t', $((FRESH_KEYS + 1)), $((FRESH_KEYS + PURGE_KEYS)), true)" \
				-c "VACUUM ANALYZE $t" -c CHECKPOINT >/dev/null
			rm -f "$DATA/$name".pgb*
			# pgbench runs until a second after the purge: it has no clean
			# way to stop early, so it is interrupted (what it had not yet
			# written of its log is after the purge, and not needed)
			pgbench -n -M prepared -c "$CLIENTS" -j "$THREADS" \
				-T "$((PURGE_IDLE + PURGE_MAX))" \
				-D hash="$HASH" -D maxkey=$(((FRESH_KEYS + PURGE_KEYS) * KEY_STEP)) \
				-f "$BENCH_DIR/scripts/fresh_$impl.sql" \
				-l --log-prefix="$DATA/$name.pgb" >"$DATA/$name.out" 2>&1 &
			pid=$!
			sleep "$PURGE_IDLE"
			t0=$(date +%s.%N)
			if purged=$(purge_sql "$impl" | psql_q 2>"$DATA/$name.err"); then
				purged=${purged##*$'\n'}
			else
				purged=failed
			fi
			t1=$(date +%s.%N)
			sleep 1
			kill -TERM "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
			if grep -qi 'error' "$DATA/$name.out"; then
				echo "bench: pgbench during purge ($impl): $(grep -m1 -i error "$DATA/$name.out")" >&2
			fi
			tps=0
			# completion time (epoch seconds) and latency of each transaction
			# (the last line of each thread's log may be cut short: dropped)
			for f in "$DATA/$name".pgb*; do
				[[ -f $f ]] && head -n -1 "$f"
			done |
				awk 'NF == 6 && $6 ~ /^[0-9]+$/ {printf "%d.%06d %d\n", $5, $6, $3}' |
				sort -n >"$DATA/$name.lat"
			rm -f "$DATA/$name".pgb*
			record purge "run" "$impl" "$r" "${tps:-0}" "$name.lat" \
				"t0=$t0;t1=$t1;purged=$purged;idle=$PURGE_IDLE;batch=$PURGE_BATCH"
			log "workload 5 round $r: $impl purged $purged keys in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s"
		done
	done
}

# ---- workload 4: scale ---------------------------------------------------------------

# prewarm TABLE: reads the table and its indexes into shared_buffers, so
# that each implementation's runs start from the same place however much
# of its data the others' runs pushed out
prewarm()
{
	psql_q -c "SELECT sum(pg_prewarm(c.oid)) FROM pg_class c WHERE c.oid = '$1'::regclass OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = '$1'::regclass)" >/dev/null
}

w4()
{
	local size have=0 r impl name tps op pids pid
	for impl in $pg_impls; do
		psql_q -c "TRUNCATE $(table_of "$impl")"
	done
	for size in $SCALE_SIZES; do
		if ((size > have)); then
			log "workload 4: loading keys $((have + 1))..$size per implementation"
			pids=()
			for impl in $pg_impls; do
				psql_q -c "SELECT bench_load('$(table_of "$impl")', $((have + 1)), $size)" \
					-c "VACUUM ANALYZE $(table_of "$impl")" >/dev/null &
				pids+=($!)
			done
			for pid in "${pids[@]}"; do
				wait "$pid" || die "loading keys for workload 4 failed"
			done
			have=$size
			psql_q -c CHECKPOINT
		fi
		for ((r = 1; r <= ROUNDS; r++)); do
			for impl in $(impls_of_round "$r" "$pg_impls"); do
				prewarm "$(table_of "$impl")"
				for op in fresh replay; do
					name=scale-$size-$op-$impl-$r
					tps=$(idembench_ops "$name" "$impl" "$op" "$size" "$SCALE_SECS")
					record scale "$op:$size" "$impl" "$r" "$tps" "$name.lat" "$(cpu_of "$name")"
					log "workload 4 $size keys round $r: $impl $op $tps tps"
				done
			done
		done
	done
}

# run_workloads: every workload of BENCH_WORKLOADS on the running cluster
run_workloads()
{
	local w rc failed t0=$(date +%s)
	failed=
	for w in $WORKLOADS; do
		case $w in
			1) log "workload 1: reserve + commit, fresh keys, logged" ;;
			6) log "workload 6: reserve + commit, fresh keys, unlogged" ;;
			2) log "workload 2: replay of committed keys" ;;
			3) log "workload 3: hot key, $HOT_WAITERS waiters" ;;
			5) log "workload 5: purge of $PURGE_KEYS expired keys while reserves run" ;;
			4) log "workload 4: scale ($SCALE_SIZES keys)" ;;
			*) die "unknown workload $w" ;;
		esac
		# each workload in a subshell of its own: one that fails is reported,
		# and the others still run
		set +e
		(
			set -e
			"w$w"
		)
		rc=$?
		set -e
		if ((rc != 0)); then
			log "workload $w failed (exit $rc); going on with the others"
			failed="$failed $w"
			[[ $w == 6 ]] && { set_logged true || true; }
		fi
	done
	echo "failed	${failed# }" >>"$DATA/machine.tsv"

	echo "load_after	$(cut -d' ' -f1-3 /proc/loadavg)" >>"$DATA/machine.tsv"
	echo "duration	$(($(date +%s) - t0)) s" >>"$DATA/machine.tsv"
}

: >"$DATA_ROOT/configs.tsv"
for cfg in $CONFIGS; do
	start_config "$cfg"
	describe_config
	: >"$DATA/manifest.tsv"
	pick_fresh_impls
	run_workloads
	echo "$cfg" >>"$DATA_ROOT/configs.tsv"
	[[ $KEEP == 1 && $cfg == "${CONFIGS##* }" ]] || stop_config
done

# instructions per transaction, counted by callgrind (bench/instructions.sh):
# the one figure of the run that the machine's load does not move
case ${BENCH_INSTRUCTIONS:-auto} in
	0) ;;
	*)
		if command -v valgrind >/dev/null && command -v callgrind_annotate >/dev/null; then
			log "instructions per transaction (callgrind)"
			INSTR_PRELOAD=$PRELOAD BENCH_INSTALL=0 BENCH_TMP=$TMP "$BENCH_DIR/instructions.sh" \
				>"$DATA_ROOT/instructions.txt" 2>"$DATA_ROOT/instructions.err" ||
				log "instructions.sh failed: $(tail -n 1 "$DATA_ROOT/instructions.err")"
		elif [[ ${BENCH_INSTRUCTIONS:-auto} == 1 ]]; then
			die "valgrind not found (apt-get install valgrind)"
		fi
		;;
esac

log "writing the report to $RESULTS"
python3 "$BENCH_DIR/report.py" --data "$DATA_ROOT" --results "$RESULTS"
log "done: $RESULTS/results.md"
