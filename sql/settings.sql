--
-- Settings: idem.default_ttl, idem.wait_timeout, idem.max_body_bytes
--

-- unit syntax as for any PostgreSQL setting
SET idem.default_ttl = '1h';
SHOW idem.default_ttl;
SELECT expires_at - created_at AS ttl FROM idem_reserve('set-1');
SELECT idem_release('set-1');
SET idem.default_ttl = 30;
SHOW idem.default_ttl;
SELECT expires_at - created_at AS ttl FROM idem_reserve('set-2');
SELECT idem_release('set-2');
RESET idem.default_ttl;

-- an explicit ttl overrides the setting; months and days work
SELECT expires_at - created_at AS ttl FROM idem_reserve('set-3', ttl => '1 day');
SELECT idem_release('set-3');

SET idem.wait_timeout = '5s';
SHOW idem.wait_timeout;
SET idem.wait_timeout = 0;
SHOW idem.wait_timeout;
-- with nobody holding the key, a zero wait still reserves it
SELECT fresh FROM idem_reserve('set-4');
SELECT idem_release('set-4');
RESET idem.wait_timeout;

-- settings can be set per role or database, and SET LOCAL
BEGIN;
SET LOCAL idem.max_body_bytes = '1kB';
SHOW idem.max_body_bytes;
COMMIT;
SHOW idem.max_body_bytes;

-- the prefix is reserved: a typo is an error, not a silent placeholder
SET idem.default_tll = '1h';

-- idem.async_reserve: a new reservation made in a transaction of its own
-- is committed without waiting for the WAL flush ...
SHOW idem.async_reserve;
SET idem.async_reserve = on;
SELECT r.fresh, current_setting('synchronous_commit') AS sync
  FROM idem_reserve('set-5') r;
SHOW synchronous_commit;
-- ... but never inside an explicit transaction, whose other writes must
-- stay durable
BEGIN;
SELECT r.fresh, current_setting('synchronous_commit') AS sync
  FROM idem_reserve('set-6') r;
COMMIT;
-- a replay or a commit changes nothing either
SELECT idem_commit('set-5', NULL, 200, 'five'::bytea);
SELECT r.fresh, current_setting('synchronous_commit') AS sync
  FROM idem_reserve('set-5') r;
RESET idem.async_reserve;
SELECT idem_release('set-6');

-- idem.purge_delay: a large purge pauses after each 1000 records (here
-- there are fewer, so no pause)
SHOW idem.purge_delay;
SET idem.purge_delay = 0;
SELECT idem_purge() >= 0 AS purged;
RESET idem.purge_delay;
