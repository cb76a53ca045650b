--
-- Tenant confinement and resource limits
--
\pset null '<null>'

CREATE ROLE tenant_a;
CREATE ROLE tenant_b;
CREATE ROLE tenant_free;
SELECT idem_confine('tenant_a', 'acme');
SELECT idem_confine('tenant_b', 'globex', 'globex-eu');

-- keys of each tenant
SET ROLE tenant_a;
SELECT fresh FROM idem_reserve('order-1', 'h', scope => 'acme');
SELECT idem_commit('order-1', 'h', 200, 'acme secret'::bytea, scope => 'acme');
SELECT fresh FROM idem_reserve('order-2', scope => 'acme');
SET ROLE tenant_b;
SELECT fresh FROM idem_reserve('order-1', 'h', scope => 'globex');
SELECT idem_commit('order-1', 'h', 200, 'globex secret'::bytea, scope => 'globex');
SELECT fresh FROM idem_reserve('order-9', scope => 'globex-eu');
SELECT idem_release('order-9', 'globex-eu');

-- tenant_b cannot reserve, commit, release, get or purge in acme, and the
-- error is the same for a scope that holds keys and for one that does not
SELECT idem_reserve('order-1', 'h', scope => 'acme');
SELECT idem_commit('order-2', NULL, 200, 'x'::bytea, scope => 'acme');
SELECT idem_release('order-2', 'acme');
SELECT idem_get('order-1', 'acme');
SELECT idem_get('order-1', 'no-such-scope');
SELECT idem_reserve('order-1');
-- purge by a confined role touches its own scopes only
RESET ROLE;
SELECT fresh FROM idem_reserve('old', ttl => '10 milliseconds', scope => 'acme');
SELECT idem_commit('old', NULL, 200, 'x'::bytea, scope => 'acme');
SELECT fresh FROM idem_reserve('old', ttl => '10 milliseconds', scope => 'globex');
SELECT idem_commit('old', NULL, 200, 'x'::bytea, scope => 'globex');
SELECT pg_sleep(0.05);
SET ROLE tenant_b;
SELECT idem_purge();
RESET ROLE;
SELECT scope, key FROM idem_keys WHERE key = 'old' ORDER BY scope;
SELECT idem_purge();

-- a tenant's own calls work as before
SET ROLE tenant_a;
SELECT fresh, status, convert_from(body, 'UTF8') FROM idem_reserve('order-1', 'h', scope => 'acme');
SELECT idem_commit('order-2', NULL, 201, 'two'::bytea, scope => 'acme');
-- and a tenant cannot change the bindings
SELECT idem_confine('tenant_a', 'globex');
SELECT idem_unconfine('tenant_a');
INSERT INTO idem_confinement VALUES ('tenant_a', 'globex');

-- an unconfined role may use any scope
SET ROLE tenant_free;
SELECT status, convert_from(body, 'UTF8') FROM idem_get('order-1', 'acme');
RESET ROLE;

-- bindings take effect in sessions that already looked them up
SET ROLE tenant_a;
SELECT idem_get('order-1', 'globex') IS NOT NULL AS sees_globex;
RESET ROLE;
SELECT idem_confine('tenant_a', 'globex');
SET ROLE tenant_a;
SELECT status FROM idem_get('order-1', 'globex');
RESET ROLE;
SELECT idem_unconfine('tenant_a', 'globex');
SET ROLE tenant_a;
SELECT idem_get('order-1', 'globex');
RESET ROLE;
-- unconfined entirely: any scope
SELECT idem_unconfine('tenant_a');
SET ROLE tenant_a;
SELECT status FROM idem_get('order-1', 'globex');
RESET ROLE;
SELECT role, scope FROM idem_confinement ORDER BY 1, 2;

--
-- Resource limits: the error, and nothing left behind
--
CREATE TEMP TABLE before AS SELECT * FROM idem_keys;
-- key and scope at most 255 bytes, request hash at most 1024
SELECT idem_reserve(repeat('k', 256));
SELECT idem_reserve('k', scope => repeat('s', 256));
SELECT idem_reserve('k', repeat('h', 1025));
SELECT fresh FROM idem_reserve('limits', repeat('h', 1024));
-- ttl between 1 microsecond and idem.max_ttl (default 366 days)
SHOW idem.max_ttl;
SELECT idem_reserve('k', ttl => '367 days');
SET idem.max_ttl = '1h';
SELECT idem_reserve('k', ttl => '2 hours');
RESET idem.max_ttl;
-- headers at most idem.max_header_bytes (default 64kB), body at most
-- idem.max_body_bytes
SHOW idem.max_header_bytes;
SELECT idem_commit('limits', repeat('h', 1024), 200, 'x'::bytea,
                   jsonb_build_object('x', repeat('v', 70000)));
SET idem.max_header_bytes = 100;
SELECT idem_commit('limits', repeat('h', 1024), 200, 'x'::bytea,
                   jsonb_build_object('x', repeat('v', 100)));
RESET idem.max_header_bytes;
SET idem.max_body_bytes = 100;
SELECT idem_commit('limits', repeat('h', 1024), 200, convert_to(repeat('b', 101), 'UTF8'));
RESET idem.max_body_bytes;
SELECT state, status FROM idem_get('limits');
-- the limits that protect the server are not for users to raise
SET ROLE tenant_free;
SET idem.max_ttl = '10 years';
SET idem.max_header_bytes = '1GB';
RESET ROLE;
SELECT count(*) FROM (SELECT * FROM idem_keys EXCEPT SELECT * FROM before) changed;
SELECT idem_release('limits');

DELETE FROM idem_keys WHERE scope IN ('acme', 'globex', 'globex-eu');
DROP ROLE tenant_a;
DROP ROLE tenant_b;
DROP ROLE tenant_free;
