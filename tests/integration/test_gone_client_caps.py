"""A client that leaves while its query runs: its backend goes on with that query after sluice
lets the client go (Postgres notices a gone client only when it next reads or writes), so it
must go on counting against the caps until it has ended, checked in Postgres itself."""
import time

import pytest

from conftest import BackendSampler
from pgwire import query_msg, raw_login, terminate_msg

# A Query of 32 bytes announced and three sent: the client is in the middle of a message.
CUT_MESSAGE = b"Q\x00\x00\x00\x20SEL"


def leave(conn, how):
    if how == "mid_message":
        conn.send(CUT_MESSAGE)
        time.sleep(0.1)
        conn.close_abruptly(reset=True)
    elif how == "terminate":
        conn.send(terminate_msg())
        conn.close_abruptly()
    else:
        conn.close_abruptly(reset=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["mid_message", "terminate", "vanish"])
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_gone_clients_running_query_keeps_its_slot(start_sluice, pg, mode, how):
    """Session mode, a client cut mid-message: sluice closed the server at once, its slot went
    to the next client while the backend still ran pg_sleep: 2 backends under a cap of 1."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1})
    with BackendSampler(pg, "app") as smp:
        a = raw_login(s.port)
        a.send(query_msg("SELECT pg_sleep(2)"))
        time.sleep(0.5)
        leave(a, how)
        time.sleep(0.3)
        b = raw_login(s.port)
        b.send(query_msg("SELECT 1"))
        b.read_until({"Z"})
        b.close()
        time.sleep(0.3)
    assert smp.max <= 1, smp.history


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["mid_message", "terminate", "vanish"])
def test_a_gone_clients_running_query_keeps_its_budgets_lease(start_sluice, pg, how):
    """The budget's lease went back when the client left, while its server drained the query:
    another client of the budget then ran beside it, 2 backends at work under max_servers=1."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 4,
                      "query_wait_timeout": 10, "server_drain_timeout": 10},
                     budgets={"seeds": "app=seed* max_servers=1"})
    a = raw_login(s.port, application_name="seed-a")
    # "terminate" lets the query run to its end (Postgres runs what it read before a
    # Terminate); the others cancel it, so it ends within the cancel's round trip
    a.send(query_msg("SELECT pg_sleep(2) /* gone */"))
    time.sleep(0.5)
    leave(a, how)
    time.sleep(0.2)
    b = raw_login(s.port, application_name="seed-b")
    b.send(query_msg("SELECT pg_sleep(0.5) /* next */"))
    seen = 0
    deadline = time.monotonic() + 4
    with pg.superuser() as su:
        while time.monotonic() < deadline:
            # both counts from one snapshot of pg_stat_activity: two queries would see the
            # gone query end and the next begin as if they ran at once (CI, loaded)
            gone, following = su.execute(
                "SELECT count(*) FILTER (WHERE query LIKE '%/* gone */%'), "
                "count(*) FILTER (WHERE query LIKE '%/* next */%') FROM pg_stat_activity "
                "WHERE usename = 'app' AND state = 'active'").fetchone()
            if gone and following:
                seen += 1
            time.sleep(0.05)
    b.read_until({"Z"})
    b.close()
    assert seen == 0, f"{seen} samples with the gone client's query and the next at work at once"
