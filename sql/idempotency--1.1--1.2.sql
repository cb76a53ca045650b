/* idempotency--1.1--1.2.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION idempotency UPDATE TO '1.2'" to load this file. \quit

--
-- 1.2: lease owners.  A reservation belongs either to the session that made
-- it (as before) or to an owner token until its lease runs out, which
-- works through transaction-mode connection poolers.
--

-- The owner token (lease owners; session owners that gave one), the lease
-- a lease owner took, and when it runs out; the lease owners that
-- takeovers replaced (fenced: their commit, release and extend are
-- refused; the last 8 are kept).  Reservations made before the update are
-- session owners: these stay NULL.
ALTER TABLE idem_keys
	ADD COLUMN owner_token		text,
	ADD COLUMN lease			interval,
	ADD COLUMN lease_expires_at	timestamptz,
	ADD COLUMN fenced_tokens	text[];

ALTER TYPE idem_reservation
	ADD ATTRIBUTE owner				text,
	ADD ATTRIBUTE lease_expires_at	timestamptz;

-- New trailing parameters: the functions are made anew (an overload
-- beside the old ones would make every existing call ambiguous).
DROP FUNCTION idem_reserve(text, text, interval, interval, text);
DROP FUNCTION idem_commit(text, text, integer, bytea, jsonb, text);
DROP FUNCTION idem_release(text, text);

CREATE FUNCTION idem_reserve(key text,
							 request_hash text DEFAULT NULL,
							 ttl interval DEFAULT NULL,
							 wait_timeout interval DEFAULT NULL,
							 scope text DEFAULT '',
							 owner text DEFAULT NULL,
							 lease interval DEFAULT NULL)
RETURNS idem_reservation
AS 'MODULE_PATHNAME', 'idem_reserve'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem_reserve(text, text, interval, interval, text, text, interval) IS
'reserve an idempotency key: fresh = run the handler, otherwise the stored response (waits while another owner has it in flight); a lease makes the owner a token instead of the session';

CREATE FUNCTION idem_commit(key text,
							request_hash text,
							status integer,
							body bytea,
							headers jsonb DEFAULT '{}',
							scope text DEFAULT '',
							owner text DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_commit'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem_commit(text, text, integer, bytea, jsonb, text, text) IS
'store the response of the caller''s in-flight reservation; false when it was already committed';

CREATE FUNCTION idem_release(key text, scope text DEFAULT '',
							 owner text DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_release'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem_release(text, text, text) IS
'drop the caller''s in-flight reservation without storing a response, so that a retry may run the handler';

CREATE FUNCTION idem_extend(key text, owner text,
							lease interval DEFAULT NULL,
							scope text DEFAULT '')
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'idem_extend'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem_extend(text, text, interval, text) IS
'renew a lease owner''s lease to now() + lease (NULL: the lease it was reserved with); returns when it now runs out';

-- A lease owner is alive while its lease runs.
CREATE OR REPLACE FUNCTION idem_list(scope text DEFAULT NULL, state text DEFAULT NULL,
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
			   CASE WHEN k.lease_expires_at IS NOT NULL THEN
				   k.lease_expires_at > clock_timestamp()
			   ELSE
				   k.owner_pid IS NOT NULL AND
				   @extschema@.idem_owner_alive(k.owner_pid, k.owner_started)
			   END
		   END,
		   now() - k.created_at,
		   k.expires_at - now()
	  FROM @extschema@.idem_keys k
	 WHERE ($1 IS NULL OR k.scope = $1)
	   AND ($2 IS NULL OR k.state = $2)
	 ORDER BY k.created_at DESC
	 LIMIT $3
$$;

-- In-flight keys of a lease owner that has renewed its lease for long
-- count as hung too.
CREATE OR REPLACE FUNCTION idem_hung(older_than interval DEFAULT '5 minutes')
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
	UNION ALL
	SELECT k.scope, k.key, NULL, now() - k.created_at, NULL, NULL,
		   'a lease owner has renewed its lease for this long: the client''s handler may be stuck while its renewals go on; the lease runs until ' || k.lease_expires_at || ', then the next request takes the key over'
	  FROM @extschema@.idem_keys k
	 WHERE k.state = 'in_flight'
	   AND k.lease_expires_at > clock_timestamp()
	   AND k.created_at < now() - $1
	 ORDER BY 4 DESC
$$;

-- A NULL scope, or one longer than a scope may be, is bad input in the
-- extension's own words, not a constraint violation of its table.
CREATE OR REPLACE FUNCTION idem_confine(role regrole, VARIADIC scopes text[])
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s	text;
	i	integer := 0;
BEGIN
	FOREACH s IN ARRAY scopes LOOP
		i := i + 1;
		IF s IS NULL THEN
			RAISE EXCEPTION 'idempotency scope must not be null'
				USING ERRCODE = 'null_value_not_allowed',
					  DETAIL = format('Scope %s of %s given to confine role "%s" is null.',
									  i, cardinality(scopes), role),
					  HINT = 'Use the empty string for the default scope.';
		END IF;
		IF octet_length(s) > 255 THEN
			RAISE EXCEPTION 'idempotency scope is too long'
				USING ERRCODE = 'string_data_right_truncation',
					  DETAIL = format('Scope "%s..." given to confine role "%s" is %s bytes; the limit is 255 bytes.',
									  left(s, 32), role, octet_length(s));
		END IF;
	END LOOP;
	INSERT INTO @extschema@.idem_confinement (role, scope)
	SELECT $1, u FROM unnest($2) u
	ON CONFLICT DO NOTHING;
END
$$;

--
-- Scale-out on Citus.  idem_distribute() distributes the key table by key;
-- the idem_shard_* functions are what idem_reserve and friends call, on
-- the coordinator, for a key whose shard is on a worker: Citus delegates
-- each call to the node of the shard of its first argument.  They check
-- their arguments as the public functions do; call the public ones.
--
CREATE FUNCTION idem_shard_reserve(key text, request_hash text, ttl interval,
								   wait_timeout interval, scope text,
								   owner text, lease interval)
RETURNS idem_reservation
AS 'MODULE_PATHNAME', 'idem_shard_reserve'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION idem_shard_commit(key text, request_hash text, status integer,
								  body bytea, headers jsonb, scope text,
								  owner text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_shard_commit'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION idem_shard_release(key text, scope text, owner text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_shard_release'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION idem_shard_get(key text, scope text)
RETURNS idem_reservation
AS 'MODULE_PATHNAME', 'idem_shard_get'
LANGUAGE C STABLE PARALLEL UNSAFE;

CREATE FUNCTION idem_shard_extend(key text, owner text, lease interval,
								  scope text)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'idem_shard_extend'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem_shard_reserve(text, text, interval, interval, text, text, interval) IS
'internal: idem_reserve on the node of the key''s shard (Citus)';
COMMENT ON FUNCTION idem_shard_commit(text, text, integer, bytea, jsonb, text, text) IS
'internal: idem_commit on the node of the key''s shard (Citus)';
COMMENT ON FUNCTION idem_shard_release(text, text, text) IS
'internal: idem_release on the node of the key''s shard (Citus)';
COMMENT ON FUNCTION idem_shard_get(text, text) IS
'internal: idem_get on the node of the key''s shard (Citus)';
COMMENT ON FUNCTION idem_shard_extend(text, text, interval, text) IS
'internal: idem_extend on the node of the key''s shard (Citus)';

CREATE FUNCTION idem_distribute()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	f	text;
BEGIN
	IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
		RAISE EXCEPTION 'idem_distribute needs the citus extension'
			USING ERRCODE = 'feature_not_supported',
				  HINT = 'Install Citus and run CREATE EXTENSION citus, then CREATE EXTENSION idempotency, in this database on the coordinator and on every worker.';
	END IF;
	-- the catalogs of Citus exist only with it: EXECUTE, not plain SQL
	EXECUTE $q$
		SELECT create_distributed_table('@extschema@.idem_keys', 'key')
		 WHERE NOT EXISTS (SELECT FROM pg_dist_partition
							WHERE logicalrelid = '@extschema@.idem_keys'::regclass)
	$q$;
	FOREACH f IN ARRAY ARRAY[
		'@extschema@.idem_shard_reserve(text,text,interval,interval,text,text,interval)',
		'@extschema@.idem_shard_commit(text,text,integer,bytea,jsonb,text,text)',
		'@extschema@.idem_shard_release(text,text,text)',
		'@extschema@.idem_shard_get(text,text)',
		'@extschema@.idem_shard_extend(text,text,interval,text)']
	LOOP
		EXECUTE $q$SELECT create_distributed_function($1::regprocedure, '$1',
						colocate_with := '@extschema@.idem_keys',
						force_delegation := true)$q$
		USING f;
	END LOOP;
END
$$;

COMMENT ON FUNCTION idem_distribute() IS
'on a Citus coordinator: distribute the key table by key and route every call to the node of the key''s shard (calling it again is a no-op)';

REVOKE ALL ON FUNCTION idem_distribute() FROM PUBLIC;
