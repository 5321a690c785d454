"""The circuit breaker across workers (docs/architecture.md 5.10): with `workers = 4` and a
database that is down, the process makes the connection attempts one pooler would (the failures,
the backoff and the one probe are the pool key's, in the ledger), not one backoff per worker;
logins fail fast with 57P03 on every worker, the outage is one log line, and when the database
returns every worker's clients are served.

The database is a TCP listener of the test's own on 127.0.0.1: while "down" it accepts and closes
(counting each accept: one connection attempt of sluice), while "up" it forwards to the test
Postgres."""

import socket
import threading
import time

import pytest

from conftest import forward_both_ways
from pgwire import ServerError, raw_login

DOWN_WAIT_S = 2  # also the backoff's cap (min(server_login_retry, server_down_wait))
CALL_TIMEOUT = 20.0
LOAD_S = 6.0
CLIENTS = 8


class FlakyDatabase:
    """A listener that refuses (accept, close) while down and forwards to Postgres while up."""

    def __init__(self, pg_port):
        self.pg_port = pg_port
        self.up = False
        self.accepts = 0
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepts += 1
                up = self.up
            if not up:
                conn.close()
                continue
            try:
                pg = socket.create_connection(("127.0.0.1", self.pg_port), timeout=10)
            except OSError:
                conn.close()
                continue
            forward_both_ways(conn, pg)

    def count(self):
        with self.lock:
            return self.accepts

    def close(self):
        self.closed = True
        self.sock.close()


@pytest.fixture
def flaky(pg):
    f = FlakyDatabase(pg.port)
    yield f
    f.close()


def start(start_sluice, pg, flaky, workers):
    return start_sluice({"workers": workers, "pool_mode": "transaction",
                         "server_down_wait": DOWN_WAIT_S, "query_wait_timeout": 60,
                         "server_connect_timeout": 5},
                        databases={"appdb": pg.db_entry(port=flaky.port)})


def storm_of_logins(s, seconds):
    """CLIENTS threads logging in again and again (concurrently, so the acceptor spreads them
    over every worker) for `seconds`: every login must fail with 57P03, each within
    server_down_wait + 5 s. Returns the number of logins."""
    errors, done = [], []

    def one():
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                c = raw_login(s.port, timeout=CALL_TIMEOUT)
                c.close()
                errors.append("a login succeeded while the database is down")
                return
            except ServerError as e:
                took = time.monotonic() - t0
                if e.fields.get("C") != "57P03" or took > DOWN_WAIT_S + 5:
                    errors.append((e.fields, took))
                    return
            done.append(1)
            time.sleep(0.05)

    threads = [threading.Thread(target=one) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    return len(done)


def attempts_during_outage(start_sluice, pg, flaky, workers):
    s = start(start_sluice, pg, flaky, workers)
    before = flaky.count()
    logins = storm_of_logins(s, LOAD_S)
    attempts = flaky.count() - before
    return s, attempts, logins


@pytest.mark.timeout(180)
def test_a_down_database_sees_the_attempts_of_one_pooler_and_every_worker_recovers(
        start_sluice, pg, flaky):
    s1, one, _ = attempts_during_outage(start_sluice, pg, flaky, 1)
    s1.stop()
    s4, four, logins = attempts_during_outage(start_sluice, pg, flaky, 4)
    assert logins >= CLIENTS, logins
    print(f"connection attempts in {LOAD_S} s: workers = 1: {one}, workers = 4: {four}")
    # one backoff for the process: about what one worker makes, not four times it
    assert four <= one * 1.5 + 4, f"workers = 4 made {four} attempts, workers = 1 made {one}"
    # the outage is one line in the log, not one per worker
    down_lines = [ln for ln in s4.log if "is down: cannot connect" in ln]
    assert len(down_lines) == 1, down_lines

    flaky.up = True
    # within the backoff's cap (and a tick) a probe succeeds; then every worker's clients are
    # served: CLIENTS logins held at once land on every worker
    deadline = time.monotonic() + 15
    conns = []
    try:
        while len(conns) < CLIENTS:
            try:
                conns.append(raw_login(s4.port, timeout=CALL_TIMEOUT))
            except ServerError as e:
                assert e.fields.get("C") == "57P03", e.fields
                assert time.monotonic() < deadline, "not served 15 s after the database returned"
                time.sleep(0.2)
        for c in conns:
            assert c.query("SELECT 'up'")[0] == [["up"]]
    finally:
        for c in conns:
            c.close()
