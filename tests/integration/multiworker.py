"""Helpers of the test_workers_*.py files: a sluice with workers = 4, its admin console, groups
of clients opened together and where each client landed (a client's id carries its worker in the
top byte, architecture.md 5.1), so a test that would only exercise worker 0 fails instead of
passing for nothing; and clients picked to sit on pairwise distinct workers, for any number."""

import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import psycopg

from conftest import APP_DB, APP_USER, binary_is_sanitized, render_ini, sluice_bin, wait_until
from pgwire import RawConn, raw_login

WORKERS = 4
ADMIN = "admin"
QUERY_WAIT_S = 5  # main_keys' query_wait_timeout
PROMPT_S = 3.0  # well under it: a client that waited for the timeout fails anyway


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


def main_keys(nworkers, pool_size, mode="transaction", **extra):
    """[sluice] keys with pools small enough that idle servers move between the workers, and a
    query_wait_timeout that every query must beat by far (PROMPT_S)."""
    m = {"pool_mode": mode, "workers": nworkers, "default_pool_size": pool_size,
         "query_wait_timeout": QUERY_WAIT_S, "admin_users": ADMIN}
    m.update(extra)
    return m


def console(s, password=None):
    return psycopg.connect(s.dsn(dbname="sluice", user=ADMIN, password=password), autocommit=True,
                           prepare_threshold=None, connect_timeout=10 * SLOW)


def show(con, what):
    cur = con.execute(f"SHOW {what}")
    names = [d.name for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def worker_of(client_row):
    return client_row["id"] >> 56  # next_id starts at index << 56 (architecture.md 5.1)


# A client's id as a log line or SHOW's ptr column writes it (src/base/conn_id.h): C-<n> on
# worker 0, C-<worker>:<n> on another.
LOG_CLIENT_ID = r"C-((?:\d+:)?\d+)"


def worker_of_id_text(text):
    return int(text.split(":")[0]) if ":" in text else 0


def workers_by_app(s):
    """{application_name: worker index} of every client logged in to appdb."""
    with console(s) as adm:
        return {r["application_name"]: worker_of(r) for r in show(adm, "CLIENTS")
                if r["database"] == APP_DB}


def assert_on_every_worker(where, names):
    seen = {where[n] for n in names}
    assert seen == set(range(WORKERS)), f"clients landed on workers {sorted(seen)} only: {where}"


def named(prefix, n):
    """The application names connect_many and raw_many give their clients."""
    return [f"{prefix}{i}" for i in range(n)]


def assert_spread(s, **groups):
    """Each group, {prefix: n} of clients opened by connect_many or raw_many, has a client on
    every worker."""
    where = workers_by_app(s)
    for prefix, n in groups.items():
        assert_on_every_worker(where, named(prefix, n))


def worker_at_port(adm, port):
    """The worker serving the client whose own port is `port` (SHOW CLIENTS' port)."""
    for row in show(adm, "CLIENTS"):
        if row["port"] == port:
            return worker_of(row)
    raise AssertionError(f"client on port {port} not in SHOW CLIENTS")


def local_port(conn):
    """A psycopg client's own port."""
    sock = socket.socket(fileno=conn.pgconn.socket)
    try:
        return sock.getsockname()[1]
    finally:
        sock.detach()


def on_distinct_workers(adm, n, open_client, port_of, tries):
    """Opens clients (open_client(k) for the k-th one wanted) until there are n on pairwise
    distinct workers (the acceptor picks the least loaded worker, so consecutive connections
    spread), at most `tries`. Returns (chosen clients in order, every one opened)."""
    opened, chosen, used = [], [], set()
    for _ in range(tries):
        if len(chosen) == n:
            break
        c = open_client(len(chosen))
        opened.append(c)
        w = worker_at_port(adm, port_of(c))
        if w not in used:
            used.add(w)
            chosen.append(c)
    assert len(chosen) == n, f"could not spread {n} clients over workers"
    return chosen, opened


def clients_on_distinct_workers(s, adm, logins, nworkers):
    """psycopg clients, one per login (a dict of s.connect() arguments) on pairwise distinct
    workers. Returns (chosen clients in login order, every one opened)."""
    return on_distinct_workers(adm, len(logins), lambda k: s.connect(**logins[k]), local_port,
                               4 * nworkers * len(logins))


def raw_on_distinct_workers(s, adm, n):
    """n logged-in RawConns on pairwise distinct workers. Returns (chosen, every one opened)."""
    def open_raw(_):
        rc = RawConn(s.port)
        rc.startup()
        return rc
    return on_distinct_workers(adm, n, open_raw, lambda rc: rc.sock.getsockname()[1], 8 * n)


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
    return [s.connect(application_name=name, **kw) for name in named(prefix, n)]


def raw_many(s, prefix, n, timeout=None, **login):
    return [raw_login(s.port, application_name=name, timeout=timeout or 10 * SLOW, **login)
            for name in named(prefix, n)]


def close_all(conns):
    for c in conns:
        try:
            c.close()
        except Exception:  # noqa: BLE001 - a closed or broken connection is fine here
            pass


def app_clients(adm):
    """SHOW CLIENTS' rows of the application's database (not the console's)."""
    return [r for r in show(adm, "CLIENTS") if r["database"] == APP_DB]


@contextmanager
def two_groups_on_every_worker(s, first, second):
    """WORKERS raw clients named first0.. and WORKERS named second0.., each group one client
    per worker, each done with a query; yields (first's, second's, a console, their ids by
    application_name) and closes them all."""
    a = raw_many(s, first, WORKERS)
    b = raw_many(s, second, WORKERS)
    try:
        for c in a + b:
            c.query("SELECT 1")
        with console(s) as adm:
            ids = {r["application_name"]: r["id"] for r in app_clients(adm)}
            for prefix in (first, second):
                assert {worker_of({"id": ids[f"{prefix}{i}"]}) for i in range(WORKERS)} == \
                    set(range(WORKERS)), f"{prefix}: not one client per worker"
            yield a, b, adm, ids
    finally:
        close_all(a + b)


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


def holders_and_idlers(s, idle=WORKERS):
    """WORKERS clients named hold0.. each holding a server in a transaction, and `idle` clients
    named idle0.. each with a query done (idle servers), both spread over every worker."""
    holders = connect_many(s, "hold", WORKERS)
    idlers = connect_many(s, "idle", idle)
    try:
        assert_spread(s, hold=WORKERS, idle=idle)
        for c in idlers:
            c.execute("SELECT 1")
        hold_transactions(holders)
    except BaseException:
        close_all(holders + idlers)
        raise
    return holders, idlers


def create_id_table(pg, table):
    """table (id int) in appdb, made straight in Postgres."""
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as c:
        c.execute(f"CREATE TABLE {table} (id int)")
