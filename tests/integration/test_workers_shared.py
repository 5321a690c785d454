"""What every worker shares, seen from clients with `workers = 2`: a pool key's welcome (what a
server reports at login) learnt by one worker serves the other's logins, and max_client_logins
is one cap for the process, not one per worker. The acceptor hands each connection to the worker
with the fewest clients, so with one client connected the next lands on the other worker."""

import time

import psycopg
import pytest

from conftest import APP_DB, wait_until
from multiworker import worker_of_id_text
from pgwire import RawConn, ServerError, raw_login, startup_packet

# client ids carry their worker in the top byte (docs/architecture.md 5.1)
def login_workers(s, mark):
    """The workers of clients whose login sluice logged since mark (C-<worker>:<n>, worker 0's
    C-<n>: src/base/conn_id.h)."""
    return [worker_of_id_text(line.split(" C-")[1].split()[0])
            for line in s.log_since(mark) if "login ok" in line]


@pytest.mark.timeout(60)
def test_a_login_on_another_worker_is_welcomed_while_the_only_server_is_busy(start_sluice):
    """The pool's only server is in a transaction on worker 0: a client landing on worker 1 is
    logged in at once from the welcome worker 0 learnt, and only its query waits, told that the
    pool's one server is busy. Before, its login waited for a server of worker 1's own and ended
    in FATAL 53300 after query_wait_timeout, and the message counted '0 of 0 servers'."""
    s = start_sluice({"workers": 2, "pool_mode": "transaction", "default_pool_size": 1,
                      "query_wait_timeout": 2})
    with s.connect() as a:
        a.execute("BEGIN")
        a.execute("SELECT 1")  # worker 0's pool learnt the welcome; its only server is busy
        mark = s.mark()
        t0 = time.monotonic()
        b = raw_login(s.port, timeout=10)
        try:
            took = time.monotonic() - t0
            assert took < 1.5, f"the login took {took:.1f} s: it waited for a server"
            wait_until(lambda: login_workers(s, mark), 5, what="b's login line")
            assert login_workers(s, mark)[0] == 1, "b should have landed on worker 1"
            assert b.params.get("server_version"), b.params
            # its query waits for the busy server and is told whose it is (every worker's count)
            with pytest.raises(ServerError) as ei:
                b.query("SELECT 'b ran'")
            assert ei.value.sqlstate == "53300", ei.value.fields
            assert 'pool "appdb/app" is full: 1 of 1 servers busy' in ei.value.fields["M"], \
                ei.value.fields
        finally:
            b.close()


@pytest.mark.timeout(90)
def test_max_client_logins_is_one_cap_across_workers(start_sluice):
    """60 half-sent startups spread over two workers with max_client_logins = 20: 40 give way
    (53300 naming the cap), as with one worker; 20 per worker would have let 40 stall."""
    s = start_sluice({"workers": 2, "pool_mode": "transaction", "max_client_conn": 50,
                      "max_client_logins": 20, "client_login_timeout": 60,
                      "client_startup_timeout": 60})
    strangers = []
    try:
        for _ in range(60):
            c = RawConn(s.port, timeout=10)
            c.send(startup_packet()[:4])
            strangers.append(c)
        # each worker evicts its own oldest stalled logins (older than a second) while the
        # process is over the cap: which ones is per worker, how many is not
        time.sleep(3)
        errors = []
        for c in strangers:
            try:
                errors.append(c.expect_error(timeout=0.3))
            except OSError:
                pass
        assert len(errors) == 40, f"{len(errors)} of 60 half-sent logins were closed, expected 40"
        assert all(e["C"] == "53300" and "max_client_logins (20)" in e["M"] for e in errors), \
            sorted({(e["C"], e["M"]) for e in errors})
        with s.connect(dbname=APP_DB, connect_timeout=10) as c:  # a real login still gets in
            assert c.execute("SELECT 1").fetchone() == (1,)
    finally:
        for c in strangers:
            c.close()


@pytest.mark.timeout(60)
def test_a_waiter_on_another_worker_is_told_who_holds_the_cap(start_sluice, pg):
    """The holder's server is on worker 0; app2's first login, on worker 1, needs a server to
    learn its welcome and waits under max_db_connections. Its message counts every worker's
    backends: it said 'pool "?/?" holds 0 of them' from its own worker's lists."""
    users = {"app": "apppass", "app2": "app2pass"}
    s = start_sluice({"workers": 2, "pool_mode": "transaction", "max_db_connections": 1,
                      "default_pool_size": 10, "query_wait_timeout": 1},
                     databases={APP_DB: {"host": "127.0.0.1", "port": pg.port, "dbname": APP_DB}},
                     auth_file=users)
    # the acceptor picks the worker with fewer clients: holder 0, spare 1, spare 0, then 1
    with s.connect() as holder, s.connect() as spare1, s.connect() as spare0:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError) as ei:
            s.connect(user="app2", password="app2pass")
        msg = str(ei.value)
        assert "max_db_connections = 1" in msg and 'pool "appdb/app" holds 1 of them' in msg, msg
        holder.execute("COMMIT")
        assert not spare0.closed and not spare1.closed  # they only keep the spread
