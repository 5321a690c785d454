"""CancelRequest: each client's BackendKeyData cancels only that client's own query."""

import random
import time

import psycopg
import pytest
from psycopg import errors

from conftest import Background
from pgwire import RawConn, ServerError, cancel_request, query_msg, raw_login
from tcp_proxy import ForwardingProxy


def run(conn, sql):
    return conn.execute(sql).fetchone()


@pytest.mark.timeout(60)
def test_session_mode_cancel_stops_only_the_query_of_the_client_that_sent_it(start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 2})
    with s.connect() as a, s.connect() as b:
        qa = Background(run, a, "SELECT pg_sleep(30)")
        qb = Background(run, b, "SELECT pg_sleep(3), 'b done'")
        pg.wait_for_active("app", "pg_sleep", count=2, timeout=10)
        t0 = time.monotonic()
        a.cancel()
        err = qa.error(timeout=5)
        assert isinstance(err, errors.QueryCanceled), f"A got {err!r}, expected 57014"
        assert err.sqlstate == "57014"
        assert time.monotonic() - t0 < 3, "cancel took too long to reach the server"
        assert qb.result(timeout=10)[1] == "b done", "B's query was disturbed by A's cancel"
        # both sessions continue
        assert run(a, "SELECT 1") == (1,)
        assert run(b, "SELECT 2") == (2,)


@pytest.mark.timeout(60)
def test_transaction_mode_cancel_from_an_idle_client_does_not_cancel_another_clients_query(
        start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as a, s.connect() as b:
        # both have used the same (only) server; B is now idle and holds none
        pid = run(b, "SELECT pg_backend_pid()")[0]
        assert run(a, "SELECT pg_backend_pid()")[0] == pid
        qa = Background(run, a, "SELECT pg_sleep(3), 'a done'")
        pg.wait_for_active("app", "pg_sleep", timeout=10)
        b.cancel()
        assert qa.result(timeout=10)[1] == "a done", \
            "B's cancel key cancelled A's query running on the server B used before"
        assert run(b, "SELECT 1") == (1,)


@pytest.mark.timeout(60)
def test_transaction_mode_cancel_reaches_the_query_of_the_client_that_sent_it(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2})
    with s.connect() as a, s.connect() as b:
        qa = Background(run, a, "SELECT pg_sleep(30)")
        qb = Background(run, b, "SELECT pg_sleep(2), 'b done'")
        pg.wait_for_active("app", "pg_sleep", count=2, timeout=10)
        a.cancel()
        err = qa.error(timeout=5)
        assert isinstance(err, errors.QueryCanceled), f"A got {err!r}, expected 57014"
        assert qb.result(timeout=10)[1] == "b done"
        assert run(a, "SELECT 1") == (1,)


def test_each_client_gets_its_own_backend_key_data(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    conns = [raw_login(s.port) for _ in range(5)]
    try:
        keys = [c.backend_key for c in conns]
        assert all(k is not None for k in keys), "sluice sent no BackendKeyData"
        assert len(set(keys)) == 5, f"clients share cancel keys: {keys}"
    finally:
        for c in conns:
            c.close()


def test_cancel_request_with_an_unknown_key_is_ignored(start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    with s.connect() as a:
        qa = Background(run, a, "SELECT pg_sleep(1.5), 'a done'")
        pg.wait_for_active("app", "pg_sleep", timeout=10)
        for _ in range(3):
            r = RawConn(s.port)
            r.send(cancel_request(random.randrange(1, 2**31), random.randrange(-2**31, 2**31)))
            assert r.is_closed(5), "sluice should close a CancelRequest connection"
            r.close()
        assert qa.result(10)[1] == "a done"
        assert run(a, "SELECT 1") == (1,)


def test_cancel_of_an_idle_session_changes_nothing(start_sluice):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    with s.connect() as a:
        run(a, "SELECT 1")
        a.cancel()
        time.sleep(0.3)
        assert run(a, "SELECT 2") == (2,)


@pytest.mark.timeout(60)
def test_cancel_of_a_request_waiting_for_a_server_answers_57014_and_never_runs_it(
        start_sluice, pg, table):
    """Pool full: the INSERT waits for a server. Its cancel must stop it there (Postgres would
    cancel it), not be dropped and the INSERT run once a server is free."""
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as c:
        c.execute(f"CREATE TABLE {table} (id int)")
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_db_connections": 1, "query_wait_timeout": 30})
    holder = raw_login(s.port, timeout=10)
    holder.send(query_msg("SELECT pg_sleep(2) /* holder */"))
    pg.wait_for_active("app", "holder", timeout=10)
    b = raw_login(s.port, timeout=10)
    b.send(query_msg(f"INSERT INTO {table} VALUES (1)"))
    time.sleep(0.3)  # queued behind the holder
    t0 = time.monotonic()
    canceller = RawConn(s.port, timeout=10)
    canceller.send(cancel_request(*b.backend_key))
    canceller.close()
    with pytest.raises(ServerError) as err:
        b.read_results()
    assert err.value.fields["C"] == "57014", err.value.fields
    assert err.value.fields["M"] == "canceling statement due to user request"
    assert time.monotonic() - t0 < 1.5, "the cancel waited for a server"
    assert b.last_status == "I"
    holder.read_results()
    # the session goes on, and the cancelled INSERT never ran
    assert b.query(f"SELECT count(*) FROM {table}")[0] == [["0"]]
    time.sleep(0.5)
    assert pg.query(f"SELECT count(*) FROM {table}", dbname="appdb")[0][0] == 0
    b.close()
    holder.close()


class CancelDelayingProxy(ForwardingProxy):
    """A loopback TCP forwarder to Postgres that holds each CancelRequest for `delay` s before
    passing it on, notes when Postgres has closed that connection (it does so only once it has
    signalled the backend), and passes that close on `hold_close` s later."""

    def __init__(self, target_port, delay=0.0, hold_close=0.0):
        self.delay = delay
        self.hold_close = hold_close
        self.cancels_done = []  # time.monotonic() when Postgres closed a cancel connection
        self.cancels_passed_on = []  # time.time() when that close was passed on
        super().__init__(target_port)

    def serve_cancel(self, a, packet):
        b = self.upstream_or_close(a)
        if not b:
            return
        time.sleep(self.delay)
        b.sendall(packet)
        try:
            while b.recv(1):  # Postgres closes it once the backend is signalled
                pass
        except OSError:  # reset (Postgres stopping at the test's end): closed all the same
            pass
        self.cancels_done.append(time.monotonic())
        b.close()
        time.sleep(self.hold_close)
        self.cancels_passed_on.append(time.time())
        a.close()


@pytest.mark.timeout(60)
def test_cancel_connection_closes_only_once_the_cancel_has_reached_the_backend(start_sluice, pg):
    """Postgres closes a CancelRequest's connection only after it has signalled the backend, and
    libpq's PQcancel waits for that close: a client that then reads its 57014 and sends its next
    statement knows no cancel is still on the way to it. (Postgres 15 signals the backend twice,
    its pid and its process group; on a loaded machine the second signal can come well after the
    first has ended the query.) sluice passes the cancel on from a worker thread: closing the
    requester's connection at once let that next statement be cancelled by the late signal (the
    differential test saw 57014 on a CREATE TEMP TABLE after a cancelled pg_sleep). Here the
    cancel is held on its way to Postgres, so closing too early shows every time."""
    proxy = CancelDelayingProxy(pg.port, delay=1.0)
    try:
        s = start_sluice({"pool_mode": "session", "default_pool_size": 1},
                         databases={"appdb": pg.db_entry(port=proxy.port)})
        c = raw_login(s.port, timeout=20)
        c.send(query_msg("SELECT pg_sleep(30) /* to cancel */"))
        pg.wait_for_active("app", "to cancel", timeout=10)
        canceller = RawConn(s.port, timeout=20)
        canceller.send(cancel_request(*c.backend_key))
        assert canceller.is_closed(20), "sluice should close a CancelRequest connection"
        closed_at = time.monotonic()
        canceller.close()
        assert proxy.cancels_done and proxy.cancels_done[0] <= closed_at, \
            "sluice closed the CancelRequest connection before the cancel reached Postgres"
        with pytest.raises(ServerError) as err:
            c.read_results()
        assert err.value.fields["C"] == "57014", err.value.fields
        assert c.query("SELECT 1")[0] == [["1"]]
        c.close()
    finally:
        proxy.close()


@pytest.mark.timeout(60)
def test_after_a_query_timeout_cancel_the_next_statement_waits_for_the_cancel_to_be_done(
        start_sluice, pg):
    """query_timeout is sluice's own cancel: the client did not ask for it, so no late signal of
    it may cancel the client's next statement (Postgres 15 signals the backend twice; the
    second can land after the first ended the query, see above). The next request goes to the
    server only once PQcancel has returned, i.e. once Postgres has closed the cancel
    connection. Here Postgres's close is passed on to sluice 1.5 s late: a statement sent at
    once must not start before."""
    proxy = CancelDelayingProxy(pg.port, hold_close=1.5)
    try:
        s = start_sluice({"pool_mode": "session", "default_pool_size": 1, "query_timeout": 1},
                         databases={"appdb": pg.db_entry(port=proxy.port)})
        c = raw_login(s.port, timeout=20)
        with pytest.raises(ServerError) as err:
            c.query("SELECT pg_sleep(30)")
        assert err.value.fields["C"] == "57014", err.value.fields
        rows = c.query("SELECT extract(epoch FROM clock_timestamp())::float8")[0]
        started = float(rows[0][0])
        deadline = time.monotonic() + 10
        while not proxy.cancels_passed_on and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.cancels_passed_on, "the query_timeout cancel never went through the proxy"
        assert started >= proxy.cancels_passed_on[0], \
            "the next statement ran while the query_timeout cancel was still on its way"
        c.close()
    finally:
        proxy.close()
