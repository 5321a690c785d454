"""A pgbouncer.ini and userlist.txt moved to sluice unchanged: the answers PgBouncer gives, the
keys PgBouncer knows (issue 22)."""

import signal
import time

import pytest

from conftest import render_ini
from pgwire import ServerError, query_msg, raw_login
from test_cli import assert_no_sanitizer_report, run

USERS = {"app": "sluice-secret"}


# ---- trust still needs a known user (PgBouncer: "trust" authentication failed) ----

@pytest.mark.parametrize("forced_user", [True, False], ids=["forced-user", "client-user"])
def test_trust_refuses_a_user_missing_from_auth_file_with_28000(start_sluice, pg, forced_user):
    entry = pg.db_entry() if forced_user else pg.db_entry(user=None, password=None)
    entry = {k: v for k, v in entry.items() if v is not None}
    s = start_sluice({"auth_type": "trust"}, databases={"appdb": entry},
                     auth_file={"app": "app-pw"})
    with pytest.raises(ServerError) as ei:
        raw_login(s.port, user="nosuchuser")
    assert ei.value.sqlstate == "28000", ei.value.fields
    assert '"trust" authentication failed' in ei.value.fields.get("M", ""), ei.value.fields
    if forced_user:
        # a user that is in auth_file still logs in without a password
        c = raw_login(s.port, user="app")
        try:
            assert c.query("SELECT current_user")[0] == [["app"]]
        finally:
            c.close()


def test_trust_without_auth_file_or_auth_query_admits_any_user_name(start_sluice, pg):
    """sluice's documented difference: with no user list at all, trust has nothing to check
    names against and admits them (the forced user= logs in upstream)."""
    s = start_sluice({"auth_type": "trust"})
    c = raw_login(s.port, user="whoever")
    try:
        assert c.query("SELECT current_user")[0] == [["app"]]
    finally:
        c.close()


# ---- database names are not revealed before authentication ----

def test_wrong_password_on_an_unknown_database_fails_as_a_wrong_password(start_sluice):
    s = start_sluice({"auth_type": "md5"}, auth_file=USERS)
    with pytest.raises(ServerError) as ei:
        raw_login(s.port, database="no_such_db", password="wrong")
    assert ei.value.sqlstate == "28P01", ei.value.fields
    assert 'password authentication failed for user "app"' in ei.value.fields["M"]
    with pytest.raises(ServerError) as ei:
        raw_login(s.port, user="nobody", database="no_such_db", password="x")
    assert ei.value.sqlstate == "28P01", ei.value.fields
    # with the right password, the client learns the database is not there
    with pytest.raises(ServerError) as ei:
        raw_login(s.port, database="no_such_db", password="sluice-secret")
    assert ei.value.sqlstate == "3D000", ei.value.fields


def test_trust_unknown_user_on_an_unknown_database_fails_as_trust(start_sluice):
    s = start_sluice({"auth_type": "trust"}, auth_file=USERS)
    with pytest.raises(ServerError) as ei:
        raw_login(s.port, user="nobody", database="no_such_db")
    assert ei.value.sqlstate == "28000", ei.value.fields


# ---- PgBouncer keys load with warnings, in every section, at start and on RELOAD ----

PGBOUNCER_DB_KEYS = ("server_lifetime=3600 auth_dbname=appdb load_balance_hosts=disable "
                     "max_db_client_connections=10 reserve_pool_size=2 connect_query='SELECT 1'")
PGBOUNCER_USER_KEYS = ("pool_mode=transaction reserve_pool_size=2 max_user_connections=10 "
                       "max_user_client_connections=20 query_timeout=0 "
                       "idle_transaction_timeout=0 client_idle_timeout=0 transaction_timeout=0")
PGBOUNCER_MAIN_KEYS = {
    "track_extra_parameters": "IntervalStyle",
    "cancel_wait_timeout": 10,
    "pool_idle_timeout": 0,
    "transaction_timeout": 0,
    "login_notify_message": "",
    "client_tls13_ciphers": "",
    "server_tls13_ciphers": "",
    "auth_ldap_options": "",
    "auth_pam_confdir": "",
    "max_user_client_connections": 0,
    "max_db_client_connections": 0,
}


def pgbouncer_style_ini(pg, userlist):
    entry = " ".join(f"{k}={v}" for k, v in pg.db_entry().items())
    text = render_ini({"listen_addr": "127.0.0.1", "listen_port": 6432, "auth_type": "md5",
                       "auth_file": userlist, **PGBOUNCER_MAIN_KEYS},
                      {"appdb": f"{entry} {PGBOUNCER_DB_KEYS}"},
                      {"app": PGBOUNCER_USER_KEYS})
    return text.replace("[sluice]", "[pgbouncer]")


def test_check_of_pgbouncer_keys_in_every_section_warns_and_exits_0(tmp_path, pg):
    userlist = tmp_path / "userlist.txt"
    userlist.write_text('"app" "x"\n')
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(pgbouncer_style_ini(pg, userlist))
    p = run(["--check", str(ini)])
    assert p.returncode == 0, f"stdout: {p.stdout}\nstderr: {p.stderr}"
    # (max_db_client_connections, max_user_client_connections, the per-entry server_lifetime,
    # load_balance_hosts, connect_query, transaction_timeout and auth_dbname are sluice keys
    # now: no warning)
    for key in ("track_extra_parameters",):
        assert key in p.stderr, f"no warning names {key}:\n{p.stderr}"
    assert_no_sanitizer_report(p)


# Every setting of PgBouncer's sample pgbouncer.ini (etc/pgbouncer.ini, 1.2x), enabled with its
# documented default or example value.
PGBOUNCER_SAMPLE = """\
[databases]
foodb =
bardb = host=localhost dbname=bazdb
forcedb = host=localhost port=300 user=baz password=foo client_encoding=UNICODE datestyle=ISO connect_query='SELECT 1'
nondefaultdb = pool_size=50 reserve_pool_size=10
authdb = auth_user=bar
bazdb = auth_dbname=foo max_db_client_connections=10
* = host=testserver
[users]
user1 = pool_size=5 reserve_pool_size=2 pool_mode=transaction max_user_connections=10 max_user_client_connections=20
[pgbouncer]
logfile = {tmp}/pgbouncer.log
pidfile = {tmp}/pgbouncer.pid
listen_addr = localhost
listen_port = 6432
unix_socket_dir = {tmp}
unix_socket_mode = 0777
unix_socket_group =
peer_id = 0
query_wait_notify = 5
login_notify_message =
client_tls_sslmode = disable
client_tls_ciphers = default
client_tls13_ciphers =
client_tls_protocols = secure
client_tls_dheparams = auto
client_tls_ecdhcurve = auto
server_tls_sslmode = prefer
server_tls_protocols = secure
server_tls_ciphers = default
server_tls13_ciphers =
auth_type = md5
auth_file = {tmp}/userlist.txt
auth_hba_file =
auth_ident_file =
auth_ldap_options =
auth_query = SELECT rolname, CASE WHEN rolvaliduntil < pg_catalog.now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin
auth_dbname =
auth_pam_confdir =
admin_users = user2, someadmin, otheradmin
stats_users = stats, root
pool_mode = session
max_prepared_statements = 0
scram_iterations = 4096
server_reset_query = DISCARD ALL
server_reset_query_always = 0
track_extra_parameters =
ignore_startup_parameters = extra_float_digits
server_check_query = select 1
server_check_delay = 30
server_fast_close = 0
application_name_add_host = 0
stats_period = 60
max_client_conn = 100
default_pool_size = 20
min_pool_size = 0
reserve_pool_size = 0
reserve_pool_timeout = 5
max_db_connections = 0
max_user_connections = 0
server_round_robin = 0
syslog = 0
syslog_facility = daemon
syslog_ident = pgbouncer
log_connections = 1
log_disconnections = 1
log_pooler_errors = 1
log_stats = 1
verbose = 0
server_lifetime = 3600
server_idle_timeout = 600
server_connect_timeout = 15
server_login_retry = 15
query_timeout = 0
query_wait_timeout = 120
cancel_wait_timeout = 10
client_idle_timeout = 0
client_login_timeout = 60
pool_idle_timeout = 0
autodb_idle_timeout = 3600
idle_transaction_timeout = 0
pkt_buf = 4096
listen_backlog = 128
sbuf_loopcnt = 5
max_packet_size = 2147483647
so_reuseport = 0
tcp_defer_accept = 0
tcp_socket_buffer = 0
tcp_keepalive = 1
tcp_keepcnt = 0
tcp_keepidle = 0
tcp_keepintvl = 0
tcp_user_timeout = 0
dns_max_ttl = 15
dns_zone_check_period = 0
dns_nxdomain_ttl = 15
resolv_conf = /etc/pgbouncer/resolv.conf
disable_pqexec = 0
service_name = pgbouncer
job_name = pgbouncer
transaction_timeout = 0
"""


def test_check_of_pgbouncers_sample_config_with_every_key_set_warns_and_exits_0(tmp_path):
    (tmp_path / "userlist.txt").write_text('"user1" "x"\n')
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(PGBOUNCER_SAMPLE.format(tmp=tmp_path))
    p = run(["--check", str(ini)])
    assert p.returncode == 0, f"stdout: {p.stdout}\nstderr: {p.stderr}"
    assert "error" not in p.stderr.lower(), p.stderr
    assert "syslog" in p.stderr, p.stderr
    assert "transaction_timeout" not in p.stderr and "auth_dbname" not in p.stderr, p.stderr
    assert_no_sanitizer_report(p)


def test_reload_accepts_pgbouncer_per_entry_keys(start_sluice, pg):
    s = start_sluice({"auth_type": "md5"}, auth_file=USERS,
                     databases={"appdb": pg.db_entry(pool_size=3)})
    text = s.ini_path.read_text()
    text = text.replace("pool_size=3", f"pool_size=4 {PGBOUNCER_DB_KEYS}")
    text += f"\n[users]\napp = {PGBOUNCER_USER_KEYS}\n"
    mark = s.mark()
    s.ini_path.write_text(text)
    s.send_signal(signal.SIGHUP)
    s.wait_for_log(r"configuration reloaded|keeping the old one", timeout=10, since=mark)
    log = "\n".join(s.log_since(mark))
    assert "keeping the old one" not in log, log
    assert "not supported" not in log, log  # every per-entry key there is a sluice key now
    with s.connect(password="sluice-secret") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


# ---- the server's login refusal reaches the clients waiting for that pool ----

def ensure_role(pg, name, login=True):
    with pg.superuser() as c:
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchall():
            c.execute(f"CREATE ROLE {name} PASSWORD 'role-pw'")
            c.execute(f"GRANT CONNECT ON DATABASE appdb TO {name}")
        c.execute(f"ALTER ROLE {name} {'LOGIN' if login else 'NOLOGIN'}")
        if not login:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE usename = %s", [name])


def expect_fatal(port, started, deadline=15):
    """The first query of a fresh client ends in the server's FATAL within `deadline` s."""
    with pytest.raises(ServerError) as ei:
        c = raw_login(port, timeout=deadline + 10)
        try:
            c.query("SELECT 1")
        finally:
            c.close()
    assert time.monotonic() - started < deadline, "the client waited for the retries"
    return ei.value


@pytest.mark.parametrize("case", ["nologin", "wrong-password"])
def test_server_login_refusal_reaches_a_client_logging_in(start_sluice, pg, case):
    if case == "nologin":
        ensure_role(pg, "h6_nologin", login=False)
        entry = pg.db_entry(user="h6_nologin", password="role-pw")
        state, text = "28000", 'role "h6_nologin" is not permitted to log in'
    else:
        entry = pg.db_entry(password="not-the-password")
        state, text = "28P01", 'password authentication failed for user "app"'
    s = start_sluice({"auth_type": "trust", "query_wait_timeout": 60},
                     databases={"appdb": entry})
    err = expect_fatal(s.port, time.monotonic())
    assert err.sqlstate == state, err.fields
    assert text in err.fields["M"], err.fields
    assert err.fields["S"] == "FATAL", err.fields


def test_server_login_refusal_reaches_logged_in_clients_waiting_for_a_server(start_sluice, pg):
    ensure_role(pg, "h6_flip", login=True)
    s = start_sluice({"auth_type": "trust", "query_wait_timeout": 60,
                      "server_check_delay": 0},
                     databases={"appdb": pg.db_entry(user="h6_flip", password="role-pw")})
    try:
        c = raw_login(s.port)
        assert c.query("SELECT current_user")[0] == [["h6_flip"]]
        c.close()
        ensure_role(pg, "h6_flip", login=False)  # and its servers are gone
        started = time.monotonic()
        err = expect_fatal(s.port, started)
        assert err.sqlstate == "28000", err.fields
        assert 'role "h6_flip" is not permitted to log in' in err.fields["M"], err.fields
    finally:
        ensure_role(pg, "h6_flip", login=True)


@pytest.mark.timeout(120)
def test_server_login_refusal_reaches_waiting_clients_of_every_worker(start_sluice, pg):
    """With two workers one of them probes the refusing database at a time: its waiters got the
    server's 28000 at once, the other worker's waited out server_down_wait and got 57P03 (CI
    saw it in the test above). Clients spread over both workers all get Postgres's 28000."""
    ensure_role(pg, "h6_flip2", login=True)
    s = start_sluice({"auth_type": "trust", "query_wait_timeout": 60, "workers": 2,
                      "server_check_delay": 0},
                     databases={"appdb": pg.db_entry(user="h6_flip2", password="role-pw")})
    try:
        c = raw_login(s.port)
        assert c.query("SELECT current_user")[0] == [["h6_flip2"]]
        c.close()
        ensure_role(pg, "h6_flip2", login=False)  # and its servers are gone
        clients = [raw_login(s.port, timeout=40) for _ in range(8)]
        started = time.monotonic()
        for c in clients:
            c.send(query_msg("SELECT 1"))
        for c in clients:
            with pytest.raises(ServerError) as ei:
                try:
                    c.read_until({"Z"})
                finally:
                    c.close()
            assert ei.value.sqlstate == "28000", ei.value.fields
            assert 'role "h6_flip2" is not permitted to log in' in ei.value.fields["M"]
        assert time.monotonic() - started < 30, "the clients waited for the retries"
    finally:
        ensure_role(pg, "h6_flip2", login=True)


def test_server_login_refusal_reaches_a_passthrough_client(start_sluice, pg):
    """sluice's own SCRAM login upstream (the client's keys, src/core/server_login.c) passes the
    server's refusal on the same way."""
    ensure_role(pg, "h6_pt", login=True)
    secret = pg.stored_secret("h6_pt")
    ensure_role(pg, "h6_pt", login=False)
    try:
        entry = {k: v for k, v in pg.db_entry().items() if k not in ("user", "password")}
        s = start_sluice({"auth_type": "scram-sha-256", "query_wait_timeout": 60},
                         databases={"appdb": entry}, auth_file={"h6_pt": secret})
        started = time.monotonic()
        with pytest.raises(ServerError) as ei:
            raw_login(s.port, user="h6_pt", password="role-pw", timeout=30).close()
        assert time.monotonic() - started < 15
        assert ei.value.sqlstate == "28000", ei.value.fields
        assert 'role "h6_pt" is not permitted to log in' in ei.value.fields["M"]
    finally:
        ensure_role(pg, "h6_pt", login=True)


# ---- an md5 secret in auth_file logs in upstream (PgBouncer) ----

def ensure_md5_role(pg, name, password):
    """A role whose password Postgres stores as md5, reached over TCP with md5 (a pg_hba.conf
    line for that role only, ahead of the cluster's scram-sha-256 default)."""
    with pg.superuser() as c:
        c.execute("SET password_encryption = 'md5'")
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchall():
            c.execute(f"CREATE ROLE {name} LOGIN")
            c.execute(f"GRANT CONNECT ON DATABASE appdb TO {name}")
        c.execute(f"ALTER ROLE {name} PASSWORD '{password}'")
        hba = pg.data / "pg_hba.conf"
        line = f"host appdb {name} 127.0.0.1/32 md5\n"
        text = hba.read_text()
        if line not in text:
            hba.write_text(line + text)
            c.execute("SELECT pg_reload_conf()")
            time.sleep(0.5)


def test_md5_secret_in_auth_file_logs_in_to_an_md5_server_for_a_forced_user(start_sluice, pg):
    ensure_md5_role(pg, "h6_md5", "md5-role-pw")
    secret = pg.stored_secret("h6_md5")
    assert secret.startswith("md5"), secret
    entry = {k: v for k, v in pg.db_entry(user="h6_md5").items() if k != "password"}
    s = start_sluice({"auth_type": "md5"}, databases={"appdb": entry},
                     auth_file={"app": "sluice-secret", "h6_md5": secret})
    with s.connect(user="app", password="sluice-secret") as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "h6_md5"
