-- setup.sql: what the benchmark needs beside the extension and the
-- PL/pgSQL baseline.  Run as superuser in the benchmark's own database.
--
--  raw_keys       the "raw floor": a table of the same shape as the
--                 extension's key table (idem_keys of version 1.0), used with
--                 plain SQL and no locking at all
--  bench_key(n)   the text of key number n: 'k' + 15 digits, so that keys
--                 sort like their numbers (loads append at the right end of
--                 the primary key) and random fresh keys fall between them
--  bench_load(t, first, last, expired)
--                 inserts committed keys number first*100000 .. last*100000
--                 (step 100000) into table t, with realistic rows: a 64-hex
--                 request hash, status 201, JSON headers, a 48-byte body;
--                 expired = true makes them expired an hour ago

CREATE TABLE raw_keys (
	scope			text		NOT NULL,
	key				text		NOT NULL,
	state			text		NOT NULL
		CHECK (state IN ('in_flight', 'committed')),
	request_hash	text,
	status			integer,
	headers			jsonb,
	body			bytea,
	attempt			integer		NOT NULL DEFAULT 1,
	ttl				interval	NOT NULL,
	created_at		timestamptz	NOT NULL,
	expires_at		timestamptz	NOT NULL,
	committed_at	timestamptz,
	owner_pid		integer,
	owner_started	timestamptz,
	PRIMARY KEY (scope, key)
) WITH (fillfactor = 80);

CREATE FUNCTION bench_key(n bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN 'k' || lpad(n::text, 15, '0');

CREATE FUNCTION bench_load(t regclass, first bigint, last bigint,
						   expired boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	n bigint;
	t0 timestamptz := CASE WHEN expired THEN now() - interval '25 hours'
						   ELSE now() END;
BEGIN
	EXECUTE format($q$
		INSERT INTO %s (scope, key, state, request_hash, status, headers, body,
						attempt, ttl, created_at, expires_at, committed_at,
						owner_pid, owner_started)
		SELECT '', 'k' || lpad((i * 100000)::text, 15, '0'), 'committed',
			   '6d1f1b6bbf2f5a3c4a7e0a5f2b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708',
			   201, '{"content-type": ["application/json"]}'::jsonb,
			   convert_to('{"id":"ch_' || lpad(i::text, 12, '0') || '","amount":100,"cur":"eur"}', 'UTF8'),
			   1, interval '24 hours', $1, $1 + interval '24 hours', $1,
			   NULL, NULL
		FROM generate_series($2, $3) AS i$q$, t)
	USING t0, first, last;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;

-- http_charges: the HTTP example's table of charges (examples/http), for
-- scripts/http_*.sql, the statements one of its requests runs
CREATE TABLE http_charges (
	id				bigserial	PRIMARY KEY,
	tenant			text		NOT NULL,
	idempotency_key	text,
	amount			bigint		NOT NULL CHECK (amount > 0),
	currency		text		NOT NULL,
	description		text,
	created_at		timestamptz	NOT NULL DEFAULT now()
);
