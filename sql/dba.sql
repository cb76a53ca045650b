--
-- What a DBA may add to the key table: an index for a report, an
-- expression index, a trigger.  The functions then write through the
-- executor, so every index stays consistent with the heap (checked with
-- amcheck) and triggers fire; without them the direct writes are back.
--
CREATE EXTENSION IF NOT EXISTS amcheck;

CREATE INDEX idem_keys_expires ON idem_keys (expires_at);
CREATE INDEX idem_keys_key_lower ON idem_keys (lower(key), scope);

-- every kind of write: new keys, commit, release, re-entrance, takeover,
-- leases, purge
SELECT fresh FROM idem_reserve('dba-1', 'h');
SELECT idem_commit('dba-1', 'h', 200, 'one'::bytea);
SELECT fresh FROM idem_reserve('dba-2');
SELECT idem_release('dba-2');
SELECT fresh FROM idem_reserve('dba-3', ttl => '1ms');
SELECT fresh FROM idem_reserve('dba-3', ttl => '1ms');
SELECT idem_commit('dba-3', NULL, 200, 'three'::bytea);
SELECT fresh, attempt FROM idem_reserve('dba-4', owner => 'tok', lease => '30s');
SELECT idem_extend('dba-4', 'tok') > now() AS extended;
SELECT idem_commit('dba-4', NULL, 201, 'four'::bytea, owner => 'tok');
SELECT fresh FROM idem_reserve('dba-5', owner => 'tok', lease => '1ms');
SELECT pg_sleep(0.01);
SELECT fresh, attempt FROM idem_reserve('dba-5', owner => 'tok-2', lease => '30s');
SELECT idem_release('dba-5', owner => 'tok-2');
SELECT pg_sleep(0.01);
SELECT idem_purge() >= 1 AS purged;
SELECT count(*) AS dba_3_left FROM idem_keys WHERE key = 'dba-3';

-- the indexes agree with the heap
SELECT c.relname, bt_index_check(c.oid, true)
  FROM pg_class c
 WHERE c.relname IN ('idem_keys_pkey', 'idem_keys_expires', 'idem_keys_key_lower')
 ORDER BY 1;
SET enable_seqscan = off;
SELECT count(*) AS by_expires FROM idem_keys WHERE key LIKE 'dba-%' AND expires_at > '-infinity';
SELECT key FROM idem_keys WHERE lower(key) IN ('dba-1', 'dba-4') ORDER BY key;
RESET enable_seqscan;
SELECT count(*) AS by_heap FROM idem_keys WHERE key LIKE 'dba-%';
-- and the responses replay byte for byte
SELECT key, state, status, convert_from(body, 'UTF8') AS body
  FROM idem_keys WHERE key LIKE 'dba-%' ORDER BY key;

-- a trigger on the key table fires for the functions' writes
CREATE TABLE dba_log (key text, op text, state text);
CREATE FUNCTION dba_log_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO dba_log VALUES (NEW.key, TG_OP, NEW.state);
	RETURN NEW;
END
$$;
CREATE TRIGGER dba_log AFTER INSERT OR UPDATE ON idem_keys
	FOR EACH ROW EXECUTE FUNCTION dba_log_write();
SELECT fresh FROM idem_reserve('dba-6');
SELECT idem_commit('dba-6', NULL, 200, 'six'::bytea);
SELECT fresh FROM idem_reserve('dba-7', owner => 'tok', lease => '30s');
SELECT idem_commit('dba-7', NULL, 200, 'seven'::bytea, owner => 'tok');
SELECT * FROM dba_log ORDER BY key, op;

-- all gone again: direct writes, and still consistent
DROP TRIGGER dba_log ON idem_keys;
DROP FUNCTION dba_log_write();
DROP TABLE dba_log;
DROP INDEX idem_keys_expires, idem_keys_key_lower;
SELECT fresh FROM idem_reserve('dba-8');
SELECT idem_commit('dba-8', NULL, 200, 'eight'::bytea);
SELECT bt_index_check('idem_keys_pkey'::regclass, true);
SELECT key, state, convert_from(body, 'UTF8') AS body
  FROM idem_keys WHERE key IN ('dba-6', 'dba-7', 'dba-8') ORDER BY key;
DELETE FROM idem_keys WHERE key LIKE 'dba-%';
