"""Session mode across workers (docs/architecture.md 5.3, 5.4): a server released on one worker
goes to the client that has waited longest for it, whichever worker that client is on, as in
transaction mode. Otherwise a worker whose clients keep reconnecting keeps the pool's servers
and another worker's clients wait until query_wait_timeout."""

import threading
import time

import pytest

from multiworker import ADMIN, SLOW, close_all, console, local_port, show, worker_of


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
