-- workload 2: the raw SQL floor: a primary-key SELECT of the same columns
\set i random(1, :nkeys) * 100000
SELECT state = 'committed' AS replay, state, status, headers, body, attempt, created_at, expires_at FROM raw_keys WHERE scope = '' AND key = 'k' || lpad(:i::text, 15, '0');
