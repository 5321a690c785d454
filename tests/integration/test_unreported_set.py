"""A client's SET of a parameter Postgres does not report (search_path, statement_timeout,
default_transaction_isolation, work_mem, lock_timeout, a custom app.x) in transaction mode: sluice
reads its value back at the end of the transaction it ran in and gives it to every backend the
client gets later, and sets another client's backend back (docs/pool-modes.md, "SET of a
parameter Postgres does not report").

Postgres is the oracle: each program runs once directly and once through sluice, with a pool of
one or two servers that other clients take between the steps, and after each step the values of
every name must be Postgres's own. The other clients must always see the defaults."""

import contextlib

import psycopg
import pytest

from conftest import APP_PASSWORD
from pgwire import (bind_msg, execute_msg, parse_msg, query_msg, raw_login, sync_msg)
from test_driver_modes import Churn

NAMES = ["search_path", "statement_timeout", "default_transaction_isolation", "work_mem",
         "lock_timeout", "app.x"]
# A placeholder (app.x) a backend never saw is NULL to current_setting(name, true); one it saw is
# '' after a RESET, whoever set it: its existence is not a value (docs/pool-modes.md).
PROBE = "SELECT " + ", ".join(
    f"coalesce(current_setting('{n}', true), '')" if "." in n else f"current_setting('{n}')"
    for n in NAMES)


def probe(conn):
    return conn.execute(PROBE).fetchone()


def simple(conn, sql):
    """sql as one simple-protocol Query (several statements allowed)."""
    with psycopg.ClientCursor(conn) as cur:
        cur.execute(sql)


def rows(conn, sql):
    cur = conn.execute(sql)
    return cur.fetchall() if cur.description else None


def in_pipeline(conn, *sqls):
    """psycopg's pipeline mode: every statement sent before any answer is read."""
    with conn.pipeline():
        curs = [conn.execute(sql) for sql in sqls]
    return [c.fetchall() if c.description else None for c in curs]


# Each step: (what it does, a function of the connection returning what the client saw).
PROGRAM = [
    ("SET search_path = ''", lambda c: rows(c, "SET search_path = ''")),
    ("SET statement_timeout with units", lambda c: rows(c, "SET statement_timeout = '2min'")),
    ("a custom placeholder with a quote and a comma",
     lambda c: rows(c, "SET app.x = 'a,b''c'")),
    ("SET in BEGIN..COMMIT", lambda c: [rows(c, "BEGIN"), rows(c, "SET work_mem = '8MB'"),
                                        rows(c, PROBE), rows(c, "COMMIT")]),
    ("SET in BEGIN..ROLLBACK", lambda c: [rows(c, "BEGIN"), rows(c, "SET lock_timeout = '3s'"),
                                          rows(c, PROBE), rows(c, "ROLLBACK")]),
    ("SET LOCAL in a transaction", lambda c: [rows(c, "BEGIN"),
                                              rows(c, "SET LOCAL work_mem = '16MB'"),
                                              rows(c, PROBE), rows(c, "COMMIT")]),
    ("set_config(.., false)",
     lambda c: rows(c, "SELECT set_config('default_transaction_isolation', 'serializable', "
                       "false)")),
    ("set_config(.., true)", lambda c: rows(c, "SELECT set_config('lock_timeout', '7s', true)")),
    ("set_config with a bound value",
     lambda c: c.execute("SELECT set_config('app.x', %s, false)", ["b,'d"]).fetchall()),
    ("a savepoint rolled back", lambda c: [rows(c, "BEGIN"), rows(c, "SAVEPOINT s"),
                                           rows(c, "SET lock_timeout = '9s'"),
                                           rows(c, "ROLLBACK TO SAVEPOINT s"),
                                           rows(c, "COMMIT")]),
    ("a savepoint released", lambda c: [rows(c, "BEGIN"), rows(c, "SAVEPOINT s"),
                                        rows(c, "SET lock_timeout = '11s'"),
                                        rows(c, "RELEASE SAVEPOINT s"), rows(c, "COMMIT")]),
    ("a failed transaction", lambda c: [rows(c, "BEGIN"), rows(c, "SET work_mem = '32MB'"),
                                        failing(c, "SELECT 1/0"), rows(c, "ROLLBACK")]),
    ("RESET name", lambda c: rows(c, "RESET statement_timeout")),
    ("SET name TO DEFAULT", lambda c: rows(c, "SET search_path TO DEFAULT")),
    ("a quoted schema name", lambda c: rows(c, 'SET search_path = "my schema", public')),
    ("several SETs in one simple Query",
     lambda c: simple(c, "SET statement_timeout = 1500; SET lock_timeout = '1min'; "
                         "SET app.x = 'q'")),
    ("RESET ALL", lambda c: rows(c, "RESET ALL")),
    ("SET again after RESET ALL", lambda c: simple(c, "SET app.x = 'z'; SET work_mem = '1MB'")),
    ("DISCARD ALL", lambda c: rows(c, "DISCARD ALL")),
    ("pipelined behind the SET",
     lambda c: in_pipeline(c, "SET search_path = pg_catalog", "SHOW search_path",
                           "SET app.x = 'piped'", "SELECT current_setting('app.x')")),
    ("SET SESSION",
     lambda c: rows(c, "SET SESSION default_transaction_isolation = 'repeatable read'")),
    ("a SET that fails", lambda c: failing(c, "SET work_mem = 'lots'")),
]


def failing(conn, sql):
    try:
        conn.execute(sql)
    except psycopg.Error as e:
        return e.sqlstate
    return None


def run_program(dsn, between):
    seen = []
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        for what, step in PROGRAM:
            seen.append((what, step(conn)))
            between()
            seen.append((what, probe(conn)))
            between()
    return seen


@contextlib.contextmanager
def others_see_defaults(dsn, defaults):
    """A client that takes a server after each step and must find the defaults there."""
    conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
    failures = []

    def check():
        got = probe(conn)
        if got != defaults:
            failures.append(got)

    try:
        yield check
    finally:
        conn.close()
    assert not failures, f"another client saw the program's values: {failures}"


# Login values of some of the names: RESET, RESET ALL and DISCARD ALL give them back (login_reset),
# and the read back after them sees them.
LOGIN_OPTIONS = "-c statement_timeout=1234 -c search_path=evil -c app.x=login"


@pytest.mark.parametrize("pool_size,options", [(1, None), (2, None), (2, LOGIN_OPTIONS)],
                         ids=["one-server", "two-servers-churn", "two-servers-login-values"])
@pytest.mark.timeout(180)
def test_unreported_sets_are_kept_as_postgres_keeps_them(pg, start_sluice, pool_size, options):
    with pg.superuser("appdb") as su:
        su.execute('CREATE SCHEMA IF NOT EXISTS "my schema" AUTHORIZATION app')
    login = {"options": options} if options else {}
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as fresh:
        defaults = probe(fresh)
    want = run_program(pg.direct_dsn(**login), lambda: None)
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": pool_size})
    with others_see_defaults(s.dsn(), defaults) as check, \
            Churn(s.dsn()) if pool_size > 1 else contextlib.nullcontext():
        got = run_program(s.dsn(**login), check)
    for w, g in zip(want, got):
        assert g == w, f"after {w[0]!r}"


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_a_set_outside_a_transaction_reaches_the_next_backend(start_sluice, mode):
    """Statement mode gives every statement its own lease: the SET is read back the same way."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as a, s.connect() as b:
        a.execute("SET search_path = ''")
        a.execute("SET statement_timeout = '2s'")
        assert b.execute("SELECT current_setting('search_path'), "
                         "current_setting('statement_timeout')").fetchone() == \
            ('"$user", public', "0")
        assert a.execute("SELECT current_setting('search_path'), "
                         "current_setting('statement_timeout')").fetchone() == ('""', "2s")


def transcript(conn, data, ready):
    """Every message the client receives for the requests in data, up to their `ready`
    ReadyForQuery messages."""
    conn.send(data)
    out = []
    while ready:
        mtype, payload = conn.read_message()
        out.append((mtype, payload))
        ready -= mtype == "Z"
    return out


# Raw requests pipelined in one write behind a SET: simple Queries and extended batches.
RAW_STEPS = [
    (query_msg("SET app.x = 'raw1'") + query_msg("SHOW app.x") +
     query_msg("SET search_path = 'a b', public") + query_msg("SHOW search_path"), 4),
    (parse_msg("", "SET statement_timeout = '3s'") + bind_msg("", "") + execute_msg() +
     sync_msg() + parse_msg("", "SHOW statement_timeout") + bind_msg("", "") + execute_msg() +
     sync_msg(), 2),
    (query_msg("BEGIN") + query_msg("SET work_mem = '5MB'") + query_msg("COMMIT") +
     query_msg("SHOW work_mem"), 4),
    (query_msg("SET lock_timeout = 100; SELECT 1/0") + query_msg("SHOW lock_timeout"), 2),
    (query_msg("RESET ALL") + query_msg("SHOW app.x"), 2),
]


def raw_program(conn, between):
    seen = []
    for data, ready in RAW_STEPS:
        seen.append(transcript(conn, data, ready))
        between()
        seen.append(transcript(conn, query_msg(PROBE), 1))
    return seen


def test_raw_pipelined_requests_behind_a_set_see_what_postgres_shows(pg, start_sluice):
    direct = raw_login(pg.port, password=APP_PASSWORD)
    try:
        want = raw_program(direct, lambda: None)
        defaults = tuple(direct.query(PROBE)[0][0])
    finally:
        direct.close()
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    pooled = raw_login(s.port)
    try:
        with others_see_defaults(s.dsn(), defaults) as check:
            got = raw_program(pooled, check)
    finally:
        pooled.close()
    for i, (w, g) in enumerate(zip(want, got)):
        assert g == w, f"step {i}"


# ---- a hostile client: many distinct names ----------------------------------------------------

TRACKED_MAX = 64  # SET_TRACKED_MAX in src/core/login_reset.h


def count_set(conn, n):
    return conn.execute(
        "SELECT count(*) FROM generate_series(0, %s) g "
        "WHERE coalesce(current_setting('app.x' || g, true), '') <> ''", [n]).fetchone()[0]


@pytest.mark.timeout(180)
def test_many_distinct_names_stay_within_the_bound(start_sluice):
    """A client SETting hundreds of custom placeholders, one Query each and thousands in one
    transaction: sluice follows the first SET_TRACKED_MAX (warn: the rest are lost, as before,
    with a warning), a lease sends at most that many SETs, and no other client sees any."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "log_level": "debug"})
    alone, in_block = 300, 3000
    with s.connect() as a, s.connect() as b:
        for i in range(alone):
            a.execute(f"SET app.x{i} = 'v{i}'")
        with a.transaction():
            for i in range(alone, alone + in_block):
                a.execute(f"SET app.x{i} = 'v{i}'")
        assert count_set(b, alone + in_block) == 0, "another client saw the hostile one's names"
        mark = s.mark()
        assert count_set(a, alone + in_block) == TRACKED_MAX
        syncs = [line for line in s.log_since(mark) if "set_config('app.x" in line]
        assert len(syncs) == TRACKED_MAX, syncs[:3]
        # the ones followed are the first ones, with their values
        assert a.execute("SELECT current_setting('app.x0'), current_setting('app.x63'), "
                         "current_setting('app.x64', true)").fetchone() == ("v0", "v63", "")
        assert count_set(b, alone + in_block) == 0
        # RESET ALL: every placeholder is '' (as in Postgres), and the names followed are free
        a.execute("RESET ALL")
        assert count_set(a, alone + in_block) == 0
        for i in range(TRACKED_MAX):
            a.execute(f"SET app.y{i} = 'w{i}'")
        assert b.execute("SELECT current_setting('app.y0', true)").fetchone()[0] in ("", None)
        assert a.execute(f"SELECT current_setting('app.y{TRACKED_MAX - 1}')").fetchone() == \
            (f"w{TRACKED_MAX - 1}",)
    s.wait_for_log(r"sluice follows at most 64 per client", timeout=30)


def test_past_the_bound_refuse_refuses_the_set(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "session_state_policy": "refuse"})
    with s.connect() as a, s.connect() as b:
        for i in range(TRACKED_MAX):
            a.execute(f"SET app.x{i} = 'v{i}'")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            a.execute(f"SET app.x{TRACKED_MAX} = 'over'")
        a.execute("SET app.x0 = 'again'")  # a name already followed is no new one
        assert count_set(b, TRACKED_MAX) == 0
        assert count_set(a, TRACKED_MAX) == TRACKED_MAX
        assert a.execute("SELECT current_setting('app.x0')").fetchone() == ("again",)


# ---- the role is not followed -------------------------------------------------------------------



def who(conn):
    return conn.execute("SELECT current_user, current_setting('search_path')").fetchone()


def test_set_role_stays_under_the_policy_and_never_reaches_another_client(
        start_sluice, app_may_become_app2):
    """SET ROLE is not followed (session_state_policy; the backend gets DISCARD ALL before it
    serves again): no client ever runs as another's role, the followed search_path stays the
    client's, and SET ROLE NONE / RESET ROLE run as in Postgres."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as a, s.connect() as b:
        a.execute("SET search_path = 'mine'")
        a.execute("SET ROLE app2")
        assert who(b) == ("app", '"$user", public')
        assert who(a) == ("app", "mine")
        with a.transaction():
            a.execute("SET ROLE app2")
            assert who(a) == ("app2", "mine")
            a.execute("SET ROLE NONE")
            assert who(a) == ("app", "mine")
            a.execute("SET ROLE app2")
            a.execute("RESET ROLE")
            assert who(a) == ("app", "mine")
        assert who(b) == ("app", '"$user", public')
        assert who(a) == ("app", "mine")


def test_a_value_too_long_to_carry_gives_the_default_not_an_older_value(start_sluice):
    """A value longer than half of pkt_buf is not carried (its row would not fit sluice's
    buffer): the client's next backend gives it the default, never the value it replaced, and
    the log names the parameter."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as a, s.connect() as b:
        a.execute("SET app.x = 'old'")
        a.execute("SELECT set_config('app.x', repeat('y', 20000), false)")
        assert b.execute("SELECT coalesce(current_setting('app.x', true), '')").fetchone() == \
            ("",)
        assert a.execute("SELECT coalesce(current_setting('app.x', true), '')").fetchone() == \
            ("",)
        a.execute("SET app.x = 'short'")
        assert b.execute("SELECT 1").fetchone() == (1,)
        assert a.execute("SELECT current_setting('app.x')").fetchone() == ("short",)
    s.wait_for_log(r"the value the client SET for app\.x is longer than 8192 bytes", timeout=30)
