/* idempotency--1.2--1.3.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION idempotency UPDATE TO '1.3'" to load this file. \quit

--
-- 1.3: calls cost less.  No function, table or type changes shape.
--

-- The planner support function of the functions with defaults: a call that
-- leaves arguments out is planned without them (the parser's copies of
-- their defaults would otherwise be evaluated at every execution), and the
-- functions take an argument that is not there as its default.
CREATE FUNCTION idem_args_support(internal)
RETURNS internal
AS 'MODULE_PATHNAME', 'idem_args_support'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION idem_args_support(internal) IS
'internal: planner support of idem_reserve, idem_commit, idem_release, idem_get and idem_extend (leaves out trailing arguments equal to their defaults)';

ALTER FUNCTION idem_reserve(text, text, interval, interval, text, text, interval)
	SUPPORT idem_args_support;
ALTER FUNCTION idem_commit(text, text, integer, bytea, jsonb, text, text)
	SUPPORT idem_args_support;
ALTER FUNCTION idem_release(text, text, text)
	SUPPORT idem_args_support;
ALTER FUNCTION idem_get(text, text)
	SUPPORT idem_args_support;
ALTER FUNCTION idem_extend(text, text, interval, text)
	SUPPORT idem_args_support;
