"""A cancel never stops sluice's own parameter sync instead of the client's query.

In transaction mode, a client linked to a pooled server whose settings differ from its own gets
them by sluice's set_config, pipelined ahead of its query. A cancel (the client's, query_timeout's,
a vanished client's) that reaches the backend while that set_config runs used to cancel it: the
error was swallowed and the client's query ran to its end under the other client's settings. On
Postgres a cancel stops the query the client sent, or nothing: never its settings.

The set_config is held running deterministically: default_text_search_config's check looks its
configuration up in pg_ts_config, and after a change to that row (ALTER ... OWNER) the backend's
cache misses and opens the catalog, which waits while the test holds an ACCESS EXCLUSIVE lock on
it. The test sees the wait in pg_stat_activity, sends the cancel, then lets the lock go.

Such a cancel waits until sluice's statements are answered and is sent then; a backend that gets
it while it is still reading the client's query behind them ignores it (Postgres ignores a
cancel between statements), so sluice sends it again if that query still runs a few ms later.
ReadingStallProxy makes that happen every time: it holds the client's query on its way to the
backend until the first cancel has reached it."""

import contextlib
import socket
import struct
import threading

import psycopg
import pytest
from psycopg import errors

from conftest import APP_DB, APP_USER, Background, pump, wait_until
from pgwire import RawConn, ServerError, cancel_request, query_msg, raw_login
from tcp_proxy import ForwardingProxy

CFG = "public.sync_cancel_cfg"
SLOW_QUERY = "SELECT pg_catalog.current_setting('default_text_search_config'), pg_sleep(20)"


@pytest.fixture
def ts_config(pg):
    with pg.superuser(APP_DB) as su:
        su.execute(f"DROP TEXT SEARCH CONFIGURATION IF EXISTS {CFG}")
        su.execute(f"CREATE TEXT SEARCH CONFIGURATION {CFG} (COPY = pg_catalog.simple)")
    yield CFG
    with pg.superuser(APP_DB) as su:
        su.execute(f"DROP TEXT SEARCH CONFIGURATION IF EXISTS {CFG}")


def run(conn, sql):
    return conn.execute(sql).fetchone()


@contextlib.contextmanager
def sync_held_running(pg):
    """While inside, a set_config of default_text_search_config (to a configuration none of the
    backends has looked up since) waits for the lock this holds on pg_ts_config."""
    with pg.superuser(APP_DB) as su:
        # a change to its row drops it from every backend's catalog cache (the same owner
        # again would change nothing)
        su.execute(f"ALTER TEXT SEARCH CONFIGURATION {CFG} OWNER TO {APP_USER}")
        su.execute(f"ALTER TEXT SEARCH CONFIGURATION {CFG} OWNER TO postgres")
        su.execute("BEGIN")
        su.execute("LOCK TABLE pg_catalog.pg_ts_config IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            su.execute("ROLLBACK")


def wait_for_sync_blocked(pg):
    def blocked():
        rows = pg.query(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND wait_event_type = 'Lock'"
            " AND query LIKE %s", [APP_USER, "%set_config('default_text_search_config'%"])
        return rows
    wait_until(blocked, 20, what="sluice's set_config waiting on pg_ts_config")


@contextlib.contextmanager
def cancel_while_sync_held(s, pg, send_query, cancel, cancel_logged):
    """The sequence every test here runs: with sluice's sync held running (sync_held_running),
    send_query() sends the client's query behind it; once the sync waits, cancel() (None: the
    cancel comes by itself, query_timeout) and sluice's log line cancel_logged (a regex) say the
    cancel came. The body of the with runs then, the sync still held; the sync goes on at its
    end. Yields the log mark taken before the query was sent."""
    with sync_held_running(pg):
        mark = s.mark()
        send_query()
        wait_for_sync_blocked(pg)
        if cancel:
            cancel()
        s.wait_for_log(cancel_logged, timeout=20, since=mark)
        yield mark


def linked_pair(start_sluice, main=None, databases=None):
    """Sluice with one server in transaction mode; `other` has used it last (the server's
    default_text_search_config is the default), `mine` wants CFG at every link."""
    cfg = {"pool_mode": "transaction", "default_pool_size": 1}
    cfg.update(main or {})
    s = start_sluice(cfg, databases=databases)
    other = s.connect()
    mine = s.connect(options=f"-c default_text_search_config={CFG}")
    assert run(mine, "SHOW default_text_search_config") == (CFG,)
    assert run(other, "SHOW default_text_search_config") == ("pg_catalog.english",)
    return s, other, mine


def assert_cancelled_not_run_elsewhere(q, what):
    """The Postgres outcome: the query is cancelled (it sleeps 20 s, the cancel comes at once).
    It must never complete: above all not under another client's settings, and not with its own
    either (a cancel lost while the backend read the query, and never sent again)."""
    err = q.error(timeout=60)
    if err is None:
        value = q.result(0)[0]
        pytest.fail(f"{what}: the query ran to its end instead of being cancelled, with "
                    f"default_text_search_config = {value!r} (the client's is {CFG!r})")
    assert isinstance(err, errors.QueryCanceled), f"{what}: expected 57014, got {err!r}"
    assert q.elapsed < 15, f"{what}: the cancel took {q.elapsed:.1f} s to land"


# Postgres 15 signals a cancelled backend twice (its pid, then its process group): when the first
# stopped sluice's set_config, the second sometimes still stopped the client's query. And a cancel
# sent as the sync is answered can reach the backend while it reads the query, which then ran on
# (on a loaded machine: 1 run in 3 of these tests failed so before the resend). A few rounds make
# a wrong outcome show; with the fixes, each round is the same.
ROUNDS = 4


@contextlib.contextmanager
def client_cancel_while_sync_held(s, pg, mine):
    """cancel_while_sync_held with the client's own cancel: yields {"q": the query's Background,
    "canceller": the cancel's, "mark": the log mark}."""
    started = {}

    def send_query():
        started["q"] = Background(run, mine, SLOW_QUERY)

    def cancel():
        started["canceller"] = Background(mine.cancel)

    with cancel_while_sync_held(s, pg, send_query, cancel, r"cancel request") as mark:
        started["mark"] = mark
        yield started


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [1, 4])  # 4: the CancelRequest lands on any worker (5.5)
def test_client_cancel_during_sluice_sync_cancels_the_clients_query(start_sluice, pg, ts_config,
                                                                    workers):
    s, other, mine = linked_pair(start_sluice, {"workers": workers})
    with other, mine:
        for i in range(ROUNDS):
            assert run(other, "SELECT 1") == (1,)  # the server has the default again
            with client_cancel_while_sync_held(s, pg, mine) as started:
                pass
            assert_cancelled_not_run_elsewhere(started["q"], f"round {i}: the client's cancel "
                                                             "during sluice's sync")
            started["canceller"].result(timeout=30)
            # the session goes on, with its own settings
            assert run(mine, "SHOW default_text_search_config") == (CFG,)
        assert run(other, "SHOW default_text_search_config") == ("pg_catalog.english",)


class ReadingStallProxy(ForwardingProxy):
    """A loopback forwarder between sluice and Postgres (one pooled server) that can make its
    backend slow to read the client's query behind sluice's sync, as a backend descheduled on a
    loaded machine is, every time: once stall_after_sync() is called, it passes the next Query
    that syncs default_text_search_config, then holds what follows (the client's query) until a
    CancelRequest has gone through it and Postgres has closed that (the backend is signalled,
    while it waits to read the query); then it lets the query go, before telling sluice that the
    cancel is done. A CancelRequest that comes while nothing is held goes through as it is."""

    MARKER = b"set_config('default_text_search_config'"

    def __init__(self, target_port):
        self.lock = threading.Lock()
        self.mode = "pass"  # pass, armed (until the sync's Query), holding
        self.held = b""
        self.unparsed = b""
        self.upstream = None  # the server connection's socket to Postgres
        self.stalls = 0  # queries held until a cancel had reached the backend
        super().__init__(target_port)

    def stall_after_sync(self):
        with self.lock:
            self.mode = "armed"
            self.unparsed = b""

    def serve_cancel(self, a, packet):
        with self.lock:
            holding = self.mode == "holding"
        if not holding:
            super().serve_cancel(a, packet)
            return
        b = self.upstream_or_close(a)
        if b:
            self._deliver_then_release(a, b, packet)

    def serve_session(self, a, b):
        with self.lock:
            self.upstream = b
        threading.Thread(target=pump, args=(b, a), daemon=True).start()
        self._pump_to_postgres(a, b)

    def _deliver_then_release(self, a, b, request):
        b.sendall(request)
        while b.recv(64):  # Postgres closes it once it has signalled the backend
            pass
        b.close()
        with self.lock:
            if self.mode == "holding":
                self.upstream.sendall(self.held)
                self.held = b""
                self.mode = "pass"
                self.stalls += 1
        a.close()

    def _pump_to_postgres(self, a, b):
        while True:
            try:
                data = a.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            with self.lock:
                if self.mode == "pass":
                    b.sendall(data)
                elif self.mode == "holding":
                    self.held += data
                else:  # armed: whole messages pass up to the sync's Query
                    self.unparsed += data
                    while self.mode == "armed" and len(self.unparsed) >= 5:
                        whole = 1 + struct.unpack("!I", self.unparsed[1:5])[0]
                        if len(self.unparsed) < whole:
                            break
                        msg, self.unparsed = self.unparsed[:whole], self.unparsed[whole:]
                        b.sendall(msg)
                        if msg[:1] == b"Q" and self.MARKER in msg:
                            self.mode = "holding"
                    if self.mode == "holding":
                        self.held, self.unparsed = self.unparsed, b""
        for sock in (a, b):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.mark.timeout(300)
def test_a_deferred_cancel_the_backend_ignored_while_reading_the_query_is_sent_again(
        start_sluice, pg, ts_config):
    """The cancel waits for sluice's sync and is sent once it is answered; the backend gets it
    while it still waits to read the client's query (held by the proxy until then), and Postgres
    ignores a cancel there. The query must be cancelled anyway, as on Postgres it would have been
    (it was sent long before the cancel): sluice sends the cancel again when the query still
    runs a few ms after the first was delivered. Before, it ran its 20 s to the end.
    Such a cancel is looked at again on a timer (10 to 160 ms), and until it is over the client's
    next request waits and its CancelRequest connection stays open; it is over once the query it
    was for is answered (57014 and ReadyForQuery), as on Postgres, where the cancel was done once
    the backend was signalled. Before, it lasted until its timer fired ("its request is over"),
    holding the client's next request back that long after every such cancel."""
    proxy = ReadingStallProxy(pg.port)
    try:
        s, other, mine = linked_pair(start_sluice, {"log_level": "debug"}, databases={
            APP_DB: pg.db_entry(port=proxy.port, sslmode="disable")})
        with other, mine:
            for i in range(3):
                assert run(other, "SELECT 1") == (1,)  # the server has the default again
                stalls = proxy.stalls
                proxy.stall_after_sync()
                with client_cancel_while_sync_held(s, pg, mine) as started:
                    pass
                assert_cancelled_not_run_elsewhere(started["q"], f"round {i}: a cancel the "
                                                                 "backend got while reading "
                                                                 "the query")
                assert proxy.stalls == stalls + 1, "the proxy never held the query"
                s.wait_for_log(r"deferred cancel sent again", timeout=5, since=started["mark"])
                started["canceller"].result(timeout=30)
                assert run(mine, "SHOW default_text_search_config") == (CFG,)
                late = [line for line in s.log_since(started["mark"])
                        if "its request is over" in line]
                assert not late, (f"round {i}: the cancel outlived its request's "
                                  f"ReadyForQuery until its timer: {late}")
            assert run(other, "SHOW default_text_search_config") == ("pg_catalog.english",)
    finally:
        proxy.close()


class NeverReadingProxy(ReadingStallProxy):
    """ReadingStallProxy that never lets the held query go: each cancel reaches a backend still
    waiting to read it, which ignores it, so sluice sends it again until it stops; cut() then
    ends the server connection (Postgres and sluice see it close), and later connections pass."""

    def _deliver_then_release(self, a, b, request):
        b.sendall(request)
        while b.recv(64):
            pass
        b.close()
        a.close()

    def cut(self):
        with self.lock:
            self.mode, self.held = "pass", b""
            self.upstream.shutdown(socket.SHUT_RDWR)


@pytest.mark.timeout(120)
def test_a_server_lost_while_a_deferred_cancel_waits_to_be_sent_again(start_sluice, pg,
                                                                      ts_config):
    """The server goes away while a deferred cancel waits on its timer (sent twice, ignored
    twice, the last wait 160 ms): its requester is answered, the client gets its error, nothing
    dangles (the timer and the job: the ASan build checks it), and the pool serves again."""
    proxy = NeverReadingProxy(pg.port)
    try:
        s, other, mine = linked_pair(start_sluice, {"log_level": "debug"}, databases={
            APP_DB: pg.db_entry(port=proxy.port, sslmode="disable")})
        with other:
            assert run(other, "SELECT 1") == (1,)
            proxy.stall_after_sync()
            with client_cancel_while_sync_held(s, pg, mine) as started:
                pass

            def sent_again_twice():
                return sum("deferred cancel sent again" in line
                           for line in s.log_since(started["mark"])) >= 2
            wait_until(sent_again_twice, 20, what="the deferred cancel sent again twice")
            proxy.cut()
            assert isinstance(started["q"].error(timeout=30), psycopg.OperationalError)
            started["canceller"].result(timeout=30)
            mine.close()
            assert run(other, "SELECT 1") == (1,)
    finally:
        proxy.close()


# Bigger than what the sockets between the client and the backend, and sluice's buffer, take
# while the backend runs sluice's sync: part of the query waits in sluice when the cancel comes.
BIG_QUERY_PAD = 4 * 1024 * 1024


@pytest.mark.timeout(120)
def test_a_query_sluice_holds_part_of_behind_its_sync_is_cancelled(start_sluice, pg, ts_config):
    """A query too big to be in the backend's socket whole while sluice's sync runs ahead of it,
    sent in full by the client long before its cancel, which waits for the sync. The backend
    cannot run it, nor be cancelled in it, before it has read all of it, so the rest of a
    message already begun goes on while a cancel is on its way (only the client's next request
    waits). Before, sluice held the rest until the cancel, and each time it was sent again, was
    done: the backend ignored every one, reading, and the query ran its 20 s."""
    s, other, _ = linked_pair(start_sluice, {"log_level": "debug"})
    big = SLOW_QUERY + " /* " + "x" * BIG_QUERY_PAD + " */"
    with other:
        raw = raw_login(s.port, timeout=60, default_text_search_config=CFG)
        assert run(other, "SELECT 1") == (1,)  # the server has the default again
        sent = {}

        def send_query():
            sent["q"] = Background(raw.send, query_msg(big))

        def cancel():
            sent["q"].result(timeout=30)  # all of it is the kernel's: the client sent it
            sent["r"] = RawConn(s.port, timeout=60)
            sent["r"].send(cancel_request(*raw.backend_key))

        with cancel_while_sync_held(s, pg, send_query, cancel, r"cancel request"):
            pass
        assert sent["r"].is_closed(30), "the requester was never answered"
        sent["r"].close()
        with pytest.raises(ServerError) as err:
            raw.read_results()
        assert err.value.fields["C"] == "57014", err.value.fields
        assert raw.query("SHOW default_text_search_config")[0] == [[CFG]]
        raw.close()


@pytest.mark.timeout(300)
def test_query_timeout_during_sluice_sync_cancels_the_clients_query(start_sluice, pg, ts_config):
    s, other, mine = linked_pair(start_sluice, {"query_timeout": 1})
    with other, mine:
        for i in range(ROUNDS):
            assert run(other, "SELECT 1") == (1,)
            started = {}

            def send_query():
                started["q"] = Background(run, mine, SLOW_QUERY)

            with cancel_while_sync_held(s, pg, send_query, None, r"query_timeout"):
                pass
            assert_cancelled_not_run_elsewhere(started["q"], f"round {i}: query_timeout "
                                                             "during sluice's sync")
            assert run(mine, "SHOW default_text_search_config") == (CFG,)


@pytest.mark.timeout(120)
def test_client_vanishing_during_sluice_sync_has_its_query_cancelled_after_it(start_sluice, pg, ts_config):
    """A client that vanishes while its query waits behind sluice's sync, with
    server_drain_timeout = 0 (cancel at once): the server is given up (SERVER_LEAVING) with the
    cancel of its query deferred behind the sync; once the sync is answered the cancel goes to
    the query (which would otherwise run on under nobody's eyes), nothing dangles (the ASan
    build checks it), and the pool serves again."""
    s, other, mine = linked_pair(start_sluice, {"server_drain_timeout": 0})
    mine.close()
    with other:
        raw = raw_login(s.port, default_text_search_config=CFG)
        assert run(other, "SELECT 1") == (1,)  # the server has the default again
        with cancel_while_sync_held(s, pg, lambda: raw.send(query_msg(SLOW_QUERY)),
                                    lambda: raw.close_abruptly(reset=True),
                                    r"closing: Connection reset") as mark:
            pass
        s.wait_for_log(r"deferred cancel sent", timeout=20, since=mark)
        wait_until(lambda: not pg.query(
            "SELECT 1 FROM pg_stat_activity WHERE usename = %s AND state = 'active'"
            " AND query LIKE %s", [APP_USER, "%pg_sleep(20)%"]), 15,
            what="the vanished client's query to end")
        q = Background(run, other, "SELECT 1")
        assert q.result(timeout=30) == (1,)
        assert run(other, "SHOW default_text_search_config") == ("pg_catalog.english",)


@pytest.mark.timeout(120)
def test_cancel_waiting_behind_sync_is_answered_when_the_server_is_lost(start_sluice, pg,
                                                                        ts_config):
    """The cancel requester is answered, and nothing is left behind, when the server goes away
    while the cancel waits for sluice's sync."""
    s, other, mine = linked_pair(start_sluice)
    with other, mine:
        with client_cancel_while_sync_held(s, pg, mine) as started:
            pg.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"
                     " AND query LIKE %s", [APP_USER, "%set_config%"])
            started["canceller"].result(timeout=30)
        err = started["q"].error(timeout=30)
        assert isinstance(err, psycopg.OperationalError), f"expected the server's loss, got {err!r}"
        assert run(other, "SELECT 1") == (1,)
