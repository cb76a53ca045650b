#!/usr/bin/env bash
#
# cli.sh: the idem command-line tool against the suite's cluster.
#
# Ten parallel `idem exec` with one key run the command once and all print
# its output; a failure is released and retried unless --cache-failures;
# the stored stdout (binary too) and exit code replay; and the exit codes of
# the tool itself: 64 usage, 65 mismatch, 69 database unreachable or
# extension missing, 75 timed out waiting or lease lost.  Leases: --lease
# runs once, is renewed across a command longer than the lease, exits 75
# when the lease ran out while idem was stopped and another run took over;
# through PgBouncer (transaction mode, when installed) exec uses a lease
# with no option at all.

# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

CLIENT=$IDEM_ROOT/client
IDEM=$CLIENT/build/idem
T=$IDEM_TMP
P="cli-$$-$RANDOM"				# keys of this run

if ! out=$(make -s --no-print-directory -C "$CLIENT" build/idem 2>&1); then
	fail "idem builds" "$out"
	finish
	exit 1
fi
ok "idem builds"

# run_idem OUT ERR ARGS...: runs idem, stdout to OUT, stderr to ERR; sets rc
run_idem()
{
	local out=$1 err=$2
	shift 2
	"$IDEM" "$@" >"$out" 2>"$err"
	rc=$?
}

# ---- usage -----------------------------------------------------------------

run_idem "$T/help" "$T/err" --help
check_eq "idem --help exits 0" 0 "$rc"
if grep -q "exec --key K" "$T/help" && grep -q "75" "$T/help"; then
	ok "--help shows the commands and exit codes"
else
	fail "--help shows the commands and exit codes" "$(cat "$T/help")"
fi
run_idem "$T/out" "$T/err" --version
check_eq "idem --version" "idem (libidem) $(sed -n 's/^#define IDEM_VERSION_\(MAJOR\|MINOR\|PATCH\)[[:space:]]*\([0-9]*\).*/\2/p' "$CLIENT/idem.h" | paste -sd.)" "$(cat "$T/out")"

for args in "" "bogus" "exec -- echo hi" "exec --key k" "exec --key" "exec --key k --frobnicate -- true" \
	"get" "purge --limit x" "purge --limit 0" "--frob stats"; do
	# shellcheck disable=SC2086 # the words are the arguments
	run_idem "$T/out" "$T/err" $args
	if [[ $rc == 64 ]] && grep -q "idem:" "$T/err"; then
		ok "bad usage exits 64: idem $args"
	else
		fail "bad usage exits 64: idem $args" "exit $rc" "$(cat "$T/err")"
	fi
done

# ---- ten at once, one run ----------------------------------------------------

key="$P-ten"
: >"$T/ran"
pids=()
for i in $(seq 1 10); do
	"$IDEM" exec --key "$key" -- sh -c 'echo run >>"$1"; sleep 1; echo "charged by $$ at $(date +%s%N)"' \
		sh "$T/ran" >"$T/ten.$i" 2>"$T/ten-err.$i" &
	pids+=($!)
done
rcs=()
for pid in "${pids[@]}"; do
	wait "$pid"
	rcs+=($?)
done
check_eq "10 parallel idem exec with one key: the command ran once" 1 "$(wc -l <"$T/ran")"
check_eq "all 10 exit 0" "0 0 0 0 0 0 0 0 0 0" "${rcs[*]}"
same=1
for i in $(seq 2 10); do
	cmp -s "$T/ten.1" "$T/ten.$i" || same=0
done
if ((same)) && grep -q "^charged by" "$T/ten.1"; then
	ok "all 10 print the same output: $(cat "$T/ten.1")"
else
	fail "all 10 print the same output" "$(head -n 3 "$T"/ten.*)" "$(cat "$T"/ten-err.*)"
fi
run_idem "$T/again" "$T/err" exec --key "$key" -- sh -c 'echo run >>"$1"; sleep 1; echo "charged by $$ at $(date +%s%N)"' sh "$T/ran"
if [[ $rc == 0 ]] && cmp -s "$T/ten.1" "$T/again" && [[ $(wc -l <"$T/ran") == 1 ]]; then
	ok "a later call replays the output without running the command"
else
	fail "a later call replays the output without running the command" "exit $rc" "$(cat "$T/again" "$T/err")"
fi

# the same key with another command line
run_idem "$T/out" "$T/err" exec --key "$key" -- sh -c 'echo something else'
if [[ $rc == 65 ]] && grep -q "another command line" "$T/err" && [[ ! -s $T/out ]]; then
	ok "the same key with another command: exit 65, nothing runs"
else
	fail "the same key with another command: exit 65, nothing runs" "exit $rc" "$(cat "$T/out" "$T/err")"
fi
run_idem "$T/out" "$T/err" exec --key "$key" -- sh -c 'echo run >>"$1"; sleep 1; echo "charged by $$ at $(date +%s%N)"' sh "$T/other-file"
check_eq "an argument differs: a mismatch too" 65 "$rc"

# ---- what is stored ------------------------------------------------------------

run_idem "$T/out" "$T/err" get --key "$key"
if [[ $rc == 0 ]] && grep -q "^state: *committed" "$T/out" && grep -q "^status: *0" "$T/out" &&
	grep -q "^attempt: *1" "$T/out"; then
	ok "idem get shows the committed record"
else
	fail "idem get shows the committed record" "exit $rc" "$(cat "$T/out" "$T/err")"
fi
run_idem "$T/out" "$T/err" get --key "$key" --body
if [[ $rc == 0 ]] && cmp -s "$T/out" "$T/ten.1"; then
	ok "idem get --body prints the stored stdout"
else
	fail "idem get --body prints the stored stdout" "exit $rc"
fi
run_idem "$T/out" "$T/err" get --key "$P-absent"
check_eq "idem get of an absent key exits 1" 1 "$rc"

# binary output, byte for byte
key="$P-binary"
run_idem "$T/bin1" "$T/err" exec --key "$key" -- printf 'a\000b\377\200\nend'
run_idem "$T/bin2" "$T/err" exec --key "$key" -- printf 'a\000b\377\200\nend'
if [[ $rc == 0 ]] && [[ $(od -An -tx1 "$T/bin2" | tr -d ' \n') == 610062ff800a656e64 ]] &&
	cmp -s "$T/bin1" "$T/bin2"; then
	ok "binary stdout (NUL and high bytes) replays byte for byte"
else
	fail "binary stdout (NUL and high bytes) replays byte for byte" "$(od -c "$T/bin2")"
fi

# empty output
key="$P-empty"
run_idem "$T/out" "$T/err" exec --key "$key" -- true
run_idem "$T/out" "$T/err" exec --key "$key" -- true
if [[ $rc == 0 && ! -s $T/out ]]; then
	ok "empty stdout replays as empty, exit 0"
else
	fail "empty stdout replays as empty, exit 0" "exit $rc" "$(cat "$T/err")"
fi

# scopes
key="$P-scoped"
run_idem "$T/a" "$T/err" exec --key "$key" --scope a -- echo in-a
run_idem "$T/b" "$T/err" exec --key "$key" --scope b -- echo in-b
run_idem "$T/a2" "$T/err" exec --key "$key" --scope a -- echo in-a
if [[ $(cat "$T/a") == in-a && $(cat "$T/b") == in-b && $(cat "$T/a2") == in-a ]]; then
	ok "--scope: one key in two scopes is two records"
else
	fail "--scope: one key in two scopes is two records" "$(cat "$T/a" "$T/b" "$T/a2")"
fi

# ---- failures --------------------------------------------------------------------

key="$P-fail"
: >"$T/fails"
run_idem "$T/out" "$T/err" exec --key "$key" -- sh -c 'echo try >>"$1"; echo partial; exit 3' sh "$T/fails"
first_rc=$rc
run_idem "$T/out" "$T/err" exec --key "$key" -- sh -c 'echo try >>"$1"; echo partial; exit 3' sh "$T/fails"
if [[ $first_rc == 3 && $rc == 3 && $(wc -l <"$T/fails") == 2 && $(cat "$T/out") == partial ]]; then
	ok "a failing command exits with its code and is retried (ran twice)"
else
	fail "a failing command exits with its code and is retried" "exits $first_rc $rc, ran $(wc -l <"$T/fails")"
fi
run_idem "$T/out" "$T/err" get --key "$key"
check_eq "a failure leaves no record" 1 "$rc"

key="$P-cached-fail"
: >"$T/cfails"
run_idem "$T/out1" "$T/err" exec --key "$key" --cache-failures -- sh -c 'echo try >>"$1"; echo broken; exit 3' sh "$T/cfails"
first_rc=$rc
run_idem "$T/out2" "$T/err" exec --key "$key" --cache-failures -- sh -c 'echo try >>"$1"; echo broken; exit 3' sh "$T/cfails"
if [[ $first_rc == 3 && $rc == 3 && $(wc -l <"$T/cfails") == 1 && $(cat "$T/out2") == broken ]]; then
	ok "--cache-failures: the failure is stored and replayed (exit 3, ran once)"
else
	fail "--cache-failures: the failure is stored and replayed" "exits $first_rc $rc, ran $(wc -l <"$T/cfails")"
fi

run_idem "$T/out" "$T/err" exec --key "$P-notfound" -- /nonexistent/command
check_eq "a command that cannot run: exit 127" 127 "$rc"
run_idem "$T/out" "$T/err" get --key "$P-notfound"
check_eq "and its key is released" 1 "$rc"

run_idem "$T/out" "$T/err" exec --key "$P-signal" -- sh -c 'kill -TERM $$'
check_eq "a command killed by SIGTERM: exit 143" 143 "$rc"

# ---- in flight -------------------------------------------------------------------

key="$P-busy"
"$IDEM" exec --key "$key" -- sh -c 'sleep 4; echo slow' >"$T/busy" 2>&1 &
busy_pid=$!
for _ in $(seq 1 100); do
	"$IDEM" get --key "$key" 2>/dev/null | grep -q in_flight && break
	sleep 0.05
done
run_idem "$T/out" "$T/err" exec --key "$key" --wait 0 -- sh -c 'sleep 4; echo slow'
if [[ $rc == 75 ]] && grep -q "still running" "$T/err"; then
	ok "in flight elsewhere with --wait 0: exit 75"
else
	fail "in flight elsewhere with --wait 0: exit 75" "exit $rc" "$(cat "$T/err")"
fi
start=$(date +%s%N)
run_idem "$T/out" "$T/err" exec --key "$key" --wait 500ms -- sh -c 'sleep 4; echo slow'
waited=$((($(date +%s%N) - start) / 1000000))
if [[ $rc == 75 ]] && ((waited >= 400)); then
	ok "--wait 500ms times out: exit 75 after ${waited} ms"
else
	fail "--wait 500ms times out: exit 75" "exit $rc after $waited ms" "$(cat "$T/err")"
fi
run_idem "$T/out" "$T/err" exec --key "$key" --wait 30s -- sh -c 'sleep 4; echo slow'
wait "$busy_pid"
if [[ $rc == 0 && $(cat "$T/out") == slow && $(cat "$T/busy") == slow ]]; then
	ok "a waiter with a long enough --wait gets the result when the first finishes"
else
	fail "a waiter gets the result when the first finishes" "exit $rc" "$(cat "$T/out" "$T/err")"
fi

# the owner dies (its idem killed): the next call takes over at once.  The
# command sleeps the first time and answers the second time.
key="$P-dead-owner"
rm -f "$T/dead-owner"
cmd=(sh -c 'if [ -e "$1" ]; then echo second-run; else echo "$$" >"$1"; exec sleep 30; fi' sh "$T/dead-owner")
"$IDEM" exec --key "$key" -- "${cmd[@]}" >/dev/null 2>&1 &
dead_pid=$!
for _ in $(seq 1 100); do
	[[ -s $T/dead-owner ]] && break
	sleep 0.05
done
kill -KILL "$dead_pid"
wait "$dead_pid" 2>/dev/null
kill "$(cat "$T/dead-owner")" 2>/dev/null # the orphaned command
start=$(date +%s%N)
run_idem "$T/out" "$T/err" exec --key "$key" --wait 10s -- "${cmd[@]}"
took=$((($(date +%s%N) - start) / 1000000))
run_idem "$T/get" "$T/err2" get --key "$key"
if [[ $rc == 0 && $(cat "$T/out") == second-run ]] && ((took < 5000)) &&
	grep -q "^state: *committed" "$T/get" && grep -q "^attempt: *2" "$T/get"; then
	ok "a killed idem's key is taken over at once (attempt 2, ${took} ms)"
else
	fail "a killed idem's key is taken over at once" "exit $rc after $took ms" \
		"$(cat "$T/out" "$T/err" "$T/get")"
fi

# a command that leaves a background process holding stdout: done when it exits
key="$P-daemon"
start=$(date +%s%N)
run_idem "$T/out" "$T/err" exec --key "$key" -- sh -c 'echo started; sleep 10 & echo bye'
took=$((($(date +%s%N) - start) / 1000000))
if [[ $rc == 0 ]] && ((took < 5000)) && [[ $(cat "$T/out") == $'started\nbye' ]]; then
	ok "a background child keeping stdout open does not hold idem (${took} ms)"
else
	fail "a background child keeping stdout open does not hold idem" "exit $rc after $took ms"
fi

# SIGTERM to idem reaches the command, and the key is released
key="$P-term"
"$IDEM" exec --key "$key" -- sh -c 'trap "echo got-term; exit 9" TERM; sleep 10 & wait' >"$T/term" 2>&1 &
term_pid=$!
for _ in $(seq 1 100); do
	"$IDEM" get --key "$key" 2>/dev/null | grep -q in_flight && break
	sleep 0.05
done
sleep 0.2
kill -TERM "$term_pid"
wait "$term_pid"
term_rc=$?
run_idem "$T/out" "$T/err" get --key "$key"
if [[ $term_rc == 9 && $rc == 1 ]] && grep -q got-term "$T/term"; then
	ok "SIGTERM to idem is passed to the command (exit 9) and the key released"
else
	fail "SIGTERM to idem is passed to the command and the key released" \
		"idem exit $term_rc, get exit $rc" "$(cat "$T/term")"
fi

# ---- leases ----------------------------------------------------------------------

# in_flight KEY: waits until idem get shows KEY in flight
in_flight()
{
	local i
	for i in $(seq 1 100); do
		"$IDEM" get --key "$1" 2>/dev/null | grep -q in_flight && return 0
		sleep 0.05
	done
	return 1
}

key="$P-lease"
: >"$T/lease-ran"
lcmd=(sh -c 'echo run >>"$1"; sleep 0.5; echo leased' sh "$T/lease-ran")
"$IDEM" exec --key "$key" --lease 5s -- "${lcmd[@]}" >"$T/lease1" 2>"$T/lease1-err" &
lease_pid=$!
in_flight "$key"
"$IDEM" get --key "$key" >"$T/lease-get" 2>&1
wait "$lease_pid"
lease_rc=$?
run_idem "$T/out" "$T/err" exec --key "$key" --lease 5s -- "${lcmd[@]}"
if [[ $lease_rc == 0 && $rc == 0 && $(cat "$T/lease1") == leased && $(cat "$T/out") == leased &&
	$(wc -l <"$T/lease-ran") == 1 ]]; then
	ok "--lease 5s: the command runs once, a later call replays it"
else
	fail "--lease 5s: the command runs once, a later call replays it" 		"exits $lease_rc $rc, ran $(wc -l <"$T/lease-ran")" "$(cat "$T/lease1-err" "$T/err")"
fi
if grep -q "^lease_expires_at: " "$T/lease-get"; then
	ok "while it runs, idem get shows the lease ($(sed -n 's/^lease_expires_at: *//p' "$T/lease-get"))"
else
	fail "while it runs, idem get shows the lease" "$(cat "$T/lease-get")"
fi

key="$P-lease-zero"
"$IDEM" exec --key "$key" --lease 0 -- sh -c 'sleep 0.5; echo zero' >/dev/null 2>&1 &
zero_pid=$!
in_flight "$key"
"$IDEM" get --key "$key" >"$T/zero-get" 2>&1
wait "$zero_pid"
if grep -q "^state: *in_flight" "$T/zero-get" && ! grep -q "^lease_expires_at" "$T/zero-get"; then
	ok "--lease 0: session ownership, no lease"
else
	fail "--lease 0: session ownership, no lease" "$(cat "$T/zero-get")"
fi

run_idem "$T/out" "$T/err" exec --key "$P-lease-bad" --lease soon -- echo never
if [[ $rc == 64 && ! -s $T/out ]]; then
	ok "a bad --lease is bad usage: exit 64, nothing runs"
else
	fail "a bad --lease is bad usage: exit 64" "exit $rc" "$(cat "$T/out" "$T/err")"
fi

# a command three times longer than its lease: renewed, never taken over
key="$P-lease-long"
: >"$T/long-ran"
lcmd=(sh -c 'echo run >>"$1"; sleep 3; echo long' sh "$T/long-ran")
"$IDEM" exec --key "$key" --lease 1s -- "${lcmd[@]}" >"$T/long" 2>"$T/long-err" &
long_pid=$!
in_flight "$key"
busy=0
for _ in $(seq 1 6); do
	sleep 0.3
	run_idem "$T/out" "$T/err" exec --key "$key" --wait 0 -- "${lcmd[@]}"
	[[ $rc == 75 ]] && busy=$((busy + 1))
done
wait "$long_pid"
long_rc=$?
run_idem "$T/get" "$T/err" get --key "$key"
if [[ $long_rc == 0 && $(cat "$T/long") == long && $(wc -l <"$T/long-ran") == 1 && $busy == 6 ]] &&
	grep -q "^attempt: *1" "$T/get"; then
	ok "--lease 1s, a command of 3 s: renewed; 6 tries meanwhile found it in flight, attempt 1"
else
	fail "--lease 1s, a command of 3 s: renewed, never taken over" 		"exit $long_rc, ran $(wc -l <"$T/long-ran"), $busy/6 in flight" 		"$(cat "$T/long-err" "$T/get")"
fi

# idem stopped past its lease: another run takes over; the first exits 75
key="$P-lease-lost"
lcmd=(sh -c 'sleep 1.5; echo "run by $$"')
"$IDEM" exec --key "$key" --lease 1s -- "${lcmd[@]}" >"$T/lost1" 2>"$T/lost1-err" &
lost_pid=$!
in_flight "$key"
kill -STOP "$lost_pid"
sleep 1.5
run_idem "$T/lost2" "$T/lost2-err" exec --key "$key" --wait 10s -- "${lcmd[@]}"
second_rc=$rc
kill -CONT "$lost_pid"
wait "$lost_pid"
lost_rc=$?
run_idem "$T/get" "$T/err" get --key "$key"
run_idem "$T/body" "$T/err" get --key "$key" --body
if [[ $lost_rc == 75 ]] && grep -q "lease was lost" "$T/lost1-err" &&
	grep -q "another run took the key over" "$T/lost1-err"; then
	ok "stopped past its lease, another run took over: exit 75, \"the lease was lost\" on stderr"
else
	fail "stopped past its lease: exit 75 with a clear message" "exit $lost_rc" "$(cat "$T/lost1-err")"
fi
if [[ $second_rc == 0 ]] && grep -q "^attempt: *2" "$T/get" && cmp -s "$T/body" "$T/lost2" &&
	grep -q "^run by" "$T/lost2"; then
	ok "the run that took over (attempt 2) is the one stored"
else
	fail "the run that took over (attempt 2) is the one stored" "exit $second_rc" \
		"$(cat "$T/get" "$T/lost2" "$T/lost2-err")"
fi

# through a transaction pooler, exec uses a lease with no option at all
if [[ -x /usr/sbin/pgbouncer ]]; then
	bouncer=$T/pgbouncer
	trap 'bash "$IDEM_ROOT/tools/pgbouncer.sh" stop "$bouncer" >/dev/null 2>&1' EXIT
	if out=$(bash "$IDEM_ROOT/tools/pgbouncer.sh" start "$bouncer" transaction 3 2>&1); then
		pooled()
		{
			(
				# shellcheck disable=SC1091
				. "$bouncer/env"
				"$IDEM" "$@"
			)
		}
		key="$P-pooled"
		: >"$T/pooled-ran"
		lcmd=(sh -c 'echo run >>"$1"; sleep 1; echo pooled' sh "$T/pooled-ran")
		pids=()
		for i in 1 2 3 4 5; do
			pooled exec --key "$key" -- "${lcmd[@]}" >"$T/pooled.$i" 2>"$T/pooled-err.$i" &
			pids+=($!)
		done
		in_flight "$key"
		"$IDEM" get --key "$key" >"$T/pooled-get" 2>&1
		rcs=()
		for pid in "${pids[@]}"; do
			wait "$pid"
			rcs+=($?)
		done
		if [[ ${rcs[*]} == "0 0 0 0 0" && $(wc -l <"$T/pooled-ran") == 1 ]] &&
			cat "$T"/pooled.[1-5] | grep -qx pooled && [[ $(cat "$T"/pooled.[1-5] | sort -u) == pooled ]]; then
			ok "5 idem exec through PgBouncer (transaction mode): the command ran once, all print it"
		else
			fail "5 idem exec through PgBouncer: the command ran once" 				"exits ${rcs[*]}, ran $(wc -l <"$T/pooled-ran")" "$(cat "$T"/pooled-err.*)"
		fi
		if grep -q "^lease_expires_at: " "$T/pooled-get"; then
			ok "through the pooler, with no option, the run owned the key by a lease"
		else
			fail "through the pooler, with no option, the run owned the key by a lease" 				"$(cat "$T/pooled-get")"
		fi
		key="$P-pooled-zero"
		pooled exec --key "$key" --lease 0 -- sh -c 'sleep 0.5; echo zero' >/dev/null 2>&1 &
		zero_pid=$!
		in_flight "$key"
		"$IDEM" get --key "$key" >"$T/pooled-zero-get" 2>&1
		wait "$zero_pid"
		if grep -q "^state: *in_flight" "$T/pooled-zero-get" &&
			! grep -q "^lease_expires_at" "$T/pooled-zero-get"; then
			ok "--lease 0 through the pooler still forces session ownership"
		else
			fail "--lease 0 through the pooler forces session ownership" "$(cat "$T/pooled-zero-get")"
		fi
		bash "$IDEM_ROOT/tools/pgbouncer.sh" stop "$bouncer" >/dev/null 2>&1
	else
		fail "PgBouncer starts (tools/pgbouncer.sh)" "$out"
	fi
else
	skip "idem exec through PgBouncer uses a lease" "pgbouncer is not installed"
fi

# ---- the database -----------------------------------------------------------------

run_idem "$T/out" "$T/err" --dsn "host=/nonexistent-idem-dir port=1" exec --key k -- echo never
if [[ $rc == 69 && ! -s $T/out ]] && grep -q "idem:" "$T/err"; then
	ok "database unreachable (--dsn): exit 69, the command does not run"
else
	fail "database unreachable (--dsn): exit 69" "exit $rc" "$(cat "$T/out" "$T/err")"
fi
PGHOST=/nonexistent-idem-dir PGPORT=1 "$IDEM" get --key k >"$T/out" 2>"$T/err"
check_eq "database unreachable (PGHOST): exit 69" 69 "$?"
run_idem "$T/out" "$T/err" exec --dsn "host=127.0.0.1 port=1" --key k -- echo never
check_eq "nothing listening on the port: exit 69" 69 "$rc"

noext="idem_cli_noext_$$"
if psql_q -c "CREATE DATABASE $noext" >/dev/null 2>&1; then
	run_idem "$T/out" "$T/err" --dsn "dbname=$noext" exec --key k -- echo never
	if [[ $rc == 69 && ! -s $T/out ]] && grep -q "CREATE EXTENSION" "$T/err"; then
		ok "extension missing: exit 69 with a hint"
	else
		fail "extension missing: exit 69 with a hint" "exit $rc" "$(cat "$T/out" "$T/err")"
	fi
	run_idem "$T/out" "$T/err" --dsn "dbname=$noext" stats
	check_eq "stats without the extension: exit 69" 69 "$rc"
	run_idem "$T/out" "$T/err" --dsn "dbname=$noext" purge
	check_eq "purge without the extension: exit 69" 69 "$rc"
	psql_q -c "DROP DATABASE $noext" >/dev/null 2>&1
else
	fail "CREATE DATABASE for the extension-missing case"
fi

run_idem "$T/out" "$T/err" exec --key "$P-badttl" --ttl "-1 hour" -- echo never
if [[ $rc == 64 && ! -s $T/out ]]; then
	ok "a bad --ttl is bad usage: exit 64, nothing runs"
else
	fail "a bad --ttl is bad usage: exit 64" "exit $rc" "$(cat "$T/err")"
fi
run_idem "$T/out" "$T/err" exec --key "$(printf 'k%.0s' $(seq 1 300))" -- echo never
check_eq "a key over 255 bytes: exit 64" 64 "$rc"

# stdout larger than idem.max_body_bytes: shown, not stored, key released
key="$P-too-big"
PGOPTIONS="-c idem.max_body_bytes=100" "$IDEM" exec --key "$key" -- head -c 200 /dev/zero \
	>"$T/out" 2>"$T/err"
big_rc=$?
run_idem "$T/get" "$T/err2" get --key "$key"
if [[ $big_rc == 70 && $rc == 1 && $(wc -c <"$T/out") == 200 && -z $(cat "$T/get") ]] &&
	grep -q "could not be stored" "$T/err"; then
	ok "stdout over idem.max_body_bytes: passed through, exit 70, key released"
else
	fail "stdout over idem.max_body_bytes: exit 70, key released" "exit $big_rc, get $rc" "$(cat "$T/err" "$T/get")"
fi

# the tool itself under valgrind: fresh run, replay, get, failure, stats
if command -v valgrind >/dev/null 2>&1; then
	vg=(valgrind --error-exitcode=99 --leak-check=full
		--errors-for-leak-kinds=definite,indirect,possible --quiet)
	key="$P-valgrind"
	vg_rcs=()
	for args in "exec --key $key -- echo under-valgrind" "exec --key $key -- echo under-valgrind" \
		"get --key $key" "exec --key $P-vg-fail -- false" "exec --key $key -- echo other" \
		"stats" "purge"; do
		# shellcheck disable=SC2086 # the words are the arguments
		"${vg[@]}" "$IDEM" $args >"$T/vg.out" 2>"$T/vg.err"
		vg_rcs+=($?)
	done
	if [[ ${vg_rcs[*]} == "0 0 0 1 65 0 0" ]] && ! grep -q "==[0-9]*==" "$T/vg.err"; then
		ok "idem under valgrind (exec, replay, get, failure, mismatch, stats, purge): no error, no leak"
	else
		fail "idem under valgrind: no error, no leak" "exits: ${vg_rcs[*]}" "$(head -n 30 "$T/vg.err")"
	fi
else
	skip "idem under valgrind: no error, no leak" "valgrind is not installed (tools/deps.sh installs it)"
fi

# ---- purge and stats ---------------------------------------------------------------

for i in 1 2 3; do
	"$IDEM" exec --key "$P-short-$i" --ttl 10ms -- echo short >/dev/null 2>&1
done
sleep 0.2
run_idem "$T/out" "$T/err" purge --limit 1
check_eq "idem purge --limit 1" "purged 1 expired record" "$(cat "$T/out")"
run_idem "$T/out" "$T/err" purge
if [[ $rc == 0 ]] && grep -Eq "^purged [0-9]+ expired record" "$T/out"; then
	ok "idem purge: $(cat "$T/out")"
else
	fail "idem purge" "exit $rc" "$(cat "$T/out" "$T/err")"
fi
run_idem "$T/out" "$T/err" get --key "$P-short-2"
check_eq "an expired key is gone" 1 "$rc"

run_idem "$T/out" "$T/err" stats
if [[ $rc == 0 ]] && grep -q "^extension" "$T/out" && grep -q "^committed" "$T/out"; then
	ok "idem stats: version, settings and records by state"
else
	fail "idem stats" "exit $rc" "$(cat "$T/out" "$T/err")"
fi

finish
