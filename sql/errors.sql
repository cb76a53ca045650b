--
-- Every row of the error table: the SQLSTATE, a message in the PostgreSQL
-- style with a detail naming the key and scope, and the table unchanged
--

-- runs a statement and shows the error it raises, SQLSTATE first
CREATE FUNCTION pg_temp.try(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	st text; msg text; det text; hnt text;
BEGIN
	EXECUTE stmt;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
		det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
	RETURN st || ': ' || msg
		|| CASE WHEN det <> '' THEN E'\n  DETAIL: ' || det ELSE '' END
		|| CASE WHEN hnt <> '' THEN E'\n  HINT: ' || hnt ELSE '' END;
END
$$;

CREATE TEMP TABLE before AS SELECT * FROM idem_keys;

-- class 22: NULL key, empty key, key over 255 bytes, NULL scope
SELECT pg_temp.try($$SELECT idem_reserve(NULL)$$);
SELECT pg_temp.try($$SELECT idem_reserve('')$$);
SELECT pg_temp.try($$SELECT idem_reserve(repeat('k', 256))$$);
SELECT pg_temp.try($$SELECT idem_reserve(repeat('é', 128))$$);
SELECT pg_temp.try($$SELECT idem_reserve('k', scope => NULL)$$);
SELECT pg_temp.try($$SELECT idem_reserve('k', scope => repeat('s', 256))$$);
SELECT pg_temp.try($$SELECT idem_commit(NULL, NULL, 200, NULL)$$);
SELECT pg_temp.try($$SELECT idem_commit('', NULL, 200, NULL)$$);
SELECT pg_temp.try($$SELECT idem_commit('k', NULL, 200, NULL, '{}', NULL)$$);
SELECT pg_temp.try($$SELECT idem_release(NULL)$$);
SELECT pg_temp.try($$SELECT idem_release('k', NULL)$$);
SELECT pg_temp.try($$SELECT idem_get(NULL)$$);
SELECT pg_temp.try($$SELECT idem_get('', '')$$);

-- class 22: zero or negative ttl, negative wait_timeout
SELECT pg_temp.try($$SELECT idem_reserve('k', ttl => '0')$$);
SELECT pg_temp.try($$SELECT idem_reserve('k', ttl => '-1 second')$$);
SELECT pg_temp.try($$SELECT idem_reserve('k', ttl => interval '1 day' - interval '2 days')$$);
SELECT pg_temp.try($$SELECT idem_reserve('k', wait_timeout => '-1 ms')$$);

-- class 22: NULL parts of hashes
SELECT pg_temp.try($$SELECT idem_derive_key('a', NULL)$$);
SELECT pg_temp.try($$SELECT idem_request_hash(NULL, '/', NULL)$$);
SELECT pg_temp.try($$SELECT idem_purge(-5)$$);

-- IK404: commit without a reservation
SELECT pg_temp.try($$SELECT idem_commit('missing', 'h', 200, 'x'::bytea, scope => 'errors')$$);

-- IK422: hash mismatch, on reserve and on commit, in flight and committed
SELECT fresh FROM idem_reserve('mismatch', 'h1', scope => 'errors');
SELECT pg_temp.try($$SELECT idem_reserve('mismatch', 'h2', scope => 'errors')$$);
SELECT pg_temp.try($$SELECT idem_commit('mismatch', 'h2', 200, 'x'::bytea, scope => 'errors')$$);
SELECT idem_commit('mismatch', 'h1', 200, 'x'::bytea, scope => 'errors');
SELECT pg_temp.try($$SELECT idem_reserve('mismatch', 'h2', scope => 'errors')$$);
SELECT pg_temp.try($$SELECT idem_commit('mismatch', 'h2', 200, 'y'::bytea, scope => 'errors')$$);

-- 54000: body over idem.max_body_bytes
SELECT fresh FROM idem_reserve('too-big', scope => 'errors');
SET idem.max_body_bytes = 10;
SELECT pg_temp.try($$SELECT idem_commit('too-big', NULL, 200, '12345678901'::bytea, scope => 'errors')$$);
RESET idem.max_body_bytes;

-- settings out of range are refused
SELECT pg_temp.try($$SET idem.wait_timeout = -1$$);
SELECT pg_temp.try($$SET idem.default_ttl = 0$$);
SELECT pg_temp.try($$SET idem.max_body_bytes = -1$$);

-- nothing was lost or changed by the rejected calls; the only rows added
-- are the two reservations made on purpose
SELECT count(*) = (SELECT count(*) FROM before) AS unchanged
  FROM before b JOIN idem_keys k USING (scope, key)
 WHERE (b.*)::text = (k.*)::text;
SELECT key, state, status, body FROM idem_keys
 WHERE (scope, key) NOT IN (SELECT scope, key FROM before) ORDER BY key;
SELECT idem_release('too-big', 'errors');
