-- workload 1 (and 5, 6): the raw SQL floor: insert the in-flight row, then
-- store the response, autocommit; no waits, no ownership checks
\set n random(1, :maxkey)
INSERT INTO raw_keys (scope, key, state, request_hash, attempt, ttl, created_at, expires_at, owner_pid, owner_started) VALUES ('', 'k' || lpad(:n::text, 15, '0'), 'in_flight', :hash, 1, interval '24 hours', now(), now() + interval '24 hours', pg_backend_pid(), now()) ON CONFLICT DO NOTHING;
UPDATE raw_keys SET state = 'committed', status = 201, headers = '{"content-type": ["application/json"]}'::jsonb, body = '\x7b226964223a2263685f303030303030303030303031222c22616d6f756e74223a3130302c22637572223a22657572227d'::bytea, committed_at = now(), expires_at = now() + ttl, owner_pid = NULL, owner_started = NULL WHERE scope = '' AND key = 'k' || lpad(:n::text, 15, '0');
