"""Session mode across workers (docs/architecture.md 5.3, 5.4): a server released on one worker
goes to the client that has waited longest for it, whichever worker that client is on, as in
transaction mode. Otherwise a worker whose clients keep reconnecting keeps the pool's servers
and another worker's clients wait until query_wait_timeout."""

import threading
import time

import pytest

from multiworker import (ADMIN, SLOW, close_all, console, local_port, show, worker_at_port,
                         worker_of)


def place(s, adm, n_first, n_second, **login):
    """Opens clients until n_first are on one worker and n_second on another (logged in, no
    query run: in session mode none holds a backend yet). Returns (those on the first, those
    on the second, every one opened)."""
    opened = []
    for _ in range(8 * (n_first + n_second)):
        opened.append(s.connect(**login))
        worker_at = {r["port"]: worker_of(r) for r in show(adm, "CLIENTS")}
        groups = {}
        for conn in opened:
            groups.setdefault(worker_at[local_port(conn)], []).append(conn)
        for w, on_w in groups.items():
            for o, on_o in groups.items():
                if o != w and len(on_w) >= n_first and len(on_o) >= n_second:
                    return on_w[:n_first], on_o[:n_second], opened
    close_all(opened)
    raise AssertionError("could not place the clients on two workers")


def query_in_thread(c, sql, out, key):
    def run():
        try:
            out[key] = (c.execute(sql).fetchone()[0], time.monotonic())
        except Exception as e:  # noqa: BLE001 - the test reports it
            out[key] = (repr(e), time.monotonic())
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.timeout(120)
def test_a_released_session_server_goes_to_the_older_waiter_on_another_worker(start_sluice, pg):
    """pool_size = 1, two workers. A holds the one backend on worker W; B on the other worker
    asks for it, then C on W. When A leaves, B (older) gets the backend, not C, although C is
    on the worker that released it; C is served once B leaves."""
    s = start_sluice({"pool_mode": "session", "workers": 2, "default_pool_size": 1,
                      "query_wait_timeout": 20, "admin_users": ADMIN, "log_level": "debug"})
    with console(s) as adm:
        # the first login learns the welcome; it holds the one backend from its first query
        same = {"application_name": "same"}
        (a, c), (b,), opened = place(s, adm, 2, 1, **same)
        try:
            assert a.execute("SELECT 1").fetchone()[0] == 1
            out = {}
            tb = query_in_thread(b, "SELECT pg_backend_pid()", out, "b")
            time.sleep(0.3 * SLOW)  # B's wait is registered well before C's (5 ms slack)
            tc = query_in_thread(c, "SELECT pg_backend_pid()", out, "c")
            time.sleep(0.3 * SLOW)
            assert not out, f"served while A held the only backend: {out}"
            a.close()
            tb.join(5 * SLOW)
            assert "b" in out, (f"the older waiter on the other worker was not served; "
                                f"served: {out}")
            assert "c" not in out or out["c"][1] >= out["b"][1], out
            b.close()
            tc.join(5 * SLOW)
            assert "c" in out and isinstance(out["c"][0], int), out
        finally:
            close_all(opened)


def on_worker(s, adm, worker, opened, **login):
    """A client logged in with login on `worker` (opening others, kept in opened, until one
    lands there: the acceptor picks the least loaded worker)."""
    for _ in range(8):
        c = s.connect(**login)
        opened.append(c)
        if worker_at_port(adm, local_port(c)) == worker:
            return c
    raise AssertionError(f"no client landed on worker {worker}")


def start_full_session_pool(start_sluice):
    """A session pool of 3 on 2 workers and a budget "b" of one server (app=b-*)."""
    return start_sluice({"pool_mode": "session", "workers": 2, "default_pool_size": 3,
                         "query_wait_timeout": 6 * SLOW, "admin_users": ADMIN},
                        budgets={"b": "app=b-* max_servers=1"})


def an_idle_server_and_b_waiting(s, adm, opened):
    """Worker 0 holds a "same" server in use and one idle (its client left; the pool holds 3 of
    3), worker 1 b's one server; b-wait, on worker 0, waits on the budget. Returns
    (b_hold, b_wait, the idle backend's pid)."""
    same = {"application_name": "same"}
    holder = on_worker(s, adm, 0, opened, **same)
    leaver = on_worker(s, adm, 0, opened, **same)
    b_hold = on_worker(s, adm, 1, opened, application_name="b-hold")
    b_wait = on_worker(s, adm, 0, opened, application_name="b-wait")
    for c in (holder, b_hold):
        assert c.execute("SELECT 1").fetchone()[0] == 1
    idle_pid = leaver.execute("SELECT pg_backend_pid()").fetchone()[0]
    leaver.close()
    return b_hold, b_wait, idle_pid


@pytest.mark.timeout(120)
def test_an_idle_server_closed_for_a_local_waiter_goes_to_an_older_one_elsewhere_first(
        start_sluice, pg):
    """pool_size = 3, session mode, two workers; budget b may hold one server. On worker 0 a
    "same" client holds a backend and another "same" backend is idle; b-hold holds the third on
    worker 1. b-wait waits on worker 0 (held by its budget: the idle server stays, kept for
    worker 0's own waiters); then "same" on worker 1 (older) waits for the full pool, then
    "other" on worker 0 (younger, other startup parameters). The idle "same" server goes to the
    older waiter on worker 1 (its backend moves there), not closed for the younger "other"
    (issue 21: the longest waiter across workers first). Before, worker 0 closed it for its own
    younger waiter (pool_close_idle_unwanted), and the server opened for that one was closed in
    turn for the older waiter: two backend logins later, the older one ran on a third backend.
    Since the handover no longer keeps the idle server for b-wait, which cannot use it (the test
    below), the server moves at the older waiter's arrival already; the close's own look at
    older waiters elsewhere is left for an entry registered after the handover's last offer."""
    s = start_full_session_pool(start_sluice)
    opened = []
    with console(s) as adm:
        try:
            b_hold, b_wait, idle_pid = an_idle_server_and_b_waiting(s, adm, opened)
            older = on_worker(s, adm, 1, opened, application_name="same")
            younger = on_worker(s, adm, 0, opened, application_name="other")
            out = {}
            threads = [query_in_thread(b_wait, "SELECT 1", out, "b-wait")]
            time.sleep(0.3 * SLOW)
            threads.append(query_in_thread(older, "SELECT pg_backend_pid()", out, "older"))
            time.sleep(1.0 * SLOW)
            threads.append(query_in_thread(younger, "SELECT 1", out, "younger"))
            time.sleep(1.0 * SLOW)
            assert "older" in out and isinstance(out["older"][0], int), (
                f"the older waiter on worker 1 was not served; served: {out}")
            assert "younger" not in out or out["younger"][1] >= out["older"][1], out
            assert out["older"][0] == idle_pid, (
                f"the older waiter ran on backend {out['older'][0]}, not on the idle one "
                f"({idle_pid}): that one was closed for the younger waiter on worker 0")
            close_all([b_hold, older])  # b-wait and then younger are served
            for t in threads:
                t.join(10 * SLOW)
            assert all(isinstance(out[k][0], int) for k in ("b-wait", "younger")), out
        finally:
            close_all(opened)


@pytest.mark.timeout(120)
def test_an_idle_server_kept_for_local_waiters_that_cannot_use_it_goes_to_a_waiter_elsewhere(
        start_sluice, pg):
    """As above without the younger waiter: worker 0's only waiter, b-wait, is held by its
    budget, so the idle "same" server is no use to it; the "same" waiter on worker 1 gets it
    (its backend moves there) at once. Before, the handover kept a session pool's idle server
    for the pool's own waiters whatever they could do with it, and the waiter on worker 1 waited
    for query_wait_timeout."""
    s = start_full_session_pool(start_sluice)
    opened = []
    with console(s) as adm:
        try:
            b_hold, b_wait, idle_pid = an_idle_server_and_b_waiting(s, adm, opened)
            waiter = on_worker(s, adm, 1, opened, application_name="same")
            out = {}
            threads = [query_in_thread(b_wait, "SELECT 1", out, "b-wait")]
            time.sleep(0.3 * SLOW)
            asked = time.monotonic()
            threads.append(query_in_thread(waiter, "SELECT pg_backend_pid()", out, "waiter"))
            threads[-1].join(2 * SLOW)
            assert "waiter" in out, f"not served beside an idle server it could use: {out}"
            assert out["waiter"][0] == idle_pid, (out, idle_pid)
            assert out["waiter"][1] - asked < 1.0 * SLOW, out
            close_all([b_hold])  # b-wait is served
            threads[0].join(10 * SLOW)
            assert isinstance(out["b-wait"][0], int), out
        finally:
            close_all(opened)
