"""Helpers of the test_workers_*.py files: a sluice with workers = 4, its admin console, and
where each client landed (a client's id carries its worker in the top byte, architecture.md
5.1), so a test that would only exercise worker 0 fails instead of passing for nothing."""

import threading
from pathlib import Path

import psycopg

from conftest import APP_DB, APP_USER, binary_is_sanitized, render_ini, sluice_bin, wait_until

WORKERS = 4
ADMIN = "admin"


def _sanitized():
    """ASan and TSan builds run several times slower: every wait below scales by SLOW."""
    path = sluice_bin()
    if binary_is_sanitized(path):
        return True
    try:
        return b"__tsan_init" in Path(path).read_bytes()
    except OSError:
        return False


SLOW = 4 if _sanitized() else 1


def start4(start_sluice, pg, databases=None, **main):
    m = {"workers": WORKERS, "admin_users": ADMIN, "pool_mode": "transaction"}
    m.update(main)
    return start_sluice(m, databases=databases)


def console(s):
    return psycopg.connect(s.dsn(dbname="sluice", user=ADMIN, password=None), autocommit=True,
                           prepare_threshold=None, connect_timeout=10 * SLOW)


def show(con, what):
    cur = con.execute(f"SHOW {what}")
    names = [d.name for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def worker_of(client_row):
    return client_row["id"] >> 56  # next_id starts at index << 56 (architecture.md 5.1)


def workers_by_app(s):
    """{application_name: worker index} of every client logged in to appdb."""
    with console(s) as adm:
        return {r["application_name"]: worker_of(r) for r in show(adm, "CLIENTS")
                if r["database"] == APP_DB}


def assert_on_every_worker(where, names):
    seen = {where[n] for n in names}
    assert seen == set(range(WORKERS)), f"clients landed on workers {sorted(seen)} only: {where}"


def pool_row(con, db=APP_DB, user=APP_USER):
    rows = [r for r in show(con, "POOLS") if r["database"] == db and r["user"] == user]
    assert len(rows) == 1, rows
    return rows[0]


def wait_pool(con, what, timeout=None, **want):
    """SHOW POOLS' row once its columns have the wanted values: the other workers' counts are
    their last published frame, up to a maintenance tick (100 ms) old (5.6)."""
    def check():
        row = pool_row(con)
        return row if all(row[k] == v for k, v in want.items()) else None
    return wait_until(check, timeout or 5 * SLOW, what=f"{what} ({want} in SHOW POOLS)")


def connect_many(s, prefix, n, **kw):
    return [s.connect(application_name=f"{prefix}{i}", **kw) for i in range(n)]


def close_all(conns):
    for c in conns:
        try:
            c.close()
        except Exception:  # noqa: BLE001 - a closed or broken connection is fine here
            pass


def active_pids(pg, marker):
    rows = pg.query("SELECT pid FROM pg_stat_activity WHERE usename = %s AND state = 'active'"
                    " AND query LIKE %s", [APP_USER, f"%{marker}%"])
    return sorted(r[0] for r in rows)


def app_backend_pids(pg):
    return sorted(r[0] for r in pg.backends())


class Load:
    """Clients each running short transactions in a loop from a thread of their own."""

    def __init__(self, conns, sql="SELECT pg_sleep(0.02)"):
        self.stop = threading.Event()
        self.errors = []
        self.count = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(c, sql), daemon=True)
                        for c in conns]
        for t in self.threads:
            t.start()

    def _run(self, c, sql):
        while not self.stop.is_set():
            try:
                c.execute(sql)
            except Exception as e:  # noqa: BLE001 - reported by finish()
                self.errors.append(e)
                return
            with self._lock:
                self.count += 1

    def finish(self, timeout):
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "a load client is stuck"
        assert not self.errors, self.errors


def rewrite(s, pg, **main):
    m = {"listen_addr": "127.0.0.1", "auth_type": "trust", "log_level": "info",
         "listen_port": 0, "workers": WORKERS, "admin_users": ADMIN}
    m.update(main)
    s.ini_path.write_text(render_ini(m, {APP_DB: pg.db_entry()}))


def hold_transactions(conns):
    for c in conns:
        c.execute("BEGIN")
        c.execute("SELECT 1")
