"""A client that leaves while its query runs: as on Postgres, whose backend does not look at its
socket while a statement runs, the query goes on (test_leaving_client_oracle.py: an autocommit
INSERT commits); one still running server_drain_timeout later is cancelled, and sluice drains the
server (reads and drops what it says), rolls it back and reuses it, rather than closing it.
Closing would not stop the query (the backend only notices when it next writes or checks its
socket), so the backend would hold a Postgres slot that sluice no longer counts.
server_drain_timeout = 0 cancels at once and closes.
"""

import time

import pytest

from conftest import APP_USER, wait_until
from pgwire import (bind_msg, copy_data_msg, execute_msg, parse_msg, query_msg,
                    raw_login, sync_msg)

ADMIN = "admin"
CALL_TIMEOUT = 10.0


def server_pids(s):
    with s.connect(dbname="sluice", user=ADMIN, password=None) as con:
        cur = con.execute("SHOW SERVERS")
        names = [d.name for d in cur.description]
        return sorted(r["remote_pid"] for r in (dict(zip(names, row)) for row in cur.fetchall())
                      if r["user"] == APP_USER and r["remote_pid"])


def one_server_sluice(start_sluice, mode="transaction", **main):
    conf = {"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1,
            "admin_users": ADMIN, "log_level": "debug", "query_wait_timeout": 20}
    conf.update(main)
    s = start_sluice(conf)
    with s.connect() as c:  # the one server exists before the test starts
        c.execute("SELECT 1")
    return s


def backend_state(pg, pid):
    rows = pg.query("SELECT state, xact_start IS NOT NULL, query FROM pg_stat_activity"
                    " WHERE pid = %s", [pid])
    return rows[0] if rows else None


def assert_reused_clean(s, pg, pid, table=None):
    """The one server is the same backend, idle outside a transaction, and usable."""
    assert server_pids(s) == [pid], "the server was closed and replaced, not drained"
    with s.connect() as c:
        assert c.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
        assert c.execute("SELECT pg_current_xact_id_if_assigned() IS NULL").fetchone()[0]
        assert c.execute("SHOW statement_timeout").fetchone()[0] == "0"
        if table:
            ids = [r[0] for r in c.execute(f"SELECT id FROM {table} ORDER BY id")]
            assert ids == [0], f"rows of the client that left are visible: {ids}"
    assert pg.count_backends(APP_USER) == 1


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_long_query_of_a_client_that_left_is_cancelled_after_server_drain_timeout_and_reused(
        start_sluice, pg, mode, reset):
    s = one_server_sluice(start_sluice, mode, server_drain_timeout="1s")
    (pid,) = server_pids(s)
    a = raw_login(s.port, timeout=CALL_TIMEOUT)
    a.send(query_msg("SELECT pg_sleep(60) /* left behind */"))
    pg.wait_for_active(APP_USER, "left behind")
    t0 = time.monotonic()
    a.close_abruptly(reset=reset)
    # the next client gets the same backend as soon as the query, cancelled once
    # server_drain_timeout has passed, is over
    with s.connect() as c:
        assert c.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
    waited = time.monotonic() - t0
    assert waited < 10, f"the next client waited {waited:.1f} s: the query was not cancelled"
    state = backend_state(pg, pid)
    assert state and state[0] == "idle" and "left behind" not in state[2], state
    assert_reused_clean(s, pg, pid)
    assert "client left mid-query: draining" in s.log_text()


def test_transaction_of_a_client_that_left_mid_query_is_rolled_back(start_sluice, pg, table):
    s = one_server_sluice(start_sluice)
    (pid,) = server_pids(s)
    with s.connect() as c:
        c.execute(f"CREATE TABLE {table} (id int)")
        c.execute(f"INSERT INTO {table} VALUES (0)")
    a = raw_login(s.port, timeout=CALL_TIMEOUT)
    a.query("BEGIN")
    a.query(f"INSERT INTO {table} VALUES (1)")
    a.query("SET LOCAL statement_timeout = '55s'")
    a.send(query_msg("SELECT pg_sleep(60) /* in a transaction */"))
    pg.wait_for_active(APP_USER, "in a transaction")
    a.close_abruptly(reset=True)
    assert_reused_clean(s, pg, pid, table)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_copy_from_stdin_of_a_client_that_left_gets_copyfail_and_its_server_reused(
        start_sluice, pg, table, mode):
    s = one_server_sluice(start_sluice, mode)
    (pid,) = server_pids(s)
    with s.connect() as c:
        c.execute(f"CREATE TABLE {table} (id int)")
        c.execute(f"INSERT INTO {table} VALUES (0)")
    a = raw_login(s.port, timeout=CALL_TIMEOUT)
    a.send(query_msg(f"COPY {table} FROM STDIN"))
    a.read_until({"G"})
    a.send(copy_data_msg(b"7\n8\n"))
    time.sleep(0.1)
    a.close_abruptly(reset=True)
    assert_reused_clean(s, pg, pid, table)


def test_extended_batch_without_sync_of_a_client_that_left_is_ended_and_reused(
        start_sluice, pg):
    s = one_server_sluice(start_sluice)
    (pid,) = server_pids(s)
    a = raw_login(s.port, timeout=CALL_TIMEOUT)
    a.send(parse_msg("stmt_left", "SELECT pg_sleep(60) /* no sync */")
           + bind_msg("", "stmt_left") + execute_msg())
    pg.wait_for_active(APP_USER, "no sync")
    a.close_abruptly(reset=True)
    assert_reused_clean(s, pg, pid)
    # the statement the leaver prepared is known for what it is: another client may use the
    # same name for something else
    b = raw_login(s.port, timeout=CALL_TIMEOUT)
    try:
        b.send(parse_msg("stmt_left", "SELECT 41 + 1") + bind_msg("", "stmt_left")
               + execute_msg() + sync_msg())
        rows, _ = b.read_results()
        assert rows == [["42"]], rows
    finally:
        b.close()


def test_server_drain_timeout_closes_a_server_that_does_not_finish(start_sluice, pg):
    """A query that swallows its cancel cannot be drained: the server is closed after
    server_drain_timeout. (Closing does not stop such a backend: the test ends it itself.)"""
    s = one_server_sluice(start_sluice, server_drain_timeout="1s")
    (pid,) = server_pids(s)
    a = raw_login(s.port, timeout=CALL_TIMEOUT)
    a.send(query_msg("DO $$ BEGIN LOOP BEGIN PERFORM pg_sleep(10); EXCEPTION WHEN query_canceled"
                     " THEN NULL; END; END LOOP; END $$ /* stubborn */"))
    pg.wait_for_active(APP_USER, "stubborn")
    t0 = time.monotonic()
    a.close_abruptly(reset=True)
    try:
        s.wait_for_log("not drained within server_drain_timeout", timeout=6)
        assert time.monotonic() - t0 >= 0.8, "closed before server_drain_timeout"
        wait_until(lambda: server_pids(s) != [pid], 5, what="the server to leave the pool")
    finally:
        pg.query("SELECT pg_terminate_backend(%s)", [pid])
    with s.connect() as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_server_drain_timeout_0_closes_at_once(start_sluice, pg):
    s = one_server_sluice(start_sluice, server_drain_timeout=0)
    (pid,) = server_pids(s)
    a = raw_login(s.port, timeout=CALL_TIMEOUT)
    a.send(query_msg("SELECT pg_sleep(60) /* closed at once */"))
    pg.wait_for_active(APP_USER, "closed at once")
    a.close_abruptly(reset=True)
    s.wait_for_log("client left in the middle of a message")
    wait_until(lambda: pid not in server_pids(s), 5, what="the server to be closed")
    # (the closed backend itself may run on until it notices: that is what draining avoids)
    pg.query("SELECT pg_terminate_backend(%s)", [pid])


def test_a_client_cut_off_inside_a_message_still_closes_its_server(start_sluice, pg, table):
    """Half a CopyData message was relayed (sluice streams COPY data without waiting for whole
    messages): only closing ends it."""
    s = one_server_sluice(start_sluice)
    (pid,) = server_pids(s)
    with s.connect() as c:
        c.execute(f"CREATE TABLE {table} (id int)")
    a = raw_login(s.port, timeout=CALL_TIMEOUT)
    a.send(query_msg(f"COPY {table} FROM STDIN"))
    a.read_until({"G"})
    whole = copy_data_msg(b"1\n" * 50)
    a.send(whole[:20])
    time.sleep(0.2)
    a.close_abruptly(reset=True)
    s.wait_for_log("client left in the middle of a message")
    wait_until(lambda: pid not in server_pids(s), 5, what="the server to be closed")
    with s.connect() as c:
        assert c.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
    assert pg.count_backends(APP_USER) == 1
