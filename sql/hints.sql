--
-- Location hints: a look-up fetches the record where its key was last seen
-- in the heap before it descends the primary key (src/idem_hint.c).  This
-- cluster does not preload the module, so each backend has hints of its
-- own.  Whatever a hint says, the answer is the one the primary key gives:
-- a record moved, deleted, replaced by another key's or cut off by
-- VACUUM's truncation is looked up in the index instead.
--
-- Whether the index was read is told by the blocks of idem_keys_pkey that
-- the transaction fetched (pg_stat_get_xact_blocks_fetched).
--
CREATE FUNCTION pkey_blocks() RETURNS bigint LANGUAGE sql
AS $$ SELECT pg_stat_get_xact_blocks_fetched('idem_keys_pkey'::regclass) $$;

-- a table of a few pages, in which this file knows where rows go
TRUNCATE idem_keys;

-- deleted, its line pointer freed by VACUUM and taken by another key: the
-- hint leads to that key's row, which is not taken for the old key's
SELECT fresh FROM idem_reserve('hint-gone', 'h');
SELECT ctid AS gone_tid FROM idem_keys WHERE key = 'hint-gone' \gset
SELECT idem_commit('hint-gone', 'h', 200, 'gone');
SELECT fresh, state FROM idem_reserve('hint-gone', 'h');
SELECT idem_evict('hint-gone');
VACUUM (INDEX_CLEANUP ON) idem_keys;
SELECT fresh FROM idem_reserve('hint-new', 'h');
SELECT ctid = :'gone_tid' AS same_tid FROM idem_keys WHERE key = 'hint-new';
SELECT fresh, attempt FROM idem_reserve('hint-gone', 'h');
SELECT (idem_get('hint-new')).state;
SELECT idem_release('hint-gone');
SELECT idem_release('hint-new');

-- the first look-up of a key in a backend reads the index, the next one not
SELECT fresh FROM idem_reserve('hint-a', 'h');
SELECT idem_commit('hint-a', 'h', 200, 'first');
\c
BEGIN;
SELECT pkey_blocks() AS b \gset
SELECT fresh, state, convert_from(body, 'UTF8') AS body FROM idem_reserve('hint-a', 'h');
SELECT pkey_blocks() - :b > 0 AS index_read;
SELECT pkey_blocks() AS b \gset
SELECT fresh, state, convert_from(body, 'UTF8') AS body FROM idem_reserve('hint-a', 'h');
SELECT (idem_get('hint-a')).state;
SELECT pkey_blocks() - :b AS index_blocks;
COMMIT;

-- the reserve's own insert leaves the hint: the commit and the replays of
-- the same backend find the record without the index
BEGIN;
SELECT pkey_blocks() AS b \gset
SELECT fresh FROM idem_reserve('hint-b', 'h');
SELECT pkey_blocks() AS b \gset
SELECT idem_commit('hint-b', 'h', 201, 'second');
COMMIT;
BEGIN;
SELECT pkey_blocks() AS b \gset
SELECT fresh, state, status FROM idem_reserve('hint-b', 'h');
SELECT pkey_blocks() - :b AS index_blocks;
COMMIT;

-- updated in place by SQL (a HOT update): the hint follows the chain
UPDATE idem_keys SET body = 'changed by SQL' WHERE key = 'hint-a';
SELECT fresh, state, convert_from(body, 'UTF8') AS body FROM idem_reserve('hint-a', 'h');

-- moved to a chain of its own (its key changed, an indexed column): the
-- old hint leads nowhere, the new key is found, the old one is fresh
UPDATE idem_keys SET key = 'hint-a2' WHERE key = 'hint-a';
SELECT fresh, state, convert_from(body, 'UTF8') AS body FROM idem_reserve('hint-a2', 'h');
SELECT fresh, attempt FROM idem_reserve('hint-a', 'h');
SELECT idem_release('hint-a');

-- the same key in another scope is another record
SELECT fresh FROM idem_reserve('hint-b', 'h', scope => 'other');
SELECT scope, state FROM idem_keys WHERE key = 'hint-b' ORDER BY scope;
SELECT fresh, state, status FROM idem_reserve('hint-b', 'h');
SELECT idem_release('hint-b', 'other');

-- the table rewritten (another relation file): hints of the old file are
-- not looked at
SELECT idem_set_logged(false);
SELECT fresh, state, convert_from(body, 'UTF8') AS body FROM idem_reserve('hint-a2', 'h');
SELECT idem_set_logged(true);
SELECT fresh, state, status FROM idem_reserve('hint-b', 'h');

-- hints that point past the end of the table after VACUUM truncated it:
-- 2000 records, the last ones looked up, all deleted, the table cut down
SELECT count(*) FROM generate_series(1, 2000) i,
	LATERAL idem_reserve('hint-t-' || i, 'h') r WHERE r.fresh;
SELECT count(*) FROM generate_series(1, 2000) i,
	LATERAL idem_commit('hint-t-' || i, 'h', 200, 'x') c WHERE c;
SELECT pg_relation_size('idem_keys') AS size_before \gset
SELECT count(*) FROM generate_series(1900, 2000) i,
	LATERAL idem_reserve('hint-t-' || i, 'h') r WHERE r.state = 'committed';
DELETE FROM idem_keys WHERE key LIKE 'hint-t-%';
VACUUM (INDEX_CLEANUP ON) idem_keys;
SELECT pg_relation_size('idem_keys') < :size_before / 4 AS truncated;
SELECT count(*) FROM generate_series(1900, 2000) i,
	LATERAL idem_get('hint-t-' || i) g WHERE g.state IS NOT NULL;
SELECT fresh, attempt FROM idem_reserve('hint-t-2000', 'h');
SELECT idem_release('hint-t-2000');

-- under SERIALIZABLE the index is always read (its predicate locks)
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT pkey_blocks() AS b \gset
SELECT fresh, state FROM idem_reserve('hint-b', 'h');
SELECT fresh, state FROM idem_reserve('hint-b', 'h');
SELECT pkey_blocks() - :b >= 2 AS index_read;
COMMIT;

DELETE FROM idem_keys;
DROP FUNCTION pkey_blocks();
