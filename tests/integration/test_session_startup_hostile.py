"""Session-mode startup parameters (issue 17) under hostile and careless clients: storms of
distinct parameters under caps, a common fingerprint mixed with rare ones, refused options
under a full pool, odd option values. Caps are checked in Postgres (BackendSampler)."""

import contextlib
import signal
import threading
import time

import psycopg
import pytest

from conftest import APP_PASSWORD, BackendSampler, wait_until
from pgwire import RawConn, ServerError, query_msg, raw_login, startup_packet
from test_caps_reload import reload_with
from test_session_startup import show_pool

ADMIN = "admin"


def client_life(port, work, failed=repr, **login):
    """A storm client's whole life: log in with raw_login's arguments, work(c), leave. What work
    returned, or failed(the exception) when something went wrong (a storm's threads record it)."""
    try:
        c = raw_login(port, **login)
        try:
            return work(c)
        finally:
            c.close()
    except Exception as e:  # noqa: BLE001
        return failed(e)


def sqlstate_or_repr(e):
    """The SQLSTATE a client was refused with, or what else went wrong."""
    return e.sqlstate if isinstance(e, ServerError) else repr(e)


def rows_of(sql):
    """A client's work: run sql; its rows."""
    return lambda c: c.query(sql)[0]


NAME_AND_SLEEP = rows_of("SELECT current_setting('application_name'), pg_sleep(0.05)")


def application_name_of(c):
    return c.query("SELECT current_setting('application_name')")[0]


def first_value_or_sqlstate(sql, port, **kw):
    """A client's whole life: log in, run sql, leave. Its rows, the SQLSTATE it was refused
    with, or what else went wrong (a storm's threads record it)."""
    return client_life(port, rows_of(sql), failed=sqlstate_or_repr, **kw)


@contextlib.contextmanager
def each_in_a_transaction(port, *logins):
    """One client per dict of raw_login's arguments, each in a transaction (each holds a backend
    at the same time); all closed at the end."""
    conns = []
    try:
        for login in logins:
            conns.append(raw_login(port, **login))
        for c in conns:
            c.query("BEGIN")
        yield conns
    finally:
        for c in conns:
            c.close()


def run_threads(fn, n, join=90):
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(join)
    return threads


@pytest.mark.parametrize("cap", [{"default_pool_size": 2},
                                 {"default_pool_size": 5, "max_db_connections": 2},
                                 {"default_pool_size": 5, "max_user_connections": 2}])
def test_a_rare_fingerprint_is_served_while_a_common_one_keeps_the_pool_busy(start_sluice, pg,
                                                                             cap):
    """FIFO fairness: clients of one application keep every backend busy, releasing each to
    the next of theirs; a client with other parameters that waits at the head of the queue
    gets a backend (one of theirs closed for it) long before query_wait_timeout."""
    s = start_sluice(dict({"pool_mode": "session", "query_wait_timeout": 20,
                           "admin_users": ADMIN}, **cap))
    stop = threading.Event()
    served = {"common": 0}
    errors = []
    pids = set()

    def common(i):
        while not stop.is_set():
            try:
                c = raw_login(s.port, application_name="common")
                try:
                    pids.add(c.query("SELECT pg_backend_pid(), pg_sleep(0.05)")[0][0][0])
                    served["common"] += 1
                finally:
                    c.close()
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
                return

    threads = [threading.Thread(target=common, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        rare = raw_login(s.port, application_name="rare", timeout=30)
        try:
            assert rare.query("SELECT current_setting('application_name')")[0] == [["rare"]]
        finally:
            rare.close()
        waited = time.monotonic() - t0
        before = served["common"]
        time.sleep(1.0)
        assert served["common"] > before, "common clients starved after the rare one"
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    assert waited < 5, f"the rare client waited {waited:.1f}s behind younger common clients"
    # the common clients share backends: two, and one more for the one closed for the rare one
    assert served["common"] > 20 and len(pids) <= 3, (served, pids)


@pytest.mark.parametrize("cap", [{"default_pool_size": 4},
                                 {"default_pool_size": 5, "max_db_connections": 3},
                                 {"default_pool_size": 5, "max_user_connections": 3}])
def test_a_storm_of_distinct_parameters_holds_the_caps_and_serves_everyone(start_sluice, pg,
                                                                           cap):
    cap_n = min(cap.values())
    s = start_sluice(dict({"pool_mode": "session", "query_wait_timeout": 60,
                           "max_client_conn": 200}, **cap))
    results = {}

    def work(c, i):
        if i % 5 == 0:
            c.query("BEGIN")
            c.query("SELECT pg_sleep(0.1)")
            c.query("COMMIT")
        return c.query("SELECT current_setting('application_name'),"
                       " current_setting('app.me'), current_setting('statement_timeout')")[0]

    def client(i):
        results[i] = client_life(s.port, lambda c: work(c, i), application_name=f"storm{i}",
                                 options=f"-c app.me={i} -c statement_timeout={2001 + i}",
                                 timeout=80)

    n = 60
    with BackendSampler(pg) as sampler:
        run_threads(client, n)
    assert results == {i: [[f"storm{i}", str(i), f"{2001 + i}ms"]] for i in range(n)}
    assert sampler.samples > 0 and sampler.max <= cap_n, sampler.history


def test_a_flood_of_refused_options_under_a_full_pool_leaves_good_clients_served(start_sluice,
                                                                               pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 3, "query_wait_timeout": 30,
                      "admin_users": ADMIN})
    # fill the pool with idle backends of other parameters
    for i in range(3):
        c = raw_login(s.port, application_name=f"idle{i}")
        c.query("SELECT 1")
        c.close()
    results = {}

    def served(c):
        c.query("SELECT 1")
        return "served"

    def bad(i):
        results[i] = client_life(s.port, served, failed=sqlstate_or_repr,
                                 options="-c no_such_setting=1", timeout=40)

    def good(i):
        results[i] = client_life(s.port, application_name_of, application_name=f"good{i % 4}",
                                 timeout=40)

    with BackendSampler(pg) as sampler:
        run_threads(lambda i: bad(i) if i < 50 else good(i), 70)
    assert {results[i] for i in range(50)} == {"42704"}, results
    assert all(results[i] == [[f"good{i % 4}"]] for i in range(50, 70)), results
    assert sampler.max <= 3, sampler.history
    row = show_pool(s)
    assert row["breaker"] == "closed"
    t0 = time.monotonic()
    assert client_life(s.port, rows_of("SELECT 1"), application_name="after") == [["1"]]
    assert time.monotonic() - t0 < 2


def test_a_client_gone_while_its_backend_logs_in_leaks_no_slot(start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 2, "admin_users": ADMIN,
                      "query_wait_timeout": 20})
    for round_ in range(3):
        conns = []
        for i in range(8):
            c = raw_login(s.port, application_name=f"gone{round_}-{i}")
            c.send(query_msg("SELECT pg_sleep(0.2)"))
            conns.append(c)
        for c in conns:
            c.close()
    time.sleep(1.0)
    # every slot is usable: two clients of new parameters hold a backend each at once
    with each_in_a_transaction(s.port, {"application_name": "a"},
                               {"application_name": "b"}) as (a, b):
        assert application_name_of(a) == [["a"]]
        assert application_name_of(b) == [["b"]]

    def settled():
        with pg.superuser() as con:
            (n,) = con.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
                               " AND backend_type = 'client backend'").fetchone()
        row = show_pool(s)
        return n <= 2 and row["sv_active"] == 0

    wait_until(settled, 10, what="backends and SHOW POOLS converge")


@pytest.mark.parametrize("login", [
    {"options": "-c app.q=it\\'s -c app.e=a=b=c"},
    {"options": " ".join(f"-c app.k{i}={i}" for i in range(100))},
    {"options": "-c app.x=1 -c app.x=2"},
    {"application_name": "x" * 200},
    {"client_encoding": "LATIN1", "application_name": "caf\u00e9"},
    {"options": "--app.dash=yes -capp.glued=1"},
])
def test_odd_startup_values_reach_the_backend_as_postgres_reads_them(start_sluice, pg, login):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})

    def what_the_session_reads(c):
        return (c.query("SELECT name, setting FROM pg_settings WHERE source = 'client'"
                        " ORDER BY name")[0],
                application_name_of(c),
                c.query("SELECT coalesce(string_agg(k || '=' || current_setting(k), ','"
                        " ORDER BY k), '') FROM unnest(ARRAY['app.q','app.e','app.x',"
                        "'app.k0','app.k99','app.dash','app.glued']) k"
                        " WHERE current_setting(k, true) IS NOT NULL")[0])

    direct = raw_login(pg.port, password=APP_PASSWORD, **login)
    try:
        want = what_the_session_reads(direct)
    finally:
        direct.close()
    for _ in range(2):
        pooled = raw_login(s.port, **login)
        try:
            assert what_the_session_reads(pooled) == want
        finally:
            pooled.close()


def count_backends(pg, like, state=None, query_like="%"):
    with pg.superuser() as con:
        (n,) = con.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
                           " AND backend_type = 'client backend' AND application_name LIKE %s"
                           " AND (%s::text IS NULL OR state = %s) AND query LIKE %s",
                           [like, state, state, query_like]).fetchone()
    return n


class LikeSampler(threading.Thread):
    """The most backends whose application_name is LIKE `like` seen at once running a storm
    client's own statement (NAME_AND_SLEEP's pg_sleep). A budget's max_servers counts servers its
    clients hold (leases). A backend opened with a budget client's parameters runs sluice's own
    statements too, active under that name while no client holds it: the login probe
    (server_probe_sql, on each new server) before its lease, and the reset after its client has
    left and the lease was given to the next. Counting every active one saw 3 for a budget of 2
    under ASan on a loaded machine: those, not a third lease."""

    def __init__(self, pg, like):
        super().__init__(daemon=True)
        self.pg, self.like, self.max, self.samples = pg, like, 0, 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.max = max(self.max, count_backends(self.pg, self.like, "active", "%pg_sleep%"))
            self.samples += 1
            self.stop.wait(0.05)


def test_a_budget_holds_its_max_servers_in_a_storm_of_distinct_parameters(pg, start_sluice):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 5, "query_wait_timeout": 60,
                      "max_client_conn": 200})
    text = s.ini_path.read_text() + "\n[budgets]\nseeds = app=seed* max_servers=2\n"
    s.ini_path.write_text(text)
    mark = s.mark()
    s.send_signal(signal.SIGHUP)
    s.wait_for_log(r"configuration reloaded", since=mark)
    results = {}

    def client(i):
        kind = "seed" if i % 2 else "web"
        results[i] = client_life(s.port, NAME_AND_SLEEP, application_name=f"{kind}{i}",
                                 timeout=80)

    seeds = LikeSampler(pg, "seed%")
    seeds.start()
    with BackendSampler(pg) as sampler:
        run_threads(client, 60)
    seeds.stop.set()
    seeds.join(5)
    assert results == {i: [[f"{'seed' if i % 2 else 'web'}{i}", ""]] for i in range(60)}
    assert sampler.max <= 5, sampler.history
    assert seeds.samples > 0 and seeds.max <= 2


@pytest.mark.parametrize("change", [("default_pool_size", 2), ("pool_mode", "transaction")])
def test_a_reload_under_a_storm_of_distinct_parameters(start_sluice, pg, change):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 4, "query_wait_timeout": 60,
                      "max_client_conn": 200})
    results = {}

    work = rows_of("SELECT current_setting('application_name'), current_setting('app.me'),"
                   " pg_sleep(0.1)")

    def client(i):
        results[i] = client_life(s.port, work, application_name=f"r{i}",
                                 options=f"-c app.me={i}", timeout=80)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    with pg.superuser() as con:
        (before_reload,) = con.execute("SELECT clock_timestamp()").fetchone()
    reload_with(s, *change)
    for t in threads:
        t.join(90)
    bad = {i: r for i, r in results.items() if r != [[f"r{i}", str(i), ""]]}
    if change[0] == "pool_mode":
        # clients let in before the reload are session clients; after it transaction ones,
        # whose backends are the pool's own: application_name is synced, app.me is not sluice's
        bad = {i: r for i, r in bad.items() if not (isinstance(r, list) and r[0][0] == f"r{i}")}
    assert not bad and len(results) == 40, bad
    time.sleep(1.0)
    limit = 2 if change[0] == "default_pool_size" else 4
    with BackendSampler(pg) as sampler:
        time.sleep(0.5)
    assert sampler.max <= limit, sampler.history
    if change[0] == "pool_mode":
        # the backends opened with session clients' parameters are of no use now: a
        # transaction client is served at once, and they do not stay to hold the pool's slots
        t0 = time.monotonic()
        assert client_life(s.port, application_name_of, application_name="after") == [["after"]]
        assert time.monotonic() - t0 < 2
    
        def opened_before_reload():
            with pg.superuser() as con:
                return con.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
                                   " AND backend_start < %s", [before_reload]).fetchone()[0]

        wait_until(lambda: opened_before_reload() == 0, 5, what="session backends closed")


def test_pause_and_resume_under_a_storm_of_distinct_parameters(start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 3, "query_wait_timeout": 60,
                      "admin_users": ADMIN, "max_client_conn": 200})
    results = {}

    def client(i):
        results[i] = client_life(s.port, NAME_AND_SLEEP, application_name=f"p{i}", timeout=80)

    with psycopg.connect(s.dsn(dbname="sluice", user=ADMIN, password=None), autocommit=True,
                         prepare_threshold=None) as admin:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(30)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        admin.execute("PAUSE appdb")
        time.sleep(0.5)
        admin.execute("RESUME appdb")
        for t in threads:
            t.join(90)
    assert results == {i: [[f"p{i}", ""]] for i in range(30)}


def test_an_option_also_in_the_database_entry_is_the_clients(start_sluice, pg):
    entry = pg.db_entry(options="-c statement_timeout=7777 -c app.db=fromdb")
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1},
                     databases={"appdb": entry})
    c = raw_login(s.port, options="-c statement_timeout=5555")
    try:
        rows = c.query("SELECT current_setting('statement_timeout'), current_setting('app.db')")
        assert rows[0] == [["5555ms", "fromdb"]]
        c.query("RESET ALL")
        assert c.query("SHOW statement_timeout")[0] == [["5555ms"]]
    finally:
        c.close()
    c = raw_login(s.port)
    try:
        assert c.query("SHOW statement_timeout")[0] == [["7777ms"]]
    finally:
        c.close()


def test_idle_backends_opened_for_session_clients_close_when_the_mode_changes(start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 3})
    for i in range(3):
        c = raw_login(s.port, application_name=f"idle{i}")
        c.query("SELECT 1")
        c.close()
    time.sleep(0.3)
    assert count_backends(pg, "idle%") == 3
    reload_with(s, "pool_mode", "transaction")
    # they hold the pool's slots and serve nobody: gone without waiting for server_idle_timeout
    wait_until(lambda: count_backends(pg, "idle%") == 0, 3, what="session backends closed")


def test_a_client_of_other_parameters_behind_held_transactions_is_told_53300(start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 2, "query_wait_timeout": 1,
                      "admin_users": ADMIN})
    holders = [raw_login(s.port, application_name=f"hold{i}") for i in range(2)]
    try:
        for h in holders:
            h.query("BEGIN")
        results = {}

        def late(i):
            results[i] = first_value_or_sqlstate("SELECT 1", s.port,
                                                 application_name=f"late{i}", timeout=10)

        t0 = time.monotonic()
        run_threads(late, 5, join=15)
        assert set(results.values()) == {"53300"}, results
        assert time.monotonic() - t0 < 5
    finally:
        for h in holders:
            h.close()
    # the slots are back: two clients of new parameters each hold a backend at once
    with each_in_a_transaction(s.port, {"application_name": "a"},
                               {"application_name": "b"}) as (_, b):
        assert application_name_of(b) == [["b"]]


def test_kill_during_a_storm_of_distinct_parameters_leaks_no_slot(start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 3, "query_wait_timeout": 30,
                      "admin_users": ADMIN, "max_client_conn": 200})
    results = {}

    def client(i):
        # KILL ends the first ones
        results[i] = client_life(s.port, rows_of("SELECT pg_sleep(0.1)"),
                                 failed=lambda e: "gone" if i < 100 else repr(e),
                                 application_name=f"k{i}", timeout=40)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    with psycopg.connect(s.dsn(dbname="sluice", user=ADMIN, password=None), autocommit=True,
                         prepare_threshold=None) as admin:
        admin.execute("KILL appdb")
        for t in threads:
            t.join(60)
        admin.execute("RESUME appdb")
    assert len(results) == 30
    with BackendSampler(pg) as sampler:
        run_threads(lambda i: client(100 + i), 12)
    assert {i: results[100 + i] for i in range(12)} == {i: [[""]] for i in range(12)}
    assert sampler.max <= 3, sampler.history
    wait_until(lambda: show_pool(s)["sv_active"] == 0, 5, what="no active server")


@pytest.mark.parametrize("options", ["-c app.x", "-c", "-c =1", "-x 1", "--app.y", "-c a b",
                                     "-capp.z=1 stray", "\\", "-c app.t=\\"])
def test_malformed_options_are_refused_as_postgres_refuses_them_and_harm_nobody(start_sluice,
                                                                                 pg, options):
    """sluice reads options itself (in every mode: it must know the parameters), and refuses
    those Postgres refuses with Postgres's own code (42601, 42704 for "-c =1"), after
    authentication as Postgres does (test_session_startup_options.py compares every field). The
    pool is untouched."""
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1, "admin_users": ADMIN})

    def outcome(port, **kw):
        try:
            c = raw_login(port, options=options, **kw)
        except ServerError as e:
            return ("refused", e.sqlstate)
        try:
            return ("served", c.query("SELECT current_setting('application_name')")[0])
        except ServerError as e:
            return ("refused", e.sqlstate)
        finally:
            c.close()

    want = outcome(pg.port, password=APP_PASSWORD)
    got = outcome(s.port)
    assert got == want
    assert show_pool(s)["breaker"] == "closed"
    assert client_life(s.port, rows_of("SELECT 1"), application_name="after") == [["1"]]


def test_a_storm_past_query_wait_timeout_is_served_or_told_53300(start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 3, "query_wait_timeout": 2,
                      "max_client_conn": 200, "admin_users": ADMIN})
    results = {}

    def client(i):
        results[i] = first_value_or_sqlstate(
            "SELECT current_setting('app.me'), pg_sleep(0.2)", s.port,
            application_name=f"w{i}", options=f"-c app.me={i}", timeout=20)

    t0 = time.monotonic()
    with BackendSampler(pg) as sampler:
        run_threads(client, 100, join=30)
    assert time.monotonic() - t0 < 15
    served = [i for i, r in results.items() if r == [[str(i), ""]]]
    told = [i for i, r in results.items() if r == "53300"]
    assert len(results) == 100 and len(served) + len(told) == 100, results
    assert served and told
    assert sampler.max <= 3, sampler.history
    wait_until(lambda: show_pool(s)["cl_waiting"] == 0 and show_pool(s)["sv_active"] == 0, 5,
               what="pool settled")


def test_logins_gone_before_their_backend_logs_in_leak_no_slot(start_sluice, pg):
    """Each login has parameters no backend has (with DateStyle, a reported one: it waits for
    a backend of its own) and leaves right after its startup packet, under a full pool."""
    s = start_sluice({"pool_mode": "session", "default_pool_size": 2, "admin_users": ADMIN,
                      "query_wait_timeout": 20})
    holder = raw_login(s.port, application_name="holder")
    holder.query("BEGIN")
    for i in range(40):
        c = RawConn(s.port)
        c.send(startup_packet(user="app", database="appdb", application_name=f"g{i}",
                              DateStyle="German" if i % 2 else "SQL"))
        if i % 3 == 0:
            time.sleep(0.01)
        c.close()
    holder.close()
    wait_until(lambda: show_pool(s)["cl_waiting"] == 0 and show_pool(s)["sv_active"] == 0, 10,
               what="SHOW POOLS settled")
    with BackendSampler(pg) as sampler, each_in_a_transaction(
            s.port, {"application_name": "a", "DateStyle": "German"},
            {"application_name": "b"}) as (a, b):
        assert a.query("SHOW DateStyle")[0] == [["German, DMY"]]
        assert application_name_of(b) == [["b"]]
    assert sampler.max <= 2, sampler.history
