-- scripts/bench temp-path-c16: a transaction whose search_path names pg_temp (PostgREST-like
-- set_config, local to the transaction), so a plain CREATE in it would make a temporary table:
-- sluice resets the server's temporary objects after each such transaction.
\set aid random(1, 100000)
BEGIN;
SELECT set_config('search_path', 'pg_temp, public', true);
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
END;
