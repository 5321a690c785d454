"""Review of the relay's transaction-mode changes of Dec 7 (d389e67: a Query whose EXECUTE's
re-prepare fails runs the statements before it; ab73c28: a full reply queue holds the client
instead of ending it, and what the client sends while the server skips to the Sync is forwarded
untracked), with Postgres as the oracle where sluice should be transparent."""

import contextlib
import socket
import struct
import threading
import time

import pytest

from conftest import pump, wait_until
from pgwire import (bind_msg, copy_data_msg, copy_done_msg, execute_msg, message, parse_fields,
                    parse_msg, PeerClosed, query_msg, raw_login, sync_msg)
from tcp_proxy import ForwardingProxy, recv_exactly
from test_prepared_many_executes import on_another_backend, pid, prepare
from test_prepared_pipeline_attacks import (cancel, compare, ddl, failing_named, fresh_table, q, run_both,
                                            seen)

TIMEOUT = 30


def until(c, wanted):
    """Message types read up to wanted (errors as ("E", SQLSTATE))."""
    seen = []
    while True:
        t, p = c.read_message()
        seen.append((t, parse_fields(p).get("C")) if t == "E" else t)
        if t == wanted:
            return seen


def copy_error_seen_before_copy_done(c, table, pipelined, end=copy_done_msg()):
    """An extended-protocol COPY FROM STDIN with no Sync before its data (a raw client; libpq
    sends one after the Execute): the server fails on a bad row while the client streams, and
    the client, having read that error, ends the COPY with CopyDone and Sync. Postgres skips the
    CopyDone (it skips to the Sync after an error in an extended batch) and answers the Sync."""
    steps = []
    c.send(parse_msg("", f"COPY {table} FROM STDIN") + bind_msg("", "") + execute_msg())
    steps.append(until(c, "G"))
    c.send(copy_data_msg(b"1\nnot-a-number\n"))
    steps.append(until(c, "E"))
    after = parse_msg("", "SELECT 42") + bind_msg("", "") + execute_msg() + sync_msg()
    if pipelined:
        c.send(end + sync_msg() + after)
        steps.append(until(c, "Z"))
    else:
        c.send(end + sync_msg())
        steps.append(until(c, "Z"))
        c.send(after)
    steps.append(until(c, "Z"))
    return steps


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize("end", ["CopyDone", "CopyFail"])
def test_a_copy_failed_before_its_copy_done_ends_at_the_sync_as_on_postgres(pg, start_sluice,
                                                                           table, pipelined,
                                                                           end):
    """ab73c28 made every message but Sync sent while the server skips to the Sync untracked,
    the CopyDone included: sluice then still thought the COPY ran (copy_in), took the client's
    Sync for one Postgres ignores inside a COPY, and never counted the ReadyForQuery that
    answers it."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "workers": 1,
                      "query_wait_timeout": 10})
    with s.connect() as c:
        c.execute(f"CREATE TABLE {table} (id int)")
    ends = {"CopyDone": copy_done_msg(), "CopyFail": message(b"f", b"gave up\0")}
    direct = raw_login(pg.port, password="apppass", timeout=TIMEOUT)
    pooled = raw_login(s.port, timeout=TIMEOUT)
    try:
        expected = copy_error_seen_before_copy_done(direct, table, pipelined, ends[end])
        assert expected == [["1", "2", "G"], [("E", "22P02")], ["Z"],
                            ["1", "2", "D", "C", "Z"]]
        assert copy_error_seen_before_copy_done(pooled, table, pipelined, ends[end]) == expected
        # the one server went back to the pool: another client gets it
        other = raw_login(s.port, timeout=TIMEOUT)
        try:
            rows, _ = other.query("SELECT 7")
            assert rows == [["7"]]
        finally:
            other.close()
    finally:
        direct.close()
        pooled.close()


class GateProxy(ForwardingProxy):
    """Forwards to Postgres; once armed, the server's replies after the first ErrorResponse of
    the given SQLSTATE are held until release is set, then the next one alone is forwarded and
    the rest held until rest is set."""

    def __init__(self, target_port, sqlstate):
        super().__init__(target_port)
        self.sqlstate = sqlstate
        self.armed = threading.Event()
        self.holding = threading.Event()
        self.release = threading.Event()
        self.rest = threading.Event()
        self.one_passed = threading.Event()

    def serve_session(self, a, b):
        threading.Thread(target=pump, args=(a, b), daemon=True).start()
        try:
            first = recv_exactly(b, 1)
            if first == b"N":  # an SSLRequest refused: one byte, then typed messages
                a.sendall(first)
                first = b""
            while True:
                head = first + recv_exactly(b, 5 - len(first))
                first = b""
                if len(head) < 5:
                    break
                (length,) = struct.unpack("!I", head[1:])
                body = recv_exactly(b, length - 4)
                a.sendall(head + body)
                if self.release.is_set() and not self.one_passed.is_set():
                    self.one_passed.set()
                    self.rest.wait(TIMEOUT)
                if (head[:1] == b"E" and self.armed.is_set() and not self.holding.is_set()
                        and parse_fields(body).get("C") == self.sqlstate):
                    self.holding.set()
                    self.release.wait(TIMEOUT)
        except OSError:
            pass
        finally:
            for x in (a, b):
                with contextlib.suppress(OSError):
                    x.shutdown(socket.SHUT_RDWR)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("drain", ["timed_out", "whole"])
def test_a_client_gone_before_the_ready_of_sluices_own_sync_leaves_no_stray_replies(
        pg, start_sluice, drain):
    """d389e67: after sluice's Parse for a Query's EXECUTE fails, sluice sends a Sync of its own
    (its ReadyForQuery swallowed) and then the Query. A client that leaves before that
    ReadyForQuery arrives leaves its server draining the Query's replies: that ReadyForQuery is
    still sluice's, not the Query's, or the server would be taken as done one reply early and
    the Query's rows, its error and its ReadyForQuery would reach whoever has it next."""
    table = "t_review_gone_ready"
    fresh_table(pg, table)
    proxy = GateProxy(pg.port, "42P01")
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1,
                      "server_drain_timeout": 1 if drain == "timed_out" else 30},
                     databases={"appdb": pg.db_entry(port=proxy.port)})
    c = raw_login(s.port, timeout=TIMEOUT)
    holder = None
    try:
        holder = on_another_backend(s, c, [("g", f"SELECT a FROM {table}")])
        ddl(pg, f"DROP TABLE {table}")
        proxy.armed.set()
        c.send(query_msg("SELECT 1; EXECUTE g"))
        assert proxy.holding.wait(TIMEOUT), "sluice's Parse of g did not fail"
        mark = s.mark()
        c.close()
        if drain == "timed_out":  # the link ends: the server drains without its client
            s.wait_for_log(r"server_drain_timeout", timeout=TIMEOUT, since=mark)
        else:  # the client, hung up, is kept until its answers are in
            time.sleep(1)
        proxy.release.set()
        assert proxy.one_passed.wait(TIMEOUT)
        time.sleep(1)  # sluice reads that ReadyForQuery alone
        proxy.rest.set()
        q(holder, "COMMIT")
        # both servers serve their next clients their own answers only
        for i in range(6):
            other = raw_login(s.port, timeout=TIMEOUT)
            try:
                rows, _ = other.query(f"SELECT {i}")
                assert rows == [[str(i)]]
            finally:
                other.close()
        bad = [x for x in s.log if "matches no request" in x or "malformed" in x]
        assert not bad, "\n".join(bad)
    finally:
        proxy.release.set()
        proxy.rest.set()
        for x in (c, holder):
            if x:
                x.close()
        proxy.close()


def statement_mode_steps(c):
    return [q(c, "SELECT 1; EXECUTE g"), q(c, "EXECUTE a; EXECUTE g; EXECUTE a"),
            q(c, "EXECUTE a"), q(c, "SELECT 2")]


@pytest.mark.timeout(120)
def test_statement_mode_a_failed_parse_after_statements_runs_them_as_on_postgres(
        pg, start_sluice):
    """d389e67 in statement mode: sluice's own Sync's ReadyForQuery is swallowed, not taken for
    the client's (nor for a transaction statement mode forbids), and the Query's rows, error and
    ReadyForQuery are Postgres's."""
    table = "t_review_stmt_mode"
    fresh_table(pg, table)
    named = [("a", "SELECT 1 AS v"), ("g", f"SELECT a FROM {table}")]
    s = start_sluice({"pool_mode": "statement", "default_pool_size": 2, "workers": 1})
    direct = raw_login(pg.port, password="apppass", timeout=TIMEOUT)
    c = raw_login(s.port, timeout=TIMEOUT)
    busy = raw_login(s.port, timeout=TIMEOUT)
    try:
        prepare(direct, named)
        first = pid(c)
        prepare(c, named)
        # the backend c prepared on runs another client's statement: c's next one gets another
        busy.send(query_msg("SELECT pg_backend_pid(), pg_sleep(3)"))
        time.sleep(0.5)
        assert pid(c) != first
        ddl(pg, f"DROP TABLE {table}")
        want = statement_mode_steps(direct)
        got = statement_mode_steps(c)
        compare(want, got)
    finally:
        for x in (c, direct, busy):
            x.close()


def session_text_while_skipping(c):
    """A Query that SETs, PREPAREs and DEALLOCATEs, sent after the error of a batch not yet
    synced: Postgres skips it to the Sync, so none of it happens."""
    steps = []
    c.send(parse_msg("keep", "SELECT 1") + sync_msg())
    steps.append(until(c, "Z"))
    c.send(parse_msg("", "SELECT 1/0") + bind_msg("", "") + execute_msg() + message(b"H"))
    steps.append(until(c, "E"))
    c.send(query_msg("SET application_name = 'skipped'; PREPARE p AS SELECT 2; "
                     "DEALLOCATE keep") + query_msg("DISCARD ALL") + sync_msg())
    steps.append(until(c, "Z"))
    for sql in ("SHOW application_name", "EXECUTE p", "EXECUTE keep"):
        c.send(query_msg(sql))
        steps.append(until(c, "Z"))
    return steps


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", ["warn", "pin", "refuse"])
def test_a_query_skipped_after_an_error_changes_no_session_state(pg, start_sluice, policy):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "workers": 1,
                      "session_state_policy": policy})
    direct = raw_login(pg.port, password="apppass", timeout=TIMEOUT, application_name="rv")
    pooled = raw_login(s.port, timeout=TIMEOUT, application_name="rv")
    try:
        expected = session_text_while_skipping(direct)
        assert expected[2] == ["Z"], expected
        assert session_text_while_skipping(pooled) == expected
    finally:
        direct.close()
        pooled.close()


@pytest.mark.timeout(120)
def test_a_terminate_while_the_server_skips_to_the_sync_ends_the_client_only(pg, start_sluice):
    """Terminate after the error of a batch not synced (the server skips everything to the Sync,
    a Terminate included): still the client leaving, and the server comes back sound, holding no
    statement the client Parsed while it was skipped."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "workers": 1})
    c = raw_login(s.port, timeout=TIMEOUT)
    try:
        c.send(parse_msg("", "SELECT 1/0") + bind_msg("", "") + execute_msg() + message(b"H"))
        assert until(c, "E") == ["1", ("E", "22012")]
        c.send(parse_msg("made", "SELECT 2") + message(b"X"))
        assert c.is_closed(TIMEOUT)
    finally:
        c.close()
    other = raw_login(s.port, timeout=TIMEOUT)
    try:
        other.send(parse_msg("made", "SELECT 3") + bind_msg("", "made") + execute_msg()
                   + sync_msg())
        assert until(other, "Z") == ["1", "2", "D", "C", "Z"]
        rows, _ = other.query("SELECT count(*) FROM pg_prepared_statements")
        assert rows == [["1"]]
    finally:
        other.close()


def drop_before_execute_steps(c):
    return [q(c, "DEALLOCATE g; EXECUTE g"), q(c, "EXECUTE g"), q(c, "EXECUTE a"),
            q(c, "DEALLOCATE ALL; EXECUTE h"), q(c, "EXECUTE h")]


def run_both_table_dropped(pg, start_sluice, table, steps):
    """run_both with `table` made afresh, a statement on it prepared (failing_named), and the
    table dropped before the steps: each EXECUTE of it must be prepared again, and fails."""
    fresh_table(pg, table)
    return run_both(pg, start_sluice, failing_named(table), steps,
                    setup=lambda: ddl(pg, f"DROP TABLE {table}"))


@pytest.mark.timeout(120)
def test_a_failed_parse_of_a_statement_the_query_deallocates_first(pg, start_sluice):
    """DEALLOCATE g; EXECUTE g (g's table dropped): Postgres deallocates g, then EXECUTE finds
    no g (26000), not g's table error."""
    table = "t_review_dealloc_first"
    want, got = run_both_table_dropped(pg, start_sluice, table, drop_before_execute_steps)
    compare(want, got)


def mixed_failed_parse_steps(c):
    return [q(c, "EXECUTE g; EXECUTE g"), q(c, "SELECT 1/0; EXECUTE g"),
            q(c, "EXECUTE h; EXECUTE \"g\"; EXECUTE a"), q(c, "execute G; SELECT 5"),
            q(c, "SET application_name = 'before'; EXECUTE g"), q(c, "SHOW application_name"),
            q(c, "EXECUTE b"), q(c, "EXECUTE g")]


@pytest.mark.timeout(120)
def test_failed_parse_in_queries_of_several_shapes(pg, start_sluice):
    table = "t_review_shapes"
    want, got = run_both_table_dropped(pg, start_sluice, table, mixed_failed_parse_steps)
    compare(want, got)


def pipelined_after_failed_parse_steps(c):
    """The Query sluice holds for its Parses, with more pipelined behind it in the same write:
    two Queries, an extended batch, a Sync alone, and a Query that opens a block."""
    c.send(query_msg("SELECT 1; EXECUTE g") + query_msg("SELECT 3; EXECUTE a")
           + parse_msg("", "SELECT 4") + bind_msg("", "") + execute_msg() + sync_msg()
           + sync_msg() + query_msg("BEGIN; EXECUTE b; EXECUTE g") + query_msg("ROLLBACK"))
    out = [seen(c, 6)]
    c.send(bind_msg("", "g") + execute_msg() + sync_msg() + query_msg("EXECUTE h; EXECUTE g"))
    out.append(seen(c, 2))
    return out


@pytest.mark.timeout(120)
def test_a_failed_parse_with_requests_pipelined_behind_the_query(pg, start_sluice):
    table = "t_review_pipelined"
    want, got = run_both_table_dropped(pg, start_sluice, table, pipelined_after_failed_parse_steps)
    compare(want, got)


def behind_a_failing_block_steps(c):
    """A Query naming a statement the backend lacks, pipelined behind a Query that fails its
    block: sluice's Parse for it reaches a failed transaction and is refused (25P02)."""
    c.send(query_msg("BEGIN; SELECT 1/0") + query_msg("EXECUTE a") + query_msg("ROLLBACK"))
    out = [seen(c, 3)]
    out.append(q(c, "EXECUTE a"))
    return out


@pytest.mark.timeout(120)
def test_a_query_pipelined_behind_one_that_fails_its_block(pg, start_sluice):
    want, got = run_both(pg, start_sluice, failing_named("t_review_unused"),
                         behind_a_failing_block_steps)
    compare(want, got)


def query_inside_a_failed_batch_steps(c):
    """A Query naming a statement the backend lacks, sent inside an extended batch whose Execute
    fails before it: Postgres skips the Query to the Sync."""
    c.send(parse_msg("", "SELECT 1/0") + bind_msg("", "") + execute_msg()
           + query_msg("EXECUTE a") + sync_msg() + query_msg("EXECUTE a"))
    return [seen(c, 2), q(c, "EXECUTE b")]


@pytest.mark.timeout(120)
def test_a_query_inside_an_extended_batch_that_fails_first(pg, start_sluice):
    want, got = run_both(pg, start_sluice, failing_named("t_review_unused"),
                         query_inside_a_failed_batch_steps)
    compare(want, got)


def answer_or_close(c):
    """What the client reads up to its ReadyForQuery, or up to the close."""
    out = []
    while True:
        try:
            t, p = c.read_message()
        except PeerClosed:
            return out + ["closed"]
        out.append((t, parse_fields(p).get("C")) if t == "E" else t)
        if t == "Z":
            return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("event", ["cancel", "terminate"])
def test_the_held_parse_error_with_a_cancel_or_a_killed_backend_before_the_query_answers(
        pg, start_sluice, event):
    """Between sluice's Sync of its own (after its failed Parse) and the Query's answers, a
    cancel or a pg_terminate_backend: the client is answered (the held error or the backend's
    end) and nothing hangs or leaks (the ASan run checks the held error is freed)."""
    table = "t_review_kill_held"
    fresh_table(pg, table)
    proxy = GateProxy(pg.port, "42P01")
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1},
                     databases={"appdb": pg.db_entry(port=proxy.port)})
    c = raw_login(s.port, timeout=TIMEOUT)
    holder = None
    try:
        holder = on_another_backend(s, c, [("g", f"SELECT a FROM {table}")])
        ddl(pg, f"DROP TABLE {table}")
        proxy.armed.set()
        c.send(query_msg("SELECT 1; EXECUTE g"))
        assert proxy.holding.wait(TIMEOUT), "sluice's Parse of g did not fail"
        if event == "cancel":
            cancel(s.port, c)
        else:
            wait_until(lambda: pg.query(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
                " AND query LIKE 'SELECT 1; EXECUTE %'")[0][0] == 1, TIMEOUT,
                what="the Query on its backend")
            pg.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE usename = 'app' AND query LIKE 'SELECT 1; EXECUTE %'")
        proxy.release.set()
        proxy.rest.set()
        got = answer_or_close(c)
        # (the backend answered the Query before either reached it)
        assert got == ["T", "D", "C", ("E", "42P01"), "Z"] or got[-1] == "closed", got
        q(holder, "COMMIT")
        other = raw_login(s.port, timeout=TIMEOUT)
        try:
            rows, _ = other.query("SELECT 5")
            assert rows == [["5"]]
        finally:
            other.close()
    finally:
        proxy.release.set()
        proxy.rest.set()
        for x in (c, holder):
            if x:
                x.close()
        proxy.close()


@pytest.mark.timeout(120)
def test_statement_mode_a_block_begun_before_a_failed_parse_is_refused_as_any_other(
        pg, start_sluice):
    """Statement mode forbids a transaction a Query leaves open: BEGIN; EXECUTE g (g's table
    dropped) is answered the same whether g's backend holds it (Postgres's own error) or lacks
    it (sluice's failed Parse, its own Sync's ReadyForQuery swallowed): the swallowed one is not
    taken for the Query's, nor the Query's for sluice's."""
    table = "t_review_stmt_block"
    named = [("a", "SELECT 1 AS v"), ("g", f"SELECT a FROM {table}")]

    def run(lacking):
        fresh_table(pg, table)
        s = start_sluice({"pool_mode": "statement", "default_pool_size": 2, "workers": 1})
        c = raw_login(s.port, timeout=TIMEOUT)
        busy = raw_login(s.port, timeout=TIMEOUT)
        try:
            first = pid(c)
            prepare(c, named)
            if lacking:
                busy.send(query_msg("SELECT pg_backend_pid(), pg_sleep(3)"))
                time.sleep(0.5)
                assert pid(c) != first
            ddl(pg, f"DROP TABLE {table}")
            c.send(query_msg("SELECT 1; EXECUTE g"))
            out = [answer_or_close(c)]
            c.send(query_msg("BEGIN; EXECUTE g"))
            return out + [answer_or_close(c)]
        finally:
            c.close()
            busy.close()
            s.stop()

    compare(run(False), run(True))


def twice_pipelined_steps(c):
    c.send(query_msg("SELECT 1; EXECUTE g") + query_msg("EXECUTE g") + query_msg("EXECUTE a")
           + parse_msg("", "SELECT 8") + bind_msg("", "") + execute_msg() + sync_msg()
           + query_msg("EXECUTE g; SELECT 2"))
    return [seen(c, 5), q(c, "EXECUTE g")]


@pytest.mark.timeout(120)
def test_the_failed_statement_executed_again_in_pipelined_queries(pg, start_sluice):
    table = "t_review_twice"
    want, got = run_both_table_dropped(pg, start_sluice, table, twice_pipelined_steps)
    compare(want, got)


def buffer_sized_query(total):
    """SELECT 1; EXECUTE g; SELECT '<x...>': a Query message `total` bytes long."""
    head, tail = "SELECT 1; EXECUTE g; SELECT '", "'"
    return head + "x" * (total - 6 - len(head) - len(tail)) + tail


def buffer_sized_steps(c, total):
    """The Query as large as sluice's buffer, so that renaming g in it sends its start from
    sluice's own buffer (TRACK_STARTED), with Queries pipelined behind it naming g and h."""
    c.send(query_msg(buffer_sized_query(total)) + query_msg("EXECUTE h")
           + query_msg("EXECUTE g") + query_msg("EXECUTE a"))
    return [seen(c, 4), q(c, "EXECUTE h; EXECUTE b")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("short_of_the_buffer", [0, 4])
def test_a_failed_parse_in_a_query_as_large_as_the_buffer(pg, start_sluice, short_of_the_buffer):
    table = "t_review_buffer_sized"
    total = 16384 - short_of_the_buffer  # pkt_buf's default
    want, got = run_both_table_dropped(pg, start_sluice, table,
                                       lambda c: buffer_sized_steps(c, total))
    compare([[x for x in step if x[0] != "D"] for step in want],
            [[x for x in step if x[0] != "D"] for step in got])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("then", ["keep_open", "hang_up"])
def test_a_terminate_after_a_failed_extended_copy(pg, start_sluice, table, then):
    """The COPY failed (the server skips to the Sync, where a Terminate is skipped too), and the
    client sends Terminate in place of CopyDone: it is closed, and its server does not stay
    waiting for a close that Postgres, skipping, never makes."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "workers": 1,
                      "query_wait_timeout": 20})
    with s.connect() as setup:
        setup.execute(f"CREATE TABLE {table} (id int)")
    c = raw_login(s.port, timeout=TIMEOUT)
    try:
        c.send(parse_msg("", f"COPY {table} FROM STDIN") + bind_msg("", "") + execute_msg())
        assert until(c, "G") == ["1", "2", "G"]
        c.send(copy_data_msg(b"1\nnot-a-number\n"))
        assert until(c, "E") == [("E", "22P02")]
        c.send(message(b"X"))
        if then == "hang_up":
            c.sock.shutdown(socket.SHUT_WR)
        assert c.is_closed(TIMEOUT)
    finally:
        c.close()
    other = raw_login(s.port, timeout=TIMEOUT)
    try:
        rows, _ = other.query(f"SELECT count(*) FROM {table}")
        assert rows == [["0"]]
    finally:
        other.close()
