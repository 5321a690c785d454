"""SIGINT and SIGTERM with clients on every one of four workers (architecture.md 5.7): a
graceful shutdown lets every worker's transactions finish, refuses new logins as one worker
does (test_lifecycle.py) and exits 0 once the last transaction is over; an immediate one
closes everything at once. The fixture fails the test on any sanitizer report."""

import signal
import time

import psycopg
import pytest

from conftest import APP_DB, APP_USER, Background
from multiworker import (SLOW, WORKERS, assert_on_every_worker, close_all, connect_many,
                         start4, workers_by_app)
from pgwire import PeerClosed, RawConn, query_msg, raw_login, startup_packet


def raw_many(s, prefix, n):
    return [raw_login(s.port, application_name=f"{prefix}{i}", timeout=10 * SLOW)
            for i in range(n)]


def refused_login(s):
    """A login during the drain: refused like one worker refuses it (test_lifecycle.py's
    test_sigint_refuses_new_logins_while_draining): 57P01, or the socket closed or refused."""
    try:
        c = RawConn(s.port, timeout=10 * SLOW)
    except OSError:
        return "refused"
    try:
        c.send(startup_packet())
        err = c.expect_error(timeout=10 * SLOW)
        return err.get("C")
    except (PeerClosed, OSError):
        return "closed"
    finally:
        c.close()


@pytest.mark.timeout(120)
def test_sigint_lets_every_workers_transactions_finish_refuses_logins_and_exits_0(
        start_sluice, pg, table):
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as c:
        c.execute(f"CREATE TABLE {table} (id int)")
    s = start4(start_sluice, pg, default_pool_size=20, shutdown_timeout=60)
    holders = connect_many(s, "hold", WORKERS)
    busy = raw_many(s, "busy", WORKERS)
    idle = raw_many(s, "idle", WORKERS)
    try:
        where = workers_by_app(s)
        for kind in ("hold", "busy", "idle"):
            assert_on_every_worker(where, [f"{kind}{i}" for i in range(WORKERS)])
        for i, h in enumerate(holders):
            h.execute("BEGIN")
            h.execute(f"INSERT INTO {table} VALUES ({i})")
        for c in idle:
            c.query("SELECT 1")
        for c in busy:
            c.send(query_msg("SELECT pg_sleep(2), 'finished' /* in flight */"))
        pg.wait_for_active(APP_USER, "in flight", count=WORKERS, timeout=10 * SLOW)

        s.send_signal(signal.SIGINT)
        s.wait_for_log(r"graceful shutdown", timeout=10 * SLOW)
        # idle clients of every worker are told at once
        for c in idle:
            err = c.expect_error(timeout=5 * SLOW)
            assert err["C"] == "57P01" and "shutting down" in err["M"], err
        # new logins, opened together so the acceptor would spread them: all refused
        answers = [Background(refused_login, s) for _ in range(2 * WORKERS)]
        for a in answers:
            assert a.result(20 * SLOW) in ("57P01", "closed", "refused")
        # queries in flight finish, on every worker
        for c in busy:
            rows, _ = c.read_results()
            assert rows == [["", "finished"]], rows
        # open transactions go on and commit, on every worker
        assert s.alive(), "sluice left before the open transactions ended"
        for i, h in enumerate(holders):
            h.execute(f"INSERT INTO {table} VALUES ({i + 100})")
            h.execute("COMMIT")
        t0 = time.monotonic()
        code = s.wait_exit(15 * SLOW)
        assert code == 0, f"after SIGINT sluice exited with {code} (None: still running)"
        assert time.monotonic() - t0 < 5 * SLOW, "the exit waited for more than the last COMMIT"
        committed = sorted(r[0] for r in pg.query(f"SELECT id FROM {table}", dbname=APP_DB))
        assert committed == sorted(list(range(WORKERS)) + [i + 100 for i in range(WORKERS)])
    finally:
        close_all(holders + busy + idle)


@pytest.mark.timeout(120)
def test_sigterm_closes_every_workers_clients_at_once_and_exits_0(start_sluice, pg):
    s = start4(start_sluice, pg, default_pool_size=20, shutdown_timeout=60)
    busy = raw_many(s, "busy", WORKERS)
    in_txn = raw_many(s, "txn", WORKERS)
    idle = raw_many(s, "idle", WORKERS)
    try:
        where = workers_by_app(s)
        for kind in ("busy", "txn", "idle"):
            assert_on_every_worker(where, [f"{kind}{i}" for i in range(WORKERS)])
        for c in in_txn:
            c.query("BEGIN")
            c.query("SELECT 1")
        for c in idle:
            c.query("SELECT 1")
        for c in busy:
            c.send(query_msg("SELECT pg_sleep(60) /* busy */"))
        pg.wait_for_active(APP_USER, "busy", count=WORKERS, timeout=10 * SLOW)
        t0 = time.monotonic()
        code = s.stop(signal.SIGTERM, timeout=10 * SLOW)
        took = time.monotonic() - t0
        assert code == 0, f"exit code {code} after SIGTERM"
        assert took < 5 * SLOW, f"SIGTERM took {took:.1f} s"
        for c in busy + in_txn + idle:
            assert c.is_closed(5), "a client of sluice's is still connected after its exit"
    finally:
        close_all(busy + in_txn + idle)
