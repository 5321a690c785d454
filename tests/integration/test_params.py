"""Reported session parameters in transaction mode: a client's SET or startup value follows the
client from server to server, and never leaks to another client sharing the server."""

import pytest

from conftest import Background
from pgwire import raw_login


def show(conn, name):
    return conn.execute(f"SHOW {name}").fetchone()[0]


@pytest.fixture
def shared(start_sluice):
    """Transaction mode with one server: every client shares the same backend."""
    return start_sluice({"pool_mode": "transaction", "default_pool_size": 1})


def test_transaction_mode_datestyle_set_by_one_client_is_not_seen_by_another(shared):
    with shared.connect() as a, shared.connect() as b:
        default = show(b, "DateStyle")
        a.execute("SET DateStyle = 'German'")
        assert show(a, "DateStyle") == "German, DMY"
        assert show(b, "DateStyle") == default
        assert b.execute("SELECT '2024-03-05'::date::text").fetchone()[0] == "2024-03-05"
        assert show(a, "DateStyle") == "German, DMY", "A's SET was lost after B used the server"
        assert a.execute("SELECT '2024-03-05'::date::text").fetchone()[0] == "05.03.2024"
        assert a.info.parameter_status("DateStyle") == "German, DMY"
        assert b.info.parameter_status("DateStyle") == default


def test_transaction_mode_timezone_follows_each_client(shared):
    with shared.connect() as a, shared.connect() as b:
        default = show(b, "TimeZone")
        assert default != "Asia/Tokyo"
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        for _ in range(3):
            assert b.execute("SELECT current_setting('TimeZone')").fetchone()[0] == default
            assert a.execute("SELECT current_setting('TimeZone')").fetchone()[0] == "Asia/Tokyo"
        tokyo = a.execute("SELECT '2024-01-01 00:00+00'::timestamptz::text").fetchone()[0]
        assert tokyo == "2024-01-01 09:00:00+09", tokyo
        assert a.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert b.info.parameter_status("TimeZone") == default


def test_transaction_mode_application_name_from_startup_follows_each_client(shared, pg):
    with shared.connect(application_name="alpha") as a, \
            shared.connect(application_name="beta") as b:
        assert a.info.parameter_status("application_name") == "alpha"
        assert b.info.parameter_status("application_name") == "beta"
        for _ in range(3):
            assert show(a, "application_name") == "alpha"
            assert b.execute("SELECT current_setting('application_name')").fetchone()[0] == "beta"
        # the backend reports the running client's name while its query runs
        q = Background(lambda: a.execute("SELECT pg_sleep(1), current_setting('application_name')")
                       .fetchone())
        pids = pg.wait_for_active("app", "pg_sleep", timeout=10)
        names = [r[4] for r in pg.backends("app") if r[0] in pids]
        assert names == ["alpha"], names
        assert q.result(10)[1] == "alpha"


def test_transaction_mode_application_name_set_later_follows_the_client(shared):
    with shared.connect(application_name="alpha") as a, \
            shared.connect(application_name="beta") as b:
        a.execute("SET application_name = 'gamma'")
        assert show(b, "application_name") == "beta"
        assert show(a, "application_name") == "gamma"


def test_transaction_mode_intervalstyle_and_standard_conforming_strings_follow_each_client(shared):
    with shared.connect() as a, shared.connect() as b:
        a.execute("SET IntervalStyle = 'postgres_verbose'")
        a.execute("SET standard_conforming_strings = off")
        assert b.execute("SELECT '1 day'::interval::text").fetchone()[0] == "1 day"
        assert show(b, "standard_conforming_strings") == "on"
        assert a.execute("SELECT '1 day'::interval::text").fetchone()[0] == "@ 1 day"
        assert show(a, "standard_conforming_strings") == "off"


def test_transaction_mode_client_encoding_follows_each_client(shared):
    with shared.connect() as a, shared.connect() as b:
        a.execute("SET client_encoding = 'LATIN1'")
        assert show(b, "client_encoding") == "UTF8"
        assert b.execute("SELECT 'é'::text").fetchone()[0] == "é"
        assert show(a, "client_encoding") == "LATIN1"
        assert a.execute("SELECT 'é'::text").fetchone()[0] == "é"  # psycopg encodes as latin1


def test_transaction_mode_set_rolled_back_is_not_reapplied(shared):
    with shared.connect() as a, shared.connect() as b:
        default = show(a, "DateStyle")
        a.execute("BEGIN")
        a.execute("SET DateStyle = 'German'")
        a.execute("ROLLBACK")
        assert show(b, "DateStyle") == default
        assert show(a, "DateStyle") == default


def test_transaction_mode_startup_parameters_in_the_startup_packet_follow_each_client(shared):
    a = raw_login(shared.port, DateStyle="German, DMY", TimeZone="Asia/Tokyo")
    b = raw_login(shared.port)
    try:
        for _ in range(2):
            rows, _ = a.query("SELECT current_setting('DateStyle'), current_setting('TimeZone')")
            assert rows == [["German, DMY", "Asia/Tokyo"]]
            rows, _ = b.query("SELECT current_setting('DateStyle'), current_setting('TimeZone')")
            assert rows[0][0] != "German, DMY" and rows[0][1] != "Asia/Tokyo", rows
        assert a.params.get("DateStyle") == "German, DMY"
        assert a.params.get("TimeZone") == "Asia/Tokyo"
    finally:
        a.close()
        b.close()


def test_login_reports_the_server_parameters_a_driver_needs(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    c = raw_login(s.port, application_name="reporter")
    try:
        for name in ("server_version", "server_encoding", "client_encoding", "DateStyle",
                     "TimeZone", "integer_datetimes", "standard_conforming_strings",
                     "IntervalStyle", "application_name"):
            assert name in c.params, f"no ParameterStatus for {name} at login: {c.params}"
        assert c.params["application_name"] == "reporter"
        assert c.params["server_version"].startswith("15")
        assert c.params["client_encoding"] == "UTF8"
    finally:
        c.close()


def test_transaction_mode_settings_are_reapplied_when_the_client_moves_to_another_server(
        start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 3})
    holders = []
    with s.connect(application_name="mover") as a:
        a.execute("SET DateStyle = 'German'")
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        first = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        try:
            # take servers until one of the holders sits on A's server, so A must move
            for _ in range(2):
                h = s.connect()
                holders.append(h)
                h.execute("BEGIN")
                if h.execute("SELECT pg_backend_pid()").fetchone()[0] == first:
                    break
            else:
                pytest.fail("could not get a holder onto A's server")
            pid, ds, tz, app = a.execute(
                "SELECT pg_backend_pid(), current_setting('DateStyle'),"
                " current_setting('TimeZone'), current_setting('application_name')").fetchone()
            assert pid != first
            assert (ds, tz, app) == ("German, DMY", "Asia/Tokyo", "mover"), \
                "A's settings were not re-applied on the server it moved to"
            # and the holders, who never SET anything, do not see A's values
            for h in holders:
                assert h.execute("SHOW DateStyle").fetchone()[0] != "German, DMY"
        finally:
            for h in holders:
                h.close()
