/* idempotency--1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION idempotency" to load this file. \quit

--
-- The key table.  One row per (scope, key).  Only the extension's functions
-- touch it; they run their queries as the table's owner, so PUBLIC needs no
-- privilege on it.  Nothing but the primary key is indexed, so that the
-- update made by idem_commit can be a HOT update, and there is no CHECK
-- constraint (state is 'in_flight' or 'committed'): the executor would
-- rebuild its expression on every insert and update.
--
CREATE TABLE idem_keys (
	scope			text		NOT NULL,
	key				text		NOT NULL,
	state			text		NOT NULL,
	request_hash	text,
	status			integer,
	headers			jsonb,
	body			bytea,
	attempt			integer		NOT NULL DEFAULT 1,
	ttl				interval	NOT NULL,
	created_at		timestamptz	NOT NULL,
	expires_at		timestamptz	NOT NULL,
	committed_at	timestamptz,
	owner_pid		integer,
	owner_started	timestamptz,
	PRIMARY KEY (scope, key)
) WITH (fillfactor = 80);

COMMENT ON TABLE idem_keys IS
'idempotency keys and their stored responses; use the idem_* functions, not this table';

REVOKE ALL ON TABLE idem_keys FROM PUBLIC;

-- pg_dump keeps the rows of the key table
SELECT pg_catalog.pg_extension_config_dump('idem_keys', '');

CREATE TYPE idem_reservation AS (
	fresh		boolean,
	state		text,
	status		integer,
	headers		jsonb,
	body		bytea,
	attempt		integer,
	created_at	timestamptz,
	expires_at	timestamptz
);

COMMENT ON TYPE idem_reservation IS
'outcome of idem_reserve and idem_get: fresh = the caller owns the reservation and must run the handler';

CREATE FUNCTION idem_reserve(key text,
							 request_hash text DEFAULT NULL,
							 ttl interval DEFAULT NULL,
							 wait_timeout interval DEFAULT NULL,
							 scope text DEFAULT '')
RETURNS idem_reservation
AS 'MODULE_PATHNAME', 'idem_reserve'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem_reserve(text, text, interval, interval, text) IS
'reserve an idempotency key: fresh = run the handler, otherwise the stored response (waits while another session has it in flight)';

CREATE FUNCTION idem_commit(key text,
							request_hash text,
							status integer,
							body bytea,
							headers jsonb DEFAULT '{}',
							scope text DEFAULT '')
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_commit'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem_commit(text, text, integer, bytea, jsonb, text) IS
'store the response of the caller''s in-flight reservation; false when it was already committed';

CREATE FUNCTION idem_release(key text, scope text DEFAULT '')
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_release'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem_release(text, text) IS
'drop the caller''s in-flight reservation without storing a response, so that a retry may run the handler';

CREATE FUNCTION idem_get(key text, scope text DEFAULT '')
RETURNS idem_reservation
AS 'MODULE_PATHNAME', 'idem_get'
LANGUAGE C STABLE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem_get(text, text) IS
'look up a key without reserving or waiting; NULL when absent or expired';

CREATE FUNCTION idem_purge(batch_limit integer DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'idem_purge'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem_purge(integer) IS
'delete expired records (in-flight ones only when their owner is gone); returns how many';

CREATE FUNCTION idem_derive_key(VARIADIC parts text[])
RETURNS text
AS 'MODULE_PATHNAME', 'idem_derive_key'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

COMMENT ON FUNCTION idem_derive_key(text[]) IS
'deterministic key for a downstream API: hex SHA-256 of the length-framed parts';

CREATE FUNCTION idem_request_hash(method text, path text, body bytea)
RETURNS text
AS 'MODULE_PATHNAME', 'idem_request_hash'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

COMMENT ON FUNCTION idem_request_hash(text, text, bytea) IS
'default request fingerprint: hex SHA-256 of the length-framed method, path and body';

CREATE FUNCTION idem_set_logged(logged boolean)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_set_logged'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

COMMENT ON FUNCTION idem_set_logged(boolean) IS
'switch the key table between logged (crash safe, replicated) and unlogged (faster, emptied after a crash)';

REVOKE ALL ON FUNCTION idem_set_logged(boolean) FROM PUBLIC;
