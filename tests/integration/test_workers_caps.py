"""Caps exact across workers (issue 21, docs/architecture.md 5.3 and 5.8): sluice with
`workers = 4` (on 2 cores: more threads than cores, so more interleavings) under storms of
clients, while BackendSampler reads pg_stat_activity every 50 ms. No sample may pass the cap
(pool_size, max_db/user/server_connections, an NN% cap, a budget's max_servers and min_servers);
the login caps (max_client_conn, max_db_client_connections, a budget's max_clients) admit
exactly their number; refusals are 53300 naming the cap, as the single-worker tests expect
(test_limits.py, test_budgets.py, test_storm.py); RELOAD lowering a cap and PAUSE/RESUME apply on
every worker mid-storm; and afterwards SHOW POOLS, SHOW LISTS and /metrics count nothing in use.

This is the idle-server handover's acceptance test (architecture.md 5.4): a pool key's servers
are spread over the workers' pools, and a worker whose clients wait under a cap gets another
worker's idle server (same key: moved; another key under a shared cap: closed to free the slot).
So every storm client must complete, and no login or statement may wait FAIR_S (10 s) with
query_wait_timeout at 30 s; test_queue_over_four_workers_... checks that with a queue eight
times the pool. One storm keeps server_lifetime = 1 ("pool_size, server_lifetime"): there slots
are freed by closes too, and go to the longest waiter across workers by the ledger's wait list.
The RELOAD test keeps it too, for a defect its comment names (busy clients of one key on some
workers starve another key's waiter on another worker under a shared cap).
Before the handover (main 90c7754), without server_lifetime 6 of the 13 tests here failed:
clients waited out query_wait_timeout on one worker ("0 of 3 servers busy ... pool_size = 12")
while the others held the pool's idle servers.
"""

import re
import signal
import threading
import time

import psycopg
import pytest

from conftest import APP_DB, BackendSampler, pick_port, wait_until
from multiworker import LOG_CLIENT_ID, worker_of_id_text
from pgwire import RawConn, ServerError
from test_http import get, parse_metrics

WORKERS = 4
ADMIN = "admin"
PASSWORDS = {"app": "apppass", "app2": "app2pass", ADMIN: "adminpass"}
USERS = ("app", "app2")
ALIAS = "appdb_b"  # a second [databases] entry for the same Postgres database: a second pool key
CALL_TIMEOUT = 30
FAIR_S = 10  # well under query_wait_timeout (CALL_TIMEOUT), generous for a loaded 2-core CI


def workers_sluice(start_sluice, pg, **main):
    """workers = 4, transaction mode, md5 logins for app, app2 and the console's admin; two
    [databases] entries (appdb, appdb_b) for Postgres's appdb, neither naming a user, so each
    client's pool logs in upstream as that client's user: four pool keys on one database.
    /metrics on a port below the ephemeral range."""
    http_port = pick_port()
    conf = {"workers": WORKERS, "pool_mode": "transaction", "admin_users": ADMIN,
            "log_connections": 0, "log_disconnections": 0, "query_wait_timeout": CALL_TIMEOUT,
            "max_client_conn": 500, "http_listen_addr": "127.0.0.1",
            "http_listen_port": http_port}
    conf.update(main)
    entry = {k: v for k, v in pg.db_entry().items() if k not in ("user", "password")}
    s = start_sluice(conf, databases={APP_DB: entry, ALIAS: dict(entry)}, auth_file=PASSWORDS)
    s.http_port = http_port
    s.wait_for_log(rf"HTTP .* listening on 127\.0\.0\.1:{http_port}")
    return s


def console(s):
    return psycopg.connect(s.dsn(dbname="sluice", user=ADMIN, password=PASSWORDS[ADMIN]),
                           autocommit=True, prepare_threshold=None)


def show(s, what):
    with console(s) as adm:
        cur = adm.execute(f"SHOW {what}")
        names = [d.name for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def connect(s, user="app", dbname=APP_DB, app="storm"):
    return psycopg.connect(s.dsn(dbname=dbname, user=user, password=PASSWORDS[user],
                                 application_name=app, connect_timeout=CALL_TIMEOUT),
                           autocommit=True, prepare_threshold=None)


def sampler(pg, users=USERS):
    """Sluice's backends of `users` in Postgres's appdb (both aliases land there)."""
    return BackendSampler(pg, list(users), max_seconds=240, datname=APP_DB)


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.details = []
        self.longest = 0.0  # the longest single call (login or statement) of any client, seconds
        self.longest_what = None

    def timed(self, what, call, *args):
        """call(*args), its duration counted in `longest`."""
        t0 = time.monotonic()
        try:
            return call(*args)
        finally:
            took = time.monotonic() - t0
            with self.lock:
                if took > self.longest:
                    self.longest, self.longest_what = took, what

    def add(self, kind, detail=None):
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if detail is not None and len(self.details) < 500:
                self.details.append((kind, detail))

    def get(self, kind):
        return self.counts.get(kind, 0)

    def total(self):
        return sum(self.counts.values())


def run_storm(s, pairs, threads=24, per_thread=10, sql="SELECT pg_sleep(0.02)",
              app=lambda t, k: f"storm-{t}-{k}", seconds=60, between=None):
    """`threads` threads each open `per_thread` short-lived clients in turn (user and database
    from `pairs`, round-robin), run two short transactions and disconnect. 53300 is counted as a
    refusal; anything else is unexpected. `between(t, k)` runs before each client (a pause)."""
    tally = Tally()

    def worker(t):
        for k in range(per_thread):
            if between:
                between(t, k)
            user, db = pairs[(t + k) % len(pairs)]
            name = app(t, k)
            try:
                with tally.timed(f"{name} login", connect, s, user, db, name) as c:
                    tally.timed(f"{name} {sql}", c.execute, sql)
                    with c.transaction():
                        tally.timed(f"{name} SELECT 1 (waits for a server)", c.execute, "SELECT 1")
                        c.execute(sql)
                tally.add("ok")
            except psycopg.Error as e:
                state = getattr(e, "sqlstate", None)
                if state == "53300" or (state is None and "too many client connections"
                                        in str(e)):
                    tally.add("53300", f"{name}: {e}")
                else:
                    tally.add("unexpected", f"{name}: {type(e).__name__} {state}: {e}")

    ts = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + seconds
    for t in ts:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in ts), f"storm clients hang: {tally.counts}"
    return tally


def metric_values(s):
    status, _headers, body = get(s.http_port, "/metrics")
    assert status == 200
    samples, _types = parse_metrics(body.decode())
    return samples


def metric(samples, name, **labels):
    """The sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def assert_all_idle(s, pg, cap=None, users=USERS):
    """Once the storm's clients are gone: no client left (in use, waiting or idle) and no server
    in use in any pool (SHOW POOLS sums every worker's published counts, a tick late), SHOW
    LISTS counts only the console, /metrics no client but the console and no server in use,
    and Postgres holds no more backends than SHOW POOLS' servers (nor than the cap)."""
    last = {}

    def pools():
        return [r for r in show(s, "POOLS") if r["database"] != "sluice"]

    def quiet():
        rows = pools()
        last["pools"] = [r for r in rows if r["cl_active"] or r["cl_waiting"] or r["cl_idle"]
                         or r["sv_active"] or r["sv_login"]]
        lists = {r["list"]: r["items"] for r in show(s, "LISTS")}
        last["lists"] = lists
        samples = metric_values(s)
        assert any(name == "sluice_clients" for name, _labels in samples), "no sluice_clients"
        last["metrics"] = {
            "connections": metric(samples, "sluice_client_connections"),  # the console's
            **{f"clients {st}": metric(samples, "sluice_clients", state=st)
               for st in ("active", "waiting", "idle")},
            **{f"servers {st}": metric(samples, "sluice_servers", state=st)
               for st in ("active", "login")}}
        m = last["metrics"]
        return (not last["pools"] and lists["used_clients"] <= 1 and lists["login_clients"] == 0
                and m["connections"] <= 1 and all(v == 0 for k, v in m.items()
                                                   if k != "connections"))

    try:
        wait_until(quiet, 20, interval=0.2, what="every count to come back to idle")
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen: {last}") from None
    backends = backend_count(pg, users)
    if cap is not None:
        assert backends <= cap, f"{backends} backends after the storm, cap {cap}"

    def servers_cover_backends():
        # Read again each time: a worker whose servers opened and went idle within one tick
        # publishes them a tick later (its frame showed nothing in use either way).
        last["servers"] = sum(r["sv_idle"] + r["sv_used"] + r["sv_tested"] for r in pools())
        last["backends"] = backend_count(pg, users)
        return last["backends"] <= last["servers"]

    try:
        wait_until(servers_cover_backends, 10, interval=0.2,
                   what="Postgres's backends to be sluice's servers")
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen: {last}") from None


def backend_count(pg, users=USERS):
    (n,) = pg.query("SELECT count(*) FROM pg_stat_activity WHERE usename = ANY(%s)"
                    " AND datname = %s AND backend_type = 'client backend'",
                    [list(users), APP_DB])[0]
    return n


def pools_made(s, db, user):
    """On how many workers the pool db/user was made (each worker makes its own for its first
    client): the workers of the clients whose login the log shows (log_connections = 1; a
    client's id carries its worker, architecture.md 5.1). "pool ... created" is logged once per
    process."""
    login = re.compile(rf"{LOG_CLIENT_ID} {re.escape(db)}/{re.escape(user)}@\S* login ok")
    return len({worker_of_id_text(m.group(1)) for line in s.log if (m := login.search(line))})


def usable_connections(pg):
    with pg.superuser() as su:
        max_conn = int(su.execute("SHOW max_connections").fetchone()[0])
        reserved = int(su.execute("SHOW superuser_reserved_connections").fetchone()[0])
    return max_conn - reserved


# ---- server caps under storms -------------------------------------------------------------------

BOTH_USERS_ONE_DB = [("app", APP_DB), ("app2", APP_DB)]
ONE_USER_BOTH_DBS = [("app", APP_DB), ("app", ALIAS)]
EVERY_POOL = [("app", APP_DB), ("app2", APP_DB), ("app", ALIAS), ("app2", ALIAS)]

# (config, the pools the storm uses, the users the sampler counts, the cap)
CAPS = {
    "pool_size": ({"default_pool_size": 5}, [("app", APP_DB)], ["app"], 5),
    "pool_size, server_lifetime": ({"default_pool_size": 5, "server_lifetime": 1},
                                   [("app", APP_DB)], ["app"], 5),
    "max_db_connections": ({"default_pool_size": 10, "max_db_connections": 6},
                           BOTH_USERS_ONE_DB, USERS, 6),
    "max_user_connections": ({"default_pool_size": 10, "max_user_connections": 6},
                             ONE_USER_BOTH_DBS, ["app"], 6),
    "max_server_connections": ({"default_pool_size": 10, "max_server_connections": 7},
                               EVERY_POOL, USERS, 7),
}


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("key", list(CAPS) + ["max_db_connections_percent"])
def test_storm_over_four_workers_never_passes_the_cap(start_sluice, pg, key):
    if key == "max_db_connections_percent":
        usable = usable_connections(pg)
        percent = max(1, 600 // usable)  # a share that comes to about 6 servers
        cap = usable * percent // 100
        main, pairs, users = ({"default_pool_size": 20, "max_db_connections": f"{percent}%"},
                              BOTH_USERS_ONE_DB, USERS)
    else:
        main, pairs, users, cap = CAPS[key]
    s = workers_sluice(start_sluice, pg, log_connections=1, **main)  # for pools_made
    with sampler(pg, users) as sam:
        tally = run_storm(s, pairs, threads=24, per_thread=8)
        time.sleep(0.2)
    print(f"{key}: {tally.counts}; backends max {sam.max} over {sam.samples} samples (cap {cap});"
          f" longest call {tally.longest:.2f} s")
    assert sam.samples >= 20, f"only {sam.samples} samples were taken"
    assert sam.max <= cap, (f"{sam.max} backends at once with {key} = {cap} over {WORKERS} "
                            f"workers; over: {[n for n in sam.history if n > cap][:20]}")
    assert sam.max >= min(cap, 3), f"the storm never needed more than {sam.max} servers"
    user, db = pairs[0]
    spread = pools_made(s, db, user)
    print(f"pool {db}/{user} made on {spread} workers")
    assert spread >= 2, f"pool {db}/{user} on {spread} worker(s): the storm was not spread"
    assert tally.get("unexpected") == 0, tally.details[:10]
    assert tally.total() == 24 * 8, tally.counts
    # No client waits out query_wait_timeout: another worker's idle server moves to it (5.4).
    assert tally.get("ok") == tally.total(), tally.details[:5]
    assert tally.longest < FAIR_S, f"{tally.longest:.1f} s: {tally.longest_what}"
    assert_all_idle(s, pg, cap, users)


# ---- fairness: a queue longer than the pool, spread over four workers ---------------------------

@pytest.mark.slow
@pytest.mark.timeout(150)
def test_queue_over_four_workers_serves_every_client_well_before_query_wait_timeout(
        start_sluice, pg):
    """pool_size 3 for 24 clients at once (6 per worker, 8 times the pool): each worker's
    waiters hold the ledger's wait list while the others' servers go idle, so only the handover
    (5.4) and the longest-waiter-first order serve them. Every client completes, and no login or
    statement waits more than FAIR_S, with query_wait_timeout at CALL_TIMEOUT."""
    pool = 3
    s = workers_sluice(start_sluice, pg, default_pool_size=pool, log_connections=1)
    with sampler(pg, ["app"]) as sam:
        tally = run_storm(s, [("app", APP_DB)], threads=24, per_thread=6,
                          sql="SELECT pg_sleep(0.05)", seconds=120)
    print(f"fairness: {tally.counts}; longest call {tally.longest:.2f} s ({tally.longest_what}); "
          f"backends max {sam.max}")
    assert tally.get("ok") == 24 * 6, (tally.counts, tally.details[:5])
    assert tally.longest < FAIR_S, (f"a client waited {tally.longest:.1f} s "
                                    f"({tally.longest_what}); query_wait_timeout {CALL_TIMEOUT}")
    assert sam.max <= pool, f"{sam.max} backends with pool_size = {pool}"
    assert pools_made(s, APP_DB, "app") >= 2, "the queue was not spread over the workers"
    assert_all_idle(s, pg, pool, ["app"])


# ---- budgets -------------------------------------------------------------------------------------


def with_budgets(s, budgets):
    s.ini_path.write_text(s.ini_path.read_text() + "\n[budgets]\n"
                          + "".join(f"{k} = {v}\n" for k, v in budgets.items()))
    mark = s.mark()
    s.send_signal(signal.SIGHUP)
    s.wait_for_log(r"configuration reloaded", since=mark)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_budget_max_servers_holds_across_workers(start_sluice, pg):
    """Seed clients on every worker: each query counts, in Postgres, the seed queries running
    with it; never more than the budget's max_servers (2), while other clients get through."""
    s = workers_sluice(start_sluice, pg, default_pool_size=12)
    with_budgets(s, {"seeds": "app=seed* max_servers=2"})
    probe = ("SELECT (SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
             " AND query LIKE '%%seedprobe%%'), pg_sleep(0.03) /* seedprobe */")
    most = []
    lock = threading.Lock()
    tally = Tally()

    def seed(t):
        try:
            with connect(s, app=f"seed-{t}") as c:
                for _ in range(8):
                    n = c.execute(probe).fetchone()[0]
                    with lock:
                        most.append(n)
            tally.add("ok")
        except psycopg.Error as e:
            tally.add("unexpected", f"{e.sqlstate}: {e}")

    ts = [threading.Thread(target=seed, args=(t,), daemon=True) for t in range(12)]
    for t in ts:
        t.start()
    others = run_storm(s, [("app", APP_DB)], threads=6, per_thread=5,
                       app=lambda t, k: f"web-{t}-{k}")
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts), "seed clients hang"
    assert tally.get("unexpected") == 0 and others.get("unexpected") == 0, \
        tally.details[:5] + others.details[:5]
    assert tally.get("ok") == 12 and others.get("ok") == 30, (tally.counts, others.counts)
    assert len(most) == 12 * 8
    assert max(most) <= 2, f"up to {max(most)} seed queries ran at once under max_servers=2"
    assert_all_idle(s, pg)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_storm_over_budgets_keeps_min_servers_and_the_db_cap_across_workers(start_sluice, pg):
    """As test_budgets' storm, over four workers: max_db_connections 6 holds, api's min_servers
    (3) means api's clients always get through, seeds (max_servers 2) and web share the rest."""
    cap = 6
    s = workers_sluice(start_sluice, pg, default_pool_size=10, max_db_connections=cap)
    with_budgets(s, {"api": "app=api* min_servers=3", "seeds": "app=seed* max_servers=2"})
    kinds = ("api", "seed", "web")
    with sampler(pg, ["app"]) as sam:
        tally = run_storm(s, [("app", APP_DB)], threads=24, per_thread=6,
                          app=lambda t, k: f"{kinds[t % 3]}-{t}-{k}")
    print(f"budgets: {tally.counts}; backends max {sam.max} (cap {cap})")
    assert tally.get("unexpected") == 0, tally.details[:10]
    assert sam.max <= cap, f"{sam.max} backends with max_db_connections = {cap}"
    refused_api = [d for k, d in tally.details if k == "53300" and d.startswith("api-")]
    assert not refused_api, f"api has a guaranteed share: {refused_api[:3]}"
    assert tally.total() == 24 * 6
    assert_all_idle(s, pg, cap, ["app"])


# ---- login caps: exactly N admitted across workers ------------------------------------------------

LOGIN_CAPS = {
    # key: (config, budgets, what the refusal names)
    "max_client_conn": ({"max_client_conn": 12}, None, "too many client connections"),
    "max_db_client_connections": ({"max_db_client_connections": 12}, None,
                                  "max_db_client_connections"),
    "max_user_client_connections": ({"max_user_client_connections": 12}, None,
                                    "max_user_client_connections"),
    "budget max_clients": ({}, {"studio": "app=studio* max_clients=12"}, "max_clients"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("key", list(LOGIN_CAPS))
def test_login_cap_admits_exactly_its_number_across_workers(start_sluice, pg, key):
    """40 clients log in at once (the acceptor spreads them over four workers) and stay: exactly
    12 are in, 28 get 53300 naming the cap; once they leave, 12 fit again."""
    cap, total = 12, 40
    main, budgets, named = LOGIN_CAPS[key]
    s = workers_sluice(start_sluice, pg, **main)
    if budgets:
        with_budgets(s, budgets)
    tally = Tally()
    held = []
    lock = threading.Lock()
    barrier = threading.Barrier(total)

    def login(i):
        try:
            barrier.wait(20)
            c = RawConn(s.port, timeout=CALL_TIMEOUT)
            try:
                c.startup(user="app", password=PASSWORDS["app"], application_name=f"studio-{i}")
            except BaseException:
                c.close()
                raise
            with lock:
                held.append(c)
            tally.add("ok")
        except ServerError as e:
            if e.sqlstate == "53300" and named in str(e):
                tally.add("53300")
            else:
                tally.add("unexpected", str(e))
        except Exception as e:  # noqa: BLE001 - counted
            tally.add("unexpected", repr(e))

    try:
        ts = [threading.Thread(target=login, args=(i,), daemon=True) for i in range(total)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert not any(t.is_alive() for t in ts), "logins hang"
        assert tally.get("unexpected") == 0, tally.details[:10]
        assert tally.get("ok") == cap and tally.get("53300") == total - cap, tally.counts
        for c in held:  # every admitted client works
            rows, _ = c.query("SELECT 1")
            assert rows == [["1"]]
    finally:
        for c in held:
            c.close()
    held.clear()

    def twelve_fit():
        got = []
        try:
            for i in range(cap):
                got.append(RawConn(s.port, timeout=CALL_TIMEOUT))
                got[-1].startup(user="app", password=PASSWORDS["app"],
                                application_name=f"studio-again-{i}")
            return True
        except ServerError as e:
            assert e.sqlstate == "53300", e  # the closed ones are not all seen yet
            return False
        finally:
            for c in got:
                c.close()
    wait_until(twelve_fit, 15, interval=0.3, what=f"{cap} logins to fit again")
    assert_all_idle(s, pg)


# ---- an operator mid-storm: RELOAD lowering a cap, PAUSE/RESUME ----------------------------------


class Busy:
    """n clients looping `sql` until stop(), spread over the workers by the acceptor."""

    def __init__(self, s, n, pairs=BOTH_USERS_ONE_DB, sql="SELECT pg_sleep(0.03)"):
        self.done = 0
        self.errors = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(s, pairs[i % len(pairs)], sql, i),
                                          daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    def _run(self, s, pair, sql, i):
        user, db = pair
        try:
            with connect(s, user=user, dbname=db, app=f"busy-{i}") as c:
                while not self._stop.is_set():
                    c.execute(sql)
                    with self._lock:
                        self.done += 1
        except Exception as e:  # noqa: BLE001 - asserted by the test
            self.errors.append(e)

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(CALL_TIMEOUT + 10)
        assert not any(t.is_alive() for t in self._threads), "busy clients hang"
        return self


SETTLE_S = 3  # servers above a lowered cap close at their next release


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_reload_lowering_max_db_connections_mid_storm_holds_on_every_worker(start_sluice, pg):
    # DEFECT (2026-12-05, main 25d08d7): without server_lifetime, about 1 run in 4 a busy client
    # of appdb/app2 waits out query_wait_timeout (30 s) under max_db_connections = 3 while the
    # other workers' busy clients of appdb/app keep all three servers: pool_server_ready serves
    # a local waiter first and pool_longer_waiter_elsewhere looks only at its own worker's pools, so
    # the longest waiter across workers (ledger_claim_idle) is asked only when no local client
    # wants the server. Until that is fixed the servers rotate here (server_lifetime = 1).
    s = workers_sluice(start_sluice, pg, default_pool_size=10, max_db_connections=8,
                       server_lifetime=1)
    busy = Busy(s, 16)
    try:
        with sampler(pg) as before:
            wait_until(lambda: backend_count(pg) >= 6, 30, what="the storm to use 6 servers")
            storm = run_storm(s, BOTH_USERS_ONE_DB, threads=8, per_thread=3)
        assert before.max <= 8, f"{before.max} backends with max_db_connections = 8"
        text = s.ini_path.read_text()
        text, n = re.subn(r"^max_db_connections = .*$", "max_db_connections = 3", text, flags=re.M)
        assert n == 1
        s.ini_path.write_text(text)
        with console(s) as adm:
            adm.execute("RELOAD")  # answers once every worker applied it
        s.wait_for_log(r"appdb/app: at most 3 servers \(max_db_connections = 3\)")
        time.sleep(SETTLE_S)
        done = busy.done
        with sampler(pg) as after:
            storm2 = run_storm(s, BOTH_USERS_ONE_DB, threads=8, per_thread=3)
            time.sleep(1)
        assert after.samples >= 10
        assert after.max <= 3, (f"{after.max} backends {SETTLE_S} s after RELOAD lowered "
                                f"max_db_connections 8 -> 3: {after.history[:40]}")
        wait_until(lambda: busy.done >= done + 20, 30, what="busy clients served under the cap")
    finally:
        busy.stop()
    assert not busy.errors, busy.errors[:3]
    for t in (storm, storm2):
        assert t.get("unexpected") == 0 and t.get("ok") == 24, t.counts
    assert_all_idle(s, pg, 3)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_pause_and_resume_mid_storm_stop_and_restart_every_worker(start_sluice, pg):
    """PAUSE answers once no worker has a server of appdb in use; until RESUME no query of the
    storm runs in Postgres and none completes; after RESUME every client finishes, no error."""
    s = workers_sluice(start_sluice, pg, default_pool_size=4, max_db_connections=6)
    busy = Busy(s, 12)
    paused = threading.Event()
    resumed = threading.Event()

    def hold_while_paused(t, k):  # storm clients start during the pause too
        if k == 2:
            paused.wait(30)

    try:
        with sampler(pg) as sam:
            wait_until(lambda: busy.done >= 30, 30, what="the busy clients to run")
            storm = []
            runner = threading.Thread(target=lambda: storm.append(
                run_storm(s, BOTH_USERS_ONE_DB, threads=8, per_thread=5,
                          between=hold_while_paused, seconds=90)), daemon=True)
            runner.start()
            with console(s) as adm:
                adm.execute(f"PAUSE {APP_DB}")
                paused.set()
                done = busy.done
                active = []
                t_end = time.monotonic() + 1.5
                while time.monotonic() < t_end:
                    (n,) = pg.query("SELECT count(*) FROM pg_stat_activity WHERE usename ="
                                    " ANY(%s) AND datname = %s AND state <> 'idle'"
                                    " AND backend_type = 'client backend'",
                                    [list(USERS), APP_DB])[0]
                    active.append(n)
                    time.sleep(0.05)
                assert max(active) == 0, f"queries ran in Postgres while paused: {active}"
                assert busy.done == done, f"{busy.done - done} queries completed while paused"
                adm.execute(f"RESUME {APP_DB}")
                resumed.set()
            wait_until(lambda: busy.done >= done + 30, 30, what="clients served after RESUME")
            runner.join(100)
            assert not runner.is_alive(), "the storm hangs after RESUME"
    finally:
        busy.stop()
    assert not busy.errors, busy.errors[:3]
    assert sam.max <= 6, f"{sam.max} backends with max_db_connections = 6"
    (tally,) = storm
    assert tally.get("unexpected") == 0 and tally.get("ok") == 40, tally.details[:5]
    assert_all_idle(s, pg, 6)
