-- replay of one of 10000 committed keys
\set n random(1, 10000)
SELECT status, body FROM idem_reserve('r-' || :n::text);
