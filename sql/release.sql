--
-- idem_release: drops an in-flight reservation, never a committed one
--
\pset null '<null>'

SELECT fresh, attempt FROM idem_reserve('job-1', 'h');
SELECT idem_release('job-1');
SELECT idem_get('job-1') IS NULL AS gone;

-- released, so a retry runs the handler again
SELECT fresh, state, attempt FROM idem_reserve('job-1', 'h');

-- release the retry's reservation; releasing again, or a key never
-- reserved: false
SELECT idem_release('job-1');
SELECT idem_release('job-1');
SELECT idem_release('no-such-key');

-- a committed response is never dropped
SELECT fresh FROM idem_reserve('job-2');
SELECT idem_commit('job-2', NULL, 200, 'done'::bytea);
SELECT idem_release('job-2');
SELECT state, body FROM idem_get('job-2');

-- scopes are separate
SELECT fresh FROM idem_reserve('job-3', scope => 's1');
SELECT idem_release('job-3');
SELECT idem_release('job-3', 's1');

-- after a release the lock is free again: another reserve with
-- wait_timeout 0 gets the key (here, the same session)
SELECT fresh FROM idem_reserve('job-4');
SELECT idem_release('job-4');
SELECT fresh FROM idem_reserve('job-4', wait_timeout => '0');
SELECT idem_release('job-4');

-- no lock of ours is left behind
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();
