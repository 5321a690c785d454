"""PgBouncer keys of issue 22 that sluice used to only warn about, against a real Postgres with
PgBouncer-style configs:

- transaction_timeout (PgBouncer 1.25): a client whose transaction, busy or idle, has been open
  longer is disconnected with FATAL 25P04 (Postgres 17's code for its own transaction_timeout)
  and the server is rolled back; main section, [databases] and [users], [users] over [databases]
  over the main section.
- auth_dbname per [databases] entry: the database entry auth_query runs on for clients of that
  entry, over the main section's auth_dbname.
"""

import time

import psycopg
import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER
from pgwire import PeerClosed, ServerError, query_msg, raw_login

APP_AUTH = {APP_USER: APP_PASSWORD}


def plain_entry(pg, **extra):
    """A [databases] entry that lets each client log in as itself (no forced user)."""
    e = {"host": "127.0.0.1", "port": pg.port, "dbname": APP_DB}
    e.update(extra)
    return e


def keep_transaction_busy(c, table, deadline_s):
    """Run short statements in the open transaction until the connection ends; the error it
    ended with (None: it was still open at the deadline)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            c.query(f"INSERT INTO {table} VALUES (1)")
        except ServerError as e:
            return e.fields
        except PeerClosed:
            return {}
        time.sleep(0.2)
    return None


# ---- transaction_timeout ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_transaction_timeout_ends_a_busy_transaction_with_25P04_and_rolls_it_back(
        start_sluice, pg, table):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "transaction_timeout": 2})
    assert "not supported" not in s.log_text()
    with s.connect() as setup:
        setup.execute(f"CREATE TABLE {table} (a int)")
    c = raw_login(s.port)
    try:
        c.query("BEGIN")
        t0 = time.monotonic()
        # never idle: idle_transaction_timeout would not fire, transaction_timeout must
        err = keep_transaction_busy(c, table, 20)
        assert err is not None, "the transaction outlived transaction_timeout"
        assert err.get("C") == "25P04", err
        assert "transaction_timeout" in err.get("M", ""), err
        assert time.monotonic() - t0 >= 1.5
        assert c.is_closed(3)
    finally:
        c.close()
    with s.connect() as other:  # the pool's one server, rolled back and reused
        assert other.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
        assert other.execute("SELECT now() = statement_timestamp()").fetchone()[0] is True


@pytest.mark.timeout(60)
def test_transaction_timeout_ends_a_long_statement_outside_a_transaction_block(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "transaction_timeout": 1})
    c = raw_login(s.port)
    try:
        t0 = time.monotonic()
        with pytest.raises(ServerError) as ei:
            c.query("SELECT pg_sleep(30)")
        assert ei.value.sqlstate == "25P04", ei.value.fields
        assert time.monotonic() - t0 < 20
    finally:
        c.close()
    with s.connect() as other:
        assert other.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.timeout(60)
def test_transaction_timeout_counts_each_transaction_not_the_session(start_sluice, pg):
    """Session mode: many short transactions over a session longer than the limit are fine."""
    s = start_sluice({"pool_mode": "session", "transaction_timeout": 1})
    with s.connect(autocommit=False) as c:
        end = time.monotonic() + 3.5
        while time.monotonic() < end:
            c.execute("SELECT pg_sleep(0.2)")  # psycopg opens a transaction: BEGIN first
            c.commit()
        assert c.execute("SELECT 2").fetchone()[0] == 2


@pytest.mark.timeout(60)
def test_transaction_timeout_counts_each_pipelined_request_on_its_own(start_sluice, pg):
    """Requests sent ahead of the replies: each one outside BEGIN is its own transaction, which
    starts when the one before it ends, not when it was sent."""
    s = start_sluice({"pool_mode": "transaction", "transaction_timeout": 1})
    c = raw_login(s.port)
    try:
        n = 10  # 10 x 0.3 s in one burst: 3 s in all, 0.3 s each
        c.send(b"".join(query_msg("SELECT pg_sleep(0.3)") for _ in range(n)))
        for _ in range(n):
            c.read_results()
        assert c.query("SELECT 1")[0] == [["1"]]
    finally:
        c.close()


@pytest.mark.timeout(60)
def test_transaction_timeout_per_database_over_main(start_sluice, pg):
    s = start_sluice(main={"pool_mode": "transaction", "transaction_timeout": 0},
                     auth_file=APP_AUTH,
                     databases={APP_DB: plain_entry(pg, transaction_timeout=1)})
    assert "not supported" not in s.log_text()
    with s.connect() as c:
        c.execute("BEGIN")
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT pg_sleep(30)")
        # (psycopg reports the FATAL as a lost connection, its message kept)
        assert "transaction_timeout" in str(ei.value), ei.value


@pytest.mark.timeout(60)
def test_transaction_timeout_per_user_over_database(start_sluice, pg):
    s = start_sluice(main={"pool_mode": "transaction", "transaction_timeout": 1},
                     auth_file=APP_AUTH,
                     databases={APP_DB: plain_entry(pg, transaction_timeout=1)},
                     users={APP_USER: {"transaction_timeout": 600}})
    assert "not supported" not in s.log_text()
    with s.connect() as c:
        c.execute("BEGIN")
        c.execute("SELECT pg_sleep(3)")
        c.execute("COMMIT")
        assert c.execute("SELECT 1").fetchone()[0] == 1


# ---- auth_dbname per [databases] entry ----------------------------------------------------------


@pytest.fixture
def lookup_roles(pg):
    """more_auth runs auth_query (may read pg_shadow); more_q is known only to Postgres."""
    with pg.superuser() as c:
        c.execute("CREATE ROLE more_auth LOGIN SUPERUSER PASSWORD 'authpass'")
        c.execute("SET password_encryption = 'scram-sha-256'")
        c.execute("CREATE ROLE more_q LOGIN PASSWORD 'qpass'")
    yield
    with pg.superuser() as c:
        for r in ("more_auth", "more_q"):
            c.execute(f"DROP ROLE IF EXISTS {r}")


@pytest.mark.timeout(60)
def test_auth_dbname_of_a_database_entry_beats_the_main_sections(start_sluice, pg, lookup_roles):
    def lookup_in(database):
        return fr'auth_query: looking up user "more_q" as "more_auth" in database "{database}"'

    # appdb's auth_query runs in the entry authdb names (the "postgres" database); other's in
    # the main section's (template1)
    s = start_sluice({"auth_type": "scram-sha-256", "auth_user": "more_auth",
                      "auth_dbname": "mainauth", "log_level": "debug"},
                     auth_file={"more_auth": "authpass"},
                     databases={APP_DB: pg.db_entry(auth_dbname="authdb"),
                                "other": pg.db_entry(),
                                "authdb": {"host": "127.0.0.1", "port": pg.port,
                                           "dbname": "postgres"},
                                "mainauth": {"host": "127.0.0.1", "port": pg.port,
                                             "dbname": "template1"}})
    assert "not supported" not in s.log_text()
    with s.connect(user="more_q", password="qpass") as c:
        assert c.execute("SELECT current_database()").fetchone()[0] == APP_DB
    s.wait_for_log(lookup_in("postgres"))
    with s.connect(dbname="other", user="more_q", password="qpass") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    s.wait_for_log(lookup_in("template1"))


# ---- auth_ident_file: cert rules with map= ------------------------------------------------------


@pytest.mark.timeout(90)
def test_auth_ident_file_maps_certificate_cns_to_user_names(start_sluice, pg, tmp_path):
    from certs import make_pki
    pki = make_pki(tmp_path / "pki", "ident", clients=("app",))
    hba = tmp_path / "hba.conf"
    hba.write_text("hostssl all all all cert map=certmap\n")
    ident = tmp_path / "ident.conf"
    # an exact name, and a regular expression whose \1 is the whole CN
    ident.write_text("# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n"
                     "certmap    app              reporting\n"
                     "certmap    /^(.*)$          \\1\n"
                     "othermap   app              admin\n")
    s = start_sluice({"auth_type": "hba", "auth_hba_file": str(hba),
                      "auth_ident_file": str(ident), "client_tls_sslmode": "require",
                      "client_tls_cert_file": str(pki.server_cert),
                      "client_tls_key_file": str(pki.server_key),
                      "client_tls_ca_file": str(pki.ca)},
                     auth_file=APP_AUTH, databases={APP_DB: pg.db_entry()})
    assert "not supported" not in s.log_text()
    cert = {"sslcert": str(pki.client_cert("app")), "sslkey": str(pki.client_key("app")),
            "sslmode": "require"}
    for user in ("reporting", "app"):  # the CN app maps to both
        with s.connect(user=user, password=None, **cert) as c:
            assert c.execute("SELECT 1").fetchone()[0] == 1
    # not mapped for this rule's map (othermap's line does not count)
    with pytest.raises(psycopg.OperationalError) as ei:
        s.connect(user="admin", password=None, **cert)
    assert 'certificate authentication failed for user "admin"' in str(ei.value)
    s.wait_for_log(r'CN "app" is not mapped to user "admin" by map "certmap"')
