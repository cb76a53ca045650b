-- the HTTP example's POST /charges-unprotected: the charge inserted in a
-- transaction of its own, no idempotency key
BEGIN;
INSERT INTO http_charges (tenant, idempotency_key, amount, currency, description) VALUES ('bench', NULL, 1000, 'usd', 'wrk') RETURNING id, extract(epoch FROM created_at)::bigint;
COMMIT;
