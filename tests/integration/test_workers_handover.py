"""The idle-server handover between workers (docs/architecture.md 5.4): with workers > 1 a pool
key's servers are spread over the workers' pools, and the caps count them all. A client on one
worker must not queue until query_wait_timeout while another worker holds an idle server the
cap counts: a server of the same key moves to the waiting worker; one of another key under a
shared cap (max_db_connections, max_user_connections) is closed so the waiting worker opens its
own. query_wait_timeout = 5 s and every query must succeed well within it, over many rounds,
with pg_stat_activity never above the cap."""

import threading
import time

import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, BackendSampler
from multiworker import (ADMIN, PROMPT_S, clients_on_distinct_workers, close_all, console,
                         main_keys)

ADMIN_PASSWORD = "adminpass"
ROUNDS = 15


def timed_query(c, sql="SELECT pg_backend_pid()"):
    t0 = time.monotonic()
    row = c.execute(sql).fetchone()
    return time.monotonic() - t0, row[0]


def run_rounds(clients, rounds=ROUNDS):
    """Each client in turn runs a transaction; every one must be served promptly. Returns the
    backend pids seen and the slowest wait."""
    pids, slowest = set(), 0.0
    for r in range(rounds):
        for i, c in enumerate(clients):
            took, pid = timed_query(c)
            assert took < PROMPT_S, (f"round {r}, client {i}: served after {took:.2f} s, "
                                     f"an idle server on another worker was not handed over")
            pids.add(pid)
            slowest = max(slowest, took)
    return pids, slowest


@pytest.mark.timeout(120)
@pytest.mark.parametrize("nworkers,check_delay", [(2, 30), (4, 30), (2, 0)])
def test_an_idle_server_moves_to_the_worker_whose_client_waits(start_sluice, pg, nworkers,
                                                                check_delay):
    """pool_size = 1: the one backend serves every worker's clients in turn by moving. With
    server_check_delay = 0 each arrival is checked first (pool_take_moved), then served."""
    s = start_sluice(main_keys(nworkers, 1, server_check_delay=check_delay,
                               server_check_query="SELECT 1", log_level="debug"))
    with console(s) as adm:
        logins = [{}] * nworkers
        clients, opened = clients_on_distinct_workers(s, adm, logins, nworkers)
        try:
            with BackendSampler(pg, APP_USER) as sampler:
                pids, slowest = run_rounds(clients)
            assert sampler.max <= 1, f"pool_size = 1 passed: {sampler.max} backends"
            assert len(pids) == 1, f"one backend moved between workers, saw {pids}"
            print(f"workers={nworkers}: slowest handover {slowest * 1000:.1f} ms")
        finally:
            close_all(opened)
    log = s.log_text()
    assert log.count("moving to worker") >= ROUNDS, "the rounds were not served by moves"
    checked = log.count("checked before reuse")
    assert (checked >= ROUNDS) if check_delay == 0 else checked == 0, checked


@pytest.mark.timeout(120)
def test_a_moved_server_keeps_its_prepared_statements_and_session(start_sluice, pg):
    """A named prepared statement made on worker A's client is re-prepared (or found) on the
    server after it moved to worker B and back; a parameter a client SET is its own."""
    s = start_sluice(main_keys(2, 1, max_prepared_statements=100))
    with console(s) as adm:
        logins = [{"prepare_threshold": 0}, {"prepare_threshold": 0}]
        (a, b), opened = clients_on_distinct_workers(s, adm, logins, 2)
        try:
            a.execute("SET application_name = 'client_a'")
            b.execute("SET application_name = 'client_b'")
            for r in range(ROUNDS):
                for c, name in ((a, "client_a"), (b, "client_b")):
                    t0 = time.monotonic()
                    row = c.execute("SELECT %s::int + 1, current_setting('application_name')",
                                    [r]).fetchone()
                    assert time.monotonic() - t0 < PROMPT_S
                    assert row == (r + 1, name), row
        finally:
            close_all(opened)


APP2 = {"user": "app2", "password": "app2pass"}
SHARED_CAPS = {
    # the key set to 1: ([databases] names, the second client's login, the backends sampled)
    "max_db_connections": ([APP_DB], APP2, {"usename": [APP_USER, "app2"], "datname": APP_DB}),
    "max_user_connections": ([APP_DB, "appdb_b"], {"dbname": "appdb_b"}, {"usename": APP_USER}),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cap", sorted(SHARED_CAPS))
def test_an_idle_server_of_another_key_is_closed_for_a_waiter_under_a_shared_cap(
        start_sluice, pg, cap):
    """cap = 1 shared by two pool keys, one client of each on its own worker: max_db_connections
    by app and app2 on appdb, max_user_connections by app on appdb and on appdb_b (the same
    Postgres database). Each waiter is served promptly, the other key's idle server closed."""
    dbnames, login, sampled = SHARED_CAPS[cap]
    entry = {"host": "127.0.0.1", "port": pg.port, "dbname": APP_DB}
    users = {APP_USER: APP_PASSWORD, "app2": "app2pass", ADMIN: ADMIN_PASSWORD}
    s = start_sluice(main_keys(2, 5, **{cap: 1}), databases={name: entry for name in dbnames},
                     auth_file=users)
    with console(s, ADMIN_PASSWORD) as adm:
        clients, opened = clients_on_distinct_workers(s, adm, [{}, login], 2)
        try:
            with BackendSampler(pg, **sampled) as sampler:
                _, slowest = run_rounds(clients, rounds=8)
            assert sampler.max <= 1, f"{cap} = 1 passed: {sampler.max} backends"
            print(f"{cap}: slowest {slowest * 1000:.1f} ms")
        finally:
            close_all(opened)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("caps", [{"default_pool_size": 3},
                                  {"default_pool_size": 5, "max_db_connections": 3}])
def test_a_storm_over_four_workers_is_served_within_the_caps(start_sluice, pg, caps):
    """16 clients over 4 workers, each running short transactions with a pause between them, so
    servers go idle on one worker while another's clients wait: every transaction is served
    (no query_wait_timeout) and the backends never pass the cap."""
    users = {APP_USER: APP_PASSWORD, "app2": "app2pass"}
    main = {"pool_mode": "transaction", "workers": 4, "query_wait_timeout": 5}
    main.update(caps)
    s = start_sluice(main, databases={APP_DB: {"host": "127.0.0.1", "port": pg.port,
                                               "dbname": APP_DB}},
                     auth_file=users)
    errors, done = [], []

    def client(i):
        login = {"user": "app2", "password": "app2pass"} if i % 2 else {}
        try:
            with s.connect(**login) as c:
                for _ in range(25):
                    c.execute("SELECT pg_sleep(0.005)")
                    time.sleep(0.002 * (i % 3))
                done.append(i)
        except Exception as e:  # noqa: BLE001 - asserted below
            errors.append(f"client {i} ({login}): {e}")

    cap = 3 if "max_db_connections" in caps else 6  # two pools of pool_size 3
    with BackendSampler(pg, [APP_USER, "app2"], datname=APP_DB) as sampler:
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors[:3]
    assert len(done) == 16
    assert sampler.max <= cap, f"{sampler.max} backends, cap {cap}"
