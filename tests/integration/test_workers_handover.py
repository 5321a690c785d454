"""The idle-server handover between workers (docs/architecture.md 5.4): with workers > 1 a pool
key's servers are spread over the workers' pools, and the caps count them all. A client on one
worker must not queue until query_wait_timeout while another worker holds an idle server the
cap counts: a server of the same key moves to the waiting worker; one of another key under a
shared cap (max_db_connections, max_user_connections) is closed so the waiting worker opens its
own. query_wait_timeout = 5 s and every query must succeed well within it, over many rounds,
with pg_stat_activity never above the cap."""

import re
import threading
import time

import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, BackendSampler
from multiworker import (ADMIN, PROMPT_S, clients_on_distinct_workers, close_all, console,
                         local_port, main_keys, worker_at_port)
from test_pgbouncer_overrides import other_db  # noqa: F401 - a fixture

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


@pytest.mark.timeout(120)
def test_a_released_server_goes_to_an_older_waiter_of_another_key_on_another_worker(
        start_sluice, pg):
    """max_db_connections = 1 shared by app and app2 (architecture 5.3): app2's transaction
    holds the one backend on worker Y; app's client on worker X waits, then a second app2
    client on Y. At the commit the server closes for X's older waiter instead of serving Y's
    own younger one: app's query ends first, though app2's waiter sleeps 1 s once served.
    Before, Y served its own waiter first and app's query waited for its sleep."""
    entry = {"host": "127.0.0.1", "port": pg.port, "dbname": APP_DB}
    users = {APP_USER: APP_PASSWORD, "app2": "app2pass", ADMIN: ADMIN_PASSWORD}
    s = start_sluice(main_keys(2, 5, max_db_connections=1), databases={APP_DB: entry},
                     auth_file=users)
    opened = []
    with console(s, ADMIN_PASSWORD) as adm:
        try:
            older = s.connect(application_name="older")
            opened.append(older)
            x = worker_at_port(adm, local_port(older))
            holder_and_younger = []
            for _ in range(16):
                if len(holder_and_younger) == 2:
                    break
                c = s.connect(application_name="app2", **APP2)
                opened.append(c)
                if worker_at_port(adm, local_port(c)) != x:
                    holder_and_younger.append(c)
            assert len(holder_and_younger) == 2, "no two app2 clients on the other worker"
            holder, younger = holder_and_younger
            done = {}

            def query(name, c, sql):
                c.execute(sql)
                done[name] = time.monotonic()

            with BackendSampler(pg, [APP_USER, "app2"], datname=APP_DB) as sampler:
                holder.execute("BEGIN")
                holder.execute("SELECT 1")
                threads = [threading.Thread(target=query, args=("older", older, "SELECT 1"))]
                threads[0].start()
                time.sleep(0.3)  # registered in the ledger, well beyond the 5 ms slack
                threads.append(threading.Thread(target=query,
                                                args=("younger", younger, "SELECT pg_sleep(1)")))
                threads[1].start()
                time.sleep(0.3)
                holder.execute("COMMIT")
                for t in threads:
                    t.join(10)
            assert set(done) == {"older", "younger"}, done
            assert done["older"] < done["younger"], (
                f"the younger waiter on the releasing worker was served first: older done "
                f"{done['older'] - done['younger']:+.2f} s after it")
            assert sampler.max <= 1, f"max_db_connections = 1 passed: {sampler.max} backends"
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



class OneServerMoving:
    """pool_size 1 and two clients on each of four workers taking turns without pause: the key's
    one backend is on its way between workers much of the time. Each worker applies a console
    command or a reload when its loop reads it, so one often reaches the sender and the
    receiver of a move on either side of it. Records (start, end, database, backend pid) of
    every transaction."""

    def __init__(self, s, adm):
        self.seen, self.errors, self.stop = [], [], threading.Event()
        clients, opened = clients_on_distinct_workers(s, adm, [{}] * 4, 4)
        more, opened_more = clients_on_distinct_workers(s, adm, [{}] * 4, 4)
        self.opened = opened + opened_more
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True)
                        for c in clients + more]

    def _run(self, c):
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                db, pid = c.execute("SELECT current_database(), pg_backend_pid()").fetchone()
            except Exception as e:  # noqa: BLE001 - asserted by __exit__
                self.errors.append(e)
                return
            self.seen.append((t0, time.monotonic(), db, pid))

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(10)
        close_all(self.opened)
        assert not self.errors, self.errors[:3]
        return False


def one_server_moving_sluice(start_sluice, databases):
    return start_sluice({"pool_mode": "transaction", "workers": 4, "default_pool_size": 1,
                         "query_wait_timeout": 5, "admin_users": ADMIN, "log_level": "debug"},
                        databases=databases)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["RECONNECT", "KILL"])
def test_a_console_command_for_another_database_spares_a_moving_server(start_sluice, pg,
                                                                        command):
    """A RECONNECT or KILL of appdb_b says nothing of appdb's one server, moving between
    workers while each applies it: the same backend serves throughout, never closed for a
    missed console command."""
    s = one_server_moving_sluice(start_sluice, {APP_DB: pg.db_entry(), "appdb_b": pg.db_entry()})
    with console(s) as adm, OneServerMoving(s, adm) as run:
        for _ in range(40):
            adm.execute(f"{command} appdb_b")
            if command == "KILL":
                adm.execute("RESUME appdb_b")
            time.sleep(0.02)
    log = s.log_text()
    assert log.count("moving to worker") >= 40, "too few moves to say anything"
    pids = {pid for _, _, _, pid in run.seen}
    missed = [ln for ln in s.log if "console command" in ln]
    assert len(pids) == 1, f"appdb's one server was replaced: backends {pids}, {missed[:3]}"
    assert not missed, missed[:3]


@pytest.mark.timeout(120)
def test_a_server_moving_while_a_reload_changes_its_settings_serves_no_transaction_after(
        start_sluice, pg, other_db):
    """RELOAD points appdb at another database, and back, while its one server moves: RELOAD
    answers once every worker applied it, and from then on no transaction reaches the old
    target. A server that left a worker before it applied the reload and arrived after the
    receiver had is closed on arrival (its connection settings are not the receiver's)."""
    s = one_server_moving_sluice(start_sluice, {APP_DB: pg.db_entry()})
    targets = [other_db, APP_DB] * 4
    with console(s) as adm, OneServerMoving(s, adm) as run:
        settled = []  # (from, until, target): RELOAD answered, the next one not yet begun
        for target in targets:
            if settled:
                settled[-1][1] = time.monotonic()
            text = s.ini_path.read_text()
            s.ini_path.write_text(re.sub(r"dbname=\w+", f"dbname={target}", text, count=1))
            adm.execute("RELOAD")
            settled.append([time.monotonic(), float("inf"), target])
            time.sleep(0.15)
    # a transaction that began and ended while no RELOAD was on its way (one that began before
    # may have queued for the one server and been served by one made after the next RELOAD)
    wrong = [(t0, db, target) for t0, t1, db, _ in run.seen for since, until, target in settled
             if since <= t0 and t1 < until and db != target]
    assert not wrong, f"{len(wrong)} transactions reached the target of before a reload"
    pids = {pid for _, _, _, pid in run.seen}
    assert len(pids) > len(targets), f"a backend outlived a reload: {len(pids)} backends"
