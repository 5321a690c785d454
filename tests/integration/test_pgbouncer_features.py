"""PgBouncer keys its users rely on, with PgBouncer's names and meaning (issue 22, "PgBouncer
features its users rely on"): connect_query, server_check_query's default, server_fast_close,
query_wait_notify, replication connections."""

import psycopg
import pytest

from conftest import wait_until
from pgwire import ServerError, raw_login


# ---- connect_query: run once on each new server, before it serves ----

@pytest.mark.parametrize("login", ["libpq", "passthrough"])
def test_connect_query_runs_on_each_new_server_before_it_serves(start_sluice, pg, login):
    """PgBouncer's [databases] connect_query: every server runs it once after login, before any
    client gets it. Both of sluice's login paths: libpq (password in the entry) and the
    passthrough login (the client's own SCRAM proof, no password in the entry)."""
    entry = pg.db_entry(connect_query="SET work_mem = 3333", pool_size=2)
    main = {"pool_mode": "transaction", "log_level": "debug"}
    auth_file = None
    if login == "passthrough":
        del entry["password"]
        del entry["user"]
        main["auth_type"] = "scram-sha-256"
        auth_file = {"app": pg.stored_secret("app")}
    s = start_sluice(main, databases={"appdb": entry}, auth_file=auth_file)
    assert "connect_query" not in s.log_text(), s.log_text()
    with s.connect() as a, s.connect() as b:
        with a.transaction(), b.transaction():
            # both inside a transaction at once: two servers, each ran connect_query
            assert a.execute("SHOW work_mem").fetchone()[0] == "3333kB"
            assert b.execute("SHOW work_mem").fetchone()[0] == "3333kB"
            pids = {a.execute("SELECT pg_backend_pid()").fetchone()[0],
                    b.execute("SELECT pg_backend_pid()").fetchone()[0]}
    assert len(pids) == 2
    if login == "passthrough":
        s.wait_for_log(r'connecting \(passthrough login as "app"\)')


def test_connect_query_failure_closes_the_server_and_is_logged(start_sluice, pg):
    """A connect_query that fails leaves a server nobody should get: it is closed as a failed
    login (PgBouncer: "login failed"), logged with the server's message, and the client still
    logging in gets that reason instead of a server that skipped its setup."""
    entry = pg.db_entry(connect_query="SELECT 1/0")
    s = start_sluice({"pool_mode": "transaction", "query_wait_timeout": 5,
                      "server_login_retry": 1}, databases={"appdb": entry})
    with pytest.raises(ServerError) as ei:
        raw_login(s.port)
    assert "connect_query failed: division by zero" in ei.value.fields.get("M", ""), \
        ei.value.fields
    s.wait_for_log(r"connect_query failed: division by zero")
    # no server of that pool was left open in Postgres
    wait_until(lambda: pg.count_backends() == 0, 10, what="no backend left by the failed login")
