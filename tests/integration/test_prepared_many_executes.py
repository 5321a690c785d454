"""A simple Query that EXECUTEs many of the client's statements on a backend that lacks them all
(transaction mode: the client prepared them on one backend, the Query runs on another). sluice
prepares them there first; the Query waits for their outcome, since a Parse that fails would make
the server skip the Query. All of them go in one round trip: their Parses, then one Flush, not
a Flush and a wait for each (which cost 1.4 s for 2,000 EXECUTEs where Postgres took 11 ms).

What sluice sends upstream is seen through a proxy that counts the messages by type, so the
round trips are counted, not timed. SLUICE_MEASURE=1 prints the Query's time direct and through
sluice for k = 200 and 2000 (docs/benchmarks.md)."""

import os
import struct
import threading
import time
from collections import Counter

import pytest

from conftest import pump
from pgwire import parse_msg, raw_login, sync_msg
from tcp_proxy import ForwardingProxy, recv_exactly
from test_prepared_oracle import batch, q

SSL_CODE, GSSENC_CODE = 80877103, 80877104


class CountingProxy(ForwardingProxy):
    """Passes sluice's connections on to Postgres and counts the messages sluice sends, by
    type, over all of them."""

    def __init__(self, target_port):
        self.sent = Counter()
        self.lock = threading.Lock()
        super().__init__(target_port)

    def count(self, mtype):
        with self.lock:
            return self.sent[mtype]

    def _serve(self, a):
        try:
            head = recv_exactly(a, 8)
        except OSError:
            head = b""
        b = self.upstream_or_close(a) if len(head) == 8 else None
        if not b:
            a.close()
            return
        try:
            # the startup packet, after any SSLRequest or GSSENCRequest (answered by Postgres),
            # then typed messages
            b.sendall(head)
            length, code = struct.unpack("!II", head)
            while code in (SSL_CODE, GSSENC_CODE):
                a.sendall(recv_exactly(b, 1))
                head = recv_exactly(a, 8)
                b.sendall(head)
                length, code = struct.unpack("!II", head)
            b.sendall(recv_exactly(a, length - 8))
        except (OSError, struct.error):
            a.close()
            b.close()
            return
        threading.Thread(target=pump, args=(b, a), daemon=True).start()
        try:
            while True:
                head = recv_exactly(a, 5)
                if len(head) < 5:
                    break
                (n,) = struct.unpack("!I", head[1:])
                body = recv_exactly(a, n - 4)
                with self.lock:
                    self.sent[chr(head[0])] += 1
                b.sendall(head + body)
        except OSError:
            pass
        finally:
            for x in (a, b):
                x.close()


def statements(k):
    return [(f"s{i}", f"SELECT {i} AS v") for i in range(k)]


def prepare(c, named):
    data = b"".join(parse_msg(name, text) for name, text in named) + sync_msg()
    return batch(c, data)


def executes(named):
    return "; ".join(f"EXECUTE {name}" for name, _ in named)


def pid(c):
    (row,) = [x for x in q(c, "SELECT pg_backend_pid()") if x[0] == "D"]
    return row[1][0]


def on_another_backend(s, c, named):
    """c prepares `named` on the pool's one backend; a second client then holds that backend in
    a transaction, so that c's next transaction runs on a fresh one (default_pool_size = 2)."""
    first = pid(c)
    prepare(c, named)
    holder = raw_login(s.port)
    q(holder, "BEGIN")
    assert pid(holder) == first, "the holder got another backend than the one c prepared on"
    return holder


def start(start_sluice, proxy, pg):
    return start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1},
                        databases={"appdb": pg.db_entry(port=proxy.port)})


def test_executes_of_many_statements_a_backend_lacks_are_prepared_in_one_round_trip(
        pg, start_sluice):
    k = 50
    named = statements(k)
    proxy = CountingProxy(pg.port)
    s = start(start_sluice, proxy, pg)
    direct = raw_login(pg.port, password="apppass")
    c = raw_login(s.port)
    holder = None
    try:
        prepare(direct, named)
        holder = on_another_backend(s, c, named)
        flushes, parses = proxy.count("H"), proxy.count("P")
        assert q(c, executes(named)) == q(direct, executes(named))
        assert proxy.count("P") - parses == k
        # one round trip for all: before, one Flush (and one wait) for each statement
        assert proxy.count("H") - flushes == 1
        # prepared now: the next Query waits for nothing
        flushes = proxy.count("H")
        assert q(c, executes(named)) == q(direct, executes(named))
        assert proxy.count("H") == flushes
    finally:
        for x in (c, direct, holder):
            if x:
                x.close()


def error_and_ready(replies):
    """What a Query whose statement fails ends with: the error's SQLSTATE and message, and the
    ReadyForQuery."""
    return replies[-2:]


def test_a_refused_parse_among_many_answers_its_error_and_leaves_the_rest_unprepared(
        pg, start_sluice):
    """The third of five statements no longer prepares (its table dropped): the two before it
    run and the Query gets Postgres's error, as on Postgres, and the statements after it, which the server skipped, are prepared at
    their next use, not taken as prepared."""
    named = statements(5)
    named[2] = ("s2", "SELECT a FROM t_many_gone")
    proxy = CountingProxy(pg.port)
    s = start(start_sluice, proxy, pg)
    direct = raw_login(pg.port, password="apppass")
    c = raw_login(s.port)
    holder = None
    try:
        q(direct, "DROP TABLE IF EXISTS t_many_gone")
        q(direct, "CREATE TABLE t_many_gone (a int)")
        prepare(direct, named)
        holder = on_another_backend(s, c, named)
        q(direct, "DROP TABLE t_many_gone")
        want = q(direct, executes(named))
        got = q(c, executes(named))
        assert want[-2][:2] == ("E", "42P01"), want
        assert error_and_ready(got) == error_and_ready(want)
        assert got == want  # the statements before it ran, as on Postgres
        for name in ("s3", "s4", "s0", "s2"):
            assert q(c, f"EXECUTE {name}") == q(direct, f"EXECUTE {name}")
        rest = [n for n in named if n[0] != "s2"]
        assert q(c, executes(rest)) == q(direct, executes(rest))
    finally:
        for x in (c, direct, holder):
            if x:
                x.close()


def test_more_executes_than_max_prepared_statements_are_all_prepared(pg, start_sluice):
    """A Query that names more statements than max_prepared_statements: each one it needs is
    kept on the server until the Query is sent (none evicted for the next), so it runs."""
    named = statements(12)
    proxy = CountingProxy(pg.port)
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1,
                      "max_prepared_statements": 4},
                     databases={"appdb": pg.db_entry(port=proxy.port)})
    direct = raw_login(pg.port, password="apppass")
    c = raw_login(s.port)
    holder = None
    try:
        prepare(direct, named)
        holder = on_another_backend(s, c, named)
        flushes = proxy.count("H")
        text = executes(named + named[:3])
        assert q(c, text) == q(direct, text)
        assert proxy.count("H") - flushes == 1
        assert q(c, text) == q(direct, text)
    finally:
        for x in (c, direct, holder):
            if x:
                x.close()


def test_more_executes_than_one_round_trip_holds_go_in_as_few_as_the_queue_allows(
        pg, start_sluice):
    """3,000 statements: their Parses and Describes (three requests each, a mark included) pass
    the 8,192 requests sluice keeps unanswered per server (STMT_QUEUE_MAX), so they go in two
    round trips, not one per statement, and the Query runs whole."""
    k = 3000
    named = statements(k)
    proxy = CountingProxy(pg.port)
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1,
                      "pkt_buf": 65536, "max_prepared_statements": 4000},
                     databases={"appdb": pg.db_entry(port=proxy.port)})
    direct = raw_login(pg.port, password="apppass", timeout=120)
    c = raw_login(s.port, timeout=120)
    holder = None
    try:
        prepare(direct, named)
        holder = on_another_backend(s, c, named)
        flushes = proxy.count("H")
        assert q(c, executes(named)) == q(direct, executes(named))
        assert proxy.count("H") - flushes == 2
    finally:
        for x in (c, direct, holder):
            if x:
                x.close()


@pytest.mark.skipif(not os.environ.get("SLUICE_MEASURE"), reason="a measurement: SLUICE_MEASURE=1")
@pytest.mark.parametrize("k", [200, 2000])
def test_measure_executes_on_a_backend_that_lacks_them(pg, start_sluice, k):
    named = statements(k)
    direct = raw_login(pg.port, password="apppass", timeout=300)
    prepare(direct, named)
    runs = {"direct": [], "sluice": []}
    for _ in range(3):
        t0 = time.monotonic()
        want = q(direct, executes(named))
        runs["direct"].append(time.monotonic() - t0)
        # (2,000 EXECUTEs are 27 kB: a larger Query than pkt_buf streams through, and only its
        # first statement is followed)
        s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1,
                          "pkt_buf": 65536})
        c = raw_login(s.port, timeout=300)
        holder = on_another_backend(s, c, named)
        t0 = time.monotonic()
        got = q(c, executes(named))
        runs["sluice"].append(time.monotonic() - t0)
        assert got == want
        c.close()
        holder.close()
    print(f"\nk={k}: " + ", ".join(f"{w} median {sorted(t)[1] * 1000:.1f} ms "
                                    f"(runs {', '.join(f'{x * 1000:.1f}' for x in t)})"
                                    for w, t in runs.items()))
    direct.close()
