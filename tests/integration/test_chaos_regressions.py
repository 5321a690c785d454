"""Defects test_chaos.py's seeds found, each reduced to a small deterministic test."""

import time

import pytest


from multiworker import SLOW, console, on_distinct_workers, worker_at_port
from pgwire import RawConn, query_msg

ADMIN = "admin"
PASSWORDS = {"app": "apppass", ADMIN: "adminpass"}


def budget_client(s, name):
    c = RawConn(s.port, timeout=10 * SLOW)
    c.startup(user="app", password=PASSWORDS["app"], application_name=name)
    return c


@pytest.mark.timeout(60)
def test_a_budget_waiter_that_vanishes_leaves_no_claim_on_the_budget_s_room(start_sluice, pg):
    """Seed 1 of test_chaos (2 workers, transaction mode). A client of a budget at max_servers,
    waiting on worker Y beside an idle server, is noted in the ledger as Y's oldest waiter of the
    budget (its room goes to the longest waiter across workers). The client vanished, and the
    note stayed: client_close cleared the client's budget before taking it off the queue, so
    pool_lease_waiter_gone saw no budget to update. A debug build's ledger_audit aborted sluice
    ("waiters of budget noted held by its lease limit slow counts 1, the walk finds 0"); a
    release build counted the gone waiter as older than every later waiter of the budget on the
    other workers (older_lease_waits_elsewhere), keeping the budget's room for nobody until Y's
    next waiter of it left a queue."""
    s = start_sluice({"workers": 2, "pool_mode": "transaction", "admin_users": ADMIN,
                      "default_pool_size": 4, "query_wait_timeout": 5},
                     auth_file=PASSWORDS, budgets={"slow": "app=slow* max_servers=1"})
    with console(s, password=PASSWORDS[ADMIN]) as adm:
        names = iter(f"slow{i}" for i in range(100))
        (holder, leaver), opened = on_distinct_workers(
            adm, 2, lambda _: budget_client(s, next(names)), lambda c: c.sock.getsockname()[1],
            16)
        # an idle server on the leaver's worker, so its wait is decided by the budget's room
        for _ in range(16):
            plain = RawConn(s.port, timeout=10 * SLOW)
            plain.startup(user="app", password=PASSWORDS["app"], application_name="plain")
            opened.append(plain)
            if worker_at_port(adm, plain.sock.getsockname()[1]) == \
                    worker_at_port(adm, leaver.sock.getsockname()[1]):
                break
        else:
            raise AssertionError("no client on the leaver's worker")
    try:
        plain.query("SELECT 1")
        holder.query("BEGIN")
        holder.query("SELECT 1")  # the budget's one server
        leaver.send(query_msg("SELECT 2"))  # waits for it, on the other worker
        time.sleep(0.5)
        leaver.close_abruptly(reset=True)
        time.sleep(0.5)  # a debug build's audit ticks
        holder.query("COMMIT")
        t0 = time.monotonic()
        assert holder.query("SELECT 3")[0] == [["3"]]
        took = time.monotonic() - t0
        assert took < 2 * SLOW, f"the budget's next query waited {took:.1f} s for its free room"
    finally:
        for c in opened:
            c.close()
    assert not [line for line in s.log if "ledger:" in line], s.log_tail(20)
