"""A client that leaves in the middle of its work, with Postgres as the oracle: each scenario runs
over a raw socket directly against Postgres and then through sluice, and the client must read the
same messages, the table must end the same, and sluice's server must come back (or go) as the
pool needs, never more backends than the cap (BackendSampler over pg_stat_activity).

- A request and Terminate in one write (a fire-and-forget client): Postgres answers everything it
  read before the Terminate (protocol 55.2.4, Termination), then closes. The client may read to
  EOF, shut its write side first, close at once (the answers go nowhere, the statement runs), or
  reset the connection (SO_LINGER 0, as a client that closes with answers unread does): the
  kernel still hands the bytes before the reset to whoever reads, and Postgres runs them.
- COPY FROM STDIN cut by Terminate: Postgres refuses the Terminate as a message that has no place
  in COPY (ERROR 08P01, then FATAL 08P01), rolls the COPY back and closes.
"""

import socket
import struct
import time

import pytest

from conftest import APP_PASSWORD, APP_USER, BackendSampler, wait_until
from pgwire import (PeerClosed, bind_msg, copy_data_msg, copy_done_msg, execute_msg,
                    parse_fields, parse_msg, query_msg, raw_login, sync_msg, terminate_msg)
from test_admin import ADMIN, console, pool_row
from test_terminate import make_table

CALL_TIMEOUT = 10.0
SERVE_AT_ONCE_S = 3.0


def rows(pg, table):
    return [r[0] for r in pg.query(f"SELECT id FROM {table} ORDER BY id", dbname="appdb")]


def answers(conn):
    """Every message up to EOF, an ErrorResponse as (severity, SQLSTATE, message)."""
    seen = []
    while True:
        try:
            mtype, payload = conn.read_message()
        except PeerClosed:
            return seen + ["EOF"]
        if mtype == "E":
            f = parse_fields(payload)
            seen.append(("E", f.get("V"), f.get("C"), f.get("M")))
        elif mtype == "N":
            continue  # a NOTICE is no part of the answer compared here
        else:
            seen.append((mtype, payload))


def targets(pg, s):
    return (("postgres", pg.port, APP_PASSWORD), ("sluice", s.port, None))


def reset(conn):
    """Close with a TCP reset (SO_LINGER 0) instead of a FIN."""
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def backend_of_sluice(s):
    c = raw_login(s.port, timeout=CALL_TIMEOUT)
    try:
        (row,), _ = c.query("SELECT pg_backend_pid(), pg_current_xact_id_if_assigned() IS NULL")
    finally:
        c.close()
    return row


def idle_backends(pg):
    return [r for r in pg.backends(APP_USER) if r[1] != "idle"] == []


def each_target_leaves(pg, s, table, leave):
    """Directly, then through sluice (cap 1): a client logs in, `leave(i, target, c)` sends its
    request i and goes; its INSERT must commit and every backend end idle, sluice never above
    its cap."""
    for i, (target, port, password) in enumerate(targets(pg, s)):
        wait_until(lambda: pg.count_backends(APP_USER) <= 1, 15, what="the direct backend gone")
        with BackendSampler(pg) as smp:
            c = raw_login(port, password=password, timeout=CALL_TIMEOUT)
            leave(i, target, c)
            c.close()
            wait_until(lambda: len(rows(pg, table)) == i + 1, 15,
                       what=f"the INSERT committed ({target})")
            wait_until(lambda: idle_backends(pg), 15, what="every backend idle")
        if target == "sluice":
            assert smp.error is None and smp.max <= 1, f"{smp.max} backends at once, cap 1"
    assert rows(pg, table) == [0, 1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("request_kind", ["query", "extended"])
@pytest.mark.parametrize("ending", ["read", "half_close", "close", "reset"])
def test_request_and_terminate_in_one_write_is_answered_and_run_like_postgres(
        start_sluice, pg, table, mode, request_kind, ending):
    make_table(pg, table)
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1,
                      "query_wait_timeout": 20})
    pid, clean = backend_of_sluice(s)

    def request(i):
        # the short sleep makes the statement still run when the Terminate is read
        sql = f"INSERT INTO {table} SELECT {i} FROM pg_sleep(0.1)"
        if request_kind == "query":
            return query_msg(sql)
        return parse_msg("", sql) + bind_msg("", "") + execute_msg() + sync_msg()

    seen = {}

    def leave(i, target, c):
        c.send(request(i) + terminate_msg())
        if ending == "half_close":
            c.sock.shutdown(socket.SHUT_WR)
        if ending == "reset":
            reset(c)
        elif ending != "close":
            seen[target] = answers(c)

    each_target_leaves(pg, s, table, leave)
    if ending in ("read", "half_close"):
        assert seen["sluice"] == seen["postgres"]
        assert [m if m == "EOF" else m[0] for m in seen["postgres"]][-3:] == ["C", "Z", "EOF"]
    # the one server went back to the pool clean, and serves the next client at once
    t0 = time.monotonic()
    assert backend_of_sluice(s) == [str(pid), clean]
    assert time.monotonic() - t0 < SERVE_AT_ONCE_S


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("request_kind", ["query", "extended", "commit"])
@pytest.mark.parametrize("ending", ["close", "half_close", "reset"])
def test_request_then_gone_without_terminate_runs_to_its_end_like_postgres(
        start_sluice, pg, table, mode, request_kind, ending):
    """A client sends a statement and goes while it runs, with no Terminate (a process killed,
    a script that exits without closing, a timeout that drops the socket). Postgres does not
    look at the socket while it runs a statement that writes nothing until its end: an
    autocommit INSERT commits, and so does a COMMIT already sent. Through sluice it must too
    (within server_drain_timeout), where it used to be cancelled and rolled back."""
    make_table(pg, table)
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1,
                      "query_wait_timeout": 20, "server_drain_timeout": "20s"})
    pid, clean = backend_of_sluice(s)

    def leave(i, target, c):
        sql = f"INSERT INTO {table} SELECT {i} FROM pg_sleep(0.5)"
        if request_kind == "commit":
            c.query("BEGIN")
            request = query_msg(sql + "; COMMIT")
        elif request_kind == "query":
            request = query_msg(sql)
        else:
            request = parse_msg("", sql) + bind_msg("", "") + execute_msg() + sync_msg()
        c.send(request)
        pg.wait_for_active(APP_USER, "pg_sleep", timeout=15)
        if ending == "half_close":
            c.sock.shutdown(socket.SHUT_WR)
        elif ending == "reset":
            reset(c)

    each_target_leaves(pg, s, table, leave)
    # the one server came back clean once the statement ended, and serves the next client
    assert backend_of_sluice(s) == [str(pid), clean]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("last", ["commit", "left_open"])
@pytest.mark.parametrize("ending", ["close", "reset"])
def test_request_and_terminate_inside_a_transaction_block_end_it_like_postgres(
        start_sluice, pg, table, mode, last, ending):
    """A transaction block begun by an earlier request, then its statements and Terminate in one
    write and the socket closed at once, the statement still running (a hang-up with answers
    due): Postgres runs what it read before the Terminate, so a COMMIT among it commits, and a
    transaction left open is rolled back when the session ends."""
    make_table(pg, table)
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1,
                      "query_wait_timeout": 20})
    pid, clean = backend_of_sluice(s)
    for i, (target, port, password) in enumerate(targets(pg, s)):
        wait_until(lambda: pg.count_backends(APP_USER) <= 1, 15, what="the direct backend gone")
        with BackendSampler(pg) as smp:
            c = raw_login(port, password=password, timeout=CALL_TIMEOUT)
            c.query("BEGIN")
            sql = f"INSERT INTO {table} SELECT {i} FROM pg_sleep(0.2)"
            c.send(query_msg(sql + ("; COMMIT" if last == "commit" else "")) + terminate_msg())
            reset(c) if ending == "reset" else c.close()
            wait_until(lambda: idle_backends(pg), 15, what="every backend idle")
            if last == "commit":
                wait_until(lambda: len(rows(pg, table)) == i + 1, 15,
                           what=f"the transaction committed ({target})")
        if target == "sluice":
            assert smp.error is None and smp.max <= 1, f"{smp.max} backends at once, cap 1"
    assert rows(pg, table) == ([0, 1] if last == "commit" else [])
    assert backend_of_sluice(s) == [str(pid), clean]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("ending", ["close", "reset"])
def test_request_and_terminate_of_a_queued_client_run_once_a_server_is_free(
        start_sluice, pg, table, mode, ending):
    """The pool's one server is busy; a client sends a Query and Terminate and closes or resets
    its connection while it waits for a server: Postgres would have read and run the Query (the
    test above), so sluice runs it once the server is free."""
    make_table(pg, table)
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1,
                      "query_wait_timeout": 30, "admin_users": ADMIN})
    holder = raw_login(s.port, timeout=CALL_TIMEOUT)
    holder.query("BEGIN")
    c = raw_login(s.port, timeout=CALL_TIMEOUT)
    c.send(query_msg(f"INSERT INTO {table} VALUES (7)") + terminate_msg())
    with console(s) as a:
        wait_until(lambda: pool_row(a)["cl_waiting"] == 1, 15, what="the client queued")
    reset(c) if ending == "reset" else c.close()
    holder.query("COMMIT")
    holder.close()
    wait_until(lambda: rows(pg, table) == [7], 15, what="the queued INSERT committed")
    with console(s) as a:
        wait_until(lambda: pool_row(a)["cl_waiting"] == 0 and pool_row(a)["cl_active"] == 0, 15,
                   what="the queued client gone")


def copy_cut_by_terminate(conn, table, copy_kind):
    """Start COPY FROM STDIN, send rows, then Terminate without CopyDone; what comes back."""
    sql = f"COPY {table} FROM STDIN"
    data = copy_data_msg(b"1\n2\n")
    if copy_kind == "before_response":
        conn.send(query_msg(sql) + data + terminate_msg())
        return answers(conn)
    if copy_kind == "query":
        conn.send(query_msg(sql))
    else:
        conn.send(parse_msg("", sql) + bind_msg("", "") + execute_msg() + sync_msg())
    conn.read_until("G")
    conn.send(data + terminate_msg())
    return [("G", "…")] + answers(conn)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("copy_kind", ["query", "extended", "before_response"])
def test_copy_cut_by_terminate_is_refused_and_rolled_back_like_postgres(start_sluice, pg, table,
                                                                        mode, copy_kind):
    make_table(pg, table)
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1,
                      "query_wait_timeout": 20})
    seen = {}
    for target, port, password in targets(pg, s):
        wait_until(lambda: pg.count_backends(APP_USER) == 0, 15, what="no backend left")
        with BackendSampler(pg) as smp:
            c = raw_login(port, password=password, timeout=CALL_TIMEOUT)
            try:
                seen[target] = [(m[0], "…") if m[0] == "G" else m
                                for m in copy_cut_by_terminate(c, table, copy_kind)]
            finally:
                c.close()
            wait_until(lambda: idle_backends(pg), 15, what="every backend idle")
        if target == "sluice":
            assert smp.error is None and smp.max <= 1, f"{smp.max} backends at once, cap 1"
    assert seen["sluice"] == seen["postgres"]
    assert seen["postgres"][1:] == [
        ("E", "ERROR", "08P01", "unexpected message type 0x58 during COPY from stdin"),
        ("E", "FATAL", "08P01", "terminating connection because protocol synchronization was lost"),
        "EOF"]
    assert rows(pg, table) == []
    # the server ended with the session, as Postgres's backend does; the next client is served
    t0 = time.monotonic()
    assert backend_of_sluice(s)[1] == "t"
    assert time.monotonic() - t0 < SERVE_AT_ONCE_S


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("leave", ["fin", "rst", "terminate", "terminate_read"])
def test_extended_copy_left_before_its_copy_in_response_frees_the_server_at_once(
        start_sluice, pg, table, mode, leave):
    """Parse/Bind/Execute of COPY FROM STDIN and two Syncs, and the client goes before the
    CopyInResponse: Postgres ignores the Syncs in COPY and ends the COPY at the Terminate or the
    closed socket. sluice answers the orphaned CopyInResponse with CopyFail and a Sync of its own
    and reuses the server at once (it used to hold it for twice server_drain_timeout)."""
    make_table(pg, table)
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1,
                      "server_drain_timeout": "30s", "query_wait_timeout": 60})
    request = (parse_msg("", f"COPY {table} FROM STDIN") + bind_msg("", "") + execute_msg()
               + sync_msg() + sync_msg())
    seen = {}
    for target, port, password in targets(pg, s):
        wait_until(lambda: pg.count_backends(APP_USER) == 0, 15, what="no backend left")
        with BackendSampler(pg) as smp:
            c = raw_login(port, password=password, timeout=CALL_TIMEOUT)
            if leave.startswith("terminate"):
                c.send(request + terminate_msg())
                if leave == "terminate_read":
                    seen[target] = [(m[0], "…") if m[0] == "G" else m for m in answers(c)]
                c.close()
            else:
                c.send(request)
                c.close_abruptly(reset=leave == "rst")
            if target == "sluice":
                t0 = time.monotonic()
                assert backend_of_sluice(s)[1] == "t"
                waited = time.monotonic() - t0
                assert waited < 10, f"the next client waited {waited:.1f} s for the one server"
            wait_until(lambda: idle_backends(pg), 15, what="every backend idle")
        if target == "sluice":
            assert smp.error is None and smp.max <= 1, f"{smp.max} backends at once, cap 1"
    assert rows(pg, table) == []
    if leave == "terminate_read":
        assert seen["sluice"] == seen["postgres"]
        assert seen["postgres"][-3:] == [
            ("E", "ERROR", "08P01", "unexpected message type 0x58 during COPY from stdin"),
            ("E", "FATAL", "08P01",
             "terminating connection because protocol synchronization was lost"),
            "EOF"]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("request_kind", ["query", "extended"])
@pytest.mark.parametrize("terminate", [False, True], ids=["no_terminate", "terminate"])
@pytest.mark.parametrize("ending", ["close", "reset"])
def test_copy_sent_ahead_then_gone_leaves_the_next_client_its_own_answers(
        start_sluice, pg, table, mode, request_kind, terminate, ending):
    """COPY FROM STDIN with its data and CopyDone sent ahead of the CopyInResponse (and, for the
    extended protocol, a Sync after them), then the client goes. Postgres ends the COPY at that
    CopyDone and answers the Sync after it. sluice used to take the Sync for one swallowed by the
    COPY, end the COPY again with CopyFail and an abort batch of its own, and reuse the server
    with one reply too many: the next client got the abort batch's ReadyForQuery for its query
    and waited for ever for the rest. The next client must get its own answers, at once."""
    make_table(pg, table)
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1,
                      "server_drain_timeout": "30s", "query_wait_timeout": 60})
    backend_of_sluice(s)
    ahead = copy_data_msg(b"1\n2\n") + copy_done_msg()
    if request_kind == "query":
        request = query_msg(f"COPY {table} FROM STDIN") + ahead
    else:
        request = (parse_msg("", f"COPY {table} FROM STDIN") + bind_msg("", "") + execute_msg()
                   + ahead + sync_msg())
    with BackendSampler(pg) as smp:
        c = raw_login(s.port, timeout=CALL_TIMEOUT)
        c.send(request + (terminate_msg() if terminate else b""))
        reset(c) if ending == "reset" else c.close()
        for _ in range(3):  # each gets its own row, from one server at a time
            t0 = time.monotonic()
            pid, clean = backend_of_sluice(s)
            assert clean == "t"
            waited = time.monotonic() - t0
            assert waited < 10, f"the next client waited {waited:.1f} s for the one server"
    assert smp.error is None and smp.max <= 1, f"{smp.max} backends at once, cap 1"
    # the rows came before the close, so Postgres ran the COPY; sluice's cancel of a backend it
    # closes may race with it
    assert rows(pg, table) in ([], [1, 2])
