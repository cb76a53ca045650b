-- workload 1 (and 5, 6): reserve + commit of a fresh key, autocommit; PL/pgSQL baseline
\set n random(1, :maxkey)
SELECT fresh, attempt FROM bl_reserve('k' || lpad(:n::text, 15, '0'), :hash);
SELECT bl_commit('k' || lpad(:n::text, 15, '0'), :hash, 201, '\x7b226964223a2263685f303030303030303030303031222c22616d6f756e74223a3130302c22637572223a22657572227d'::bytea, '{"content-type": ["application/json"]}'::jsonb);
