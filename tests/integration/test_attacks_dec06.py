"""Hostile tests of three changes of Dec 6: the mark before a Query or FunctionCall inside an
extended batch (REQ_MARK, prepared.c stmt_on_error), session_state_policy = refuse answered by a
failing statement the server runs (session_effects.c refuse_by_server), and a client that hangs
up after its Terminate (CLIENT_HUNG_UP). Postgres is the oracle: the same bytes run directly and
through sluice, every message the client sees and the data left behind compared."""

import socket
import time

import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, BackendSampler, wait_until
from pgwire import (bind_msg, copy_data_msg, copy_done_msg, execute_msg, message,
                    parse_msg,
                    query_msg, raw_login, sync_msg, terminate_msg)
from test_driver_modes import drop
from test_result_type_attacks import TABLE, compare_raw, direct, exchange, through
from test_skipped_after_error import function_call_msg, int4abs_oid, then_served


def flush_msg():
    return message(b"H")


def extended(sql, portal="", max_rows=0):
    return [parse_msg("", sql), bind_msg(portal, ""), execute_msg(portal, max_rows)]


def bad_parse():
    return parse_msg("", "SELEC 1")


def served_after(program):
    """program, then a's and another client's queries on the one server, then the table."""
    def each(conns, t):
        a, b = conns[0], conns[1]
        b.settimeout(10)
        return program(a, t) + then_served(a, b, 10) + exchange(
            a, [query_msg(f"SELECT id, v FROM {t} ORDER BY id")], 1)
    return each


# ---- the mark: a client's own names ----------------------------------------------------------

def test_a_clients_portal_named_sluice_mark_survives_a_query_inside_its_batch(
        pg, start_sluice, table):
    """The mark closed a portal of the client's (a Bind's, or a DECLAREd cursor) named
    sluice_mark: inside a transaction block a simple Query leaves the client's portals alone.
    Nor does it close the client's statement of that name."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})

    def program(a, t):
        out = exchange(a, [query_msg("BEGIN")], 1)
        out += exchange(a, [parse_msg("", f"SELECT id FROM {t} ORDER BY id"),
                            bind_msg("sluice_mark", ""), execute_msg("sluice_mark", 1),
                            query_msg("SELECT 42"), execute_msg("sluice_mark", 1),
                            sync_msg()], 2)
        out += exchange(a, [query_msg("ROLLBACK"), query_msg("BEGIN")], 2)
        out += exchange(a, [query_msg(f"DECLARE sluice_mark CURSOR FOR SELECT v FROM {t} "
                                      "ORDER BY id")], 1)
        out += exchange(a, extended("SELECT 1") + [query_msg("FETCH 1 FROM sluice_mark"),
                                                  sync_msg()], 2)
        out += exchange(a, [query_msg("FETCH 1 FROM sluice_mark"), query_msg("COMMIT")], 2)
        # a statement of the client's of that name (sluice renames it on the server)
        out += exchange(a, [parse_msg("sluice_mark", "SELECT 7"), bind_msg("", "sluice_mark"),
                            execute_msg(), query_msg("SELECT 8"), bind_msg("", "sluice_mark"),
                            execute_msg(), sync_msg()], 2)
        out += exchange(a, [bind_msg("", "sluice_mark"), execute_msg(), sync_msg()], 1)
        return out

    compare_raw(pg, s, table, TABLE, served_after(program))


def test_a_function_call_inside_a_batch_keeps_the_clients_portal_named_sluice_mark(
        pg, start_sluice, table):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    oid = int4abs_oid(pg)

    def program(a, t):
        out = exchange(a, [query_msg("BEGIN")], 1)
        out += exchange(a, [parse_msg("", f"SELECT id FROM {t} ORDER BY id"),
                            bind_msg("sluice_mark", ""), execute_msg("sluice_mark", 1),
                            function_call_msg(oid, -3), execute_msg("sluice_mark", 1),
                            sync_msg()], 2)
        out += exchange(a, [query_msg("COMMIT")], 1)
        return out

    compare_raw(pg, s, table, TABLE, served_after(program))


# ---- the mark: how the client writes ----------------------------------------------------------

def byte_by_byte(conn, msgs, syncs):
    """exchange, the bytes sent one at a time (each its own segment)."""
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = b"".join(msgs)
    for i in range(len(data)):
        conn.send(data[i:i + 1])
        if i % 7 == 0:
            time.sleep(0.001)
    return exchange(conn, [], syncs)


BATCHES = {
    "error-then-query": ([bad_parse(), query_msg("SELECT 1"), query_msg("SELECT 2"),
                          sync_msg()], 1),
    "query-ok-then-error-then-query": (extended("SELECT 5") + [query_msg("SELECT 6"),
                                                               bad_parse(),
                                                               query_msg("SELECT 7"),
                                                               sync_msg()], 2),
    "execute-fails-then-query": (extended("SELECT 1/0") + [query_msg("SELECT 1"), sync_msg()],
                                 1),
    "query-fails-in-the-batch": (extended("SELECT 5") + [query_msg("SELECT 1/0"), sync_msg()],
                                 2),
}


@pytest.mark.parametrize("name", sorted(BATCHES))
@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_a_batch_with_a_query_sent_byte_by_byte_is_answered_as_postgres_does(
        pg, start_sluice, table, mode, name):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    msgs, syncs = BATCHES[name]
    compare_raw(pg, s, table, TABLE, served_after(lambda a, t: byte_by_byte(a, msgs, syncs)))


@pytest.mark.parametrize("name", sorted(BATCHES))
def test_a_batch_with_a_query_repeated_in_one_huge_write_is_answered_as_postgres_does(
        pg, start_sluice, table, name):
    """Many copies in one write, far more than the client's buffer (pkt_buf 4096)."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "pkt_buf": 4096})
    msgs, syncs = BATCHES[name]
    n = 300
    compare_raw(pg, s, table, TABLE, served_after(lambda a, t: exchange(a, msgs * n, syncs * n)))


def test_a_huge_query_inside_a_failed_batch_is_skipped_as_postgres_does(pg, start_sluice,
                                                                        table):
    """A Query longer than the client's buffer: sluice streams it, the mark before it."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "pkt_buf": 4096})
    huge = "SELECT 1 /* " + "x" * 20000 + " */"
    int4abs = int4abs_oid(pg)

    def program(a, t):
        return (exchange(a, [bad_parse(), query_msg(huge), sync_msg()], 1)
                + exchange(a, extended("SELECT 5") + [query_msg(huge), sync_msg()], 2)
                + exchange(a, extended("SELECT 1/0") + [query_msg(huge), query_msg(huge),
                                                        sync_msg()], 1)
                # sent once the error is read (skipping_to_sync), then the Sync
                + exchange(a, [bad_parse(), flush_msg()], 1, until=("E",))
                + exchange(a, [query_msg(huge), function_call_msg(int4abs, -2)], 0)
                + exchange(a, [query_msg(huge), sync_msg()], 1))

    compare_raw(pg, s, table, TABLE, served_after(program))


@pytest.mark.parametrize("setup", [{"workers": 2}, {"max_prepared_statements": 0}],
                         ids=["two-workers", "statements-untracked"])
def test_skipped_queries_on_two_workers_and_with_statements_untracked(pg, start_sluice, table,
                                                                      setup):
    s = start_sluice(dict({"pool_mode": "transaction", "default_pool_size": 1}, **setup))

    def program(a, t):
        out = []
        for name in sorted(BATCHES):
            msgs, syncs = BATCHES[name]
            out += exchange(a, msgs, syncs)
        return out

    compare_raw(pg, s, table, TABLE, served_after(program))


def test_thousands_of_queries_pipelined_inside_one_extended_batch_are_answered(
        pg, start_sluice, table):
    """Each Query queued a mark and a ReadyForQuery, which no longer merged into one repeated
    entry as before marks: 4500 Queries before the batch's Sync passed STMT_QUEUE_MAX (8192)
    and sluice closed the session (too_many_pending). Queries with nothing between share one
    mark now."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    n = 4500
    compare_raw(pg, s, table, TABLE, served_after(
        # the first statement sleeps, so that every Query is framed before any is answered
        lambda a, t: exchange(a, extended("SELECT 5 FROM pg_sleep(1)")
                              + [query_msg("SELECT 6")] * n + [sync_msg()], n + 1)))


SLOW_ERROR = "SELECT 1 / (SELECT count(*) - count(*) FROM pg_sleep(0.3))"
SLOW = "SELECT 5 FROM pg_sleep(0.3)"

# The first statement is slow: the Queries after it are framed before the mark is answered
# and share it.
SHARED_MARKS = {
    "slow-error-then-three-queries": lambda t: (extended(SLOW_ERROR) + [
        query_msg("SELECT 1"), insert(t, 4), function_call_msg(INT4ABS[0], -1), sync_msg()], 1),
    "slow-then-queries-the-second-fails": lambda t: (extended(SLOW) + [
        insert(t, 3), query_msg("SELECT 1/0"), insert(t, 4), sync_msg()], 4),
    "slow-then-queries-an-execute-fails-between": lambda t: (extended(SLOW) + [
        insert(t, 3), query_msg("SELECT 2")] + extended("SELECT 1/0") + [
        insert(t, 4), query_msg("SELECT 3"), sync_msg()], 3),
    "error-then-queries-an-execute-between": lambda t: ([bad_parse(), insert(t, 3),
                                                        query_msg("SELECT 2")]
                                                       + extended("SELECT 3")
                                                       + [insert(t, 4), sync_msg()], 1),
}
INT4ABS = []


@pytest.mark.parametrize("name", sorted(SHARED_MARKS))
@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_consecutive_queries_sharing_a_mark_are_answered_as_postgres_does(
        pg, start_sluice, table, mode, name):
    INT4ABS[:] = [int4abs_oid(pg)]
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})

    def program(a, t):
        msgs, syncs = SHARED_MARKS[name](t)
        return exchange(a, msgs, syncs)

    compare_raw(pg, s, table, TABLE, served_after(program))


# ---- the mark and COPY ------------------------------------------------------------------------

def test_a_copy_query_inside_a_batch_is_answered_as_postgres_does(pg, start_sluice, table):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})

    def program(a, t):
        copy = query_msg(f"COPY {t} FROM STDIN")
        data = [copy_data_msg(b"7\t7\n"), copy_done_msg()]
        # skipped after the error: Postgres discards the CopyData and CopyDone too
        out = exchange(a, [bad_parse(), copy] + data + [sync_msg()], 1)
        # runs: the Query's CopyInResponse, its ReadyForQuery, then the Sync's
        out += exchange(a, extended("SELECT 5") + [copy] + data + [sync_msg()], 2)
        # COPY TO inside the batch
        out += exchange(a, extended("SELECT 5") + [query_msg(f"COPY {t} TO STDOUT"),
                                                   sync_msg()], 2)
        out += exchange(a, extended("SELECT 1/0") + [query_msg(f"COPY {t} TO STDOUT"),
                                                     sync_msg()], 1)
        # the COPY inside the batch fails on its data: its own error and ReadyForQuery, then
        # the rest of the batch runs
        out += exchange(a, extended("SELECT 5") + [copy, copy_data_msg(b"x\ty\n"),
                                                   copy_done_msg(), query_msg("SELECT 6")]
                        + extended("SELECT 7") + [sync_msg()], 3)
        return out

    compare_raw(pg, s, table, TABLE, served_after(program))


def test_a_function_call_sent_after_the_batchs_error_was_read_is_skipped_as_in_postgres(
        pg, start_sluice, table):
    """The error is read before the FunctionCall is sent (skipping_to_sync), the Sync later."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    oid = int4abs_oid(pg)

    def program(a, t):
        return (exchange(a, [bad_parse(), flush_msg()], 1, until=("E",))
                + exchange(a, [function_call_msg(oid, -4), insert(t, 4)], 0)
                + exchange(a, [sync_msg()], 1)
                + exchange(a, extended("SELECT 1") + [function_call_msg(oid, -4), sync_msg()],
                           2))

    compare_raw(pg, s, table, TABLE, served_after(program))


# ---- refusal with the mark --------------------------------------------------------------------

REFUSED = "LISTEN refused_channel"
STAND_IN = "SELECT * FROM no_such_table_stands_in_for_the_refused"  # 42P01, at its Parse


def send_bytewise(conn):
    """conn.send then writes one byte at a time, each its own segment."""
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    whole = conn.send

    def send(data):
        for i in range(len(data)):
            whole(data[i:i + 1])
    conn.send = send


def refusal_compare(pg, s, table, program, bytewise=False):
    """program(a, t, refused) run directly with STAND_IN, through sluice with REFUSED; the
    refusal's SQLSTATE is sluice's own, everything else Postgres's."""
    seen = []
    for connect, refused in ((lambda: direct(pg), STAND_IN), (lambda: through(s), REFUSED)):
        drop(pg, table)
        with pg.superuser(dbname=APP_DB) as c:
            c.execute(f"SET ROLE {APP_USER}; " + TABLE.format(t=table))
        conns = [connect() for _ in range(2)]
        try:
            a, b = conns
            if bytewise:
                send_bytewise(a)
            b.settimeout(10)
            out = program(a, table, refused) + then_served(a, b, 10) + exchange(
                a, [query_msg(f"SELECT id, v FROM {table} ORDER BY id")], 1)
            seen.append(out)
        finally:
            for c in conns:
                c.close()
    want, got = seen
    want = [("E", "0A000", None) if m[:2] == ("E", "42P01") else m for m in want]
    got = [m[:2] + (None,) if m[:2] == ("E", "0A000") else m for m in got]
    assert got == want, ("postgres saw:\n" + "\n".join(map(str, want))
                         + "\nsluice saw:\n" + "\n".join(map(str, got)))


def insert(t, v):
    return query_msg(f"INSERT INTO {t} VALUES ({v}, {v})")


REFUSAL_PROGRAMS = {
    # a refused Query inside an extended batch: marked, replaced, failing on its own
    "refused-query-inside-a-batch":
        lambda a, t, r: exchange(a, extended(f"INSERT INTO {t} VALUES (3, 3)")
                                 + [query_msg(r), insert(t, 4), sync_msg()], 3),
    # an error before it: the refused Query is skipped, as is the one after it
    "error-then-refused-query":
        lambda a, t, r: exchange(a, [bad_parse(), query_msg(r), insert(t, 4), sync_msg()], 1),
    # a refused Parse after a Query that ran inside the batch
    "query-then-refused-parse":
        lambda a, t, r: exchange(a, extended("SELECT 5") + [insert(t, 4)] + extended(r)
                                 + [insert(t, 5), sync_msg()], 2),
    # inside a transaction block: a refused Query in the batch, then a COMMIT
    "refused-query-inside-a-batch-in-a-transaction":
        lambda a, t, r: (exchange(a, [query_msg("BEGIN"), insert(t, 3)], 2)
                         + exchange(a, extended("SELECT 5") + [query_msg(r), insert(t, 4),
                                                               sync_msg()], 2)
                         + exchange(a, [query_msg("COMMIT")], 1)),
    # a refused Query right after one that ran (they would share a mark)
    "query-then-refused-query-inside-a-batch":
        lambda a, t, r: exchange(a, extended("SELECT 5") + [insert(t, 3), query_msg(r),
                                                           insert(t, 4), sync_msg()], 4),
    # a refused statement in a several-statement Query inside a batch
    "refused-second-statement-of-a-query-inside-a-batch":
        lambda a, t, r: exchange(a, extended("SELECT 5")
                                 + [query_msg(f"INSERT INTO {t} VALUES (3, 3); {r}"),
                                    insert(t, 4), sync_msg()], 3),
}


@pytest.mark.parametrize("name", sorted(REFUSAL_PROGRAMS))
@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_a_refusal_inside_a_batch_with_queries_is_answered_as_postgres_does(
        pg, start_sluice, table, mode, name):
    if mode == "statement" and "transaction" in name:
        pytest.skip("statement mode refuses transaction blocks")
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1,
                      "session_state_policy": "refuse"})
    refusal_compare(pg, s, table, REFUSAL_PROGRAMS[name])


# A refused Parse's batch read in pieces is refused by closing the session (documented): only
# the refused Queries are sent byte by byte here.
@pytest.mark.parametrize("name", sorted(n for n in REFUSAL_PROGRAMS if "parse" not in n))
@pytest.mark.parametrize("workers", [1, 2])
def test_a_refusal_inside_a_batch_sent_byte_by_byte_is_answered_as_postgres_does(
        pg, start_sluice, table, name, workers):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "workers": workers,
                      "session_state_policy": "refuse"})
    refusal_compare(pg, s, table, REFUSAL_PROGRAMS[name], bytewise=True)


def query_filling(t, r, whole):
    """A Query of whole bytes: an INSERT padded with spaces, then r (the refused statement
    last). The failing statement keeps the text up to the ';' before r, so the pad is in it."""
    head, tail = f"INSERT INTO {t} VALUES (3, 3)", "; "
    return query_msg(head + " " * (whole - 6 - len(head) - len(tail) - len(r)) + tail + r)


# What starts the client's write, the refused statement in it; that write fills the client's
# buffer from its start (pkt_buf: 16384 bytes, the least sluice uses whatever it says).
BUFFER_BYTES = 16384
BUFFER_FILLED_BY = {
    "short-query": lambda t, r: [query_msg(r)],
    # the second one's failing statement too, once the first's was written
    "two-short-queries": lambda t, r: [query_msg(r)] * 2,
    # the failing statement keeps the INSERT before it: longer than the buffer
    "query-as-long-as-the-buffer": lambda t, r: [query_filling(t, r, BUFFER_BYTES)],
    "parse": lambda t, r: extended(r) + [sync_msg()],
}


@pytest.mark.parametrize("start", sorted(BUFFER_FILLED_BY))
def test_a_refusal_at_the_start_of_a_full_buffer_in_a_transaction_fails_it_as_postgres_does(
        pg, start_sluice, table, start):
    """In a transaction block, a refused statement starts a buffer (pkt_buf) the client filled
    in one write: the longer failing statement put in its place still fits (the block's slack
    past pkt_buf), so the client gets 0A000, 25P02 for the rest and ROLLBACK, as on Postgres."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "pkt_buf": BUFFER_BYTES, "session_state_policy": "refuse"})
    n = 500  # INSERTs after it: more than the buffer holds

    def program(a, t, r):
        out = exchange(a, [query_msg("BEGIN")], 1)
        msgs = BUFFER_FILLED_BY[start](t, r) + [insert(t, 3)] * n + [query_msg("ROLLBACK")]
        out += exchange(a, msgs, sum(m[:1] in (b"Q", b"S") for m in msgs))
        return out

    refusal_compare(pg, s, table, program)


# ---- a client that leaves after its Terminate, marked Queries in its last batch ----------------

CALL_TIMEOUT = 10.0


def leave(port, password, msgs, ending):
    """msgs and a Terminate in one write, then the socket closed (or only its sending side, the
    answers read to EOF)."""
    c = raw_login(port, password=password, timeout=CALL_TIMEOUT)
    try:
        c.send(b"".join(msgs) + terminate_msg())
        if ending == "half_close":
            c.sock.shutdown(socket.SHUT_WR)
            return c.is_closed(CALL_TIMEOUT)
        return True
    finally:
        c.close()


def all_idle(pg):
    return [r for r in pg.backends(APP_USER) if r[1] != "idle"] == []


LEAVING_BATCHES = {
    "error-then-query-then-sync": lambda t: [bad_parse(), insert(t, 4), sync_msg()],
    "error-then-query-no-sync": lambda t: [bad_parse(), insert(t, 4)],
    "insert-then-query-no-sync": lambda t: extended(f"INSERT INTO {t} VALUES (3, 3)")
    + [insert(t, 4)],
    "insert-then-query-then-error-no-sync": lambda t: extended(f"INSERT INTO {t} VALUES (3, 3)")
    + [insert(t, 4), bad_parse(), insert(t, 5)],
    # the Query's CommandComplete comes before the Execute's answer (it ends the implicit
    # transaction, and the portal with it: the Execute fails)
    "query-between-bind-and-execute": lambda t: [
        parse_msg("", f"INSERT INTO {t} VALUES (3, 3)"), bind_msg("p", ""), insert(t, 4),
        execute_msg("p"), insert(t, 5)],
    "query-between-bind-and-execute-in-a-block": lambda t: [
        query_msg("BEGIN"), parse_msg("", f"INSERT INTO {t} SELECT 3, 3 FROM pg_sleep(0.3)"),
        bind_msg("p", ""), insert(t, 4), execute_msg("p"), flush_msg()],
    "slow-query-inside-the-batch": lambda t: extended(f"INSERT INTO {t} VALUES (3, 3)")
    + [query_msg(f"INSERT INTO {t} SELECT 4, 4 FROM pg_sleep(0.3)"), sync_msg()],
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("setup", [("transaction", 1), ("statement", 1), ("transaction", 2),
                                   ("session", 1)],
                         ids=["transaction", "statement", "two-workers", "session"])
@pytest.mark.parametrize("ending", ["close", "half_close"])
@pytest.mark.parametrize("name", sorted(LEAVING_BATCHES))
def test_a_batch_with_queries_then_terminate_leaves_what_postgres_leaves(
        pg, start_sluice, table, name, ending, setup):
    """What the batch commits is Postgres's, and the one server serves the next client at once
    (the skipped Queries counted would hold it for server_drain_timeout)."""
    mode, workers = setup
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "workers": workers,
                      "max_db_connections": 1, "server_drain_timeout": 30})
    left = []
    for port, password in ((pg.port, APP_PASSWORD), (s.port, None)):
        drop(pg, table)
        with pg.superuser(dbname=APP_DB) as c:
            c.execute(f"SET ROLE {APP_USER}; " + TABLE.format(t=table))
        wait_until(lambda: pg.count_backends(APP_USER) <= 1, 15, what="the direct backend gone")
        assert leave(port, password, LEAVING_BATCHES[name](table), ending)
        if port == s.port:
            b = raw_login(s.port, timeout=CALL_TIMEOUT)
            try:
                t0 = time.monotonic()
                assert b.query("SELECT 1") == ([["1"]], ["SELECT 1"])
                assert time.monotonic() - t0 < 5, "the server was held after the client left"
            finally:
                b.close()
        wait_until(lambda: pg.count_backends(APP_USER) <= 1 and all_idle(pg), 15,
                   what="the client's backend done")
        left.append(pg.query(f"SELECT id, v FROM {table} ORDER BY id", dbname=APP_DB))
    assert left[1] == left[0]


@pytest.mark.timeout(120)
def test_a_queued_insert_and_terminate_of_a_client_gone_runs_as_in_postgres(pg, start_sluice,
                                                                           table):
    """The client's INSERT waits for the one server, held by a transaction for longer than
    server_drain_timeout; the client sent Terminate and closed. Postgres would run the INSERT
    once the lock it waits for is free; sluice runs it once the server is free."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_db_connections": 1, "server_drain_timeout": 1,
                      "query_wait_timeout": 30})
    drop(pg, table)
    with pg.superuser(dbname=APP_DB) as c:
        c.execute(f"SET ROLE {APP_USER}; " + TABLE.format(t=table))
    holder = raw_login(s.port, timeout=CALL_TIMEOUT)
    try:
        holder.query("BEGIN")
        holder.query("SELECT 1")
        assert leave(s.port, None, [insert(table, 9)], "close")
        time.sleep(2.5)  # not the check: the client's wait outlasts server_drain_timeout
        holder.query("COMMIT")
    finally:
        holder.close()
    wait_until(lambda: pg.query(f"SELECT count(*) FROM {table} WHERE id = 9",
                                dbname=APP_DB)[0][0] == 1, 15, what="the INSERT committed")


# ---- the mark and sluice's own Parse before an EXECUTE ------------------------------------------

def evicted_and_dropped(a, b, t):
    """a's statement q is pushed off the one server (max_prepared_statements 1) by b's, and b
    drops the table q reads: sluice's Parse of q again fails."""
    out = exchange(a, [parse_msg("q", f"SELECT v FROM {t} ORDER BY id"), sync_msg()], 1)
    out += exchange(b, [parse_msg("o", "SELECT 1"), sync_msg()], 1)
    out += exchange(b, [query_msg(f"DROP TABLE {t}")], 1)
    return out


EXECUTE_IN_BATCH = extended("SELECT 5") + [query_msg("EXECUTE q"), sync_msg()]


def test_the_server_goes_back_after_sluices_own_parse_before_a_marked_query_fails(
        pg, start_sluice, table):
    """a's EXECUTE q in a Query inside an extended batch: sluice prepares q again right before
    it (after the mark), that Parse fails once the mark is answered, and Postgres skips the
    Query: sluice counted its ReadyForQuery and held the one server for ever."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 1})
    with pg.superuser(dbname=APP_DB) as c:
        c.execute(f"SET ROLE {APP_USER}; " + TABLE.format(t=table))
    a, b = through(s), through(s)
    try:
        evicted_and_dropped(a, b, table)
        seen = exchange(a, EXECUTE_IN_BATCH, 1)
        assert ("E", "42P01") == seen[-2][:2], seen
        b.settimeout(10)
        assert exchange(b, [query_msg("SELECT 3")], 1)[-1] == ("Z", "I")
    finally:
        a.close()
        b.close()


def test_an_execute_prepared_again_after_a_query_inside_a_batch_runs_as_in_postgres(
        pg, start_sluice, table):
    """q pushed off the one server, then EXECUTE q in a Query right after another Query inside
    an extended batch: sluice's Parse of q goes between them (the mark they would share goes
    again, after it), and everything runs as in Postgres."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 1})

    def program(conns, t):
        a, b = conns[0], conns[1]
        b.settimeout(10)
        out = exchange(a, [parse_msg("q", f"SELECT v FROM {t} ORDER BY id"), sync_msg()], 1)
        out += exchange(b, [parse_msg("o", "SELECT 1"), sync_msg()], 1)
        out += exchange(a, extended(SLOW) + [query_msg("SELECT 1"), query_msg("EXECUTE q"),
                                             query_msg("EXECUTE q"), sync_msg()], 4)
        out += exchange(b, [parse_msg("o2", "SELECT 1"), sync_msg()], 1)
        out += exchange(a, extended(SLOW_ERROR) + [query_msg("SELECT 1"),
                                                   query_msg("EXECUTE q"), sync_msg()], 1)
        return out + then_served(a, b, 10)

    compare_raw(pg, s, table, TABLE, program)


def test_an_execute_inside_a_batch_whose_statement_sluice_fails_to_prepare_again(
        pg, start_sluice, table):
    """sluice's Parse of q before the Query fails inside the batch: Postgres, running EXECUTE
    itself, answers the error, the Query's ReadyForQuery and the Sync's (the Query waits for
    that Parse's outcome; sluice's Sync answers in its place)."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 1})

    def program(conns, t):
        a, b = conns[0], conns[1]
        a.settimeout(5)
        b.settimeout(10)
        out = evicted_and_dropped(a, b, t)
        out += exchange(a, EXECUTE_IN_BATCH, 2)
        return out + then_served(a, b, 10)

    compare_raw(pg, s, table, TABLE, program)


AFTER_OWN_PARSE_FAILS = {
    # Postgres runs what follows the failed Query in the batch, in a transaction of its own
    "the-rest-of-the-batch-runs": (extended("SELECT 5") + [query_msg("EXECUTE q")]
                                   + extended("SELECT 7") + [sync_msg()], 2),
    "two-executes-in-one-batch": (extended("SELECT 5") + [query_msg("EXECUTE q"),
                                                          query_msg("EXECUTE q"), sync_msg()], 3),
    "inside-a-transaction-block": ([query_msg("BEGIN")] + extended("SELECT 5")
                                   + [query_msg("EXECUTE q"), sync_msg(),
                                      query_msg("ROLLBACK")], 4),
    # no batch, but a request in flight: sluice's Parse has no Sync of its own either
    "pipelined-behind-a-slow-query": ([query_msg("SELECT 1 FROM pg_sleep(0.2)"),
                                       query_msg("EXECUTE q"), query_msg("SELECT 2")], 3),
    # nothing in flight: Postgres's error, not 26000 for the statement sluice could not prepare
    "alone": ([query_msg("EXECUTE q"), query_msg("SELECT 2")], 2),
    "after-an-error-earlier-in-the-batch": ([parse_msg("", "SELEC 1"), query_msg("EXECUTE q"),
                                             sync_msg()], 1),
}


@pytest.mark.parametrize("name", sorted(AFTER_OWN_PARSE_FAILS))
def test_what_follows_an_execute_whose_statement_sluice_fails_to_prepare_again(
        pg, start_sluice, table, name):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 1})
    msgs, zs = AFTER_OWN_PARSE_FAILS[name]

    def program(conns, t):
        a, b = conns[0], conns[1]
        a.settimeout(10)
        b.settimeout(10)
        out = evicted_and_dropped(a, b, t)
        out += exchange(a, msgs, zs)
        return out + then_served(a, b, 10)

    compare_raw(pg, s, table, TABLE, program)


@pytest.mark.parametrize("where", ["batch", "pipeline"])
def test_an_execute_whose_statement_sluice_prepares_again_waits_for_it_and_runs(
        pg, start_sluice, table, where):
    """The Parse sluice sends before the Query succeeds: the Query, held for its outcome, runs as
    on Postgres."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 1})
    head = (extended("SELECT 5") if where == "batch"
            else [query_msg("SELECT 1 FROM pg_sleep(0.2)")])

    def program(conns, t):
        a, b = conns[0], conns[1]
        b.settimeout(10)
        out = exchange(a, [parse_msg("q", f"SELECT v FROM {t} ORDER BY id"), sync_msg()], 1)
        out += exchange(b, [parse_msg("o", "SELECT 1"), sync_msg()], 1)
        tail = [sync_msg()] if where == "batch" else []
        out += exchange(a, head + [query_msg("EXECUTE q"), query_msg("EXECUTE q")] + tail, 3)
        return out + then_served(a, b, 10)

    compare_raw(pg, s, table, TABLE, program)


@pytest.mark.parametrize("outcome", ["fails", "runs"])
def test_a_client_that_leaves_while_its_query_waits_for_sluices_parse_frees_the_server(
        pg, start_sluice, table, outcome):
    """The client sends a batch whose Query waits for sluice's Parse of q, then closes: the one
    server serves the next client at once, and that client's EXECUTE of its own q is its own."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 1, "server_drain_timeout": 30})
    drop(pg, table)
    with pg.superuser(dbname=APP_DB) as c:
        c.execute(f"SET ROLE {APP_USER}; " + TABLE.format(t=table))
    a, b = through(s), through(s)
    try:
        b.settimeout(10)
        exchange(a, [parse_msg("q", f"SELECT v FROM {table} ORDER BY id"), sync_msg()], 1)
        exchange(b, [parse_msg("o", "SELECT 1"), sync_msg()], 1)
        if outcome == "fails":
            exchange(b, [query_msg(f"ALTER TABLE {table} RENAME TO {table}_gone")], 1)
        a.send(b"".join(extended("SELECT 1 FROM pg_sleep(0.2)") + [query_msg("EXECUTE q")]))
        a.close()
        t0 = time.monotonic()
        assert exchange(b, [query_msg("SELECT 3")], 1)[-1] == ("Z", "I")
        assert time.monotonic() - t0 < 10, "the server was held after the client left"
        if outcome == "fails":
            exchange(b, [query_msg(f"ALTER TABLE {table}_gone RENAME TO {table}")], 1)
        seen = exchange(b, [parse_msg("q", "SELECT 42"), sync_msg(), query_msg("EXECUTE q")], 2)
        assert ("D", ["42"]) in seen, seen
    finally:
        a.close()
        b.close()


# ---- a client that vanishes at each point of a batch with a marked Query ------------------------

def cut_points(data, msgs):
    """Each message boundary, and the middle of each message."""
    points, at = [], 0
    for m in msgs:
        points += [at + len(m) // 2, at + len(m)]
        at += len(m)
    return points


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("first", ["error", "slow"])
def test_a_client_vanishing_at_each_point_of_a_batch_with_a_query_frees_the_one_server(
        pg, start_sluice, table, first, mode):
    """The client closes (no Terminate) after each prefix of [Parse/Bind/Execute, Query, Sync];
    the next client is served on a pool and a database cap of one, never two backends at once,
    and the table is left as nothing committed or the whole batch (never the Query alone)."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1,
                      "max_db_connections": 1, "server_drain_timeout": 5})
    drop(pg, table)
    with pg.superuser(dbname=APP_DB) as c:
        c.execute(f"SET ROLE {APP_USER}; " + TABLE.format(t=table))
    head = ([bad_parse()] if first == "error" else
            extended(f"INSERT INTO {table} SELECT 3, 3 FROM pg_sleep(0.2)"))
    msgs = head + [insert(table, 4), insert(table, 5), sync_msg()]
    data = b"".join(msgs)
    with BackendSampler(pg) as smp:
        for cut in cut_points(data, msgs):
            c = raw_login(s.port, timeout=CALL_TIMEOUT)
            c.send(data[:cut])
            c.close_abruptly()
            b = raw_login(s.port, timeout=CALL_TIMEOUT)
            try:
                assert b.query("SELECT 1") == ([["1"]], ["SELECT 1"]), cut
            finally:
                b.close()
            left = [r[0] for r in pg.query(f"DELETE FROM {table} WHERE id > 2 RETURNING id",
                                           dbname=APP_DB)]
            assert sorted(left) in ([], [4, 5], [3, 4, 5]) or (
                first == "slow" and sorted(left) in ([3, 4], [3])), (cut, left)
    assert smp.error is None and smp.max <= 1, f"{smp.max} backends at once, cap 1"


# ---- a silent query of a client that hung up after Terminate, in every pool mode ---------------

@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["session", "statement", "transaction"])
@pytest.mark.parametrize("inside", ["query", "batch"])
def test_a_silent_query_of_a_hung_up_client_frees_the_one_server_in_every_mode(
        pg, start_sluice, mode, inside):
    """Terminate and close while pg_sleep runs (a simple Query, or a Query inside an extended
    batch, marked): after server_drain_timeout the query is cancelled and the next client is
    served, never two backends at once."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1,
                      "server_drain_timeout": "1s", "query_wait_timeout": 30})
    sleep = query_msg("SELECT pg_sleep(60) /* hung up too */")
    msgs = [sleep] if inside == "query" else extended("SELECT 1") + [sleep, sync_msg()]
    with BackendSampler(pg) as smp:
        c = raw_login(s.port, timeout=CALL_TIMEOUT)
        c.send(b"".join(msgs) + terminate_msg())
        pg.wait_for_active(APP_USER, "hung up too")
        c.close()
        b = raw_login(s.port, timeout=30)
        try:
            t0 = time.monotonic()
            assert b.query("SELECT 2") == ([["2"]], ["SELECT 1"])
            assert time.monotonic() - t0 < 20
        finally:
            b.close()
        wait_until(lambda: not [r for r in pg.backends(APP_USER) if r[1] != "idle"], 30,
                   what="the query cancelled")
    assert smp.error is None and smp.max <= 1, f"{smp.max} backends at once, cap 1"
