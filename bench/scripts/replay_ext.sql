-- workload 2: replay of a committed key; extension
\set i random(1, :nkeys) * 100000
SELECT * FROM idem_reserve('k' || lpad(:i::text, 15, '0'), :hash);
