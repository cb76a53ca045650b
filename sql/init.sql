--
-- Installing the extension: its objects, and what PUBLIC may touch
--
CREATE EXTENSION idempotency;

-- every object the extension owns
SELECT pg_describe_object(classid, objid, objsubid) AS object
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'idempotency')
   AND deptype = 'e'
 ORDER BY 1;

-- the key table is logged, dumped by pg_dump, and closed to PUBLIC
SELECT relpersistence, relacl FROM pg_class WHERE relname = 'idem_keys';
SELECT extconfig::regclass[] FROM pg_extension WHERE extname = 'idempotency';

-- the module needs no shared_preload_libraries
SHOW shared_preload_libraries;

-- settings and their defaults
SHOW idem.default_ttl;
SHOW idem.wait_timeout;
SHOW idem.max_body_bytes;
