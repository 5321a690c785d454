"""Session mode opens each backend with its client's startup parameters (issue 17): Postgres's
own login then tests them (a refused option is Postgres's FATAL for that client alone, not a
database outage), clients with the same parameters share backends one after another, and a
client with other parameters gets a backend of its own within the caps."""

import threading
import time

import psycopg
import pytest

from conftest import APP_PASSWORD, BackendSampler
from pgwire import ServerError, raw_login
from test_auth import auth_roles, passthrough_entry  # noqa: F401 (a fixture)
from test_caps_reload import reload_with

ADMIN = "admin"


def show_pool(s, db="appdb"):
    with psycopg.connect(s.dsn(dbname="sluice", user=ADMIN, password=None), autocommit=True,
                         prepare_threshold=None) as con:
        cur = con.execute("SHOW POOLS")
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    (row,) = [r for r in rows if r["database"] == db]
    return row


def postgres_refusal(pg, options):
    """(sqlstate, message) Postgres itself answers a login with these options."""
    with pytest.raises(ServerError) as e:
        raw_login(pg.port, password=APP_PASSWORD, options=options).close()
    return e.value.sqlstate, e.value.fields.get("M")


def pid(c):
    return c.query("SELECT pg_backend_pid()")[0][0][0]


# transaction_isolation: 25001 "SET TRANSACTION ISOLATION LEVEL must be called before any query";
# local_preload_libraries: 58P01 "could not access file ...". sluice took those for the database
# refusing connections: the pool was marked down (57P03 to that client, the breaker open for
# everyone) at each such login
@pytest.mark.parametrize("options", ["-c no_such_setting=1", "-c statement_timeout=abc",
                                     "-c transaction_isolation=serializable",
                                     "-c local_preload_libraries=sluice_test_no_such_library"])
def test_a_refused_startup_option_is_postgres_fatal_for_that_client_alone(start_sluice, pg,
                                                                           options):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 2, "admin_users": ADMIN})
    want = postgres_refusal(pg, options)
    assert want[0] in ("42704", "22023", "25001", "58P01")
    good = raw_login(s.port, application_name="good")
    try:
        assert good.query("SELECT 1")[0] == [["1"]]
        with pytest.raises(ServerError) as e:
            bad = raw_login(s.port, options=options)
            bad.query("SELECT 1")  # let in: a known-good welcome; the backend's login refuses
        assert (e.value.sqlstate, e.value.fields.get("M")) == want
        assert e.value.fields.get("S") == "FATAL"
        assert good.query("SELECT 2")[0] == [["2"]]
        assert show_pool(s)["breaker"] == "closed"
        # no backoff: another good client (its own parameters: a new backend) logs in at once
        t0 = time.monotonic()
        other = raw_login(s.port, application_name="other")
        try:
            assert other.query("SELECT 3")[0] == [["3"]]
        finally:
            other.close()
        assert time.monotonic() - t0 < 2
        assert show_pool(s)["breaker"] == "closed"
    finally:
        good.close()


def test_client_encoding_auto_is_refused_as_postgres_refuses_it(start_sluice, pg):
    """`auto` is libpq's word for "the encoding of my locale", resolved by the client; Postgres
    refuses it as a startup value (22023). sluice handed the client's client_encoding to libpq
    as its keyword, and libpq put the encoding of sluice's own locale in its place: the client
    was let in with SQL_ASCII, a value it never asked for."""
    with pytest.raises(ServerError) as direct:
        raw_login(pg.port, password=APP_PASSWORD, client_encoding="auto").close()
    want = (direct.value.sqlstate, direct.value.fields.get("M"))
    assert want[0] == "22023"
    s = start_sluice({"pool_mode": "session"})
    with pytest.raises(ServerError) as e:
        bad = raw_login(s.port, client_encoding="auto")
        bad.query("SELECT current_setting('client_encoding')")
    assert (e.value.sqlstate, e.value.fields.get("M")) == want
    good = raw_login(s.port, client_encoding="LATIN1")
    try:
        assert good.query("SELECT current_setting('client_encoding')")[0] == [["LATIN1"]]
    finally:
        good.close()


def test_a_refused_option_while_another_client_logs_in_fails_only_its_client(start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 4, "admin_users": ADMIN})
    results = {}

    def login(name, **params):
        try:
            c = raw_login(s.port, **params)
            results[name] = c.query("SELECT 1")[0]
            c.close()
        except ServerError as e:
            results[name] = e.sqlstate

    threads = [threading.Thread(target=login, args=("bad",),
                                kwargs={"options": "-c no_such_setting=1"}),
               threading.Thread(target=login, args=("good",),
                                kwargs={"application_name": "good"})]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {"bad": "42704", "good": [["1"]]}
    assert show_pool(s)["breaker"] == "closed"


def test_clients_with_the_same_startup_parameters_reuse_one_backend(start_sluice):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    pids = []
    for _ in range(2):
        c = raw_login(s.port, application_name="app1", options="-c statement_timeout=4321")
        try:
            pids.append(pid(c))
            assert c.query("SHOW statement_timeout")[0] == [["4321ms"]]
            c.query("SET statement_timeout = 99")  # DISCARD ALL brings back the login value
        finally:
            c.close()
    assert pids[0] == pids[1]


def test_a_client_with_other_parameters_gets_its_own_backend_within_pool_size(start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    with BackendSampler(pg) as sampler:
        first = raw_login(s.port, application_name="app1", options="-c statement_timeout=4321")
        try:
            first_pid = pid(first)
        finally:
            first.close()
        time.sleep(0.2)
        second = raw_login(s.port, application_name="app2", DateStyle="German",
                           options="-c statement_timeout=1111")
        try:
            assert pid(second) != first_pid
            rows = second.query("SELECT current_setting('application_name'),"
                                " current_setting('DateStyle'),"
                                " current_setting('statement_timeout')")[0]
            assert rows == [["app2", "German, DMY", "1111ms"]]
            second.query("RESET ALL")
            assert second.query("SHOW statement_timeout")[0] == [["1111ms"]]
            source = second.query("SELECT source FROM pg_settings WHERE name = 'statement_timeout'")
            assert source[0] == [["client"]]
        finally:
            second.close()
        time.sleep(0.2)
    assert sampler.samples > 0 and sampler.max <= 1, sampler.history


def test_a_custom_reset_query_keeps_reported_parameters_of_one_client_from_the_next(start_sluice):
    """server_reset_query other than DISCARD ALL: the parameters Postgres reports are synced
    as before (the rest are the reset query's to clean, as in PgBouncer)."""
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1,
                      "server_reset_query": "SELECT 1"})
    c = raw_login(s.port, application_name="app1", TimeZone="UTC")
    try:
        c.query("SET DateStyle = 'SQL, DMY'")
        c.query("SET TimeZone = 'Asia/Kolkata'")
    finally:
        c.close()
    c = raw_login(s.port, application_name="app1", TimeZone="UTC")
    try:
        rows = c.query("SELECT current_setting('DateStyle'), current_setting('TimeZone')")[0]
        assert rows == [["ISO, MDY", "UTC"]]
        assert c.params["DateStyle"] == "ISO, MDY" and c.params["TimeZone"] == "UTC"
    finally:
        c.close()


def test_a_passthrough_login_opens_the_backend_with_the_clients_startup_parameters(
        start_sluice, pg, auth_roles):
    """sluice's own login (a client's SCRAM keys, no password) passes the startup parameters as
    libpq's does: application_name and client_encoding in the startup packet, the rest in
    options."""
    s = start_sluice({"auth_type": "scram-sha-256", "pool_mode": "session",
                      "default_pool_size": 1, "log_level": "debug"},
                     auth_file={"qscram": pg.stored_secret("qscram")},
                     databases={"appdb": passthrough_entry(pg)})
    c = raw_login(s.port, user="qscram", password="qpass", application_name="pt",
                  client_encoding="LATIN1", options="-c statement_timeout=2222 -c app.y=a\\ b")
    try:
        rows = c.query("SELECT current_setting('application_name'),"
                       " current_setting('client_encoding'), current_setting('statement_timeout'),"
                       " current_setting('app.y'), (SELECT source FROM pg_settings"
                       " WHERE name = 'statement_timeout')")[0]
        assert rows == [["pt", "LATIN1", "2222ms", "a b", "client"]]
        c.query("RESET ALL")
        assert c.query("SHOW client_encoding")[0] == [["LATIN1"]]
    finally:
        c.close()
    s.wait_for_log(r'connecting \(passthrough login as "qscram"\)')


def test_a_reload_out_of_session_mode_closes_backends_opened_with_a_clients_parameters(
        start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    c = raw_login(s.port, application_name="app1", options="-c statement_timeout=4321")
    try:
        session_pid = pid(c)
    finally:
        c.close()
    reload_with(s, "pool_mode", "transaction")
    c = raw_login(s.port)  # no parameters: a backend of the pool's own, within pool_size 1
    try:
        assert pid(c) != session_pid
        assert c.query("SHOW statement_timeout")[0] == [["0"]]
    finally:
        c.close()


@pytest.mark.parametrize("cap", [{"default_pool_size": 2},
                                 {"default_pool_size": 5, "max_db_connections": 2}])
def test_clients_of_many_startup_parameters_share_the_cap_and_all_get_served(start_sluice, pg,
                                                                             cap):
    """Each client has its own application_name and statement_timeout: every one waits for an
    idle backend of other parameters to close and its own to open, and the backends never pass
    the cap (pool_size, or max_db_connections)."""
    s = start_sluice(dict({"pool_mode": "session", "query_wait_timeout": 60}, **cap))
    results = {}

    def client(i):
        try:
            c = raw_login(s.port, application_name=f"app{i}",
                          options=f"-c statement_timeout={1001 + i}")
            try:
                rows = c.query("SELECT current_setting('application_name'),"
                               " current_setting('statement_timeout'), pg_sleep(0.05)")[0]
                c.query("RESET ALL")
                rows += c.query("SHOW statement_timeout")[0]
                results[i] = rows
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001 (reported below)
            results[i] = repr(e)

    with BackendSampler(pg) as sampler:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert results == {i: [[f"app{i}", f"{1001 + i}ms", ""], [f"{1001 + i}ms"]]
                       for i in range(8)}
    assert sampler.samples > 0 and sampler.max <= 2, sampler.history


def test_startup_values_with_spaces_and_backslashes_reach_the_backend_as_sent(start_sluice, pg):
    """options is split at spaces and a backslash escapes the next byte, both in the client's
    startup packet and in the one sluice sends (each value escaped again)."""
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    login = {"options": "-c app.z=back\\\\slash\\ and\\ space -c app.w=end\\\\",
             "application_name": "two words"}
    probe = ("SELECT current_setting('app.z'), current_setting('app.w'),"
             " current_setting('application_name')")
    direct = raw_login(pg.port, password=APP_PASSWORD, **login)
    pooled = raw_login(s.port, **login)
    try:
        want = direct.query(probe)[0]
        assert want == [["back\\slash and space", "end\\", "two words"]]
        assert pooled.query(probe)[0] == want
        pooled.query("RESET ALL")
        assert pooled.query(probe)[0] == want
    finally:
        direct.close()
        pooled.close()
