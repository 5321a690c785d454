"""When the database goes away (issue #19): the pool's circuit breaker. While a pool has no server
and its connection attempts fail, requests that need a server fail after server_down_wait with
SQLSTATE 57P03, the database's reason and how long it has been down, instead of waiting
query_wait_timeout; one probe at a time tests the database and its first success serves clients
again, without restarting sluice. SHOW POOLS (breaker), /health, /metrics and the log (state
changes only) say so. A paused pool answers 57000, a full one 53300.

The database here is stopped and started, so this module runs its own cluster (never the shared
`pg` fixture) and restarts it after each test that stops it.
"""

import re
import time

import psycopg
import pytest

from conftest import Background, PgCluster, pg_tool, pick_port
from pgwire import ServerError, raw_login
from test_http import health, metrics, parse_metrics, pool_of, sample

ADMIN = "admin"
CALL_TIMEOUT = 20.0  # any single client call: far above server_down_wait, far below the old wait
DOWN_WAIT_S = 3
QUERY_WAIT_S = 60  # what a client waited before the breaker (and still waits for a full pool)


class StoppableCluster(PgCluster):
    def stop_db(self):
        self._run([pg_tool("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60",
                   "stop"])

    def start_db(self):
        self._run([pg_tool("pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w",
                   "-t", "60", "start"])

    def ensure_running(self):
        p = self._run([pg_tool("pg_ctl"), "-D", str(self.data), "status"], check=False)
        if p.returncode != 0:
            self.start_db()


@pytest.fixture(scope="module")
def down_pg():
    cluster = StoppableCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def db(down_pg):
    down_pg.ensure_running()
    yield down_pg
    down_pg.ensure_running()  # the next test starts with the database up


def start(start_sluice, cluster, **main):
    port = pick_port()
    conf = {"pool_mode": "transaction", "admin_users": ADMIN, "server_down_wait": DOWN_WAIT_S,
            "query_wait_timeout": QUERY_WAIT_S, "server_connect_timeout": 5, "http_listen_port": port,
            "http_listen_addr": "127.0.0.1"}
    conf.update(main)
    s = start_sluice(conf, databases={"appdb": cluster.db_entry()})
    s.http_port = port
    s.wait_for_log(rf"HTTP .* listening on 127\.0\.0\.1:{port}")
    return s


def show_pool(s, db="appdb"):
    with psycopg.connect(s.dsn(dbname="sluice", user=ADMIN, password=None), autocommit=True,
                         prepare_threshold=None) as con:
        cur = con.execute("SHOW POOLS")
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    (row,) = [r for r in rows if r["database"] == db]
    return row


def timed_query(conn, sql):
    """(rows or ServerError fields, seconds)."""
    t0 = time.monotonic()
    try:
        rows, _ = conn.query(sql)
        return rows, time.monotonic() - t0
    except ServerError as e:
        return e.fields, time.monotonic() - t0


@pytest.mark.timeout(120)
def test_a_logged_in_clients_query_fails_fast_with_57P03_while_the_database_is_down_and_succeeds_when_it_returns(  # noqa: E501
        start_sluice, db):
    s = start(start_sluice, db)
    a = raw_login(s.port, timeout=CALL_TIMEOUT)
    try:
        assert a.query("SELECT 1")[0] == [["1"]]
        mark = s.mark()
        db.stop_db()

        # the first request after the outage: no server, the connection attempt fails, the
        # breaker opens; the request fails within server_down_wait (not query_wait_timeout)
        f, took = timed_query(a, "SELECT 'while down'")
        assert isinstance(f, dict), f"a query succeeded with the database stopped: {f}"
        assert f.get("C") == "57P03", f
        assert f.get("S") == "ERROR", f"a whole request should get an ERROR, not {f}"
        msg = f.get("M", "")
        assert "appdb/app" in msg and "down" in msg, msg
        assert re.search(r"for \d+\.\d s", msg), f"the message should say how long: {msg}"
        assert re.search(r"connect|refused|No such file|shut", msg, re.I), \
            f"the message should carry the database's reason: {msg}"
        assert took < DOWN_WAIT_S + 5, f"waited {took:.1f} s (server_down_wait = {DOWN_WAIT_S})"
        assert a.last_status == "I", "the connection stays usable after the ERROR"

        # while it stays down: every request fails the same way, and only the state change
        # was logged (not each probe)
        for _ in range(2):
            f, took = timed_query(a, "SELECT 'still down'")
            assert isinstance(f, dict) and f.get("C") == "57P03", f
            assert took < DOWN_WAIT_S + 5, took
        # a new client logs in (the pool knows the welcome) and its query fails the same way
        b = raw_login(s.port, timeout=CALL_TIMEOUT)
        try:
            f, took = timed_query(b, "SELECT 'new client'")
            assert isinstance(f, dict) and f.get("C") == "57P03", f
        finally:
            b.close()
        log = "\n".join(s.log_since(mark))
        assert len(re.findall(r"pool appdb/app is down", log)) == 1, log[-3000:]
        assert show_pool(s)["breaker"] in ("open", "probing")
        status, doc = health(s)
        assert status == 503 and pool_of(doc)["status"] == "down", doc
        assert pool_of(doc)["last_connect_error"], doc
        assert pool_of(doc)["breaker"] in ("open", "probing"), doc
        assert pool_of(doc)["down_for_s"] > 0, doc
        samples, _ = parse_metrics(metrics(s))
        assert sample(samples, "sluice_pool_down", database="appdb", user="app") == 1

        # the database returns: within seconds (probes are at most server_down_wait apart, not
        # server_login_retry's default 15 s) a probe succeeds and the same connection is served
        # again, without restarting sluice
        db.start_db()
        t_back = time.monotonic()
        while True:
            rows, _ = timed_query(a, "SELECT 'back'")
            if rows == [["back"]]:
                break
            assert isinstance(rows, dict) and rows.get("C") == "57P03", rows
            assert time.monotonic() - t_back < 12, "not served 12 s after the database returned"
        assert show_pool(s)["breaker"] == "closed"
        s.wait_for_log(r"pool appdb/app is up again: connected to the database after "
                       r"\d+\.\d s down", since=mark)
        status, doc = health(s)
        assert status == 200 and pool_of(doc)["status"] == "ok", doc
        assert pool_of(doc)["breaker"] == "closed" and pool_of(doc)["down_for_s"] is None, doc
    finally:
        a.close()


@pytest.mark.timeout(120)
def test_a_waiting_client_is_served_when_the_database_returns_within_server_down_wait(
        start_sluice, db):
    """The first probe to succeed closes the breaker and the clients already waiting get
    servers: nobody is failed who could have been served."""
    s = start(start_sluice, db, server_down_wait=30)
    a = raw_login(s.port, timeout=40)
    try:
        a.query("SELECT 1")
        mark = s.mark()
        db.stop_db()
        waiting = Background(timed_query, a, "SELECT 'served'")
        s.wait_for_log(r"pool appdb/app is down", timeout=10, since=mark)
        time.sleep(1)
        assert not waiting.done(), waiting.result(0)
        db.start_db()
        rows, took = waiting.result(40)
        assert rows == [["served"]], rows
        assert show_pool(s)["breaker"] == "closed"
    finally:
        a.close()


@pytest.mark.timeout(90)
def test_a_login_to_a_database_that_is_down_fails_fast_with_57P03(start_sluice, db):
    """A pool that never reached its database: the login fails with the breaker's code and the
    database's reason, not 08006 after the login's wait."""
    s = start(start_sluice, db)
    db.stop_db()
    t0 = time.monotonic()
    with pytest.raises(ServerError) as ei:
        c = raw_login(s.port, timeout=CALL_TIMEOUT)
        c.close()
    took = time.monotonic() - t0
    f = ei.value.fields
    assert f.get("C") == "57P03" and f.get("S") == "FATAL", f
    assert "down" in f.get("M", ""), f
    assert took < DOWN_WAIT_S + 5, took
    db.start_db()
    deadline = time.monotonic() + 15
    while True:
        try:
            c = raw_login(s.port, timeout=CALL_TIMEOUT)
            break
        except ServerError as e:
            assert e.fields.get("C") == "57P03", e.fields
            assert time.monotonic() < deadline, "no login 15 s after the database returned"
            time.sleep(0.3)
    try:
        assert c.query("SELECT 'up'")[0] == [["up"]]
    finally:
        c.close()


@pytest.mark.timeout(60)
def test_a_paused_pool_answers_57000_not_53300(start_sluice, db):
    s = start(start_sluice, db, query_wait_timeout=2)
    a = raw_login(s.port, timeout=CALL_TIMEOUT)
    try:
        a.query("SELECT 1")
        with psycopg.connect(s.dsn(dbname="sluice", user=ADMIN, password=None), autocommit=True,
                             prepare_threshold=None) as con:
            con.execute("PAUSE appdb")
            f, took = timed_query(a, "SELECT 'paused'")
            assert isinstance(f, dict), f
            assert f.get("C") == "57000" and f.get("S") == "ERROR", f
            assert "paused" in f.get("M", "") and "RESUME" in f.get("M", ""), f
            assert a.last_status == "I"
            con.execute("RESUME appdb")
        assert a.query("SELECT 'resumed'")[0] == [["resumed"]]
    finally:
        a.close()
