--
-- idem_set_logged switches the key table between logged and unlogged;
-- the rows and the behaviour stay
--
SELECT fresh FROM idem_reserve('log-1');
SELECT idem_commit('log-1', NULL, 200, 'kept'::bytea);
SELECT fresh FROM idem_reserve('log-2');

SELECT idem_set_logged(false);
SELECT relpersistence FROM pg_class WHERE relname IN ('idem_keys', 'idem_keys_pkey') ORDER BY relname;
SELECT status, body FROM idem_reserve('log-1');
SELECT state FROM idem_get('log-2');
SELECT idem_commit('log-2', NULL, 200, 'unlogged'::bytea);
SELECT fresh FROM idem_reserve('log-3');
SELECT idem_commit('log-3', NULL, 201, 'three'::bytea);

SELECT idem_set_logged(true);
SELECT relpersistence FROM pg_class WHERE relname IN ('idem_keys', 'idem_keys_pkey') ORDER BY relname;
SELECT key, state, status, body FROM idem_keys WHERE key LIKE 'log-%' ORDER BY key;

-- switching to what it already is does nothing
SELECT idem_set_logged(true);
SELECT idem_set_logged(NULL);
DELETE FROM idem_keys WHERE key LIKE 'log-%';
