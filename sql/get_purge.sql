--
-- idem_get looks without reserving; idem_purge deletes expired records
--
\pset null '<null>'

-- absent: NULL (a row of NULLs when expanded)
SELECT idem_get('nothing') IS NULL AS absent;
SELECT * FROM idem_get('nothing');

-- in flight: fresh is false, no response yet
SELECT fresh FROM idem_reserve('look');
SELECT fresh, state, status, headers, body, attempt FROM idem_get('look');
-- idem_get does not reserve: the key stays ours, nothing new appears
SELECT count(*) FROM idem_keys WHERE key = 'look';
SELECT idem_commit('look', NULL, 202, 'accepted'::bytea);
SELECT fresh, state, status, headers, body, attempt FROM idem_get('look');
SELECT idem_get('look', 'other-scope') IS NULL AS absent;

-- purge: only expired records go
SELECT idem_purge();
SELECT fresh FROM idem_reserve('p1', ttl => '10 milliseconds');
SELECT idem_commit('p1', NULL, 200, 'x'::bytea);
SELECT fresh FROM idem_reserve('p2', ttl => '10 milliseconds');
SELECT idem_commit('p2', NULL, 200, 'x'::bytea);
SELECT fresh FROM idem_reserve('p3', ttl => '10 milliseconds');
SELECT idem_commit('p3', NULL, 200, 'x'::bytea);
-- p4 is in flight and its owner (this session) is alive: never purged
SELECT fresh FROM idem_reserve('p4', ttl => '10 milliseconds');
SELECT fresh FROM idem_reserve('p5', ttl => '1 hour');
SELECT idem_commit('p5', NULL, 200, 'x'::bytea);
SELECT pg_sleep(0.05);

-- a batch limit, then the rest
SELECT idem_purge(2);
SELECT idem_purge(0);
SELECT idem_purge();
SELECT idem_purge();
SELECT key, state FROM idem_keys WHERE key LIKE 'p_' ORDER BY key;

-- the owner is alive, so its expired reservation is still its own
SELECT fresh, attempt FROM idem_reserve('p4');
SELECT idem_release('p4');

-- an in-flight record whose owner is gone is purged once expired
INSERT INTO idem_keys (scope, key, state, attempt, ttl, created_at, expires_at,
                       owner_pid, owner_started)
VALUES ('', 'orphan', 'in_flight', 1, '1 second', now() - interval '1 hour',
        now() - interval '1 minute', 1, now() - interval '1 day');
SELECT idem_purge();
SELECT count(*) FROM idem_keys WHERE key = 'orphan';

-- a negative batch limit is bad input
SELECT idem_purge(-1);

-- Purges in batches go on where the last one stopped, and wrap around:
-- records that expire behind that point are purged by a later call.
-- 'early' rows take the first blocks and expire 0.3 s after they are
-- written, never for the purges of their own transaction (whose now() came
-- before); 'late' ones are expired already.
SET idem.purge_delay = 0;
TRUNCATE idem_keys;
BEGIN;
INSERT INTO idem_keys (scope, key, state, status, body, attempt, ttl,
                       created_at, expires_at, committed_at)
SELECT '', 'early' || i, 'committed', 200, 'x', 1, '1 second',
       now(), clock_timestamp() + interval '0.3 seconds', now()
  FROM generate_series(1, 1000) i;
INSERT INTO idem_keys (scope, key, state, status, body, attempt, ttl,
                       created_at, expires_at, committed_at)
SELECT '', 'late' || i, 'committed', 200, 'x', 1, '1 second',
       now() - interval '1 hour', now() - interval '1 minute', now()
  FROM generate_series(1, 3000) i;
SELECT idem_purge(1000) FROM generate_series(1, 4);
COMMIT;
SELECT pg_sleep(0.4);
SELECT idem_purge(600);
SELECT idem_purge(600);
SELECT count(*) FILTER (WHERE key LIKE 'early%') AS early,
       count(*) FILTER (WHERE key LIKE 'late%') AS late
  FROM idem_keys;
RESET idem.purge_delay;
