"""Operators mid-traffic, attacked from the outside: RELOAD, PAUSE, KILL and friends while
clients are inside sessions, transactions and batches. Postgres is the oracle for what each
client sees; no client's state may reach another client, and no cap may be passed."""

import time
from contextlib import contextmanager

import psycopg
import pytest

from conftest import Background, render_ini, wait_until
from pgwire import bind_msg, execute_msg, message, parse_msg, query_msg, raw_login, sync_msg
from test_admin import CONSOLE_MAIN, console, pool_row
from test_result_type_attacks import exchange


def reload_with(s, pg, adm, **main):
    """Rewrite the config with these [sluice] keys and RELOAD; wait until the pool shows them."""
    m = dict(CONSOLE_MAIN, listen_addr="127.0.0.1", auth_type="trust", log_level="info",
             listen_port=0)
    m.update(main)
    s.ini_path.write_text(render_ini(m, {"appdb": pg.db_entry()}))
    assert adm.execute("RELOAD").statusmessage == "RELOAD"
    if "pool_mode" in main:
        wait_until(lambda: pool_row(adm)["pool_mode"] == main["pool_mode"], 30,
                   what="the reloaded pool_mode")


def one(conn, sql):
    rows, _ = conn.query(sql)
    return rows[0][0] if rows else None


@pytest.mark.parametrize("new_mode", ["transaction", "statement"])
def test_a_session_clients_state_never_reaches_another_client_when_reload_leaves_session_mode(
        start_sluice, pg, new_mode):
    """A session-mode client's SET, LISTEN, prepared statement and temporary table live on its
    server. A reload to transaction (or statement) mode released that server at the client's
    next transaction end, as it was: the next client got work_mem 7MB, the LISTEN, the
    statement and the table, and the session client lost them on its next server. A connected
    client now keeps the mode it logged in with."""
    s = start_sluice(dict(CONSOLE_MAIN, pool_mode="session", default_pool_size=2))
    a = raw_login(s.port)
    other = None
    try:
        for sql in ("SET work_mem = '7MB'", "LISTEN h50_channel", "PREPARE h50_p AS SELECT 7",
                    "CREATE TEMP TABLE h50_tt (x int)"):
            a.query(sql)
        pid = one(a, "SELECT pg_backend_pid()")
        with console(s) as adm:
            reload_with(s, pg, adm, pool_mode=new_mode, default_pool_size=2)
            assert one(a, "SELECT pg_backend_pid()") == pid  # a transaction of a's ends here
            other = raw_login(s.port)
            seen = (one(other, "SHOW work_mem"),
                    one(other, "SELECT count(*) FROM pg_listening_channels()"),
                    one(other, "SELECT count(*) FROM pg_prepared_statements"),
                    one(other, "SELECT count(*) FROM pg_class WHERE relname = 'h50_tt' "
                        "AND pg_table_is_visible(oid)"))
            assert seen == ("4MB", "0", "0", "0"), seen
            # the session client keeps its session, as against Postgres directly
            assert one(a, "SHOW work_mem") == "7MB"
            assert one(a, "EXECUTE h50_p") == "7"
            assert one(a, "SELECT count(*) FROM h50_tt") == "0"
            assert one(a, "SELECT pg_backend_pid()") == pid
            a.close()
            a = None
            # what it left on its server is reset before anyone gets that server
            for _ in range(2):
                c = raw_login(s.port)
                try:
                    assert one(c, "SHOW work_mem") == "4MB"
                    assert one(c, "SELECT count(*) FROM pg_prepared_statements") == "0"
                finally:
                    c.close()
    finally:
        for c in (a, other):
            if c:
                c.close()


def test_a_transaction_clients_prepared_statement_still_runs_after_reload_to_session_mode(
        start_sluice, pg):
    """A statement a transaction-mode client prepared (by the protocol, which sluice keeps and
    re-prepares under its own name on each server) answered 26000 "does not exist" after a
    reload to session mode, where names pass through unchanged. Postgres runs it."""
    s = start_sluice(dict(CONSOLE_MAIN, pool_mode="transaction", default_pool_size=2))
    b = raw_login(s.port)
    try:
        assert exchange(b, [parse_msg("s1", "SELECT 41"), sync_msg()], 1) == [
            ("1", b""), ("Z", "I")]
        with console(s) as adm:
            reload_with(s, pg, adm, pool_mode="session", default_pool_size=2)
            for _ in range(2):
                got = exchange(b, [bind_msg("", "s1"), execute_msg(), sync_msg()], 1)
                assert got == [("2", b""), ("D", ["41"]), ("C", "SELECT 1"), ("Z", "I")], got
    finally:
        b.close()


def told_and_has(conn):
    """What the client was told (ParameterStatus) and what its server has, for TimeZone and
    client_encoding."""
    told = (conn.params.get("TimeZone"), conn.params.get("client_encoding"))
    rows, _ = conn.query("SELECT current_setting('TimeZone'), current_setting('client_encoding')")
    return told, tuple(rows[0])


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_reload_of_a_database_entrys_server_parameters_reaches_new_clients_only(
        start_sluice, pg, mode):
    """A database entry's timezone= and client_encoding= are what its servers start with. A
    reload that changed them kept telling new clients the old values (the pool's welcome, learnt
    from a server before the reload), and handed them servers with the old ones: the new
    settings never took effect. Now new clients are told and get the new values, and a client
    connected before the reload keeps what it was told, on whatever server it gets next."""
    old = pg.db_entry(timezone="UTC", client_encoding="LATIN1")
    new = pg.db_entry(timezone="Asia/Tokyo", client_encoding="UTF8")
    s = start_sluice(dict(CONSOLE_MAIN, pool_mode=mode, default_pool_size=3),
                     databases={"appdb": old})
    a = raw_login(s.port)
    clients = [a]
    try:
        assert told_and_has(a) == (("UTC", "LATIN1"), ("UTC", "LATIN1"))
        with console(s) as adm:
            m = dict(CONSOLE_MAIN, listen_addr="127.0.0.1", auth_type="trust",
                     log_level="info", listen_port=0, pool_mode=mode, default_pool_size=3)
            s.ini_path.write_text(render_ini(m, {"appdb": new}))
            assert adm.execute("RELOAD").statusmessage == "RELOAD"
            for _ in range(2):
                b = raw_login(s.port)
                clients.append(b)
                assert told_and_has(b) == (("Asia/Tokyo", "UTF8"), ("Asia/Tokyo", "UTF8"))
            # the client from before keeps what it was told, on its next server too
            assert told_and_has(a) == (("UTC", "LATIN1"), ("UTC", "LATIN1"))
            got = exchange(a, [message(b"Q", b"SELECT '\xe9'\0")], 1)  # LATIN1's é
            assert [m[0] for m in got] == ["T", "D", "C", "Z"], got  # UTF8 would say 22021
    finally:
        for c in clients:
            c.close()


def test_a_reload_that_corrects_a_databases_port_serves_waiting_clients_at_once(
        start_sluice, pg):
    """An operator's typo (a wrong port) made every attempt fail, and the backoff grew. A
    reload with the port corrected left that backoff in force: the waiting client sat out up
    to server_login_retry before the first attempt at the right port, though those failures
    said nothing of the new settings. Now the next attempt starts at once."""
    main = dict(CONSOLE_MAIN, listen_addr="127.0.0.1", auth_type="trust", log_level="debug",
                listen_port=0, pool_mode="transaction", server_login_retry=60,
                server_down_wait=120, query_wait_timeout=120)
    s = start_sluice(main)
    a = raw_login(s.port, timeout=120)
    try:
        assert one(a, "SELECT 1") == "1"
        with console(s) as adm:
            s.ini_path.write_text(render_ini(main, {"appdb": pg.db_entry(port=1)}))
            assert adm.execute("RELOAD").statusmessage == "RELOAD"
            mark = s.mark()
            a.send(query_msg("SELECT 'served'"))  # waits: every attempt is refused
            # the backoff doubles from 100 ms (+-20%): wait for a retry 10 s or more away
            s.wait_for_log(r"probe failed \(failure \d+, next try in (\d{6,}|[1-9]\d{4}) ms\)",
                           timeout=90, since=mark)
            seen = time.monotonic()
            s.ini_path.write_text(render_ini(main, {"appdb": pg.db_entry()}))
            assert adm.execute("RELOAD").statusmessage == "RELOAD"
            rows, _ = a.read_results()
            assert rows == [["served"]]
            # before, the answer came at that retry, 10 s or more after its log line
            assert time.monotonic() - seen < 8, time.monotonic() - seen
    finally:
        a.close()


@contextmanager
def a_pause_waiting_for_a_transaction(start_sluice, pause):
    """One server, held by a client inside a transaction; a console's PAUSE waits for it to
    end. Yields (holder, pausing: the PAUSE's tag in the background, pauser, resumer: another
    console)."""
    s = start_sluice(dict(CONSOLE_MAIN, pool_mode="transaction", default_pool_size=1))
    holder = raw_login(s.port)
    try:
        holder.query("BEGIN")
        holder.query("SELECT 1")
        with console(s) as pauser, console(s) as resumer:
            pausing = Background(lambda: pauser.execute(pause).statusmessage)
            wait_until(lambda: pool_row(resumer)["paused"] == 1, 30, what="the pause")
            assert not pausing.done()  # it waits for the holder's transaction
            yield holder, pausing, pauser, resumer
    finally:
        holder.close()


@pytest.mark.parametrize("resume", ["RESUME appdb", "RESUME"])
def test_a_pause_undone_by_resume_before_it_took_effect_is_not_answered_as_done(
        start_sluice, resume):
    """PAUSE waits for the transactions in flight to end. An operator's (or a second script's)
    RESUME meanwhile undid it, and the waiting PAUSE then answered PAUSE, as if the database
    were paused: a script's "PAUSE; maintenance; RESUME" ran its maintenance under traffic.
    Now that PAUSE ends with 57014 saying it was ended and nothing is paused."""
    with a_pause_waiting_for_a_transaction(start_sluice, "PAUSE appdb") as (
            holder, pausing, pauser, resumer):
        assert resumer.execute(resume).statusmessage == "RESUME"
        err = pausing.error(30)
        assert isinstance(err, psycopg.errors.QueryCanceled), err
        assert "RESUME" in str(err) and "not paused" in str(err), err
        assert pool_row(resumer)["paused"] == 0
        holder.query("COMMIT")
        assert one(holder, "SELECT 'served'") == "served"
        assert pauser.execute("SHOW VERSION").fetchone()  # the console goes on


def test_resume_of_one_database_under_a_pause_of_all_says_it_stays_paused(start_sluice):
    """PAUSE without a name pauses every database; RESUME db cannot end it (only RESUME
    without a name does). It answered RESUME all the same, the database still paused: an
    operator bringing one database back saw success while its clients kept waiting. Now it
    answers 55000 saying the database stays paused, as PgBouncer refuses it too; the waiting
    PAUSE goes on waiting and is answered once everything is paused."""
    with a_pause_waiting_for_a_transaction(start_sluice, "PAUSE") as (
            holder, pausing, _, resumer):
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState,
                           match='"appdb" stays paused'):
            resumer.execute("RESUME appdb")
        assert not pausing.done()  # it still waits for the holder's transaction
        holder.query("COMMIT")
        assert pausing.result(30) == "PAUSE"
        assert pool_row(resumer)["paused"] == 1
        holder.send(query_msg("SELECT 'served'"))  # waits: everything is paused
        assert resumer.execute("RESUME").statusmessage == "RESUME"
        rows, _ = holder.read_results()
        assert rows == [["served"]]


@pytest.mark.parametrize("min_pool_size", [0, 1])
def test_a_reload_that_changes_the_forced_user_leaves_no_server_of_the_old_one(
        start_sluice, pg, min_pool_size):
    """A database entry's user= is changed by reload (a credential rotation: app to app2). Every
    client then reaches the database as the new user; the old user's pool serves nobody. Its
    servers must close, not hold the database's caps (max_db_connections) until idle timeouts,
    nor be opened again to keep min_pool_size warm."""
    main = dict(CONSOLE_MAIN, listen_addr="127.0.0.1", auth_type="trust", log_level="info",
                listen_port=0, pool_mode="transaction", default_pool_size=2,
                min_pool_size=min_pool_size, max_db_connections=2, server_idle_timeout=600)
    s = start_sluice(main)
    with psycopg.connect(s.dsn(), autocommit=True) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "app"
    wait_until(lambda: pg.count_backends("app") >= 1, 15, what="the app server")
    s.ini_path.write_text(render_ini(main, {"appdb": pg.db_entry(user="app2",
                                                                 password="app2pass")}))
    with console(s) as adm:
        assert adm.execute("RELOAD").statusmessage == "RELOAD"
    with psycopg.connect(s.dsn(), autocommit=True) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "app2"
    wait_until(lambda: pg.count_backends("app") == 0, 15, what="the old user's servers closed")
    # and none opens again (min_pool_size was kept warm for the old user's pool too)
    time.sleep(2)
    assert pg.count_backends("app") == 0
    # the new user's: the client's, and min_pool_size's warm one (which may have opened
    # alongside it), within pool_size
    assert max(1, min_pool_size) <= pg.count_backends("app2") <= 2
