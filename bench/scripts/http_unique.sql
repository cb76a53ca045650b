-- the HTTP example's POST /charges with a new key: the statements libidem
-- and the handler send (examples/http, client/idem_conn.c): the reserve
-- that goes with BEGIN, the insert, the commit that goes with COMMIT
\set n random(1, :maxkey)
BEGIN;
SELECT r.* FROM idem_reserve('h' || lpad(:n::text, 15, '0'), :hash, NULL, '5 seconds', 'bench', NULL, NULL) r;
INSERT INTO http_charges (tenant, idempotency_key, amount, currency, description) VALUES ('bench', 'h' || lpad(:n::text, 15, '0'), 1000, 'usd', 'wrk') RETURNING id, extract(epoch FROM created_at)::bigint;
SELECT idem_commit('h' || lpad(:n::text, 15, '0'), :hash, 201, '\x7b226964223a2263685f31323334222c226f626a656374223a22636861726765222c22616d6f756e74223a313030302c2263757272656e6379223a22757364222c226465736372697074696f6e223a22777266222c2263726561746564223a313736343730303030302c2274656e616e74223a2262656e6368227d'::bytea, '{"content-type": ["application/json"], "location": ["/charges/ch_1234"]}'::jsonb, 'bench', NULL);
COMMIT;
