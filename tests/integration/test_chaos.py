"""Seeded chaos against the caps and for leaks (issue 21): 2 and 3 workers, transaction and
session mode, two databases and two users sharing max_db_connections, max_user_connections,
max_server_connections and a budget's max_servers, while random actors at once run short
transactions, vanish mid-transaction / mid-query / mid-COPY / while waiting, send Terminate in
the middle of a pipeline, cancel their queries, stop reading a large result; and an operator
RELOADs lower and higher caps, PAUSEs and RESUMEs, KILL_CLIENTs, RECONNECTs and has Postgres
terminate random sluice backends.

Checked in Postgres itself (pg_stat_activity every 50 ms): no sample above any cap. After a
lowering RELOAD, docs/budgets.md promises "idle servers above it close at once, servers in use
close when their client releases them", and a closed server counts until Postgres let it go (at
most 2 s): so a sample may reach any cap in force during the GRACE_S before it (every actor
releases its server well within that, see ACTION_HOLD_S), or since the oldest client connection
that may still hold a server began (Actors.held_since: a loaded machine stretches a session). A budget's max_servers counts the
servers its clients hold: the lease goes with the client (link.c), and a server whose client left
mid-query drains counted against every other cap only; so the budget's count is taken over the
queries of its clients that stay (Actors.LEAVING), plus one for each KILL_CLIENT in the last
GRACE_S. At the end, with every client gone:
no client or active server left in SHOW, every backend idle, SHOW SERVERS' remote_pids exactly
pg_stat_activity's backends, a new client of every pool and the budget served at once, and no
'ledger:' line (a debug build's ledger_audit aborts on a wrong count and logs first).

Each run is bounded (CHAOS_S, 22 s, of chaos, well under 60 s with the checks) and its actors'
choices are seeded (a failing seed names itself; CHAOS_SEEDS="5,6,7" runs other seeds, CHAOS_S
another length). The threads' interleaving is not reproducible, only the choices."""

import os
import random
import re
import signal
import socket
import threading
import time

import psycopg
import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, render_ini, wait_until
from multiworker import SLOW
from pgwire import (PeerClosed, RawConn, ServerError, bind_msg, cancel_request, copy_data_msg,
                    execute_msg, parse_msg, query_msg, sync_msg, terminate_msg)

ADMIN = "admin"
USERS = {APP_USER: APP_PASSWORD, "app2": "app2pass"}
PASSWORDS = dict(USERS, **{ADMIN: "adminpass"})
DB2 = "chaosdb2"  # a second Postgres database, so per-database counts show in pg_stat_activity
DBS = {"d1": APP_DB, "d2": DB2}  # sluice's name -> Postgres's
COPY_TABLE = "chaos_copy"
BUDGET_APP = "chaos-b"  # application_name prefix of the budget's clients
BUDGET_MARK = "chaosbudget"  # in every query a budget client that stays to the end sends
GONE_MARK = "chaosbgone"  # in those of a budget client that leaves in the middle (LEAVING)
CHAOS_S = float(os.environ.get("CHAOS_S", "22"))
# how long a lowered cap may take: the longest hold (ACTION_HOLD_S) + a close (2 s) + slack, and
# more under a sanitizer, where every hold takes longer
GRACE_S = 5.0 * (2 if SLOW > 1 else 1)
ACTION_HOLD_S = 1.6  # the longest any actor keeps a server (a transaction, a session, a stall)
QUERY_WAIT_S = 4
IO_TIMEOUT_S = 20 * SLOW  # a client that hears nothing for this long is stuck: a finding

# (pool_size, max_db_connections of d1 and d2, max_user_connections, max_server_connections,
#  the budget's max_servers)
LEVELS = {
    "high": dict(pool=4, d1=5, d2=4, user=5, server=7, budget=2),
    "mid": dict(pool=3, d1=4, d2=3, user=4, server=5, budget=2),
    "low": dict(pool=2, d1=3, d2=2, user=3, server=4, budget=1),
}


def config(nworkers, mode, level, pg):
    """(main, databases, budgets) as start_sluice takes them, at a cap level."""
    c = LEVELS[level]
    entry = f"host=127.0.0.1 port={pg.port}"
    main = {"workers": nworkers, "pool_mode": mode, "admin_users": ADMIN,
            "default_pool_size": c["pool"], "max_user_connections": c["user"],
            "max_server_connections": c["server"], "query_wait_timeout": QUERY_WAIT_S,
            "max_client_conn": 500, "log_connections": 0, "log_disconnections": 0}
    databases = {"d1": f"{entry} dbname={APP_DB} max_db_connections={c['d1']}",
                 "d2": f"{entry} dbname={DB2} max_db_connections={c['d2']}"}
    return main, databases, {"slow": f"app={BUDGET_APP}* max_servers={c['budget']}"}


def render(s, nworkers, mode, level, pg):
    """The file start_sluice wrote (conftest's factory), at another cap level."""
    main, databases, budgets = config(nworkers, mode, level, pg)
    m = {"listen_addr": "127.0.0.1", "auth_type": "md5", "log_level": "info",
         "auth_file": str(s.workdir / "userlist.txt")}
    m.update(main)
    m["listen_port"] = 0
    return (render_ini(m, databases) + "\n[budgets]\n"
            + "".join(f"{k} = {v}\n" for k, v in budgets.items()))


@pytest.fixture(scope="module")
def chaos_dbs(pg):
    with pg.superuser() as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB2]).fetchone():
            c.execute(f"CREATE DATABASE {DB2} OWNER {APP_USER}")
    for db in DBS.values():
        with pg.superuser(db) as c:
            c.execute(f"CREATE TABLE IF NOT EXISTS {COPY_TABLE} (id int)")
            c.execute(f"GRANT ALL ON {COPY_TABLE} TO PUBLIC")
    yield
    for db in DBS.values():
        with pg.superuser(db) as c:
            c.execute(f"DROP TABLE IF EXISTS {COPY_TABLE}")


class Caps:
    """Which cap levels were in force when: a level is in force from the moment its RELOAD was
    sent until the next one was confirmed; a sample may reach any level in force up to GRACE_S
    before it."""

    def __init__(self, level):
        self.changes = [[0.0, 0.0, level]]  # [sent, confirmed, level]
        self.kills = []  # when KILL_CLIENT was sent: its victim's lease goes, its query drains
        self.lock = threading.Lock()

    def killed(self):
        with self.lock:
            self.kills.append(time.monotonic())

    def begin(self, level):
        with self.lock:
            self.changes.append([time.monotonic(), None, level])

    def confirm(self):
        with self.lock:
            self.changes[-1][1] = time.monotonic()

    def allowed(self, t0, t1, since=None):
        """The most each cap may be for a sample taken between t0 and t1 (or since `since`, when
        earlier than GRACE_S before it: a client that logged in then may hold its server yet)."""
        start = min(t0 - GRACE_S, since if since is not None else t0)
        with self.lock:
            changes = [list(c) for c in self.changes]
        out = {}
        for i, (sent, _, level) in enumerate(changes):
            ended = changes[i + 1][1] if i + 1 < len(changes) else None
            if sent > t1:
                continue
            if ended is not None and ended < start:
                continue
            for k, v in LEVELS[level].items():
                out[k] = max(out.get(k, 0), v)
        with self.lock:
            out["budget"] += sum(start <= k <= t1 for k in self.kills)
        return out


class Sampler:
    """pg_stat_activity every 50 ms: backends per (database, user) and the budget's busy ones;
    every sample above a cap allowed then is a violation."""

    SQL = ("SELECT datname, usename, pid, state, query,"
           " to_char(backend_start, 'HH24:MI:SS.MS'), to_char(state_change, 'HH24:MI:SS.MS')"
           " FROM pg_stat_activity WHERE usename = ANY(%s) AND backend_type = 'client backend'")

    def __init__(self, pg, caps):
        self.pg, self.caps = pg, caps
        self.actors = None  # set once they run: when their connections began and ended
        self.violations, self.samples, self.most = [], 0, {}
        self.error = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            with self.pg.superuser() as c:
                while not self.stop.is_set():
                    t0 = time.monotonic()
                    rows = c.execute(self.SQL, [list(USERS)]).fetchall()
                    self.check(rows, t0, time.monotonic())
                    self.stop.wait(0.05)
        except Exception as e:  # noqa: BLE001 - reported by finish()
            self.error = e

    def check(self, rows, t0, t1):
        self.samples += 1
        counts = {"server": 0, "budget": 0}
        budget_busy = []
        for datname, usename, pid, state, query, _, _ in rows:
            db = next((k for k, v in DBS.items() if v == datname), datname)
            counts[("pool", db, usename)] = counts.get(("pool", db, usename), 0) + 1
            counts[db] = counts.get(db, 0) + 1
            counts[("user", usename)] = counts.get(("user", usename), 0) + 1
            counts["server"] += 1
            if state != "idle" and BUDGET_MARK in (query or ""):
                counts["budget"] += 1
                budget_busy.append((pid, state, query))
        since = self.actors.held_since(t0) if self.actors else None
        allowed = self.caps.allowed(t0, t1, since)
        for key, n in counts.items():
            cap = allowed[key[0] if isinstance(key, tuple) else key]
            self.most[key] = max(self.most.get(key, 0), n)
            if n > cap:
                self.violations.append(f"t={t0:.2f} ({time.strftime('%H:%M:%S')}) {key}: {n} "
                                       f"backends, cap {cap} (caps allowed {allowed})"
                                       + (f" {budget_busy}" if key == "budget" else f" {rows}"))

    def finish(self):
        self.stop.set()
        self.thread.join(10)
        assert self.error is None, f"sampler failed: {self.error}"


class Actors:
    """Threads each doing random things as clients until the deadline. Errors that a client
    may get (53300, 57000, 57014, 57P01, 08P01, a closed connection) are counted, not failed;
    a client left without an answer for IO_TIMEOUT_S is a finding."""

    def __init__(self, s, seed, n, mode):
        self.s, self.mode = s, mode
        self.stop = threading.Event()
        self.stuck, self.unexpected, self.done = [], [], {}
        self.connections = [None] * n  # each actor's latest connection: [began, ended or None]
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(random.Random(seed * 1000 + i),
                                                                 i), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    ACTIONS = (("short_txns", 6), ("vanish_mid_txn", 2), ("vanish_mid_query", 2),
               ("vanish_mid_copy", 1), ("vanish_waiting", 2), ("terminate_mid_pipeline", 1),
               ("cancel", 1), ("slow_reader", 1))
    # A budget's max_servers counts the servers its clients hold (docs/budgets.md): the lease
    # goes with the pairing (link.c), so the server of a client that left mid-query drains,
    # counted against every cap but no longer against the budget. These actions' queries are
    # not counted as the budget's.
    LEAVING = {"vanish_mid_txn", "vanish_mid_query", "vanish_waiting", "vanish_mid_copy",
               "terminate_mid_pipeline", "slow_reader"}

    def _run(self, rng, i):
        names, weights = zip(*self.ACTIONS)
        k = 0
        while not self.stop.is_set():
            action = rng.choices(names, weights)[0]
            user = rng.choice(list(USERS))
            db = rng.choice(list(DBS))
            budget = rng.random() < 0.3
            app = f"{BUDGET_APP}{i}-{k}" if budget else f"chaos{i}-{k}"
            k += 1
            c = None
            self.connections[i] = [time.monotonic(), None]
            try:
                c = RawConn(self.s.port, timeout=IO_TIMEOUT_S)
                c.startup(user=user, database=db, password=USERS[user], application_name=app)
                mark = ("/* chaos */" if not budget else
                        f"/* {GONE_MARK if action in self.LEAVING else BUDGET_MARK} */")
                getattr(self, action)(c, rng, mark)
                outcome = "ok"
            except socket.timeout:
                self.stuck.append(f"{action} {db}/{user} {app}: no answer for {IO_TIMEOUT_S} s")
                outcome = "stuck"
            except ServerError as e:
                outcome = e.sqlstate
                if e.sqlstate not in ("53300", "57000", "57014", "57P01", "08P01", "25P02",
                                      "08006", "57P03", "58000", "08000"):
                    self.unexpected.append(f"{action}: {e}")
            except (PeerClosed, OSError):
                outcome = "closed"
            finally:
                if c is not None:
                    c.close_abruptly(reset=rng.random() < 0.5)
                self.connections[i][1] = time.monotonic()
            with self.lock:
                key = (action, outcome)
                self.done[key] = self.done.get(key, 0) + 1

    def held_since(self, t0):
        """When the oldest connection that may hold a server at t0 began: one still open, or
        one closed in the last 2 s (its server may still be closing, docs/budgets.md). A server
        in use closes above a lowered cap only when its client releases it: in session mode at
        the session's end, however long a loaded machine makes it."""
        began = [b for b, e in filter(None, list(self.connections)) if e is None or e > t0 - 2.5]
        return min(began) if began else None

    # -- the actions; each keeps its server at most ACTION_HOLD_S
    def short_txns(self, c, rng, mark):
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.5:
                c.query(f"SELECT pg_sleep({rng.uniform(0, 0.05):.3f}) {mark}")
            else:
                c.query(f"BEGIN {mark}")
                c.query(f"SELECT pg_sleep({rng.uniform(0, 0.05):.3f}) {mark}")
                c.query(f"COMMIT {mark}")
        c.send(terminate_msg())

    def vanish_mid_txn(self, c, rng, mark):
        c.query(f"BEGIN {mark}")
        c.query(f"SELECT 1 {mark}")
        time.sleep(rng.uniform(0, 0.2))

    def vanish_mid_query(self, c, rng, mark):
        c.send(query_msg(f"SELECT pg_sleep(0.4) {mark}"))
        time.sleep(rng.uniform(0.02, 0.3))

    def vanish_waiting(self, c, rng, mark):
        c.send(query_msg(f"SELECT pg_sleep(0.02) {mark}"))
        time.sleep(rng.uniform(0, 0.05))

    def vanish_mid_copy(self, c, rng, mark):
        c.send(query_msg(f"COPY {COPY_TABLE} FROM STDIN {mark}"))
        c.read_until({"G"})
        data = copy_data_msg(b"1\n2\n")
        c.send(data if rng.random() < 0.5 else data[:6])
        time.sleep(rng.uniform(0, 0.2))

    def terminate_mid_pipeline(self, c, rng, mark):
        batch = (parse_msg("", f"SELECT pg_sleep(0.05) {mark}") + bind_msg("", "")
                 + execute_msg())
        if rng.random() < 0.5:
            batch += sync_msg() + parse_msg("", f"SELECT 2 {mark}") + bind_msg("", "")
        c.send(batch + terminate_msg())
        time.sleep(rng.uniform(0, 0.1))

    def cancel(self, c, rng, mark):
        c.send(query_msg(f"SELECT pg_sleep(0.5) {mark}"))
        time.sleep(rng.uniform(0.01, 0.2))
        pid, key = c.backend_key
        with socket.create_connection(("127.0.0.1", self.s.port), timeout=5) as k:
            k.sendall(cancel_request(pid, key))
            k.settimeout(5)
            try:
                k.recv(1)
            except OSError:
                pass
        try:
            c.read_results()
        except ServerError as e:
            if e.sqlstate != "57014":
                raise
        c.send(terminate_msg())

    def slow_reader(self, c, rng, mark):
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.send(query_msg(f"SELECT repeat('x', 2000) FROM generate_series(1, 5000) {mark}"))
        time.sleep(rng.uniform(0.3, 1.2))  # not reading: sluice's buffer and the kernel's fill

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(IO_TIMEOUT_S + 10)
        assert not any(t.is_alive() for t in self.threads), "an actor is stuck"


def console(s):
    return psycopg.connect(s.dsn(dbname="sluice", user=ADMIN, password=PASSWORDS[ADMIN]),
                           autocommit=True, prepare_threshold=None, connect_timeout=10 * SLOW)


def show(con, what):
    cur = con.execute(f"SHOW {what}")
    names = [d.name for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


class Operator:
    """One thread: RELOAD to another level (console or SIGHUP, GRACE_S + 1 to 12 s apart so a
    lowered level is checked too), PAUSE/RESUME, KILL_CLIENT, RECONNECT, pg_terminate_backend."""

    def __init__(self, s, pg, caps, seed, render_level):
        self.s, self.pg, self.caps, self.render_level = s, pg, caps, render_level
        self.rng = random.Random(seed * 7919)
        self.log, self.error = [], None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            with console(self.s) as adm, self.pg.superuser() as su:
                last_reload, gap = time.monotonic(), 2.0
                level = "high"
                while not self.stop.wait(self.rng.uniform(0.3, 1.0)):
                    if time.monotonic() - last_reload > gap:
                        level = self.rng.choice([lv for lv in LEVELS if lv != level])
                        self.reload(adm, level)
                        last_reload, gap = time.monotonic(), self.rng.uniform(GRACE_S + 1, 12)
                        continue
                    what = self.rng.choice(["pause", "kill_client", "reconnect", "terminate"])
                    getattr(self, what)(adm, su)
                adm.execute("RESUME")
        except Exception as e:  # noqa: BLE001 - reported by finish()
            self.error = f"{type(e).__name__}: {e}"

    def reload(self, adm, level):
        self.s.ini_path.write_text(self.render_level(level))
        self.caps.begin(level)
        mark = self.s.mark()
        if self.rng.random() < 0.5:
            adm.execute("RELOAD")
            how = "RELOAD"
        else:
            self.s.send_signal(signal.SIGHUP)
            how = "SIGHUP"
        self.s.wait_for_log(r"configuration reloaded", timeout=10 * SLOW, since=mark)
        self.caps.confirm()
        self.log.append(f"{how} {level} t={self.caps.changes[-1][0]:.2f}-{time.monotonic():.2f}")

    def pause(self, adm, su):
        target = self.rng.choice(["", " d1", " d2"])
        adm.execute(f"PAUSE{target}")
        time.sleep(self.rng.uniform(0.05, 0.5))
        adm.execute(f"RESUME{target}")
        self.log.append(f"PAUSE/RESUME{target}")

    def kill_client(self, adm, su):
        rows = [r for r in show(adm, "CLIENTS") if r["database"] in DBS]
        if rows:
            victim = self.rng.choice(rows)
            self.caps.killed()
            try:
                adm.execute(f"KILL_CLIENT {victim['ptr']}")
            except psycopg.Error:
                pass  # it left meanwhile
            self.log.append("KILL_CLIENT")

    def reconnect(self, adm, su):
        target = self.rng.choice(["", " d1", " d2"])
        adm.execute(f"RECONNECT{target}")
        self.log.append(f"RECONNECT{target}")

    def terminate(self, adm, su):
        su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)"
                   " AND backend_type = 'client backend' ORDER BY random() LIMIT %s",
                   [list(USERS), self.rng.randint(1, 2)])
        self.log.append("pg_terminate_backend")

    def finish(self):
        self.stop.set()
        self.thread.join(30 * SLOW)
        assert not self.thread.is_alive(), "the operator is stuck (a console command hangs)"
        assert self.error is None, f"operator failed: {self.error}\n{self.log}"


def assert_no_leak(s, pg):
    """Every client gone: nothing counted in use, every backend idle, SHOW SERVERS and
    pg_stat_activity name the same backends, and a new client of every pool is served at once."""
    with console(s) as adm:
        wait_until(lambda: not [r for r in show(adm, "CLIENTS") if r["database"] in DBS],
                   10 * SLOW, what="every chaos client gone from SHOW CLIENTS")

        def settled():
            pools = [r for r in show(adm, "POOLS") if r["database"] in DBS]
            busy = [r for r in pools if r["cl_active"] or r["cl_waiting"] or r["sv_active"]
                    or r["sv_tested"] or r["sv_login"]]
            if busy:
                return None
            backends = pg.query("SELECT pid, state FROM pg_stat_activity WHERE usename = ANY(%s)"
                                " AND backend_type = 'client backend'", [list(USERS)])
            if any(st != "idle" for _, st in backends):
                return None
            servers = [r for r in show(adm, "SERVERS") if r["database"] in DBS]
            if sorted(r["remote_pid"] for r in servers) != sorted(p for p, _ in backends):
                return None
            if sum(r["sv_idle"] + r["sv_used"] for r in pools) != len(servers):
                return None
            return pools, servers, backends
        try:
            wait_until(settled, 15 * SLOW, interval=0.2, what="sluice and Postgres to settle")
        except AssertionError:
            pools = [r for r in show(adm, "POOLS") if r["database"] in DBS]
            servers = [(r["database"], r["user"], r["state"], r["remote_pid"])
                       for r in show(adm, "SERVERS") if r["database"] in DBS]
            backends = pg.query("SELECT pid, datname, usename, state, query FROM pg_stat_activity"
                                " WHERE usename = ANY(%s) AND backend_type = 'client backend'",
                                [list(USERS)])
            raise AssertionError(f"no settling:\npools {pools}\nservers {servers}\n"
                                 f"backends {backends}\n{s.log_tail(40)}") from None
    for db in DBS:
        for user, password in USERS.items():
            for app in ("chaos-after", f"{BUDGET_APP}-after"):
                t0 = time.monotonic()
                c = RawConn(s.port, timeout=10 * SLOW)
                try:
                    c.startup(user=user, database=db, password=password, application_name=app)
                    assert c.query("SELECT 1")[0] == [["1"]]
                finally:
                    c.close()
                took = time.monotonic() - t0
                assert took < 2 * SLOW, f"{db}/{user} {app}: served after {took:.1f} s"


def seeds():
    env = os.environ.get("CHAOS_SEEDS")
    if env:
        picked = [int(x) for x in env.split(",") if x.strip()]
        return [(w, m, sd) for sd in picked for w in (2, 3) for m in ("transaction", "session")]
    return [(2, "transaction", 1), (2, "session", 2), (3, "transaction", 3), (3, "session", 4)]


@pytest.mark.timeout(60 + 3 * int(CHAOS_S))
@pytest.mark.parametrize("nworkers,mode,seed", seeds())
def test_chaos_never_passes_a_cap_and_leaves_nothing_behind(start_sluice, pg, chaos_dbs,
                                                            nworkers, mode, seed):
    main, databases, budgets = config(nworkers, mode, "high", pg)
    s = start_sluice(main, databases=databases, auth_file=PASSWORDS, budgets=budgets)
    assert s.ini_path.read_text() == render(s, nworkers, mode, "high", pg), \
        "render() must write what start_sluice wrote, so a RELOAD changes only the caps"

    def render_level(level):
        return render(s, nworkers, mode, level, pg)

    caps = Caps("high")
    sampler = Sampler(pg, caps)
    actors = Actors(s, seed, 12, mode)
    sampler.actors = actors
    operator = Operator(s, pg, caps, seed, render_level)
    try:
        time.sleep(CHAOS_S)
    finally:
        operator.finish()
        actors.finish()
    time.sleep(GRACE_S)  # the last lowered level holds by now; the sampler goes on checking
    try:
        assert_no_leak(s, pg)
    finally:
        sampler.finish()
    summary = (f"seed {seed}, {nworkers} workers, {mode}: {sampler.samples} samples, most seen "
               f"{sampler.most}; operator {operator.log}; actions {sorted(actors.done.items())}")
    print(summary)
    assert s.alive(), s.log_tail(40)
    assert not sampler.violations, "\n".join(sampler.violations[:20]) + "\n" + summary
    assert not actors.stuck, "\n".join(actors.stuck[:10]) + "\n" + summary
    assert not actors.unexpected, "\n".join(actors.unexpected[:10]) + "\n" + summary
    assert sampler.samples > 50, summary
    ok = sum(n for (a, o), n in actors.done.items() if a == "short_txns" and o == "ok")
    assert ok >= 5, f"only {ok} short_txns succeeded\n{summary}"
    bad = [line for line in s.log if "ledger:" in line or re.search(r"\baudit\b", line)]
    assert not bad, "ledger audit complained:\n" + "\n".join(bad[:20])
