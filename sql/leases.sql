--
-- Lease owners: a reservation owned by a token until its lease runs out,
-- whichever sessions come and go; fencing of a token whose lease was taken
-- over; idem_extend; the setting idem.lease; the owner token of session
-- owners
--
\pset null '<null>'

-- runs a statement and shows the error it raises (SQLSTATE and message;
-- details name times and PIDs)
CREATE FUNCTION pg_temp.try(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	st text; msg text;
BEGIN
	EXECUTE stmt;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
	RETURN st || ': ' || msg;
END
$$;

-- a lease without a token: the server makes one (128 bits, hex) and gives
-- it to the owner only; the lease runs from now()
SELECT fresh, state, attempt, length(owner) AS token_length,
       lease_expires_at = now() + interval '30 seconds' AS lease_from_now
  FROM idem_reserve('l-1', lease => '30s');
SELECT owner IS NULL AS no_token_for_others, lease_expires_at > now() AS leased
  FROM idem_get('l-1');

-- no lock outlives the statement: none is held for the lease owner
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();

-- a given token is the owner; reserving again with it is re-entrant (same
-- attempt) and renews the lease, for as long as it was taken unless given
-- a lease
SELECT fresh, attempt, owner,
       lease_expires_at = now() + interval '10 seconds' AS leased_10s
  FROM idem_reserve('l-2', 'h2', owner => 'tok-a', lease => '10s');
SELECT fresh, attempt, owner,
       lease_expires_at = now() + interval '10 seconds' AS leased_10s
  FROM idem_reserve('l-2', 'h2', owner => 'tok-a');
SELECT fresh, attempt, owner,
       lease_expires_at = now() + interval '1 minute' AS leased_1min
  FROM idem_reserve('l-2', 'h2', owner => 'tok-a', lease => '1 min');

-- another token is another client: it waits (here: not at all)
SELECT pg_temp.try($$SELECT idem_reserve('l-2', 'h2', wait_timeout => '0', owner => 'tok-b')$$);
SELECT pg_temp.try($$SELECT idem_reserve('l-2', 'h2', wait_timeout => '0')$$);
-- ... and a different request is a mismatch at once
SELECT pg_temp.try($$SELECT idem_reserve('l-2', 'other', owner => 'tok-b')$$);

-- only the token commits or releases it, from any session
SELECT pg_temp.try($$SELECT idem_commit('l-2', 'h2', 200, 'x'::bytea)$$);
SELECT pg_temp.try($$SELECT idem_commit('l-2', 'h2', 200, 'x'::bytea, owner => 'tok-b')$$);
SELECT pg_temp.try($$SELECT idem_release('l-2', owner => 'tok-b')$$);
SELECT pg_temp.try($$SELECT idem_release('l-2')$$);
SELECT idem_commit('l-2', 'h2', 201, 'done'::bytea, '{"a": ["b"]}', owner => 'tok-a');
-- committing again with the same token: a no-op, the first response stands
SELECT idem_commit('l-2', 'h2', 500, 'again'::bytea, owner => 'tok-a');
SELECT fresh, state, status, body, headers, owner, lease_expires_at
  FROM idem_reserve('l-2', 'h2');

-- release by the token: a retry runs the handler again
SELECT fresh FROM idem_reserve('l-3', owner => 'tok-c', lease => '30s');
SELECT idem_release('l-3', owner => 'tok-c');
SELECT fresh, attempt FROM idem_reserve('l-3', owner => 'tok-d', lease => '30s');
SELECT idem_release('l-3', owner => 'tok-d');

-- idem_extend renews the owner's lease; NULL lease: as long as it was taken
SELECT fresh FROM idem_reserve('l-4', owner => 'tok-e', lease => '5s');
SELECT idem_extend('l-4', 'tok-e', '2 min') = now() + interval '2 minutes' AS extended;
SELECT lease_expires_at > now() + interval '1 minute' AS recorded FROM idem_get('l-4');
SELECT idem_extend('l-4', 'tok-e') = now() + interval '2 minutes' AS same_length;
SELECT pg_temp.try($$SELECT idem_extend('l-4', 'tok-x')$$);
SELECT pg_temp.try($$SELECT idem_extend('l-4', NULL)$$);
SELECT pg_temp.try($$SELECT idem_extend('l-4', 'tok-e', '0')$$);
SELECT pg_temp.try($$SELECT idem_extend('l-4', 'tok-e', '-1s')$$);
SELECT pg_temp.try($$SELECT idem_extend('no-such-key', 'tok-e')$$);
SELECT idem_commit('l-4', NULL, 200, NULL, owner => 'tok-e');
SELECT pg_temp.try($$SELECT idem_extend('l-4', 'tok-e')$$);

-- a lease that ran out: the owner is gone, the next reserve takes the key
-- over at once (attempt + 1), and the old token is fenced
SELECT fresh, attempt FROM idem_reserve('l-5', 'h5', owner => 'tok-old', lease => '50ms');
SELECT pg_sleep(0.1);
SELECT owner_alive FROM idem_list() WHERE key = 'l-5';
SELECT fresh, attempt, owner FROM idem_reserve('l-5', 'h5', owner => 'tok-new', lease => '30s');
SELECT pg_temp.try($$SELECT idem_commit('l-5', 'h5', 200, 'late'::bytea, owner => 'tok-old')$$);
SELECT pg_temp.try($$SELECT idem_release('l-5', owner => 'tok-old')$$);
SELECT pg_temp.try($$SELECT idem_extend('l-5', 'tok-old')$$);
SELECT state, attempt FROM idem_get('l-5');
SELECT idem_commit('l-5', 'h5', 200, 'new'::bytea, owner => 'tok-new');
-- fenced after the new owner's commit too; the response is the new owner's
SELECT pg_temp.try($$SELECT idem_commit('l-5', 'h5', 200, 'late'::bytea, owner => 'tok-old')$$);
SELECT pg_temp.try($$SELECT idem_release('l-5', owner => 'tok-old')$$);
SELECT status, body, attempt FROM idem_get('l-5');

-- an expired lease nobody has taken over yet: its owner may still extend
-- it, or commit (adopting it)
SELECT fresh FROM idem_reserve('l-6', owner => 'tok-f', lease => '50ms');
SELECT fresh FROM idem_reserve('l-7', owner => 'tok-g', lease => '50ms');
SELECT pg_sleep(0.1);
SELECT idem_extend('l-6', 'tok-f', '30s') > now() AS extended_after_expiry;
SELECT pg_temp.try($$SELECT idem_reserve('l-6', wait_timeout => '0')$$);
SELECT idem_commit('l-7', NULL, 200, 'adopted'::bytea, owner => 'tok-g');
SELECT state, body, attempt FROM idem_get('l-7');
SELECT idem_release('l-6', owner => 'tok-f');

-- a lease-owned record never expires while its lease runs; once the lease
-- ran out, ttl and purge treat it like a gone owner's record
SELECT fresh FROM idem_reserve('l-8', ttl => '10ms', owner => 'tok-h', lease => '30s');
SELECT fresh FROM idem_reserve('l-9', ttl => '10ms', owner => 'tok-i', lease => '50ms');
SELECT pg_sleep(0.1);
SELECT idem_purge();
SELECT key, state FROM idem_list() WHERE key IN ('l-8', 'l-9') ORDER BY key;
SELECT fresh, attempt FROM idem_reserve('l-9', owner => 'tok-j', lease => '30s');
SELECT idem_release('l-8', owner => 'tok-h');
SELECT idem_release('l-9', owner => 'tok-j');

-- the setting idem.lease: every reservation without a lease argument is
-- lease-owned; lease => '0' still makes a session owner
SET idem.lease = '20s';
SELECT fresh, owner IS NOT NULL AS has_token,
       lease_expires_at = now() + interval '20 seconds' AS leased_20s
  FROM idem_reserve('l-10');
SELECT fresh, owner IS NULL AS no_token, lease_expires_at
  FROM idem_reserve('l-11', lease => '0');
-- the setting is an interval, in any spelling an interval takes
SET idem.lease = '1 min 30 seconds';
SHOW idem.lease;
SELECT lease_expires_at = now() + interval '90 seconds' AS leased_90s
  FROM idem_reserve('l-10b');
SELECT pg_temp.try($$SET idem.lease = '-1s'$$);
SELECT pg_temp.try($$SET idem.lease = 'soon'$$);
RESET idem.lease;
SELECT pg_temp.try($$SELECT idem_release('l-10')$$);
SELECT idem_release('l-11');

-- in a transaction that rolls back, a lease reservation never happened
BEGIN;
SELECT fresh FROM idem_reserve('l-12', owner => 'tok-k', lease => '30s');
ROLLBACK;
SELECT idem_get('l-12') IS NULL AS never_happened;
-- the one-transaction pattern with a lease
BEGIN;
SELECT fresh FROM idem_reserve('l-13', owner => 'tok-l', lease => '30s');
SELECT idem_commit('l-13', NULL, 200, 'tx'::bytea, owner => 'tok-l');
COMMIT;
SELECT state, body FROM idem_get('l-13');
-- a lease owner's commit in a transaction that rolls back: still in flight,
-- still the token's
SELECT fresh FROM idem_reserve('l-14', owner => 'tok-m', lease => '30s');
BEGIN;
SELECT idem_commit('l-14', NULL, 200, 'rolled back'::bytea, owner => 'tok-m');
ROLLBACK;
SELECT state FROM idem_get('l-14');
SELECT idem_commit('l-14', NULL, 200, 'kept'::bytea, owner => 'tok-m');
SELECT state, body FROM idem_get('l-14');

-- a session owner with a token: this session's later calls must carry the
-- same token (another client sharing the session, as behind a
-- transaction-mode pooler, must not pass for the owner)
SELECT fresh, owner, lease_expires_at FROM idem_reserve('s-1', owner => 'cli-1');
SELECT pg_temp.try($$SELECT idem_reserve('s-1', owner => 'cli-2')$$);
SELECT pg_temp.try($$SELECT idem_reserve('s-1')$$);
SELECT pg_temp.try($$SELECT idem_commit('s-1', NULL, 200, 'x'::bytea, owner => 'cli-2')$$);
SELECT pg_temp.try($$SELECT idem_release('s-1', owner => 'cli-2')$$);
SELECT pg_temp.try($$SELECT idem_extend('s-1', 'cli-1')$$);
SELECT fresh, attempt, owner FROM idem_reserve('s-1', owner => 'cli-1');
SELECT idem_commit('s-1', NULL, 200, 'mine'::bytea, owner => 'cli-1');
SELECT state, body FROM idem_get('s-1');

-- bad owner arguments: class 22, and nothing changes
CREATE TEMP TABLE before AS SELECT * FROM idem_keys;
SELECT pg_temp.try($$SELECT idem_reserve('b-1', owner => '')$$);
SELECT pg_temp.try($$SELECT idem_reserve('b-1', owner => repeat('t', 256))$$);
SELECT pg_temp.try($$SELECT idem_reserve('b-1', lease => '-1s')$$);
SELECT pg_temp.try($$SELECT idem_reserve('b-1', lease => '1000 years')$$);
SELECT pg_temp.try($$SELECT idem_commit('b-1', NULL, 200, NULL, owner => '')$$);
SELECT pg_temp.try($$SELECT idem_release('b-1', owner => '')$$);
SELECT pg_temp.try($$SELECT idem_extend('b-1', repeat('t', 256))$$);
SELECT count(*) AS changed FROM (
	(SELECT * FROM idem_keys EXCEPT SELECT * FROM before)
	UNION ALL
	(SELECT * FROM before EXCEPT SELECT * FROM idem_keys)) d;
-- 255 bytes is the longest token
SELECT fresh, length(owner) FROM idem_reserve('b-2', owner => repeat('t', 255), lease => '30s');
SELECT idem_release('b-2', owner => repeat('t', 255));

-- only the owner's token adopts a lease that ran out: another token, or
-- none, gets IK409 (a reserve takes the key over instead)
SELECT fresh FROM idem_reserve('d-1', owner => 'tok-a', lease => '1 microsecond');
SELECT pg_sleep(0.01);
SELECT pg_temp.try($$SELECT idem_commit('d-1', NULL, 200, 'x'::bytea, owner => 'tok-b')$$);
SELECT pg_temp.try($$SELECT idem_commit('d-1', NULL, 200, 'x'::bytea)$$);
SELECT pg_temp.try($$SELECT idem_release('d-1')$$);
SELECT pg_temp.try($$SELECT idem_release('d-1', owner => 'tok-b')$$);
SELECT state, attempt FROM idem_get('d-1');

-- a fenced token stays fenced, also when the new owner's lease ran out too
SELECT fresh, attempt FROM idem_reserve('d-1', owner => 'tok-c', lease => '1 microsecond');
SELECT pg_sleep(0.01);
SELECT pg_temp.try($$SELECT idem_commit('d-1', NULL, 200, 'late'::bytea, owner => 'tok-a')$$);
SELECT idem_extend('d-1', 'tok-c', '30s') > now() AS new_owner_extends;
SELECT idem_commit('d-1', NULL, 200, 'by c'::bytea, owner => 'tok-c');
SELECT pg_temp.try($$SELECT idem_commit('d-1', NULL, 200, 'late'::bytea, owner => 'tok-a')$$);
-- a token that never owned it: a commit of a committed key is a no-op
SELECT idem_commit('d-1', NULL, 200, 'other'::bytea, owner => 'tok-x');
SELECT pg_temp.try($$SELECT idem_extend('d-1', 'tok-x')$$);
SELECT convert_from(body, 'UTF8') AS body, attempt FROM idem_get('d-1');

-- a lease that ran out past the ttl too: the record is absent, even for
-- its owner
SELECT fresh FROM idem_reserve('d-2', ttl => '10ms', owner => 'tok-a', lease => '1 microsecond');
SELECT pg_sleep(0.05);
SELECT idem_get('d-2') IS NULL AS absent;
SELECT pg_temp.try($$SELECT idem_commit('d-2', NULL, 200, 'x'::bytea, owner => 'tok-a')$$);
SELECT pg_temp.try($$SELECT idem_extend('d-2', 'tok-a')$$);

-- a session owner reserving again with a lease but no token is the same
-- client: re-entrant, still the session's
SELECT fresh, owner, lease_expires_at FROM idem_reserve('d-3');
SELECT fresh, owner, lease_expires_at FROM idem_reserve('d-3', lease => '30s');
SELECT idem_release('d-3');

-- no lock of ours is left behind
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();
SELECT idem_release('l-1', owner => (SELECT owner_token FROM idem_keys WHERE key = 'l-1'));
