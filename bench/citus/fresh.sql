-- reserve + commit of a new key, a lease owner per client (the owner on
-- a distributed table is always a lease), autocommit
\set n random(1, 1000000000000)
SELECT fresh FROM idem_reserve('f' || :n::text, NULL, NULL, NULL, '', 'client-' || :client_id::text, '30s');
SELECT idem_commit('f' || :n::text, NULL, 201, '\x7b226964223a2263685f303030303030303030303031222c22616d6f756e74223a3130302c22637572223a22657572227d'::bytea, '{"content-type": ["application/json"]}'::jsonb, '', 'client-' || :client_id::text);
