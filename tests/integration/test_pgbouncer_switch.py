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


# ---- auth_type = any ignores the client's name, so it needs a forced user (PgBouncer) ----

def test_auth_type_any_refuses_a_database_entry_without_a_forced_user(start_sluice, pg):
    """With auth_type = any nobody proves a name: PgBouncer refuses ("bouncer config error") a
    database whose entry does not force user=. sluice let the client in as whatever name it
    gave, and logged in upstream with that user's auth_file password (app2's, here)."""
    entry = {k: v for k, v in pg.db_entry().items() if k not in ("user", "password")}
    s = start_sluice({"auth_type": "any"},
                     databases={"appdb": entry, "forced": pg.db_entry(dbname="appdb")},
                     auth_file={"app2": "app2pass"})
    for user in ("app2", "app"):
        err = refused(s.port, user=user)
        assert err.sqlstate == "28000", err.fields
        assert err.fields["M"] == ('auth_type "any" needs a forced user: the entry of database '
                                   '"appdb" has no user='), err.fields
    # an entry that forces its user: any name logs in, as that user
    c = raw_login(s.port, user="whoever", database="forced")
    try:
        assert c.query("SELECT current_user")[0] == [["app"]]
    finally:
        c.close()
    # a database sluice does not know is told only after the (empty) authentication
    assert refused(s.port, user="app2", database="nosuchdb").sqlstate == "3D000"


def test_check_warns_about_an_any_entry_without_a_forced_user(tmp_path):
    from test_cli import run
    ini = tmp_path / "sluice.ini"
    ini.write_text("[databases]\nloose = host=127.0.0.1\nforced = host=127.0.0.1 user=app\n"
                   "[sluice]\nauth_type = any\nlisten_port = 0\n")
    p = run(["--check", str(ini)])
    assert p.returncode == 0, p.stderr
    assert "database 'loose' forces no user=" in p.stderr, p.stderr
    assert "'forced'" not in p.stderr, p.stderr


def test_auth_type_any_console_admits_only_admin_and_stats_users(start_sluice, pg):
    """PgBouncer with auth_type = any lets every name into its console as a stats user (SHOW
    CONFIG, SHOW USERS, ...); sluice keeps the console to admin_users and stats_users, still
    without a password."""
    s = start_sluice({"auth_type": "any", "admin_users": "adm", "stats_users": "watcher"},
                     databases={"appdb": pg.db_entry()})
    err = refused(s.port, user="whoever", database="pgbouncer")
    assert err.sqlstate == "42501", err.fields
    for user, reload_ok in (("adm", True), ("watcher", False)):
        c = raw_login(s.port, user=user, database="pgbouncer")
        try:
            assert c.query("SHOW USERS")[0]
            if reload_ok:
                c.query("RELOAD")
            else:
                with pytest.raises(ServerError) as ei:
                    c.query("RELOAD")
                assert ei.value.sqlstate == "42501", ei.value.fields
        finally:
            c.close()


# ---- an empty password never logs in (PgBouncer 1.18 admits one over SCRAM) ----

@pytest.mark.parametrize("method", ["md5", "plain", "scram-sha-256"])
def test_an_empty_password_in_auth_file_never_logs_in(start_sluice, pg, method):
    s = start_sluice({"auth_type": method}, auth_file={"app": "", "app2": "app2pass"})
    for given in ("", "x"):
        err = refused(s.port, user="app", password=given)
        assert err.sqlstate == "28P01", err.fields
    c = raw_login(s.port, user="app2", password="app2pass")
    c.close()


# ---- secrets stay out of error messages ----

BROKEN_URLS = [
    "postgres://app:UrlSecret1@[::1/appdb",                  # libpq quotes the whole URI
    "postgresql://app:UrlSecret2@host:5432/appdb?a=b=c",       # ... and here
    "postgresql://app:Url%zzSecret3@127.0.0.1:5432/appdb",     # the password is not %-encoding
    "postgresql://app:Url@Secret4@[::1/appdb",                # an '@' inside the password
]


@pytest.mark.parametrize("url", BROKEN_URLS)
@pytest.mark.parametrize("where", ["env", "entry"])
def test_a_url_libpq_refuses_is_reported_without_its_password(tmp_path, url, where):
    """PgBouncer never echoes a password it read; sluice's bad-URL error quoted libpq's message,
    which quotes the URL."""
    from test_cli import run
    secret = url.split(":", 2)[2].rsplit("@", 1)[0]
    if where == "env":
        p = run(["--check"], env={"DATABASE_URL": url, "SLUICE_LISTEN_PORT": "0"})
    else:
        ini = tmp_path / "sluice.ini"
        ini.write_text(f"[databases]\nappdb = {url}\n[sluice]\nlisten_port = 0\n")
        p = run(["--check", str(ini)])
    assert p.returncode != 0, p.stderr
    assert "error:" in p.stderr, p.stderr
    assert "Secret" not in p.stderr and secret not in p.stderr, p.stderr


ODD_PASSWORDS = ["Pq/Zx7", "Zx7/Pq", "Pq:Wm/Zx7", "Pq@Wm/Zx7", "Pq/Wm@Zx7", "Pq?Wm/Zx7",
                 "Pq#Wm/Zx7", "Pq/Wm?Zx7#Jk", "Pq@Wm?Zx7#Jk/Vb"]


@pytest.mark.parametrize("password", ODD_PASSWORDS)
def test_no_error_shows_a_piece_of_an_unencoded_password(password):
    """A '/' in the password, not written %2F, ends the URL's host part for libpq: what precedes
    it was read as host and port, and the port error quoted a piece of the password. Whatever
    sluice says of such a URL, no piece of the password may appear in it."""
    import re
    from test_cli import run
    url = f"postgresql://app:{password}@127.0.0.1:5432/appdb"
    p = run(["--check"], env={"DATABASE_URL": url, "SLUICE_LISTEN_PORT": "0"})
    for piece in re.split(r"[/@?#:]", password):
        assert piece not in p.stderr + p.stdout, (piece, p.stderr)


# ---- a [databases] entry's application_name ----

@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_an_entrys_application_name_is_what_a_client_without_one_sees(start_sluice, pg, mode):
    """PgBouncer sends the entry's application_name in the server's startup packet and reports
    it to a client that sends none (ParameterStatus, SHOW); a client's own, from its startup
    packet, wins. sluice told every client without one '' while its server had the entry's."""
    s = start_sluice({"pool_mode": mode, "auth_type": "trust"},
                     databases={"appdb": pg.db_entry(application_name="entry-app")},
                     auth_file={"app": "x"})
    for _ in range(2):  # the first login learns the welcome from a server, the second reuses it
        c = raw_login(s.port, user="app")
        try:
            assert c.params["application_name"] == "entry-app"
            assert c.query("SHOW application_name")[0] == [["entry-app"]]
        finally:
            c.close()
    c = raw_login(s.port, user="app", application_name="mine")
    try:
        assert c.params["application_name"] == "mine"
        assert c.query("SHOW application_name")[0] == [["mine"]]
    finally:
        c.close()


# ---- trust, and no password sluice can log in upstream with ----

@pytest.mark.parametrize("secret", ["md5", "empty"])
@pytest.mark.parametrize("database", ["nosuchdb", "appdb"])
def test_trust_without_a_usable_upstream_password_is_an_authorization_error(start_sluice, pg,
                                                                             secret, database):
    """auth_type = trust, an entry without user=: sluice logs in upstream as the client's user
    with its auth_file password. When it has none the server can use (an md5 secret for a
    SCRAM server, or no password at all), the client was told 57P03 "the database is down",
    for a database that does not exist too; Postgres and PgBouncer never get to say whether it
    exists, and nothing is down: the login as that user cannot be made (28000)."""
    import hashlib
    from conftest import APP_PASSWORD
    text = ("md5" + hashlib.md5((APP_PASSWORD + "app").encode()).hexdigest()
            if secret == "md5" else "")
    star = {k: v for k, v in pg.db_entry().items() if k not in ("user", "password", "dbname")}
    s = start_sluice({"auth_type": "trust", "server_down_wait": 1000},
                     databases={"*": star}, auth_file={"app": text})
    for _ in range(3):  # the next ones too, while the pool backs off
        err = refused(s.port, user="app", database=database)
        assert err.sqlstate == "28000", err.fields
        assert err.fields["M"] == 'sluice holds no password the server accepts for user "app"'


# ---- startup parameters in the debug log ----

def test_debug_log_shows_startup_parameter_names_not_their_values(start_sluice, pg):
    """A startup packet may carry a value that is nobody else's business (a custom setting, an
    option): at log_level = debug sluice logged every value. Now the names, and the values of
    the harmless ones a driver sends (application_name, DateStyle, ...)."""
    s = start_sluice({"log_level": "debug", "pool_mode": "session"})
    c = raw_login(s.port, user="app", password="apppass", **{"application_name": "dbg-app",
                                                          "myapp.token": "Tk9Zq77",
                                                          "DateStyle": "ISO, MDY"})
    c.close()
    log = "\n".join(s.log)
    assert "startup parameters" in log
    assert "Tk9Zq77" not in log
    assert "myapp.token" in log and "dbg-app" in log and "ISO, MDY" in log


# ---- auth_query at every login: a change on the server counts from the next login ----

@pytest.fixture
def changing_role(pg, lookup_roles):
    ensure_roles(pg, ["DROP ROLE IF EXISTS switch_changing",
                      "CREATE ROLE switch_changing LOGIN PASSWORD 'first-pw'"])
    yield
    ensure_roles(pg, ["DROP ROLE IF EXISTS switch_changing"])


def logs_in_as_app(port, password):
    c = raw_login(port, user="switch_changing", password=password)
    try:
        assert c.query("SELECT current_user")[0] == [["app"]]
    finally:
        c.close()


@pytest.mark.parametrize("method", ["scram-sha-256", "md5", "plain"])
def test_a_password_changed_on_the_server_counts_from_the_next_login(
        start_sluice, pg, changing_role, method):
    """PgBouncer runs auth_query at every login, so the new password works at once and the old
    one is refused at once. sluice cached the answer 60 s: the old password still logged in
    (as the forced user app) and the new one failed once. One worker: each worker had its own
    cache."""
    s = start_sluice({"auth_type": method, "auth_user": "switch_lookup", "workers": 1},
                     auth_file={"switch_lookup": "lookup-pw"})
    logs_in_as_app(s.port, "first-pw")
    ensure_roles(pg, ["ALTER ROLE switch_changing PASSWORD 'second-pw'"])
    assert refused(s.port, user="switch_changing", password="first-pw").sqlstate == "28P01"
    logs_in_as_app(s.port, "second-pw")
    logs_in_as_app(s.port, "second-pw")


@pytest.mark.parametrize("change", ["NOLOGIN", "VALID UNTIL '2001-01-01'"])
def test_a_role_barred_on_the_server_is_refused_at_the_next_login(start_sluice, pg,
                                                                 changing_role, change):
    """ALTER ROLE ... NOLOGIN or an expired VALID UNTIL: PgBouncer's next login asks auth_query
    and is refused; sluice's cached answer let the old password in for up to 60 s."""
    s = start_sluice({"auth_type": "scram-sha-256", "auth_user": "switch_lookup", "workers": 1},
                     auth_file={"switch_lookup": "lookup-pw"})
    logs_in_as_app(s.port, "first-pw")
    ensure_roles(pg, [f"ALTER ROLE switch_changing {change}"])
    assert refused(s.port, user="switch_changing", password="first-pw").sqlstate == "28P01"


# ---- client_tls_ciphers: PgBouncer's names and its default (TLSv1.2: AEAD with ECDHE/DHE) ----

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from certs import make_pki
    return make_pki(tmp_path_factory.mktemp("pki"), "switch", clients=())


def tls12_handshake(port, cipher):
    """The TLSv1.2 suite sluice chose when the client offers only `cipher`, or None when the
    handshake failed (openssl s_client speaks Postgres's SSLRequest)."""
    import re
    import subprocess
    p = subprocess.run(["openssl", "s_client", "-starttls", "postgres", "-connect",
                        f"127.0.0.1:{port}", "-tls1_2", "-cipher", cipher],
                       input="", capture_output=True, text=True, timeout=20)
    m = re.search(r"Cipher is (\S+)", p.stdout)
    return None if not m or m.group(1) == "(NONE)" else m.group(1)


CBC_SUITE = "ECDHE-ECDSA-AES128-SHA256"   # CBC + HMAC: not in PgBouncer's default
AEAD_SUITE = "ECDHE-ECDSA-AES128-GCM-SHA256"


@pytest.mark.parametrize("value, cbc_allowed", [
    (None, False), ("default", False), ("secure", False), ("compat", True), ("legacy", True),
    ("normal", True), ("fast", True), ("all", True), ("insecure", True),
])
def test_client_tls_ciphers_takes_pgbouncers_names_and_default(start_sluice, pki, value,
                                                                cbc_allowed):
    """PgBouncer's default ("secure") offers TLSv1.2 clients only AEAD suites with forward
    secrecy; sluice's kept OpenSSL's list (CBC and RSA key exchange too), and refused to start
    with PgBouncer's other names (fast, normal, compat, legacy, all, insecure)."""
    main = {"client_tls_sslmode": "require", "client_tls_cert_file": str(pki.server_cert),
            "client_tls_key_file": str(pki.server_key)}
    if value is not None:
        main["client_tls_ciphers"] = value
    s = start_sluice(main)
    assert tls12_handshake(s.port, AEAD_SUITE) == AEAD_SUITE
    assert tls12_handshake(s.port, CBC_SUITE) == (CBC_SUITE if cbc_allowed else None)
