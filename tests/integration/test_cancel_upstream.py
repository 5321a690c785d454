"""Cancels sent upstream: sluice sends each CancelRequest from its worker's event loop, to the
backend's address (TCP or unix socket), for libpq and passthrough logins alike, and gives up
after server_connect_timeout. An upstream that takes a cancel connection and never answers
must cost neither the requester (it is answered) nor anyone else (libuv's thread pool, which
SCRAM derivations need, is not where cancels wait)."""

import signal
import socket
import threading
import time

import psycopg
import pytest

from conftest import APP_DB, wait_until
from pgwire import RawConn, ServerError, cancel_request, query_msg, raw_login
from tcp_proxy import ForwardingProxy
from test_auth import auth_roles, passthrough_entry  # noqa: F401 (a fixture)

class CancelHoldingProxy(ForwardingProxy):
    """A loopback TCP forwarder to Postgres that passes every connection on, except a
    CancelRequest: that one it accepts, reads, and then holds open without a word, as an
    upstream behind a partition would (the SYN answered, nothing after)."""

    def __init__(self, target_port, host="127.0.0.1", hold_cancels=True):
        self.hold_cancels = hold_cancels  # False: a plain forwarder, cancels included
        self.held = []  # the cancel connections, open until close()
        self.lock = threading.Lock()
        super().__init__(target_port, host)

    def serve_cancel(self, a, packet):
        if not self.hold_cancels:
            super().serve_cancel(a, packet)
            return
        with self.lock:
            self.held.append(a)

    def stop_answering(self):
        """From now on a connection to this port hangs in connect, as to a host behind a
        partition: the listener is replaced by one whose accept queue is full (Linux then drops
        the SYNs), while the connections already forwarded go on."""
        self.lsock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread: the port is free
        self.lsock.close()
        time.sleep(0.2)
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(0)
        self.fillers = []
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(f)
        probe = socket.socket()
        probe.settimeout(1.0)
        try:
            probe.connect(("127.0.0.1", self.port))
            raise AssertionError("the listener still takes connections")
        except socket.timeout:
            pass
        finally:
            probe.close()

    def cancels_held(self):
        with self.lock:
            return len(self.held)

    def close(self):
        super().close()
        for f in getattr(self, "fillers", []):
            f.close()
        with self.lock:
            for a in self.held:
                a.close()


def start_query(port, tag, **login):
    c = raw_login(port, timeout=60, **login)
    c.send(query_msg(f"SELECT pg_sleep(60) /* {tag} */"))
    return c


def send_cancel(port, key):
    r = RawConn(port, timeout=60)
    r.send(cancel_request(*key))
    return r


def assert_cancelled(c):
    with pytest.raises(ServerError) as err:
        c.read_results()
    assert err.value.fields["C"] == "57014", err.value.fields


@pytest.mark.timeout(90)
def test_a_cancel_over_a_unix_socket_reaches_the_backend_of_a_libpq_login(start_sluice, pg):
    """Postgres as a sidecar on a unix socket: the cancel goes to the socket's path (the address
    the login connected to), and the requester is answered once Postgres has closed it."""
    s = start_sluice({"pool_mode": "session", "log_level": "debug", "workers": 2},
                     databases={APP_DB: pg.db_entry(host=pg.sockdir)})
    c = start_query(s.port, "unix libpq")
    pg.wait_for_active("app", "unix libpq", timeout=20)
    r = send_cancel(s.port, c.backend_key)
    assert r.is_closed(30), "the requester was never answered"
    r.close()
    assert_cancelled(c)
    assert c.query("SELECT 1")[0] == [["1"]]
    c.close()
    s.wait_for_log(r"cancel to \S*\.s\.PGSQL\.%d for backend pid \d+: closed by the postmaster"
                   % pg.port, timeout=10)


@pytest.mark.timeout(90)
def test_a_cancel_over_a_unix_socket_reaches_the_backend_of_a_passthrough_login(
        start_sluice, pg, auth_roles):  # noqa: F811
    s = start_sluice({"auth_type": "scram-sha-256", "pool_mode": "session", "log_level": "debug"},
                     auth_file={"qscram": pg.stored_secret("qscram")},
                     databases={APP_DB: passthrough_entry(pg, host=pg.sockdir)})
    c = start_query(s.port, "unix passthrough", user="qscram", password="qpass")
    pg.wait_for_active("qscram", "unix passthrough", timeout=20)
    r = send_cancel(s.port, c.backend_key)
    assert r.is_closed(30), "the requester was never answered"
    r.close()
    assert_cancelled(c)
    c.close()
    s.wait_for_log(r"cancel to \S*\.s\.PGSQL\.%d for backend pid \d+: closed by the postmaster"
                   % pg.port, timeout=10)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("login", ["libpq", "passthrough"])
def test_a_cancel_over_ipv6_reaches_the_backend(start_sluice, pg, auth_roles, login):  # noqa: F811
    """An upstream on an IPv6 address (a forwarder on ::1 in front of Postgres): the cancel goes
    to that address, for both kinds of login."""
    proxy = CancelHoldingProxy(pg.port, host="::1", hold_cancels=False)
    try:
        if login == "libpq":
            s = start_sluice({"pool_mode": "session", "log_level": "debug"},
                             databases={APP_DB: pg.db_entry(host="::1", port=proxy.port)})
            user, password = "app", None
        else:
            s = start_sluice({"auth_type": "scram-sha-256", "pool_mode": "session",
                              "log_level": "debug"},
                             auth_file={"qscram": pg.stored_secret("qscram")},
                             databases={APP_DB: passthrough_entry(pg, host="::1",
                                                                  port=proxy.port)})
            user, password = "qscram", "qpass"
        c = start_query(s.port, f"v6 {login}", user=user, password=password)
        pg.wait_for_active(user, f"v6 {login}", timeout=20)
        r = send_cancel(s.port, c.backend_key)
        assert r.is_closed(30), "the requester was never answered"
        r.close()
        assert_cancelled(c)
        c.close()
        s.wait_for_log(r"cancel to \[::1\]:%d for backend pid \d+: closed by the postmaster"
                       % proxy.port, timeout=10)
    finally:
        proxy.close()


@pytest.mark.timeout(120)
def test_cancels_from_many_connections_reach_backends_on_every_worker(start_sluice, pg):
    """Requesters land on any worker; each cancel reaches its own backend over TCP."""
    s = start_sluice({"pool_mode": "session", "workers": 3, "default_pool_size": 8})
    clients = [start_query(s.port, f"many {i}") for i in range(6)]
    pg.wait_for_active("app", "many ", count=6, timeout=30)
    for c in clients:
        r = send_cancel(s.port, c.backend_key)
        assert r.is_closed(30), "the requester was never answered"
        r.close()
        assert_cancelled(c)
        assert c.query("SELECT 2")[0] == [["2"]]
        c.close()


@pytest.mark.timeout(120)
def test_a_cancel_to_an_upstream_that_never_answers_gives_up_after_server_connect_timeout(
        start_sluice, pg):
    """The upstream accepts the cancel connection and never closes it: the requester is answered
    after server_connect_timeout, with a WARNING naming the address and what timed out; the
    session goes on, and its server is closed when released (the request was written, so the
    postmaster may still act on it). Before, PQcancel waited for that close forever, on a thread
    of libuv's pool, and the requester with it."""
    proxy = CancelHoldingProxy(pg.port)
    try:
        s = start_sluice({"pool_mode": "session", "default_pool_size": 1,
                          "server_connect_timeout": 2, "workers": 1},
                         databases={APP_DB: pg.db_entry(port=proxy.port)})
        c = start_query(s.port, "held cancel")
        pg.wait_for_active("app", "held cancel", timeout=20)
        t0 = time.monotonic()
        r = send_cancel(s.port, c.backend_key)
        assert r.is_closed(40), "the requester was never answered"
        elapsed = time.monotonic() - t0
        r.close()
        assert proxy.cancels_held() == 1
        assert 1.5 <= elapsed < 30, elapsed
        s.wait_for_log(r"WARNING.*cancel request failed: cancel to 127\.0\.0\.1:%d for backend "
                       r"pid \d+: no answer within 2000 ms \(server_connect_timeout\) while waiting "
                       r"for the postmaster to close the connection; the server will be closed "
                       r"at release" % proxy.port, timeout=10)
        # the query was never cancelled: end it, and the session goes on
        pg.query("SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                 "WHERE query LIKE '%held cancel%' AND pid <> pg_backend_pid()")
        assert_cancelled(c)
        assert c.query("SELECT 3")[0] == [["3"]]
        c.close()
        # the postmaster might still act on that request: the server serves no one else
        s.wait_for_log(r"closed at release", timeout=20)
    finally:
        proxy.close()


@pytest.mark.timeout(120)
def test_a_cancel_to_an_upstream_that_drops_its_syns_gives_up_after_server_connect_timeout(
        start_sluice, pg):
    """The upstream's address stops answering connects (a partition): the cancel gives up while
    connecting, after server_connect_timeout, the requester is answered, and the server, which
    the request never reached, goes on serving. Before, PQcancel had no connect timeout: the
    kernel's SYN retries (about 2 minutes) on a pool thread, and the requester waited as long."""
    proxy = CancelHoldingProxy(pg.port)
    try:
        s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                          "server_connect_timeout": 2, "workers": 1},
                         databases={APP_DB: pg.db_entry(port=proxy.port)})
        c = start_query(s.port, "syn dropped")
        pg.wait_for_active("app", "syn dropped", timeout=20)
        proxy.stop_answering()
        t0 = time.monotonic()
        r = send_cancel(s.port, c.backend_key)
        assert r.is_closed(40), "the requester was never answered"
        elapsed = time.monotonic() - t0
        r.close()
        assert 1.5 <= elapsed < 30, elapsed
        s.wait_for_log(r"WARNING.*cancel request failed: cancel to 127\.0\.0\.1:%d for backend "
                       r"pid \d+: no answer within 2000 ms \(server_connect_timeout\) while "
                       r"connecting$" % proxy.port, timeout=10)
        pg.query("SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                 "WHERE query LIKE '%syn dropped%' AND pid <> pg_backend_pid()")
        assert_cancelled(c)
        # the server was never at risk of a late signal: it serves the next transaction
        assert c.query("SELECT 6")[0] == [["6"]]
        assert c.query("SELECT 7")[0] == [["7"]]
        c.close()
        assert "closed at release" not in s.log_text()
    finally:
        proxy.close()


@pytest.mark.timeout(150)
def test_cancels_hanging_upstream_leave_scram_logins_alone(start_sluice, pg):
    """Five cancels held by the upstream at once, more than libuv's 4 pool threads: a client
    whose SCRAM login needs a derivation from auth_file's plain password (secret.c, on the
    thread pool) still logs in at once. Before, each held cancel kept a pool thread and the
    login waited behind them."""
    proxy = CancelHoldingProxy(pg.port)
    try:
        s = start_sluice({"pool_mode": "session", "default_pool_size": 10, "workers": 1,
                          "auth_type": "scram-sha-256", "server_connect_timeout": 60},
                         auth_file={"app": "apppass", "fresh": "freshpass"},
                         databases={APP_DB: pg.db_entry(port=proxy.port)})
        clients = [start_query(s.port, f"pool {i}", password="apppass") for i in range(5)]
        pg.wait_for_active("app", "pool ", count=5, timeout=30)
        requesters = [send_cancel(s.port, c.backend_key) for c in clients]
        # (before, the fifth waited for a pool thread: 4 were held)
        wait_until(lambda: proxy.cancels_held() >= 4, 30, what="4 cancels held upstream")
        t0 = time.monotonic()
        # "fresh" has never logged in: its SCRAM secret is derived now, on the thread pool
        with psycopg.connect(s.dsn(user="fresh", password="freshpass", connect_timeout=30)) as f:
            assert f.execute("SELECT 4").fetchone()[0] == 4
        assert time.monotonic() - t0 < 20, "the SCRAM login waited behind the held cancels"
        wait_until(lambda: proxy.cancels_held() == 5, 30, what="5 cancels held upstream")
        assert not any(r.is_closed(0.1) for r in requesters), \
            "a requester was answered before its cancel was done"
        for r in requesters:
            r.close()
        for c in clients:
            c.close()
        # a prompt shutdown with the cancels still in flight: sluice ends them, exits clean
        t0 = time.monotonic()
        assert s.stop(signal.SIGTERM, timeout=30) == 0
        assert time.monotonic() - t0 < 20, "shutdown waited for the held cancels"
    finally:
        proxy.close()


@pytest.mark.timeout(120)
def test_a_server_closed_while_its_cancel_is_held_is_freed_once_the_cancel_gives_up(
        start_sluice, pg):
    """The backend dies while its cancel is still waiting upstream: the server closes, and its
    struct waits for the cancel (server_connect_timeout), which then answers the requester and
    frees it; sluice goes on serving."""
    proxy = CancelHoldingProxy(pg.port)
    try:
        s = start_sluice({"pool_mode": "session", "default_pool_size": 2,
                          "server_connect_timeout": 3, "workers": 1},
                         databases={APP_DB: pg.db_entry(port=proxy.port)})
        c = start_query(s.port, "dies held")
        pids = pg.wait_for_active("app", "dies held", timeout=20)
        r = send_cancel(s.port, c.backend_key)
        wait_until(lambda: proxy.cancels_held() == 1, 30, what="the cancel held upstream")
        pg.query("SELECT pg_terminate_backend(%s)", [pids[0]])
        with pytest.raises(ServerError):
            c.read_results()
        c.close()
        assert r.is_closed(40), "the requester was never answered"
        r.close()
        s.wait_for_log(r"cancel request failed: .*no answer within 3000 ms", timeout=20)
        with s.connect() as d:
            assert d.execute("SELECT 5").fetchone()[0] == 5
    finally:
        proxy.close()


@pytest.mark.timeout(120)
def test_a_graceful_shutdown_with_a_cancel_held_upstream_ends_it_and_exits(start_sluice, pg):
    """SIGINT while a cancel waits upstream (its query still running): after shutdown_timeout
    sluice closes what is left, the cancel included, and exits 0 (ASan: nothing leaked)."""
    proxy = CancelHoldingProxy(pg.port)
    try:
        s = start_sluice({"pool_mode": "session", "default_pool_size": 2, "shutdown_timeout": 2,
                          "server_connect_timeout": 60, "workers": 2},
                         databases={APP_DB: pg.db_entry(port=proxy.port)})
        c = start_query(s.port, "held at shutdown")
        pg.wait_for_active("app", "held at shutdown", timeout=20)
        r = send_cancel(s.port, c.backend_key)
        wait_until(lambda: proxy.cancels_held() == 1, 30, what="the cancel held upstream")
        t0 = time.monotonic()
        assert s.stop(signal.SIGINT, timeout=40) == 0
        assert time.monotonic() - t0 < 30, "shutdown waited for the held cancel"
        assert r.is_closed(5)
        r.close()
        c.close()
    finally:
        proxy.close()
