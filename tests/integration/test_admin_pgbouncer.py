"""The admin console as a PgBouncer (1.2x) user knows it: the same SHOW column sets (from
PgBouncer's doc/usage.md and src/services/admin.c), the admin database listed in SHOW DATABASES, the verbs
DISABLE/ENABLE, SUSPEND (refused: sluice has no online restart), SHUTDOWN WAIT_FOR_CLIENTS /
WAIT_FOR_SERVERS, SHOW SOCKETS and SHOW PEERS, and the client caps max_db_client_connections and
max_user_client_connections (global and per entry) with their SHOW DATABASES/USERS columns."""

import socket
import time

import psycopg
import pytest

from conftest import wait_until
from pgwire import ServerError, raw_login

ADMIN = "admin"
STATS = "watcher"
CONSOLE_MAIN = {"admin_users": ADMIN, "stats_users": STATS, "pool_mode": "transaction"}

# PgBouncer's socket_header(): SHOW CLIENTS and SHOW SERVERS, then SHOW SOCKETS adds the rest.
PGB_SOCKET_COLS = ["type", "user", "database", "replication", "state", "addr", "port",
                   "local_addr", "local_port", "connect_time", "request_time", "wait", "wait_us",
                   "close_needed", "ptr", "link", "remote_pid", "tls", "application_name",
                   "prepared_statements", "id"]
PGB_SOCKET_DEBUG_COLS = ["recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain",
                         "pkt_avail", "send_avail"]
PGB_DATABASES_COLS = ["name", "host", "port", "database", "force_user", "pool_size",
                      "min_pool_size", "reserve_pool_size", "server_lifetime", "pool_mode",
                      "load_balance_hosts", "max_connections", "current_connections",
                      "max_client_connections", "current_client_connections", "paused",
                      "disabled"]
PGB_USERS_COLS = ["name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
                  "current_connections", "max_user_client_connections",
                  "current_client_connections"]
PGB_POOLS_COLS = ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
                  "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled",
                  "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us",
                  "pool_mode", "load_balance_hosts"]


def console(s, user=ADMIN, dbname="pgbouncer"):
    return psycopg.connect(s.dsn(dbname=dbname, user=user, password=None), autocommit=True,
                           prepare_threshold=None)


def columns(con, what):
    return [d.name for d in con.execute(f"SHOW {what}").description]


def show(con, what):
    cur = con.execute(f"SHOW {what}")
    names = [d.name for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def start(start_sluice, databases=None, users=None, **main):
    m = dict(CONSOLE_MAIN)
    m.update(main)
    return start_sluice(m, databases=databases, users=users)


def refused(s, dbname="appdb", user="app"):
    """The ErrorResponse a new login through sluice gets (fields by code: C, M, H, ...)."""
    with pytest.raises(ServerError) as ei:
        raw_login(s.port, user=user, database=dbname).close()
    return ei.value


# ---- SHOW column sets ---------------------------------------------------------------------------


def test_show_databases_lists_the_admin_database_with_pgbouncers_columns(start_sluice):
    s = start(start_sluice)
    with s.connect() as c, console(s) as adm:
        c.execute("SELECT 1")
        assert columns(adm, "DATABASES") == PGB_DATABASES_COLS + ["max_db_connections"]
        dbs = {r["name"]: r for r in show(adm, "DATABASES")}
        admin_db = dbs["pgbouncer"]
        assert admin_db["host"] is None and admin_db["port"] == s.port
        assert admin_db["database"] == "pgbouncer" and admin_db["pool_mode"] == "statement"
        assert admin_db["current_client_connections"] == 1  # this session
        assert admin_db["current_connections"] == 0 and admin_db["disabled"] == 0
        assert "sluice" in dbs  # sluice's own name for the console
        app = dbs["appdb"]
        assert app["server_lifetime"] == 3600 and app["reserve_pool_size"] == 0
        assert app["pool_mode"] is None  # PgBouncer: NULL unless the entry overrides it
        assert app["current_client_connections"] == 1
        assert app["max_client_connections"] == 0
        lists = {r["list"]: r["items"] for r in show(adm, "LISTS")}
        assert lists["databases"] == len(dbs)
        assert lists["peers"] == 0 and lists["peer_pools"] == 0


def test_show_clients_servers_and_sockets_have_pgbouncers_columns_and_ids(start_sluice):
    s = start(start_sluice)
    a = s.connect(application_name="holder")
    a.execute("BEGIN")
    (pid,) = a.execute("SELECT pg_backend_pid()").fetchone()
    try:
        with console(s) as adm:
            assert columns(adm, "CLIENTS") == PGB_SOCKET_COLS + ["held_ms"]
            assert columns(adm, "SERVERS") == PGB_SOCKET_COLS + ["held_ms"]
            assert columns(adm, "SOCKETS") == PGB_SOCKET_COLS + PGB_SOCKET_DEBUG_COLS + ["held_ms"]
            assert columns(adm, "ACTIVE_SOCKETS") == columns(adm, "SOCKETS")
            assert columns(adm, "USERS") == PGB_USERS_COLS
            assert columns(adm, "POOLS")[:len(PGB_POOLS_COLS)] == PGB_POOLS_COLS

            clients = {c["application_name"]: c for c in show(adm, "CLIENTS")}
            holder = clients["holder"]
            assert holder["replication"] == "none" and holder["prepared_statements"] == 0
            server = [x for x in show(adm, "SERVERS") if x["remote_pid"] == pid][0]
            assert server["replication"] == "none" and server["id"] > 0
            sockets = show(adm, "SOCKETS")
            by_id = {(x["type"], x["id"]): x for x in sockets}
            assert by_id[("C", holder["id"])]["state"] == "cl_active"
            assert by_id[("S", server["id"])]["state"] == "sv_active"
            assert by_id[("S", server["id"])]["link"] == holder["ptr"]
            assert all(x["recv_pos"] >= x["pkt_pos"] >= 0 for x in sockets)
    finally:
        a.close()


def test_show_peers_and_peer_pools_have_pgbouncers_columns_and_no_rows(start_sluice):
    s = start(start_sluice)
    with console(s, user=STATS) as mon:
        assert columns(mon, "PEERS") == ["peer_id", "host", "port", "pool_size"]
        assert show(mon, "PEERS") == []
        assert columns(mon, "PEER_POOLS") == ["peer_id", "cl_active_cancel_req",
                                              "cl_waiting_cancel_req", "sv_active_cancel",
                                              "sv_login"]
        assert show(mon, "PEER_POOLS") == []


# ---- DISABLE / ENABLE / SUSPEND -----------------------------------------------------------------


def test_disable_refuses_new_logins_with_55000_until_enable(start_sluice):
    s = start(start_sluice)
    inside = s.connect()
    inside.execute("SELECT 1")
    try:
        with console(s) as adm:
            assert adm.execute("DISABLE appdb").statusmessage == "DISABLE"
            assert {r["name"]: r for r in show(adm, "DATABASES")}["appdb"]["disabled"] == 1
            err = refused(s)
            assert err.sqlstate == "55000", err
            assert err.fields["M"] == "database does not allow connections: appdb", err
            assert err.fields["S"] == "FATAL"
            # the sessions already open go on
            assert inside.execute("SELECT 'still here'").fetchone() == ("still here",)
            with pytest.raises(psycopg.Error) as ei:
                adm.execute("DISABLE pgbouncer")
            assert ei.value.sqlstate == "3D000"
            with pytest.raises(psycopg.Error) as ei:
                adm.execute("DISABLE nosuchdb")
            assert ei.value.sqlstate == "3D000"
            with console(s, user=STATS) as mon:
                with pytest.raises(psycopg.Error) as ei:
                    mon.execute("ENABLE appdb")
                assert ei.value.sqlstate == "42501"
            assert adm.execute("ENABLE appdb").statusmessage == "ENABLE"
            with s.connect() as again:
                assert again.execute("SELECT 1").fetchone() == (1,)
            assert {r["name"]: r for r in show(adm, "DATABASES")}["appdb"]["disabled"] == 0
    finally:
        inside.close()


def test_suspend_is_refused_with_0a000_naming_what_to_do_instead(start_sluice):
    s = start(start_sluice)
    with console(s) as adm:
        with pytest.raises(psycopg.Error) as ei:
            adm.execute("SUSPEND")
        assert ei.value.sqlstate == "0A000"
        assert "SUSPEND is not supported" in ei.value.diag.message_primary
        assert "SHUTDOWN WAIT_FOR_CLIENTS" in ei.value.diag.message_hint
        # nothing was suspended: the console and the clients go on
        with s.connect() as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
        assert adm.execute("SHOW VERSION").fetchone()[0].startswith("sluice")


# ---- SHUTDOWN WAIT_FOR_CLIENTS / WAIT_FOR_SERVERS -----------------------------------------------


def connection_refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


@pytest.mark.timeout(60)
def test_shutdown_wait_for_clients_serves_connected_clients_and_exits_when_they_leave(
        start_sluice):
    s = start(start_sluice)
    idle = s.connect()
    idle.execute("SELECT 1")
    adm = console(s)
    try:
        assert adm.execute("SHUTDOWN WAIT_FOR_CLIENTS").statusmessage == "SHUTDOWN"
        wait_until(lambda: connection_refused(s.port), 5, what="the listener to close")
        time.sleep(1.0)  # several background passes: nothing closes the clients
        # the connected client goes on, getting a server for each transaction as before
        for _ in range(3):
            assert idle.execute("SELECT 'served'").fetchone() == ("served",)
        assert adm.execute("SHOW VERSION").fetchone()[0].startswith("sluice")
        assert s.proc.poll() is None
        idle.close()
        time.sleep(0.5)
        assert s.proc.poll() is None  # the console session is a client too
    finally:
        idle.close()
        adm.close()
    assert s.wait_exit(10) == 0


@pytest.mark.timeout(60)
def test_shutdown_wait_for_servers_lets_the_transaction_finish_then_exits(start_sluice):
    s = start(start_sluice)
    holder = s.connect()
    holder.execute("BEGIN")
    holder.execute("SELECT 1")
    adm = raw_login(s.port, user=ADMIN, database="pgbouncer")
    try:
        rows, tags = adm.query("SHUTDOWN WAIT_FOR_SERVERS")
        assert tags == ["SHUTDOWN"]
        wait_until(lambda: connection_refused(s.port), 5, what="the listener to close")
        assert holder.execute("SELECT 'inside'").fetchone() == ("inside",)
        holder.execute("COMMIT")
        assert s.wait_exit(15) == 0
    finally:
        holder.close()
        adm.close()


# ---- max_db_client_connections / max_user_client_connections -------------------------------------


def test_max_db_client_connections_per_database_overrides_the_global_one_with_53300(
        start_sluice, pg):
    s = start(start_sluice, max_db_client_connections=3,
              databases={"appdb": pg.db_entry(max_db_client_connections=2),
                         "otherdb": pg.db_entry()})
    held = [s.connect() for _ in range(2)]
    try:
        for c in held:
            c.execute("SELECT 1")
        err = refused(s)
        assert err.sqlstate == "53300", err
        assert err.fields["M"].startswith(
            "client connections exceeded (max_db_client_connections): database \"appdb\""), err
        with console(s) as adm:  # the console is not counted, and not refused
            dbs = {r["name"]: r for r in show(adm, "DATABASES")}
            assert dbs["appdb"]["max_client_connections"] == 2
            assert dbs["appdb"]["current_client_connections"] == 2
            assert dbs["otherdb"]["max_client_connections"] == 3
        # the global cap for the other database, counted apart
        others = [s.connect(dbname="otherdb") for _ in range(3)]
        try:
            assert refused(s, dbname="otherdb").sqlstate == "53300"
        finally:
            for c in others:
                c.close()
        held.pop().close()
        c = wait_until(lambda: _try_connect(s), 5, what="a login once a client has left")
        c.close()
    finally:
        for c in held:
            c.close()


def _try_connect(s, **kw):
    try:
        return s.connect(**kw)
    except psycopg.OperationalError:
        return None


def test_max_user_client_connections_counts_each_user_across_databases_with_53300(
        start_sluice, pg):
    s = start(start_sluice, max_user_client_connections=1,
              databases={"appdb": pg.db_entry(), "otherdb": pg.db_entry()},
              users={"wide": "max_user_client_connections=2"})
    first = s.connect(user="narrow", password=None)
    try:
        err = refused(s, dbname="otherdb", user="narrow")
        assert err.sqlstate == "53300", err
        assert err.fields["M"].startswith(
            "client connections exceeded (max_user_client_connections): user \"narrow\""), err
        w1 = s.connect(user="wide", password=None)
        w2 = s.connect(dbname="otherdb", user="wide", password=None)
        try:
            assert refused(s, user="wide").sqlstate == "53300"
            with console(s) as adm:
                users = {r["name"]: r for r in show(adm, "USERS")}
                assert users["wide"]["max_user_client_connections"] == 2
                assert users["wide"]["current_client_connections"] == 2
                assert users["narrow"]["max_user_client_connections"] == 1
                assert users["narrow"]["current_client_connections"] == 1
        finally:
            w1.close()
            w2.close()
    finally:
        first.close()


# ---- RECONNECT / KILL_CLIENT ----------------------------------------------------------------------


def test_reconnect_in_session_mode_closes_the_server_when_its_client_leaves(start_sluice, pg):
    s = start(start_sluice, pool_mode="session")
    c = s.connect()
    (pid,) = c.execute("SELECT pg_backend_pid()").fetchone()
    try:
        with console(s) as adm:
            assert adm.execute("RECONNECT appdb").statusmessage == "RECONNECT"
            mine = [x for x in show(adm, "SERVERS") if x["remote_pid"] == pid]
            assert [x["close_needed"] for x in mine] == [1]
            # the session keeps its server until it ends (PgBouncer: closed once released)
            assert c.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
            c.close()
            wait_until(lambda: pid not in [r[0] for r in pg.query(
                "SELECT pid FROM pg_stat_activity")], 5, what="the released server closed")
            with s.connect() as d:
                assert d.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
    finally:
        c.close()
