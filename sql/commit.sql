--
-- idem_commit: stores the response once; IK404, IK422, body limits
--
\pset null '<null>'

SELECT fresh FROM idem_reserve('pay-1', 'hash-a');

-- the owner commits: true
SELECT idem_commit('pay-1', 'hash-a', 200, 'charged'::bytea, '{"x-charge": "ch_1"}');

-- committing again with the same or a NULL hash is a no-op: false, and the
-- first response stays
SELECT idem_commit('pay-1', 'hash-a', 500, 'other'::bytea);
SELECT idem_commit('pay-1', NULL, 500, 'other'::bytea);
SELECT status, body, headers FROM idem_get('pay-1');

-- a different hash is a mismatch, for a committed record ...
SELECT idem_commit('pay-1', 'hash-b', 200, 'x'::bytea);
-- ... and for an in-flight one, checked before anything else
SELECT fresh FROM idem_reserve('pay-2', 'hash-a');
SELECT idem_commit('pay-2', 'hash-b', 200, 'x'::bytea);
SELECT state FROM idem_get('pay-2');

-- a reservation made without a hash takes the commit's
SELECT fresh FROM idem_reserve('pay-3');
SELECT idem_commit('pay-3', 'hash-c', 200, 'y'::bytea);
SELECT fresh, status FROM idem_reserve('pay-3', 'hash-c');
SELECT idem_reserve('pay-3', 'hash-d');

-- no reservation: IK404
SELECT idem_commit('never-reserved', NULL, 200, 'x'::bytea);
SELECT idem_commit('pay-1', NULL, 200, 'x'::bytea, scope => 'elsewhere');

-- an in-flight reservation does not expire while its owner is alive: the
-- owner can still commit after the ttl has passed
SELECT fresh FROM idem_reserve('pay-slow', ttl => '10 milliseconds');
SELECT pg_sleep(0.05);
SELECT idem_commit('pay-slow', NULL, 200, 'late'::bytea);
-- ... but the committed response expires ttl after the commit
SELECT pg_sleep(0.05);
SELECT idem_get('pay-slow') IS NULL AS expired;
SELECT idem_commit('pay-slow', NULL, 200, 'again'::bytea);

-- NULL status, NULL body, default headers
SELECT fresh FROM idem_reserve('pay-4');
SELECT idem_commit('pay-4', NULL, NULL, NULL);
SELECT state, status, headers, body FROM idem_get('pay-4');

-- headers must be a JSON object
SELECT fresh FROM idem_reserve('pay-5');
SELECT idem_commit('pay-5', NULL, 200, 'x'::bytea, '["not", "an", "object"]');
SELECT idem_commit('pay-5', NULL, 200, 'x'::bytea, '"scalar"');
SELECT state FROM idem_get('pay-5');

-- the body limit: idem.max_body_bytes, in bytes; 54000 and nothing stored
SET idem.max_body_bytes = 1024;
SHOW idem.max_body_bytes;
SELECT idem_commit('pay-5', NULL, 200, convert_to(repeat('x', 1025), 'UTF8'));
SELECT state, body FROM idem_get('pay-5');
SELECT idem_commit('pay-5', NULL, 200, convert_to(repeat('x', 1024), 'UTF8'));
SELECT state, length(body) FROM idem_get('pay-5');
RESET idem.max_body_bytes;
SHOW idem.max_body_bytes;

-- a response with the PostgreSQL unit syntax
SET idem.max_body_bytes = '2kB';
SHOW idem.max_body_bytes;
RESET idem.max_body_bytes;
