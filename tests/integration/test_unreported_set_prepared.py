"""A SET of a parameter Postgres does not report inside a named prepared statement, in
transaction mode: the statement SETs at each Bind, in later requests, as drivers that prepare do
(psycopg prepare=True, pgjdbc, asyncpg: `SELECT set_config('search_path', $1, false)` prepared
once and run with different values). sluice notes the names at each Bind (and SQL EXECUTE) of
the statement and reads their values back at the end of the transaction it ran in, as for a SET
in a Query (docs/pool-modes.md), whichever backend it was prepared again on.

Postgres is the oracle: each program runs directly and through sluice, with one server or two
that other clients take between the steps, and after each step the values must be Postgres's.
The other clients must always see the defaults."""

import contextlib

import psycopg
import pytest

from pgwire import bind_msg, close_msg, execute_msg, parse_msg, query_msg, raw_login, sync_msg
from test_driver_modes import Churn
from test_unreported_set import PROBE, others_see_defaults, probe, transcript


def prepared(conn, sql, value):
    return conn.execute(sql, [value], prepare=True).fetchall()


SET_PATH = "SELECT set_config('search_path', %s, false)"
SET_TIMEOUT = "SELECT set_config('statement_timeout', %s, false)"
SET_X = "SELECT set_config('app.x', %s, false)"

PROGRAM = [
    ("search_path a", lambda c: prepared(c, SET_PATH, "a, public")),
    ("search_path b", lambda c: prepared(c, SET_PATH, "pg_catalog")),
    ("statement_timeout", lambda c: prepared(c, SET_TIMEOUT, "5s")),
    ("search_path again", lambda c: prepared(c, SET_PATH, "b, public")),
    ("a custom placeholder", lambda c: prepared(c, SET_X, "one")),
    ("in a transaction", lambda c: [c.execute("BEGIN").statusmessage,
                                    prepared(c, SET_TIMEOUT, "7s"),
                                    prepared(c, SET_X, "two"),
                                    c.execute("COMMIT").statusmessage]),
    ("rolled back", lambda c: [c.execute("BEGIN").statusmessage,
                               prepared(c, SET_TIMEOUT, "9s"),
                               c.execute("ROLLBACK").statusmessage]),
    ("timeout again", lambda c: prepared(c, SET_TIMEOUT, "11s")),
]


def run_program(dsn, between):
    seen = []
    # prepare=True prepares whatever the threshold; None would turn preparing off
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=1000) as conn:
        for what, step in PROGRAM:
            seen.append((what, step(conn)))
            between()
            seen.append((what, probe(conn)))
            between()
    return seen


@pytest.mark.parametrize("pool_size", [1, 2], ids=["one-server", "two-servers-churn"])
@pytest.mark.timeout(180)
def test_a_driver_preparing_set_config_keeps_each_value_as_postgres(pg, start_sluice, pool_size):
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as fresh:
        defaults = probe(fresh)
    want = run_program(pg.direct_dsn(), lambda: None)
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": pool_size})
    with others_see_defaults(s.dsn(), defaults) as check, \
            Churn(s.dsn()) if pool_size > 1 else contextlib.nullcontext():
        got = run_program(s.dsn(), check)
    for w, g in zip(want, got):
        assert g == w, f"after {w[0]!r}"


def run_bind(stmt, *params):
    return bind_msg("", stmt, params) + execute_msg() + sync_msg()


# Raw requests: a named SET prepared in one request and bound in later ones; closed, DEALLOCATEd,
# prepared again under its name.
RAW_STEPS = [
    (parse_msg("s1", "SET statement_timeout = '5s'") + sync_msg(), 1),
    (run_bind("s1"), 1),
    (query_msg("SET statement_timeout = '1s'"), 1),
    (run_bind("s1"), 1),
    (parse_msg("s2", "SELECT set_config('search_path', $1, false)") + sync_msg(), 1),
    (run_bind("s2", "pg_catalog"), 1),
    (run_bind("s2", "x, public"), 1),
    (query_msg("BEGIN") + run_bind("s1") + query_msg("SET statement_timeout = '2s'")
     + run_bind("s2", "y") + query_msg("COMMIT"), 4),
    (query_msg("BEGIN") + run_bind("s2", "z") + query_msg("ROLLBACK"), 3),
    (close_msg("S", "s1") + sync_msg(), 1),
    (run_bind("s1"), 1),
    (parse_msg("s1", "SET statement_timeout = '7s'") + sync_msg(), 1),
    (run_bind("s1"), 1),
    (query_msg("DEALLOCATE s2"), 1),
    (run_bind("s2", "w"), 1),
    (parse_msg("s2", "SELECT set_config('app.x', $1, false)") + run_bind("s2", "v"), 1),
]


def raw_program(conn, between):
    seen = []
    for data, ready in RAW_STEPS:
        seen.append(transcript(conn, data, ready))
        between()
        seen.append(transcript(conn, query_msg(PROBE), 1))
        between()
    return seen


@pytest.mark.parametrize("pool_size", [1, 2], ids=["one-server", "two-servers-churn"])
@pytest.mark.timeout(180)
def test_a_raw_named_set_bound_in_later_requests_keeps_each_value_as_postgres(pg, start_sluice,
                                                                               pool_size):
    from conftest import APP_PASSWORD
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as fresh:
        defaults = probe(fresh)
    direct = raw_login(pg.port, password=APP_PASSWORD)
    try:
        want = raw_program(direct, lambda: None)
    finally:
        direct.close()
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": pool_size})
    pooled = raw_login(s.port)
    try:
        with others_see_defaults(s.dsn(), defaults) as check, \
                Churn(s.dsn()) if pool_size > 1 else contextlib.nullcontext():
            got = raw_program(pooled, check)
    finally:
        pooled.close()
    for i, (w, g) in enumerate(zip(want, got)):
        assert g == w, f"step {i // 2}{' (probe)' if i % 2 else ''}"


STATEMENTS = 20


def test_many_named_statements_that_set_are_each_followed_and_meet_no_policy(start_sluice):
    """Twenty prepared set_config statements, under session_state_policy = refuse: none is
    refused, each value is followed, and the other client sees none of them."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "session_state_policy": "refuse"})
    with psycopg.connect(s.dsn(), autocommit=True, prepare_threshold=1000) as a, \
            s.connect() as b:
        for i in range(STATEMENTS):
            prepared(a, f"SELECT set_config('app.p{i}', %s, false)", f"v{i}")
        # the first statement runs again with another value, and is followed
        prepared(a, "SELECT set_config('app.p0', %s, false)", "again")
        probe_sql = "SELECT " + ", ".join(
            f"coalesce(current_setting('app.p{i}', true), '')" for i in range(STATEMENTS))
        assert b.execute(probe_sql).fetchone() == ("",) * STATEMENTS
        assert a.execute(probe_sql).fetchone() == ("again",) + tuple(
            f"v{i}" for i in range(1, STATEMENTS))
