"""Client authentication: every auth_type, SCRAM details (fake exchange for unknown users, the
derived secret cached per user, md5 falling back to SCRAM), auth_query against the real
Postgres, and auth_hba_file rules. TLS itself is test_tls.py's; here it only matters to hba."""

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import struct
import threading
import time

import psycopg
import pytest

from certs import make_pki
from conftest import APP_DB, APP_PASSWORD, pick_port, run_psql
from pgwire import RawConn, ScramClient, ServerError, message, parse_fields, raw_login, \
    startup_packet

USERS = {"app": "sluice-secret", "app2": "other-secret"}


def md5_secret(user, password):
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def scram_secret(password, salt=None, iterations=4096):
    """The pg_authid form, as Postgres computes it."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored = hashlib.sha256(client_key).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def auth_codes_and_error(port, user, password, database=APP_DB):
    """Log in by hand; returns (authentication request codes seen, error fields or None)."""
    c = RawConn(port)
    codes = []
    scram = None
    try:
        c.send(startup_packet(user=user, database=database))
        while True:
            mtype, payload = c.read_message()
            if mtype == "E":
                return codes, parse_fields(payload)
            if mtype == "Z":
                return codes, None
            if mtype != "R":
                continue
            (code,) = struct.unpack_from("!I", payload)
            codes.append(code)
            if code == 3:
                c.send(message(b"p", password.encode() + b"\0"))
            elif code == 5:
                inner = hashlib.md5((password + user).encode()).hexdigest()
                c.send(message(b"p", ("md5" + hashlib.md5(inner.encode() + payload[4:8])
                                      .hexdigest()).encode() + b"\0"))
            elif code == 10:
                scram = ScramClient(password)
                first = scram.client_first()
                c.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
            elif code == 11:
                c.send(message(b"p", scram.client_final(payload[4:])))
            elif code == 12:
                scram.verify_server_final(payload[4:])
    finally:
        c.close()


def scram_server_first(port, user):
    """The first half of a SCRAM exchange: (mechanisms offered, server-first attributes)."""
    c = RawConn(port)
    try:
        c.send(startup_packet(user=user))
        mtype, payload = c.read_message()
        assert mtype == "R" and struct.unpack_from("!I", payload)[0] == 10, (mtype, payload)
        mechs = [m.decode() for m in payload[4:].split(b"\0") if m]
        first = ScramClient("x").client_first()
        c.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
        mtype, payload = c.read_message()
        assert mtype == "R" and struct.unpack_from("!I", payload)[0] == 11, (mtype, payload)
        attrs = dict(kv.split("=", 1) for kv in payload[4:].decode().split(","))
        return mechs, attrs
    finally:
        c.close()


# ---- the methods --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["plain", "password", "md5", "scram-sha-256"])
def test_psql_and_psycopg_log_in_with_each_password_method(start_sluice, method):
    s = start_sluice({"auth_type": method}, auth_file=USERS)
    p = s.psql("SELECT current_user", password="sluice-secret")
    assert p.returncode == 0 and p.stdout.strip() == "app", p.stderr
    with s.connect(password="sluice-secret") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    with pytest.raises(psycopg.OperationalError) as ei:
        s.connect(password="nope")
    assert 'password authentication failed for user "app"' in str(ei.value)
    expected = {"plain": [3], "password": [3], "md5": [5], "scram-sha-256": [10, 11, 12]}[method]
    codes, err = auth_codes_and_error(s.port, "app", "sluice-secret")
    assert err is None and codes[:len(expected)] == expected, (codes, err)


@pytest.mark.parametrize("method", ["plain", "md5", "scram-sha-256"])
def test_an_unknown_user_fails_exactly_like_a_wrong_password(start_sluice, method):
    s = start_sluice({"auth_type": method}, auth_file=USERS)
    codes_wrong, wrong = auth_codes_and_error(s.port, "app", "not-it")
    codes_unknown, unknown = auth_codes_and_error(s.port, "nobody", "not-it")
    assert codes_wrong == codes_unknown  # the same exchange, to the end
    assert wrong["C"] == unknown["C"] == "28P01"
    assert wrong["M"] == 'password authentication failed for user "app"'
    assert unknown["M"] == 'password authentication failed for user "nobody"'
    assert {k: v for k, v in wrong.items() if k != "M"} == \
        {k: v for k, v in unknown.items() if k != "M"}


def test_an_unknown_user_gets_a_stable_fake_salt_and_a_real_user_a_cached_one(start_sluice):
    s = start_sluice({"auth_type": "scram-sha-256"}, auth_file=USERS)
    mechs, ghost1 = scram_server_first(s.port, "ghost")
    _, ghost2 = scram_server_first(s.port, "ghost")
    _, other = scram_server_first(s.port, "someone-else")
    _, app1 = scram_server_first(s.port, "app")
    _, app2 = scram_server_first(s.port, "app")
    assert mechs == ["SCRAM-SHA-256"]  # no TLS: no -PLUS
    assert ghost1["s"] == ghost2["s"] and ghost1["i"] == "4096"
    assert other["s"] != ghost1["s"]
    # app's password is plain in auth_file: its SCRAM secret (random salt) is derived once and
    # kept, so every login sees the same salt and none pays 4096 PBKDF2 rounds again
    assert app1["s"] == app2["s"] and app1["i"] == "4096"
    assert len(base64.b64decode(app1["s"])) == 16
    assert app1["r"] != app2["r"]  # but every exchange has its own nonce


def test_scram_iterations_sets_the_rounds_of_derived_and_fake_secrets_alike(start_sluice):
    """PgBouncer's scram_iterations was ignored with a warning: the derived secret kept 4096
    rounds. Now both a derived secret and an unknown user's fake one carry the configured count
    (were they different, the count would tell a real user from an unknown one), and the login
    works with it."""
    s = start_sluice({"auth_type": "scram-sha-256", "scram_iterations": 8192}, auth_file=USERS)
    _, app = scram_server_first(s.port, "app")
    _, ghost = scram_server_first(s.port, "ghost")
    assert app["i"] == ghost["i"] == "8192", (app, ghost)
    codes, err = auth_codes_and_error(s.port, "app", "sluice-secret")
    assert err is None and codes == [10, 11, 12, 0], (codes, err)


def test_many_scram_logins_stay_fast(start_sluice):
    """The cached secret keeps a login at a few HMACs on sluice's side: 100 logins, each also
    paying the client's own PBKDF2 in Python, finish well inside the time limit."""
    s = start_sluice({"auth_type": "scram-sha-256"}, auth_file=USERS)
    t0 = time.monotonic()
    for _ in range(100):
        codes, err = auth_codes_and_error(s.port, "app", "sluice-secret")
        assert err is None and codes == [10, 11, 12, 0]
    assert time.monotonic() - t0 < 20


def test_md5_auth_uses_scram_for_a_user_whose_secret_is_scram(start_sluice):
    s = start_sluice({"auth_type": "md5"},
                     auth_file={"app": scram_secret("sluice-secret"), "app2": "other-secret"})
    codes, err = auth_codes_and_error(s.port, "app", "sluice-secret")
    assert err is None and codes[:3] == [10, 11, 12], (codes, err)
    codes, err = auth_codes_and_error(s.port, "app2", "other-secret")
    assert err is None and codes[0] == 5
    p = s.psql("SELECT 'fell back'", password="sluice-secret")
    assert p.returncode == 0 and p.stdout.strip() == "fell back", p.stderr
    codes, err = auth_codes_and_error(s.port, "app", "wrong")
    assert err["C"] == "28P01"


def test_a_secret_postgres_stored_works_in_auth_file(start_sluice, pg):
    secret = pg.stored_secret("app")
    assert secret.startswith("SCRAM-SHA-256$")
    s = start_sluice({"auth_type": "scram-sha-256"}, auth_file={"app": secret})
    with s.connect(password=APP_PASSWORD) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_scram_auth_with_only_an_md5_secret_fails_like_a_wrong_password(start_sluice):
    s = start_sluice({"auth_type": "scram-sha-256"},
                     auth_file={"app": md5_secret("app", "sluice-secret")})
    codes, err = auth_codes_and_error(s.port, "app", "sluice-secret")
    assert codes == [10, 11] and err["C"] == "28P01"
    s.wait_for_log(r"md5 secret, which scram-sha-256 cannot use")


def test_plain_auth_checks_a_cleartext_password_against_a_scram_secret(start_sluice):
    s = start_sluice({"auth_type": "plain"}, auth_file={"app": scram_secret("sluice-secret")})
    codes, err = auth_codes_and_error(s.port, "app", "sluice-secret")
    assert err is None and codes == [3, 0]
    codes, err = auth_codes_and_error(s.port, "app", "Sluice-secret")
    assert err["C"] == "28P01"


def test_failed_logins_are_logged_without_secrets(start_sluice):
    s = start_sluice({"auth_type": "plain", "log_level": "debug"}, auth_file=USERS)
    for user in ("app", "nobody"):
        _, err = auth_codes_and_error(s.port, user, "hunter2-typo")
        assert err["C"] == "28P01"
    text = s.log_text()
    assert "login failed (plain): wrong password" in text
    assert "login failed (plain): no such user in auth_file" in text
    for secret in ("hunter2", "sluice-secret", "other-secret"):
        assert secret not in text


LOG_LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC \[\d+\] ")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_control_characters_in_client_strings_cannot_forge_log_lines(start_sluice, log_format):
    """A stranger's user name, database, application_name or options reach the log before any
    password is checked: a newline in them must not start a line of its own (a forged
    "login ok"), nor any other control character reach the log raw."""
    s = start_sluice({"auth_type": "plain", "log_level": "debug", "log_format": log_format},
                     auth_file=USERS)
    # short enough that a user or database name carrying it stays whole: sluice cuts those at
    # 63 bytes, as Postgres does
    forged = "\n2026-01-01 00:00:00.000 UTC [1] LOG login ok FORGED\r\x1b[2K"
    attempts = [
        {"user": "nobody" + forged, "password": "x"},
        {"user": "app", "password": "sluice-secret", "application_name": "web" + forged},
        {"user": "app", "password": "sluice-secret", "options": "-c search_path=a" + forged},
        {"user": "app", "password": "sluice-secret", "database": APP_DB + forged},
    ]
    for a in attempts:
        try:
            raw_login(s.port, **a).close()
        except ServerError:
            pass
    lines = [line for line in s.log if "FORGED" in line]
    assert len(lines) >= len(attempts) - 1, s.log_tail(40)
    for line in s.log:
        if log_format == "text":
            assert LOG_LINE_START.match(line) or not line.strip() or line.startswith(
                ("warning: ", "error: ")), f"a line sluice did not start: {line!r}"
        else:
            if line.startswith("{"):
                json.loads(line)
        assert "\x1b" not in line and "\r" not in line, f"raw control character: {line!r}"


def test_a_scram_message_out_of_order_is_a_protocol_violation(start_sluice):
    s = start_sluice({"auth_type": "scram-sha-256"}, auth_file=USERS)
    c = RawConn(s.port)
    try:
        c.send(startup_packet())
        mtype, _ = c.read_message()
        assert mtype == "R"
        c.send(message(b"p", b"SCRAM-SHA-1\0" + struct.pack("!i", 3) + b"n,,"))
        err = c.expect_error()
        assert err["C"] == "08P01"
        assert "invalid SASL authentication mechanism" in err["M"]
    finally:
        c.close()


# ---- auth_query ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_roles(pg):
    """sluice_auth may read pg_shadow; qscram has a SCRAM password, qmd5 an md5 one."""
    with pg.superuser() as c:
        c.execute("CREATE ROLE sluice_auth LOGIN SUPERUSER PASSWORD 'authpass'")
        c.execute("SET password_encryption = 'scram-sha-256'")
        c.execute("CREATE ROLE qscram LOGIN PASSWORD 'qpass'")
        c.execute("SET password_encryption = 'md5'")
        c.execute("CREATE ROLE qmd5 LOGIN PASSWORD 'qpass5'")
        c.execute("CREATE ROLE qnopass LOGIN")
    yield
    with pg.superuser() as c:
        for r in ("sluice_auth", "qscram", "qmd5", "qnopass"):
            c.execute(f"DROP ROLE IF EXISTS {r}")


def auth_query_sluice(start_sluice, pg, method="scram-sha-256", **main):
    m = {"auth_type": method, "auth_user": "sluice_auth", "log_level": "debug"}
    m.update(main)
    # the [databases] entry logs in upstream as app: auth_query only checks the client
    return start_sluice(m, auth_file={"sluice_auth": "authpass"},
                        databases={APP_DB: pg.db_entry()})


def test_auth_query_logs_in_a_user_missing_from_auth_file(start_sluice, pg, auth_roles):
    s = auth_query_sluice(start_sluice, pg)
    with s.connect(user="qscram", password="qpass") as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "app"
    p = run_psql(s.port, "SELECT 'psql via auth_query'", user="qscram", password="qpass")
    assert p.returncode == 0 and p.stdout.strip() == "psql via auth_query", p.stderr
    # asked at every login, as PgBouncer does (before 2026-12: once, then a 60 s cache that let
    # an old password in after ALTER ROLE)
    s.wait_for_log(r'auth_query: looking up user "qscram"')
    lookups = [line for line in s.log if 'auth_query: looking up user "qscram"' in line]
    assert len(lookups) == 2, lookups
    _, wrong = auth_codes_and_error(s.port, "qscram", "nope")
    _, ghost = auth_codes_and_error(s.port, "ghost", "nope")
    _, nopass = auth_codes_and_error(s.port, "qnopass", "nope")
    assert wrong["C"] == ghost["C"] == nopass["C"] == "28P01"
    assert ghost["M"] == 'password authentication failed for user "ghost"'


def test_auth_query_md5_secret_with_md5_auth_and_scram_secret_switching(start_sluice, pg,
                                                                        auth_roles):
    s = auth_query_sluice(start_sluice, pg, method="md5")
    codes, err = auth_codes_and_error(s.port, "qmd5", "qpass5")
    assert err is None and codes[0] == 5, (codes, err)
    codes, err = auth_codes_and_error(s.port, "qscram", "qpass")
    assert err is None and codes[:3] == [10, 11, 12], (codes, err)
    with s.connect(user="qmd5", password="qpass5") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_a_password_in_clear_from_auth_query_costs_one_lookup_per_login(start_sluice, pg,
                                                                        auth_roles):
    """An auth_query that returns a password in clear, for a SCRAM login: sluice derives the
    SCRAM secret off the loop, then went back to auth_query for the answer it had just had
    (two lookups a login, once no answer was kept)."""
    s = auth_query_sluice(start_sluice, pg, workers=1,
                          auth_query="SELECT $1::text, 'clearpw'::text WHERE $1 = 'qclear'")
    for _ in range(2):
        with s.connect(user="qclear", password="clearpw") as c:
            assert c.execute("SELECT current_user").fetchone()[0] == "app"
    s.wait_for_log(r'auth_query: user "qclear" found')
    lookups = [line for line in s.log if 'auth_query: looking up user "qclear"' in line]
    assert len(lookups) == 2, lookups


# The default auth_query, made to take 1 s: logins that arrive meanwhile find it in flight.
SLOW_AUTH_QUERY = ("SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword "
                   "END FROM pg_authid WHERE rolname=$1 AND rolcanlogin AND "
                   "pg_sleep(1) IS NOT NULL")


def test_concurrent_logins_share_one_auth_query(start_sluice, pg, auth_roles):
    """Logins of one user that arrive while its lookup runs share it (single-flight). The
    lookup is slow so that all of them arrive while it runs: with no answer kept after it
    (every login asks), the old 1..2 bound relied on a cache for the late ones. One worker:
    each worker runs its own lookups."""
    s = auth_query_sluice(start_sluice, pg, auth_query=SLOW_AUTH_QUERY, workers=1)
    errors = []

    def login():
        try:
            with s.connect(user="qscram", password="qpass") as c:
                c.execute("SELECT 1")
        except Exception as e:  # noqa: BLE001 - checked below
            errors.append(e)

    threads = [threading.Thread(target=login) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    s.wait_for_log(r'auth_query: looking up user "qscram"')
    lookups = [line for line in s.log if 'auth_query: looking up user "qscram"' in line]
    assert 1 <= len(lookups) <= 2, lookups


def test_auth_dbname_names_the_entry_auth_query_runs_on(start_sluice, pg, auth_roles):
    s = start_sluice({"auth_type": "scram-sha-256", "auth_user": "sluice_auth",
                      "auth_dbname": "authdb", "log_level": "debug"},
                     auth_file={"sluice_auth": "authpass"},
                     databases={APP_DB: pg.db_entry(),
                                "authdb": {"host": "127.0.0.1", "port": pg.port,
                                           "dbname": "postgres"}})
    with s.connect(user="qscram", password="qpass") as c:
        assert c.execute("SELECT current_database()").fetchone()[0] == APP_DB
    s.wait_for_log(r'auth_query: looking up user "qscram" as "sluice_auth" in database '
                   r'"postgres"')


def test_a_database_entrys_auth_query_is_its_clients_lookup(start_sluice, pg, auth_roles):
    """PgBouncer >= 1.23's [databases] auth_query was ignored with a warning, so the entry's
    clients were checked with the main section's query: here a lookup meant to admit only
    superusers let any role with a password in. Now the entry's query is its clients' lookup,
    and the other entries keep the main section's; the two never share an answer."""
    strict = pg.db_entry(auth_query="SELECT usename, passwd FROM pg_shadow "
                                    "WHERE usename=$1 AND usesuper")
    s = start_sluice({"auth_type": "scram-sha-256", "auth_user": "sluice_auth",
                      "log_level": "debug"},
                     auth_file={"sluice_auth": "authpass"},
                     databases={APP_DB: pg.db_entry(), "strictdb": strict})
    with s.connect(user="qscram", password="qpass") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    _, err = auth_codes_and_error(s.port, "qscram", "qpass", database="strictdb")
    assert err["C"] == "28P01", err
    with s.connect(user="qscram", password="qpass") as c:  # still admitted where it was
        assert c.execute("SELECT 1").fetchone()[0] == 1
    with s.connect(dbname="strictdb", user="sluice_auth", password="authpass") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    assert "not supported" not in s.log_text()


def test_a_failing_auth_query_is_reported_and_logged(start_sluice, pg, auth_roles):
    s = start_sluice({"auth_type": "scram-sha-256", "auth_user": "sluice_auth"},
                     auth_file={"sluice_auth": "wrong-authpass"},
                     databases={APP_DB: pg.db_entry()})
    _, err = auth_codes_and_error(s.port, "qscram", "qpass")
    assert err["C"] == "08006"
    assert "password lookup (auth_query) failed" in err["M"]
    s.wait_for_log(r'auth_query for user "qscram" failed: .*password authentication failed '
                   r'for user "sluice_auth"')
    assert "wrong-authpass" not in s.log_text()



def test_an_auth_query_that_fails_before_any_io_is_reported(start_sluice, pg, auth_roles):
    """libpq refuses the entry's ports at once (two for one host: sluice's load takes a list, as
    libpq does, and leaves matching it to the hosts to libpq), inside the login's own lookup
    request: the answer comes back before the lookup call returns, and the login still gets the
    same 08006."""
    s = start_sluice({"auth_type": "scram-sha-256", "auth_user": "sluice_auth",
                      "auth_dbname": "authdb"},
                     auth_file={"sluice_auth": "authpass"},
                     databases={APP_DB: pg.db_entry(),
                                "authdb": {"host": "127.0.0.1", "port": "1,2",
                                           "dbname": "postgres"}})
    for _ in range(2):  # and again, with nothing left behind by the first
        _, err = auth_codes_and_error(s.port, "qscram", "qpass")
        assert err["C"] == "08006", err
        assert "password lookup (auth_query) failed" in err["M"]
    s.wait_for_log(r'auth_query for user "qscram" failed')
    with s.connect(user="sluice_auth", password="authpass") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1

def test_an_auth_query_that_returns_several_rows_fails_closed(start_sluice, pg, auth_roles):
    """An auth_query that compares the name with LIKE answers the made-up name "q%" with every
    q* role. Postgres refuses "q%" (no such role, 28P01); sluice took the first row's secret,
    and "q%" logged in with qscram's password. Now more than one row is auth_query's error:
    the login gets 08006 and the log says what to change."""
    s = auth_query_sluice(start_sluice, pg, auth_query="SELECT usename, passwd FROM pg_shadow "
                                                       "WHERE usename LIKE $1 ORDER BY usename DESC")
    _, direct = auth_codes_and_error(pg.port, "q%", "qpass")
    assert direct["C"] == "28P01", direct
    _, err = auth_codes_and_error(s.port, "q%", "qpass")
    assert err is not None and err["C"] == "08006", err
    assert "password lookup (auth_query) failed" in err["M"]
    s.wait_for_log(r'auth_query for user "q%" failed: auth_query returned 3 rows')
    codes, err = auth_codes_and_error(s.port, "qscram", "qpass")  # one row: as before
    assert err is None, err

def test_an_auth_query_row_for_another_name_fails_closed(start_sluice, pg, auth_roles):
    """The same LIKE query answers the made-up name "qscra_" with qscram's row alone. Postgres
    refuses "qscra_" (28P01); sluice took that row's password, and "qscra_" logged in with
    qscram's. Now a row whose name is not the client's is auth_query's error (08006)."""
    s = auth_query_sluice(start_sluice, pg, auth_query="SELECT usename, passwd FROM pg_shadow "
                                                       "WHERE usename LIKE $1")
    _, direct = auth_codes_and_error(pg.port, "qscra_", "qpass")
    assert direct["C"] == "28P01", direct
    _, err = auth_codes_and_error(s.port, "qscra_", "qpass")
    assert err is not None and err["C"] == "08006", err
    s.wait_for_log(r'auth_query for user "qscra_" failed: auth_query returned the row of user '
                   r'"qscram"')
    _, err = auth_codes_and_error(s.port, "qscram", "qpass")  # its own row: as before
    assert err is None, err

def test_an_auth_query_error_is_never_taken_for_no_such_user(start_sluice, pg, auth_roles):
    """An auth_query that fails as it runs (here a division by zero; a statement_timeout or a
    lock timeout alike): the server sends its ErrorResponse at once and its ReadyForQuery
    after, often read apart. Before, sluice forgot the error between the two reads and took
    the lookup for "no such user": the login got 28P01 (a wrong password, said to a real user)
    and the name was remembered as unknown, with no word of the failure in the log. Now every
    such login gets 08006 and the log names the error."""
    s = auth_query_sluice(start_sluice, pg,
                          auth_query="SELECT usename, passwd FROM pg_shadow "
                                     "WHERE usename = $1 AND 1 / (length($1) - length($1)) = 1")
    codes = []
    # whether the two come in one read is the connection's luck: a reload between rounds
    # closes the idle lookup connection, so each round has a new one
    for rnd in range(5):
        mark = s.mark()
        s.send_signal(signal.SIGHUP)
        s.wait_for_log(r"configuration reloaded", since=mark)
        for i in range(3):
            _, err = auth_codes_and_error(s.port, f"qerr_{rnd}_{i}", "qpass")
            codes.append(err and err["C"])
    _, err = auth_codes_and_error(s.port, "qscram", "qpass")
    codes.append(err and err["C"])
    assert codes == ["08006"] * 16, codes
    assert sum("failed: ERROR:  division by zero" in line for line in s.log) == 16, \
        s.log_tail(10)


def test_a_name_cut_inside_a_character_is_an_unknown_user_as_on_postgres(start_sluice, pg,
                                                                          auth_roles):
    """A 64-byte name whose last character is two bytes: Postgres cuts it at 63 bytes, inside
    that character, finds no such role and answers 28P01. Before, auth_query sent the cut name
    as its parameter, the server refused its bytes (22021, invalid byte sequence), and the
    client got 08006 'the password lookup failed' with a WARNING in sluice's log at each try,
    never remembered as unknown. Now such a name is no such user, as on Postgres."""
    s = auth_query_sluice(start_sluice, pg)
    user = "a" * 62 + "\u00e9"  # 62 + 2 bytes in UTF-8: the cut leaves half of the e-acute
    _, direct = auth_codes_and_error(pg.port, user, "qpass")
    assert direct["C"] == "28P01", direct
    mark = s.mark()
    for _ in range(2):
        _, err = auth_codes_and_error(s.port, user, "qpass")
        assert err is not None and err["C"] == "28P01", err
    assert not any("auth_query for user" in line and "failed" in line
                   for line in s.log_since(mark)), s.log_tail(10)
    # remembered as unknown: the second try ran no lookup
    assert sum("auth_query: looking up user" in line for line in s.log_since(mark)) == 1, \
        s.log_tail(10)


# ---- auth passthrough: logging in upstream without the password ---------------------------------


def passthrough_entry(pg, **extra):
    """A [databases] entry with no user and no password: sluice logs in as the client."""
    e = {"host": "127.0.0.1", "port": pg.port, "dbname": APP_DB}
    e.update(extra)
    return e


def upstream_users(pg):
    return {r[0] for r in pg.query("SELECT usename FROM pg_stat_activity "
                                   f"WHERE datname = '{APP_DB}' AND pid <> pg_backend_pid()")}


def test_auth_query_scram_user_logs_in_upstream_with_the_keys_its_client_proved(
        start_sluice, pg, auth_roles):
    """sluice knows qscram only by its SCRAM secret (from auth_query): libpq could not log in
    with that. The ClientKey the client proved opens the upstream login instead."""
    s = start_sluice({"auth_type": "scram-sha-256", "auth_user": "sluice_auth",
                      "pool_mode": "transaction", "log_level": "debug"},
                     auth_file={"sluice_auth": "authpass"},
                     databases={APP_DB: passthrough_entry(pg)})
    with s.connect(user="qscram", password="qpass") as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "qscram"
        assert "qscram" in upstream_users(pg)
    s.wait_for_log(r'connecting \(passthrough login as "qscram"\)')
    p = run_psql(s.port, "SELECT session_user", user="qscram", password="qpass")
    assert p.returncode == 0 and p.stdout.strip() == "qscram", p.stderr
    # a wrong password still fails at sluice, like any other
    _, err = auth_codes_and_error(s.port, "qscram", "not-qpass")
    assert err["C"] == "28P01"


def test_passthrough_login_to_a_host_name_resolved_off_the_loop(start_sluice, pg, auth_roles):
    """host=localhost: server.c resolves it (resolver.c) and sluice's own login connects to the
    address (issue 18 item 10)."""
    s = start_sluice({"auth_type": "scram-sha-256", "log_level": "debug"},
                     auth_file={"qscram": pg.stored_secret("qscram")},
                     databases={APP_DB: passthrough_entry(pg, host="localhost")})
    with s.connect(user="qscram", password="qpass") as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "qscram"
    s.wait_for_log(r"resolving the host name off the loop")
    s.wait_for_log(r'connecting \(passthrough login as "qscram"\)')


def test_auth_file_scram_secret_passthrough_and_cancel(start_sluice, pg, auth_roles):
    """A SCRAM secret copied from pg_authid into auth_file: the client logs in, sluice logs in
    upstream with the client's keys, and a CancelRequest reaches that backend (sluice sends it
    itself: the login was not libpq's)."""
    secret = pg.stored_secret("qscram")
    assert secret.startswith("SCRAM-SHA-256$")
    s = start_sluice({"auth_type": "scram-sha-256", "pool_mode": "transaction",
                      "admin_users": "qscram"},
                     auth_file={"qscram": secret},
                     databases={APP_DB: passthrough_entry(pg)})
    with s.connect(user="qscram", password="qpass") as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "qscram"
        t0 = time.monotonic()
        timer = threading.Timer(0.5, c.cancel)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("SELECT pg_sleep(20)")
        timer.join()
        assert time.monotonic() - t0 < 10
        assert c.execute("SELECT 2").fetchone()[0] == 2
    # SHOW SERVERS names where a passthrough login connected, as for libpq's
    with s.connect(dbname="sluice", user="qscram", password="qpass") as admin:
        rows = admin.execute("SHOW SERVERS").fetchall()
        cols = [d.name for d in admin.cursor().execute("SHOW SERVERS").description]
    rows = [dict(zip(cols, r)) for r in rows]
    assert rows and all(r["addr"] == "127.0.0.1" and r["port"] == pg.port for r in rows), rows


def test_passthrough_sslmode_require_is_refused_without_tls_and_prefer_goes_on(
        start_sluice, pg, auth_roles):
    """sslmode=require towards a server without TLS fails with libpq's words; prefer goes on
    without TLS. (The TLS case itself is in test_tls.py.)"""
    secret = pg.stored_secret("qscram")
    s = start_sluice({"auth_type": "scram-sha-256"}, auth_file={"qscram": secret},
                     databases={APP_DB: passthrough_entry(pg, sslmode="require"),
                                "preferdb": passthrough_entry(pg, sslmode="prefer")})
    with pytest.raises(psycopg.OperationalError) as ei:
        s.connect(user="qscram", password="qpass")
    assert "server does not support SSL, but SSL was required" in str(ei.value)
    with s.connect(dbname="preferdb", user="qscram", password="qpass") as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "qscram"


def test_passthrough_to_a_server_that_is_not_there_fails_fast_with_the_reason(
        start_sluice, pg, auth_roles):
    secret = pg.stored_secret("qscram")
    s = start_sluice({"auth_type": "scram-sha-256", "query_wait_timeout": 10},
                     auth_file={"qscram": secret},
                     databases={APP_DB: passthrough_entry(pg, port=pick_port()),
                                "named": passthrough_entry(pg, host="no-such-host.invalid")})
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as ei:
        s.connect(user="qscram", password="qpass")
    assert "could not connect to server" in str(ei.value), str(ei.value)
    with pytest.raises(psycopg.OperationalError) as ei:
        s.connect(dbname="named", user="qscram", password="qpass")
    assert "could not translate host name" in str(ei.value), str(ei.value)
    assert time.monotonic() - t0 < 8
    assert s.alive()


def test_passthrough_login_reads_max_connections_for_percent_caps(start_sluice, pg, auth_roles):
    """A NN% cap needs the server's max_connections: sluice's own login reads it too, before the
    server is handed out."""
    with pg.superuser() as su:
        usable = (int(su.execute("SHOW max_connections").fetchone()[0]) -
                  int(su.execute("SHOW superuser_reserved_connections").fetchone()[0]))
    secret = pg.stored_secret("qscram")
    s = start_sluice({"auth_type": "scram-sha-256", "max_db_connections": "50%",
                      "log_level": "debug"},
                     auth_file={"qscram": secret},
                     databases={APP_DB: passthrough_entry(pg)})
    with s.connect(user="qscram", password="qpass") as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "qscram"
    s.wait_for_log(r'connecting \(passthrough login as "qscram"\)')
    s.wait_for_log(rf"server allows {usable} connections besides superuser_reserved_connections")


@pytest.mark.timeout(30)
def test_passthrough_login_to_a_server_that_never_answers_times_out(start_sluice, pg, auth_roles):
    """sluice's own login obeys server_connect_timeout like libpq's: a socket that accepts and
    says nothing (stuck in the SSLRequest, then in the startup) fails the client in time."""
    import socket
    secret = pg.stored_secret("qscram")
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(16)
    try:
        port = black_hole.getsockname()[1]
        s = start_sluice({"auth_type": "scram-sha-256", "server_connect_timeout": 1,
                          "query_wait_timeout": 10},
                         auth_file={"qscram": secret},
                         databases={APP_DB: passthrough_entry(pg, port=port, sslmode="prefer"),
                                    "plain": passthrough_entry(pg, port=port,
                                                               sslmode="disable")})
        for db in (APP_DB, "plain"):
            t0 = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as ei:
                s.connect(dbname=db, user="qscram", password="qpass")
            assert time.monotonic() - t0 < 5
            assert "server_connect_timeout" in str(ei.value), ei.value
        assert s.alive()
    finally:
        black_hole.close()


def test_md5_secret_passthrough(start_sluice, pg, auth_roles):
    """qmd5's md5 secret (from auth_query) answers the server's md5 challenge."""
    hba = pg.data / "pg_hba.conf"
    before = hba.read_text()
    hba.write_text("host all qmd5 127.0.0.1/32 md5\n" + before)
    pg.query("SELECT pg_reload_conf()")
    try:
        s = start_sluice({"auth_type": "md5", "auth_user": "sluice_auth"},
                         auth_file={"sluice_auth": "authpass"},
                         databases={APP_DB: passthrough_entry(pg)})
        with s.connect(user="qmd5", password="qpass5") as c:
            assert c.execute("SELECT current_user").fetchone()[0] == "qmd5"
    finally:
        hba.write_text(before)
        pg.query("SELECT pg_reload_conf()")


def test_passthrough_after_the_password_changed_upstream_says_why(start_sluice, pg):
    """auth_file still holds the old SCRAM secret; the server has a new one (another salt): the
    client passes sluice's check with the old password, the upstream login cannot, and the
    client is told why instead of hanging."""
    with pg.superuser() as c:
        c.execute("SET password_encryption = 'scram-sha-256'")
        c.execute("CREATE ROLE qchanged LOGIN PASSWORD 'oldpass'")
    try:
        old = pg.stored_secret("qchanged")
        with pg.superuser() as c:
            c.execute("SET password_encryption = 'scram-sha-256'")
            c.execute("ALTER ROLE qchanged PASSWORD 'newpass'")
        s = start_sluice({"auth_type": "scram-sha-256", "query_wait_timeout": 5},
                         auth_file={"qchanged": old},
                         databases={APP_DB: passthrough_entry(pg)})
        with pytest.raises(psycopg.OperationalError) as ei:
            s.connect(user="qchanged", password="oldpass")
        assert "not the one sluice holds" in str(ei.value), str(ei.value)
        assert "qchanged" not in upstream_users(pg)
    finally:
        pg.clear_backends("qchanged")
        with pg.superuser() as c:
            c.execute("DROP ROLE IF EXISTS qchanged")


# ---- auth_hba_file --------------------------------------------------------------------------------


def hba_sluice(start_sluice, pg, tmp_path, rules, **main):
    hba = tmp_path / "hba.conf"
    hba.write_text(rules)
    m = {"auth_type": "hba", "auth_hba_file": str(hba)}
    m.update(main)
    dbs = {APP_DB: pg.db_entry(), "otherdb": pg.db_entry()}
    return start_sluice(m, auth_file=USERS, databases=dbs), hba


def test_hba_rules_choose_the_method_and_reject(start_sluice, pg, tmp_path):
    s, _ = hba_sluice(start_sluice, pg, tmp_path,
                      "host appdb app2 127.0.0.1/32 reject\n"
                      "host appdb app 10.0.0.0/8 trust\n"
                      "host appdb app 127.0.0.0/8 scram-sha-256\n")
    codes, err = auth_codes_and_error(s.port, "app", "sluice-secret")
    assert err is None and codes[0] == 10, (codes, err)  # the 127.0.0.0/8 rule, not 10/8 trust
    _, err = auth_codes_and_error(s.port, "app2", "other-secret")
    assert err["C"] == "28000"
    assert err["M"] == ("hba rule rejects the connection: host=127.0.0.1 user=app2 "
                        "database=appdb, TLS off")
    _, err = auth_codes_and_error(s.port, "app", "sluice-secret", database="otherdb")
    assert err["C"] == "28000"
    assert err["M"] == ("no hba rule matches: host=127.0.0.1 user=app database=otherdb, "
                        "TLS off")
    s.wait_for_log(r"auth_hba_file line 1 rejects the login")


def test_hba_hostssl_hostnossl_and_cert(start_sluice, pg, tmp_path):
    pki = make_pki(tmp_path / "pki", "hba", clients=("app",))
    s, _ = hba_sluice(start_sluice, pg, tmp_path,
                      "hostnossl all app all reject\n"
                      "hostssl appdb app all md5\n"
                      "hostssl otherdb app all cert\n"
                      "host all app2 127.0.0.1/32 trust\n",
                      client_tls_sslmode="prefer", client_tls_cert_file=str(pki.server_cert),
                      client_tls_key_file=str(pki.server_key), client_tls_ca_file=str(pki.ca))
    with pytest.raises(psycopg.OperationalError) as ei:
        s.connect(password="sluice-secret", sslmode="disable")
    assert "hba rule rejects the connection" in str(ei.value) and "TLS off" in str(ei.value)
    with s.connect(password="sluice-secret", sslmode="require") as c:
        assert c.pgconn.ssl_in_use
    with s.connect(password=None, sslmode="disable", user="app2") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    cert = {"sslcert": str(pki.client_cert("app")), "sslkey": str(pki.client_key("app"))}
    with s.connect(password=None, dbname="otherdb", sslmode="require", **cert) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    with pytest.raises(psycopg.OperationalError) as ei:
        s.connect(password=None, dbname="otherdb", sslmode="require")
    assert 'certificate authentication failed for user "app"' in str(ei.value)


def test_hba_file_is_read_again_on_reload(start_sluice, pg, tmp_path):
    s, hba = hba_sluice(start_sluice, pg, tmp_path, "host all all all reject\n")
    _, err = auth_codes_and_error(s.port, "app", "sluice-secret")
    assert err["C"] == "28000"
    hba.write_text("host all all 127.0.0.1/32 md5\n")
    mark = s.mark()
    s.send_signal(signal.SIGHUP)
    s.wait_for_log(r"reload: auth_hba_file .*: 1 rules", since=mark)
    codes, err = auth_codes_and_error(s.port, "app", "sluice-secret")
    assert err is None and codes[0] == 5
    # a broken file keeps the rules in force
    hba.write_text("host all all 127.0.0.1/32 ident\n")
    mark = s.mark()
    s.send_signal(signal.SIGHUP)
    s.wait_for_log(r"keeping the previous auth_hba_file rules", since=mark)
    codes, err = auth_codes_and_error(s.port, "app", "sluice-secret")
    assert err is None and codes[0] == 5


def test_a_broken_hba_file_stops_sluice_from_starting(start_sluice, pg, tmp_path):
    hba = tmp_path / "hba.conf"
    hba.write_text("# fine\nhost all all 10.0.0.0/8 md5\nhost all all everywhere md5\n")
    s = start_sluice({"auth_type": "hba", "auth_hba_file": str(hba)}, auth_file=USERS,
                     wait=False)
    s.expected_exit_codes = (1,)
    assert s.wait_exit(10) == 1
    assert any("line 3" in line and "everywhere" in line for line in s.log), s.log_tail()


def test_admin_users_still_need_their_password(start_sluice):
    s = start_sluice({"auth_type": "scram-sha-256", "admin_users": "app"}, auth_file=USERS)
    with pytest.raises(ServerError) as ei:
        raw_login(s.port, database="sluice", password="wrong")
    assert ei.value.sqlstate == "28P01"



@pytest.mark.parametrize("method", ["md5", "scram-sha-256"])
def test_the_admin_console_does_not_tell_which_names_are_admins(start_sluice, method):
    """Before the password is checked, a name in admin_users/stats_users, a known user who is
    neither and a name nobody has must all be asked for a password and refused alike: otherwise
    a stranger enumerates the admin names. Only a user who proved the password learns 42501."""
    s = start_sluice({"auth_type": method, "admin_users": "app"}, auth_file=USERS)
    answers = {}
    for user in ("app", "app2", "nobody"):
        codes, err = auth_codes_and_error(s.port, user, "wrong-password", database="sluice")
        answers[user] = (codes, err["C"], err["M"].replace(user, "<user>"))
    assert answers["app2"] == answers["app"] and answers["nobody"] == answers["app"], answers
    assert answers["app"][1] == "28P01"
    codes, err = auth_codes_and_error(s.port, "app2", "other-secret", database="sluice")
    assert err["C"] == "42501", err
    codes, err = auth_codes_and_error(s.port, "app", "sluice-secret", database="sluice")
    assert err is None, err

# ---- SASLprep -------------------------------------------------------------------------------------


def test_a_non_ascii_password_is_saslprepped_like_libpq_and_postgres(start_sluice, pg):
    """libpq normalizes a password with SASLprep before deriving SCRAM keys, and Postgres did
    the same when it stored the role's secret. sluice, deriving from the plain password in
    auth_file, must too: 'pass' + ROMAN NUMERAL NINE and 'passIX' are the same password."""
    password = "pass\u2168"
    with pg.superuser() as c:
        c.execute("SET password_encryption = 'scram-sha-256'")
        c.execute("DROP ROLE IF EXISTS saslprep_user")
        c.execute(f"CREATE ROLE saslprep_user LOGIN PASSWORD '{password}'")
    try:
        s = start_sluice({"auth_type": "scram-sha-256"},
                         auth_file={"saslprep_user": password},
                         databases={APP_DB: {"host": "127.0.0.1", "port": pg.port,
                                             "dbname": APP_DB}})
        for typed in (password, "passIX"):
            with s.connect(user="saslprep_user", password=typed) as c:
                assert c.execute("SELECT current_user").fetchone()[0] == "saslprep_user"
        _, err = auth_codes_and_error(s.port, "saslprep_user", "pass9")
        assert err["C"] == "28P01"
    finally:
        pg.clear_backends("saslprep_user")
        with pg.superuser() as c:
            c.execute("DROP ROLE IF EXISTS saslprep_user")
