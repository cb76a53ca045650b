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
# And the moment a waiter's wait_timeout fires just as the lock is granted
# to it, made by stopping the waiting backend (SIGSTOP), letting the owner
# finish, and resuming it after its timeout has passed: the grant and the
# timeout then arrive together.  The lock must not be left held.
#   3. Waiting on a live owner (share mode) that commits: the waiter
#      replays, and holds no lock of ours afterwards.
#   4. Waiting for the key's creator (exclusive mode), whose transaction
#      rolls back: the waiter gets the key fresh, commits, and holds no lock
#      of ours afterwards.
#   5. As 3, but statement_timeout ends the wait: the error, and no lock
#      kept.
#
# Needs root (to stop a backend) and, for 1 and 2, gdb with ptrace rights
# over the server's processes; skipped otherwise.
#
. "$(dirname "$0")/../lib.sh"

if [[ $(id -u) -ne 0 ]]; then
	skip_all "needs root (to stop backends and attach gdb)"
fi

db=idem_races
psql_q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
psql_q -d $db -c 'CREATE EXTENSION idempotency'
cleanup() { psql_q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1; }
trap cleanup EXIT

# ---- a lock granted as the wait times out (3 and 4) ---------------------------

# late_grant CASE OWNER_SQL WAITER_SQL: the owner's script runs at once; the
# waiter's, 0.3 s later, begins with the call that waits.  Once the waiter
# waits, its backend is stopped until the owner has finished and the
# waiter's 1 s wait_timeout has passed.  Leaves the outputs in
# $IDEM_TMP/late.CASE.owner and .waiter.
late_grant()
{
	local n=$1 owner_sql=$2 waiter_sql=$3 pidfile=$IDEM_TMP/late.$1.pid wpid=
	rm -f "$pidfile"
	psql -XAtq -d $db -v ON_ERROR_STOP=1 >"$IDEM_TMP/late.$n.owner" 2>&1 <<<"$owner_sql" &
	local owner=$!
	sleep 0.3
	psql -XAtq -d $db >"$IDEM_TMP/late.$n.waiter" 2>&1 <<-EOF &
		\o $pidfile
		SELECT pg_backend_pid();
		\o
		$waiter_sql
	EOF
	local waiter=$!
	for _ in $(seq 1 200); do
		wpid=$({ tr -dc '0-9' <"$pidfile"; } 2>/dev/null)
		[[ -n $wpid ]] && [[ $(psql_q -d $db -c "SELECT count(*) FROM pg_locks WHERE pid = $wpid AND NOT granted AND objsubid = 18756") == 1 ]] && break
		sleep 0.02
	done
	if [[ -n $wpid ]]; then
		kill -STOP "$wpid"
		wait "$owner"
		sleep 1.2
		kill -CONT "$wpid"
	fi
	wait "$owner" "$waiter"
}

late_grant 3 "SELECT fresh FROM idem_reserve('late-3'); SELECT pg_sleep(1); SELECT idem_commit('late-3', NULL, 200, 'made by the owner'::bytea)" \
	"SELECT fresh, state, convert_from(body, 'UTF8') FROM idem_reserve('late-3', wait_timeout => '1s');
	 SELECT count(*) AS our_locks FROM pg_locks WHERE pid = pg_backend_pid() AND objsubid = 18756;"
check_eq "3: the owner committed while the waiter was stopped" "t
t" "$(grep -v '^$' "$IDEM_TMP/late.3.owner")"
check_eq "3: granted as its wait timed out, the waiter replays and keeps no lock" "f|committed|made by the owner
0" "$(cat "$IDEM_TMP/late.3.waiter")"

late_grant 4 "BEGIN; SELECT fresh FROM idem_reserve('late-4'); SELECT pg_sleep(1); ROLLBACK" \
	"SELECT fresh, attempt FROM idem_reserve('late-4', wait_timeout => '1s');
	 SELECT idem_commit('late-4', NULL, 200, 'made by the waiter'::bytea);
	 SELECT count(*) AS our_locks FROM pg_locks WHERE pid = pg_backend_pid() AND objsubid = 18756;"
check_eq "4: the creator rolled back while the waiter was stopped" "t" \
	"$(grep -v '^$' "$IDEM_TMP/late.4.owner")"
check_eq "4: granted as its wait timed out, the waiter gets the key, commits, keeps no lock" "t|1
t
0" "$(cat "$IDEM_TMP/late.4.waiter")"
late_grant 5 "SELECT fresh FROM idem_reserve('late-5'); SELECT pg_sleep(1); SELECT idem_commit('late-5', NULL, 200, 'made by the owner'::bytea)" \
	"SET statement_timeout = '1s';
	 SELECT fresh FROM idem_reserve('late-5', wait_timeout => '10s');
	 RESET statement_timeout;
	 SELECT count(*) AS our_locks FROM pg_locks WHERE pid = pg_backend_pid() AND objsubid = 18756;
	 SELECT fresh, state FROM idem_reserve('late-5', wait_timeout => '0');"
check_eq "5: granted as statement_timeout cancelled the wait: the error, no lock kept, then a replay" "ERROR:  canceling statement due to statement timeout
0
f|committed" "$(cat "$IDEM_TMP/late.5.waiter")"

check_eq "3, 4, 5: no lock of ours is left" 0 \
	"$(psql_q -d $db -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 18756")"

# ---- gdb (1 and 2) ----------------------------------------------------------------

if ! command -v gdb >/dev/null 2>&1; then
	skip "1: a record created and committed between the read and the lock" "needs gdb"
	skip "2: a record reserved between the read and the lock" "needs gdb"
	finish
	exit
fi

# May we attach to a backend at all?  (Containers often withhold ptrace.)
psql -XAtq -d $db -c 'SELECT pg_backend_pid()' -c 'SELECT pg_sleep(3)' \
	>"$IDEM_TMP/probe.pid" 2>&1 &
probe=$!
sleep 0.5
if ! timeout 20 gdb -q -batch -p "$(head -1 "$IDEM_TMP/probe.pid")" -ex detach \
	>"$IDEM_TMP/probe.log" 2>&1 || grep -q 'ptrace:' "$IDEM_TMP/probe.log"; then
	wait "$probe"
	why="gdb may not attach to the server here: $(grep -m1 ptrace "$IDEM_TMP/probe.log")"
	skip "1: a record created and committed between the read and the lock" "$why"
	skip "2: a record reserved between the read and the lock" "$why"
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
