"""Refusals after authentication (issue 17: the application must not be able to tell sluice is
there). Postgres authenticates, sends AuthenticationOk, and only then finds in InitPostgres that
the database does not exist (3D000) or that a role's or database's CONNECTION LIMIT is reached
(53300): the client sees AuthenticationOk, then the FATAL ErrorResponse. sluice refuses an
unknown database, a DISABLEd one and its client caps after the password too, so it sends the same
sequence. The words differ on purpose (sluice names its own cause): message types and SQLSTATE
are compared."""

import pytest

from conftest import APP_PASSWORD
from pgwire import RawConn, recorded_login, startup_packet


def login(port, user, password, database):
    """The message types a client sees up to the end of its login (R split into the password
    request and AuthenticationOk), and the SQLSTATE it was refused with (None: logged in)."""
    c, seen, error = recorded_login(port, user=user, database=database, password=password)
    c.close()
    return seen, error.get("C") if error else None


@pytest.fixture
def limited(pg):
    """A role and a database, each with CONNECTION LIMIT 0."""
    with pg.superuser() as su:
        su.execute("DROP DATABASE IF EXISTS limited_db")
        su.execute("DROP ROLE IF EXISTS limited_role")
        su.execute("CREATE ROLE limited_role LOGIN PASSWORD 'limitedpass' CONNECTION LIMIT 0")
        su.execute("CREATE DATABASE limited_db CONNECTION LIMIT 0")
        su.execute("DROP ROLE IF EXISTS nologin_role")
        su.execute("CREATE ROLE nologin_role NOLOGIN PASSWORD 'nologinpass'")
    yield
    with pg.superuser() as su:
        su.execute("DROP DATABASE IF EXISTS limited_db")
        su.execute("DROP ROLE IF EXISTS limited_role")

def test_postgres_refuses_these_after_authentication_ok(pg, limited):
    """What sluice copies, measured: each refusal comes after AuthenticationOk."""
    after_ok = ["password asked", "auth ok", "E"]
    assert login(pg.port, "app", APP_PASSWORD, "no_such_db") == (after_ok, "3D000")
    assert login(pg.port, "limited_role", "limitedpass", "postgres") == (after_ok, "53300")
    assert login(pg.port, "app", APP_PASSWORD, "limited_db") == (after_ok, "53300")
    # a role that may not log in: what the admin console's refusal of a non-admin is like
    assert login(pg.port, "nologin_role", "nologinpass", "postgres") == (after_ok, "28000")


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_an_unknown_database_is_refused_after_authentication_ok_as_postgres_does(
        pg, start_sluice, mode):
    sluice = start_sluice({"pool_mode": mode}, auth_file={"app": APP_PASSWORD})
    want = login(pg.port, "app", APP_PASSWORD, "no_such_db")
    assert want == (["password asked", "auth ok", "E"], "3D000")
    assert login(sluice.port, "app", APP_PASSWORD, "no_such_db") == want


def test_a_client_cap_is_refused_after_authentication_ok(pg, start_sluice):
    """max_db_client_connections is what a database's CONNECTION LIMIT is to Postgres."""
    sluice = start_sluice({"max_db_client_connections": 1}, auth_file={"app": APP_PASSWORD})
    first = RawConn(sluice.port, timeout=30)
    try:
        first.send(startup_packet(user="app", database="appdb"))
        first.finish_login(user="app", password=APP_PASSWORD)
        assert login(sluice.port, "app", APP_PASSWORD, "appdb") == (
            ["password asked", "auth ok", "E"], "53300")
    finally:
        first.close()


def test_a_user_not_allowed_on_the_admin_console_is_refused_after_authentication_ok(
        pg, start_sluice):
    """Like a role Postgres does not let log in (28000 after AuthenticationOk): the console's
    42501 for a user in neither admin_users nor stats_users comes after the password too."""
    sluice = start_sluice({"admin_users": "someone_else"}, auth_file={"app": APP_PASSWORD})
    assert login(sluice.port, "app", APP_PASSWORD, "sluice") == (
        ["password asked", "auth ok", "E"], "42501")
