--
-- badinput.sql: the catalog reader and the hostile values of the bad-input
-- suite (test/suites/badinput.sh), loaded into the suite's own database
-- after CREATE EXTENSION idempotency.
--
-- Schema badinput holds:
--   hostile     hostile values per argument type (SQL expressions)
--   bases       the harmless value an argument gets while another one is
--               hostile: by argument name and type first, else by type
--   scenarios   the seeded keys a call is aimed at (key and owner token)
--   functions() the extension's functions, read from pg_proc through
--               pg_depend, each with why it is skipped (NULL: it is called)
--   calls()     one SQL statement per (function, scenario, argument,
--               hostile value): that argument hostile, every other one its
--               base value; each statement once
--   tables_hash(), session_locks()
--               what must not change when a call is rejected or rolled back
--
-- Nothing here names a function of the extension: a function added to it is
-- called by the next run.  Its argument types pick the hostile values; a
-- type with none listed below gets NULL only (the suite says so).
--

SET client_min_messages = warning;
CREATE SCHEMA badinput;

CREATE TABLE badinput.hostile (
	ord		serial,
	type	regtype NOT NULL,
	label	text NOT NULL,
	expr	text NOT NULL
);

INSERT INTO badinput.hostile (type, label, expr) VALUES
	-- text: lengths around the 255-byte key limit and far beyond, multibyte
	-- characters (bytes and characters differ), format and quoting
	-- characters.  Invalid UTF-8 cannot be given as text: the database
	-- (UTF8) refuses to build such a value (22021), see the suite.
	('text', 'NULL', 'NULL'),
	('text', 'empty', $$''$$),
	('text', 'one space', $$' '$$),
	('text', '255 B', $$repeat('k', 255)$$),
	('text', '256 B', $$repeat('k', 256)$$),
	('text', '5 kB', $$repeat('k', 5120)$$),
	('text', '1 MB', $$repeat('k', 1048576)$$),
	('text', '85 x 3-byte char (255 B)', $$repeat(chr(8364), 85)$$),
	('text', '128 x 2-byte char (256 B)', $$repeat(chr(233), 128)$$),
	('text', '64 x 4-byte char (256 B)', $$repeat(chr(128512), 64)$$),
	('text', '1 MB of 4-byte chars', $$repeat(chr(128512), 262144)$$),
	('text', 'combining marks', $$'e' || repeat(chr(769), 200)$$),
	('text', 'format specifiers', $$'%s%n%x%p%%s%999999999d'$$),
	('text', 'quotes, backslash', $$E'\'"\\;--/*'$$),
	('text', 'control characters', $$E'\t\r\n\x01\x1b\x7f'$$),

	('text[]', 'NULL', 'NULL'),
	('text[]', 'empty array', $$'{}'$$),
	('text[]', '{NULL}', 'ARRAY[NULL]'),
	('text[]', '{""}', $$ARRAY['']$$),
	('text[]', 'NULL in the middle', $$ARRAY['a', NULL, 'b']$$),
	('text[]', '10k elements', $$(SELECT array_agg(i::text) FROM generate_series(1, 10000) i)$$),
	('text[]', '10k elements, half NULL', $$(SELECT array_agg(CASE WHEN i % 2 = 0 THEN i::text END) FROM generate_series(1, 10000) i)$$),
	('text[]', '2-D', $$'{{a,b},{c,d}}'$$),
	('text[]', '3-D', $$'{{{a},{b}},{{c},{d}}}'$$),
	('text[]', 'lower bound 0', $$'[0:1]={a,b}'$$),
	('text[]', 'lower bound -2147483648', $$'[-2147483648:-2147483647]={a,b}'$$),
	('text[]', 'one 1 MB element', $$ARRAY[repeat('k', 1048576)]$$),
	('text[]', '1000 x 256 B elements', $$array_fill(repeat('k', 256), ARRAY[1000])$$),
	('text[]', 'multibyte elements', $$ARRAY[repeat(chr(128512), 64), repeat(chr(233), 128)]$$),

	-- intervals: zero and negative (also as field mixes that compare equal
	-- to zero or below it), tiny, huge in both directions, extreme fields
	('interval', 'NULL', 'NULL'),
	('interval', 'zero', $$'0'$$),
	('interval', '-1 second', $$'-1 second'$$),
	('interval', '-1 microsecond', $$'-1 microsecond'$$),
	('interval', '1 microsecond', $$'1 microsecond'$$),
	('interval', '1 mon -30 days (compares equal to 0)', $$'1 mon -30 days'$$),
	('interval', '1 mon -30 days -1 us (below 0)', $$'1 mon -30 days -1 microsecond'$$),
	('interval', '1 day -86400 s (equal to 0)', $$'1 day -86400 seconds'$$),
	('interval', '-1 mon +31 days (1 day)', $$'-1 mon +31 days'$$),
	('interval', '178000000 years', $$'178000000 years'$$),
	('interval', '-178000000 years', $$'-178000000 years'$$),
	('interval', 'maximum', $$'178956970 years 7 mons 2147483647 days 2562047788:00:54.775807'$$),
	('interval', 'minimum', $$'-178956970 years -8 mons -2147483648 days -2562047788:00:54.775807'$$),
	('interval', '2147483647 days', $$'2147483647 days'$$),
	('interval', '2562047788 hours', $$'2562047788:00:54.775807'$$),

	('integer', 'NULL', 'NULL'),
	('integer', '0', '0'),
	('integer', '-1', '-1'),
	('integer', '1', '1'),
	('integer', '99', '99'),
	('integer', '600', '600'),
	('integer', 'int4 min', '-2147483648'),
	('integer', 'int4 max', '2147483647'),

	('bigint', 'NULL', 'NULL'),
	('bigint', '0', '0'),
	('bigint', '-1', '-1'),
	('bigint', 'int8 min', '-9223372036854775808'),
	('bigint', 'int8 max', '9223372036854775807'),

	('smallint', 'NULL', 'NULL'),
	('smallint', '0', '0'),
	('smallint', '-1', '-1'),
	('smallint', 'int2 min', '-32768'),
	('smallint', 'int2 max', '32767'),

	('numeric', 'NULL', 'NULL'),
	('numeric', 'NaN', $$'NaN'$$),
	('numeric', 'infinity', $$'Infinity'$$),
	('numeric', '-1', '-1'),
	('numeric', '1e1000', '1e1000'),

	('double precision', 'NULL', 'NULL'),
	('double precision', 'NaN', $$'NaN'$$),
	('double precision', 'infinity', $$'Infinity'$$),
	('double precision', '-infinity', $$'-Infinity'$$),
	('double precision', '-0', $$'-0'$$),

	('boolean', 'NULL', 'NULL'),
	('boolean', 'true', 'true'),
	('boolean', 'false', 'false'),

	-- bytea: invalid UTF-8 (a lone byte, a truncated sequence, a surrogate,
	-- beyond U+10FFFF), a NUL byte, and sizes up to one byte more than the
	-- default idem.max_body_bytes (1 MB)
	('bytea', 'NULL', 'NULL'),
	('bytea', 'empty', $$'\x'$$),
	('bytea', 'NUL byte', $$'\x00'$$),
	('bytea', 'invalid UTF-8 \xff', $$'\xff'$$),
	('bytea', 'invalid UTF-8 \xc328', $$'\xc328'$$),
	('bytea', 'UTF-8 surrogate \xeda080', $$'\xeda080'$$),
	('bytea', 'beyond U+10FFFF \xf4908080', $$'\xf4908080'$$),
	('bytea', '256 B of \xff', $$decode(repeat('ff', 256), 'hex')$$),
	('bytea', '5 kB', $$decode(repeat('00ff', 2560), 'hex')$$),
	('bytea', '1 MB (the limit)', $$decode(repeat('ff', 1048576), 'hex')$$),
	('bytea', '1 MB + 1 B', $$decode(repeat('ff', 1048577), 'hex')$$),

	-- JSON: scalars where an object is expected, deep nesting, 1 MB, many
	-- keys, odd keys
	('jsonb', 'NULL', 'NULL'),
	('jsonb', 'JSON null', $$'null'$$),
	('jsonb', 'scalar string', $$'"scalar"'$$),
	('jsonb', 'scalar number', $$'-1e1000'$$),
	('jsonb', 'empty array', $$'[]'$$),
	('jsonb', 'array', $$'[1, "a", null, {}]'$$),
	('jsonb', 'non-string values', $$'{"a": [1, 2], "b": {"c": null}, "d": true}'$$),
	('jsonb', 'odd keys', $$'{"": "", "\u00e9\u20ac": "\ud83d\ude00", "a\u0001": "%s%n"}'$$),
	('jsonb', 'nested 1000 arrays', $$(repeat('[', 1000) || repeat(']', 1000))$$),
	('jsonb', 'nested 1000 objects', $$(repeat('{"a":', 1000) || '1' || repeat('}', 1000))$$),
	('jsonb', '1 MB value', $$jsonb_build_object('h', repeat('v', 1048576))$$),
	('jsonb', '10k keys', $$(SELECT jsonb_object_agg('k' || i, i) FROM generate_series(1, 10000) i)$$),
	('jsonb', '10k-element array', $$(SELECT jsonb_agg(i) FROM generate_series(1, 10000) i)$$),

	('json', 'NULL', 'NULL'),
	('json', 'scalar', $$'"scalar"'$$),
	('json', 'array', $$'[1, null]'$$),
	('json', 'duplicate keys', $$'{"a": 1, "a": 2}'$$),
	('json', 'nested 1000 arrays', $$(repeat('[', 1000) || repeat(']', 1000))$$),

	('timestamp with time zone', 'NULL', 'NULL'),
	('timestamp with time zone', 'infinity', $$'infinity'$$),
	('timestamp with time zone', '-infinity', $$'-infinity'$$),
	('timestamp with time zone', 'epoch', $$'epoch'$$),
	('timestamp with time zone', 'now', 'now()'),
	('timestamp with time zone', 'minimum', $$'4714-11-24 00:00:00+00 BC'$$),
	('timestamp with time zone', 'maximum', $$'294276-12-31 23:59:59.999999+00'$$),

	('timestamp without time zone', 'NULL', 'NULL'),
	('timestamp without time zone', 'infinity', $$'infinity'$$),
	('timestamp without time zone', '-infinity', $$'-infinity'$$),
	('timestamp without time zone', 'minimum', $$'4714-11-24 00:00:00 BC'$$),

	('date', 'NULL', 'NULL'),
	('date', 'infinity', $$'infinity'$$),
	('date', '-infinity', $$'-infinity'$$),

	-- roles: missing (oid 0, the highest oid), built-in, and one with an odd
	-- name that the suite creates
	('regrole', 'NULL', 'NULL'),
	('regrole', 'oid 0 (no role)', $$'-'$$),
	('regrole', 'missing oid 4294967295', $$4294967295::oid$$),
	('regrole', 'current_user', 'current_user::regrole'),
	('regrole', 'pg_monitor', $$'pg_monitor'$$),
	('regrole', 'pg_database_owner', $$'pg_database_owner'$$),
	('regrole', 'odd name', $$'"idem_badinput ""odd"" r' || chr(244) || 'le"'$$),

	('oid', 'NULL', 'NULL'),
	('oid', '0', '0'),
	('oid', '4294967295', '4294967295'),

	('name', 'NULL', 'NULL'),
	('name', 'empty', $$''$$),
	('name', '64 B (truncated to 63)', $$repeat('n', 64)$$),

	('uuid', 'NULL', 'NULL'),
	('uuid', 'nil', $$'00000000-0000-0000-0000-000000000000'$$);

--
-- The keys the calls are aimed at: one per state (the suite seeds them).
-- A function without a "key" argument runs in the first scenario only.
--
CREATE TABLE badinput.scenarios (
	ord		int PRIMARY KEY,
	name	text NOT NULL,
	key		text NOT NULL,
	owner	text			-- the owner token the calls pass by default
);
INSERT INTO badinput.scenarios VALUES
	(1, 'absent', 'bi-absent', NULL),
	(2, 'committed', 'bi-committed', NULL),
	(3, 'expired', 'bi-expired', NULL),
	(4, 'in flight, another live session', 'bi-session', NULL),
	(5, 'in flight, this session', 'bi-mine', NULL),
	(6, 'in flight, owner session gone', 'bi-orphan', NULL),
	(7, 'in flight, live lease (its token)', 'bi-lease', 'bi-lease-token'),
	(8, 'in flight, expired lease (its token)', 'bi-lease-expired', 'bi-lease-expired-token');

--
-- Harmless values: by argument name and type, else by type (name NULL).
-- wait_timeout is 0 so that a call never waits unless the hostile value is
-- the wait itself.
--
CREATE TABLE badinput.bases (
	name	text,
	type	regtype NOT NULL,
	expr	text NOT NULL,
	UNIQUE (name, type)
);
INSERT INTO badinput.bases VALUES
	('scope', 'text', $$''$$),
	('request_hash', 'text', 'NULL'),
	('ttl', 'interval', $$'1 hour'$$),
	('wait_timeout', 'interval', $$'0'$$),
	('lease', 'interval', 'NULL'),
	('status', 'integer', '200'),
	('body', 'bytea', $$'\x6f6b'$$),
	('headers', 'jsonb', $$'{}'$$),
	('method', 'text', $$'POST'$$),
	('path', 'text', $$'/badinput'$$),
	('batch_limit', 'integer', 'NULL'),
	('max_rows', 'integer', '10'),
	('state', 'text', 'NULL'),
	('older_than', 'interval', $$'5 minutes'$$),
	('pid', 'integer', 'pg_backend_pid()'),
	('started', 'timestamp with time zone', '(SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())'),
	('role', 'regrole', $$'idem_badinput_role'$$),
	('scopes', 'text[]', $$ARRAY['bi-scope']$$),
	('parts', 'text[]', $$ARRAY['a', 'b']$$),
	('logged', 'boolean', 'true'),
	(NULL, 'text', $$'badinput'$$),
	(NULL, 'text[]', $$ARRAY['badinput']$$),
	(NULL, 'interval', $$'1 hour'$$),
	(NULL, 'integer', '1'),
	(NULL, 'bigint', '1'),
	(NULL, 'smallint', '1'),
	(NULL, 'numeric', '1'),
	(NULL, 'double precision', '1'),
	(NULL, 'boolean', 'true'),
	(NULL, 'bytea', $$'\x00'$$),
	(NULL, 'jsonb', $$'{}'$$),
	(NULL, 'json', $$'{}'$$),
	(NULL, 'timestamp with time zone', 'now()'),
	(NULL, 'timestamp without time zone', 'localtimestamp'),
	(NULL, 'date', 'current_date'),
	(NULL, 'regrole', 'current_user::regrole'),
	(NULL, 'name', $$'badinput'$$),
	(NULL, 'uuid', $$'00000000-0000-0000-0000-000000000000'$$);

--
-- The extension's functions, with the reason each skipped one is skipped.
-- The suite runs as a superuser, so no function is out of reach for want
-- of a privilege; functions that only work for one particular role would
-- be listed in needs_role (none is at present).
--
CREATE TABLE badinput.needs_role (
	fn		regprocedure PRIMARY KEY,
	reason	text NOT NULL
);

CREATE FUNCTION badinput.functions(
	OUT fn oid, OUT signature text, OUT call_name text, OUT kind "char",
	OUT argnames text[], OUT argtypes regtype[], OUT is_variadic boolean,
	OUT skip_reason text)
RETURNS SETOF record
LANGUAGE sql STABLE
AS $$
	WITH f AS (
		SELECT p.*, format('%I.%I', n.nspname, p.proname) AS call_name
		  FROM pg_proc p
		  JOIN pg_namespace n ON n.oid = p.pronamespace
		  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass
						  AND d.objid = p.oid AND d.deptype = 'e'
		  JOIN pg_extension e ON e.oid = d.refobjid
							 AND d.refclassid = 'pg_extension'::regclass
		 WHERE e.extname = 'idempotency'
	), a AS (
		-- the input arguments (IN, INOUT, VARIADIC) in order
		SELECT f.oid,
			   array_agg(coalesce(x.name, '') ORDER BY x.ord) AS names,
			   array_agg(x.type::regtype ORDER BY x.ord) AS types
		  FROM f,
			   LATERAL unnest(coalesce(f.proallargtypes, f.proargtypes::oid[]),
							  coalesce(f.proargmodes,
									   array_fill('i'::"char", ARRAY[f.pronargs])),
							  f.proargnames)
					   WITH ORDINALITY AS x(type, mode, name, ord)
		 WHERE x.mode IN ('i', 'b', 'v')
		 GROUP BY f.oid
	)
	SELECT f.oid, f.oid::regprocedure::text, f.call_name, f.prokind,
		   coalesce(a.names, '{}'), coalesce(a.types, '{}'),
		   f.provariadic <> 0,
		   CASE
			   WHEN f.prorettype IN ('trigger'::regtype, 'event_trigger'::regtype)
				   THEN 'trigger function: only a trigger can call it'
			   WHEN f.prokind IN ('a', 'w')
				   THEN 'aggregate or window function'
			   WHEN f.prokind = 'p' AND f.proargmodes && ARRAY['o'::"char"]
				   THEN 'procedure with OUT arguments'
			   WHEN EXISTS (SELECT 1 FROM unnest(a.types) t
							  JOIN pg_type ty ON ty.oid = t
							 WHERE ty.typtype = 'p')
				   THEN 'an argument of a pseudo-type, which SQL cannot give'
			   ELSE (SELECT r.reason FROM badinput.needs_role r WHERE r.fn = f.oid)
		   END
	  FROM f LEFT JOIN a ON a.oid = f.oid
	 ORDER BY f.oid::regprocedure::text
$$;

-- The harmless value of argument NAME of type TYPE in scenario S.
CREATE FUNCTION badinput.base(name text, type regtype, s badinput.scenarios)
RETURNS text
LANGUAGE sql STABLE
AS $$
	SELECT CASE
		WHEN name = 'key' AND type = 'text'::regtype THEN quote_literal(s.key)
		WHEN name = 'owner' AND type = 'text'::regtype THEN quote_nullable(s.owner)
		ELSE coalesce((SELECT b.expr FROM badinput.bases b
						WHERE b.name = base.name AND b.type = base.type),
					  (SELECT b.expr FROM badinput.bases b
						WHERE b.name IS NULL AND b.type = base.type),
					  'NULL')
	END
$$;

--
-- The calls.  For a function of n arguments: in each scenario, each
-- argument in turn takes each hostile value of its type while the others
-- keep their base value; then all arguments NULL at once.  A function with
-- no argument is called once.  The same statement twice (a hostile key
-- makes the scenarios alike, except for the owner) is kept once.
--
CREATE FUNCTION badinput.calls(
	OUT fn oid, OUT n bigint, OUT scenario text, OUT argname text,
	OUT label text, OUT sql text)
RETURNS SETOF record
LANGUAGE plpgsql STABLE
AS $$
DECLARE
	f		record;
	s		badinput.scenarios;
	v		record;
	i		int;
	j		int;
	nargs	int;
	args	text[];
	stmt	text;
	seen	text[];
	k		bigint := 0;
BEGIN
	FOR f IN SELECT * FROM badinput.functions() x WHERE x.skip_reason IS NULL
	LOOP
		nargs := coalesce(array_length(f.argtypes, 1), 0);
		seen := '{}';
		FOR s IN SELECT * FROM badinput.scenarios x
				  WHERE 'key' = ANY (f.argnames) OR x.ord = 1
				  ORDER BY x.ord
		LOOP
			FOR i IN 0 .. nargs LOOP
				-- i = 0: every argument NULL (once per function)
				CONTINUE WHEN i = 0 AND (nargs = 0 OR s.ord <> 1);
				FOR v IN
					SELECT h.label, h.expr FROM badinput.hostile h
					 WHERE h.type = f.argtypes[i]
					UNION ALL
					-- a type with no hostile values gets NULL only
					SELECT 'NULL (no hostile values for this type)', 'NULL'
					 WHERE i > 0 AND NOT EXISTS (SELECT 1 FROM badinput.hostile h
												  WHERE h.type = f.argtypes[i])
					UNION ALL
					SELECT 'all NULL', 'NULL' WHERE i = 0
				LOOP
					args := '{}';
					FOR j IN 1 .. nargs LOOP
						args := args ||
							format('%s(%s)::%s',
								   CASE WHEN f.is_variadic AND j = nargs
										THEN 'VARIADIC ' ELSE '' END,
								   CASE WHEN j = i OR i = 0 THEN v.expr
										ELSE badinput.base(f.argnames[j], f.argtypes[j], s) END,
								   format_type(f.argtypes[j], NULL));
					END LOOP;
					stmt := format(CASE WHEN f.kind = 'p' THEN 'CALL %s(%s)'
										ELSE 'SELECT * FROM %s(%s)' END,
								   f.call_name, array_to_string(args, ', '));
					CONTINUE WHEN stmt = ANY (seen);
					seen := seen || stmt;
					k := k + 1;
					fn := f.fn;
					n := k;
					scenario := CASE WHEN 'key' = ANY (f.argnames) THEN s.name ELSE '-' END;
					argname := CASE WHEN i = 0 THEN '(all)'
									ELSE coalesce(nullif(f.argnames[i], ''), '$' || i) END;
					label := v.label;
					sql := stmt;
					RETURN NEXT;
				END LOOP;
			END LOOP;
		END LOOP;
		IF nargs = 0 THEN
			k := k + 1;
			fn := f.fn;
			n := k;
			scenario := '-';
			argname := '-';
			label := 'no arguments';
			sql := format(CASE WHEN f.kind = 'p' THEN 'CALL %s()'
							   ELSE 'SELECT * FROM %s()' END, f.call_name);
			RETURN NEXT;
		END IF;
	END LOOP;
END
$$;

--
-- What a rejected call must leave as it was: the rows of the key table and
-- of the confinement table, and the advisory locks this session holds.
--
CREATE FUNCTION badinput.tables_hash()
RETURNS text
LANGUAGE sql VOLATILE
AS $$
	SELECT md5(coalesce((SELECT string_agg(t::text, E'\n' ORDER BY t.scope, t.key)
						   FROM public.idem_keys t), '')
			   || E'\f' ||
			   coalesce((SELECT string_agg(c::text, E'\n' ORDER BY c.role::oid, c.scope)
						   FROM public.idem_confinement c), ''))
$$;

CREATE FUNCTION badinput.session_locks()
RETURNS text
LANGUAGE sql VOLATILE
AS $$
	SELECT coalesce(string_agg(format('%s/%s/%s/%s/%s', l.classid, l.objid,
									  l.objsubid, l.mode, l.granted),
							   ' ' ORDER BY l.classid, l.objid, l.objsubid, l.mode),
					'none')
	  FROM pg_locks l
	 WHERE l.pid = pg_backend_pid() AND l.locktype = 'advisory'
$$;
