--
-- idem_reserve: fresh, replay, re-entrant, scopes, expiry
--
\pset null '<null>'

-- a new key: the caller owns it and must run the handler
SELECT fresh, state, status, headers, body, attempt,
       expires_at - created_at AS ttl
  FROM idem_reserve('order-1', 'h1');

-- the owner reserving again gets fresh = true again, same attempt
SELECT fresh, state, attempt FROM idem_reserve('order-1', 'h1');

-- commit a response, then every later reserve replays it
SELECT idem_commit('order-1', 'h1', 201, '\x7b226964223a317d'::bytea,
                   '{"content-type": "application/json"}');
SELECT fresh, state, status, headers, body, attempt
  FROM idem_reserve('order-1', 'h1');

-- a NULL hash on either side never mismatches
SELECT fresh, state, status FROM idem_reserve('order-1');

-- the same key in another scope is another record
SELECT fresh, state, attempt FROM idem_reserve('order-1', 'h1', scope => 'tenant-a');
SELECT fresh, state, attempt FROM idem_reserve('order-1', 'h1', scope => 'tenant-b');
SELECT idem_commit('order-1', 'h1', 200, 'a'::bytea, scope => 'tenant-a');
SELECT status, body FROM idem_reserve('order-1', 'h1', scope => 'tenant-a');
SELECT fresh, state FROM idem_get('order-1', 'tenant-b');

-- ttl: the record is kept until commit time + ttl
SELECT fresh, expires_at - created_at AS ttl
  FROM idem_reserve('short', ttl => '2 hours');
SELECT idem_commit('short', NULL, 204, NULL);
SELECT state, status, body IS NULL AS body_is_null,
       expires_at - now() <= '2 hours' AND expires_at - now() > '1 hour 59 minutes' AS kept_two_hours
  FROM idem_get('short');

-- an expired record counts as absent: a new reservation starts over
SELECT fresh, attempt FROM idem_reserve('expiring', 'x', ttl => '10 milliseconds');
SELECT idem_commit('expiring', 'x', 200, 'old'::bytea);
SELECT pg_sleep(0.05);
SELECT idem_get('expiring') IS NULL AS absent;
-- ... and a different hash is not a mismatch for an expired record
SELECT fresh, state, status, body, attempt FROM idem_reserve('expiring', 'y');
SELECT idem_commit('expiring', 'y', 200, 'new'::bytea);
SELECT status, body FROM idem_reserve('expiring', 'y');

-- the default ttl comes from idem.default_ttl
SET idem.default_ttl = '90s';
SELECT expires_at - created_at AS ttl FROM idem_reserve('default-ttl');
RESET idem.default_ttl;
SELECT idem_release('default-ttl');

-- bodies are kept byte for byte: NUL bytes, high bytes, empty, large
SELECT fresh FROM idem_reserve('binary');
SELECT idem_commit('binary', NULL, 200, '\x00ff00fe80017f00'::bytea);
SELECT body, length(body) FROM idem_reserve('binary');
SELECT fresh FROM idem_reserve('empty-body');
SELECT idem_commit('empty-body', NULL, 200, ''::bytea);
SELECT body, length(body) FROM idem_reserve('empty-body');
SELECT fresh FROM idem_reserve('big-body');
SELECT idem_commit('big-body', NULL, 200,
                   (SELECT string_agg(to_char(g, 'FM000000'), '')::bytea
                      FROM generate_series(1, 100000) g));
SELECT length(body), md5(body) = md5((SELECT string_agg(to_char(g, 'FM000000'), '')
                                        FROM generate_series(1, 100000) g)::bytea) AS same
  FROM idem_reserve('big-body');

-- keys and scopes are compared byte for byte, any characters allowed
SELECT fresh FROM idem_reserve('clé ✓', scope => 'スコープ');
SELECT idem_commit('clé ✓', NULL, 200, 'ok'::bytea, scope => 'スコープ');
SELECT status, body FROM idem_reserve('clé ✓', scope => 'スコープ');
SELECT idem_get('CLÉ ✓', 'スコープ') IS NULL AS case_sensitive;

-- a key of exactly 255 bytes is fine
SELECT fresh FROM idem_reserve(repeat('k', 255));
SELECT idem_release(repeat('k', 255));

SELECT scope, key, state FROM idem_keys ORDER BY scope, key;
