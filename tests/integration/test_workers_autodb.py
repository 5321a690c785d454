"""Stress of autodb_idle_timeout on 4 workers: databases reached through the "*" entry are freed
(their pools on every worker, their ledger key and scopes, their stats) and made again all the
time while clients log in to them around the timeout, wait under max_db_connections and
max_user_connections, idle servers move between workers, the console and /metrics read every
row, and RELOAD changes the timeout. Nothing a freed name's objects held may be read after it
went (the ASan and TSan runs of this file), the ledger's counts stay exact (debug builds audit
them every tick and abort on a mismatch), the caps hold in pg_stat_activity, every query is
served, and every name is freed in the end."""

import random
import signal
import threading
import time

import psycopg
import pytest

from conftest import APP_USER, wait_until
from multiworker import ADMIN, SLOW, WORKERS, console, show
from test_autodb import none_shown, start_with_star
from test_http import metrics

NAMES = [f"adb_{i}" for i in range(6)]
DB_CAP = 2  # max_db_connections
USER_CAP = 5  # max_user_connections: below NAMES x DB_CAP, so clients wait on it too


@pytest.fixture
def adbs(pg):
    """Real databases owned by app, reached through the "*" entry."""
    with pg.superuser() as c:
        have = {r[0] for r in c.execute("SELECT datname FROM pg_database").fetchall()}
        for name in NAMES:
            if name not in have:
                c.execute(f"CREATE DATABASE {name} OWNER {APP_USER}")
    return NAMES


class Sampler:
    """The most backends of app per database and in all, from pg_stat_activity."""

    def __init__(self, pg):
        self.pg, self.per_db, self.total, self.error = pg, {}, 0, None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        try:
            with self.pg.superuser() as c:
                while not self.stop.is_set():
                    rows = c.execute(
                        "SELECT datname, count(*) FROM pg_stat_activity WHERE usename = %s"
                        " AND backend_type = 'client backend' GROUP BY datname",
                        [APP_USER]).fetchall()
                    for db, n in rows:
                        self.per_db[db] = max(self.per_db.get(db, 0), n)
                    self.total = max(self.total, sum(n for _, n in rows))
                    self.stop.wait(0.05)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e


def start4_with_star(start_sluice, pg, timeout_s, mode="transaction"):
    return start_with_star(start_sluice, pg, WORKERS, autodb_idle_timeout=timeout_s,
                           server_idle_timeout=1, pool_mode=mode, default_pool_size=2,
                           max_db_connections=DB_CAP, max_user_connections=USER_CAP,
                           query_wait_timeout=30, admin_users=f"app,{ADMIN}", log_level="debug")


def churn(s, stop, counts, connect_timeout):
    """Clients of random names, each a short transaction, until stop; counts[0] served,
    counts[1] refused or failed (the test says which it allows)."""
    def client(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            try:
                with s.connect(dbname=rng.choice(NAMES), connect_timeout=connect_timeout) as c:
                    c.execute("SELECT pg_sleep(0.01)")
                    counts[0] += 1
            except psycopg.Error:
                counts[1] += 1
            stop.wait(rng.uniform(0.1, 0.4))
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(10)]
    for t in threads:
        t.start()
    return threads


def run_storm(s, pg, seconds, timeout_s, reload_values):
    errors, served = [], [0]
    stop = threading.Event()

    def guard(fn):
        def body():
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - every failure is the test's
                errors.append(f"{fn.__name__}: {e!r}")
                stop.set()
        return threading.Thread(target=body, daemon=True)

    def client(seed):
        rng = random.Random(seed)

        def clients():
            while not stop.is_set():
                name = rng.choice(NAMES[:3] if seed % 2 else NAMES)
                with s.connect(dbname=name, connect_timeout=30 * SLOW) as conn:
                    for _ in range(rng.randint(1, 3)):
                        db = conn.execute("SELECT current_database(), pg_sleep(%s)",
                                          [rng.uniform(0, 0.05)]).fetchone()[0]
                        assert db == name, (db, name)
                        served[0] += 1
                        time.sleep(rng.uniform(0, 0.2))
                # think times around the timeout: names are freed and made again meanwhile
                stop.wait(rng.uniform(0.6, 1.6) * timeout_s)
        return clients

    def views():
        rng = random.Random(7)
        while not stop.is_set():
            with console(s) as a:
                for what in ("POOLS", "SERVERS", "DATABASES", "CLIENTS", "STATS", "LISTS"):
                    show(a, what)
                # a PAUSE keeps its name (PgBouncer keeps a paused database) until RESUME
                name = rng.choice(NAMES)
                a.execute(f"PAUSE {name}")
                time.sleep(0.1)
                a.execute(f"RESUME {name}")
            metrics(s)

    def reloads():
        i = 0
        while not stop.wait(0.7):
            value = reload_values[i % len(reload_values)]
            i += 1
            text = s.ini_path.read_text()
            lines = [f"autodb_idle_timeout = {value}" if line.startswith("autodb_idle_timeout")
                     else line for line in text.splitlines()]
            s.ini_path.write_text("\n".join(lines) + "\n")
            with console(s) as a:
                a.execute("RELOAD")

    sampler = Sampler(pg)
    threads = [guard(client(i)) for i in range(12)] + [guard(views), guard(reloads)]
    sampler.thread.start()
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(60 * SLOW)
    sampler.stop.set()
    sampler.thread.join(10)
    assert not errors, errors[:5]
    assert sampler.error is None, sampler.error
    assert served[0] > 20, served
    assert max(sampler.per_db.values(), default=0) <= DB_CAP, sampler.per_db
    assert sampler.total <= USER_CAP, sampler.total
    assert s.proc.poll() is None, "sluice exited"
    return served[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("timeout_s, mode", [("1", "transaction"), ("0.3", "session")])
def test_names_freed_and_made_again_under_load_keep_caps_and_counts(start_sluice, pg, adbs,
                                                                    timeout_s, mode):
    s = start4_with_star(start_sluice, pg, timeout_s, mode)
    served = run_storm(s, pg, 10, float(timeout_s), [timeout_s, "2", timeout_s, "0.5"])
    freed = s.log_text().count("(autodb_idle_timeout)")
    moved = s.log_text().count("moving to worker")
    closed = s.log_text().count("closed to free a slot")
    print(f"served {served} freed {freed} moved {moved} closed for a slot {closed}")
    assert freed > 0, "no name was freed under the load: the test tested nothing"
    wait_until(lambda: none_shown(s, "adb_"), 30 * SLOW, interval=0.3,
               what="every name's pools, rows and series to be freed")
    assert "(autodb_idle_timeout)" in s.log_text()
    # a freed name is served again
    with s.connect(dbname=NAMES[0]) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == NAMES[0]


def toggle_star(s, on):
    lines = []
    for line in s.ini_path.read_text().splitlines():
        if line.startswith("* = ") and not on:
            line = "#" + line
        elif line.startswith("#* = ") and on:
            line = line[1:]
        lines.append(line)
    s.ini_path.write_text("\n".join(lines) + "\n")
    with console(s) as a:
        a.execute("RELOAD")


@pytest.mark.timeout(120)
def test_star_entry_removed_and_added_back_under_load(start_sluice, pg, adbs):
    """RELOAD takes the "*" entry away (its clients are closed, 3D000, and its pools stay,
    empty) and gives it back, again and again, while names are freed and made: once it is
    back for good every name is freed."""
    s = start4_with_star(start_sluice, pg, "0.3")
    stop, counts = threading.Event(), [0, 0]
    threads = churn(s, stop, counts, 30 * SLOW)
    for i in range(10):
        time.sleep(0.8)
        toggle_star(s, on=i % 2 == 1)
    stop.set()
    for t in threads:
        t.join(60 * SLOW)
    assert counts[0] > 0 and counts[1] > 0, counts  # served with it, refused without it
    wait_until(lambda: none_shown(s, "adb_"), 30 * SLOW, interval=0.3,
               what="every name to be freed once the entry is back")
    assert s.proc.poll() is None, "sluice exited"


@pytest.mark.timeout(60)
def test_names_are_freed_when_a_reload_removes_the_star_entry(start_sluice, pg, adbs):
    """A reload that removes the "*" entry closes its databases' clients (3D000) and leaves
    their pools empty: they are freed after autodb_idle_timeout as before. Before, a name
    whose entry went stayed for good (its pools on every worker, SHOW rows, /metrics series,
    ledger key)."""
    s = start4_with_star(start_sluice, pg, "0.3")
    held = s.connect(dbname=NAMES[1])
    for name in NAMES:
        with s.connect(dbname=name) as conn:
            conn.execute("SELECT 1")
    toggle_star(s, on=False)
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")
    held.close()
    wait_until(lambda: none_shown(s, "adb_"), 20 * SLOW, interval=0.3,
               what="the names of the removed entry to be freed")
    with pytest.raises(psycopg.OperationalError, match="not configured"):
        s.connect(dbname=NAMES[0])
    toggle_star(s, on=True)
    with s.connect(dbname=NAMES[0]) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == NAMES[0]


@pytest.mark.timeout(120)
def test_sigint_while_names_are_freed_and_made(start_sluice, pg, adbs):
    """Shutdown frees what is left (pools, keys, scopes) while sweeps and logins go on: a clean
    exit (ASan: no error, no leak)."""
    s = start4_with_star(start_sluice, pg, "0.2")
    stop, counts = threading.Event(), [0, 0]
    threads = churn(s, stop, counts, 5 * SLOW)
    time.sleep(4)
    s.send_signal(signal.SIGINT)
    rc = s.proc.wait(60 * SLOW)
    stop.set()
    for t in threads:
        t.join(30 * SLOW)
    assert counts[0] > 0, counts
    assert rc == 0, rc
