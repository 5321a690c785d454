"""The admin console: a virtual database ("sluice" or "pgbouncer") answering SHOW commands and
PAUSE/RESUME/RECONNECT/WAIT_CLOSE/KILL/KILL_CLIENT/RELOAD/SET/SHUTDOWN over the simple query
protocol, for admin_users (everything) and stats_users (SHOW only)."""

import contextlib
import re
import socket
import threading
import time

import psycopg
import pytest

from conftest import Background, binary_is_sanitized, render_ini, wait_until
from pgwire import (RawConn, ServerError, bind_msg, execute_msg, parse_fields, parse_msg,
                    query_msg, raw_login, startup_packet, sync_msg)

ADMIN = "admin"
STATS = "watcher"
CONSOLE_MAIN = {"admin_users": ADMIN, "stats_users": STATS, "pool_mode": "transaction"}


def console(s, user=ADMIN, dbname="sluice"):
    """A psycopg session on the console. Queries without parameters go as simple Query
    messages (psycopg uses the extended protocol only to send parameters)."""
    return psycopg.connect(s.dsn(dbname=dbname, user=user, password=None), autocommit=True,
                           prepare_threshold=None)


def show(con, what):
    """SHOW <what> as a list of dicts keyed by column name."""
    cur = con.execute(f"SHOW {what}")
    names = [d.name for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def pool_row(con, db="appdb", user="app"):
    rows = [r for r in show(con, "POOLS") if r["database"] == db and r["user"] == user]
    assert len(rows) == 1, rows
    return rows[0]


def start(start_sluice, **main):
    m = dict(CONSOLE_MAIN)
    m.update(main)
    return start_sluice(m)


def hold_transaction(s, **kw):
    """A client inside a transaction, so it keeps its server (transaction mode)."""
    c = s.connect(**kw)
    c.execute("BEGIN")
    c.execute("SELECT 1")
    return c


# ---- SHOW -----------------------------------------------------------------------------------------


def test_show_pools_counts_active_and_waiting_clients(start_sluice):
    s = start(start_sluice, default_pool_size=2)
    holders = [hold_transaction(s) for _ in range(2)]
    waiter = s.connect()
    bg = Background(waiter.execute, "SELECT 'waited'")
    try:
        time.sleep(0.05)  # so the wait shows as more than 0 us
        with console(s) as adm:
            row = wait_until(lambda: (lambda r: r if r["cl_waiting"] == 1 else None)(pool_row(adm)),
                             5, what="one waiting client in SHOW POOLS")
            assert row["cl_active"] == 2
            assert row["sv_active"] == 2
            assert row["sv_idle"] == 0
            assert row["pool_size"] == 2
            assert row["pool_mode"] == "transaction"
            assert row["maxwait"] * 1_000_000 + row["maxwait_us"] > 0
            holders[0].execute("COMMIT")
            assert bg.result(5).fetchone() == ("waited",)
            row = wait_until(lambda: (lambda r: r if r["cl_waiting"] == 0 and r["sv_active"] == 1
                                      else None)(pool_row(adm)), 5, what="the waiter served")
            assert row["cl_active"] == 3  # PgBouncer's meaning: linked or idle
            assert row["sv_active"] == 1
            assert row["sv_idle"] + row["sv_used"] == 1
            assert row["maxwait"] == 0 and row["maxwait_us"] == 0
            assert row["cl_idle"] == 2  # the committed holder and the served waiter
    finally:
        for c in holders + [waiter]:
            c.close()


def test_show_pools_columns_follow_pgbouncer_then_sluice_extras(start_sluice):
    s = start(start_sluice)
    with console(s) as adm:
        cur = adm.execute("SHOW POOLS")
        names = [d.name for d in cur.description]
        assert names == ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
                         "cl_waiting_cancel_req", "sv_active", "sv_active_cancel",
                         "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login",
                         "maxwait", "maxwait_us", "pool_mode", "load_balance_hosts", "pool_size",
                         "cl_idle", "paused",
                         "breaker"]
        cur = adm.execute("SHOW CLIENTS")
        names = [d.name for d in cur.description]
        assert names[:21] == ["type", "user", "database", "replication", "state", "addr", "port",
                              "local_addr", "local_port", "connect_time", "request_time", "wait",
                              "wait_us", "close_needed", "ptr", "link", "remote_pid", "tls",
                              "application_name", "prepared_statements", "id"]
        assert names[21:] == ["held_ms"]
        cur = adm.execute("SHOW SERVERS")
        assert [d.name for d in cur.description] == names


def test_show_clients_lists_application_names_and_links_to_servers(start_sluice, pg):
    s = start(start_sluice)
    a = hold_transaction(s, application_name="billing-worker")
    b = s.connect(application_name="report-ui")
    try:
        (pid,) = a.execute("SELECT pg_backend_pid()").fetchone()
        with console(s) as adm:
            clients = show(adm, "CLIENTS")
            by_app = {c["application_name"]: c for c in clients}
            assert "billing-worker" in by_app and "report-ui" in by_app, clients
            billing = by_app["billing-worker"]
            assert (billing["type"], billing["user"], billing["database"]) == ("C", "app", "appdb")
            assert billing["state"] == "active"
            assert billing["addr"] == "127.0.0.1" and billing["local_port"] == s.port
            assert billing["link"]
            assert billing["held_ms"] >= 0
            assert by_app["report-ui"]["state"] == "idle"
            assert by_app["report-ui"]["link"] == ""
            ids = [c["id"] for c in clients]
            assert len(set(ids)) == len(ids)
            # the console session itself is listed too
            assert any(c["database"] == "sluice" and c["user"] == ADMIN for c in clients)
            servers = show(adm, "SERVERS")
            mine = [x for x in servers if x["remote_pid"] == pid]
            assert len(mine) == 1, servers
            assert mine[0]["state"] == "active"
            assert mine[0]["link"] == billing["ptr"]
            assert mine[0]["type"] == "S" and mine[0]["port"] == pg.port
            assert mine[0]["addr"] == "127.0.0.1" and mine[0]["close_needed"] == 0
    finally:
        a.close()
        b.close()


def test_show_stats_counts_queries_and_bytes_per_database(start_sluice):
    s = start(start_sluice)
    with s.connect() as c:
        for _ in range(5):
            c.execute("SELECT 1")
    with console(s) as adm:
        totals = {r["database"]: r for r in show(adm, "STATS_TOTALS")}
        t = totals["appdb"]
        assert t["query_count"] >= 5
        assert t["xact_count"] >= 5
        assert t["bytes_received"] > 0 and t["bytes_sent"] > 0
        assert t["query_time"] >= 0
        stats = {r["database"]: r for r in show(adm, "STATS")}
        assert stats["appdb"]["total_query_count"] == t["query_count"]
        assert stats["appdb"]["total_received"] == t["bytes_received"]


def averages_after_20_queries(c, adm):
    """appdb's SHOW STATS_AVERAGES row once it counts the 20 queries c runs here."""
    for _ in range(20):
        c.execute("SELECT 1")

    def averaged():
        rows = {r["database"]: r for r in show(adm, "STATS_AVERAGES")}
        r = rows.get("appdb")
        return r if r and r["query_count"] > 0 else None
    return wait_until(averaged, 5, interval=0.2, what="STATS_AVERAGES with queries")


@pytest.mark.timeout(30)
def test_show_stats_averages_are_rates_over_stats_period(start_sluice):
    s = start(start_sluice, stats_period=1)
    with s.connect() as c, console(s) as adm:
        r = averages_after_20_queries(c, adm)
        # 20 queries within one period of 1 s: a rate of at most 20 per second
        assert 1 <= r["query_count"] <= 20
        assert r["bytes_received"] > 0


@pytest.mark.timeout(30)
def test_log_stats_off_keeps_the_stats_line_out_of_the_log_and_the_averages_on(start_sluice):
    """PgBouncer's log_stats = 0 was ignored with a warning: the stats line went on filling the
    log every stats_period. Now it stays out, and SHOW STATS_AVERAGES still averages over
    stats_period."""
    s = start(start_sluice, stats_period=1, log_stats=0)
    with s.connect() as c, console(s) as adm:
        averages_after_20_queries(c, adm)
        time.sleep(2.5)  # two stats periods and more
    assert not [line for line in s.log if "stats appdb/app:" in line], s.log
    assert "log_stats" not in s.log_text()  # no warning about the key either


def test_show_databases_users_config_lists_and_version(start_sluice):
    s = start(start_sluice, default_pool_size=3)
    with s.connect() as c:
        c.execute("SELECT 1")
    with console(s) as adm:
        dbs = {r["name"]: r for r in show(adm, "DATABASES")}
        d = dbs["appdb"]
        assert d["host"] == "127.0.0.1" and d["database"] == "appdb" and d["force_user"] == "app"
        # pool_mode: PgBouncer's meaning, the entry's own (none here); SHOW POOLS has the mode used
        assert d["pool_size"] == 3 and d["pool_mode"] is None
        assert d["current_connections"] >= 1 and d["paused"] == 0
        users = {r["name"]: r for r in show(adm, "USERS")}
        assert "app" in users
        config = {r["key"]: r for r in show(adm, "CONFIG")}
        assert config["default_pool_size"]["value"] == "3"
        assert config["default_pool_size"]["source"] == "file"
        assert config["default_pool_size"]["default"] == "20"
        assert config["listen_port"]["changeable"] == "no"
        assert config["min_pool_size"]["source"] == "default"
        lists = {r["list"]: r["items"] for r in show(adm, "LISTS")}
        assert lists["databases"] == len(dbs) == 3  # appdb and the console's two names
        assert lists["pools"] == 1
        assert lists["used_clients"] >= 1  # this console session
        (version,) = adm.execute("SHOW VERSION").fetchone()
        assert version.startswith("sluice ")
        assert adm.info.parameter_status("server_version").startswith("15.0 (sluice ")
        assert adm.info.encoding == "utf-8"


def test_show_budgets_lists_configured_budgets_with_live_counts(start_sluice, pg):
    s = start(start_sluice)
    text = s.ini_path.read_text() + "\n[budgets]\nreports = app=report* max_servers=2 max_clients=9\n"
    s.ini_path.write_text(text)
    with console(s) as adm:
        adm.execute("RELOAD")
        with hold_transaction(s, application_name="report-daily"):
            budgets = {r["name"]: r for r in show(adm, "BUDGETS")}
            r = budgets["reports"]
            assert (r["max_servers"], r["max_clients"]) == (2, 9)
            assert r["app"] == "report*"
            assert r["cl_active"] == 1 and r["sv_active"] == 1
            assert "default" in budgets


def test_console_works_with_psql_and_the_pgbouncer_name(start_sluice):
    s = start(start_sluice)
    p = s.psql("SHOW POOLS", dbname="pgbouncer", user=ADMIN, password=None)
    assert p.returncode == 0, p.stderr
    p = s.psql("show version;", dbname="sluice", user=STATS, password=None)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("sluice ")


def test_the_consoles_pool_is_logged_as_the_console(start_sluice):
    """The console's pool opens no server: its creation line says so. It read "transaction mode,
    pool_size 20", the main section's, which described a pool it is not."""
    s = start(start_sluice)
    with console(s) as adm:
        show(adm, "VERSION")
    created = [line for line in s.log if "pool sluice/admin created" in line]
    assert len(created) == 1, s.log
    assert "admin console, answered by sluice (no servers)" in created[0], created
    assert "pool_size" not in created[0], created


# ---- who may do what -------------------------------------------------------------------------------


def test_non_admin_user_is_refused_at_login_with_42501(start_sluice):
    s = start(start_sluice)
    with pytest.raises(psycopg.OperationalError) as ei:
        console(s, user="app")
    assert "not allowed to use the admin console" in str(ei.value)
    # the error and the operator's log line say why, not just "admin_denied: closing: "
    cause = r'user "app" is in neither admin_users nor stats_users'
    assert re.search(cause, str(ei.value)), str(ei.value)
    s.wait_for_log(rf"admin_denied: closing: .*{cause}")
    c = RawConn(s.port)
    try:
        c.send(startup_packet(user="app", database="sluice"))
        err = c.expect_error()
        assert err["C"] == "42501" and err["S"] == "FATAL", err
        assert c.is_closed(5)
    finally:
        c.close()


def test_stats_users_may_show_but_not_pause_42501(start_sluice):
    s = start(start_sluice)
    with console(s, user=STATS) as st:
        assert any(r["database"] == "sluice" for r in show(st, "POOLS"))
        for cmd in ("PAUSE", "RESUME appdb", "RELOAD", "SET default_pool_size = 3", "KILL appdb",
                    "SHUTDOWN"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as ei:
                st.execute(cmd)
            assert "may not run" in str(ei.value)
        # the session goes on
        assert st.execute("SHOW VERSION").fetchone()[0].startswith("sluice")
    with s.connect() as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_unknown_commands_are_errors_and_the_session_goes_on(start_sluice):
    s = start(start_sluice)
    with console(s) as adm:
        with pytest.raises(psycopg.errors.SyntaxError) as ei:
            adm.execute("SELECT 1")
        assert "unknown command" in str(ei.value)
        with pytest.raises(psycopg.errors.UndefinedObject):
            adm.execute("SHOW NOTHING")
        with pytest.raises(psycopg.errors.SyntaxError):
            adm.execute("SHOW POOLS; SHOW CLIENTS")
        with pytest.raises(psycopg.errors.InvalidCatalogName):
            adm.execute("PAUSE nosuchdb")
        with pytest.raises(psycopg.errors.UndefinedObject):
            adm.execute("KILL_CLIENT 987654321")
        assert adm.execute("show version;").fetchone()[0].startswith("sluice")


def test_extended_protocol_is_refused_until_sync_and_the_session_goes_on(start_sluice):
    s = start(start_sluice)
    c = raw_login(s.port, user=ADMIN, database="sluice")
    try:
        c.send(parse_msg("", "SHOW POOLS") + bind_msg("", "") + execute_msg() + sync_msg())
        mtype, payload = c.read_message()
        assert mtype == "E"
        err = parse_fields(payload)
        assert err["C"] == "0A000" and "simple query protocol" in err["M"], err
        mtype, payload = c.read_message()
        assert (mtype, payload) == ("Z", b"I")  # one error per batch, then ReadyForQuery
        rows, tags = c.query("SHOW VERSION")
        assert tags == ["SHOW"] and rows[0][0].startswith("sluice")
        # psycopg sends parameters with the extended protocol: the same refusal
        with console(s) as adm:
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                adm.execute("SHOW VERSION -- %s", ["a parameter"])
            assert adm.execute("SHOW VERSION").fetchone()[0].startswith("sluice")
    finally:
        c.close()


def test_pipelined_queries_are_answered_in_order(start_sluice):
    s = start(start_sluice)
    c = raw_login(s.port, user=ADMIN, database="sluice")
    try:
        c.send(query_msg("SHOW VERSION") + query_msg("BOGUS") + query_msg("") +
               query_msg("SHOW LISTS"))
        rows, tags = c.read_results()
        assert tags == ["SHOW"]
        with pytest.raises(ServerError) as ei:
            c.read_results()
        assert ei.value.sqlstate == "42601"
        mtype, _ = c.read_message()
        assert mtype == "I"  # EmptyQueryResponse
        assert c.read_message() == ("Z", b"I")
        rows, tags = c.read_results()
        assert tags == ["SHOW"] and ["databases", "3"] in rows
        # a message split across writes is framed whole
        m = query_msg("SHOW VERSION")
        for i in range(len(m)):
            c.send(m[i:i + 1])
        rows, _ = c.read_results()
        assert rows[0][0].startswith("sluice")
    finally:
        c.close()


def test_oversized_message_is_a_protocol_violation(start_sluice):
    s = start(start_sluice)
    c = raw_login(s.port, user=ADMIN, database="sluice")
    try:
        c.send(b"Q" + (10 ** 8).to_bytes(4, "big"))  # claims a 100 MB query
        err = c.expect_error()
        assert err["C"] == "08P01" and err["S"] == "FATAL", err
        assert c.is_closed(5)
    finally:
        c.close()


# ---- PAUSE / RESUME / RECONNECT / WAIT_CLOSE / KILL -------------------------------------------------


def test_pause_holds_new_queries_and_resume_releases_them(start_sluice):
    s = start(start_sluice)
    with s.connect() as c, console(s) as adm:
        c.execute("SELECT 1")
        adm.execute("PAUSE appdb")
        assert pool_row(adm)["paused"] == 1
        assert pool_row(adm)["sv_idle"] + pool_row(adm)["sv_used"] == 0
        assert show(adm, "DATABASES")[0]["paused"] == 1
        bg = Background(c.execute, "SELECT 'after resume'")
        assert not bg.wait(1.0), "a query ran while the database was paused"
        assert pool_row(adm)["cl_waiting"] == 1
        adm.execute("RESUME appdb")
        assert bg.result(5).fetchone() == ("after resume",)
        assert pool_row(adm)["paused"] == 0


def connect_and_query(s, sql, dbname="appdb"):
    """A new client's first query, from login on: (connection, its row)."""
    c = s.connect(dbname=dbname)
    return c, c.execute(sql).fetchone()


def test_pause_holds_the_clients_of_pools_made_after_it(start_sluice, pg):
    """PgBouncer pauses the database, not its pools of the moment: a client of a database that
    had no pool yet (a "*" entry makes pools as clients come), or of any database after a PAUSE
    without a name, waits (its login too) until RESUME instead of being served."""
    s = start_sluice(dict(CONSOLE_MAIN), databases={"*": pg.db_entry()})
    late = []
    try:
        with console(s) as adm:
            adm.execute("PAUSE appdb")
            late.append(Background(connect_and_query, s, "SELECT 'late'"))
            assert not late[-1].wait(1.0), "a client of a paused database was served"
            assert pg.count_backends() == 0
            adm.execute("RESUME appdb")
            assert late[-1].result(5)[1] == ("late",)

            adm.execute("PAUSE")
            late.append(Background(connect_and_query, s, "SELECT 'later'", dbname="postgres"))
            assert not late[-1].wait(1.0), "a client of a new pool was served during PAUSE"
            assert pg.count_backends(dbname="postgres") == 0
            adm.execute("RESUME")
            assert late[-1].result(5)[1] == ("later",)
    finally:
        for b in late:
            if b.wait(5) and not b.error(0):
                b.result(0)[0].close()


def test_pause_answers_once_running_transactions_have_finished_and_servers_closed(
        start_sluice, pg):
    s = start(start_sluice)
    idle = s.connect()
    idle.execute("SELECT 1")  # an idle server: PAUSE closes it at once
    holder = hold_transaction(s)
    try:
        with console(s) as adm, console(s) as watcher:
            bg = Background(adm.execute, "PAUSE")
            assert not bg.wait(1.0), "PAUSE answered while a transaction still held a server"
            # meanwhile other console sessions are served
            row = pool_row(watcher)
            assert row["paused"] == 1 and row["sv_idle"] == 0 and row["sv_active"] == 1
            holder.execute("COMMIT")
            bg.result(5)
            row = pool_row(watcher)
            assert row["sv_active"] + row["sv_idle"] + row["sv_used"] + row["sv_tested"] == 0
            # PgBouncer's meaning: the database has no session of sluice left (safe to restart)
            wait_until(lambda: pg.count_backends() == 0, 5, what="app backends to exit")
            watcher.execute("RESUME")
            assert holder.execute("SELECT 2").fetchone() == (2,)
    finally:
        holder.close()
        idle.close()


def silent_listener():
    """A port that accepts connections and never says a word: a server there stays logging in.
    Returns (port, accepted sockets, closer)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    accepted = []

    def accept_and_say_nothing():
        with contextlib.suppress(OSError):
            while True:
                accepted.append(silent.accept()[0])

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()

    def close():
        silent.close()
        for conn in accepted:
            conn.close()
    return silent.getsockname()[1], accepted, close


def test_pause_closes_servers_still_logging_in_before_it_answers(start_sluice, pg):
    """PgBouncer's PAUSE closes the servers still logging in (its new_server_list): one left
    would become usable after PAUSE answered, on a database the operator took as free."""
    port, accepted, close = silent_listener()
    try:
        s = start(start_sluice, min_pool_size=1, server_connect_timeout=60)
        s.ini_path.write_text(s.ini_path.read_text().replace(f"port={pg.port}", f"port={port}"))
        with console(s) as adm:
            adm.execute("RELOAD")
            wait_until(lambda: pool_row(adm)["sv_login"] == 1, 10, what="a server logging in")
            adm.execute("PAUSE appdb")
            assert pool_row(adm)["sv_login"] == 0, "PAUSE answered with a server logging in"
            time.sleep(0.5)  # several background passes: none opens while paused
            assert pool_row(adm)["sv_login"] == 0
            adm.execute("RESUME appdb")
    finally:
        close()


def test_reconnect_closes_servers_at_release_and_wait_close_waits_for_it(start_sluice):
    s = start(start_sluice)
    idle_client = s.connect()
    idle_client.execute("SELECT 1")  # leaves an idle server behind
    holder = hold_transaction(s)
    try:
        (old_pid,) = holder.execute("SELECT pg_backend_pid()").fetchone()
        with console(s) as adm, console(s) as other:
            adm.execute("RECONNECT appdb")
            servers = show(adm, "SERVERS")
            assert [x["close_needed"] for x in servers if x["remote_pid"] == old_pid] == [1]
            assert all(x["state"] != "idle" for x in servers), servers  # idle ones closed now
            bg = Background(adm.execute, "WAIT_CLOSE appdb")
            assert not bg.wait(1.0), "WAIT_CLOSE answered while a marked server was in use"
            holder.execute("COMMIT")
            bg.result(5)
            assert all(x["close_needed"] == 0 for x in show(other, "SERVERS"))
        (new_pid,) = holder.execute("SELECT pg_backend_pid()").fetchone()
        assert new_pid != old_pid
    finally:
        holder.close()
        idle_client.close()


def test_kill_drops_the_database_clients_with_57p01_until_resume(start_sluice):
    s = start(start_sluice)
    victim = s.connect()
    victim.execute("SELECT 1")
    with console(s) as adm:
        adm.execute("KILL appdb")
        with pytest.raises(psycopg.OperationalError) as ei:
            victim.execute("SELECT 1")
        assert "closed by the administrator" in str(ei.value), ei.value
        assert pool_row(adm)["cl_idle"] == 0
        assert pool_row(adm)["sv_idle"] == 0 and pool_row(adm)["sv_active"] == 0
        # KILL leaves the database paused: a new client waits until RESUME
        with s.connect() as late:
            bg = Background(late.execute, "SELECT 'late'")
            assert not bg.wait(0.8)
            adm.execute("RESUME appdb")
            assert bg.result(5).fetchone() == ("late",)
    victim.close()


def test_kill_client_closes_only_that_client(start_sluice):
    s = start(start_sluice)
    doomed = raw_login(s.port, application_name="doomed")
    spared = raw_login(s.port, application_name="spared")
    try:
        with console(s) as adm:
            ids = {c["application_name"]: c["id"] for c in show(adm, "CLIENTS")}
            assert adm.execute(f"KILL_CLIENT {ids['doomed']}").statusmessage == "KILL_CLIENT"
            err = doomed.expect_error()
            assert err["C"] == "57P01" and "administrator" in err["M"], err
            assert doomed.is_closed(5)
            rows, _ = spared.query("SELECT 'still here'")
            assert rows == [["still here"]]
            remaining = [c["application_name"] for c in show(adm, "CLIENTS")]
            assert "doomed" not in remaining and "spared" in remaining
    finally:
        doomed.close()
        spared.close()


# ---- RELOAD / SET / SHUTDOWN --------------------------------------------------------------------


def test_reload_after_editing_the_config_changes_pool_size(start_sluice, pg):
    s = start(start_sluice, default_pool_size=2)
    with s.connect() as c, console(s) as adm:
        c.execute("SELECT 1")
        assert pool_row(adm)["pool_size"] == 2
        main = dict(CONSOLE_MAIN, listen_addr="127.0.0.1", auth_type="trust", log_level="info",
                    default_pool_size=4, listen_port=0)
        s.ini_path.write_text(render_ini(main, {"appdb": pg.db_entry(pool_size=6)}))
        assert adm.execute("RELOAD").statusmessage == "RELOAD"
        assert pool_row(adm)["pool_size"] == 6
        db = {r["name"]: r for r in show(adm, "DATABASES")}["appdb"]
        assert db["pool_size"] == 6
        config = {r["key"]: r["value"] for r in show(adm, "CONFIG")}
        assert config["default_pool_size"] == "4"


def test_include_is_read_where_it_stands_and_again_at_reload(start_sluice, pg):
    """PgBouncer's %include: a [databases] section kept in a file of its own (as configuration
    management writes it) was ignored with a warning, so every database in it was unknown
    (3D000). Now it is read where the line stands, relative to the including file's directory,
    and again at each RELOAD."""
    s = start(start_sluice)
    (s.ini_path.parent / "conf.d").mkdir()
    more = s.ini_path.parent / "conf.d" / "more.ini"
    more.write_text(render_ini({}, {"otherdb": pg.db_entry()}).split("\n\n")[0] + "\n")
    main = dict(CONSOLE_MAIN, listen_addr="127.0.0.1", auth_type="trust", log_level="info",
                listen_port=0)
    s.ini_path.write_text(render_ini(main, {"appdb": pg.db_entry()})
                          + "%include conf.d/more.ini\n")
    with console(s) as adm:
        assert adm.execute("RELOAD").statusmessage == "RELOAD"
        with s.connect(dbname="otherdb") as c:
            assert c.execute("SELECT 'served'").fetchone() == ("served",)
        more.write_text(render_ini({}, {"thirddb": pg.db_entry()}).split("\n\n")[0] + "\n")
        assert adm.execute("RELOAD").statusmessage == "RELOAD"
        names = {r["name"] for r in show(adm, "DATABASES")}
        assert "thirddb" in names and "otherdb" not in names, names
        with s.connect(dbname="thirddb") as c:
            assert c.execute("SELECT 1").fetchone() == (1,)


def test_reload_that_removes_a_database_closes_its_clients_with_3d000_and_its_servers(
        start_sluice, pg):
    """As PgBouncer drops a database a reload removed (kill_database): every client of it is
    closed at once, a waiting one too, with what a new login to it gets (FATAL 3D000), instead
    of waiting query_wait_timeout for a server that can never come; its servers close. Another
    database's clients go on."""
    main = dict(CONSOLE_MAIN, query_wait_timeout=60)
    dbs = {"appdb": pg.db_entry(), "olddb": pg.db_entry(pool_size=1)}
    s = start_sluice(main, databases=dbs)
    holder = raw_login(s.port, database="olddb")
    idle = raw_login(s.port, database="olddb")
    waiter = raw_login(s.port, database="olddb")
    try:
        with s.connect() as bystander, console(s) as adm:
            idle.query("SELECT 1")  # idle now, between transactions
            holder.query("BEGIN")
            holder.query("SELECT 1")
            waiter.send(query_msg("SELECT 'never'"))
            wait_until(lambda: pool_row(adm, db="olddb")["cl_waiting"] == 1, 5,
                       what="a client of olddb waiting")
            main.update(listen_addr="127.0.0.1", auth_type="trust", log_level="info",
                        listen_port=0)
            s.ini_path.write_text(render_ini(main, {"appdb": pg.db_entry()}))
            started = time.monotonic()
            assert adm.execute("RELOAD").statusmessage == "RELOAD"
            for c in (waiter, holder, idle):  # PgBouncer closes them all, in a transaction too
                err = c.expect_error(timeout=5)
                assert err["C"] == "3D000" and err["S"] == "FATAL", err
                assert "olddb" in err["M"], err
                assert c.is_closed(5)
            assert time.monotonic() - started < 5
            wait_until(lambda: not [r for r in show(adm, "SERVERS") if r["database"] == "olddb"],
                       5, what="olddb's servers to close")
            assert bystander.execute("SELECT 'still served'").fetchone() == ("still served",)
    finally:
        for c in (holder, idle, waiter):
            c.close()


def test_commands_naming_a_database_a_reload_removed_answer_as_for_an_unknown_one(
        start_sluice, pg):
    """Once a reload removed a database and its clients and servers are gone, its empty pool is
    a leftover: PAUSE, RESUME, KILL, RECONNECT and WAIT_CLOSE naming it answer 3D000 "no
    database", as they do for a name never configured."""
    main = dict(CONSOLE_MAIN)
    dbs = {"appdb": pg.db_entry(), "olddb": pg.db_entry()}
    s = start_sluice(main, databases=dbs)
    with s.connect(dbname="olddb") as c:
        c.execute("SELECT 1")
    with console(s) as adm:
        assert adm.execute("PAUSE olddb").statusmessage == "PAUSE"
        assert adm.execute("RESUME olddb").statusmessage == "RESUME"
        main.update(listen_addr="127.0.0.1", auth_type="trust", log_level="info", listen_port=0)
        s.ini_path.write_text(render_ini(main, {"appdb": pg.db_entry()}))
        assert adm.execute("RELOAD").statusmessage == "RELOAD"
        wait_until(lambda: not [r for r in show(adm, "SERVERS") if r["database"] == "olddb"],
                   5, what="olddb's servers to close")
        for cmd in ("PAUSE olddb", "RESUME olddb", "KILL olddb", "RECONNECT olddb",
                    "WAIT_CLOSE olddb", "PAUSE neverdb"):
            with pytest.raises(psycopg.Error) as ei:
                adm.execute(cmd)
            assert ei.value.sqlstate == "3D000", (cmd, ei.value)
            assert "no database" in str(ei.value), (cmd, ei.value)
        assert adm.execute("PAUSE appdb").statusmessage == "PAUSE"


def test_reload_of_an_invalid_config_is_an_error_and_keeps_the_old_one(start_sluice):
    s = start(start_sluice, default_pool_size=2)
    with console(s) as adm:
        s.ini_path.write_text(s.ini_path.read_text().replace("default_pool_size = 2",
                                                             "default_pool_size = lots"))
        with pytest.raises(psycopg.Error) as ei:
            adm.execute("RELOAD")
        assert ei.value.sqlstate == "F0000"
        config = {r["key"]: r["value"] for r in show(adm, "CONFIG")}
        assert config["default_pool_size"] == "2"


def test_set_changes_a_key_at_once_and_show_config_names_the_admin_source(start_sluice):
    s = start(start_sluice, default_pool_size=2)
    with s.connect() as c, console(s) as adm:
        c.execute("SELECT 1")
        assert adm.execute("SET default_pool_size = 5").statusmessage == "SET"
        assert pool_row(adm)["pool_size"] == 5
        config = {r["key"]: r for r in show(adm, "CONFIG")}
        assert config["default_pool_size"]["value"] == "5"
        assert config["default_pool_size"]["source"] == "admin"
        adm.execute("SET server_reset_query TO 'DISCARD ALL'")
        with pytest.raises(psycopg.Error) as ei:
            adm.execute("SET listen_port = 1")
        assert ei.value.sqlstate == "55P02"
        with pytest.raises(psycopg.Error) as ei:
            adm.execute("SET default_pool_size = many")
        assert ei.value.sqlstate == "22023"
        with pytest.raises(psycopg.errors.UndefinedObject):
            adm.execute("SET no_such_key = 1")


@pytest.mark.timeout(30)
def test_shutdown_closes_sluice_with_exit_code_0(start_sluice):
    s = start(start_sluice)
    c = raw_login(s.port, user=ADMIN, database="sluice")
    try:
        c.send(query_msg("SHUTDOWN"))
        err = c.expect_error()
        assert err["C"] == "57P01", err
        assert c.is_closed(5)
    finally:
        c.close()
    assert s.wait_exit(10) == 0


def test_a_console_client_that_does_not_read_is_answered_in_order_with_bounded_output(
        start_sluice):
    s = start(start_sluice)
    c = raw_login(s.port, user=ADMIN, database="sluice")
    n = 3000  # about 20 MB of SHOW CONFIG answers
    try:
        rss_before = s.rss_kb()
        c.sock.settimeout(30)
        batch = query_msg("SHOW CONFIG") * 100
        sender = Background(lambda: [c.send(batch) for _ in range(n // 100)])
        time.sleep(1.0)  # sluice stops answering while its output waits, instead of buffering
        rss_waiting = s.rss_kb()
        answered = 0
        while answered < n:
            mtype, _ = c.read_message()
            if mtype == "Z":
                answered += 1
        sender.result(30)
        rows, tags = c.query("SHOW VERSION")
        assert tags == ["SHOW"]
        if rss_before and rss_waiting and not binary_is_sanitized(s.binary):
            assert rss_waiting - rss_before < 3 * 1024, (rss_before, rss_waiting)
    finally:
        c.close()


def test_cancel_request_ends_a_waiting_pause_with_57014(start_sluice):
    s = start(start_sluice)
    holder = hold_transaction(s)
    adm = console(s)
    bg = Background(adm.execute, "PAUSE")
    try:
        assert not bg.wait(0.5)
        adm.cancel()
        assert isinstance(bg.error(3), psycopg.errors.QueryCanceled)
        assert adm.execute("SHOW VERSION").fetchone()[0].startswith("sluice")
    finally:
        holder.execute("COMMIT")  # lets a PAUSE that is still waiting finish
        bg.wait(5)
        with console(s) as other:
            other.execute("RESUME")
        holder.close()
        adm.close()


def test_paused_database_keeps_no_server_even_with_min_pool_size(start_sluice, pg):
    s = start(start_sluice, min_pool_size=2, default_pool_size=4)
    with s.connect() as c:
        c.execute("SELECT 1")
    wait_until(lambda: pg.count_backends() == 2, 5, what="min_pool_size servers")
    with console(s) as adm:
        adm.execute("PAUSE appdb")
        wait_until(lambda: pg.count_backends() == 0, 5, what="PAUSE to close the servers")
        time.sleep(1.0)  # several background passes
        try:
            assert pg.count_backends() == 0
        finally:
            adm.execute("RESUME appdb")
