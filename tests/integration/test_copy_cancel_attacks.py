"""COPY, cancel requests and clients that leave mid-message, as careless and hostile clients send
them, with Postgres as the oracle: the same bytes directly and through sluice, and the client
must read the same messages (types, order, SQLSTATEs)."""

import socket

import pytest

from conftest import APP_PASSWORD
from pgwire import (PeerClosed, copy_data_msg, copy_done_msg, message, parse_fields, query_msg,
                    raw_login)
from test_terminate import make_table


def copy_fail_msg(text):
    return message(b"f", text + b"\0")


def flush_msg():
    return message(b"H")


def seen_until_ready(c, timeout=10):
    """Every message up to the next ReadyForQuery (or EOF): types, an error as its severity and
    SQLSTATE, a ReadyForQuery with its status."""
    out = []
    c.settimeout(timeout)
    while True:
        try:
            mtype, payload = c.read_message()
        except PeerClosed:
            return out + ["EOF"]
        if mtype == "E":
            f = parse_fields(payload)
            out.append(("E", f.get("V"), f.get("C")))
        elif mtype == "Z":
            return out + [("Z", payload.decode())]
        elif mtype not in ("N", "S"):
            out.append(mtype)


def silent_for(c, seconds):
    """Nothing comes from c for `seconds`, and it is not closed."""
    c.settimeout(seconds)
    try:
        c.sock.recv(65536)
    except socket.timeout:
        return True
    except OSError:
        pass  # reset: closed
    return False


# A COPY's stray rest: what a client that streams its data before it reads the answer sends after
# its server ended the COPY with an error (a CopyData longer than sluice's buffer among it).
STRAY = (copy_data_msg(b"2\n" * 50_000) + copy_data_msg(b"3\n") + copy_done_msg()
         + copy_fail_msg(b"never mind") + flush_msg())


def copy_error_then_its_stray_rest(port, password, table, before_stray, after_stray):
    c = raw_login(port, password=password, timeout=10)
    try:
        c.send(query_msg(f"COPY {table} FROM STDIN"))
        c.read_until({"G"})
        c.send(copy_data_msg(b"not-a-number\n"))
        seen = seen_until_ready(c)
        before_stray()
        c.send(STRAY)
        after_stray(c)
        c.send(query_msg(f"SELECT count(*) FROM {table}"))
        return seen + seen_until_ready(c)
    finally:
        c.close()


@pytest.mark.timeout(60)
def test_the_rest_of_a_failed_copy_is_dropped_without_waiting_for_a_server(start_sluice, pg,
                                                                            table):
    """Postgres drops CopyData, CopyDone and CopyFail outside COPY (and a Flush with nothing to
    flush) without a word. In transaction mode the server went back at the COPY error's
    ReadyForQuery, and sluice leased a server for the stray rest: with the pool busy the client
    waited, and after query_wait_timeout got FATAL 53300 and was closed for messages Postgres
    ignores."""
    make_table(pg, table)
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_db_connections": 1, "query_wait_timeout": 1})
    want = copy_error_then_its_stray_rest(pg.port, APP_PASSWORD, table, lambda: None,
                                          lambda c: None)
    assert want == [("E", "ERROR", "22P02"), ("Z", "I"), "T", "D", "C", ("Z", "I")]
    holder = raw_login(s.port, timeout=10)
    quiet = []

    def take_the_one_server():
        holder.query("BEGIN")
        holder.query("SELECT 1")

    def wait_past_query_wait_timeout_then_give_it_back(c):
        quiet.append(silent_for(c, 3))
        holder.query("COMMIT")

    try:
        got = copy_error_then_its_stray_rest(s.port, None, table, take_the_one_server,
                                             wait_past_query_wait_timeout_then_give_it_back)
    finally:
        holder.close()
    assert quiet == [True], "the client was answered for messages Postgres ignores"
    assert got == want
