"""Session, transaction and statement pooling: who gets which server, and when."""

import time

import psycopg
import pytest
from psycopg import errors, pq

from conftest import Background, BackendSampler
from pgwire import query_msg, raw_login


def pid_of(conn):
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


# ---- session mode ------------------------------------------------------------------------------


def test_session_mode_set_survives_within_a_session(start_sluice):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 2})
    with s.connect() as c:
        c.execute("SET work_mem = '7MB'")
        pid = pid_of(c)
        for _ in range(3):
            assert c.execute("SHOW work_mem").fetchone()[0] == "7MB"
            assert pid_of(c) == pid


def test_session_mode_next_client_reuses_the_backend_after_reset(start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    with s.connect() as a:
        default_work_mem = a.execute("SHOW work_mem").fetchone()[0]
        a.execute("SET work_mem = '7MB'")
        a.execute("CREATE TEMP TABLE scratch (x int)")
        a.execute("PREPARE p1 AS SELECT 1")
        a.execute("LISTEN some_channel")
        pid_a = pid_of(a)
    with s.connect() as b:
        assert pid_of(b) == pid_a, "pool_size=1: the second client should get the same backend"
        assert b.execute("SHOW work_mem").fetchone()[0] == default_work_mem, \
            "server_reset_query (DISCARD ALL) did not run: the SET leaked to the next client"
        assert b.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0
        assert b.execute("SELECT count(*) FROM pg_listening_channels()").fetchone()[0] == 0
        assert b.execute("SELECT to_regclass('pg_temp.scratch')").fetchone()[0] is None


def test_session_mode_keeps_one_backend_per_connected_client(start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 3})
    conns = [s.connect() for _ in range(3)]
    try:
        pids = {pid_of(c) for c in conns}
        assert len(pids) == 3
        for c in conns:  # each client keeps its backend between statements
            assert pid_of(c) in pids
        assert pg.count_backends("app") == 3
    finally:
        for c in conns:
            c.close()


def test_session_mode_client_waits_for_a_free_server_when_pool_is_full(start_sluice):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    a = s.connect()
    try:
        pid_a = pid_of(a)
        b_conn = []

        def client_b():
            c = s.connect()
            b_conn.append(c)
            return pid_of(c)

        b = Background(client_b)
        time.sleep(1.0)
        assert not b.done(), "pool_size=1 in session mode: B must wait while A is connected"
        a.close()
        assert b.result(10) == pid_a
    finally:
        a.close()
        for c in b_conn:
            c.close()


# ---- transaction mode ----------------------------------------------------------------------------


def test_transaction_mode_client_waits_while_another_holds_the_only_server_in_a_transaction(
        start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as a, s.connect() as b:
        a.execute("BEGIN")
        pid_a = pid_of(a)
        bq = Background(pid_of, b)
        time.sleep(1.0)
        assert not bq.done(), "B's query ran while A's transaction held the only server"
        a.execute("COMMIT")
        pid_b = bq.result(10)
        assert pid_b == pid_a, "pool_size=1: both clients must share the one backend"
        # after the commit, A is served again by the same (only) backend
        assert pid_of(a) == pid_a
        assert a.info.transaction_status == pq.TransactionStatus.IDLE
        assert b.info.transaction_status == pq.TransactionStatus.IDLE


def test_transaction_mode_autocommit_queries_of_many_clients_interleave_over_one_server(
        start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    conns = [s.connect() for _ in range(10)]
    try:
        with BackendSampler(pg, "app") as sampler:
            pids = set()
            for _round in range(5):
                for i, c in enumerate(conns):
                    pids.add(pid_of(c))
                    assert c.execute("SELECT %s::int * 2", [i]).fetchone()[0] == i * 2
            # and concurrently
            jobs = [Background(lambda c=c: [pid_of(c) for _ in range(20)]) for c in conns]
            for j in jobs:
                pids.update(j.result(30))
        assert len(pids) == 1, f"expected one shared backend, saw {sorted(pids)}"
        assert sampler.max <= 1, f"saw {sampler.max} backends with pool_size=1"
    finally:
        for c in conns:
            c.close()


def test_transaction_mode_never_opens_more_servers_than_pool_size(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 3})
    conns = [s.connect() for _ in range(12)]
    try:
        with BackendSampler(pg, "app") as sampler:
            jobs = [Background(lambda c=c: [c.execute("SELECT pg_sleep(0.02)") for _ in range(10)])
                    for c in conns]
            for j in jobs:
                j.result(60)
        assert sampler.max <= 3, f"saw {sampler.max} backends with pool_size=3"
        assert sampler.max >= 1
    finally:
        for c in conns:
            c.close()


def test_transaction_mode_rolled_back_transaction_releases_the_server(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as a, s.connect() as b:
        a.execute("BEGIN")
        a.execute("SELECT 1")
        a.execute("ROLLBACK")
        assert Background(pid_of, b).result(5)


def test_transaction_mode_failed_transaction_holds_server_until_rollback(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as a, s.connect() as b:
        a.execute("BEGIN")
        with pytest.raises(errors.DivisionByZero):
            a.execute("SELECT 1/0")
        assert a.info.transaction_status == pq.TransactionStatus.INERROR
        bq = Background(pid_of, b)
        time.sleep(0.8)
        assert not bq.done(), "a transaction in the failed state ('E') must keep its server"
        a.execute("ROLLBACK")
        bq.result(10)


# ---- statement mode ------------------------------------------------------------------------------


def test_statement_mode_autocommit_statements_work(start_sluice, pg, table):
    s = start_sluice({"pool_mode": "statement", "default_pool_size": 1})
    with s.connect() as a, s.connect() as b:
        a.execute(f"CREATE TABLE {table} (id int)")
        for i in range(5):
            (a if i % 2 else b).execute(f"INSERT INTO {table} VALUES (%s)", [i])
        assert a.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 5
        assert pid_of(a) == pid_of(b)


def test_statement_mode_begin_is_refused_with_0A000_and_client_is_disconnected(start_sluice):
    s = start_sluice({"pool_mode": "statement", "default_pool_size": 1})
    with s.connect() as other:
        a = raw_login(s.port)
        try:
            a.send(query_msg("BEGIN"))
            err = a.expect_error(timeout=10)
            assert err.get("C") == "0A000", err
            assert a.is_closed(5), "client should be disconnected after the 0A000 error"
        finally:
            a.close()
        # the pool stays usable, and its server is not left inside a transaction
        assert other.execute("SELECT 1").fetchone()[0] == 1
        assert other.execute("SELECT now() = statement_timestamp()").fetchone()[0] is True
        assert other.info.transaction_status == pq.TransactionStatus.IDLE
    with s.connect() as c:
        assert c.execute("SELECT 2").fetchone()[0] == 2


def test_statement_mode_psycopg_transaction_fails_and_the_connection_is_closed(start_sluice):
    """libpq reads the FATAL and the close together, so psycopg may report it without the
    SQLSTATE; the SQLSTATE itself is checked with raw sockets above."""
    s = start_sluice({"pool_mode": "statement", "default_pool_size": 1})
    with s.connect(autocommit=False) as a:
        with pytest.raises(psycopg.Error) as ei:
            a.execute("SELECT 1")  # psycopg sends BEGIN first
            a.execute("SELECT 2")
        assert ei.value.sqlstate in ("0A000", None), ei.value
        assert "statement" in str(ei.value), f"the error should say why: {ei.value}"
        # sluice answers with ERROR + ReadyForQuery (a proper result) and then closes: the
        # connection is found closed at the next use.
        with pytest.raises(psycopg.OperationalError):
            a.execute("SELECT 3")
    with s.connect() as b:
        assert b.execute("SELECT now() = statement_timestamp()").fetchone()[0] is True


def test_statement_mode_transaction_opened_inside_one_query_is_refused(start_sluice):
    s = start_sluice({"pool_mode": "statement", "default_pool_size": 1})
    a = raw_login(s.port)
    try:
        # Simple protocol: this leaves the server inside a transaction at ReadyForQuery ('T').
        a.send(query_msg("BEGIN; SELECT 1"))
        err = a.expect_error(timeout=10)
        assert err.get("C") == "0A000", err
        assert a.is_closed(5), "client should be disconnected after the 0A000 error"
    finally:
        a.close()
    with s.connect() as b:
        assert b.execute("SELECT now() = statement_timestamp()").fetchone()[0] is True, \
            "the next client inherited the refused client's open transaction"
        assert b.info.transaction_status == pq.TransactionStatus.IDLE


@pytest.mark.timeout(60)
def test_transaction_mode_client_that_leaves_while_waiting_does_not_stall_the_pool(
        start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "query_wait_timeout": 30})
    with s.connect() as a:
        a.execute("BEGIN")
        a.execute("SELECT 1")
        waiters = []
        for i in range(3):
            w = raw_login(s.port)
            w.send(query_msg(f"SELECT {i}"))
            waiters.append(w)
        time.sleep(0.3)
        for i, w in enumerate(waiters):
            w.close_abruptly(reset=(i % 2 == 0))
        a.execute("COMMIT")
        with s.connect() as c:
            t0 = time.monotonic()
            assert c.execute("SELECT 'next'").fetchone()[0] == "next"
            assert time.monotonic() - t0 < 3
            assert c.execute("SELECT now() = statement_timestamp()").fetchone()[0] is True
