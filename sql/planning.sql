--
-- Planning: a call that leaves out arguments with defaults is planned
-- without them (the planner support function idem_args_support), so that
-- their defaults are not evaluated at every execution; it behaves as the
-- call with every argument written out
--
\pset null '<null>'

-- the trailing arguments equal to their defaults are left out of the plan
EXPLAIN (VERBOSE, COSTS OFF) SELECT * FROM idem_reserve('plan-1', 'h');
EXPLAIN (VERBOSE, COSTS OFF)
SELECT * FROM idem_reserve('plan-1', 'h', NULL, NULL, '', NULL, NULL);
EXPLAIN (VERBOSE, COSTS OFF) SELECT * FROM idem_reserve('plan-1');
-- up to the last one that is not its default
EXPLAIN (VERBOSE, COSTS OFF) SELECT * FROM idem_reserve('plan-1', 'h', scope => 'plan');
EXPLAIN (VERBOSE, COSTS OFF)
SELECT * FROM idem_reserve('plan-1', 'h', '1 hour', lease => '5 min');
EXPLAIN (VERBOSE, COSTS OFF) SELECT idem_commit('plan-1', 'h', 200, 'x'::bytea);
EXPLAIN (VERBOSE, COSTS OFF)
SELECT idem_commit('plan-1', 'h', 200, 'x'::bytea, '{"a": "b"}');
EXPLAIN (VERBOSE, COSTS OFF) SELECT idem_release('plan-1', '');
EXPLAIN (VERBOSE, COSTS OFF) SELECT * FROM idem_get('plan-1', '');
EXPLAIN (VERBOSE, COSTS OFF) SELECT idem_extend('plan-1', 'token', NULL, '');
-- a parameter is not a constant: a generic plan keeps it
PREPARE short_reserve(text, text) AS SELECT * FROM idem_reserve('plan-1', 'h', scope => $1, owner => $2);
SET plan_cache_mode = force_generic_plan;
EXPLAIN (VERBOSE, COSTS OFF) EXECUTE short_reserve('', NULL);
-- a custom plan has the values, and leaves out the defaults among them
SET plan_cache_mode = force_custom_plan;
EXPLAIN (VERBOSE, COSTS OFF) EXECUTE short_reserve('', NULL);
EXPLAIN (VERBOSE, COSTS OFF) EXECUTE short_reserve('plan', NULL);
RESET plan_cache_mode;
DEALLOCATE short_reserve;

-- the short calls behave as the long ones: the default scope, the
-- default ttl, no wait limit of their own, the default headers
SET idem.default_ttl = 3600;
SELECT fresh, state, expires_at - created_at AS ttl FROM idem_reserve('plan-2', 'h');
SELECT idem_commit('plan-2', 'h', 200, 'b'::bytea);
SELECT scope, state, headers FROM idem_keys WHERE key = 'plan-2';
SELECT fresh, state, status, headers, body
  FROM idem_reserve('plan-2', 'h', NULL, NULL, '', NULL, NULL);
SELECT fresh, state, status, headers, body FROM idem_reserve('plan-2', 'h');
SELECT state, status FROM idem_get('plan-2');
SELECT state, status FROM idem_get('plan-2', '');
RESET idem.default_ttl;

-- in a target list and in PL/pgSQL expressions, short calls too
SELECT (idem_reserve('plan-3')).state;
DO $$
DECLARE
	r	idem_reservation;
BEGIN
	r := idem_reserve('plan-3');
	RAISE NOTICE 'again: fresh %, state %, attempt %', r.fresh, r.state, r.attempt;
	SELECT * INTO r FROM idem_reserve('plan-3');
	RAISE NOTICE 'in FROM: fresh %, state %', r.fresh, r.state;
	RAISE NOTICE 'released: %', idem_release('plan-3');
END
$$;

-- a null in place of a default is not the default: still refused
SELECT * FROM idem_reserve('plan-4', scope => NULL);
SELECT idem_release('plan-4', NULL);
SELECT * FROM idem_get('plan-4', NULL);
-- a key that is null, in the default scope left out
SELECT * FROM idem_reserve(NULL);

SELECT scope, key, state FROM idem_keys WHERE key LIKE 'plan-%' ORDER BY scope, key;
DELETE FROM idem_keys WHERE key LIKE 'plan-%';
