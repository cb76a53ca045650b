--
-- Operations: the idem_stats view, idem_list, idem_evict, idem_hung,
-- idem_owner_alive
--
\pset null '<null>'

-- without shared_preload_libraries the counters are NULL and the view says
-- why; the key counts come from the table
SELECT idem_purge();
DELETE FROM idem_keys;
SELECT fresh FROM idem_reserve('ops-1', scope => 'ops');
SELECT fresh FROM idem_reserve('ops-2', scope => 'ops');
SELECT idem_commit('ops-2', NULL, 200, 'two'::bytea, scope => 'ops');
SELECT fresh FROM idem_reserve('ops-3', ttl => '10 milliseconds', scope => 'ops');
SELECT idem_commit('ops-3', NULL, 200, 'three'::bytea, scope => 'ops');
SELECT pg_sleep(0.05);
SELECT counters_available, reserves, replays, in_flight, committed, expired, note
  FROM idem_stats;
DO $$
BEGIN
	PERFORM idem_stats_reset();
EXCEPTION WHEN object_not_in_prerequisite_state THEN
	RAISE NOTICE 'reset: %', SQLERRM;
END
$$;

-- idem_list: newest first, with state, attempt, size and whether the owner lives
SELECT scope, key, state, status, attempt, body_bytes,
       owner_pid = pg_backend_pid() AS mine, owner_alive
  FROM idem_list('ops');
SELECT key FROM idem_list('ops', 'committed');
SELECT key FROM idem_list(NULL, 'in_flight', 10);
SELECT count(*) FROM idem_list('no-such-scope');

-- idem_owner_alive knows this session, and no one else with its PID
SELECT idem_owner_alive(pg_backend_pid(), backend_start)
  FROM pg_stat_activity WHERE pid = pg_backend_pid();
SELECT idem_owner_alive(pg_backend_pid(), backend_start - interval '1 second')
  FROM pg_stat_activity WHERE pid = pg_backend_pid();
SELECT idem_owner_alive(1, now());

-- idem_hung: this session holds ops-1, but not for an hour
SELECT count(*) FROM idem_hung('1 hour');
SELECT key, owner_pid = pg_backend_pid() AS mine, backend_state,
       advice LIKE 'the owner is running a statement%' AS advice_for_active
  FROM idem_hung('0');

-- idem_evict: a committed key goes, and the next request runs again
SELECT idem_evict('ops-2', 'ops');
SELECT idem_get('ops-2', 'ops') IS NULL AS gone;
SELECT fresh, attempt FROM idem_reserve('ops-2', scope => 'ops');
-- nothing to evict
SELECT idem_evict('ops-9', 'ops');
-- an in-flight key is not evicted
DO $$
BEGIN
	PERFORM idem_evict('ops-1', 'ops');
EXCEPTION WHEN OTHERS THEN
	RAISE NOTICE '%: %', SQLSTATE, SQLERRM;
END
$$;
SELECT state FROM idem_get('ops-1', 'ops');

-- the operator functions are not for PUBLIC; monitoring is for pg_monitor
CREATE ROLE idem_ops_app;
CREATE ROLE idem_ops_monitor IN ROLE pg_monitor;
SET ROLE idem_ops_app;
SELECT count(*) FROM idem_stats;
SELECT idem_evict('ops-2', 'ops');
SELECT count(*) FROM idem_list();
SET ROLE idem_ops_monitor;
SELECT in_flight >= 0 AS readable FROM idem_stats;
SELECT count(*) >= 0 AS readable FROM idem_list();
SELECT idem_evict('ops-2', 'ops');
RESET ROLE;
DROP ROLE idem_ops_app;
DROP ROLE idem_ops_monitor;

SELECT idem_release('ops-1', 'ops');
SELECT idem_release('ops-2', 'ops');
