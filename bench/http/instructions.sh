#!/usr/bin/env bash
#
# instructions.sh: the server's instructions per request of the HTTP
# example (examples/http), counted by callgrind: the figure behind
# bench/http/run.sh's CPU columns that other work on the machine does not
# move.
#
#   bench/http/instructions.sh [MODE...]
#
# MODE is unprotected, unique or replay, as in bench/http/run.sh (default:
# all three).  Starts a cluster with stock settings (tools/cluster.sh,
# preloading the module as README.md installs it), lets the service make
# its schema, then starts the postmaster again under valgrind
# --tool=callgrind.  For each mode the service (--threads 1: one database
# session) answers HTTP_INSTR_SMALL and then HTTP_INSTR_BIG requests sent
# one after the other by curl, each time started afresh, so that its
# session's backend exits and callgrind writes its count; per request = the
# difference of the two backends' instructions / (BIG - SMALL), so that the
# session's start, libidem's first probe and the statements it prepares
# cancel out.  The callgrind files stay in bench/http/tmp/instructions/.
#
# Settings: HTTP_INSTR_SMALL=40 HTTP_INSTR_BIG=240, HTTP_INSTR_SERVICE (the
# service binary, default examples/http/service, built first),
# HTTP_INSTR_PRELOAD=1 (0: the module is not preloaded).  Needs the
# extension installed (make install), valgrind and curl.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SMALL=${HTTP_INSTR_SMALL:-40}
BIG=${HTTP_INSTR_BIG:-240}
MODES=${*:-unprotected unique replay}
TMP=$HERE/tmp
OUT=$TMP/instructions
CLUSTER=$TMP/instructions-cluster
DB=idem_http_instr

die() { echo "bench/http/instructions: $*" >&2; exit 1; }

PG_BINDIR=$(pg_config --bindir 2>/dev/null) || PG_BINDIR=
[[ -x $PG_BINDIR/postgres ]] || PG_BINDIR=/usr/lib/postgresql/15/bin
PATH=$PG_BINDIR:$PATH
command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
command -v curl >/dev/null || die "curl not found"

SERVICE=${HTTP_INSTR_SERVICE:-}
if [[ -z $SERVICE ]]; then
	make -s --no-print-directory -C "$ROOT/examples/http" >&2
	SERVICE=$ROOT/examples/http/service
fi
[[ -x $SERVICE ]] || die "no service binary at $SERVICE"

# shellcheck source=SCRIPTDIR/../../tools/lib.sh
. "$ROOT/tools/lib.sh"
USER_OF_SERVER=$("$ROOT/tools/cluster.sh" user)
# the server's programs as the cluster's user (paths here are absolute)
as_server() { run_as "$USER_OF_SERVER" "$@"; }

svc_pid=
stop_service()
{
	if [[ -n $svc_pid ]] && kill -0 "$svc_pid" 2>/dev/null; then
		kill -TERM "$svc_pid" 2>/dev/null
		{ wait "$svc_pid"; } 2>/dev/null || true
	fi
	svc_pid=
}
cleanup()
{
	stop_service
	as_server "$PG_BINDIR/pg_ctl" -D "$CLUSTER/data" -m fast -w -t 120 stop >/dev/null 2>&1 || true
	rm -rf "$CLUSTER"
}
trap cleanup EXIT

start_service()
{
	rm -f "$TMP/instr-port"
	"$SERVICE" --port 0 --port-file "$TMP/instr-port" --quiet --threads 1 \
		--io-threads 1 >"$OUT/service.out" 2>>"$OUT/service.err" &
	svc_pid=$!
	for _ in $(seq 1 600); do
		[[ -s $TMP/instr-port ]] && return 0
		kill -0 "$svc_pid" 2>/dev/null || break
		sleep 0.1
	done
	die "the service did not start: $(tail -n 5 "$OUT/service.err")"
}

mkdir -p "$TMP"
rm -rf "$OUT"
mkdir -p "$OUT"
preload=
[[ ${HTTP_INSTR_PRELOAD:-1} == 0 ]] || preload="shared_preload_libraries=idempotency idem.purge_interval=0"
CLUSTER_OPTS="shared_buffers=128MB huge_pages=off fsync=on max_connections=20 $preload" \
	"$ROOT/tools/cluster.sh" start "$CLUSTER" >/dev/null
# shellcheck disable=SC1091
. "$CLUSTER/env"
psql -XAtq -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE $DB" >/dev/null
psql -XAtq -v ON_ERROR_STOP=1 -d "$DB" -c "CREATE EXTENSION idempotency" >/dev/null ||
	die "CREATE EXTENSION idempotency failed: is it installed (make install)?"
export PGDATABASE=$DB
# the service makes its schema and table at start-up: once, before counting
start_service
stop_service
psql -XAtq -c CHECKPOINT >/dev/null
"$ROOT/tools/cluster.sh" stop "$CLUSTER" >/dev/null

chown "$USER_OF_SERVER" "$OUT" 2>/dev/null || true
as_server valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" \
	"$PG_BINDIR/postgres" -D "$CLUSTER/data" >"$OUT/server.log" 2>&1 &
for _ in $(seq 120); do
	psql -XAtq -c 'SELECT 1' >/dev/null 2>&1 && break
	sleep 1
done
psql -XAtq -c 'SELECT 1' >/dev/null || die "the server under callgrind did not start"

# send MODE N TAG: N requests of MODE, one after the other
send()
{
	local url i code path=/charges key
	url=http://127.0.0.1:$(cat "$TMP/instr-port")
	[[ $1 != unprotected ]] || path=/charges-unprotected
	for ((i = 1; i <= $2; i++)); do
		key=()
		case $1 in
			unique) key=(-H "Idempotency-Key: $3-$i") ;;
			replay) key=(-H "Idempotency-Key: $3-replay") ;;
		esac
		code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$url$path" \
			-H "X-Tenant: bench" -H "Content-Type: application/json" "${key[@]}" \
			-d '{"amount": 1000, "currency": "usd", "description": "wrk"}')
		[[ $code == 201 ]] || die "$1 request $i answered $code"
	done
}

# run MODE N: the instructions of the session that answered N requests
run()
{
	local before f best=0 ir
	before=$(ls "$OUT")
	start_service
	# the replayed key exists before the counted requests
	[[ $1 != replay ]] || send replay 1 "$1$2"
	send "$1" "$2" "$1$2"
	stop_service
	sleep 3
	# the service's sessions: the one that answered the requests did the most
	for f in $(comm -13 <(echo "$before") <(ls "$OUT") | grep '^cg\.'); do
		ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$OUT/$f")
		if [[ -n $ir ]] && ((ir > best)); then
			best=$ir
			mv "$OUT/$f" "$OUT/$1-$2.cg"
		fi
	done
	((best > 0)) || die "no callgrind file for $1"
	echo "$best"
}

echo "service: $SERVICE"
for m in $MODES; do
	a=$(run "$m" "$SMALL")
	b=$(run "$m" "$BIG")
	printf '%-12s %9.0f server instructions per request\n' "$m" "$(((b - a) / (BIG - SMALL)))"
done
