"""A cancel never stops sluice's own parameter sync instead of the client's query.

In transaction mode, a client linked to a pooled server whose settings differ from its own gets
them by sluice's set_config, pipelined ahead of its query. A cancel (the client's, query_timeout's,
a vanished client's) that reaches the backend while that set_config runs used to cancel it: the
error was swallowed and the client's query ran to its end under the other client's settings. On
Postgres a cancel stops the query the client sent, or nothing: never its settings.

The set_config is held running deterministically: default_text_search_config's check looks its
configuration up in pg_ts_config, and after a change to that row (ALTER ... OWNER) the backend's
cache misses and opens the catalog, which waits while the test holds an ACCESS EXCLUSIVE lock on
it. The test sees the wait in pg_stat_activity, sends the cancel, then lets the lock go."""

import contextlib

import psycopg
import pytest
from psycopg import errors

from conftest import APP_DB, APP_USER, Background, wait_until
from pgwire import query_msg, raw_login

CFG = "public.sync_cancel_cfg"
SLOW_QUERY = "SELECT pg_catalog.current_setting('default_text_search_config'), pg_sleep(20)"


@pytest.fixture
def ts_config(pg):
    with pg.superuser(APP_DB) as su:
        su.execute(f"DROP TEXT SEARCH CONFIGURATION IF EXISTS {CFG}")
        su.execute(f"CREATE TEXT SEARCH CONFIGURATION {CFG} (COPY = pg_catalog.simple)")
    yield CFG
    with pg.superuser(APP_DB) as su:
        su.execute(f"DROP TEXT SEARCH CONFIGURATION IF EXISTS {CFG}")


def run(conn, sql):
    return conn.execute(sql).fetchone()


@contextlib.contextmanager
def sync_held_running(pg):
    """While inside, a set_config of default_text_search_config (to a configuration none of the
    backends has looked up since) waits for the lock this holds on pg_ts_config."""
    with pg.superuser(APP_DB) as su:
        # a change to its row drops it from every backend's catalog cache (the same owner
        # again would change nothing)
        su.execute(f"ALTER TEXT SEARCH CONFIGURATION {CFG} OWNER TO {APP_USER}")
        su.execute(f"ALTER TEXT SEARCH CONFIGURATION {CFG} OWNER TO postgres")
        su.execute("BEGIN")
        su.execute("LOCK TABLE pg_catalog.pg_ts_config IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            su.execute("ROLLBACK")


def wait_for_sync_blocked(pg):
    def blocked():
        rows = pg.query(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND wait_event_type = 'Lock'"
            " AND query LIKE %s", [APP_USER, "%set_config('default_text_search_config'%"])
        return rows
    wait_until(blocked, 20, what="sluice's set_config waiting on pg_ts_config")


def linked_pair(start_sluice, main=None):
    """Sluice with one server in transaction mode; `other` has used it last (the server's
    default_text_search_config is the default), `mine` wants CFG at every link."""
    cfg = {"pool_mode": "transaction", "default_pool_size": 1}
    cfg.update(main or {})
    s = start_sluice(cfg)
    other = s.connect()
    mine = s.connect(options=f"-c default_text_search_config={CFG}")
    assert run(mine, "SHOW default_text_search_config") == (CFG,)
    assert run(other, "SHOW default_text_search_config") == ("pg_catalog.english",)
    return s, other, mine


def assert_cancelled_not_run_elsewhere(q, what):
    """The Postgres outcome: the query is cancelled (it sleeps 20 s, the cancel comes at once),
    and above all it never runs under another client's settings. One exception is known and
    left open: the deferred cancel is sent the moment sluice's statements are answered, and a
    backend that gets it while it reads the client's query (already in its socket) ignores it
    (postgres.c: a cancel during DoingCommandRead); the query then runs to its end, with the
    client's own settings. Seen once under ASan on a loaded machine; that outcome is accepted,
    any other is not."""
    err = q.error(timeout=60)
    if err is None:
        value = q.result(0)[0]
        if value == CFG:
            return  # the cancel lost at the query's start: see above
        pytest.fail(f"{what}: the query ran to its end instead of being cancelled, with "
                    f"default_text_search_config = {value!r} (the client's is {CFG!r})")
    assert isinstance(err, errors.QueryCanceled), f"{what}: expected 57014, got {err!r}"
    assert q.elapsed < 15, f"{what}: the cancel took {q.elapsed:.1f} s to land"


# Postgres 15 signals a cancelled backend twice (its pid, then its process group): when the first
# stopped sluice's set_config, the second sometimes still stopped the client's query. A few rounds
# make the wrong outcome show before the fix; with it, each round is the same.
ROUNDS = 4


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [1, 4])  # 4: the CancelRequest lands on any worker (5.5)
def test_client_cancel_during_sluice_sync_cancels_the_clients_query(start_sluice, pg, ts_config,
                                                                    workers):
    s, other, mine = linked_pair(start_sluice, {"workers": workers})
    with other, mine:
        for i in range(ROUNDS):
            assert run(other, "SELECT 1") == (1,)  # the server has the default again
            with sync_held_running(pg):
                q = Background(run, mine, SLOW_QUERY)
                wait_for_sync_blocked(pg)
                mark = s.mark()
                canceller = Background(mine.cancel)
                s.wait_for_log(r"cancel request", timeout=20, since=mark)
            assert_cancelled_not_run_elsewhere(q, f"round {i}: the client's cancel during "
                                                  "sluice's sync")
            canceller.result(timeout=30)
            # the session goes on, with its own settings
            assert run(mine, "SHOW default_text_search_config") == (CFG,)
        assert run(other, "SHOW default_text_search_config") == ("pg_catalog.english",)


@pytest.mark.timeout(300)
def test_query_timeout_during_sluice_sync_cancels_the_clients_query(start_sluice, pg, ts_config):
    s, other, mine = linked_pair(start_sluice, {"query_timeout": 1})
    with other, mine:
        for i in range(ROUNDS):
            assert run(other, "SELECT 1") == (1,)
            with sync_held_running(pg):
                mark = s.mark()
                q = Background(run, mine, SLOW_QUERY)
                wait_for_sync_blocked(pg)
                s.wait_for_log(r"query_timeout", timeout=20, since=mark)
            assert_cancelled_not_run_elsewhere(q, f"round {i}: query_timeout during sluice's "
                                                  "sync")
            assert run(mine, "SHOW default_text_search_config") == (CFG,)


@pytest.mark.timeout(120)
def test_client_vanishing_during_sluice_sync_has_its_query_cancelled_after_it(start_sluice, pg, ts_config):
    """A client that vanishes while its query waits behind sluice's sync, with
    server_drain_timeout = 0 (cancel at once): the server is given up (SERVER_LEAVING) with the
    cancel of its query deferred behind the sync; once the sync is answered the cancel goes to
    the query (which would otherwise run on under nobody's eyes), nothing dangles (the ASan
    build checks it), and the pool serves again."""
    s, other, mine = linked_pair(start_sluice, {"server_drain_timeout": 0})
    mine.close()
    with other:
        raw = raw_login(s.port, default_text_search_config=CFG)
        assert run(other, "SELECT 1") == (1,)  # the server has the default again
        with sync_held_running(pg):
            raw.send(query_msg(SLOW_QUERY))
            wait_for_sync_blocked(pg)
            mark = s.mark()
            raw.close_abruptly(reset=True)
            s.wait_for_log(r"closing: Connection reset", timeout=20, since=mark)
        s.wait_for_log(r"deferred cancel sent", timeout=20, since=mark)
        wait_until(lambda: not pg.query(
            "SELECT 1 FROM pg_stat_activity WHERE usename = %s AND state = 'active'"
            " AND query LIKE %s", [APP_USER, "%pg_sleep(20)%"]), 15,
            what="the vanished client's query to end")
        q = Background(run, other, "SELECT 1")
        assert q.result(timeout=30) == (1,)
        assert run(other, "SHOW default_text_search_config") == ("pg_catalog.english",)


@pytest.mark.timeout(120)
def test_cancel_waiting_behind_sync_is_answered_when_the_server_is_lost(start_sluice, pg,
                                                                        ts_config):
    """The cancel requester is answered, and nothing is left behind, when the server goes away
    while the cancel waits for sluice's sync."""
    s, other, mine = linked_pair(start_sluice)
    with other, mine:
        with sync_held_running(pg):
            q = Background(run, mine, SLOW_QUERY)
            wait_for_sync_blocked(pg)
            mark = s.mark()
            canceller = Background(mine.cancel)
            s.wait_for_log(r"cancel request", timeout=20, since=mark)
            pg.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"
                     " AND query LIKE %s", [APP_USER, "%set_config%"])
            canceller.result(timeout=30)
        err = q.error(timeout=30)
        assert isinstance(err, psycopg.OperationalError), f"expected the server's loss, got {err!r}"
        assert run(other, "SELECT 1") == (1,)
