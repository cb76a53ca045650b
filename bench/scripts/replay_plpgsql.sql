-- workload 2: replay of a committed key; PL/pgSQL baseline
\set i random(1, :nkeys) * 100000
SELECT * FROM bl_reserve('k' || lpad(:i::text, 15, '0'), :hash);
