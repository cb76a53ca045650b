#!/usr/bin/env bash
#
# badinput.sh: every function of the extension, fed hostile values.
#
# The functions are read from the catalog (pg_proc through pg_depend on the
# extension, test/badinput/badinput.sql), so a function added to the
# extension is called without a change here; trigger functions are skipped
# (only a trigger can call them), and so would be any listed in
# badinput.needs_role.  Each function is called, in each of its scenarios
# (the key argument aimed at a key in each state: absent, committed,
# expired, in flight for another live session, for this session, for a
# session that is gone, for a live and for an expired lease), with one
# argument at a time taking each hostile value of its type (NULL, empty,
# 256 B, 5 kB and 1 MB strings, multibyte characters, invalid UTF-8 in
# bytea, int4 min and max, negative, zero, tiny, huge and odd intervals,
# infinite timestamps, odd and large JSON, big and multi-dimensional arrays,
# missing and odd roles; see badinput.sql) and the others harmless, and
# once with every argument NULL.
#
# Each call runs in a transaction of its own, in a savepoint, and is rolled
# back.  For each call:
#   - the server is still there (the harness session goes on);
#   - no internal error (class XX) or raw constraint violation (class 23)
#     reaches the caller;
#   - no call waits (is cancelled by the statement_timeout) unless the
#     argument it varies is wait_timeout: only a wait may wait;
#   - idem_keys and idem_confinement hash the same after the call as
#     before it (a rejected call changes nothing; a call that succeeded is
#     undone by its savepoint's rollback);
#   - after the transaction's rollback, the tables and this session's
#     advisory locks are as they were before the call (nothing leaks).
# At the end the server log has no crash ("terminated by signal") nor a
# failed assertion (TRAP:).  Prints, per function, the calls and their
# outcomes by SQLSTATE class.  Waits stop at BADINPUT_STATEMENT_TIMEOUT
# (default 1s; a huge wait_timeout on a key another session holds waits
# that long and counts as class 57).
#
# Invalid UTF-8 cannot be given as text: the database is UTF8 and refuses to
# build such a value (22021), which the suite checks; bytea gets it instead.

set -uo pipefail

# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

DB=${BADINPUT_DB:-idem_badinput}
STATEMENT_TIMEOUT=${BADINPUT_STATEMENT_TIMEOUT:-1s}
RUN_LIMIT=${BADINPUT_RUN_LIMIT:-120}	# seconds for one function's calls
ROLE=idem_badinput_role
ODD_ROLE="idem_badinput \"odd\" r$(printf '\xc3\xb4')le"
OWNER_APP=idem-badinput-owner
HARNESS_APP=idem-badinput

work=$IDEM_TMP
rm -rf "$work"
mkdir -p "$work"

q() { psql_q -d "$DB" "$@"; }

admin_db=${PGDATABASE:-postgres}
owner_pid=

# The server log, to look for crashes in what this run adds to it
server_log=
if [[ -n ${CLUSTER_DIR:-} && -r $CLUSTER_DIR/log/postgresql.log ]]; then
	server_log=$CLUSTER_DIR/log/postgresql.log
	log_offset=$(stat -c %s "$server_log")
fi

# The sessions of this suite that may still be there end (and are gone
# when this returns: the next suite must not find their locks).
cleanup()
{
	psql_q -d "$admin_db" -c "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity WHERE datname = '$DB' AND application_name IN ('$OWNER_APP', '$HARNESS_APP')" >/dev/null 2>&1
	if [[ -n $owner_pid ]]; then
		kill "$owner_pid" 2>/dev/null
		wait "$owner_pid" 2>/dev/null
		owner_pid=
	fi
}
trap cleanup EXIT

# --- the database, roles and helpers ----------------------------------------

if ! out=$(psql_q -d "$admin_db" -c "SET client_min_messages = warning" \
	-c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" 2>&1); then
	fail "create database $DB" "$out"
	finish
	exit 1
fi
odd_ident=${ODD_ROLE//\"/\"\"}
check "roles $ROLE and an oddly named one exist" psql_q -d "$admin_db" <<SQL
SET client_min_messages = warning;
DO \$\$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$ROLE') THEN
		CREATE ROLE $ROLE;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${ODD_ROLE}') THEN
		CREATE ROLE "$odd_ident";
	END IF;
END
\$\$;
SQL
check "the extension and the catalog reader load" \
	q -c 'CREATE EXTENSION idempotency' -f "$IDEM_ROOT/test/badinput/badinput.sql"

# Text cannot carry invalid UTF-8 into a function, so bytea alone gets it
st=$(q -c "SELECT E'\\xff'::text" 2>&1)
if [[ $st == *"invalid byte sequence"* ]]; then
	ok "text cannot hold invalid UTF-8 here (E'\\xff' is refused), so only bytea gets it"
else
	fail "text cannot hold invalid UTF-8 here" "E'\\xff'::text gave: $st"
fi

# --- the seeded keys, one per state ------------------------------------------

# The session that holds bi-session in flight (alive until the end)
start_owner()
{
	if [[ -n $owner_pid ]] && kill -0 "$owner_pid" 2>/dev/null; then
		return 0
	fi
	psql -XAtq -d "$DB" -c "SET application_name = '$OWNER_APP'" \
		-c "SELECT (idem_reserve('bi-session', wait_timeout => '0')).fresh" \
		-c "SELECT pg_sleep(900)" >"$work/owner.out" 2>&1 &
	owner_pid=$!
	local i state
	for ((i = 0; i < 100; i++)); do
		state=$(q -c "SELECT k.state FROM idem_keys k JOIN pg_stat_activity a ON a.pid = k.owner_pid WHERE k.key = 'bi-session' AND a.application_name = '$OWNER_APP'" 2>/dev/null)
		[[ $state == in_flight ]] && return 0
		sleep 0.05
	done
	return 1
}

seed_keys()
{
	q >/dev/null <<'SQL'
SET idem.wait_timeout = '0';
SELECT idem_reserve('bi-committed');
SELECT idem_commit('bi-committed', NULL, 200, '\x6f6b', '{"h": "v"}');
SELECT idem_reserve('bi-expired', ttl => '1 millisecond');
SELECT idem_commit('bi-expired', NULL, 200, '\x6f6b');
SELECT idem_reserve('bi-orphan');
SELECT idem_reserve('bi-lease', owner => 'bi-lease-token', lease => '1 hour');
SELECT idem_reserve('bi-lease-expired', owner => 'bi-lease-expired-token', lease => '1 millisecond');
SELECT idem_confine('idem_badinput_role', 'bi-scope');
SELECT pg_sleep(0.01);
SQL
}

# (not through check, whose subshell would lose owner_pid)
seed()
{
	seed_keys && start_owner
}

if out=$(seed_keys 2>&1) && start_owner; then
	ok "keys seeded in every state"
else
	fail "keys seeded in every state" "$out"
fi
check_eq "the seeded states" \
	"bi-committed committed|bi-expired committed expired|bi-lease in_flight lease|bi-lease-expired in_flight lease expired|bi-orphan in_flight|bi-session in_flight" \
	"$(q -c "SELECT string_agg(concat_ws(' ', key, state, CASE WHEN lease_expires_at IS NOT NULL THEN 'lease' END, CASE WHEN expires_at <= now() OR lease_expires_at <= now() THEN 'expired' END), '|' ORDER BY key) FROM idem_keys" 2>&1)"

# --- the calls --------------------------------------------------------------

skipped=$(q -F $'\t' -c "SELECT signature, skip_reason FROM badinput.functions() WHERE skip_reason IS NOT NULL")
while IFS=$'\t' read -r sig reason; do
	[[ -n $sig ]] && skip "$sig" "$reason"
done <<<"$skipped"

q -F $'\t' -c "SELECT f.signature, c.n, c.scenario, c.argname, c.label, c.sql FROM badinput.calls() c JOIN badinput.functions() f USING (fn) ORDER BY c.n" \
	>"$work/calls.tsv" 2>"$work/calls.err"
declare -a c_sc=() c_arg=() c_label=() c_sql=()
declare -a functions=()
declare -A first=() last=()
while IFS=$'\t' read -r sig n sc arg label sql; do
	c_sc[n]=$sc
	c_arg[n]=$arg
	c_label[n]=$label
	c_sql[n]=$sql
	if [[ -z ${first[$sig]:-} ]]; then
		functions+=("$sig")
		first[$sig]=$n
	fi
	last[$sig]=$n
done <"$work/calls.tsv"
if ((${#functions[@]} == 0)); then
	fail "the catalog reader lists the calls" "$(cat "$work/calls.err")"
	finish
	exit 1
fi
untyped=$(q -c "SELECT string_agg(DISTINCT format_type(t, NULL), ', ') FROM badinput.functions() f, unnest(f.argtypes) t WHERE f.skip_reason IS NULL AND t NOT IN (SELECT type FROM badinput.hostile)")
echo "# ${#c_sql[@]} calls of ${#functions[@]} functions${untyped:+ (types with no hostile values, given NULL only: $untyped)}"

# The script of calls FROM..TO of one function: each in its own transaction
# and savepoint; prints "R n sqlstate same clean locks" per call (and
# "M n message" for a class that must never reach the caller).
write_script()
{
	local from=$1 to=$2 n
	cat <<SQL
SET application_name = '$HARNESS_APP';
SET client_min_messages = warning;
SET log_min_messages = fatal;
SET statement_timeout = '$STATEMENT_TIMEOUT';
SET idem.wait_timeout = '0';
SELECT (idem_reserve('bi-mine', wait_timeout => '0')).fresh AS mine \\gset
SELECT badinput.tables_hash() AS base \\gset
SQL
	for ((n = from; n <= to; n++)); do
		cat <<SQL
\\echo C $n
BEGIN;
SELECT badinput.tables_hash() AS h0, badinput.session_locks() AS l0 \\gset
SAVEPOINT c;
${c_sql[n]} \\g /dev/null
\\set st :SQLSTATE
ROLLBACK TO SAVEPOINT c;
SELECT badinput.tables_hash() = :'h0' AS same, :'st' ~ '^(XX|23)' AS bad \\gset
ROLLBACK;
SELECT badinput.tables_hash() = :'base' AS clean, badinput.session_locks() = :'l0' AS locks \\gset
\\echo R $n :st :same :clean :locks
\\if :bad
\\echo M $n :LAST_ERROR_MESSAGE
\\endif
SELECT NOT :clean AS dirty \\gset
\\if :dirty
SELECT badinput.tables_hash() AS base \\gset
\\endif
SQL
	done
	printf '%s\n' '\echo E'
}

server_up()
{
	local i
	for ((i = 0; i < 120; i++)); do
		q -c 'SELECT 1' >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	return 1
}

declare -A calls=() classes=() crashes=() bad=() changed=() leaked=() waited=()
suite_start=$SECONDS

for sig in "${functions[@]}"; do
	from=${first[$sig]}
	to=${last[$sig]}
	fn_start=$SECONDS
	while ((from <= to)); do
		write_script "$from" "$to" >"$work/script.sql"
		timeout -k 5 "$RUN_LIMIT" psql -XAtq -d "$DB" -f "$work/script.sql" \
			>"$work/run.out" 2>"$work/run.err"
		rc=$?
		last_started=
		ended=no
		while read -r tag n rest; do
			case $tag in
				C) last_started=$n ;;
				R)
					read -r st same clean locks <<<"$rest"
					calls[$sig]=$((${calls[$sig]:-0} + 1))
					k="$sig|${st:0:2}"
					classes[$k]=$((${classes[$k]:-0} + 1))
					what="call $n [${c_sc[n]}] ${c_arg[n]} = ${c_label[n]}: $st"
					printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$sig" "${c_sc[n]}" \
						"${c_arg[n]}" "${c_label[n]}" "$st" >>"$work/results.tsv"
					if [[ $same != t ]]; then
						changed[$sig]+="$what (tables changed despite the rollback to the savepoint)"$'\n'
					fi
					if [[ $clean != t || $locks != t ]]; then
						leaked[$sig]+="$what (after ROLLBACK:$([[ $clean == t ]] || echo ' the tables differ')$([[ $locks == t ]] || echo " this session's advisory locks differ"))"$'\n'
					fi
					if [[ $st == 57014 && ${c_arg[n]} != wait_timeout ]]; then
						waited[$sig]+="$what"$'\n'"    ${c_sql[n]:0:300}"$'\n'
					fi
					if [[ $st == XX* || $st == 23* ]]; then
						bad[$sig]+="$what"$'\n'"    ${c_sql[n]:0:300}"$'\n'
					fi
					last_started=
					;;
				M) bad[$sig]+="    message: ${rest:0:300}"$'\n' ;;
				E) ended=yes ;;
			esac
		done <"$work/run.out"
		if [[ $ended == yes ]]; then
			break
		fi
		# The harness session died: the call it had started killed it (or
		# hung).  Wait for the server, say which call, go on after it.
		n=${last_started:-$from}
		if ((rc == 124 || rc == 137)); then
			crashes[$sig]+="call $n hung past ${RUN_LIMIT}s [${c_sc[n]}] ${c_arg[n]} = ${c_label[n]}: ${c_sql[n]:0:300}"$'\n'
			psql_q -d "$admin_db" -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '$HARNESS_APP'" >/dev/null 2>&1
		else
			crashes[$sig]+="call $n lost the connection (psql exit $rc: $(tail -n 2 "$work/run.err" | tr '\n' ' ')) [${c_sc[n]}] ${c_arg[n]} = ${c_label[n]}: ${c_sql[n]:0:300}"$'\n'
		fi
		calls[$sig]=$((${calls[$sig]:-0} + 1))
		classes[$sig|crash]=$((${classes[$sig|crash]:-0} + 1))
		if ! server_up; then
			fail "$sig: the server comes back after call $n" "it did not within 60 s"
			finish
			exit 1
		fi
		seed >/dev/null 2>&1
		from=$((n + 1))
	done

	# one line of figures per function
	line=
	for key in "${!classes[@]}"; do
		[[ $key == "$sig|"* ]] && line+=" ${key#*|}=${classes[$key]}"
	done
	line=$(tr ' ' '\n' <<<"$line" | sort | grep . | tr '\n' ' ')
	printf '# %-62s %5d calls, %3ds  by class: %s\n' "$sig" "${calls[$sig]:-0}" \
		$((SECONDS - fn_start)) "${line% }"

	if [[ -z ${crashes[$sig]:-} ]]; then
		ok "$sig: ${calls[$sig]:-0} calls, the server stayed up"
	else
		fail "$sig: the server stayed up" "${crashes[$sig]}"
	fi
	if [[ -z ${bad[$sig]:-} ]]; then
		ok "$sig: no internal error (XX) or constraint violation (23) reached the caller"
	else
		fail "$sig: no internal error (XX) or constraint violation (23) reached the caller" "${bad[$sig]}"
	fi
	if [[ -z ${waited[$sig]:-} ]]; then
		ok "$sig: no call waits unless its wait_timeout asks it to"
	else
		fail "$sig: no call waits unless its wait_timeout asks it to" \
			"cancelled by statement_timeout = $STATEMENT_TIMEOUT:" "${waited[$sig]}"
	fi
	if [[ -z ${changed[$sig]:-} ]]; then
		ok "$sig: idem_keys and idem_confinement unchanged after every rejected call"
	else
		fail "$sig: idem_keys and idem_confinement unchanged after every rejected call" "${changed[$sig]}"
	fi
	if [[ -z ${leaked[$sig]:-} ]]; then
		ok "$sig: nothing left behind by a rolled-back call (tables, advisory locks)"
	else
		fail "$sig: nothing left behind by a rolled-back call (tables, advisory locks)" "${leaked[$sig]}"
	fi
done

# --- the summary ------------------------------------------------------------

total=0
declare -A all=()
for key in "${!classes[@]}"; do
	all[${key#*|}]=$((${all[${key#*|}]:-0} + classes[$key]))
	total=$((total + classes[$key]))
done
line=
for key in "${!all[@]}"; do
	line+=" $key=${all[$key]}"
done
line=$(tr ' ' '\n' <<<"$line" | sort | grep . | tr '\n' ' ')
echo "# all: $total calls of ${#functions[@]} functions in $((SECONDS - suite_start))s; by class: ${line% }"
echo "#   (00 = accepted; 22 = bad input, IK = the extension's own, 54 = over a limit, 57 = waited until statement_timeout)"

if [[ -z $server_log ]]; then
	skip "the server log has no crash or failed assertion" "no server log found (CLUSTER_DIR/log/postgresql.log)"
else
	crash_lines=$(tail -c +"$((log_offset + 1))" "$server_log" |
		grep -aE 'terminated by signal|server process .* was terminated|TRAP:|PANIC:' | head -n 20)
	if [[ -z $crash_lines ]]; then
		ok "the server log has no crash or failed assertion"
	else
		fail "the server log has no crash or failed assertion" "$crash_lines"
	fi
fi

cleanup
# shellcheck disable=SC2154 # lib.sh's count of failures
if ((_lib_failed == 0)) && [[ -z ${BADINPUT_KEEP:-} ]]; then
	psql_q -d "$admin_db" -c "SET client_min_messages = warning" \
		-c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" \
		-c "DROP ROLE IF EXISTS $ROLE" -c "DROP ROLE IF EXISTS \"$odd_ident\"" >/dev/null 2>&1
fi

finish
