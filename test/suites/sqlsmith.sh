#!/usr/bin/env bash
#
# sqlsmith.sh: random SQL from SQLsmith against a database with the
# extension, and no crash.
#
# A database of its own (idem_sqlsmith) gets the extension, keys in every
# state (committed, expired, in flight for a live session, for a session
# that is gone, for a live and for an expired lease) and a table of hostile
# values of the types the functions take (empty, 256 B and 1 MB strings,
# multibyte text, invalid UTF-8 bytea, odd intervals, infinite timestamps,
# odd JSON, missing roles, big and multi-dimensional arrays), which SQLsmith
# picks as arguments along with the key table's own columns.  Then SQLsmith
# (Debian's sqlsmith 1.4) runs SQLSMITH_QUERIES random statements (default
# 3000) from SQLSMITH_SEED (default 1), each in a transaction that it rolls
# back, with its own statement_timeout of 1 s.
#
# Focus.  sqlsmith 1.4 has no option to pick functions: it calls whatever
# pg_proc lists (--exclude-catalog drops only the catalog's tables), so the
# extension's functions would be a handful among some 3000 of the catalog's.
# Its schema loader reads pg_proc unqualified, so by default
# (SQLSMITH_FOCUS=1) it connects with search_path = smith, pg_catalog and
# finds smith.pg_proc, a view listing the extension's functions and a few
# built-in ones that make arguments (repeat, convert_to, make_interval, ...)
# and aggregates; the queries it generates name their functions with their
# schema, so they run as usual.  Operators come from pg_operator, all of
# them.  SQLSMITH_FOCUS=0 gives it the whole catalog instead, as an
# unprivileged role granted the extension's functions (a superuser would
# call pg_terminate_backend and the like).  SQLsmith neither calls
# set-returning functions (idem_list, idem_hung) nor passes VARIADIC, so
# idem_derive_key, idem_confine and idem_unconfine only ever get
# "does not exist"; the bad-input suite calls those.
#
# Fails when the server crashed ("terminated by signal", "server process
# ... was terminated"), an assertion failed (TRAP:), sqlsmith lost its
# connection, did not finish in SQLSMITH_TIME_LIMIT seconds (default 150),
# or an internal error (class XX) came from a statement that calls one of
# the extension's functions.  Prints what SQLsmith ran (statements, calls
# per function) and what it got (errors by SQLSTATE, the most frequent
# messages).  Skipped when sqlsmith is not installed.

set -uo pipefail

# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

QUERIES=${SQLSMITH_QUERIES:-3000}
SEED=${SQLSMITH_SEED:-1}
FOCUS=${SQLSMITH_FOCUS:-1}
TIME_LIMIT=${SQLSMITH_TIME_LIMIT:-150}
DB=${SQLSMITH_DB:-idem_sqlsmith}
LOG_DB=${DB}_log
SMITH_ROLE=idem_sqlsmith
OWNER_APP=idem-sqlsmith-owner

command -v sqlsmith >/dev/null 2>&1 ||
	skip_all "sqlsmith is not installed (Debian package sqlsmith; tools/deps.sh installs it)"

work=$IDEM_TMP
rm -rf "$work"
mkdir -p "$work"

admin_db=${PGDATABASE:-postgres}
owner_pid=

q() { psql_q -d "$DB" "$@"; }

server_log=
if [[ -n ${CLUSTER_DIR:-} && -r $CLUSTER_DIR/log/postgresql.log ]]; then
	server_log=$CLUSTER_DIR/log/postgresql.log
	log_offset=$(stat -c %s "$server_log")
fi

# The key owner's session ends, and is gone when this returns: the next
# suite must not find its lock.
cleanup()
{
	psql_q -d "$admin_db" -c "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity WHERE datname = '$DB' AND application_name = '$OWNER_APP'" >/dev/null 2>&1
	if [[ -n $owner_pid ]]; then
		kill "$owner_pid" 2>/dev/null
		wait "$owner_pid" 2>/dev/null
		owner_pid=
	fi
}
trap cleanup EXIT

# --- the databases ----------------------------------------------------------

if ! out=$(psql_q -d "$admin_db" -c "SET client_min_messages = warning" \
	-c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" \
	-c "DROP DATABASE IF EXISTS $LOG_DB WITH (FORCE)" -c "CREATE DATABASE $LOG_DB" 2>&1); then
	fail "create databases $DB and $LOG_DB" "$out"
	finish
	exit 1
fi

# what sqlsmith --log-to writes (its log.sql, the columns it uses)
check "sqlsmith's error log is ready" psql_q -d "$LOG_DB" <<'SQL'
CREATE TABLE instance (id bigserial PRIMARY KEY, rev text, target text,
					   hostname text, version text, seed text);
CREATE TABLE error (id bigint, msg text, query text, target text,
					sqlstate text, errid bigserial PRIMARY KEY);
CREATE TABLE stat (id bigint, generated bigint, level float, nodes float,
				   retries float, updated timestamptz, impedance jsonb);
SQL

check "the extension, the hostile values and the keys in every state" q <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION idempotency;
-- a caller that finds a key in flight answers at once instead of waiting
-- out sqlsmith's statement_timeout (an explicit wait_timeout still waits)
SELECT set_config('idem.wait_timeout', '0', false);
-- values of every type the functions take; sqlsmith picks its arguments
-- from columns like these
CREATE TABLE hostile (
	t	text,
	tok	text,
	i	interval,
	b	bytea,
	j	jsonb,
	n	integer,
	ts	timestamptz,
	r	regrole,
	a	text[]
);
INSERT INTO hostile VALUES
	(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
	('', '', '0', '\x', '{}', 0, 'infinity', '-', '{}'),
	(repeat('k', 256), repeat('t', 256), '-1 second', '\xff', '"scalar"',
	 -2147483648, '-infinity', 4294967295::oid, '{{a,b},{c,d}}'),
	(repeat('k', 1048576), repeat('t', 5120), '178956970 years 7 mons 2147483647 days 2562047788:00:54.775807',
	 decode(repeat('ff', 1048577), 'hex'),
	 (repeat('[', 1000) || repeat(']', 1000))::jsonb, 2147483647,
	 '294276-12-31 23:59:59.999999+00', 'pg_monitor',
	 (SELECT array_agg(CASE WHEN g % 2 = 0 THEN g::text END) FROM generate_series(1, 10000) g)),
	(repeat(chr(233), 128), repeat(chr(128512), 64), '1 mon -30 days', '\xc328',
	 '[1, "a", null]', -1, 'epoch', 'pg_database_owner', '{NULL}'),
	('bi-committed', NULL, '1 microsecond', '\xeda080', 'null', 1, now(),
	 current_user::regrole, '[0:1]={a,b}'),
	('bi-session', 'bi-lease-token', '-178000000 years', '\x00', '[]', 600,
	 '4714-11-24 00:00:00+00 BC', NULL, ARRAY[repeat('k', 1048576)]),
	('bi-lease', 'bi-lease-token', '1 hour', '\x6f6b', '{"h": "v"}', 200,
	 now(), NULL, ARRAY['bi-scope']),
	('bi-lease-expired', 'bi-lease-expired-token', '1 day -86400 seconds', NULL,
	 jsonb_build_object('h', repeat('v', 1048576)), 99, now(), NULL, NULL),
	('bi-orphan', '%s%n%x', '-1 mon +31 days', NULL, '-1e1000', NULL, NULL, NULL, NULL),
	('bi-expired', E'\t\r\n\x01', '2147483647 days', NULL, NULL, NULL, NULL, NULL, NULL);

SELECT idem_reserve('bi-committed');
SELECT idem_commit('bi-committed', NULL, 200, '\x6f6b', '{"h": "v"}');
SELECT idem_reserve('bi-expired', ttl => '1 millisecond');
SELECT idem_commit('bi-expired', NULL, 200, '\x6f6b');
SELECT idem_reserve('bi-orphan');
SELECT idem_reserve('bi-lease', owner => 'bi-lease-token', lease => '1 hour');
SELECT idem_reserve('bi-lease-expired', owner => 'bi-lease-expired-token', lease => '1 millisecond');
SELECT pg_sleep(0.01);
SQL

# idem.wait_timeout = 0 for every session of the database
q -c "ALTER DATABASE $DB SET idem.wait_timeout = '0'" >/dev/null

# the session that keeps bi-session in flight until the end
psql -XAtq -d "$DB" -c "SET application_name = '$OWNER_APP'" \
	-c "SELECT (idem_reserve('bi-session')).fresh" \
	-c "SELECT pg_sleep(900)" >"$work/owner.out" 2>&1 &
owner_pid=$!
for ((i = 0; i < 100; i++)); do
	state=$(q -c "SELECT k.state FROM idem_keys k JOIN pg_stat_activity a ON a.pid = k.owner_pid WHERE k.key = 'bi-session' AND a.application_name = '$OWNER_APP'" 2>/dev/null)
	[[ $state == in_flight ]] && break
	sleep 0.05
done
check_eq "keys in every state" \
	"bi-committed committed|bi-expired committed expired|bi-lease in_flight lease|bi-lease-expired in_flight lease expired|bi-orphan in_flight|bi-session in_flight" \
	"$(q -c "SELECT string_agg(concat_ws(' ', key, state, CASE WHEN lease_expires_at IS NOT NULL THEN 'lease' END, CASE WHEN expires_at <= now() OR lease_expires_at <= now() THEN 'expired' END), '|' ORDER BY key) FROM idem_keys" 2>&1)"

# --- what sqlsmith may call -------------------------------------------------

# shellcheck disable=SC2016 # $$ is SQL's
if [[ $FOCUS == 1 ]]; then
	check "smith.pg_proc narrows sqlsmith to the extension's functions" q <<'SQL'
CREATE SCHEMA smith;
COMMENT ON SCHEMA smith IS 'what sqlsmith''s schema loader finds first (search_path = smith, pg_catalog)';
CREATE VIEW smith.pg_proc AS
	SELECT p.*
	  FROM pg_catalog.pg_proc p
	 WHERE p.oid IN (SELECT d.objid
					   FROM pg_catalog.pg_depend d
					   JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
					  WHERE d.classid = 'pg_catalog.pg_proc'::regclass
						AND d.refclassid = 'pg_catalog.pg_extension'::regclass
						AND d.deptype = 'e'
						AND e.extname = 'idempotency')
		OR (p.pronamespace = 'pg_catalog'::regnamespace
			AND p.proname IN ('repeat', 'md5', 'lower', 'chr', 'length',
							  'octet_length', 'convert_to', 'decode',
							  'now', 'make_interval', 'string_to_array',
							  'to_regrole', 'jsonb_build_array', 'count',
							  'min', 'max', 'string_agg'));
SQL
	target="dbname=$DB user=${PGUSER:-postgres} options='-c search_path=smith,pg_catalog,public'"
	what="the extension's functions and $(q -c "SELECT count(*) FROM smith.pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace") built-in ones"
else
	check "role $SMITH_ROLE may call the extension's functions" q <<SQL
SET client_min_messages = warning;
DO \$\$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$SMITH_ROLE') THEN
		CREATE ROLE $SMITH_ROLE LOGIN;
	END IF;
END
\$\$;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO $SMITH_ROLE;
GRANT SELECT ON hostile TO $SMITH_ROLE;
GRANT pg_monitor TO $SMITH_ROLE;
SQL
	target="dbname=$DB user=$SMITH_ROLE"
	what="the whole catalog, as $SMITH_ROLE"
fi
[[ -n ${PGHOST:-} ]] && target="host=$PGHOST $target"
[[ -n ${PGPORT:-} ]] && target="port=$PGPORT $target"
log_target="dbname=$LOG_DB user=${PGUSER:-postgres}"
[[ -n ${PGHOST:-} ]] && log_target="host=$PGHOST $log_target"
[[ -n ${PGPORT:-} ]] && log_target="port=$PGPORT $log_target"

# --- the run ----------------------------------------------------------------

echo "# sqlsmith $(sqlsmith --version 2>&1 | head -n 1 | sed 's/^SQLsmith //'):" \
	"$QUERIES statements, seed $SEED, calling $what"
start=$SECONDS
timeout -k 10 "$TIME_LIMIT" sqlsmith --target="$target" --log-to="$log_target" \
	--exclude-catalog --seed="$SEED" --max-queries="$QUERIES" --verbose \
	--dump-all-queries >"$work/queries.sql" 2>"$work/sqlsmith.err"
rc=$?
elapsed=$((SECONDS - start))

if ((rc == 0)); then
	ok "sqlsmith ran $QUERIES statements (${elapsed}s)"
elif ((rc == 124 || rc == 137)); then
	fail "sqlsmith ran $QUERIES statements" "did not finish in ${TIME_LIMIT}s"
else
	fail "sqlsmith ran $QUERIES statements" "exit $rc:" "$(tail -n 20 "$work/sqlsmith.err")"
fi

# its progress line: "." per success, "e" an error, "t" a timeout, "S" a
# syntax error, "C" a lost connection
progress=$(grep -E '^[.eStC]+$' "$work/sqlsmith.err" | tr -d '\n')
broken=$(tr -cd 'C' <<<"$progress" | wc -c)
check_eq "sqlsmith never lost its connection" 0 "$broken"

calls=$(grep -oE '\bpublic\.idem_[a-z_]+\(' "$work/queries.sql" | sed 's/^public\.//; s/($//' |
	sort | uniq -c | sort -rn | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }')
echo "# calls of the extension's functions in the generated statements: ${calls:-none}"
echo "# outcomes: $(tr -cd '.' <<<"$progress" | wc -c) succeeded," \
	"$(tr -cd 'e' <<<"$progress" | wc -c) errors," \
	"$(tr -cd 't' <<<"$progress" | wc -c) timeouts," \
	"$(tr -cd 'S' <<<"$progress" | wc -c) syntax errors"

classes=$(psql_q -d "$LOG_DB" -c "SELECT string_agg(format('%s=%s', c, n), ' ' ORDER BY c) FROM (SELECT coalesce(left(sqlstate, 2), '?') AS c, count(*) AS n FROM error GROUP BY 1) s" 2>&1)
echo "# errors by SQLSTATE class: ${classes:-none}"
echo "# most frequent errors:"
psql_q -d "$LOG_DB" -F ' ' -c "SELECT format('#   %6s  %s  %s', count(*), sqlstate, left(split_part(msg, E'\n', 1), 100)) FROM error GROUP BY sqlstate, split_part(msg, E'\n', 1) ORDER BY count(*) DESC, 1 LIMIT 12" 2>&1
ours=$(psql_q -d "$LOG_DB" -c "SELECT format('#   %s: %s', sqlstate, left(split_part(msg, E'\n', 1), 200)) || E'\n' || '#     ' || left(regexp_replace(query, '\s+', ' ', 'g'), 600) FROM error WHERE sqlstate LIKE 'XX%' AND query ~ 'public\.idem_[a-z_]+\(' ORDER BY errid LIMIT 10" 2>&1)
internal=$(psql_q -d "$LOG_DB" -c "SELECT count(*) FROM error WHERE sqlstate LIKE 'XX%'" 2>&1)
echo "# internal errors (class XX): $internal"
if [[ -z $ours ]]; then
	ok "no internal error (class XX) from a statement calling the extension"
else
	fail "no internal error (class XX) from a statement calling the extension" "$ours"
fi

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
if q -c 'SELECT 1' >/dev/null 2>&1; then
	ok "the server still answers"
else
	fail "the server still answers"
fi

cleanup
# shellcheck disable=SC2154 # lib.sh's count of failures
if ((_lib_failed == 0)) && [[ -z ${SQLSMITH_KEEP:-} ]]; then
	psql_q -d "$admin_db" -c "SET client_min_messages = warning" \
		-c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" \
		-c "DROP DATABASE IF EXISTS $LOG_DB WITH (FORCE)" >/dev/null 2>&1
	if [[ $FOCUS != 1 ]]; then
		psql_q -d "$admin_db" -c "DROP ROLE IF EXISTS $SMITH_ROLE" >/dev/null 2>&1
	fi
fi

finish
