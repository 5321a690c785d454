"""Timeouts and the remaining caps against a real Postgres: client_idle_timeout,
idle_transaction_timeout, query_timeout, client_login_timeout, server_idle_timeout,
server_lifetime, server_check_query, server_connect_timeout, min_pool_size, reserve_pool_size,
max_user_connections and max_server_connections."""

import re
import socket
import time

import psycopg
import pytest

from conftest import APP_DB, wait_until
from pgwire import RawConn, copy_data_msg, message, parse_msg, query_msg, raw_login


def backend_pid(conn):
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


@pytest.mark.timeout(30)
def test_client_idle_timeout_closes_an_idle_client_with_57P05(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "client_idle_timeout": 1})
    c = raw_login(s.port)
    try:
        c.query("SELECT 1")
        t0 = time.monotonic()
        err = c.expect_error(timeout=5)
        assert err.get("C") == "57P05", err
        assert "client_idle_timeout" in err.get("M", ""), err
        assert 0.8 <= time.monotonic() - t0 < 3
        assert c.is_closed(3)
    finally:
        c.close()


@pytest.mark.timeout(30)
def test_idle_transaction_timeout_closes_the_client_and_rolls_the_server_back(start_sluice, pg,
                                                                             table):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "idle_transaction_timeout": 1})
    with s.connect() as setup:
        setup.execute(f"CREATE TABLE {table} (a int)")
    c = raw_login(s.port)
    try:
        c.query("BEGIN")
        c.query(f"INSERT INTO {table} VALUES (1)")
        err = c.expect_error(timeout=5)
        assert err.get("C") == "25P03", err
        assert c.is_closed(3)
    finally:
        c.close()
    with s.connect() as other:  # the pool's one server, rolled back and reused
        assert other.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
        assert other.execute("SELECT now() = statement_timestamp()").fetchone()[0] is True


@pytest.mark.timeout(30)
def test_query_timeout_cancels_the_query_and_keeps_the_session(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "query_timeout": 1})
    with s.connect() as c:
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("SELECT pg_sleep(10)")
        assert time.monotonic() - t0 < 4
        assert c.execute("SELECT 7").fetchone()[0] == 7
        # a quick query right after is not hit by a stale timeout
        assert c.execute("SELECT pg_sleep(0.1), 8").fetchone()[1] == 8


@pytest.mark.timeout(30)
def test_client_login_timeout_drops_a_client_that_never_logs_in(start_sluice):
    s = start_sluice({"client_login_timeout": 1})
    silent = RawConn(s.port)
    try:
        err = silent.expect_error(timeout=5)
        assert err.get("C") == "08P01" and "client_login_timeout" in err.get("H", "") + \
            err.get("M", ""), err
        assert silent.is_closed(3)
    finally:
        silent.close()
    with s.connect() as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.timeout(30)
def test_server_idle_timeout_closes_idle_servers(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "server_idle_timeout": 1})
    with s.connect() as c:
        c.execute("SELECT 1")
        assert pg.count_backends() == 1
        wait_until(lambda: pg.count_backends() == 0, 5, what="the idle server to be closed")
        assert c.execute("SELECT 2").fetchone()[0] == 2  # a new server is opened on demand


@pytest.mark.timeout(30)
def test_server_lifetime_replaces_old_servers(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "server_lifetime": 1,
                      "server_idle_timeout": 0})
    with s.connect() as c:
        first = backend_pid(c)
        assert backend_pid(c) == first  # reused while young
        time.sleep(1.5)
        wait_until(lambda: backend_pid(c) != first, 5, what="a fresh server after the lifetime")


@pytest.mark.timeout(30)
def test_server_check_query_runs_before_reuse_and_a_failing_check_drops_the_server(start_sluice):
    good = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                         "server_check_delay": 0, "server_check_query": "select 1"})
    with good.connect() as c:
        pids = {backend_pid(c) for _ in range(5)}
        assert len(pids) == 1, "a passing check keeps the server"
    bad = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                        "server_check_delay": 0, "server_check_query": "select 1/0"})
    with bad.connect() as c:
        pids = [backend_pid(c) for _ in range(4)]
        assert len(set(pids)) == 4, f"a failing check must drop the server: {pids}"
    assert any("division by zero" in line for line in bad.log)


@pytest.mark.timeout(30)
def test_server_connect_timeout_fails_a_login_to_a_database_that_never_answers(start_sluice):
    # A socket that accepts TCP connections (the kernel's backlog) but never says anything.
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(16)
    try:
        port = black_hole.getsockname()[1]
        s = start_sluice({"server_connect_timeout": 1, "query_wait_timeout": 10},
                         databases={APP_DB: f"host=127.0.0.1 port={port} dbname=x user=app"})
        t0 = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as ei:
            s.connect()
        assert time.monotonic() - t0 < 5
        assert "server_connect_timeout" in str(ei.value), ei.value
    finally:
        black_hole.close()


@pytest.mark.timeout(30)
def test_min_pool_size_keeps_servers_connected(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 4, "min_pool_size": 2})
    with s.connect() as c:
        c.execute("SELECT 1")
        wait_until(lambda: pg.count_backends() == 2, 5, what="min_pool_size servers")
        time.sleep(0.5)
        assert pg.count_backends() == 2, "no more than min_pool_size while idle"


@pytest.mark.timeout(30)
def test_reserve_pool_opens_an_extra_server_after_reserve_pool_timeout(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "reserve_pool_size": 1,
                      "reserve_pool_timeout": 0.5, "query_wait_timeout": 10})
    with s.connect() as holder, s.connect() as waiter:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        t0 = time.monotonic()
        assert waiter.execute("SELECT 2").fetchone()[0] == 2
        waited = time.monotonic() - t0
        assert 0.4 <= waited < 3, f"waited {waited:.2f} s with reserve_pool_timeout = 0.5"
        # the pool's server and the reserve one, from the log: counting backends now raced with
        # sluice's tick, which closes the reserve server once it is idle (seen under load)
        def opened():
            return set(re.findall(r"connected to backend pid (\d+)", s.log_text()))
        wait_until(lambda: len(opened()) >= 2, 5, what="the reserve server's connect line")
        assert len(opened()) == 2, s.log_tail(20)
        # idle, the reserve server goes back to the database, and the log says why (it said
        # "pool_size lowered by reload" with no reload)
        s.wait_for_log(r"closing: idle above pool_size \(a reserve server no longer needed",
                       timeout=10)
        holder.execute("COMMIT")


def _hold_and_expect_wait_error(s, first_db, second_db, key):
    with s.connect(dbname=first_db) as holder, s.connect(dbname=second_db) as other:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        with pytest.raises(psycopg.errors.TooManyConnections) as ei:
            other.execute("SELECT 2")
        assert key in str(ei.value), ei.value
        holder.execute("COMMIT")
        # once the holder is done, its idle server is closed to make room for the other pool
        assert other.execute("SELECT 3").fetchone()[0] == 3


@pytest.mark.timeout(30)
def test_max_user_connections_caps_a_user_across_databases(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "max_user_connections": 1,
                      "query_wait_timeout": 1},
                     databases={APP_DB: pg.db_entry(), "appdb_b": pg.db_entry()})
    _hold_and_expect_wait_error(s, APP_DB, "appdb_b", "max_user_connections")


@pytest.mark.timeout(30)
def test_max_server_connections_caps_every_pool_together(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "max_server_connections": 1,
                      "query_wait_timeout": 1},
                     databases={APP_DB: pg.db_entry(), "appdb_b": pg.db_entry()})
    _hold_and_expect_wait_error(s, APP_DB, "appdb_b", "max_server_connections")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stall", ["half_a_query", "parse_and_flush", "copy_data"])
def test_idle_transaction_timeout_reclaims_a_server_from_a_client_that_stops_mid_request(
        start_sluice, pg, table, stall):
    """A client holding a server that waits for the rest of its request (part of a message, or
    extended-protocol messages without Sync) and sends nothing is closed after
    idle_transaction_timeout, like one idle in a transaction, and others get the server."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2,
                      "max_db_connections": 2, "idle_transaction_timeout": 2,
                      "query_timeout": 2, "client_idle_timeout": 3, "query_wait_timeout": 15})
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
        direct.execute(f"CREATE TABLE {table} (id int)")
    stuck = []
    for i in range(2):
        c = raw_login(s.port)
        if stall == "half_a_query":
            whole = query_msg("SELECT 1 /* " + "x" * 80 + f" {i} */")
            c.send(whole[:8])
        elif stall == "copy_data":
            c.send(query_msg(f"COPY {table} FROM STDIN"))
            c.read_until({"G"})
            c.send(copy_data_msg(f"{i}\n".encode()))
        else:
            c.send(parse_msg(f"s{i}", "SELECT 1") + message("H"))
            assert c.read_message()[0] == "1"  # ParseComplete: the server holds nothing else
        stuck.append(c)
    wait_until(lambda: pg.count_backends() == 2, 10, what="both servers held")
    t0 = time.monotonic()
    with s.connect() as other:  # waits for a server
        assert other.execute("SELECT 1").fetchone()[0] == 1
    waited = time.monotonic() - t0
    assert waited < 10, f"waited {waited:.1f} s for a server held by a silent client"
    for c in stuck:
        err = c.expect_error(timeout=10)
        assert err.get("C") == "25P03", err
        assert "idle_transaction_timeout" in err.get("M", ""), err
        assert c.is_closed(5)
        c.close()
    assert pg.count_backends() <= 2
    assert pg.query(f"SELECT count(*) FROM {table}", dbname=APP_DB)[0][0] == 0
