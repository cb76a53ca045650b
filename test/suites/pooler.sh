#!/usr/bin/env bash
#
# pooler.sh: exactly once through PgBouncer.
#
# The suite starts its own PgBouncer (tools/pgbouncer.sh) in front of the
# cluster, in transaction mode with a pool of 3 server connections and no
# reserve pool, then again in session mode, and runs 20 concurrent clients
# on one key per scenario.  The side effect (a row in the table `effects`,
# or a line in a file, then half a second of work) must run exactly once,
# and every client must be answered with the stored response ('out').
#
#   sql, short waits     each psql client reserves with a 200 ms wait and
#                        tries again on IK409 (a waiter then holds a pooled
#                        server connection for at most 200 ms, so it cannot
#                        starve the owner); the fresh one inserts, sleeps
#                        and commits with the owner token of its reserve row.
#                        Owners: a lease argument (10 s); the lease of the
#                        role (ALTER ROLE app SET idem.lease = '10s', no
#                        argument); a session owner carrying its own token.
#   sql, one transaction BEGIN; reserve; insert; commit; COMMIT; with a
#                        session owner and with a lease.
#   idem exec            `idem exec --key K -- sh -c '...'` with no option
#                        (the client notices the pooler), with --lease 10s,
#                        and as role app; skipped while the built client
#                        has no --lease.
#   libidem              a small C program on idem_run, no configuration;
#                        skipped likewise.
#
# The failure that lease owners end: a session owner behind a transaction
# pooler shares its server session with other clients, so one of them
# reserving the same key looked re-entrant and got `fresh` too.  With a
# token of its own per client that must never happen (at most one fresh in
# transaction mode; on a pool of one, where two clients surely share the
# session, the second gets IK409).  The same clients without tokens are
# measured too, not asserted: their count shows what the tokens prevent.
#
# Each scenario prints a table line, e.g.
#   # pooler=transaction client=sql owner=lease executions=1/20
# and the table is repeated at the end.  Needs pgbouncer (tools/deps.sh
# installs it); skipped as a whole without it.  Works in a database of its
# own (idem_pooler) and a role app, dropped at the end.

set -uo pipefail

# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

CLIENTS=20
POOL=3
DB=idem_pooler
T=$IDEM_TMP
CLIENT=$IDEM_ROOT/client
IDEM=$CLIENT/build/idem
PGBOUNCER_SH=$IDEM_ROOT/tools/pgbouncer.sh
P="p$$"					# keys of this run
table=()
bouncers=()
started=$SECONDS

if [[ ! -x /usr/sbin/pgbouncer ]]; then
	skip_all "pgbouncer is not installed (tools/deps.sh installs it)"
fi

# The cluster, direct: for setup and for counting the side effects
DIRECT_HOST=$PGHOST
DIRECT_PORT=$PGPORT
direct()
{
	PGOPTIONS='-c client_min_messages=warning' psql -XAtq -v ON_ERROR_STOP=1 \
		-h "$DIRECT_HOST" -p "$DIRECT_PORT" -U postgres "$@"
}

created_app=no
cleanup()
{
	local b
	for b in "${bouncers[@]}"; do
		bash "$PGBOUNCER_SH" stop "$b" >/dev/null 2>&1
	done
	direct -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
	if [[ $created_app == yes ]]; then
		direct -d postgres -c 'DROP ROLE IF EXISTS app' >/dev/null 2>&1
	else
		direct -d postgres -c 'ALTER ROLE app RESET idem.lease' >/dev/null 2>&1
	fi
}
trap cleanup EXIT

rm -rf "$T"
mkdir -p "$T"
chmod 0755 "$T"

if [[ -z $(direct -d postgres -c "SELECT 1 FROM pg_roles WHERE rolname = 'app'") ]]; then
	direct -d postgres -c 'CREATE ROLE app LOGIN' >/dev/null && created_app=yes
fi
direct -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
if ! out=$(direct -d $DB 2>&1 <<-EOF
	CREATE EXTENSION idempotency;
	CREATE TABLE effects (key text NOT NULL, backend integer DEFAULT pg_backend_pid(),
		at timestamptz DEFAULT clock_timestamp());
	GRANT INSERT, SELECT ON effects TO app;
	ALTER ROLE app SET idem.lease = '10s';
EOF
); then
	fail "setup: database $DB, table effects, role app with idem.lease = '10s'" "$out"
	finish
	exit 1
fi
ok "setup: database $DB, table effects, role app with idem.lease = '10s'"

# Lease owners on the server: idem_reserve(..., scope, owner, lease)
server_leases=$(direct -d $DB -c "SELECT count(*) FROM pg_proc WHERE proname = 'idem_reserve' AND pronargs = 7")

# executions KEY: how many times the side effect ran for KEY
executions() { direct -d $DB -c "SELECT count(*) FROM effects WHERE key = '$1'"; }

# record MODE CLIENT OWNER RUNS [NOTE]: the scenario's table line
record()
{
	local line="pooler=$1 client=$2 owner=$3 executions=$4/$CLIENTS"
	table+=("$line")
	echo "# $line${5:+ ($5)}"
}

# ---- psql clients -------------------------------------------------------------------

# short_wait_script FILE RESERVE COMMIT_OWNER: a client of the short-wait
# pattern, one attempt: reserve (waiting 200 ms at most: IK409 then ends
# psql, and the caller tries again); when fresh, the side effect and the
# commit with COMMIT_OWNER.  Prints "answer FRESH STATE BODY", what the
# reserve returned or, for the owner, what is stored after its commit.
short_wait_script()
{
	cat >"$1" <<-EOF
		\\set ON_ERROR_STOP 1
		\\set VERBOSITY verbose
		SELECT fresh AS r_fresh, state AS r_state, coalesce(convert_from(body, 'UTF8'), '') AS r_body,
		       coalesce(owner, '') AS r_owner
		  FROM $2 \\gset
		\\echo reserved :r_fresh
		\\if :r_fresh
		INSERT INTO effects (key) VALUES (:'key');
		SELECT pg_sleep(0.5);
		SELECT idem_commit(:'key', NULL, 200, 'out'::bytea, '{}', '', $3);
		SELECT 'answer t ' || state || ' ' || coalesce(convert_from(body, 'UTF8'), '')
		  FROM idem_get(:'key');
		\\else
		\\echo answer f :r_state :r_body
		\\endif
	EOF
}

# one_txn_script FILE RESERVE COMMIT: the one-transaction pattern
one_txn_script()
{
	cat >"$1" <<-EOF
		\\set ON_ERROR_STOP 1
		\\set VERBOSITY verbose
		BEGIN;
		SELECT fresh AS r_fresh, state AS r_state, coalesce(convert_from(body, 'UTF8'), '') AS r_body,
		       coalesce(owner, '') AS r_owner
		  FROM $2 \\gset
		\\if :r_fresh
		INSERT INTO effects (key) VALUES (:'key');
		SELECT pg_sleep(0.5);
		SELECT $3;
		\\endif
		COMMIT;
		\\if :r_fresh
		SELECT 'answer t ' || state || ' ' || coalesce(convert_from(body, 'UTF8'), '')
		  FROM idem_get(:'key');
		\\else
		\\echo answer f :r_state :r_body
		\\endif
	EOF
}

# sql_client DIR N SCRIPT KEY DEADLINE [ENV...]: client N: runs SCRIPT
# through the pooler (a new connection each attempt, as a client that
# retries does), again while its reserve ends in IK409 and DEADLINE
# (seconds) has not passed.  A client that was fresh and then failed (its
# commit) does not try again: that would run the side effect again.  Its
# attempts go to DIR/log.N, its last answer to DIR/answer.N.
sql_client()
{
	local dir=$1 n=$2 script=$3 key=$4 deadline=$((SECONDS + $5)) tries=0 rc
	local token="client-$n-$RANDOM$RANDOM"	# the client's own, for all its attempts
	shift 5
	: >"$dir/log.$n"
	while :; do
		tries=$((tries + 1))
		env "$@" psql -XAtq -v key="$key" -v token="$token" \
			-f "$script" >"$dir/try.$n" 2>&1
		rc=$?
		cat "$dir/try.$n" >>"$dir/log.$n"
		if ((rc == 0)); then
			grep '^answer ' "$dir/try.$n" | tail -n 1 >"$dir/answer.$n"
			break
		fi
		if grep -q '^reserved t' "$dir/try.$n"; then
			echo "answer t failed: $(grep -m 1 ERROR "$dir/try.$n")" >"$dir/answer.$n"
			break
		fi
		if ! grep -q 'ERROR:  IK409' "$dir/try.$n" || ((SECONDS >= deadline)); then
			echo "gave up after $tries attempts: $(grep -m 1 ERROR "$dir/try.$n")" >"$dir/answer.$n"
			break
		fi
	done
	echo "$tries" >"$dir/tries.$n"
}

# run_clients NAME SCRIPT KEY DEADLINE [ENV...]: CLIENTS sql_clients at
# once; their files in $T/NAME/
run_clients()
{
	local name=$1 script=$2 key=$3 deadline=$4 i
	shift 4
	rm -rf "${T:?}/$name"
	mkdir -p "$T/$name"
	for ((i = 1; i <= CLIENTS; i++)); do
		sql_client "$T/$name" "$i" "$script" "$key" "$deadline" "$@" &
	done
	wait
}

# answers NAME: how many clients were answered with each outcome, e.g.
#   1 answer t committed out
#   19 answer f committed out
answers() { cat "$T/$1"/answer.* | sort | uniq -c | sed 's/^ *//'; }

# attempts NAME: the reserve attempts of all the clients
attempts() { cat "$T/$1"/tries.* | awk '{ n += $1 } END { print n + 0 }'; }

# expect_once MODE CLIENT OWNER NAME KEY: the side effect ran once, one
# client was the owner and every client got the stored 'out'
expect_once()
{
	local mode=$1 client=$2 owner=$3 name=$4 key=$5 runs got want
	runs=$(executions "$key")
	record "$mode" "$client" "$owner" "$runs" "$(attempts "$name") reserve attempts"
	check_eq "$mode, $client, $owner owner: the side effect ran exactly once" 1 "$runs"
	want="$((CLIENTS - 1)) answer f committed out
1 answer t committed out"
	got=$(answers "$name")
	check_eq "$mode, $client, $owner owner: one owner, and all $CLIENTS answered 'out'" "$want" "$got"
	[[ $got == "$want" ]] || echo "# see $T/$name/log.*"
}

RESERVE_LEASE="idem_reserve(:'key', NULL, NULL, '200ms', '', NULL, '10s')"
RESERVE_ROLE="idem_reserve(:'key', NULL, NULL, '200ms', '')"
RESERVE_SESSION="idem_reserve(:'key', NULL, NULL, '200ms', '', :'token', NULL)"
short_wait_script "$T/lease.sql" "$RESERVE_LEASE" "NULLIF(:'r_owner', '')"
short_wait_script "$T/role.sql" "$RESERVE_ROLE" "NULLIF(:'r_owner', '')"
short_wait_script "$T/session.sql" "$RESERVE_SESSION" ":'token'"
short_wait_script "$T/untokened.sql" "idem_reserve(:'key', NULL, NULL, '200ms')" "NULL"
one_txn_script "$T/txn-session.sql" "idem_reserve(:'key', NULL, NULL, '30s')" \
	"idem_commit(:'key', NULL, 200, 'out'::bytea)"
one_txn_script "$T/txn-lease.sql" "idem_reserve(:'key', NULL, NULL, '30s', '', NULL, '10s')" \
	"idem_commit(:'key', NULL, 200, 'out'::bytea, '{}', '', NULLIF(:'r_owner', ''))"

# ---- idem exec and libidem -------------------------------------------------------------

# What the built client can do: lease owners in libidem (idem_set_lease;
# then idem exec has them too, from idem.lease or a noticed proxy), and
# the CLI's --lease.
lib_leases=no
lib_why=
cli_lease=no
cli_why=
if ! out=$(make -s --no-print-directory -C "$CLIENT" build/idem build/libidem.so 2>&1); then
	fail "the client (idem, libidem) builds" "$out"
	lib_why="the client does not build"
	cli_why=$lib_why
else
	if grep -q 'idem_set_lease' "$CLIENT/idem.h"; then
		lib_leases=yes
	else
		lib_why="the built libidem has no lease owners yet (no idem_set_lease in idem.h)"
	fi
	if "$IDEM" exec --help 2>&1 | grep -q -- '--lease'; then
		cli_lease=yes
	else
		cli_why="the built idem has no --lease yet (idem exec --help)"
	fi
fi

# The libidem program: idem_run under the key of argv[1], its handler
# appends to the file of argv[2], works half a second and answers 'out'.
cat >"$T/once.c" <<'EOF'
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <idem.h>

static int
handler(idem_response *resp, void *arg)
{
	FILE	   *f = fopen((const char *) arg, "a");

	if (f == NULL)
		return 1;
	fputs("run\n", f);
	fclose(f);
	usleep(500 * 1000);
	idem_response_set_status(resp, 200);
	return idem_response_set_body(resp, "out", 3);
}

int
main(int argc, char **argv)
{
	idem_opts	opts = {0};
	idem_record *rec = NULL;
	idem_conn  *conn;
	idem_outcome outcome;

	if (argc != 3)
		return 2;
	conn = idem_connect(NULL);
	if (!idem_connected(conn))
	{
		fprintf(stderr, "connect: %s\n", idem_errmsg(conn));
		idem_free(conn);
		return 1;
	}
	opts.wait = "30s";
	outcome = idem_run(conn, argv[1], &opts, handler, argv[2], &rec);
	if (outcome == IDEM_FRESH || outcome == IDEM_REPLAY)
	{
		size_t		len = 0;
		const char *body = idem_record_body(rec, &len);

		printf("%.*s\n", (int) len, body);
	}
	else
		fprintf(stderr, "%s: %s (SQLSTATE %s)\n", idem_outcome_name(outcome),
				idem_errmsg(conn), idem_sqlstate(conn));
	idem_record_free(rec);
	idem_free(conn);
	return outcome == IDEM_FRESH || outcome == IDEM_REPLAY ? 0 : 1;
}
EOF
libidem_prog=
if [[ $lib_leases == yes ]]; then
	if out=$(cc -Wall -Werror -o "$T/once" "$T/once.c" -I"$CLIENT" -L"$CLIENT/build" \
		-Wl,-rpath,"$CLIENT/build" -lidem 2>&1); then
		libidem_prog=$T/once
		ok "the libidem program builds"
	else
		fail "the libidem program builds" "$out"
	fi
fi

# prog_clients NAME CMD...: CLIENTS runs of CMD at once, CMD's stdout to
# $T/NAME/out.N, stderr to log.N, "STDOUT exit RC" to answer.N; CMD finds
# the file its side effect appends to in $RAN ($T/NAME/ran)
prog_clients()
{
	local name=$1 i rc
	shift
	rm -rf "${T:?}/$name"
	mkdir -p "$T/$name"
	: >"$T/$name/ran"
	for ((i = 1; i <= CLIENTS; i++)); do
		(
			RAN=$T/$name/ran "$@" >"$T/$name/out.$i" 2>"$T/$name/log.$i"
			rc=$?
			echo "$(cat "$T/$name/out.$i") exit $rc" >"$T/$name/answer.$i"
		) &
	done
	wait
}

# idem_exec [ENV...] -- [OPTIONS...] KEY: idem exec of the side effect
# shellcheck disable=SC2016 # $RAN is for sh
idem_exec()
{
	local -a envs=()
	while [[ $1 != -- ]]; do
		envs+=("$1")
		shift
	done
	shift
	local key=${*: -1}
	env "${envs[@]}" "$IDEM" exec "${@:1:$#-1}" --key "$key" -- \
		sh -c 'echo run >> "$RAN"; sleep 0.5; echo out'
}

# expect_once_file MODE CLIENT OWNER NAME: the command ran once (one line
# in NAME/ran) and every client printed 'out' and exited 0
expect_once_file()
{
	local mode=$1 client=$2 owner=$3 name=$4 runs got
	runs=$(wc -l <"$T/$name/ran")
	record "$mode" "$client" "$owner" "$runs"
	check_eq "$mode, $client, $owner owner: the command ran exactly once" 1 "$runs"
	got=$(answers "$name")
	check_eq "$mode, $client, $owner owner: all $CLIENTS printed 'out' and exited 0" \
		"$CLIENTS out exit 0" "$got"
	[[ $got == "$CLIENTS out exit 0" ]] || echo "# see $T/$name/log.*"
}

run_client_cases()
{
	local mode=$1 name
	if [[ $lib_leases == yes ]]; then
		name=$mode-exec-auto
		prog_clients "$name" idem_exec -- "$P-$name"
		expect_once_file "$mode" idem-exec auto "$name"
		name=$mode-exec-role
		prog_clients "$name" idem_exec PGUSER=app -- "$P-$name"
		expect_once_file "$mode" idem-exec role-lease "$name"
	else
		skip "$mode, idem exec, 20 clients, no option (the pooler noticed): exactly once" "$lib_why"
		skip "$mode, idem exec as role app (idem.lease = '10s'), 20 clients: exactly once" "$lib_why"
	fi
	if [[ $cli_lease == yes ]]; then
		name=$mode-exec-lease
		prog_clients "$name" idem_exec -- --lease 10s "$P-$name"
		expect_once_file "$mode" idem-exec lease "$name"
	else
		skip "$mode, idem exec --lease 10s, 20 clients: exactly once" "$cli_why"
	fi
	if [[ -n $libidem_prog ]]; then
		name=$mode-libidem-auto
		# shellcheck disable=SC2016 # $RAN is for sh
		prog_clients "$name" sh -c '"$0" "$1" "$RAN"' "$libidem_prog" "$P-$name"
		expect_once_file "$mode" libidem auto "$name"
	else
		skip "$mode, libidem idem_run, 20 clients, no configuration: exactly once" \
			"${lib_why:-the libidem program did not build}"
	fi
}

# ---- the scenarios, in each pool mode --------------------------------------------------

# start_bouncer DIR MODE POOL: a PgBouncer in DIR; its env is sourced
start_bouncer()
{
	local out
	bouncers+=("$1")
	if ! out=$(CLUSTER_DIR='' PGHOST=$DIRECT_HOST PGPORT=$DIRECT_PORT \
		bash "$PGBOUNCER_SH" start "$1" "$2" "$3" 2>&1); then
		fail "PgBouncer starts ($2 pooling, pool of $3)" "$out"
		return 1
	fi
	# shellcheck disable=SC1091
	. "$1/env"
	export PGDATABASE=$DB
	ok "PgBouncer starts ($2 pooling, pool of $3, no reserve pool): port $PGPORT"
}

for mode in transaction session; do
	t0=$SECONDS
	start_bouncer "$T/bouncer-$mode" "$mode" "$POOL" || continue

	# the role's setting reaches the server sessions PgBouncer opens
	check_eq "$mode: through PgBouncer, the server runs the role's idem.lease" 10s \
		"$(psql -XAtq -U app -c 'SHOW idem.lease' 2>&1)"

	name=$mode-sql-lease
	run_clients "$name" "$T/lease.sql" "$P-$name" 60
	expect_once "$mode" sql lease "$name" "$P-$name"

	name=$mode-sql-role
	run_clients "$name" "$T/role.sql" "$P-$name" 60 PGUSER=app
	expect_once "$mode" sql role-lease "$name" "$P-$name"

	name=$mode-sql-session
	if [[ $mode == session ]]; then
		# session pooling keeps a client on one server session: the
		# default owner works
		run_clients "$name" "$T/session.sql" "$P-$name" 60
		expect_once "$mode" sql session "$name" "$P-$name"
	else
		# transaction pooling: clients share server sessions, and the
		# owner's commit may come from a session that does not own the
		# key, so this is not a pattern to use; but with a token per
		# client no two of them may ever both be fresh
		run_clients "$name" "$T/session.sql" "$P-$name" 6
		runs=$(executions "$P-$name")
		fresh=$(cat "$T/$name"/answer.* | grep -c '^answer t')
		record "$mode" sql session "$runs"
		if ((runs <= 1 && fresh <= 1)); then
			ok "$mode, sql, session owners with their own tokens: never two fresh ($fresh fresh, $runs executions)"
		else
			fail "$mode, sql, session owners with their own tokens: never two fresh" \
				"$fresh fresh, $runs executions" "$(answers "$name")"
		fi
		echo "# $mode, sql, session owners: $(answers "$name" | tr '\n' ';')"

		# The same without tokens, as SQL callers of version 1.1 did:
		# measured, not asserted (the contract leaves them re-entrant)
		name=$mode-sql-untokened
		run_clients "$name" "$T/untokened.sql" "$P-$name" 6
		runs=$(executions "$P-$name")
		record "$mode" sql session-no-token "$runs" \
			"measured, not asserted: clients sharing a server session look re-entrant"
	fi

	name=$mode-txn-session
	run_clients "$name" "$T/txn-session.sql" "$P-$name" 60
	expect_once "$mode" sql-one-txn session "$name" "$P-$name"

	name=$mode-txn-lease
	run_clients "$name" "$T/txn-lease.sql" "$P-$name" 60
	expect_once "$mode" sql-one-txn lease "$name" "$P-$name"

	run_client_cases "$mode"

	bash "$PGBOUNCER_SH" stop "$T/bouncer-$mode" >/dev/null 2>&1
	echo "# $mode pooling: $((SECONDS - t0)) s"
done

# ---- two clients surely on one server session ---------------------------------------------

# A pool of one in transaction mode: every client's statements run on the
# same server session.  Client B reserving the key client A holds looks
# re-entrant to a session owner; with its own token B must get IK409, not
# fresh, and A's commit (same session, its token) must work.
if start_bouncer "$T/bouncer-one" transaction 1; then
	key=$P-one
	a=$(psql -XAtq -c "SELECT fresh FROM idem_reserve('$key', NULL, NULL, '0', '', 'client-a', NULL)" 2>&1)
	b=$(psql -XAtq -v VERBOSITY=verbose \
		-c "SELECT fresh FROM idem_reserve('$key', NULL, NULL, '0', '', 'client-b', NULL)" 2>&1)
	check_eq "pool of one: client A reserves (session owner, token client-a): fresh" t "$a"
	if [[ $b == *"ERROR:  IK409"* ]]; then
		ok "pool of one: client B on the same server session with another token gets IK409, not fresh"
	else
		fail "pool of one: client B on the same server session with another token gets IK409, not fresh" "$b"
	fi
	check_eq "pool of one: A commits with its token" t \
		"$(psql -XAtq -c "SELECT idem_commit('$key', NULL, 200, 'out'::bytea, '{}', '', 'client-a')" 2>&1)"
	check_eq "pool of one: B then replays A's response" "f|committed|out" \
		"$(psql -XAtq -c "SELECT fresh, state, convert_from(body, 'UTF8') FROM idem_reserve('$key', NULL, NULL, '0', '', 'client-b', NULL)" 2>&1)"
	bash "$PGBOUNCER_SH" stop "$T/bouncer-one" >/dev/null 2>&1
fi

if [[ $server_leases != 1 ]]; then
	echo "# the server has no lease owners (no idem_reserve(..., owner, lease)): the lease scenarios fail"
fi
echo "# the table ($CLIENTS clients on one key, pool of $POOL, no reserve pool; $((SECONDS - started)) s):"
printf '#   %s\n' "${table[@]}"

finish
