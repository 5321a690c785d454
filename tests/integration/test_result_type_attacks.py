"""Attacks on sluice's check of a prepared statement's result type after DDL (stmt_track.c,
docs/pool-modes.md "A statement's result type after DDL"), as careless and hostile clients make
them, Postgres as the oracle where the behaviour is transparent."""

from psycopg import pq  # noqa: F401

from test_driver_modes import compare_clients, libpq_pipeline, on_another_backend

ALTER_TO_TEXT = "ALTER TABLE {t} ALTER COLUMN v TYPE text USING 'abc' || v"


def error_then_wait(p):
    """A batch whose first request fails, then a use of q that needs q prepared again on this
    backend (sluice's Parse and Describe, skipped by the server after the error), then a
    batch that uses q again."""
    return libpq_pipeline(p, [
        [lambda q: q.send_query_params(b"SELECT 1/0", None),
         lambda q: q.send_query_prepared(b"q", [b"1"])],
        [lambda q: q.send_query_prepared(b"q", [b"1"])],
        [lambda q: q.send_query_params(b"SELECT 42", None)]])


def test_a_use_after_a_failed_batch_that_skipped_the_prepare_again(pg, start_sluice, table):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2})
    for alter in (ALTER_TO_TEXT, "SELECT 1 FROM {t}"):
        steps = on_another_backend(table, alter.format(t=table),
                                   [(0, "A's pipeline", error_then_wait)])
        compare_clients(pg, s, table, steps)
