"""A client that pipelines many requests and reads the answers only after writing them all, with
Postgres as the oracle: Postgres answers every one (when its output blocks it stops reading, and
the client's writes wait), and so must sluice. Sluice matches each reply to its request in a
queue per server (prepared.h, STMT_QUEUE_MAX); when that fills it stops reading the client until
replies drain it, as Postgres would, where it used to end the client with FATAL 54000.

Sizes are such that the kernel's socket buffers hold what the client leaves unread (the direct
run shows it): the writer finishes before the reader starts, and no timing decides the outcome."""

import socket
import struct
import threading
import time

import pytest

from pgwire import (bind_msg, close_msg, describe_msg, execute_msg, message, parse_fields,
                    parse_msg, raw_login, sync_msg)

TIMEOUT = 60


def statements(n, kind):
    """n x (Parse, Bind, Describe, Execute), then a Sync. kind: "unnamed" (the portal described,
    as psycopg3's pipeline mode and pgx's batches send), "described" (the unnamed statement
    described, which alternates with the Parses in sluice's queue), "named" (each its own
    statement)."""
    out = []
    for i in range(n):
        name = f"bp_{i}" if kind == "named" else ""
        describe = describe_msg("S", name) if kind == "described" else describe_msg("P", "")
        out.append(parse_msg(name, "SELECT $1::int", (23,)) + bind_msg("", name, [str(i)])
                   + describe + execute_msg())
    return b"".join(out) + sync_msg()


def answers(n, kind):
    """What Postgres answers statements(n, kind): {type: count}."""
    seen = {"1": n, "2": n, "T": n, "D": n, "C": n, "Z": 1}
    if kind == "described":
        seen["t"] = n
    return seen


def failing_first(n, kind):
    """An error first (the server skips the rest up to the Sync), then n statements, a Sync, and
    a last statement that runs."""
    return (parse_msg("", "SELECT 1/0") + bind_msg("", "") + execute_msg()
            + statements(n, kind) + parse_msg("", "SELECT 7") + bind_msg("", "")
            + execute_msg() + sync_msg())


def count_replies(sock, n_ready):
    """Read up to the n_ready-th ReadyForQuery: {type: count}, and the errors' SQLSTATEs."""
    seen, errors, buf, at, zs = {}, [], bytearray(), 0, 0
    while zs < n_ready:
        # a whole header first, then the whole message it gives the length of
        need = 5 if len(buf) - at < 5 else 1 + struct.unpack_from("!I", buf, at + 1)[0]
        if len(buf) - at < need:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise AssertionError(f"connection closed after {seen}, errors {errors}")
            del buf[:at]
            at = 0
            buf += chunk
            continue
        t = chr(buf[at])
        length = need - 1
        body = bytes(buf[at + 5:at + 1 + length])
        at += 1 + length
        seen[t] = seen.get(t, 0) + 1
        if t == "E":
            f = parse_fields(body)
            errors.append((f.get("S"), f.get("C")))
        if t == "Z":
            zs += 1
    return seen, errors


class SlowSocket:
    """A socket read 4 kB at a time, with a pause before each read: a client that reads from the
    start, slower than the server answers (whatever the pace, every answer must come)."""

    def __init__(self, sock):
        self.sock = sock

    def recv(self, n):
        time.sleep(0.001)
        return self.sock.recv(min(n, 4096))


def write_and_read(port, data, n_ready, login, reader):
    """One thread writes all of data. reader "after": only then does the client read its
    answers; "slow": it reads them slowly from the start."""
    c = raw_login(port, timeout=TIMEOUT, **login)
    if reader == "slow":
        try:
            t = threading.Thread(target=c.sock.sendall, args=(data,), daemon=True)
            t.start()
            seen = count_replies(SlowSocket(c.sock), n_ready)
            t.join(TIMEOUT)
            return seen, []
        except socket.timeout:
            raise AssertionError("no answer within the timeout") from None
        finally:
            c.close()
    written = threading.Event()
    failure = []

    def writer():
        try:
            c.sock.sendall(data)
        except OSError as e:
            failure.append(e)
        written.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        assert written.wait(TIMEOUT), "the client's writes never finished: nothing was read"
        t.join(TIMEOUT)
        try:
            return count_replies(c.sock, n_ready), failure
        except socket.timeout:
            raise AssertionError("no answer within the timeout") from None
    finally:
        c.close()


def direct_and_pooled(pg, start_sluice, mode, data, n_ready, reader="after"):
    # 12000 named statements: past STMT_QUEUE_MAX (8192), under this limit of their own
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "workers": 1,
                      "max_prepared_statements_per_client": 20000})
    expected = write_and_read(pg.port, data, n_ready, {"password": "apppass"}, reader)
    seen = write_and_read(s.port, data, n_ready, {}, reader)
    return expected, seen


KINDS = ["unnamed", "described", "named"]
MODES = ["transaction", "session"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_pipeline_read_after_writing_is_answered_whole(pg, start_sluice, mode, kind):
    n = 12000
    expected, seen = direct_and_pooled(pg, start_sluice, mode, statements(n, kind), 1)
    assert expected == ((answers(n, kind), []), [])
    assert seen == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_pipeline_after_an_error_is_skipped_to_its_sync(pg, start_sluice, mode, kind):
    n = 12000
    expected, seen = direct_and_pooled(pg, start_sluice, mode, failing_first(n, kind), 2)
    assert expected == (({"1": 2, "E": 1, "2": 1, "D": 1, "C": 1, "Z": 2},
                         [("ERROR", "22012")]), [])
    assert seen == expected


@pytest.mark.parametrize("mode", MODES)
def test_pipeline_read_slowly_is_answered_whole(pg, start_sluice, mode):
    n = 12000
    expected, seen = direct_and_pooled(pg, start_sluice, mode, statements(n, "named"), 1,
                                       reader="slow")
    assert expected == ((answers(n, "named"), []), [])
    assert seen == expected


def skipped_after_a_flushed_error(c):
    """What the client sends once it has seen the error of a batch not yet synced is skipped by
    the server to the Sync, and sluice frames it without queueing (nothing of it is answered):
    a Parse there makes no statement, a Close there closes none."""
    def until(wanted):
        seen = []
        while True:
            t, p = c.read_message()
            seen.append((t, parse_fields(p).get("C")) if t == "E" else t)
            if t == wanted:
                return seen

    steps = []
    c.send(parse_msg("keep", "SELECT 1") + sync_msg())
    steps.append(until("Z"))
    c.send(parse_msg("", "SELECT 1/0") + bind_msg("", "") + execute_msg() + message(b"H"))
    steps.append(until("E"))
    c.send(parse_msg("made", "SELECT 2") + close_msg("S", "keep") + bind_msg("", "keep")
           + execute_msg() + sync_msg())
    steps.append(until("Z"))
    c.send(bind_msg("", "keep") + execute_msg() + sync_msg())
    steps.append(until("Z"))
    c.send(bind_msg("", "made") + execute_msg() + sync_msg())
    steps.append(until("Z"))
    return steps


def test_messages_after_a_seen_error_are_skipped_as_postgres_skips_them(pg, start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "workers": 1})
    direct = raw_login(pg.port, password="apppass", timeout=TIMEOUT)
    pooled = raw_login(s.port, timeout=TIMEOUT)
    try:
        expected = skipped_after_a_flushed_error(direct)
        assert expected == [["1", "Z"], ["1", ("E", "22012")], ["Z"],
                            ["2", "D", "C", "Z"], [("E", "26000"), "Z"]]
        assert skipped_after_a_flushed_error(pooled) == expected
    finally:
        direct.close()
        pooled.close()


def test_pipeline_sent_with_terminate_and_a_close_is_answered_whole(pg, start_sluice):
    """The client writes it all, a Terminate, shuts its sending side, and only then reads: held
    back by the full queue, sluice sees the close only once what came before it is framed, and
    answers it all, as Postgres does."""
    n = 12000
    data = statements(n, "named") + b"X\0\0\0\4"
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "workers": 1,
                      "max_prepared_statements_per_client": 20000})
    for port, login in ((pg.port, {"password": "apppass"}), (s.port, {})):
        c = raw_login(port, timeout=TIMEOUT, **login)
        try:
            t = threading.Thread(target=c.sock.sendall, args=(data,), daemon=True)
            t.start()
            t.join(TIMEOUT)
            assert not t.is_alive(), "the client's writes never finished: nothing was read"
            c.sock.shutdown(socket.SHUT_WR)
            assert count_replies(c.sock, 1) == (answers(n, "named"), [])
            assert c.is_closed(TIMEOUT)
        finally:
            c.close()
