-- the same replay, calling the distributed shard function directly, as
-- Citus delegates it: what the routing costs beyond Citus's own delegation
\set n random(1, 10000)
SELECT status, body FROM idem_shard_reserve('r-' || :n::text, NULL, '1 day', '30s', '', NULL, '30s');
