--
-- idem_derive_key and idem_request_hash: length-framed SHA-256
--

-- the framing: 8-byte big-endian length, then the bytes, for each part
SELECT idem_request_hash('POST', '/charges', '{"amount":100}'::bytea)
     = encode(sha256('\x0000000000000004'::bytea || 'POST'::bytea ||
                     '\x0000000000000008'::bytea || '/charges'::bytea ||
                     '\x000000000000000e'::bytea || '{"amount":100}'::bytea),
              'hex') AS framing_matches;
SELECT idem_request_hash('POST', '/charges', '{"amount":100}'::bytea);

-- a NULL body is the empty body
SELECT idem_request_hash('DELETE', '/charges/1', NULL)
     = idem_request_hash('DELETE', '/charges/1', ''::bytea) AS null_is_empty;
SELECT idem_request_hash('', '', NULL)
     = encode(sha256('\x000000000000000000000000000000000000000000000000'::bytea), 'hex')
       AS three_empty_parts;

-- no normalisation: case, slashes and bytes matter
SELECT idem_request_hash('post', '/charges', NULL) = idem_request_hash('POST', '/charges', NULL) AS same_case;
SELECT idem_request_hash('POST', '/charges/', NULL) = idem_request_hash('POST', '/charges', NULL) AS same_slash;
SELECT idem_request_hash('POST', '/x', '\x00ff'::bytea) = idem_request_hash('POST', '/x', '\x00fe'::bytea) AS same_bytes;

-- parts are framed, so moving a byte between parts changes the hash
SELECT idem_derive_key('a', 'bc') = idem_derive_key('ab', 'c') AS a_bc_is_ab_c;
SELECT idem_derive_key('a', 'bc'), idem_derive_key('ab', 'c');
SELECT idem_request_hash('PO', 'ST/x', NULL) = idem_request_hash('POST', '/x', NULL) AS shifted;

-- derive_key: deterministic, any number of parts, the empty string is a part
SELECT idem_derive_key('run-42', 'charge') = idem_derive_key('run-42', 'charge') AS deterministic;
SELECT idem_derive_key('run-42', 'charge')
     = encode(sha256('\x0000000000000006'::bytea || 'run-42'::bytea ||
                     '\x0000000000000006'::bytea || 'charge'::bytea), 'hex') AS framing_matches;
SELECT idem_derive_key('x') = encode(sha256('\x0000000000000001'::bytea || 'x'::bytea), 'hex') AS one_part;
SELECT idem_derive_key('a', '') = idem_derive_key('a') AS empty_part_counts;
SELECT idem_derive_key('') = encode(sha256('\x0000000000000000'::bytea), 'hex') AS empty_part;
SELECT idem_derive_key(VARIADIC ARRAY[]::text[]) = encode(sha256(''::bytea), 'hex') AS no_parts;
SELECT idem_derive_key(VARIADIC ARRAY['run-42', 'charge']) = idem_derive_key('run-42', 'charge') AS variadic_array;
-- text parts are hashed as their bytes in the database encoding (UTF8 here)
SELECT idem_derive_key('é') = encode(sha256('\x0000000000000002c3a9'::bytea), 'hex') AS utf8_bytes;
SELECT length(idem_derive_key('a')), idem_derive_key('a') ~ '^[0-9a-f]{64}$' AS lowercase_hex;

-- NULLs are bad input
SELECT idem_derive_key('a', NULL);
SELECT idem_derive_key(VARIADIC NULL::text[]);
SELECT idem_request_hash(NULL, '/x', NULL);
SELECT idem_request_hash('POST', NULL, NULL);
