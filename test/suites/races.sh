#!/usr/bin/env bash
#
# races.sh: the windows inside idem_reserve that no isolation spec can
# reach, opened on purpose with gdb.  A backend is stopped at a breakpoint
# in the middle of a call while another session changes the key, then let
# go; the call must still give the contract's answer.
#
#   1. Between the unlocked read that found nothing and the taking of the
#      key's lock, another session creates and commits the record: the
#      insert finds the duplicate, takes its tuple back and the call replays
#      the committed response (one record, no error).
#   2. The same, but the other session's reservation is still in flight
#      (its owner idle, holding the lock): the call waits for it instead of
#      inserting, and replays once it commits.
#
# Needs gdb and ptrace rights over the server's processes (root); skipped
# otherwise.
#
. "$(dirname "$0")/../lib.sh"

if ! command -v gdb >/dev/null 2>&1 || [[ $(id -u) -ne 0 ]]; then
	ok "skipped: needs gdb and root (ptrace)"
	finish
	exit
fi

db=idem_races
psql_q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
psql_q -d $db -c 'CREATE EXTENSION idempotency'
cleanup() { psql_q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1; }
trap cleanup EXIT

# May we attach to a backend at all?  (Containers often withhold ptrace.)
psql -XAtq -d $db -c 'SELECT pg_backend_pid()' -c 'SELECT pg_sleep(3)' \
	>"$IDEM_TMP/probe.pid" 2>&1 &
probe=$!
sleep 0.5
if ! timeout 20 gdb -q -batch -p "$(head -1 "$IDEM_TMP/probe.pid")" -ex detach \
	>"$IDEM_TMP/probe.log" 2>&1 || grep -q 'ptrace:' "$IDEM_TMP/probe.log"; then
	wait "$probe"
	ok "skipped: gdb may not attach to the server here: $(grep -m1 ptrace "$IDEM_TMP/probe.log")"
	finish
	exit
fi
wait "$probe"

# run_stopped KEY GDB_COMMANDS_FILE OUT: a session calls idem_reserve(KEY)
# with a breakpoint on idem_lock_try; gdb runs the commands at the stop.
# Prints the reserve's output into OUT.
run_stopped()
{
	local key=$1 cmds=$2 out=$3 pidfile=$IDEM_TMP/pid.$1
	rm -f "$pidfile"
	# the session loads the module, reports its PID, waits for gdb, reserves
	psql -XAtq -d $db -v ON_ERROR_STOP=1 >"$out" 2>&1 <<-EOF &
		SELECT idem_derive_key('load the module');
		\o $pidfile
		SELECT pg_backend_pid();
		\o
		SELECT pg_sleep(1.5);
		SELECT fresh, state, status, convert_from(body, 'UTF8'), attempt
		  FROM idem_reserve('$key', wait_timeout => '10s');
	EOF
	local client=$!
	for _ in $(seq 1 100); do
		grep -q '^[0-9][0-9]*$' "$pidfile" 2>/dev/null && break
		sleep 0.05
	done
	local pid
	pid=$(tr -dc '0-9' <"$pidfile")
	timeout 60 gdb -q -batch -p "$pid" \
		-ex 'set pagination off' \
		-ex 'set breakpoint pending on' \
		-ex 'break idem_lock_try' \
		-ex 'continue' \
		-x "$cmds" \
		-ex 'delete' \
		-ex 'detach' >"$IDEM_TMP/gdb.$key.log" 2>&1
	wait "$client"
}

# 1. the record is created and committed inside the window
cat >"$IDEM_TMP/cmds1" <<EOF
shell psql -XAtq -d $db -c "SELECT fresh FROM idem_reserve('race-1')" -c "SELECT idem_commit('race-1', NULL, 200, 'made by the other session'::bytea)" >$IDEM_TMP/other1 2>&1
EOF
run_stopped race-1 "$IDEM_TMP/cmds1" "$IDEM_TMP/out1"
if grep -q 'Breakpoint 1, .*idem_lock_try' "$IDEM_TMP/gdb.race-1.log"; then
	ok "1: the reserve stopped between its read and the lock"
else
	fail "1: the reserve stopped between its read and the lock" "$(tail -5 "$IDEM_TMP/gdb.race-1.log")"
fi
check_eq "1: the other session created and committed the key meanwhile" "t
t" "$(cat "$IDEM_TMP/other1")"
check_eq "1: the stopped reserve replays the committed response" \
	"f|committed|200|made by the other session|1" "$(tail -1 "$IDEM_TMP/out1")"
check_eq "1: one record, committed" "committed|1" \
	"$(psql_q -d $db -c "SELECT state, count(*) OVER () FROM idem_keys WHERE key = 'race-1'")"
check_eq "1: no lock of ours is left" 0 \
	"$(psql_q -d $db -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 18756")"

# 2. the record is created inside the window and stays in flight, its owner
# idle; the stopped reserve must wait for it, then replay its commit
psql -XAtq -d $db -v ON_ERROR_STOP=1 >"$IDEM_TMP/owner2" 2>&1 <<-EOF &
	SELECT pg_sleep(0.8);
	SELECT fresh FROM idem_reserve('race-2');
	SELECT pg_sleep(2.5);
	SELECT idem_commit('race-2', NULL, 201, 'made by the owner'::bytea);
EOF
owner=$!
cat >"$IDEM_TMP/cmds2" <<EOF
shell sleep 1.2
EOF
start=$(date +%s.%N)
run_stopped race-2 "$IDEM_TMP/cmds2" "$IDEM_TMP/out2"
wait "$owner"
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
check_eq "2: the owner reserved inside the window, then committed" "t
t" "$(grep -v '^$' "$IDEM_TMP/owner2")"
check_eq "2: the stopped reserve waited and replays the owner's response" \
	"f|committed|201|made by the owner|1" "$(tail -1 "$IDEM_TMP/out2")"
check_eq "2: one record" 1 \
	"$(psql_q -d $db -c "SELECT count(*) FROM idem_keys WHERE key = 'race-2'")"
check_eq "2: it waited for the commit (${elapsed}s)" 1 "$(echo "$elapsed > 2.5" | bc)"

finish
