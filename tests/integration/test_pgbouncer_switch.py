"""A PgBouncer user switching to sluice: the same config and the same client actions, compared
with what PgBouncer (1.18 as packaged, its defaults as in 1.2x) shows a client and an operator.
Each test names what PgBouncer does; where sluice differs on purpose, docs/pgbouncer.md says so."""

import pytest

from pgwire import ServerError, raw_login


def ensure_roles(pg, statements):
    with pg.superuser() as c:
        for sql in statements:
            c.execute(sql)


@pytest.fixture
def lookup_roles(pg):
    """switch_lookup runs auth_query; switch_expired's password expired (VALID UNTIL in the
    past); switch_nologin may not log in."""
    ensure_roles(pg, [
        "DROP ROLE IF EXISTS switch_lookup", "DROP ROLE IF EXISTS switch_expired",
        "DROP ROLE IF EXISTS switch_nologin",
        "CREATE ROLE switch_lookup LOGIN SUPERUSER PASSWORD 'lookup-pw'",
        "CREATE ROLE switch_expired LOGIN PASSWORD 'expired-pw' VALID UNTIL '2001-01-01'",
        "CREATE ROLE switch_nologin NOLOGIN PASSWORD 'nologin-pw'",
    ])
    yield
    ensure_roles(pg, ["DROP ROLE IF EXISTS switch_lookup", "DROP ROLE IF EXISTS switch_expired",
                      "DROP ROLE IF EXISTS switch_nologin"])


def refused(port, **login):
    with pytest.raises(ServerError) as ei:
        raw_login(port, **login).close()
    return ei.value


# ---- auth_query's default query (PgBouncer's: expired passwords and NOLOGIN roles count as
# no password) ----

@pytest.mark.parametrize("method", ["md5", "scram-sha-256"])
def test_default_auth_query_refuses_an_expired_password_and_a_nologin_role(start_sluice, pg,
                                                                           lookup_roles, method):
    """The entry forces user=app, so nothing upstream checks the client's role: the default
    auth_query must (PgBouncer: password authentication failed). sluice's old default read
    pg_shadow, which returns an expired password, and let switch_expired in as app."""
    s = start_sluice({"auth_type": method, "auth_user": "switch_lookup"},
                     auth_file={"switch_lookup": "lookup-pw"})
    for user, password in (("switch_expired", "expired-pw"), ("switch_nologin", "nologin-pw")):
        err = refused(s.port, user=user, password=password)
        assert err.sqlstate == "28P01", err.fields
        assert err.fields["M"] == f'password authentication failed for user "{user}"'
    c = raw_login(s.port, user="switch_lookup", password="lookup-pw")
    try:
        assert c.query("SELECT current_user")[0] == [["app"]]
    finally:
        c.close()
