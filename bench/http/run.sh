#!/usr/bin/env bash
#
# run.sh: the load figure of the HTTP example (examples/http) with wrk.
#
#   bench/http/run.sh
#
# Builds the service, starts a throwaway cluster of its own (tools/cluster.sh,
# default settings, fsync on) unless PGHOST is set, makes a database with
# the extension, starts the service on a free loopback port and drives it
# with wrk (Debian package wrk) and bench/http/charges.lua:
#
#   unique       POST /charges, a new Idempotency-Key per request: reserve,
#                insert, store the response, all in one transaction
#   replay       POST /charges, one key for every request: replays of the
#                stored response
#   unprotected  POST /charges-unprotected, no key: the same insert in a
#                transaction, without the middleware
#
# Rounds alternate the order (A B C, then C B A, ...) so that drifts of the
# machine fall on all three alike.  Prints a Markdown table (requests/s and
# latency, and the ratio to the unprotected twin, and the CPU time each
# request cost PostgreSQL, the service and the whole machine), also written
# to bench/http/results.md with the settings and the machine.  Checks that the
# unique run made exactly one charge per request answered and the replay
# run one charge in all.  Not part of `make test`.
#
# Settings (environment):
#   HTTP_BENCH_SECONDS=10      length of each wrk run
#   HTTP_BENCH_ROUNDS=2        rounds (each runs the three)
#   HTTP_BENCH_CONNECTIONS=16  wrk -c
#   HTTP_BENCH_WRK_THREADS=2   wrk -t
#   HTTP_BENCH_WORKERS=16      service --threads (database sessions)
#   HTTP_BENCH_IO_THREADS=2    service --io-threads
#   HTTP_BENCH_WARMUP=2        seconds of unrecorded load before each round
#   HTTP_BENCH_OUT=bench/http/results.md
#   HTTP_BENCH_PRELOAD=1       the cluster preloads the module, as README.md
#                              installs it (idem.purge_interval = 0); 0: not
#   HTTP_BENCH_CLUSTER_OPTS=   more postgresql.conf settings for the cluster
#
# Needs the extension installed (make install) and wrk.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SECONDS_EACH=${HTTP_BENCH_SECONDS:-10}
ROUNDS=${HTTP_BENCH_ROUNDS:-2}
CONNS=${HTTP_BENCH_CONNECTIONS:-16}
WRK_THREADS=${HTTP_BENCH_WRK_THREADS:-2}
WORKERS=${HTTP_BENCH_WORKERS:-16}
IO_THREADS=${HTTP_BENCH_IO_THREADS:-2}
WARMUP=${HTTP_BENCH_WARMUP:-2}
OUT=${HTTP_BENCH_OUT:-$HERE/results.md}
TMP=$HERE/tmp
DB=idem_http_bench
TAG=b$$

PG_BINDIR=$(pg_config --bindir 2>/dev/null) || PG_BINDIR=
[[ -x $PG_BINDIR/psql ]] || PG_BINDIR=/usr/lib/postgresql/15/bin
export PATH=$PG_BINDIR:$PATH

die() { echo "bench/http: $*" >&2; exit 1; }
say() { echo "bench/http: $*" >&2; }

command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"
command -v curl >/dev/null || die "curl is not installed"

cluster=
svc_pid=
cleanup()
{
	if [[ -n $svc_pid ]] && kill -0 "$svc_pid" 2>/dev/null; then
		kill -TERM "$svc_pid" 2>/dev/null
		{ wait "$svc_pid"; } 2>/dev/null || true
	fi
	if [[ -n ${PGHOST:-} ]]; then
		psql -XAtq -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
	fi
	if [[ -n $cluster ]]; then
		bash "$ROOT/tools/cluster.sh" stop "$cluster" >/dev/null 2>&1 || true
	fi
}
trap cleanup EXIT

mkdir -p "$TMP"
say "building examples/http"
make -s --no-print-directory -C "$ROOT/examples/http" >&2

if [[ -z ${PGHOST:-} ]]; then
	cluster=$TMP/cluster
	opts=
	[[ ${HTTP_BENCH_PRELOAD:-1} == 0 ]] || opts="shared_preload_libraries=idempotency idem.purge_interval=0"
	CLUSTER_OPTS="$opts ${HTTP_BENCH_CLUSTER_OPTS:-}" bash "$ROOT/tools/cluster.sh" start "$cluster" >&2
	# shellcheck disable=SC1091
	. "$cluster/env"
fi
PGOPTIONS="-c client_min_messages=warning" psql -XAtq -v ON_ERROR_STOP=1 -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" \
	-c "CREATE DATABASE $DB" >/dev/null
psql -XAtq -v ON_ERROR_STOP=1 -d "$DB" -c "CREATE EXTENSION idempotency" >/dev/null ||
	die "CREATE EXTENSION idempotency failed: is it installed (make install)?"
export PGDATABASE=$DB

rm -f "$TMP/port"
"$ROOT/examples/http/service" --port 0 --port-file "$TMP/port" --quiet \
	--threads "$WORKERS" --io-threads "$IO_THREADS" >"$TMP/service.out" 2>"$TMP/service.err" &
svc_pid=$!
for _ in $(seq 1 100); do
	[[ -s $TMP/port ]] && break
	sleep 0.1
done
[[ -s $TMP/port ]] || die "the service did not start: $(cat "$TMP/service.err")"
URL=http://127.0.0.1:$(cat "$TMP/port")

# the replayed keys exist before any measured run
for ((round = 1; round <= ROUNDS; round++)); do
	code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$URL/charges" \
		-H "X-Tenant: bench" -H "Idempotency-Key: $TAG-r$round-replay" -H "Content-Type: application/json" \
		-d '{"amount": 1000, "currency": "usd", "description": "wrk"}')
	[[ $code == 201 ]] || die "the first replayed request answered $code"
done
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

declare -A rps_sum p50_sum p99_sum mean_sum req_sum err_sum pg_sum svc_sum all_sum
modes=(unprotected unique replay)

# CPU time, in clock ticks: of the PIDs given (utime + stime, all their
# threads), of the machine (every CPU's busy time, /proc/stat)
CLK_TCK=$(getconf CLK_TCK)
ticks_of()
{
	local t=0 p
	for p in "$@"; do
		if [[ -r /proc/$p/stat ]]; then
			t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
		fi
	done
	echo "$t"
}
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# the server's processes, when the cluster is this run's own
pg_ticks()
{
	local pm
	[[ -n $cluster ]] || { echo 0; return; }
	pm=$(head -n 1 "$cluster/data/postmaster.pid")
	# shellcheck disable=SC2046
	ticks_of "$pm" $(pgrep -P "$pm")
}

# run_wrk MODE SECONDS TAG: prints the RESULT line
run_wrk()
{
	wrk -t "$WRK_THREADS" -c "$CONNS" -d "${2}s" --timeout 10s \
		-s "$HERE/charges.lua" "$URL" -- "$1" "$3" 2>&1 | grep '^RESULT' || true
}

val() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$2"; }

for ((round = 1; round <= ROUNDS; round++)); do
	order=("${modes[@]}")
	if ((round % 2 == 0)); then
		order=(replay unique unprotected)
	fi
	if ((WARMUP > 0)); then
		run_wrk unprotected "$WARMUP" "$TAG-warm$round" >/dev/null
	fi
	for m in "${order[@]}"; do
		# unique keys: a tag per round, so that no round replays another's
		pg0=$(pg_ticks) svc0=$(ticks_of "$svc_pid") all0=$(machine_ticks)
		line=$(run_wrk "$m" "$SECONDS_EACH" "$TAG-r$round")
		pg1=$(pg_ticks) svc1=$(ticks_of "$svc_pid") all1=$(machine_ticks)
		[[ -n $line ]] || die "wrk printed no result for $m"
		say "round $round $m: $line"
		pg_sum[$m]=$((${pg_sum[$m]:-0} + pg1 - pg0))
		svc_sum[$m]=$((${svc_sum[$m]:-0} + svc1 - svc0))
		all_sum[$m]=$((${all_sum[$m]:-0} + all1 - all0))
		rps_sum[$m]=$(bc -l <<<"${rps_sum[$m]:-0} + $(val rps "$line")")
		p50_sum[$m]=$(bc -l <<<"${p50_sum[$m]:-0} + $(val p50_us "$line")")
		p99_sum[$m]=$(bc -l <<<"${p99_sum[$m]:-0} + $(val p99_us "$line")")
		mean_sum[$m]=$(bc -l <<<"${mean_sum[$m]:-0} + $(val mean_us "$line")")
		req_sum[$m]=$((${req_sum[$m]:-0} + $(val requests "$line")))
		err_sum[$m]=$((${err_sum[$m]:-0} + $(val socket_errors "$line") + $(val non2xx "$line")))
	done
done

# exactly once under load: one row per unique key, one for the replayed key
unique_rows=$(psql -XAtq -c "SELECT count(*), count(DISTINCT idempotency_key) FROM http_example.charges
	WHERE tenant = 'bench' AND idempotency_key LIKE '$TAG-r%' AND idempotency_key NOT LIKE '%-replay'")
replay_rows=$(psql -XAtq -c "SELECT count(*) FROM http_example.charges WHERE tenant = 'bench' AND idempotency_key LIKE '$TAG-r%-replay'")

ms() { printf '%.2f' "$(bc -l <<<"$1 / $ROUNDS / 1000")"; }
avg() { printf '%.0f' "$(bc -l <<<"$1 / $ROUNDS")"; }
ratio() { printf '%.2f' "$(bc -l <<<"${rps_sum[$1]} / ${rps_sum[unprotected]}")"; }
# per_req TICKS MODE: microseconds of CPU per request answered
per_req() { printf '%.0f' "$(bc -l <<<"$1 * 1000000 / $CLK_TCK / ${req_sum[$2]}")"; }

declare -A label=(
	[unprotected]="\`POST /charges-unprotected\` (no middleware)"
	[unique]="\`POST /charges\`, unique keys (reserve + insert + commit)"
	[replay]="\`POST /charges\`, one replayed key"
)

{
	echo "| endpoint | requests/s | mean ms | p50 ms | p99 ms | requests | errors | vs unprotected |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|"
	for m in unprotected unique replay; do
		echo "| ${label[$m]} | $(avg "${rps_sum[$m]}") | $(ms "${mean_sum[$m]}") | $(ms "${p50_sum[$m]}") | $(ms "${p99_sum[$m]}") | ${req_sum[$m]} | ${err_sum[$m]} | $(ratio "$m") |"
	done
	echo
	echo "CPU time per request answered (µs; utime + stime over the runs):"
	echo
	echo "| endpoint | PostgreSQL | service | whole machine (wrk, kernel included) |"
	echo "|---|---:|---:|---:|"
	for m in unprotected unique replay; do
		pg_col=$(per_req "${pg_sum[$m]}" "$m")
		[[ -n $cluster ]] || pg_col="–"
		echo "| ${label[$m]} | $pg_col | $(per_req "${svc_sum[$m]}" "$m") | $(per_req "${all_sum[$m]}" "$m") |"
	done
} >"$TMP/table.md"

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
{
	echo "# HTTP example under wrk"
	echo
	echo "Written by \`bench/http/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
	echo
	cat "$TMP/table.md"
	echo
	echo "Protected with unique keys runs at **$(ratio unique)x** the requests/s of the"
	echo "unprotected twin; replays at **$(ratio replay)x**."
	echo
	echo "- wrk: \`wrk -t $WRK_THREADS -c $CONNS -d ${SECONDS_EACH}s --timeout 10s -s bench/http/charges.lua URL -- MODE TAG\`,"
	echo "  MODE unprotected / unique / replay; $ROUNDS round(s), order alternating; figures are the means over rounds."
	echo "  Latencies are wrk's, which corrects for coordinated omission (it adds samples for the"
	echo "  requests a stalled connection did not send), so mean and p99 weigh stalls heavily; p50 is the steadiest."
	echo "- service: \`examples/http/service --quiet --threads $WORKERS --io-threads $IO_THREADS\`; PostgreSQL $(psql -XAtq -c 'SHOW server_version'), default settings, shared_preload_libraries '$(psql -XAtq -c 'SHOW shared_preload_libraries')', fsync $(psql -XAtq -c 'SHOW fsync'), synchronous_commit $(psql -XAtq -c 'SHOW synchronous_commit'); everything on one machine over loopback."
	echo "- machine: $(nproc) CPU ($cpu), $(free -g | awk '/^Mem:/ {print $2}') GB RAM; wrk, the service and PostgreSQL share it; load average before the runs: $load_before."
	echo "- exactly once under load: the unique runs answered ${req_sum[unique]} requests and left $(cut -d'|' -f1 <<<"$unique_rows") charge rows for $(cut -d'|' -f2 <<<"$unique_rows") distinct keys (requests still in flight when wrk stopped are committed but not counted by wrk); the $ROUNDS replayed keys have $replay_rows charge rows in all."
} >"$OUT"

cat "$OUT"
