"""Terminate means "finish what I sent, then close" (protocol section 55.2.4, Termination): Postgres
runs every message it read before the Terminate, commits what autocommit commits, and rolls back
a transaction left open. Through sluice the same must hold: the server is drained without a
cancel (bounded by server_drain_timeout) and reused. A client that goes away without Terminate
keeps the documented policy (its query is cancelled: test_drain.py).
"""

import socket
import time

import psycopg
import pytest

from conftest import APP_PASSWORD, APP_USER, wait_until
from pgwire import (bind_msg, execute_msg, message, parse_msg, query_msg, raw_login, sync_msg,
                    terminate_msg)

CALL_TIMEOUT = 10.0
N = 10


def make_table(pg, table):
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as c:
        c.execute(f"CREATE TABLE {table} (id int)")


def committed(pg, table):
    return pg.query(f"SELECT count(*) FROM {table}", dbname="appdb")[0][0]


def wait_committed(pg, table, n):
    wait_until(lambda: committed(pg, table) >= n, 15, what=f"{n} rows committed")
    time.sleep(0.3)  # nothing more arrives after that
    return committed(pg, table)


def sluice_for(start_sluice, mode, **main):
    conf = {"pool_mode": mode, "default_pool_size": 2, "query_wait_timeout": 20,
            "log_level": "debug"}
    conf.update(main)
    return start_sluice(conf)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_query_and_terminate_in_one_write_commits_like_postgres(start_sluice, pg, table, mode):
    make_table(pg, table)
    s = sluice_for(start_sluice, mode)
    for i in range(N):
        c = raw_login(s.port, timeout=CALL_TIMEOUT)
        # a short sleep makes the query still run when the Terminate is read
        c.send(query_msg(f"INSERT INTO {table} SELECT {i} FROM pg_sleep(0.05)") + terminate_msg())
        assert c.is_closed(CALL_TIMEOUT), "sluice did not close after Terminate"
        c.close()
    assert wait_committed(pg, table, N) == N
    # the servers are reused, not closed (the answers: test_leaving_client_oracle.py)
    with s.connect() as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    assert pg.count_backends(APP_USER) <= 2


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_libpq_send_query_then_finish_commits_like_postgres(start_sluice, pg, table, mode):
    make_table(pg, table)
    s = sluice_for(start_sluice, mode)
    for i in range(N):
        conn = psycopg.pq.PGconn.connect(s.dsn().encode())
        assert conn.status == psycopg.pq.ConnStatus.OK, conn.error_message
        conn.send_query(f"INSERT INTO {table} SELECT {i} FROM pg_sleep(0.05)".encode())
        conn.finish()  # sends Terminate and closes the socket
    assert wait_committed(pg, table, N) == N


@pytest.mark.timeout(90)
def test_terminate_rolls_back_an_open_transaction_and_commits_a_finished_one(
        start_sluice, pg, table):
    make_table(pg, table)
    s = sluice_for(start_sluice, "transaction", default_pool_size=1)
    c = raw_login(s.port, timeout=CALL_TIMEOUT)
    c.send(query_msg(f"BEGIN; INSERT INTO {table} SELECT 1 FROM pg_sleep(0.2)") + terminate_msg())
    assert c.is_closed(CALL_TIMEOUT)
    c = raw_login(s.port, timeout=CALL_TIMEOUT)
    c.send(query_msg(f"BEGIN; INSERT INTO {table} SELECT 2 FROM pg_sleep(0.2); COMMIT")
           + terminate_msg())
    assert c.is_closed(CALL_TIMEOUT)
    assert wait_committed(pg, table, 1) == 1
    assert [r[0] for r in pg.query(f"SELECT id FROM {table}", dbname="appdb")] == [2]
    # the one server is usable and outside a transaction
    with s.connect() as conn:
        assert conn.execute("SELECT pg_current_xact_id_if_assigned() IS NULL").fetchone()[0]


@pytest.mark.timeout(90)
def test_query_and_terminate_queued_for_a_busy_pool_still_runs(start_sluice, pg, table):
    """The pool is full when the client sends Query, Terminate and closes its socket: Postgres
    would run the query, so sluice runs it once a server is free."""
    make_table(pg, table)
    s = sluice_for(start_sluice, "transaction", default_pool_size=1, max_db_connections=1)
    busy = raw_login(s.port, timeout=CALL_TIMEOUT)
    busy.send(query_msg("SELECT pg_sleep(1.5) /* holder */"))
    pg.wait_for_active(APP_USER, "holder")
    for i in range(3):
        c = raw_login(s.port, timeout=CALL_TIMEOUT)
        c.send(query_msg(f"INSERT INTO {table} VALUES ({i})") + terminate_msg())
        c.close()
    busy.read_results()
    busy.close()
    assert wait_committed(pg, table, 3) == 3


@pytest.mark.timeout(60)
def test_long_query_before_terminate_is_answered_past_server_drain_timeout(start_sluice, pg):
    """Postgres runs what it read before a Terminate to its end and answers it, however long it
    takes: so does sluice. server_drain_timeout bounds only a query whose client is gone."""
    s = sluice_for(start_sluice, "transaction", default_pool_size=1, max_db_connections=1,
                   server_drain_timeout="1s")
    with s.connect() as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    c = raw_login(s.port, timeout=CALL_TIMEOUT)
    c.send(query_msg("SELECT 7 FROM pg_sleep(2.5) /* terminated */") + terminate_msg())
    assert c.read_results() == ([["7"]], ["SELECT 1"])
    assert c.is_closed(CALL_TIMEOUT)
    c.close()
    with s.connect() as conn:  # the one server, back in the pool
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
    assert "cancelling it" not in s.log_text()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ending", ["close", "half_close", "reset"])
def test_a_silent_query_of_a_client_that_hung_up_after_terminate_is_cancelled_after_drain_time(
        start_sluice, pg, ending):
    """Terminate, then the socket closed (or only its sending side, or reset) while a query that
    sends nothing runs (asyncpg's terminate(); a lock wait). Postgres without
    client_connection_check_interval runs it to its end; sluice, which cannot tell a closed socket
    from a shut sending side without a write, gives it server_drain_timeout, as a query left to
    finish after a failed write, then cancels it as a vanished client's: the server, its
    transaction and its locks are not held for as long as the query would run."""
    s = sluice_for(start_sluice, "transaction", default_pool_size=1, max_db_connections=1,
                   server_drain_timeout="2s")
    with s.connect() as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    c = raw_login(s.port, timeout=CALL_TIMEOUT)
    c.query("BEGIN")
    c.send(query_msg("SELECT pg_sleep(60) /* hung up */") + terminate_msg())
    pg.wait_for_active(APP_USER, "hung up")
    t0 = time.monotonic()
    if ending == "close":
        c.close()
    elif ending == "reset":
        c.close_abruptly(reset=True)
    else:
        c.sock.shutdown(socket.SHUT_WR)
    wait_until(lambda: not [r for r in pg.backends(APP_USER) if r[1] != "idle"], 30,
               what="the query cancelled and its transaction rolled back")
    assert time.monotonic() - t0 >= 1.5, "cancelled before server_drain_timeout"
    if ending == "half_close":
        assert c.is_closed(CALL_TIMEOUT)  # closed without its answers, which never came
        c.close()
    s.wait_for_log("sent Terminate and hung up", timeout=10)
    with s.connect() as conn:  # the one server, back in the pool, outside any transaction
        assert conn.execute("SELECT pg_backend_pid(), pg_current_xact_id_if_assigned() IS NULL"
                            ).fetchone() == (pid, True)


# ---- an extended-protocol batch without its Sync ----
# Postgres runs an Execute at once, inside an implicit transaction that only a Sync commits. When
# the session ends first (Terminate, a dropped socket, a FATAL), the transaction is rolled back.
# sluice ends such a batch itself when it reuses the server: it must roll back, as Postgres does.


def insert_batch(table, i):
    return parse_msg("", f"INSERT INTO {table} VALUES ({i})") + bind_msg("", "") + execute_msg()


def wait_settled(pg):
    """Every backend of the app user is idle: no batch is left running or open."""
    sql = ("SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
           " AND backend_type = 'client backend' AND state <> 'idle'")
    wait_until(lambda: pg.query(sql, [APP_USER])[0][0] == 0, 15, what="idle backends")


def run_on_both(pg, s, table, scenario):
    """scenario(port, password) on Postgres directly, then through sluice; the rows committed
    by each once the connections are over."""
    make_table(pg, table)
    counts = []
    for port, password in ((pg.port, APP_PASSWORD), (s.port, None)):
        before = committed(pg, table)
        scenario(port, password)
        # sluice drains the server in the background: let that finish before counting
        time.sleep(1.5)
        wait_settled(pg)
        counts.append(committed(pg, table) - before)
    return counts


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("ending", ["flush_terminate", "terminate", "vanish"])
def test_unsynced_extended_batch_is_rolled_back_like_postgres(start_sluice, pg, table, mode,
                                                              ending):
    s = sluice_for(start_sluice, mode)

    def scenario(port, password):
        c = raw_login(port, password=password, timeout=CALL_TIMEOUT)
        if ending == "terminate":
            c.send(insert_batch(table, 1) + terminate_msg())
        else:
            c.send(insert_batch(table, 1) + message(b"H"))
            c.read_until("C")  # the INSERT ran, inside the implicit transaction
            if ending == "flush_terminate":
                c.send(terminate_msg())
        if ending == "vanish":
            c.close_abruptly()
        else:
            assert c.is_closed(CALL_TIMEOUT)
            c.close()

    assert run_on_both(pg, s, table, scenario) == [0, 0]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_synced_batch_commits_and_the_unsynced_one_after_it_does_not(start_sluice, pg, table,
                                                                     mode):
    s = sluice_for(start_sluice, mode)

    def scenario(port, password):
        c = raw_login(port, password=password, timeout=CALL_TIMEOUT)
        c.send(insert_batch(table, 1) + sync_msg() + insert_batch(table, 2) + terminate_msg())
        assert c.is_closed(CALL_TIMEOUT)
        c.close()

    assert run_on_both(pg, s, table, scenario) == [1, 1]


@pytest.mark.timeout(90)
def test_unsynced_batch_and_terminate_queued_for_a_busy_pool_is_rolled_back(start_sluice, pg,
                                                                            table):
    make_table(pg, table)
    s = sluice_for(start_sluice, "transaction", default_pool_size=1, max_db_connections=1)
    busy = raw_login(s.port, timeout=CALL_TIMEOUT)
    busy.send(query_msg("SELECT pg_sleep(1.5) /* holder */"))
    pg.wait_for_active(APP_USER, "holder")
    c = raw_login(s.port, timeout=CALL_TIMEOUT)
    c.send(insert_batch(table, 1) + terminate_msg())
    c.close()
    synced = raw_login(s.port, timeout=CALL_TIMEOUT)
    synced.send(insert_batch(table, 2) + sync_msg() + terminate_msg())
    synced.close()
    busy.read_results()
    busy.close()
    assert wait_committed(pg, table, 1) == 1
    assert pg.query(f"SELECT id FROM {table}", dbname="appdb") == [(2,)]


@pytest.mark.timeout(60)
def test_idle_transaction_timeout_rolls_back_an_unsynced_batch(start_sluice, pg, table):
    make_table(pg, table)
    s = sluice_for(start_sluice, "transaction", idle_transaction_timeout=2)
    c = raw_login(s.port, timeout=CALL_TIMEOUT)
    c.send(insert_batch(table, 1) + message(b"H"))
    c.read_until("C")
    assert c.expect_error(CALL_TIMEOUT)["C"] == "25P03"
    c.close()
    time.sleep(1.5)
    wait_settled(pg)
    assert committed(pg, table) == 0
