"""SIGINT and SIGTERM with clients on every one of four workers (architecture.md 5.7): a
graceful shutdown lets every worker's transactions finish, refuses new logins as one worker
does (test_lifecycle.py) and exits 0 once the last transaction is over; an immediate one
closes everything at once. The fixture fails the test on any sanitizer report."""

import signal
import time

import pytest

from conftest import APP_DB, APP_USER, Background, wait_until
from multiworker import (SLOW, WORKERS, assert_spread, close_all, connect_many, create_id_table,
                         raw_many, start4)
from pgwire import PeerClosed, RawConn, cancel_request, query_msg, startup_packet
from test_cancel import CancelDelayingProxy


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
    create_id_table(pg, table)
    s = start4(start_sluice, pg, default_pool_size=20, shutdown_timeout=60)
    holders = connect_many(s, "hold", WORKERS)
    busy = raw_many(s, "busy", WORKERS)
    idle = raw_many(s, "idle", WORKERS)
    try:
        assert_spread(s, hold=WORKERS, busy=WORKERS, idle=WORKERS)
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
        assert_spread(s, busy=WORKERS, txn=WORKERS, idle=WORKERS)
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


@pytest.mark.timeout(120)
def test_sigterm_while_cancels_are_on_their_way_to_postgres_exits_0_without_a_race(
        start_sluice, pg):
    """Cancels held on their way to Postgres (a proxy delays them), so libpq's cancel
    connections, opened on libuv's thread pool, are open when SIGTERM makes every worker close
    its poll handles. A worker keeps the poll handles of its closed sockets for reuse under
    their descriptor numbers (sockio.c), and those numbers are, by then, the cancel
    connections': closing such a handle removed its number from the worker's epoll set, an
    access to another thread's descriptor that ThreadSanitizer reported (about two runs in
    three before the fix; harmless in effect, so the plain and ASan builds pass either way)."""
    proxy = CancelDelayingProxy(pg.port, delay=1.0)
    try:
        s = start4(start_sluice, pg, databases={APP_DB: pg.db_entry(port=proxy.port)},
                   default_pool_size=20)
        churn = connect_many(s, "churn", 2 * WORKERS)  # their closed sockets' handles park
        for c in churn:
            c.execute("SELECT 1")
        close_all(churn)
        busy = raw_many(s, "busy", 2 * WORKERS)
        try:
            assert_spread(s, busy=2 * WORKERS)
            for c in busy:
                c.send(query_msg("SELECT pg_sleep(60) /* to cancel */"))
            pg.wait_for_active(APP_USER, "to cancel", count=len(busy), timeout=10 * SLOW)
            cancels = []
            for c in busy:
                r = RawConn(s.port, timeout=10 * SLOW)
                r.send(cancel_request(*c.backend_key))
                cancels.append(r)
            wait_until(lambda: proxy.accepted >= 2 * len(busy), 10 * SLOW,
                       what="the cancels to reach the proxy")
            code = s.stop(signal.SIGTERM, timeout=15 * SLOW)
            assert code == 0, f"exit code {code} after SIGTERM"
            close_all(cancels)
        finally:
            close_all(busy)
    finally:
        proxy.close()
