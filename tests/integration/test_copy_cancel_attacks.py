"""COPY, cancel requests and clients that leave mid-message, as careless and hostile clients send
them, with Postgres as the oracle: the same bytes directly and through sluice, and the client
must read the same messages (types, order, SQLSTATEs)."""

import signal
import socket
import threading
import time

import pytest

from conftest import APP_PASSWORD, APP_USER, wait_until
from pgwire import (PeerClosed, RawConn, ServerError, cancel_request, copy_data_msg,
                    copy_done_msg, message, parse_fields, query_msg, raw_login)
from test_careless_more import CLEAN, copy_then, one_backend_sluice
from test_careless_more import next_client_sees as careless_next_client_sees
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


def flush_with_a_body_then_sync(port, password):
    c = raw_login(port, password=password, timeout=10)
    try:
        # Postgres: ERROR 08P01 for the Flush, the Query skipped (it looks for the Sync), then the
        # Sync's ReadyForQuery and the session goes on
        c.send(message(b"H", b"x") + query_msg("SELECT 1") + message(b"S"))
        seen = seen_until_ready(c)
        c.send(query_msg("SELECT 2"))
        return seen + seen_until_ready(c)
    finally:
        c.close()


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_flush_with_a_body_is_refused_with_08P01_as_postgres_refuses_it(start_sluice, pg, mode):
    """An idle client's Flush is dropped as Postgres drops it (nothing to flush), but Postgres
    reads a Flush to its end: one with a body gets ERROR 08P01 "invalid message format" and the
    rest of the batch is skipped to the Sync. sluice dropped it with its body, so the batch's
    Query ran and was answered where Postgres skips it."""
    want = flush_with_a_body_then_sync(pg.port, APP_PASSWORD)
    assert want == [("E", "ERROR", "08P01"), ("Z", "I"), "T", "D", "C", ("Z", "I")]
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    assert flush_with_a_body_then_sync(s.port, None) == want
    after = raw_login(s.port, timeout=10)
    try:
        assert after.query("SELECT 3") == ([["3"]], ["SELECT 1"])
    finally:
        after.close()


# ---- the server ends the session while the client streams COPY data ------------------------------


class Streamer:
    """Sends CopyData on c from a thread until the socket fails or stop() is called; `sent`
    counts the messages that went."""

    def __init__(self, c):
        self.c = c
        self.sent = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        chunk = copy_data_msg(b"1\n" * 8000)
        try:
            while not self.stopping.is_set():
                self.c.sock.sendall(chunk)
                self.sent += 1
        except OSError:
            pass

    def stalled(self, seconds=0.5):
        """The sends block: every buffer between the client and the backend is full."""
        before = self.sent
        time.sleep(seconds)
        return self.sent == before

    def stop(self):
        self.stopping.set()
        self.thread.join(15)


def errors_until_closed(c, timeout=10):
    """The ErrorResponses c reads until the connection ends (by EOF or by a reset)."""
    out = []
    c.settimeout(timeout)
    while True:
        try:
            mtype, payload = c.read_message()
        except (PeerClosed, ConnectionResetError):
            return out
        if mtype == "E":
            f = parse_fields(payload)
            out.append((f.get("V"), f.get("C")))


def copy_streamed_into_a_terminated_backend(pg, port, password, table, sluice=None):
    """COPY FROM STDIN whose data the client streams ahead of the answer while the backend waits
    for a lock on the table, so that every buffer on the way fills; then the backend is
    terminated (pg_terminate_backend, as a restart of Postgres does to each backend). It closes
    with data unread, so its FATAL is followed by a reset: sluice (when given) is stopped
    meanwhile, to find both at once, as a busy sluice does."""
    with pg.superuser("appdb") as locker:
        locker.execute("BEGIN")
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        c = RawConn(port, timeout=20)
        try:
            c.startup(password=password)
            c.send(query_msg(f"COPY {table} FROM STDIN /* streamer */"))
            streamer = Streamer(c)
            wait_until(lambda: [r for r in pg.backends(APP_USER) if "streamer" in (r[3] or "")],
                       15, what="the COPY waiting for its lock")
            wait_until(streamer.stalled, 15, what="every buffer full")
            pid = [r[0] for r in pg.backends(APP_USER) if "streamer" in (r[3] or "")][0]
            if sluice:
                sluice.send_signal(signal.SIGSTOP)
            try:
                pg.query("SELECT pg_terminate_backend(%s)", [pid])
                wait_until(lambda: pid not in [r[0] for r in pg.backends(APP_USER)], 15,
                           what="the backend gone")
            finally:
                if sluice:
                    sluice.send_signal(signal.SIGCONT)
            seen = errors_until_closed(c)
            streamer.stop()
            return seen
        finally:
            c.close()
            locker.execute("ROLLBACK")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_backend_terminated_while_copy_data_streams_in_gives_the_client_its_fatal(
        start_sluice, pg, table, mode):
    """Postgres sends FATAL 57P01 and closes with the client's data unread; the client's next
    write fails, and it reads that FATAL (libpq does). sluice's write of the client's pending
    data to the closed backend failed before it read the FATAL waiting in the socket: the client
    got sluice's FATAL 08006 "server lost" instead, and retried nothing that checks for 57P01."""
    make_table(pg, table)
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1})
    want = copy_streamed_into_a_terminated_backend(pg, pg.port, APP_PASSWORD, table)
    assert want == [("FATAL", "57P01")]
    for _ in range(3):
        assert copy_streamed_into_a_terminated_backend(pg, s.port, None, table, s) == want
    assert next_client_sees(s.port) == [["1"]]
    assert pg.query(f"SELECT count(*) FROM {table}", dbname="appdb")[0][0] == 0


def next_client_sees(port):
    c = raw_login(port, timeout=10)
    try:
        return c.query("SELECT 1")[0]
    finally:
        c.close()


# ---- what has no place in COPY FROM STDIN --------------------------------------------------------

REFUSED_IN_COPY = {
    "unknown_type": message(b"z", b"abc"),
    "copy_fail_past_10000_bytes": copy_fail_msg(b"x" * 20_000),
    "sync_past_10000_bytes": message(b"S", b"x" * 20_000),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("what", sorted(REFUSED_IN_COPY))
def test_a_message_postgres_refuses_inside_copy_gets_its_errors(start_sluice, pg, table, mode,
                                                                what):
    """Inside COPY FROM STDIN Postgres refuses a type it does not know on its first byte (ERROR
    08P01 "unexpected message type"), and a CopyFail or Sync past 10000 bytes on its length
    (ERROR 08006), each followed by FATAL 08P01 "protocol synchronization was lost". sluice
    refused both itself with one FATAL 08P01 of its own; the server now refuses them, so the
    client reads Postgres's two errors, and the pool serves on."""
    with pg.superuser("appdb") as c:
        c.execute(f"CREATE TABLE {table} (id int)")
        c.execute(f"GRANT ALL ON {table} TO app")
    s = one_backend_sluice(start_sluice, mode)
    want = copy_then(pg.port, APP_PASSWORD, table, REFUSED_IN_COPY[what])
    assert want == [("E", "ERROR", "08006" if "bytes" in what else "08P01"),
                    ("E", "FATAL", "08P01")]
    assert copy_then(s.port, None, table, REFUSED_IN_COPY[what]) == want
    assert careless_next_client_sees(s.port) == CLEAN
    assert pg.query(f"SELECT count(*) FROM {table}", dbname="appdb")[0][0] == 0


# ---- cancels racing with the end of their query -------------------------------------------------


def send_cancel(port, key):
    """A CancelRequest, waited on until sluice closes its connection (as libpq's PQcancel)."""
    c = RawConn(port, timeout=10)
    try:
        c.send(cancel_request(*key))
        c.is_closed(10)
    finally:
        c.close()


@pytest.mark.timeout(90)
def test_cancels_racing_with_their_queries_end_never_reach_the_next_client_of_the_server(
        start_sluice, pg):
    """Transaction mode, one server: A runs short statements and cancels each at once, so its
    cancels land before, during and after the end of its statement, when the server may already
    be B's. For a few seconds of this, B's statements on that same server are never cancelled,
    and A's only ever fail with 57014."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_db_connections": 1, "query_wait_timeout": 30})
    a = raw_login(s.port, timeout=30)
    b = raw_login(s.port, timeout=30)
    stop_at = time.monotonic() + 6
    b_errors, b_done, a_errors = [], [0], []

    def run_b():
        while time.monotonic() < stop_at:
            try:
                b.query("SELECT pg_sleep(0.005)")
                b_done[0] += 1
            except ServerError as e:
                b_errors.append(e.fields.get("C"))

    other = threading.Thread(target=run_b, daemon=True)
    other.start()
    try:
        while time.monotonic() < stop_at:
            a.send(query_msg("SELECT 1"))
            send_cancel(s.port, a.backend_key)
            try:
                a.read_results()
            except ServerError as e:
                a_errors.append(e.fields.get("C"))
    finally:
        other.join(30)
        a.close()
        b.close()
    assert b_errors == [], "a cancel of A's reached B's statement on the server A had used"
    assert set(a_errors) <= {"57014"}
    assert b_done[0] > 0
