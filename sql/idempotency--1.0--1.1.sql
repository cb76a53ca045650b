/* idempotency--1.0--1.1.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION idempotency UPDATE TO '1.1'" to load this file. \quit

--
-- 1.1: counters and the idem_stats view, operator functions.
--

CREATE FUNCTION idem_owner_alive(pid integer, started timestamptz)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_owner_alive_sql'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION idem_owner_alive(integer, timestamptz) IS
'whether the backend with this PID and start time still runs (the owner of an in-flight reservation)';

CREATE FUNCTION idem_stats_counters(
	OUT counters_available boolean,
	OUT reserves bigint,
	OUT fresh bigint,
	OUT takeovers bigint,
	OUT replays bigint,
	OUT waits bigint,
	OUT wait_time_us bigint,
	OUT wait_timeouts bigint,
	OUT mismatches bigint,
	OUT commits bigint,
	OUT releases bigint,
	OUT purged bigint,
	OUT evicted bigint,
	OUT errors bigint,
	OUT stats_reset timestamptz)
AS 'MODULE_PATHNAME', 'idem_stats_counters'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION idem_stats_counters() IS
'the counters kept in shared memory (NULL unless idempotency is in shared_preload_libraries)';

CREATE FUNCTION idem_stats_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'idem_stats_reset'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION idem_stats_reset() IS
'set the shared counters to zero';

-- What the key table says now, read as its owner.
CREATE FUNCTION idem_table_counts(OUT in_flight bigint, OUT committed bigint,
								  OUT expired bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT count(*) FILTER (WHERE state = 'in_flight' AND expires_at > now()),
		   count(*) FILTER (WHERE state = 'committed' AND expires_at > now()),
		   count(*) FILTER (WHERE expires_at <= now())
	  FROM @extschema@.idem_keys
$$;

COMMENT ON FUNCTION idem_table_counts() IS
'records in flight, committed and expired (not yet purged), counted in the key table';

CREATE VIEW idem_stats AS
	SELECT c.counters_available,
		   c.reserves, c.fresh, c.takeovers, c.replays,
		   c.waits, round(c.wait_time_us / 1000.0, 3) AS wait_time_ms,
		   c.wait_timeouts, c.mismatches, c.commits, c.releases,
		   c.purged, c.evicted, c.errors,
		   t.in_flight, t.committed, t.expired,
		   c.stats_reset,
		   CASE WHEN NOT c.counters_available THEN
			   'counters need shared_preload_libraries = ''idempotency''; the key counts are read from the table'
		   END AS note
	  FROM @extschema@.idem_stats_counters() c,
		   @extschema@.idem_table_counts() t;

COMMENT ON VIEW idem_stats IS
'what the extension has done since the last reset (needs preloading), and what the key table holds';

--
-- Operator functions
--

-- The keys of a scope (all scopes when NULL), newest first.
CREATE FUNCTION idem_list(scope text DEFAULT NULL, state text DEFAULT NULL,
						  max_rows integer DEFAULT 100)
RETURNS TABLE (scope text, key text, state text, status integer,
			   attempt integer, body_bytes integer, owner_pid integer,
			   owner_alive boolean, age interval, expires_in interval)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT k.scope, k.key, k.state, k.status, k.attempt,
		   octet_length(k.body),
		   k.owner_pid,
		   CASE WHEN k.state = 'in_flight' THEN
			   k.owner_pid IS NOT NULL AND
			   @extschema@.idem_owner_alive(k.owner_pid, k.owner_started)
		   END,
		   now() - k.created_at,
		   k.expires_at - now()
	  FROM @extschema@.idem_keys k
	 WHERE ($1 IS NULL OR k.scope = $1)
	   AND ($2 IS NULL OR k.state = $2)
	 ORDER BY k.created_at DESC
	 LIMIT $3
$$;

COMMENT ON FUNCTION idem_list(text, text, integer) IS
'keys of a scope (or all) with their state and age, newest first';

CREATE FUNCTION idem_evict(key text, scope text DEFAULT '')
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_evict'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem_evict(text, text) IS
'delete one committed key so that the next request runs the handler again; the evicted response is logged';

-- In-flight keys whose owner is alive and has held them for long: the
-- hung-handler case, with what to do about each.
CREATE FUNCTION idem_hung(older_than interval DEFAULT '5 minutes')
RETURNS TABLE (scope text, key text, owner_pid integer, held_for interval,
			   backend_state text, backend_query text, advice text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT k.scope, k.key, k.owner_pid, now() - k.created_at,
		   a.state, a.query,
		   CASE
			   WHEN a.state = 'idle in transaction' THEN
				   'the handler''s transaction is open and idle: the application is stuck or lost the connection''s state; pg_terminate_backend(' || k.owner_pid || ') rolls it back and frees the key for a takeover'
			   WHEN a.state = 'idle' THEN
				   'the session holds the reservation but runs nothing: the application lost track of it (or runs a slow external call); have it call idem_release, or pg_terminate_backend(' || k.owner_pid || ') so that the next request takes the key over'
			   WHEN a.state = 'active' THEN
				   'the owner is running a statement: look at backend_query; cancel it with pg_cancel_backend(' || k.owner_pid || ') if it is stuck'
			   ELSE
				   'the owner is in state ' || coalesce(a.state, 'unknown') || '; pg_terminate_backend(' || k.owner_pid || ') frees the key for a takeover'
		   END
	  FROM @extschema@.idem_keys k
	  JOIN pg_stat_activity a
		ON a.pid = k.owner_pid AND a.backend_start = k.owner_started
	 WHERE k.state = 'in_flight'
	   AND k.created_at < now() - $1
	 ORDER BY k.created_at
$$;

COMMENT ON FUNCTION idem_hung(interval) IS
'in-flight keys held longer than older_than by a live owner, with advice';

-- Monitoring is for pg_monitor, operating for the owner (and whom it grants)
REVOKE ALL ON FUNCTION idem_stats_counters() FROM PUBLIC;
REVOKE ALL ON FUNCTION idem_table_counts() FROM PUBLIC;
REVOKE ALL ON FUNCTION idem_stats_reset() FROM PUBLIC;
REVOKE ALL ON FUNCTION idem_list(text, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION idem_evict(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION idem_hung(interval) FROM PUBLIC;
REVOKE ALL ON idem_stats FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idem_stats_counters() TO pg_monitor;
GRANT EXECUTE ON FUNCTION idem_table_counts() TO pg_monitor;
GRANT EXECUTE ON FUNCTION idem_list(text, text, integer) TO pg_monitor;
GRANT EXECUTE ON FUNCTION idem_hung(interval) TO pg_monitor;
GRANT SELECT ON idem_stats TO pg_monitor;

--
-- Tenant confinement: a role bound to scopes may use only those scopes.
--
CREATE TABLE idem_confinement (
	role	regrole	NOT NULL,
	scope	text	NOT NULL,
	PRIMARY KEY (role, scope)
);

COMMENT ON TABLE idem_confinement IS
'scopes a confined role may use; roles without rows are not confined (use idem_confine / idem_unconfine)';

REVOKE ALL ON TABLE idem_confinement FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('idem_confinement', '');

CREATE FUNCTION idem_confinement_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'idem_confinement_changed'
LANGUAGE C;

CREATE TRIGGER idem_confinement_changed
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON idem_confinement
	FOR EACH STATEMENT EXECUTE FUNCTION idem_confinement_changed();

CREATE FUNCTION idem_confine(role regrole, VARIADIC scopes text[])
RETURNS void
LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	INSERT INTO @extschema@.idem_confinement (role, scope)
	SELECT $1, s FROM unnest($2) s
	ON CONFLICT DO NOTHING
$$;

COMMENT ON FUNCTION idem_confine(regrole, text[]) IS
'bind a role to scopes: from then on it may reserve, commit, release, get and purge only in its scopes';

CREATE FUNCTION idem_unconfine(role regrole, VARIADIC scopes text[] DEFAULT NULL)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
	DELETE FROM @extschema@.idem_confinement
	 WHERE role = $1 AND ($2 IS NULL OR scope = ANY ($2))
$$;

COMMENT ON FUNCTION idem_unconfine(regrole, text[]) IS
'unbind a role from some scopes, or from all (then it is no longer confined)';

REVOKE ALL ON FUNCTION idem_confine(regrole, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION idem_unconfine(regrole, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION idem_confinement_changed() FROM PUBLIC;
