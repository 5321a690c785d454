"""A client that vanishes mid-transaction or mid-COPY must never leave a dirty server in the pool:
sluice rolls it back or closes it, and the next client gets a clean one."""

import subprocess
import time

import pytest
from psycopg import pq

from conftest import APP_PASSWORD, pg_tool
from pgwire import ServerError, copy_data_msg, query_msg, raw_login


def assert_clean(conn, table=None, forbidden_id=None):
    """The server behind conn is outside any transaction and sees no uncommitted row."""
    assert conn.execute("SELECT now() = statement_timestamp()").fetchone()[0] is True, \
        "the next client's statement ran inside the vanished client's transaction"
    assert conn.execute("SELECT pg_current_xact_id_if_assigned() IS NULL").fetchone()[0] is True
    assert conn.info.transaction_status == pq.TransactionStatus.IDLE
    if table is not None:
        n = conn.execute(f"SELECT count(*) FROM {table} WHERE id = %s", [forbidden_id]).fetchone()[0]
        assert n == 0, "an uncommitted row of the vanished client is visible"


def no_backend_idle_in_transaction(pg, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [r for r in pg.backends("app") if r[2]]
        if not rows:
            return True
        time.sleep(0.1)
    raise AssertionError(f"backends still in a transaction: {pg.backends('app')}")


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("how", ["fin", "rst"])
def test_client_vanishing_inside_a_transaction_leaves_no_open_transaction(start_sluice, pg, table,
                                                                         mode, how):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as setup:
        setup.execute(f"CREATE TABLE {table} (id int)")
    a = raw_login(s.port)
    a.query("BEGIN")
    a.query(f"INSERT INTO {table} VALUES (42)")
    a.query("SET LOCAL work_mem = '9MB'")
    assert a.last_status == "T"
    a.close_abruptly(reset=(how == "rst"))  # no Terminate message
    with s.connect() as b:
        assert_clean(b, table, 42)
        assert b.execute("SHOW work_mem").fetchone()[0] != "9MB"
        b.execute(f"INSERT INTO {table} VALUES (1)")
    no_backend_idle_in_transaction(pg)
    assert pg.query(f"SELECT count(*) FROM {table}", dbname="appdb")[0][0] == 1


def test_client_vanishing_inside_a_failed_transaction_leaves_no_open_transaction(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    a = raw_login(s.port)
    a.query("BEGIN")
    with pytest.raises(ServerError):
        a.query("SELECT 1/0")
    assert a.last_status == "E"
    a.close_abruptly()
    with s.connect() as b:
        assert_clean(b)


@pytest.mark.timeout(60)
def test_killed_psql_inside_a_transaction_leaves_no_open_transaction(start_sluice, pg, table):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as setup:
        setup.execute(f"CREATE TABLE {table} (id int)")
    env = {"PGPASSWORD": APP_PASSWORD, "PGCONNECT_TIMEOUT": "10"}
    p = subprocess.Popen([pg_tool("psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(s.port), "-U",
                          "app", "-d", "appdb"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=env)
    try:
        p.stdin.write(f"BEGIN;\nINSERT INTO {table} VALUES (7);\n\\echo inserted\n".encode())
        p.stdin.flush()
        deadline = time.monotonic() + 15
        line = b""
        while b"inserted" not in line and time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
        assert b"inserted" in line, "psql did not reach the INSERT"
    finally:
        p.kill()
        p.wait(10)
    with s.connect() as b:
        assert_clean(b, table, 7)
    no_backend_idle_in_transaction(pg)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_client_vanishing_mid_copy_from_stdin_leaves_a_clean_server(start_sluice, pg, table, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as setup:
        setup.execute(f"CREATE TABLE {table} (id int)")
    a = raw_login(s.port)
    a.send(query_msg(f"COPY {table} FROM STDIN"))
    a.read_until({"G"})  # CopyInResponse
    a.send(b"".join(copy_data_msg(f"{i}\n".encode()) for i in range(1000)))
    a.send(copy_data_msg(b"12"))  # and half a row
    time.sleep(0.2)
    a.close_abruptly()
    with s.connect() as b:
        assert_clean(b)
        assert b.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
        assert b.execute("SELECT 'usable'").fetchone()[0] == "usable"
    no_backend_idle_in_transaction(pg)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_client_vanishing_mid_copy_from_stdin_inside_a_transaction_leaves_a_clean_server(
        start_sluice, pg, table, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as setup:
        setup.execute(f"CREATE TABLE {table} (id int)")
    a = raw_login(s.port)
    a.query("BEGIN")
    a.query(f"INSERT INTO {table} VALUES (-1)")
    a.send(query_msg(f"COPY {table} FROM STDIN"))
    a.read_until({"G"})
    a.send(copy_data_msg(b"5\n6\n"))
    a.close_abruptly(reset=True)
    with s.connect() as b:
        assert_clean(b, table, -1)
        assert b.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_client_vanishing_mid_copy_to_stdout_leaves_a_clean_server_promptly(start_sluice, pg, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    a = raw_login(s.port)
    a.send(query_msg("COPY (SELECT g, repeat('q', 200) FROM generate_series(1, 5000000) g)"
                     " TO STDOUT"))
    a.read_until({"H"})
    for _ in range(100):
        a.read_message()
    a.close_abruptly()
    t0 = time.monotonic()
    with s.connect() as b:
        assert_clean(b)
        assert b.execute("SELECT 'usable'").fetchone()[0] == "usable"
    assert time.monotonic() - t0 < 20, "the next client waited for the abandoned 1 GB COPY OUT"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_client_vanishing_during_a_long_query_frees_the_server(start_sluice, pg, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "query_wait_timeout": 30})
    a = raw_login(s.port)
    a.send(query_msg("SELECT pg_sleep(4)"))
    pg.wait_for_active("app", "pg_sleep", timeout=10)
    a.close_abruptly()
    with s.connect() as b:
        assert_clean(b)
        assert b.execute("SELECT 1").fetchone()[0] == 1


def test_client_vanishing_mid_extended_protocol_batch_leaves_a_clean_server(start_sluice, pg):
    """Parse/Bind/Execute sent without the Sync: the server is mid-'transaction' of an implicit
    extended-protocol block until Sync arrives."""
    from pgwire import bind_msg, execute_msg, parse_msg

    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    a = raw_login(s.port)
    a.send(parse_msg("", "SELECT pg_current_xact_id()") + bind_msg("", "") + execute_msg())
    time.sleep(0.3)
    a.close_abruptly()
    with s.connect() as b:
        assert_clean(b)
