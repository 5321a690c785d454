"""idle_session_timeout set by a client in transaction mode (docs/pool-modes.md, "Parameters
that act while a session idles").

On Postgres a client's `SET idle_session_timeout` ends that client's own connection once it has
idled that long outside a transaction, with FATAL 57P05. Through sluice the backend a client
used goes back to the pool: it must not carry the client's timeout there (the pool would lose
it, and a client leased it as it died would get an error it never caused), and sluice ends the
client's connection itself, as Postgres would. Postgres is the oracle: each check runs once
directly and once through sluice. Timeouts are 1 s against waits of several seconds, and waits
are for conditions, so that a loaded machine does not flake."""

import re
import signal
import time

import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, REPO, superuser_change, wait_until
from pgwire import PeerClosed, parse_fields, raw_login

TIMEOUT = "1s"
IDLE_FOR = 4.0  # well past TIMEOUT, however loaded the machine
PG_MESSAGE = "terminating connection due to idle-session timeout"


def backend_pids(pg):
    return {r[0] for r in pg.query(
        "SELECT pid FROM pg_stat_activity WHERE usename = %s AND backend_type = 'client backend'",
        [APP_USER])}


def ended_with(conn, timeout):
    """The FATAL the connection was ended with, within timeout s (None: still open)."""
    conn.settimeout(timeout)
    try:
        mtype, payload = conn.read_message()
    except PeerClosed:
        return "closed without an ErrorResponse"
    except OSError:
        return None
    assert mtype == "E", f"unexpected message {mtype!r} while idle"
    fields = parse_fields(payload)
    assert conn.is_closed(10), "the connection stayed open after its FATAL"
    return fields["S"], fields["V"], fields["C"], fields["M"]


def idle_session_ending(port, password=None, **login):
    """SET idle_session_timeout, then idle: what ends the connection, and when."""
    c = raw_login(port, password=password, **login)
    try:
        if not login:
            c.query(f"SET idle_session_timeout = '{TIMEOUT}'")
        start = time.monotonic()
        got = ended_with(c, 30)
        return got, time.monotonic() - start
    finally:
        c.close()


def test_a_clients_idle_session_timeout_ends_its_connection_with_57P05(pg, start_sluice):
    want, _ = idle_session_ending(pg.port, password=APP_PASSWORD)
    assert want == ("FATAL", "FATAL", "57P05", PG_MESSAGE)
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    got, after = idle_session_ending(s.port)
    assert got == want
    assert after >= 0.9, f"ended after {after:.2f} s, before its idle_session_timeout"


def test_a_login_idle_session_timeout_ends_the_connection_as_on_postgres(pg, start_sluice):
    opts = {"options": f"-c idle_session_timeout={TIMEOUT}"}
    want, _ = idle_session_ending(pg.port, password=APP_PASSWORD, **opts)
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as warm:  # the pool's backend exists before the login to watch
        warm.execute("SELECT 1")
    pids = backend_pids(pg)
    got, _ = idle_session_ending(s.port, **opts)
    assert got == want
    assert backend_pids(pg) == pids, "the pooled backend ended under the client's login value"


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_the_pooled_backend_does_not_idle_under_a_clients_timeout(pg, start_sluice, mode):
    """The backend the client used goes back to the pool with its own value: it outlives the
    client's timeout many times over, and another client sees its own value there."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as other:
        other.execute("SELECT 1")
        pids = backend_pids(pg)
        assert len(pids) == 1
        a = raw_login(s.port)
        try:
            a.query(f"SET idle_session_timeout = '{TIMEOUT}'")
            time.sleep(IDLE_FOR)
            assert backend_pids(pg) == pids, "the pooled backend was killed or replaced"
            assert other.execute("SHOW idle_session_timeout").fetchone() == ("0",)
            other.execute("SET idle_session_timeout = '5min'")
            assert other.execute("SHOW idle_session_timeout").fetchone() == ("5min",)
            assert backend_pids(pg) == pids
        finally:
            a.close()


def test_a_client_in_a_transaction_is_not_ended(pg, start_sluice):
    """idle_session_timeout counts only outside a transaction (idle in one is
    idle_in_transaction_session_timeout's): on Postgres and through sluice, a transaction left
    open past it goes on, and the connection ends once idle after its COMMIT."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    for port, password in ((pg.port, APP_PASSWORD), (s.port, None)):
        c = raw_login(port, password=password)
        try:
            c.query(f"SET idle_session_timeout = '{TIMEOUT}'")
            c.query("BEGIN")
            time.sleep(IDLE_FOR)
            assert c.query("SELECT 1")[0] == [["1"]]
            time.sleep(IDLE_FOR / 2)
            assert c.query("COMMIT")[1] == ["COMMIT"]
            got = ended_with(c, 30)
            assert got and got[2] == "57P05", f"after COMMIT and idle: {got}"
        finally:
            c.close()


def test_a_clients_queries_keep_it_alive(start_sluice):
    """Each request restarts the count, as on Postgres: a client that works more often than its
    timeout is never ended."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    c = raw_login(s.port)
    try:
        c.query("SET idle_session_timeout = '3s'")
        for _ in range(8):
            time.sleep(0.5)
            assert c.query("SELECT 1")[0] == [["1"]]
        c.query("SET idle_session_timeout = 0")
        time.sleep(IDLE_FOR)
        assert c.query("SELECT 2")[0] == [["2"]]
    finally:
        c.close()


def test_session_mode_is_postgres_itself(pg, start_sluice):
    """The backend is the client's: Postgres ends it and the client sees Postgres's FATAL;
    the pool opens another for the next client."""
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    want, _ = idle_session_ending(pg.port, password=APP_PASSWORD)
    got, _ = idle_session_ending(s.port)
    assert got == want
    with s.connect() as next_client:
        wait_until(lambda: next_client.execute("SELECT 1").fetchone() == (1,), 10,
                   what="the next client served")
        assert next_client.execute("SHOW idle_session_timeout").fetchone() == ("0",)


def test_idle_in_transaction_session_timeout_acts_only_in_the_clients_transaction(pg,
                                                                                   start_sluice):
    """Its kin needs nothing of sluice: a pooled backend is never idle inside a transaction, so
    the value it keeps until the next client's sync ends nothing in the pool, and the client
    idle in its own transaction gets Postgres's own 25P03."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    for port, password in ((pg.port, APP_PASSWORD), (s.port, None)):
        c = raw_login(port, password=password)
        try:
            c.query("SET idle_in_transaction_session_timeout = '1s'")
            if port == s.port:
                pids = backend_pids(pg)
                time.sleep(IDLE_FOR)
                assert backend_pids(pg) == pids, "the pooled backend ended while idle"
            c.query("BEGIN")
            got = ended_with(c, 30)
            assert got and got[2] == "25P03", f"idle in the transaction: {got}"
        finally:
            c.close()


def test_session_mode_backend_opened_with_a_login_timeout_waits_in_the_pool(pg, start_sluice):
    """Session mode opens a backend with its client's login parameters, so its own value is the
    client's: after that client leaves, the backend is pooled with the parameter off, and the
    next client with the same login gets its value back, as Postgres gives it (SHOW, RESET),
    and is ended by Postgres when it idles."""
    opts = {"options": f"-c idle_session_timeout={TIMEOUT}"}
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    with s.connect(**opts) as first:
        first.execute("SELECT 1")
    pids = backend_pids(pg)
    assert len(pids) == 1
    time.sleep(IDLE_FOR)
    assert backend_pids(pg) == pids, "the pooled backend ended under its former client's value"
    c = raw_login(s.port, **opts)
    try:
        assert backend_pids(pg) == pids, "the next client with that login got another backend"
        assert c.query("SHOW idle_session_timeout")[0] == [[TIMEOUT]]
        c.query("RESET idle_session_timeout")
        assert c.query("SHOW idle_session_timeout")[0] == [[TIMEOUT]]
        assert ended_with(c, 30) == ("FATAL", "FATAL", "57P05", PG_MESSAGE)
    finally:
        c.close()


@pytest.mark.parametrize("reset", ["", "SELECT 1"])
def test_session_mode_backend_leaves_a_clients_set_behind_whatever_the_reset_query(pg, start_sluice,
                                                                                    reset):
    """Session mode with a server_reset_query other than DISCARD ALL: sluice does not follow
    the client's statements, and the backend went back to the pool under the client's SET
    idle_session_timeout, where Postgres ended it (a new backend and login for the next
    client). Now the lease's end resets it; the next client sees its reset value."""
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1, "server_reset_query": reset})
    a = raw_login(s.port)
    try:
        a.query("SELECT 1")
        pids = backend_pids(pg)
        a.query(f"SET idle_session_timeout = '{TIMEOUT}'")
    finally:
        a.close()
    time.sleep(IDLE_FOR)
    assert backend_pids(pg) == pids, "the pooled backend ended under the client's SET"
    with s.connect() as b:
        assert b.execute("SHOW idle_session_timeout").fetchone() == ("0",)


# A role of its own for the tests below that change it (app2: its own password, and no other
# test's sluice logs in as it): the database entry logs every server in as it.
ROLE, ROLE_PASSWORD = "app2", "app2pass"
ROLE_SETTINGS = {
    "role": f"ALTER ROLE {ROLE} SET idle_session_timeout = '{TIMEOUT}'",
    "role in database": f"ALTER ROLE {ROLE} IN DATABASE {APP_DB} SET idle_session_timeout = "
                        f"'{TIMEOUT}'",
    "database": f"ALTER DATABASE {APP_DB} SET idle_session_timeout = '{TIMEOUT}'",
}
ROLE_UNDO = {
    "role": f"ALTER ROLE {ROLE} RESET idle_session_timeout",
    "role in database": f"ALTER ROLE {ROLE} IN DATABASE {APP_DB} RESET idle_session_timeout",
    "database": f"ALTER DATABASE {APP_DB} RESET idle_session_timeout",
}


def role_session(port, password=None, **login):
    """What a client of ROLE sees of the role's value: SHOW, SHOW after RESET, and what ends
    the connection once it idles."""
    c = raw_login(port, user=ROLE, password=password, **login)
    try:
        shown = c.query("SHOW idle_session_timeout")[0]
        c.query("RESET idle_session_timeout")
        after_reset = c.query("SHOW idle_session_timeout")[0]
        return shown, after_reset, ended_with(c, 30 if not login else IDLE_FOR)
    finally:
        c.close()


@pytest.mark.parametrize("setting", sorted(ROLE_SETTINGS))
def test_a_roles_or_databases_value_ends_clients_not_pooled_backends(pg, start_sluice, setting):
    """ALTER ROLE/DATABASE ... SET idle_session_timeout: Postgres gives it to every session of
    the role at login. Through sluice the backends logged in with it ended while they idled in
    the pool (a reconnect for the next client, or an error for one leased as it died), and the
    client was never ended. Now the pool's backends outlive it, and a client of the role sees
    what Postgres shows (SHOW, RESET) and is ended as Postgres ends it."""
    with superuser_change(pg, ROLE_SETTINGS[setting], ROLE_UNDO[setting]):
        want = role_session(pg.port, password=ROLE_PASSWORD)
        assert want == ([[TIMEOUT]], [[TIMEOUT]], ("FATAL", "FATAL", "57P05", PG_MESSAGE))
        s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1},
                         databases={APP_DB: pg.db_entry(user=ROLE, password=ROLE_PASSWORD)})
        with s.connect(user=ROLE) as warm:
            # the first server reads the value (its own: it serves this lease, then closes)
            warm.execute("SELECT 1")
            warm.execute("SELECT 1")
            wait_until(lambda: len(backend_pids_of(pg, ROLE)) == 1, 10, what="one backend")
            pids = backend_pids_of(pg, ROLE)
            time.sleep(IDLE_FOR)
            assert backend_pids_of(pg, ROLE) == pids, "the pooled backend ended while idle"
            assert role_session(s.port) == want
            assert backend_pids_of(pg, ROLE) == pids, "the pooled backend ended while idle"
            # a client's own startup value outranks the role's, as on Postgres
            opts = {"options": "-c idle_session_timeout=0"}
            assert role_session(s.port, **opts) == role_session(pg.port, password=ROLE_PASSWORD,
                                                                **opts)


def backend_pids_of(pg, user):
    return {r[0] for r in pg.query(
        "SELECT pid FROM pg_stat_activity WHERE usename = %s AND backend_type = 'client backend'",
        [user])}


def logged_statements(pg, since):
    """ROLE's statements in Postgres's log (log_statement = all) past byte offset since."""
    text = pg.logfile.read_bytes()[since:].decode(errors="replace")
    return [line.split("statement: ", 1)[1] for line in text.splitlines()
            if f"{ROLE}@{APP_DB} " in line and "statement: " in line]


@pytest.mark.parametrize("how", ["login", "SET"])
def test_a_client_that_turns_it_off_costs_no_statement(pg, start_sluice, how):
    """Every server logs in with idle_session_timeout off: a client that wants it off (at login
    or by SET) has what it wants on any of them. It paid a SET before each transaction and a
    RESET after it. Postgres's own log of the statements it ran is the witness."""
    with superuser_change(pg, f"ALTER ROLE {ROLE} SET log_statement = 'all'",
                          f"ALTER ROLE {ROLE} RESET log_statement"):
        s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1},
                         databases={APP_DB: pg.db_entry(user=ROLE, password=ROLE_PASSWORD)})
        login = {"options": "-c idle_session_timeout=0"} if how == "login" else {}
        since = pg.logfile.stat().st_size
        c = raw_login(s.port, user=ROLE, **login)
        try:
            if how == "SET":
                c.query("SET idle_session_timeout = 0")
            for i in range(5):
                assert c.query(f"SELECT {i} AS marker")[0] == [[str(i)]]
            assert c.query("SHOW idle_session_timeout")[0] == [["0"]]
        finally:
            c.close()
        wait_until(lambda: any("SHOW idle_session_timeout" in st
                               for st in logged_statements(pg, since)), 10,
                   what="Postgres's log of the client's statements")
        # sluice's SETs and RESETs of it (its probe, once per server, reads the backend's own
        # value at login, and turns it off only where it is not 0)
        sent = [st for st in logged_statements(pg, since)
                if "set_config('idle_session_timeout'" in st and "max_connections" not in st]
        assert sent == [], f"sluice's own statements for it: {sent}"


def test_a_reload_to_another_database_learns_its_value(pg, start_sluice):
    """The database entry's dbname changes on a reload, from one where the pool's role has an
    idle_session_timeout (ALTER ROLE ... IN DATABASE) to one where it has none. The pool kept
    what it had learned: its servers logged in with the option, so their probe could not read
    the new value, and every client was still given the old one (SHOW, and sluice ending it
    idle that long) where Postgres gives that role's sessions in that database 0."""
    with superuser_change(pg, ROLE_SETTINGS["role in database"], ROLE_UNDO["role in database"]):
        s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1},
                         databases={APP_DB: pg.db_entry(user=ROLE, password=ROLE_PASSWORD)})
        for _ in range(2):  # the second is served by a server that logged in with it off
            c = raw_login(s.port, user=ROLE)
            try:
                assert c.query("SHOW idle_session_timeout")[0] == [[TIMEOUT]]
            finally:
                c.close()
        text = s.ini_path.read_text()
        s.ini_path.write_text(text.replace(f"dbname={APP_DB}", "dbname=postgres"))
        mark = s.mark()
        s.send_signal(signal.SIGHUP)
        s.wait_for_log(r"configuration reloaded", since=mark)
        want = role_session_of(pg.port, ROLE, "postgres", ROLE_PASSWORD)
        assert want == ([["0"]], [["0"]], None)
        for _ in range(2):
            assert role_session_of(s.port, ROLE, APP_DB) == want


def role_session_of(port, user, database, password=None):
    """What a client sees of idle_session_timeout: SHOW, SHOW after RESET, and whether it is
    ended within IDLE_FOR (None: it is not)."""
    c = raw_login(port, user=user, database=database, password=password)
    try:
        shown = c.query("SHOW idle_session_timeout")[0]
        c.query("RESET idle_session_timeout")
        return shown, c.query("SHOW idle_session_timeout")[0], ended_with(c, IDLE_FOR)
    finally:
        c.close()


def probe_sql():
    """server_connect.c's server_probe_sql, as the C compiler joins its string literals."""
    src = (REPO / "src" / "core" / "server_connect.c").read_text()
    body = re.search(r"server_probe_sql\[\] =\n(.*?);\n", src, re.S).group(1)
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', body))


def test_the_login_probe_reads_max_connections_where_idle_session_timeout_does_not_exist(pg):
    """Postgres 13 and older have no idle_session_timeout. The probe read it from a subquery of
    pg_settings, which then had no row: the probe answered no row at all, so the pool never
    learnt max_connections (NN% caps, /health). Here the name is one no Postgres has, in place
    of idle_session_timeout: the probe still gives its one row, and "0" for the timeout (so no
    server is sent an option such a Postgres would refuse)."""
    sql = probe_sql()
    assert sql.count("'idle_session_timeout'") >= 2
    absent = sql.replace("'idle_session_timeout'", "'sluice_test.no_such_parameter'")
    rows = pg.query(absent, dbname=APP_DB)
    max_connections = pg.query("SHOW max_connections")[0][0]
    assert len(rows) == 1 and rows[0][0].split(" ")[0] == max_connections, rows
    assert rows[0][0].split(" ")[2] == "0", rows
    assert pg.query(sql, dbname=APP_DB)[0][0].split(" ")[2] == "0"
