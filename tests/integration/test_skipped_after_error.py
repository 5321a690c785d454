"""A simple Query or FunctionCall sent inside an extended batch (after Parse/Bind/Execute, before
the Sync) is skipped by Postgres when an earlier message of that batch failed: no reply at all,
no ReadyForQuery. sluice counted one for it, so the client's server was never quiet again and a
pool of one starved every other client. Postgres is the oracle for everything the client sees;
a second client on the same one-server pool must be served after each batch, and the data must
be what Postgres leaves (docs/architecture.md, request_track.c and REQ_MARK in prepared.h)."""

import struct
import time

import pytest

from conftest import APP_DB
from pgwire import (bind_msg, close_msg, execute_msg, message, parse_msg, query_msg, sync_msg)
from test_result_type_attacks import TABLE, compare_raw, exchange, through


def flush_msg():
    return message(b"H")


def function_call_msg(oid, *int_args):
    """FunctionCall of oid with int4 arguments in text, result in text."""
    payload = struct.pack("!IHH", oid, 1, 0) + struct.pack("!H", len(int_args))
    for a in int_args:
        b = str(a).encode()
        payload += struct.pack("!i", len(b)) + b
    return message(b"F", payload + struct.pack("!H", 0))


def int4abs_oid(pg):
    with pg.superuser(dbname=APP_DB) as c:
        return c.execute("SELECT 'int4abs'::regproc::oid").fetchone()[0]


def then_served(a, b, k):
    """a's next query, then b's on the same server (pool of one), then a's again."""
    out = exchange(a, [query_msg(f"SELECT {k} + 1")], 1)
    out += exchange(b, [query_msg(f"SELECT {k} + 2")], 1)
    out += exchange(a, [query_msg(f"SELECT {k} + 3")], 1)
    return out


def run(pg, s, table, program):
    def each(conns, t):
        a, b = conns[0], conns[1]
        b.settimeout(10)  # sluice before the fix: b waited for the server for ever
        return program(a, t) + then_served(a, b, 10) + exchange(
            a, [query_msg(f"SELECT id, v FROM {t} ORDER BY id")], 1)
    compare_raw(pg, s, table, TABLE, each)


def batch(msgs, replies_until=2):
    return lambda a, t: exchange(a, [m(t) if callable(m) else m for m in msgs], replies_until)


def bad_parse(name=""):
    return parse_msg(name, "SELEC 1")


def good_execute(sql):
    return [parse_msg("", sql), bind_msg("", ""), execute_msg()]


def insert(v):
    return lambda t: query_msg(f"INSERT INTO {t} VALUES ({v}, {v})")


PROGRAMS = {
    # the failed Parse's error, then the Sync's ReadyForQuery; the Query never runs
    "parse-fails-then-query": batch([bad_parse(), query_msg("SELECT 1"), sync_msg()], 1),
    "named-parse-fails-then-query": batch([bad_parse("q"), query_msg("SELECT 1"), sync_msg()], 1),
    "execute-fails-then-query":
        batch(good_execute("SELECT 1/0") + [query_msg("SELECT 1"), sync_msg()], 1),
    "two-queries-skipped":
        batch([bad_parse(), query_msg("SELECT 1"), query_msg("SELECT 2"), sync_msg()], 1),
    # the first Query runs (its own ReadyForQuery), the error after it skips the second
    "query-runs-then-error-skips-the-next":
        batch(good_execute("SELECT 5") + [query_msg("SELECT 6"), bad_parse(),
                                          query_msg("SELECT 7"), sync_msg()], 2),
    # the Query's own error: not skipped, its ReadyForQuery and the Sync's
    "the-query-itself-fails":
        batch(good_execute("SELECT 5") + [query_msg("SELECT 1/0"), sync_msg()], 2),
    "query-ok-inside-the-batch":
        batch(good_execute("SELECT 5") + [query_msg("SELECT 6"), sync_msg()], 2),
    # what ran in the batch is rolled back, the skipped INSERT never runs
    "inserts-rolled-back-and-skipped":
        batch([lambda t: parse_msg("", f"INSERT INTO {t} VALUES (3, 3)"), bind_msg("", ""),
               execute_msg(), bad_parse(), insert(4), sync_msg()], 1),
    # a Query before the error commits with its ReadyForQuery; the one after is skipped
    "insert-before-the-error-commits":
        batch([lambda t: parse_msg("", f"INSERT INTO {t} VALUES (3, 3)"), bind_msg("", ""),
               execute_msg(), insert(4), bad_parse(), insert(5), sync_msg()], 2),
    # a Flush alone opens the batch; the Query fails in the transaction block that failed
    "flush-then-query-in-a-failed-transaction":
        lambda a, t: (exchange(a, [query_msg("BEGIN"), query_msg("SELECT 1/0")], 2)
                      + exchange(a, [flush_msg(), query_msg("SELECT 1"), sync_msg()], 2)
                      + exchange(a, [query_msg("ROLLBACK")], 1)),
    # the Sync comes later, after the error was read
    "sync-sent-after-the-error":
        lambda a, t: (exchange(a, [bad_parse(), query_msg("SELECT 1")], 1, until=("E",))
                      + exchange(a, [query_msg("SELECT 2")], 0)
                      + exchange(a, [sync_msg()], 1)),
    # the client's Close of a portal right before: answered, then the Query skipped
    "close-then-bad-parse-then-query":
        batch([close_msg("P", "p"), bad_parse(), query_msg("SELECT 1"), sync_msg()], 1),
}


def backend_pid(conn):
    return exchange(conn, [query_msg("SELECT pg_backend_pid()")], 1)[1][1][0]


def run_session(pg, s, table, program):
    """Session mode: a keeps its server until it leaves; then b, waiting on the pool of one
    (server_drain_timeout 60 s), is served at once by the very backend a had, not by a new
    one after a drain."""
    pids = []

    def each(conns, t):
        a, b = conns[0], conns[1]
        b.settimeout(10)
        out = program(a, t) + exchange(a, [query_msg("SELECT 11")], 1) + exchange(
            a, [query_msg(f"SELECT id, v FROM {t} ORDER BY id")], 1)
        had = backend_pid(a)
        a.close()
        out += exchange(b, [query_msg("SELECT 12")], 1)
        pids.append((had, backend_pid(b)))
        return out
    compare_raw(pg, s, table, TABLE, each)
    had, got = pids[-1]  # through sluice
    assert got == had, f"b got backend {got}, not {had}: a's server was not reused at once"


@pytest.mark.parametrize("name", sorted(PROGRAMS))
@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
def test_a_query_postgres_skips_after_an_error_in_its_batch(pg, start_sluice, table, mode, name):
    if mode == "statement" and "transaction" in name:
        pytest.skip("statement mode refuses transaction blocks")
    if mode == "session":
        s = start_sluice({"pool_mode": mode, "default_pool_size": 1,
                          "server_drain_timeout": 60})
        run_session(pg, s, table, PROGRAMS[name])
        return
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    run(pg, s, table, PROGRAMS[name])


@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
def test_a_function_call_postgres_skips_after_an_error_in_its_batch(pg, start_sluice, table,
                                                                     mode):
    oid = int4abs_oid(pg)
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "server_drain_timeout": 60})
    each = run_session if mode == "session" else run
    each(pg, s, table, batch([bad_parse(), function_call_msg(oid, -5), sync_msg()], 1))
    each(pg, s, table, batch(good_execute("SELECT 5") + [function_call_msg(oid, -5), sync_msg()],
                             2))


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_the_server_goes_back_after_a_skipped_query_when_the_client_leaves(pg, start_sluice,
                                                                          mode):
    """The client leaves right after its batch's replies: the server goes to the next client at
    once, not after server_drain_timeout."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "server_drain_timeout": 60})
    a, b = through(s), through(s)
    try:
        exchange(a, [bad_parse(), query_msg("SELECT 1"), sync_msg()], 1)
        a.close()
        b.settimeout(10)
        assert exchange(b, [query_msg("SELECT 3")], 1)[-1] == ("Z", "I")
    finally:
        b.close()


def test_query_timeout_after_a_skipped_query_in_session_mode(pg, start_sluice):
    """Session mode: nothing runs after the batch whose Query Postgres skipped, however long
    the session stays idle; the next long query is the one query_timeout cancels (57014),
    from its own start. Counted as running, the skipped Query had query_timeout cancel the
    idle backend (nothing) and never the query that ran later."""
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1, "query_timeout": 1})
    a = through(s)
    try:
        a.settimeout(20)
        assert exchange(a, [bad_parse(), query_msg("SELECT 1"), sync_msg()], 1)[-1] == ("Z", "I")
        time.sleep(3)  # idle past query_timeout: nothing of the client's runs
        out = exchange(a, [query_msg("SELECT pg_sleep(15)")], 1)
        assert out[-2:] == [("E", "57014", "canceling statement due to user request"),
                            ("Z", "I")], out
        assert exchange(a, [query_msg("SELECT 2")], 1)[-1] == ("Z", "I")  # the session goes on
    finally:
        a.close()


def test_transaction_timeout_leaves_a_session_idle_after_a_skipped_query(pg, start_sluice):
    """Session mode: the session is idle, out of any transaction, once the batch is answered;
    transaction_timeout sees nothing running on it (counted as running, the skipped Query had
    the client failed with transaction_timeout while idle)."""
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1, "transaction_timeout": 1})
    a = through(s)
    try:
        assert exchange(a, [bad_parse(), query_msg("SELECT 1"), sync_msg()], 1)[-1] == ("Z", "I")
        time.sleep(3)  # idle past transaction_timeout
        assert exchange(a, [query_msg("SELECT 2")], 1)[-1] == ("Z", "I")
    finally:
        a.close()


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_an_execute_still_running_after_a_query_in_its_batch_is_not_a_stalled_client(
        pg, start_sluice, table, mode):
    """In a transaction block (so the portal outlives the Query), Bind of a slow statement, a
    Query, then the Execute and a Flush: the Query's CommandComplete is not the Execute's
    answer. The server runs the Execute while the client waits; idle_transaction_timeout (the
    server waiting for the client) must not fail it, and the client sees what Postgres sends.
    (Counted as the Execute's, the Query's CommandComplete left no Execute unanswered, and
    the client was failed as stalled after extended-protocol messages without a Sync.)"""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1,
                      "idle_transaction_timeout": 1})

    def program(conns, t):
        a = conns[0]
        a.settimeout(20)
        out = exchange(a, [query_msg("BEGIN")], 1)
        out += exchange(a, [parse_msg("", "SELECT pg_sleep(3) IS NULL AS slept"),
                            bind_msg("p", ""), query_msg("SELECT 1"), execute_msg("p"),
                            flush_msg()], 2, until=("C",))  # the Query's, the Execute's
        out += exchange(a, [sync_msg()], 1)
        out += exchange(a, [query_msg("COMMIT")], 1)
        return out
    seen = compare_raw(pg, s, table, TABLE, program)
    assert seen[-5:] == [("D", ["f"]), ("C", "SELECT 1"), ("Z", "T"), ("C", "COMMIT"),
                         ("Z", "I")], seen


def test_a_long_pipeline_in_session_mode_then_a_skipped_query(pg, start_sluice, table):
    """Session mode fails no client for the requests it follows: 20000 batches sent ahead of
    the replies (a slow Query first) pass the 8192 entries the queue holds, and it stops
    following them (transaction mode answers 54000 here); once they are answered it follows
    again, and a Query skipped after an error in a later batch leaves the session idle, its
    server reused at once when the client leaves."""
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1, "server_drain_timeout": 60})
    n = 20000

    def program(a, t):
        a.settimeout(60)
        pipeline = [query_msg("SELECT 1 FROM pg_sleep(0.5)")]
        for _ in range(n):
            pipeline += [parse_msg("", "SELECT 1"), bind_msg("", ""), execute_msg(), sync_msg()]
        out = exchange(a, pipeline, n + 1)
        assert len(out) == 4 + 5 * n, len(out)
        return out[-5:] + exchange(a, [bad_parse(), query_msg("SELECT 1"), sync_msg()], 1)
    run_session(pg, s, table, program)
