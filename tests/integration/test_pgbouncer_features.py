"""PgBouncer keys its users rely on, with PgBouncer's names and meaning (issue 22, "PgBouncer
features its users rely on"): connect_query, server_check_query's default, server_fast_close,
query_wait_notify, replication connections."""

import socket

import psycopg
import pytest

from conftest import Background, wait_until
from pgwire import (ServerError, bind_msg, close_msg, execute_msg, parse_msg, query_msg,
                    raw_login, sync_msg)
from tcp_proxy import ForwardingProxy


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


@pytest.mark.parametrize("login", ["libpq", "passthrough"])
def test_connect_query_failure_closes_the_server_and_is_logged(start_sluice, pg, login):
    """A connect_query that fails leaves a server nobody should get: it is closed as a failed
    login (PgBouncer: "login failed"), logged with the server's message, and the client still
    logging in gets that reason instead of a server that skipped its setup. Both login paths."""
    entry = pg.db_entry(connect_query="SELECT 1/0")
    main = {"pool_mode": "transaction", "query_wait_timeout": 5, "server_login_retry": 1}
    auth_file, password = None, None
    if login == "passthrough":
        del entry["password"]
        del entry["user"]
        main["auth_type"] = "scram-sha-256"
        auth_file = {"app": pg.stored_secret("app")}
        main["log_level"] = "debug"
        password = "apppass"
    s = start_sluice(main, databases={"appdb": entry}, auth_file=auth_file)
    with pytest.raises(ServerError) as ei:
        raw_login(s.port, password=password)
    assert "connect_query failed: division by zero" in ei.value.fields.get("M", ""), \
        ei.value.fields
    s.wait_for_log(r"connect_query failed: division by zero")
    # no server of that pool was left open in Postgres
    wait_until(lambda: pg.count_backends() == 0, 10, what="no backend left by the failed login")
    if login == "passthrough":
        s.wait_for_log(r'connecting \(passthrough login as "app"\)')


# ---- server_check_query: PgBouncer >= 1.23 checks with an empty query ----

def _check_query_seen_by_the_backend(start_sluice, pg, main):
    """server_check_delay = 0: every lease of an idle server checks it first. The client's
    request is a Close of the unnamed statement and a Sync, which Postgres answers without
    touching pg_stat_activity.query: the backend's last statement is then the check. (A lone
    Sync, or a Close of a name the client never prepared, would not do: sluice answers those
    from an idle client without a server; the unnamed statement may live on the backend.)"""
    m = {"pool_mode": "transaction", "server_check_delay": 0, "default_pool_size": 1}
    m.update(main)
    s = start_sluice(m)
    c = raw_login(s.port)
    try:
        pid = c.query("SELECT pg_backend_pid()")[0][0][0]
        c.send(close_msg("S", "") + sync_msg())
        c.read_until("Z")
        rows = [r for r in pg.backends() if str(r[0]) == pid]
        assert rows and rows[0][1] == "idle", rows
        return rows[0][3]
    finally:
        c.close()


def test_server_check_query_default_is_the_empty_query(start_sluice, pg):
    """PgBouncer >= 1.23: server_check_query defaults to <empty>, an empty Query (Postgres
    answers EmptyQueryResponse): no statement is parsed or logged. sluice used `select 1`."""
    assert _check_query_seen_by_the_backend(start_sluice, pg, {}) == ""


def test_server_check_query_can_still_be_a_statement(start_sluice, pg):
    assert _check_query_seen_by_the_backend(
        start_sluice, pg, {"server_check_query": "SELECT 42"}) == "SELECT 42"


# ---- server_fast_close: session mode closes a marked server at the end of its transaction ----

CONSOLE = {"admin_users": "app", "pool_mode": "session"}


def _console(s):
    return psycopg.connect(s.dsn(dbname="pgbouncer"), autocommit=True, prepare_threshold=None)


def _gone(pg, pid):
    return pid not in [r[0] for r in pg.query("SELECT pid FROM pg_stat_activity")]


def test_server_fast_close_ends_a_session_at_the_end_of_its_transaction(start_sluice, pg):
    """PgBouncer's server_fast_close: after RECONNECT, a session-mode server in a transaction
    finishes it, then closes with its client (57P01), instead of living as long as the client;
    an idle session's server closes at once."""
    s = start_sluice(dict(CONSOLE, server_fast_close=1))
    busy, idle = s.connect(), s.connect()
    try:
        (busy_pid,) = busy.execute("SELECT pg_backend_pid()").fetchone()
        (idle_pid,) = idle.execute("SELECT pg_backend_pid()").fetchone()
        busy.execute("BEGIN")
        busy.execute("CREATE TEMP TABLE t (x int)")
        with _console(s) as adm:
            adm.execute("RECONNECT appdb")
        # the idle session's server closes without waiting for its client
        wait_until(lambda: _gone(pg, idle_pid), 10, what="the idle session's server closed")
        with pytest.raises(psycopg.OperationalError) as ei:
            idle.execute("SELECT 1")
        # the transaction is not interrupted
        busy.execute("INSERT INTO t VALUES (1)")
        assert busy.execute("SELECT count(*) FROM t").fetchone()[0] == 1
        assert not _gone(pg, busy_pid)
        busy.execute("COMMIT")
        wait_until(lambda: _gone(pg, busy_pid), 10, what="the server closed after COMMIT")
        with pytest.raises(psycopg.OperationalError) as ei:
            busy.execute("SELECT 1")
        assert ei.value.sqlstate in (None, "57P01"), ei.value
    finally:
        busy.close()
        idle.close()
    with s.connect() as c:  # new sessions get new servers
        assert c.execute("SELECT pg_backend_pid()").fetchone()[0] not in (busy_pid, idle_pid)


def test_without_server_fast_close_a_session_keeps_its_marked_server(start_sluice, pg):
    s = start_sluice(dict(CONSOLE))
    with s.connect() as c:
        (pid,) = c.execute("SELECT pg_backend_pid()").fetchone()
        with _console(s) as adm:
            adm.execute("RECONNECT appdb")
        assert c.execute("SELECT pg_backend_pid()").fetchone() == (pid,)


# ---- query_wait_notify: a queued client is told it waits ----

def test_query_wait_notify_sends_a_notice_to_a_queued_client(start_sluice, pg):
    """PgBouncer 1.24's query_wait_notify: a client queued for a server this long gets one
    NOTICE saying so; its query then runs as usual once a server is free."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "query_wait_notify": 1, "query_wait_timeout": 60})
    holder = s.connect()
    waiter = s.connect()
    notices = []
    waiter.add_notice_handler(lambda d: notices.append((d.sqlstate, d.message_primary)))
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")  # holds the pool's only server
        bg = Background(waiter.execute, "SELECT 'served'")
        wait_until(lambda: notices, 15, what="the queued client's NOTICE")
        assert not bg.done()
        assert len(notices) == 1, notices
        state, text = notices[0]
        assert state == "00000"
        assert "client being queued" in text and "No server connection available" in text, text
        holder.execute("COMMIT")
        assert bg.result(15).fetchone()[0] == "served"
        assert len(notices) == 1, notices  # once per wait
    finally:
        holder.close()
        waiter.close()


def test_query_wait_notify_zero_sends_nothing(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "query_wait_notify": 0, "query_wait_timeout": 60})
    holder, waiter = s.connect(), s.connect()
    notices = []
    waiter.add_notice_handler(lambda d: notices.append(d.message_primary))
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        bg = Background(waiter.execute, "SELECT 'served'")
        assert not bg.wait(2.5)
        holder.execute("COMMIT")
        assert bg.result(15).fetchone()[0] == "served"
        assert notices == []
    finally:
        holder.close()
        waiter.close()


# ---- replication connections: refused with a clear FATAL (README "Moving from PgBouncer") ----

@pytest.mark.parametrize("value", ["database", "true", "on", "1"])
def test_a_replication_connection_is_refused_with_0A000(start_sluice, value):
    s = start_sluice()
    with pytest.raises(ServerError) as ei:
        raw_login(s.port, replication=value)
    assert ei.value.sqlstate == "0A000", ei.value.fields
    assert ei.value.fields["S"] == "FATAL"
    assert "replication connections are not supported" in ei.value.fields["M"]
    assert "directly" in ei.value.fields.get("H", "")


@pytest.mark.parametrize("value", ["false", "FALSE", "Off", "no", "0"])
def test_replication_off_in_any_spelling_postgres_accepts_is_a_normal_session(start_sluice, value):
    """Postgres reads the replication parameter as a boolean, case-insensitively."""
    s = start_sluice()
    c = raw_login(s.port, replication=value)
    try:
        assert c.query("SELECT 7")[0] == [["7"]]
    finally:
        c.close()


# ---- client_tls13_ciphers: the TLS 1.3 suites offered to clients ----

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from certs import make_pki
    return make_pki(tmp_path_factory.mktemp("pki13"), "test", clients=("app",))


def _tls13_cipher(s, pki):
    """The TLS 1.3 suite a client offering all of them ends up with."""
    import ssl
    from pgwire import RawConn, ssl_request
    c = RawConn(s.port)
    try:
        c.send(ssl_request())
        assert c.read_byte() == b"S"
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
        return c.sock.cipher()[0]
    finally:
        c.close()


@pytest.mark.parametrize("suite", ["TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"])
def test_client_tls13_ciphers_chooses_the_tls13_suites(start_sluice, pki, suite):
    """PgBouncer 1.25's client_tls13_ciphers (OpenSSL's TLS 1.3 ciphersuites list); without it
    OpenSSL's default (TLS_AES_256_GCM_SHA384 first) is used."""
    keys = {"client_tls_sslmode": "require", "client_tls_cert_file": str(pki.server_cert),
            "client_tls_key_file": str(pki.server_key)}
    s = start_sluice(dict(keys, client_tls13_ciphers=suite))
    assert "'client_tls13_ciphers' is not supported" not in s.log_text(), s.log_text()
    assert _tls13_cipher(s, pki) == suite
    s = start_sluice(keys)
    assert _tls13_cipher(s, pki) == "TLS_AES_256_GCM_SHA384"


def test_a_bad_client_tls13_ciphers_value_stops_sluice(start_sluice, pki):
    s = start_sluice({"client_tls_sslmode": "require", "client_tls_cert_file": str(pki.server_cert),
                      "client_tls_key_file": str(pki.server_key),
                      "client_tls13_ciphers": "TLS_NO_SUCH_SUITE"}, wait=False)
    s.expected_exit_codes = (1,)
    assert s.wait_exit(10) == 1
    assert any("client TLS: client_tls13_ciphers" in line for line in s.log), s.log_tail()


# ---- load_balance_hosts: a host list used round robin, a failing host skipped ----

def _open_servers(s, n):
    """n clients each in a transaction at once: n servers."""
    conns = [s.connect() for _ in range(n)]
    try:
        for c in conns:
            c.execute("BEGIN")
            c.execute("SELECT 1")
    finally:
        for c in conns:
            c.close()


@pytest.mark.parametrize("key", [None, "round-robin"])
def test_load_balance_hosts_round_robin_spreads_new_servers_over_the_host_list(
        start_sluice, pg, key):
    """PgBouncer's default for a host list: each new server connection starts at the next
    host."""
    a, b = ForwardingProxy(pg.port), ForwardingProxy(pg.port)
    try:
        entry = pg.db_entry(host="127.0.0.1,127.0.0.1", port=f"{a.port},{b.port}")
        if key:
            entry["load_balance_hosts"] = key
        s = start_sluice({"pool_mode": "transaction"}, databases={"appdb": entry})
        assert "load_balance_hosts' is not supported" not in s.log_text(), s.log_text()
        _open_servers(s, 4)
        assert (a.accepted, b.accepted) == (2, 2)
    finally:
        a.close()
        b.close()


def test_load_balance_hosts_skips_a_host_that_fails(start_sluice, pg):
    """A host that refuses is passed over for the next one (libpq's host list). This hung: libpq
    opened the next host's socket under the refused one's descriptor number, which sluice's
    poll handle did not register again."""
    import socket
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    a = ForwardingProxy(pg.port)
    try:
        entry = pg.db_entry(host="127.0.0.1,127.0.0.1",
                            port=f"{dead.getsockname()[1]},{a.port}")
        s = start_sluice({"pool_mode": "transaction"}, databases={"appdb": entry})
        _open_servers(s, 4)
        assert a.accepted == 4
    finally:
        a.close()
        dead.close()


def test_load_balance_hosts_disable_keeps_the_first_host_that_works(start_sluice, pg):
    a, b = ForwardingProxy(pg.port), ForwardingProxy(pg.port)
    try:
        entry = pg.db_entry(host="127.0.0.1,127.0.0.1", port=f"{a.port},{b.port}",
                            load_balance_hosts="disable")
        s = start_sluice({"pool_mode": "transaction"}, databases={"appdb": entry})
        _open_servers(s, 4)
        assert (a.accepted, b.accepted) == (4, 0)
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(60)
def test_disable_pqexec_refuses_the_simple_query_protocol(start_sluice, pg):
    """PgBouncer's disable_pqexec was ignored with a warning: an operator who turned it on
    against SQL injection (a Query message may carry several statements; the extended protocol
    one, with its parameters apart) had no such guard. Now a Query message ends the client with
    FATAL 0A000, idle or inside a transaction (rolled back, as on any disconnect); parameterized
    statements go on; the admin console is not affected; RELOAD turns it off."""
    s = start_sluice({"disable_pqexec": 1, "admin_users": "admin", "pool_mode": "transaction"})
    with s.connect() as c:
        assert c.execute("SELECT %s::int", [7]).fetchone() == (7,)  # extended: served

    def extended(conn, sql):
        conn.send(parse_msg("", sql) + bind_msg("", "") + execute_msg() + sync_msg())
        conn.read_until("Z")

    for in_transaction in (False, True):
        conn = raw_login(s.port)
        try:
            if in_transaction:  # linked to its server, inside BEGIN
                extended(conn, "BEGIN")
                extended(conn, "SELECT 1")
            conn.send(query_msg("SELECT 1; DROP TABLE IF EXISTS nothing_here"))
            err = conn.expect_error()
            assert (err["S"], err["C"]) == ("FATAL", "0A000"), err
            assert "disable_pqexec" in err["M"], err
            assert conn.is_closed(5)
        finally:
            conn.close()
    wait_until(lambda: not pg.query("SELECT 1 FROM pg_stat_activity WHERE state LIKE 'idle in "
                                    "transaction%' AND usename = 'app'"),
               10, what="the refused client's transaction to be rolled back")
    admin = psycopg.connect(s.dsn(dbname="pgbouncer", user="admin", password=None),
                            autocommit=True)
    with admin:
        assert admin.execute("SHOW VERSION").fetchone()  # a Query message, on the console
        s.ini_path.write_text(s.ini_path.read_text().replace("disable_pqexec = 1",
                                                             "disable_pqexec = 0"))
        assert admin.execute("RELOAD").statusmessage == "RELOAD"
    with s.connect() as c:
        assert c.execute("SELECT 'simple again'").fetchone() == ("simple again",)


def test_application_name_add_host_shows_the_client_in_pg_stat_activity(start_sluice, pg):
    """PgBouncer's application_name_add_host was ignored with a warning: pg_stat_activity showed
    only sluice's own address for every pooled backend. Now the backend running a client's
    transaction carries the client's address after its application_name."""
    s = start_sluice({"application_name_add_host": 1, "pool_mode": "transaction"})
    with s.connect(application_name="billing") as c:
        local = socket.socket(fileno=c.pgconn.socket)  # the client's own end, borrowed
        try:
            port = local.getsockname()[1]
        finally:
            local.detach()
        want = f"billing - 127.0.0.1:{port}"
        assert c.execute("SHOW application_name").fetchone() == (want,)
        seen = c.execute("SELECT application_name FROM pg_stat_activity "
                         "WHERE pid = pg_backend_pid()").fetchone()
        assert seen == (want,), seen
        c.execute("SET application_name = 'renamed'")  # the client's own SET replaces it
        assert c.execute("SHOW application_name").fetchone() == ("renamed",)
