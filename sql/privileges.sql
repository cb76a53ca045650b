--
-- Privileges: PUBLIC cannot touch the key table, the functions are the
-- way in; the functions are safe against search_path tricks
--
CREATE ROLE idem_app LOGIN;
SET ROLE idem_app;

-- no direct access to the table
SELECT count(*) FROM idem_keys;
INSERT INTO idem_keys (scope, key, state, ttl, created_at, expires_at)
VALUES ('', 'forged', 'committed', '1 day', now(), now() + '1 day');
DELETE FROM idem_keys;

-- the functions work for any role
SELECT fresh FROM idem_reserve('priv-1', 'h');
SELECT idem_commit('priv-1', 'h', 200, 'ok'::bytea);
SELECT fresh, status, body FROM idem_reserve('priv-1', 'h');
SELECT idem_purge(0);

-- switching the table's persistence is for its owner only
SELECT idem_set_logged(false);
RESET ROLE;

-- a function or operator shadowing a built-in one earlier on the
-- search_path is never called by the extension
CREATE SCHEMA evil;
GRANT USAGE, CREATE ON SCHEMA evil TO idem_app;
SET ROLE idem_app;
CREATE FUNCTION evil.texteq(text, text) RETURNS boolean
  LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq);
CREATE FUNCTION evil.coalesce(text, text) RETURNS text
  LANGUAGE sql AS $$ SELECT 'evil' $$;
SET search_path = evil, public, pg_catalog;
SELECT fresh FROM idem_reserve('priv-2', 'h2');
SELECT fresh, status, body FROM idem_reserve('priv-1', 'h');
SELECT idem_commit('priv-2', 'h2', 200, 'fine'::bytea);
SELECT fresh, status, body FROM idem_reserve('priv-2', 'h2');
RESET search_path;
RESET ROLE;
SELECT key, request_hash, body FROM idem_keys WHERE key LIKE 'priv-%' ORDER BY key;

DROP SCHEMA evil CASCADE;
DELETE FROM idem_keys WHERE key LIKE 'priv-%';
DROP ROLE idem_app;
