--
-- Upgrade path: install the first released version, write keys, update to
-- the current one; the keys and the behaviour are kept
--
\pset null '<null>'
DROP EXTENSION idempotency;
CREATE EXTENSION idempotency VERSION '1.0';
SELECT extversion FROM pg_extension WHERE extname = 'idempotency';

SELECT fresh FROM idem_reserve('up-1', 'h1', scope => 'up');
SELECT idem_commit('up-1', 'h1', 201, '\x00ff'::bytea, '{"k": "v"}', scope => 'up');
SELECT fresh FROM idem_reserve('up-2', scope => 'up');

ALTER EXTENSION idempotency UPDATE;
SELECT extversion = (SELECT default_version FROM pg_available_extensions
                      WHERE name = 'idempotency') AS current
  FROM pg_extension WHERE extname = 'idempotency';

-- committed keys replay byte for byte; the in-flight one is still ours
SELECT fresh, state, status, headers, body, attempt
  FROM idem_reserve('up-1', 'h1', scope => 'up');
SELECT fresh, state, attempt FROM idem_reserve('up-2', scope => 'up');
SELECT idem_commit('up-2', NULL, 200, 'after'::bytea, scope => 'up');
SELECT status, body FROM idem_get('up-2', 'up');
SELECT idem_reserve('up-1', 'h2', scope => 'up');

-- the new objects are there
SELECT key, state FROM idem_list('up') ORDER BY key;
SELECT in_flight, committed FROM idem_stats;
-- the functions with defaults have the planner support of 1.3, and a call
-- that leaves them out is planned without them
SELECT oid::regprocedure AS planned_short FROM pg_proc
 WHERE prosupport = 'idem_args_support'::regproc ORDER BY oid::regprocedure::text;
EXPLAIN (VERBOSE, COSTS OFF) SELECT * FROM idem_reserve('up-1', 'h1', scope => '');

-- a fresh install of the current version has the same objects as 1.0 + update
CREATE TEMP TABLE updated AS
SELECT pg_describe_object(classid, objid, objsubid) AS object
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'idempotency')
   AND deptype = 'e';
DROP EXTENSION idempotency;
CREATE EXTENSION idempotency;
SELECT object FROM updated
EXCEPT
SELECT pg_describe_object(classid, objid, objsubid)
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'idempotency')
   AND deptype = 'e';
SELECT count(*) FROM updated;
