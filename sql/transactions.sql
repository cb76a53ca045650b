--
-- Inside an explicit transaction everything follows the transaction
--
\pset null '<null>'

CREATE TABLE charges (id serial PRIMARY KEY, key text, amount int);

-- reserve, the handler's own write and the commit in one transaction are
-- atomic: a rollback leaves no key and no charge
BEGIN;
SELECT fresh FROM idem_reserve('tx-1', 'h');
INSERT INTO charges (key, amount) VALUES ('tx-1', 100);
SELECT idem_commit('tx-1', 'h', 201, 'charged'::bytea);
ROLLBACK;
SELECT idem_get('tx-1') IS NULL AS absent, (SELECT count(*) FROM charges) AS charges;

-- ... and the lock went with it
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();

-- committed together: both are there
BEGIN;
SELECT fresh FROM idem_reserve('tx-1', 'h');
INSERT INTO charges (key, amount) VALUES ('tx-1', 100);
SELECT idem_commit('tx-1', 'h', 201, 'charged'::bytea);
COMMIT;
SELECT state, status, body FROM idem_get('tx-1');
SELECT count(*) AS charges FROM charges;
-- the retry replays and adds no charge
SELECT fresh, status, body FROM idem_reserve('tx-1', 'h');
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();

-- a commit that rolls back leaves the reservation in flight, still ours
SELECT fresh FROM idem_reserve('tx-2');
BEGIN;
SELECT idem_commit('tx-2', NULL, 200, 'x'::bytea);
ROLLBACK;
SELECT state FROM idem_get('tx-2');
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();
SELECT idem_commit('tx-2', NULL, 200, 'y'::bytea);
SELECT body FROM idem_get('tx-2');

-- a release that rolls back too
SELECT fresh FROM idem_reserve('tx-3');
BEGIN;
SELECT idem_release('tx-3');
SELECT idem_get('tx-3') IS NULL AS absent_inside;
ROLLBACK;
SELECT state FROM idem_get('tx-3');
SELECT idem_release('tx-3');

-- subtransactions: a reserve rolled back to a savepoint never happened
BEGIN;
SELECT fresh FROM idem_reserve('tx-4');
SAVEPOINT s1;
SELECT fresh FROM idem_reserve('tx-5');
ROLLBACK TO SAVEPOINT s1;
SELECT idem_commit('tx-4', NULL, 200, 'four'::bytea);
COMMIT;
SELECT key, state FROM idem_keys WHERE key IN ('tx-4', 'tx-5') ORDER BY key;
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();

-- an error after the reserve aborts the transaction: the key is free again
BEGIN;
SELECT fresh FROM idem_reserve('tx-6');
SELECT 1 / 0;
ROLLBACK;
SELECT idem_get('tx-6') IS NULL AS absent;
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();

-- release then reserve again in one transaction, then commit
SELECT fresh FROM idem_reserve('tx-7');
BEGIN;
SELECT idem_release('tx-7');
SELECT fresh, attempt FROM idem_reserve('tx-7');
COMMIT;
SELECT state FROM idem_get('tx-7');
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();
SELECT idem_release('tx-7');

-- a reservation cannot be part of a prepared transaction
BEGIN;
SELECT fresh FROM idem_reserve('tx-8');
PREPARE TRANSACTION 'idem';
SELECT idem_get('tx-8') IS NULL AS absent;

-- in a REPEATABLE READ transaction, reserve still sees committed records
SELECT fresh FROM idem_reserve('tx-9');
SELECT idem_commit('tx-9', NULL, 200, 'nine'::bytea);
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT fresh, body FROM idem_reserve('tx-9');
COMMIT;

-- a read-only transaction cannot reserve or commit (25006), and the key is
-- left as it was
BEGIN READ ONLY;
SELECT idem_reserve('tx-10');
ROLLBACK;
SELECT idem_get('tx-10') IS NULL AS absent;
SELECT fresh FROM idem_reserve('tx-11');
BEGIN READ ONLY;
SELECT idem_commit('tx-11', NULL, 200, 'x'::bytea);
ROLLBACK;
SELECT state FROM idem_get('tx-11');
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();
SELECT idem_commit('tx-11', NULL, 200, 'eleven'::bytea);
-- ... but a replay is only a read
BEGIN READ ONLY;
SELECT fresh, body FROM idem_reserve('tx-11');
COMMIT;

-- a write to the key table keeps its table lock to the end of the
-- transaction, as the executor's writes do; a replay (a read) keeps none
BEGIN;
SELECT fresh FROM idem_reserve('tx-12');
SELECT mode FROM pg_locks
 WHERE relation = 'idem_keys'::regclass AND pid = pg_backend_pid();
SELECT idem_commit('tx-12', NULL, 200, 'twelve'::bytea);
COMMIT;
BEGIN;
SELECT fresh, body FROM idem_reserve('tx-12');
SELECT count(*) FROM pg_locks
 WHERE relation = 'idem_keys'::regclass AND pid = pg_backend_pid();
COMMIT;

-- the commit of a key reserved in the same transaction fetches the tuple
-- the reserve wrote; whatever happened to it since, it finds the record:
-- after a rolled-back savepoint that had reserved it,
BEGIN;
SAVEPOINT s;
SELECT fresh, attempt FROM idem_reserve('tx-13');
ROLLBACK TO s;
SELECT fresh, attempt FROM idem_reserve('tx-13');
SELECT idem_commit('tx-13', NULL, 200, 'thirteen'::bytea);
COMMIT;
SELECT state, body FROM idem_get('tx-13');
-- after another key's write in between,
BEGIN;
SELECT fresh FROM idem_reserve('tx-14a');
SELECT fresh FROM idem_reserve('tx-14b');
SELECT idem_commit('tx-14a', NULL, 200, 'a'::bytea);
SELECT idem_commit('tx-14b', NULL, 201, 'b'::bytea);
COMMIT;
SELECT key, status, body FROM idem_keys WHERE key LIKE 'tx-14_' ORDER BY key;
-- after the table was rewritten (SET UNLOGGED),
BEGIN;
SELECT fresh FROM idem_reserve('tx-15');
SELECT idem_set_logged(false);
SELECT idem_commit('tx-15', NULL, 200, 'fifteen'::bytea);
SELECT idem_set_logged(true);
COMMIT;
SELECT state, body FROM idem_get('tx-15');
-- and after the record was released: then there is none to commit
BEGIN;
SELECT fresh FROM idem_reserve('tx-16');
SELECT idem_release('tx-16');
SELECT idem_commit('tx-16', NULL, 200, 'x'::bytea);
ROLLBACK;
SELECT idem_get('tx-16') IS NULL AS absent;

DROP TABLE charges;
