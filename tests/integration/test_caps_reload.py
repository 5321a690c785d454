"""Caps that hold on every path, counted in Postgres itself: a cap lowered by a reload (SIGHUP or
the console's SET) holds within seconds while clients keep sluice busy, and pools that share a cap
take turns: the client that has waited longest across them gets the next server."""

import re
import signal
import threading
import time

import psycopg
import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, BackendSampler, wait_until

ADMIN = "admin"
SETTLE_S = 3  # how long a lowered cap may take to hold (servers finish their transactions)


class Busy:
    """n client threads looping `sql` until stop(); counts transactions and collects errors."""

    def __init__(self, s, n, sql="SELECT pg_sleep(0.05)", user=APP_USER, password=APP_PASSWORD,
                 app=lambda i: f"busy-{i}"):
        self.done = 0
        self.results = []
        self.errors = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(s, sql, user, password, app(i)),
                                          daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    def _run(self, s, sql, user, password, app):
        try:
            with psycopg.connect(s.dsn(user=user, password=password, application_name=app),
                                 autocommit=True, prepare_threshold=None) as c:
                while not self._stop.is_set():
                    row = c.execute(sql).fetchone()
                    with self._lock:
                        self.done += 1
                        self.results.append((time.monotonic(), row[0]))
        except Exception as e:  # noqa: BLE001 - asserted by the test
            self.errors.append(e)

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return self


def console(s):
    return psycopg.connect(s.dsn(dbname="sluice", user=ADMIN, password=None), autocommit=True,
                           prepare_threshold=None)


def reload_with(s, key, value):
    """Edit `key = value` in the file and SIGHUP; returns once sluice says it reloaded."""
    text = s.ini_path.read_text()
    text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
    assert n == 1, f"{key} not in the config"
    s.ini_path.write_text(text)
    mark = s.mark()
    s.send_signal(signal.SIGHUP)
    s.wait_for_log(r"configuration reloaded", since=mark)


def most_backends_after_settling(pg, seconds=2):
    time.sleep(SETTLE_S)
    with BackendSampler(pg, APP_USER, max_seconds=seconds + 5) as sampler:
        time.sleep(seconds)
    assert sampler.samples >= 5
    return sampler.max


@pytest.mark.timeout(90)
@pytest.mark.parametrize("key", ["max_db_connections", "default_pool_size",
                                 "max_user_connections", "max_server_connections"])
def test_cap_lowered_by_reload_or_set_holds_within_seconds_while_clients_stay_busy(
        start_sluice, pg, key):
    main = {"pool_mode": "transaction", "admin_users": ADMIN, "default_pool_size": 20,
            "query_wait_timeout": 60}
    main[key] = 10
    s = start_sluice(main)
    busy = Busy(s, 14)
    try:
        wait_until(lambda: pg.count_backends(APP_USER) >= 10, 30, what="10 busy servers")
        reload_with(s, key, 5)
        logged_key = "pool_size" if key == "default_pool_size" else key
        s.wait_for_log(rf"appdb/app: at most 5 servers \({logged_key} = 5\)")
        seen = most_backends_after_settling(pg)
        assert seen <= 5, f"{seen} backends {SETTLE_S} s after a reload lowered {key} 10 -> 5"
        with console(s) as adm:
            adm.execute(f"SET {key} = 3")
        s.wait_for_log(rf"appdb/app: at most 3 servers \({logged_key} = 3\)")
        seen = most_backends_after_settling(pg)
        assert seen <= 3, f"{seen} backends {SETTLE_S} s after SET lowered {key} 5 -> 3"
        before = busy.done
        wait_until(lambda: busy.done >= before + 20, 30, what="clients served under the new cap")
    finally:
        busy.stop()
    assert not busy.errors, busy.errors[:3]


@pytest.mark.timeout(90)
def test_budget_max_servers_lowered_by_reload_holds_within_seconds(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 20,
                      "query_wait_timeout": 60})
    s.ini_path.write_text(s.ini_path.read_text() + "\n[budgets]\nseeds = app=seed* max_servers=8\n")
    mark = s.mark()
    s.send_signal(signal.SIGHUP)
    s.wait_for_log(r"configuration reloaded", since=mark)
    # each query reports how many seed queries run in Postgres as it starts
    probe = ("SELECT (SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
             " AND query LIKE '%%seedprobe%%'), pg_sleep(0.05) /* seedprobe */")
    busy = Busy(s, 12, sql=probe, app=lambda i: f"seed-{i}")
    try:
        wait_until(lambda: any(n >= 6 for _, n in busy.results), 30, what="6 seeds at once")
        s.ini_path.write_text(s.ini_path.read_text().replace("max_servers=8", "max_servers=3"))
        mark = s.mark()
        s.send_signal(signal.SIGHUP)
        s.wait_for_log(r"configuration reloaded", since=mark)
        since = time.monotonic() + SETTLE_S
        wait_until(lambda: sum(t > since for t, _ in busy.results) >= 30, 60,
                   what="30 seed queries after the reload settled")
    finally:
        busy.stop()
    assert not busy.errors, busy.errors[:3]
    seen = max(n for t, n in busy.results if t > since)
    assert seen <= 3, f"{seen} seed queries ran at once after max_servers was lowered 8 -> 3"


@pytest.mark.timeout(120)
def test_pools_sharing_max_db_connections_each_get_their_fair_share(start_sluice, pg):
    """40 clients of one user and 10 of another share max_db_connections = 8: the second user's
    clients get at least half of their fair share (10 of 50 clients: a fifth of the
    transactions), and the cap holds."""
    users = {APP_USER: APP_PASSWORD, "app2": "app2pass"}
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 20,
                      "max_db_connections": 8, "query_wait_timeout": 60},
                     databases={APP_DB: {"host": "127.0.0.1", "port": pg.port, "dbname": APP_DB}},
                     auth_file=users)
    with BackendSampler(pg, list(users), max_seconds=60) as sampler:
        many = Busy(s, 40, user=APP_USER, password=APP_PASSWORD)
        few = Busy(s, 10, user="app2", password="app2pass")
        time.sleep(8)
        many.stop()
        few.stop()
    assert not many.errors and not few.errors, (many.errors + few.errors)[:3]
    total = many.done + few.done
    fair = total * 10 / 50
    assert few.done >= fair / 2, \
        f"the 10 clients of app2 ran {few.done} transactions, their fair share is {fair:.0f} " \
        f"(app ran {many.done})"
    assert sampler.max <= 8, f"{sampler.max} backends under max_db_connections = 8"


@pytest.mark.timeout(120)
def test_pools_sharing_a_budget_each_get_their_fair_share(start_sluice, pg):
    """20 clients of one user and 5 of another, all in one budget of max_servers = 2: the second
    user's clients get at least half of their fair share (a fifth of the transactions)."""
    users = {APP_USER: APP_PASSWORD, "app2": "app2pass"}
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 10,
                      "query_wait_timeout": 60},
                     databases={APP_DB: {"host": "127.0.0.1", "port": pg.port, "dbname": APP_DB}},
                     auth_file=users)
    s.ini_path.write_text(s.ini_path.read_text() + "\n[budgets]\nseeds = app=seed* max_servers=2\n")
    mark = s.mark()
    s.send_signal(signal.SIGHUP)
    s.wait_for_log(r"configuration reloaded", since=mark)
    many = Busy(s, 20, user=APP_USER, password=APP_PASSWORD, app=lambda i: f"seed-a{i}")
    few = Busy(s, 5, user="app2", password="app2pass", app=lambda i: f"seed-b{i}")
    time.sleep(6)
    many.stop()
    few.stop()
    assert not many.errors and not few.errors, (many.errors + few.errors)[:3]
    fair = (many.done + few.done) * 5 / 25
    assert few.done >= fair / 2, \
        f"the 5 clients of app2 ran {few.done} transactions, their fair share is {fair:.0f} " \
        f"(app ran {many.done})"
