"""Startup options Postgres refuses (issue 17: the application must not be able to tell sluice is
there). Postgres accepts the startup packet, authenticates, checks the database, and only then
refuses options it cannot take (InitPostgres -> process_startup_options). A client of sluice
must see the same: the password asked for first, AuthenticationOk, then the same FATAL
ErrorResponse (S, V, C, M, H); a wrong password gives 28P01 whatever the options. Each case is
run against Postgres and through sluice, in session and transaction mode."""

import pytest

from conftest import APP_PASSWORD
from pgwire import recorded_login

REFUSED = ["-x 1", "stray", "-c app.a=1 -c", "-c app.x", "--app.x", "-c =1", "-capp.z=1 stray",
           "-c a b", "-c -x", "-xe", "-e -xe", "stray -x", "-f z", "-tq", "-S", "--app-a.b",
           "-c a/b=1", "-c app.a/b=1", "-- -c app.a=1", "-", "-B 10", "-c app.x=1 -x", "-e \\"]
# a backslash at the very end escapes nothing: Postgres drops it (sluice kept it, and 2MB\ is
# not a work_mem)
ACCEPTED = ["-e", "-S 2048", "-fs -c app.q=1", "--app.dash-name=yes", "--", "-E -T -n",
            "-capp.z=1 -- ", "-d 0", "-c work_mem=2MB\\"]
SHOWN = ["DateStyle", "work_mem", "enable_seqscan", "log_min_messages"]


AUTH_STEPS = ("password asked", "auth ok")


def login(port, options, password):
    """What a client sees: the authentication steps before the end of the login, and the
    error's fields (None when logged in, then the settings SHOWN)."""
    c, seen, error = recorded_login(port, password=password, options=options)
    try:
        steps = [t for t in seen if t in AUTH_STEPS]
        if error:
            return steps, {k: error.get(k) for k in ("S", "V", "C", "M", "H")}
        return steps, [c.query(f"SHOW {name}")[0] for name in SHOWN]
    finally:
        c.close()


@pytest.fixture(params=["session", "transaction"])
def sluice(request, start_sluice):
    return start_sluice({"pool_mode": request.param, "default_pool_size": 2},
                        auth_file={"app": APP_PASSWORD})


@pytest.mark.parametrize("options", REFUSED + ACCEPTED)
def test_options_are_refused_or_taken_exactly_as_postgres_does_after_authentication(
        sluice, pg, options):
    want = login(pg.port, options, APP_PASSWORD)
    if options in REFUSED:
        assert want[0] == ["password asked", "auth ok"] and want[1]["C"], want
    assert login(sluice.port, options, APP_PASSWORD) == want


@pytest.mark.parametrize("options", ["-x 1", "-c app.x", "-c =1", "stray"])
def test_a_wrong_password_is_told_whatever_the_options(sluice, pg, options):
    want = login(pg.port, options, "wrong")
    assert want[1]["C"] == "28P01", want
    got = login(sluice.port, options, "wrong")
    assert got[0] == want[0] and got[1]["C"] == "28P01", got


def login_with_parameter(port, name, password, options=None):
    """As login(), with a startup parameter of its own named name (and options, if given)."""
    params = {name: "1"}
    if options is not None:
        params["options"] = options
    c, seen, error = recorded_login(port, password=password, **params)
    try:
        steps = [t for t in seen if t in AUTH_STEPS]
        if error:
            return steps, {k: error.get(k) for k in ("S", "V", "C", "M", "H")}
        return steps, c.query("SELECT 1")[0]
    finally:
        c.close()


@pytest.mark.parametrize("name,options", [
    ("application-name", None), ("foo bar", None), ("my-app.x", None), ("app.a/b", None),
    ("app.a/b", "-x 1"), ("foo bar", "-c app.ok=1")])
def test_a_startup_parameter_name_postgres_refuses_is_refused_as_postgres_does(
        sluice, pg, name, options):
    """A parameter of its own with a name Postgres cannot take: Postgres accepts the startup
    packet, asks for the password, and refuses the name after AuthenticationOk (42704
    unrecognized, 42602 for a custom name), after anything in "options" it refused first.
    Before, sluice refused at once with 08P01 "invalid startup packet", before the password."""
    want = login_with_parameter(pg.port, name, APP_PASSWORD, options)
    assert want[0] == ["password asked", "auth ok"] and want[1]["C"], want
    assert login_with_parameter(sluice.port, name, APP_PASSWORD, options) == want
