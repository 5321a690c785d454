"""Session-mode startup parameters (issue 17) under hostile and careless clients: storms of
distinct parameters under caps, a common fingerprint mixed with rare ones, refused options
under a full pool, odd option values. Caps are checked in Postgres (BackendSampler)."""

import threading
import time

import pytest

from conftest import APP_PASSWORD, BackendSampler
from pgwire import ServerError, query_msg, raw_login
from test_session_startup import show_pool

ADMIN = "admin"


def run_threads(fn, n, join=90):
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(join)
    return threads


def test_a_rare_fingerprint_is_served_while_a_common_one_keeps_the_pool_busy(start_sluice, pg):
    """FIFO fairness: clients of one application keep every backend busy, releasing each to
    the next of theirs; a client with other parameters that waits at the head of the queue
    gets a backend (one of theirs closed for it) long before query_wait_timeout."""
    s = start_sluice({"pool_mode": "session", "default_pool_size": 2, "query_wait_timeout": 20,
                      "admin_users": ADMIN})
    stop = threading.Event()
    served = {"common": 0}
    errors = []

    def common(i):
        while not stop.is_set():
            try:
                c = raw_login(s.port, application_name="common")
                try:
                    c.query("SELECT pg_sleep(0.05)")
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


@pytest.mark.parametrize("cap", [{"default_pool_size": 4},
                                 {"default_pool_size": 5, "max_db_connections": 3},
                                 {"default_pool_size": 5, "max_user_connections": 3}])
def test_a_storm_of_distinct_parameters_holds_the_caps_and_serves_everyone(start_sluice, pg,
                                                                           cap):
    cap_n = min(cap.values())
    s = start_sluice(dict({"pool_mode": "session", "query_wait_timeout": 60,
                           "max_client_conn": 200}, **cap))
    results = {}

    def client(i):
        try:
            c = raw_login(s.port, application_name=f"storm{i}",
                          options=f"-c app.me={i} -c statement_timeout={2001 + i}", timeout=80)
            try:
                if i % 5 == 0:
                    c.query("BEGIN")
                    c.query("SELECT pg_sleep(0.1)")
                    c.query("COMMIT")
                rows = c.query("SELECT current_setting('application_name'),"
                               " current_setting('app.me'), current_setting('statement_timeout')")
                results[i] = rows[0]
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001
            results[i] = repr(e)

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

    def bad(i):
        try:
            c = raw_login(s.port, options="-c no_such_setting=1", timeout=40)
            try:
                c.query("SELECT 1")
                results[i] = "served"
            finally:
                c.close()
        except ServerError as e:
            results[i] = e.sqlstate
        except Exception as e:  # noqa: BLE001
            results[i] = repr(e)

    def good(i):
        try:
            c = raw_login(s.port, application_name=f"good{i % 4}", timeout=40)
            try:
                results[i] = c.query("SELECT current_setting('application_name')")[0]
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001
            results[i] = repr(e)

    with BackendSampler(pg) as sampler:
        run_threads(lambda i: bad(i) if i < 50 else good(i), 70)
    assert {results[i] for i in range(50)} == {"42704"}, results
    assert all(results[i] == [[f"good{i % 4}"]] for i in range(50, 70)), results
    assert sampler.max <= 3, sampler.history
    row = show_pool(s)
    assert row["breaker"] == "closed"
    t0 = time.monotonic()
    c = raw_login(s.port, application_name="after")
    try:
        assert c.query("SELECT 1")[0] == [["1"]]
    finally:
        c.close()
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
    a = raw_login(s.port, application_name="a")
    b = raw_login(s.port, application_name="b")
    try:
        a.query("BEGIN")
        b.query("BEGIN")
        assert a.query("SELECT current_setting('application_name')")[0] == [["a"]]
        assert b.query("SELECT current_setting('application_name')")[0] == [["b"]]
    finally:
        a.close()
        b.close()

    def settled():
        with pg.superuser() as con:
            (n,) = con.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
                               " AND backend_type = 'client backend'").fetchone()
        row = show_pool(s)
        return n <= 2 and row["sv_active"] == 0

    from conftest import wait_until
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
    probe = "SELECT name, setting FROM pg_settings WHERE source = 'client' ORDER BY name"
    probe2 = "SELECT current_setting('application_name')"
    direct = raw_login(pg.port, password=APP_PASSWORD, **login)
    try:
        want = (direct.query(probe)[0], direct.query(probe2)[0])
        custom = direct.query("SELECT coalesce(string_agg(k || '=' || current_setting(k), ','"
                              " ORDER BY k), '') FROM unnest(ARRAY['app.q','app.e','app.x',"
                              "'app.k0','app.k99','app.dash','app.glued']) k"
                              " WHERE current_setting(k, true) IS NOT NULL")[0]
    finally:
        direct.close()
    for _ in range(2):
        pooled = raw_login(s.port, **login)
        try:
            got = (pooled.query(probe)[0], pooled.query(probe2)[0])
            got_custom = pooled.query("SELECT coalesce(string_agg(k || '=' || current_setting(k),"
                                      " ',' ORDER BY k), '') FROM unnest(ARRAY['app.q','app.e',"
                                      "'app.x','app.k0','app.k99','app.dash','app.glued']) k"
                                      " WHERE current_setting(k, true) IS NOT NULL")[0]
            assert (got, got_custom) == (want, custom)
        finally:
            pooled.close()
