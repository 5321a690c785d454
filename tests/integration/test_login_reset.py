"""A reset of a parameter the client set at login gives back its login value, as in Postgres,
however the reset reaches the server: by Parse/Bind/Execute, pipelined behind or ahead of other
requests, followed by more statements in its Query, in a Query longer than pkt_buf, as
SET LOCAL name TO DEFAULT or as set_config(name, NULL, ...). Postgres is the oracle: each step's
bytes go to Postgres and to sluice, and every message the client receives back (rows,
ParameterStatus, ReadyForQuery) must be the same."""

import pytest

from conftest import APP_PASSWORD
from pgwire import (RawConn, ServerError, bind_msg, cancel_request, copy_data_msg, copy_done_msg, execute_msg, parse_msg, query_msg,
                    raw_login, sync_msg, terminate_msg)

LOGIN = {"application_name": "login_app", "DateStyle": "German", "client_encoding": "LATIN1",
         "options": "-c search_path=evil -c statement_timeout=1234 -c TimeZone=Asia/Kolkata"}
PROBE = ("SELECT current_setting('application_name'), current_setting('DateStyle'),"
         " current_setting('search_path'), current_setting('statement_timeout'),"
         " current_setting('TimeZone')")


def q(sql):
    """One simple Query: (bytes, ReadyForQuery count)."""
    return query_msg(sql), 1


def ext(sql, name=""):
    """One statement by Parse/Bind/Execute/Sync."""
    return parse_msg(name, sql) + bind_msg("", name) + execute_msg() + sync_msg(), 1


def pipe(*steps):
    """Several requests in one write, before any reply."""
    return b"".join(s[0] for s in steps), sum(s[1] for s in steps)


def quiet(calls):
    """A select of set_config calls whose own results (which already see the backend's reset
    value: a documented difference) are not shown."""
    return f"SELECT count(*) FROM (SELECT {calls}) AS calls"


CHANGE = q("SET application_name = 'changed'; SET search_path = public;"
           " SET DateStyle = ISO; SET statement_timeout = 50000")
# transaction mode keeps a session SET of an unreported parameter only until the backend goes
# back (a documented limit): there the change is of reported ones only
CHANGE_REPORTED = q("SET application_name = 'changed'; SET DateStyle = ISO; SET TimeZone = UTC")
LONG = "SELECT '" + "x" * 40000 + "'"

CASES = {
    "extended-reset-name": [CHANGE, ext("RESET application_name"), ext("RESET search_path"),
                            q(PROBE)],
    "extended-reset-all": [CHANGE, ext("RESET ALL"), q(PROBE), ext(PROBE)],
    "extended-discard-all": [CHANGE, ext("DISCARD ALL"), q(PROBE)],
    "extended-set-to-default": [CHANGE, ext("SET DateStyle TO DEFAULT"), q(PROBE)],
    "extended-named-statement": [CHANGE, ext("RESET ALL", "r1"), q(PROBE)],
    # a prepared reset executed again in a later request
    "extended-named-statement-again": [
        (parse_msg("r2", "RESET application_name") + parse_msg("r3", "SELECT 1")
         + sync_msg(), 1), CHANGE, (bind_msg("", "r2") + execute_msg() + sync_msg(), 1),
        q(PROBE), CHANGE, (bind_msg("", "r3") + execute_msg() + bind_msg("", "r2")
                           + execute_msg() + sync_msg(), 1), q(PROBE),
        q("SET DateStyle = 'SQL'"), q("DEALLOCATE r2"),
        (parse_msg("r2", "SELECT 2") + bind_msg("", "r2") + execute_msg() + sync_msg(), 1),
        q(PROBE)],
    "extended-in-transaction": [CHANGE, q("BEGIN"), ext("RESET ALL"), q(PROBE), q("ROLLBACK"),
                                q(PROBE), q("BEGIN"), ext("RESET ALL"), q("COMMIT"), q(PROBE)],
    "pipelined-behind": [CHANGE, pipe(q("SELECT 1"), q("RESET ALL")), q(PROBE)],
    "pipelined-behind-extended": [CHANGE, pipe(ext("SELECT 1"), ext("RESET application_name")),
                                  q(PROBE)],
    "pipelined-ahead": [CHANGE, pipe(q("RESET ALL"), q(PROBE)), q(PROBE)],
    "pipelined-ahead-extended": [CHANGE, pipe(ext("RESET ALL"), ext(PROBE), q(PROBE))],
    "followed-in-query": [CHANGE, q("RESET ALL; SELECT 1"), q(PROBE)],
    "reset-then-set-in-query": [CHANGE, q("RESET ALL; SET application_name = 'after'"),
                                q(PROBE)],
    "reset-then-set-search-path": [CHANGE, q("BEGIN"),
                                   q("RESET search_path; SET search_path = 'x'"), q(PROBE),
                                   q("COMMIT")],
    "long-query": [CHANGE, q(LONG + "; RESET ALL"), q(PROBE)],
    "long-query-pipelined": [CHANGE, pipe(q(LONG + "; RESET ALL"), q(PROBE), ext(PROBE)), q(PROBE)],
    "long-query-no-reset": [CHANGE, pipe(q(LONG), q(PROBE)), q(PROBE)],
    "long-extended-end": [CHANGE, pipe(ext(quiet("'" + "y" * 40000 + "', set_config('search_path',"
                                                 " NULL, false)")), q(PROBE)), q(PROBE)],
    "long-extended": [CHANGE, ext(quiet("set_config('search_path', NULL, false), 'x" + "x" * 40000
                                        + "'")), q(PROBE)],
    "set-local-default": [CHANGE, q("BEGIN"), q("SET LOCAL application_name TO DEFAULT"),
                          q("SET LOCAL search_path TO DEFAULT"), q(PROBE), q("COMMIT"),
                          q(PROBE)],
    "set-local-default-extended": [CHANGE, q("BEGIN"), ext("SET LOCAL DateStyle TO DEFAULT"),
                                   q(PROBE), q("ROLLBACK"), q(PROBE)],
    # a transaction-local reset by Parse after a session-level set_config of the same name: the
    # restore of the login value is transaction-local too, so COMMIT brings back the session
    # value (difftest seed 40426, session mode)
    "set-config-then-local-null-extended": [
        q("SELECT set_config('DateStyle', 'Postgres, YMD', false)"), q("BEGIN"),
        ext(quiet("set_config('DateStyle', NULL, true)")), q("SHOW DateStyle"), q("COMMIT"),
        q(PROBE)],
    "set-config-then-local-default-commit": [
        q("SELECT set_config('DateStyle', 'Postgres, YMD', false)"), q("BEGIN"),
        q("SET LOCAL DateStyle TO DEFAULT"), q("SHOW DateStyle"), q("COMMIT"), q(PROBE)],
    "set-config-then-local-default-rollback": [
        q("SELECT set_config('DateStyle', 'Postgres, YMD', false)"), q("BEGIN"),
        q("SET LOCAL DateStyle TO DEFAULT"), q("SHOW DateStyle"), q("ROLLBACK"), q(PROBE)],
    "set-config-then-local-default-extended-commit": [
        q("SELECT set_config('DateStyle', 'Postgres, YMD', false)"), q("BEGIN"),
        ext("SET LOCAL DateStyle TO DEFAULT"), ext("SHOW DateStyle"), q("COMMIT"), q(PROBE)],
    "set-config-then-local-default-extended-rollback": [
        q("SELECT set_config('DateStyle', 'Postgres, YMD', false)"), q("BEGIN"),
        ext("SET LOCAL DateStyle TO DEFAULT"), ext("SHOW DateStyle"), q("ROLLBACK"), q(PROBE)],
    "set-config-null": [CHANGE, q(quiet("set_config('application_name', NULL, false)")),
                        q(quiet("set_config('search_path', NULL, false)")), q(PROBE)],
    "set-config-null-local": [CHANGE, q("BEGIN"),
                              q(quiet("set_config('application_name', NULL, true),"
                                      " set_config('statement_timeout', NULL, true)")),
                              q(PROBE), q("COMMIT"), q(PROBE)],
    "set-config-null-extended": [CHANGE, ext(quiet("set_config('search_path', NULL, false)")),
                                 q(PROBE)],
    "set-config-expression": [CHANGE, q(quiet("set_config('DateStyle', nullif('a', 'a'), false)")),
                              q(PROBE)],
    "reset-in-failed-transaction": [CHANGE, q("BEGIN"), q("RESET ALL"), q("SELECT 1/0"),
                                    q("ROLLBACK"), q(PROBE)],
    "reset-then-error-in-query": [CHANGE, q("BEGIN; RESET ALL; SELECT 1/0"), q("ROLLBACK"),
                                  q(PROBE)],
    # the request's own COPY data reaches the server while the client's next requests wait
    "reset-then-copy-in": [CHANGE, q("BEGIN"), q("CREATE TEMP TABLE t (a int)"),
                           (query_msg("RESET ALL; COPY t FROM STDIN") + copy_data_msg(b"1\n")
                            + copy_done_msg() + query_msg(PROBE), 2),
                           pipe(ext("RESET application_name"),
                                (parse_msg("", "COPY t FROM STDIN") + bind_msg("", "")
                                 + execute_msg() + copy_data_msg(b"2\n") + copy_done_msg()
                                 + sync_msg(), 1), q("SELECT count(*) FROM t"), q(PROBE)),
                           q("COMMIT")],
    "reset-savepoint": [CHANGE, q("BEGIN"), q("RESET ALL"), q("SAVEPOINT s"), q("SELECT 1/0"),
                        q("ROLLBACK TO s"), q(PROBE), q("COMMIT"), q(PROBE)],
}


def transcript(conn, step):
    data, readies = step
    conn.send(data)
    out = []
    while readies:
        mtype, payload = conn.read_message()
        out.append((mtype, payload))
        if mtype == "Z":
            readies -= 1
    return out


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_login_reset_is_postgres_identical(start_sluice, pg, mode, case):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    direct = raw_login(pg.port, password=APP_PASSWORD, **LOGIN)
    pooled = raw_login(s.port, **LOGIN)
    try:
        assert pooled.params == direct.params
        for i, step in enumerate(CASES[case]):
            if mode == "transaction" and step is CHANGE:
                step = CHANGE_REPORTED
            want, got = transcript(direct, step), transcript(pooled, step)
            assert got == want, f"step {i}: {step[0][:120]!r}"
    finally:
        direct.close()
        pooled.close()


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_psycopg_resets_by_the_extended_protocol_give_the_login_values(start_sluice, pg, mode):
    """psycopg sends each execute() by Parse/Bind/Execute: its RESET ALL, SET LOCAL ... TO
    DEFAULT and set_config(name, NULL, ...) leave what they leave on Postgres."""
    import psycopg

    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    login = {"options": "-c search_path=evil -c statement_timeout=1234",
             "application_name": "login_app"}
    steps = ["SET application_name = 'changed'", "RESET ALL", "BEGIN",
             "SET LOCAL statement_timeout TO DEFAULT", "COMMIT", "SET DateStyle = 'SQL'",
             "SELECT count(*) FROM (SELECT set_config('application_name', NULL, false)) AS s"]
    seen = []
    for conn in (psycopg.connect(pg.direct_dsn(**login), autocommit=True),
                 s.connect(**login, autocommit=True)):
        with conn:
            out = []
            for sql in steps:
                conn.execute(sql)
                out.append((conn.info.parameter_status("application_name"),
                            conn.info.parameter_status("DateStyle"),
                            conn.execute("SELECT current_setting('search_path'),"
                                         " current_setting('statement_timeout'),"
                                         " current_setting('application_name')").fetchone()))
            seen.append(out)
    assert seen[1] == seen[0]


@pytest.mark.parametrize("leave", ["terminate", "vanish-waiting", "vanish-restoring"])
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_client_leaving_around_its_reset_leaves_a_clean_backend(start_sluice, mode, leave):
    """Terminate right behind a reset, or a client gone while its next request waits for the
    reset's reply: the one backend (pool_size 1) serves the next client with its own values."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    a = raw_login(s.port, **LOGIN)
    a.query("SET application_name = 'changed'")
    if leave == "terminate":
        a.send(query_msg("RESET ALL") + query_msg(PROBE) + terminate_msg())
        assert a.is_closed()
    else:
        slow = "RESET ALL; SELECT pg_sleep(0.3)" if leave == "vanish-waiting" else "RESET ALL"
        a.send(query_msg(slow) + query_msg(PROBE))
        a.close_abruptly(reset=True)
    b = raw_login(s.port, application_name="other")
    try:
        rows, _ = b.query(PROBE)
        assert rows == [["other", "ISO, MDY", '"$user", public', "0", "Etc/UTC"]]
        assert b.params["application_name"] == "other"
    finally:
        b.close()  # session mode: the one backend is b's until it leaves
    c = raw_login(s.port, **LOGIN)
    try:
        rows, _ = c.query(PROBE)
        assert rows == [["login_app", "German, DMY", "evil", "1234ms", "Asia/Kolkata"]]
    finally:
        c.close()


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_cancelled_reset_and_the_request_waiting_behind_it_as_in_postgres(start_sluice, pg,
                                                                           mode):
    """The reset's request is cancelled while the next one waits: the cancel undoes the reset,
    and the waiting request then runs with what Postgres would have."""
    import time

    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    seen = []
    for port, password in ((pg.port, APP_PASSWORD), (s.port, None)):
        c = raw_login(port, password=password, **LOGIN)
        try:
            c.query("SET application_name = 'changed'")
            c.send(query_msg("RESET ALL; SELECT pg_sleep(5)") + query_msg(PROBE))
            time.sleep(0.5)
            canceller = RawConn(port)
            canceller.send(cancel_request(*c.backend_key))
            canceller.is_closed()
            seen.append([transcript(c, (b"", 2)), transcript(c, q(PROBE))])
        finally:
            c.close()
    assert seen[1] == seen[0]


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_only_a_request_that_may_reset_pays_the_restore(start_sluice, mode):
    """The restore is sluice's own query: a long Query or Parse without a word a reset needs,
    and any request of a client without login parameters, run none."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "log_level": "debug"})
    c = raw_login(s.port, **LOGIN)
    plain = None
    try:
        c.query(LONG)
        c.send(ext(LONG)[0])
        c.read_results()
        c.query("SELECT set_config('search_path', 'x', false)" if mode == "session" else "SELECT 1")
        assert "login values again" not in s.logfile_path.read_text()
        c.query(LONG + "; RESET statement_timeout")
        # session mode: the backend was opened with the login parameters, Postgres resets to them
        restores = 1 if mode == "transaction" else 0
        assert s.logfile_path.read_text().count("login values again") == restores
    finally:
        c.close()
    plain = raw_login(s.port)
    try:
        plain.query("RESET ALL")
        assert s.logfile_path.read_text().count("login values again") == restores
    finally:
        plain.close()


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_reset_word_split_between_two_reads_of_a_long_query_is_seen(start_sluice, pg, mode):
    import time

    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    whole = query_msg(LONG + "; RES" + "ET ALL")
    cut = whole.index(b"; RES") + len(b"; RES")
    seen = []
    for port, password in ((pg.port, APP_PASSWORD), (s.port, None)):
        c = raw_login(port, password=password, **LOGIN)
        try:
            c.query("SET application_name = 'changed'")
            c.send(whole[:20000])
            time.sleep(0.2)
            c.send(whole[20000:cut])
            time.sleep(0.2)
            c.send(whole[cut:] + query_msg(PROBE))
            seen.append(transcript(c, (b"", 2)))
        finally:
            c.close()
    assert seen[1] == seen[0]


@pytest.mark.parametrize("mode", ["transaction"])  # session mode restores nothing (above)
def test_a_failed_restore_reaches_the_client_as_an_error_not_a_silent_failed_transaction(
        start_sluice, pg, mode):
    """The restore is sluice's own query in the client's transaction. When Postgres refuses it
    (here: the login's text search configuration was dropped since the login, which set_config
    checks and RESET does not; a query_timeout cancel landing on it ends the same way) the
    transaction is failed, and the client must see why: an ErrorResponse before its
    ReadyForQuery 'E', never the 'E' alone."""
    with pg.superuser("appdb") as su:
        su.execute("DROP TEXT SEARCH CONFIGURATION IF EXISTS public.h16_conf")
        su.execute("CREATE TEXT SEARCH CONFIGURATION public.h16_conf (COPY = simple)")
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    c = raw_login(s.port, options="-c default_text_search_config=public.h16_conf")
    try:
        with pg.superuser("appdb") as su:
            su.execute("DROP TEXT SEARCH CONFIGURATION public.h16_conf")
        c.query("BEGIN")
        with pytest.raises(ServerError) as err:
            c.query("RESET default_text_search_config")
        assert err.value.sqlstate, err.value.fields
        assert c.last_status == "E"
        c.query("ROLLBACK")
        assert c.query("SELECT 1")[0] == [["1"]]
    finally:
        c.close()


@pytest.mark.parametrize("by", ["client", "query_timeout"])
@pytest.mark.parametrize("mode", ["transaction"])  # session mode restores nothing
def test_a_cancel_landing_on_the_restore_reaches_the_client_as_57014(start_sluice, pg, mode, by):
    """The client's request is answered but its ReadyForQuery is held while the restore runs;
    a cancel then (the client's, or query_timeout's: the request is not over) cancels it. The
    client gets Postgres's 57014 before its ReadyForQuery 'E'. The restore is kept running
    here by a lock on the catalog its set_config reads (its cached entry invalidated first)."""
    import time

    with pg.superuser("appdb") as su:
        su.execute("DROP TEXT SEARCH CONFIGURATION IF EXISTS public.h16_slow")
        su.execute("CREATE TEXT SEARCH CONFIGURATION public.h16_slow (COPY = simple)")
    settings = {"pool_mode": mode, "default_pool_size": 1}
    if by == "query_timeout":  # the request is not over for the client while its restore runs
        settings["query_timeout"] = 1
    s = start_sluice(settings)
    c = raw_login(s.port, options="-c default_text_search_config=public.h16_slow")
    locker = pg.superuser("appdb")
    try:
        locker.execute("ALTER TEXT SEARCH CONFIGURATION public.h16_slow OWNER TO app")
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE pg_ts_config IN ACCESS EXCLUSIVE MODE")
        c.query("BEGIN")
        c.send(query_msg("RESET default_text_search_config"))
        pg.wait_for_active("app", "set_config", timeout=10)
        if by == "client":
            time.sleep(0.2)
            canceller = RawConn(s.port)
            canceller.send(cancel_request(*c.backend_key))
            canceller.is_closed()
        with pytest.raises(ServerError) as err:
            c.read_results()
        assert err.value.sqlstate == "57014", err.value.fields
        assert c.last_status == "E"
        locker.execute("ROLLBACK")
        c.query("ROLLBACK")
        assert c.query("SELECT 1")[0] == [["1"]]
    finally:
        locker.close()
        c.close()
        with pg.superuser("appdb") as su:
            su.execute("DROP TEXT SEARCH CONFIGURATION IF EXISTS public.h16_slow")


# Session mode opens the backend with the client's startup parameters, so Postgres's own reset
# values are the login values: what transaction mode still does differently from Postgres
# (docs/pool-modes.md, "What still differs") is identical in session mode.
SESSION_LOGIN = dict(LOGIN, options=LOGIN["options"] + " -c app.x=1")
SESSION_PROBE = PROBE + ", current_setting('app.x')"
LOCAL_DEFAULT_FN = ("CREATE FUNCTION pg_temp.reset_datestyle() RETURNS void LANGUAGE plpgsql"
                    " AS $$BEGIN RESET DateStyle; PERFORM set_config('search_path', NULL, false);"
                    " END$$")
SESSION_CASES = {
    "statement-after-reset-in-query": [CHANGE, q("RESET ALL; " + SESSION_PROBE), q(SESSION_PROBE)],
    "statement-after-reset-in-batch": [
        CHANGE, (parse_msg("", "RESET ALL") + bind_msg("", "") + execute_msg()
                 + parse_msg("", SESSION_PROBE) + bind_msg("", "") + execute_msg() + sync_msg(),
                 1), q(SESSION_PROBE)],
    "set-config-null-own-result": [CHANGE, q("SELECT set_config('search_path', NULL, false)"),
                                   q(SESSION_PROBE)],
    "reset-in-do-block": [CHANGE, q("DO $$BEGIN RESET application_name;"
                                    " PERFORM set_config('DateStyle', NULL, false); END$$"),
                          q(SESSION_PROBE)],
    "reset-in-function": [CHANGE, q(LOCAL_DEFAULT_FN), q("SELECT pg_temp.reset_datestyle()"),
                          q(SESSION_PROBE)],
    "set-local-default-and-session-reset": [
        CHANGE, q("BEGIN"), q("SET LOCAL DateStyle TO DEFAULT; RESET search_path"),
        q(SESSION_PROBE), q("COMMIT"), q(SESSION_PROBE)],
    "long-text-local-reset": [CHANGE, q("BEGIN"), q(LONG + "; SET LOCAL DateStyle TO DEFAULT"),
                              q(SESSION_PROBE), q("COMMIT"), q(SESSION_PROBE)],
    "custom-login-param-reset-then-set": [q("SET app.x = '2'"),
                                          q("RESET app.x; SET app.x = '3'"), q(SESSION_PROBE),
                                          q("RESET ALL"), q(SESSION_PROBE)],
}


@pytest.mark.parametrize("case", sorted(SESSION_CASES))
def test_session_mode_resets_as_postgres_where_transaction_mode_differs(start_sluice, pg, case):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    direct = raw_login(pg.port, password=APP_PASSWORD, **SESSION_LOGIN)
    pooled = raw_login(s.port, **SESSION_LOGIN)
    try:
        assert pooled.params == direct.params
        for i, step in enumerate(SESSION_CASES[case]):
            want, got = transcript(direct, step), transcript(pooled, step)
            assert got == want, f"step {i}: {step[0][:120]!r}"
    finally:
        direct.close()
        pooled.close()


def test_session_mode_reset_of_a_login_value_made_invalid_later_is_as_postgres(start_sluice, pg):
    """A login value Postgres no longer accepts (its text search configuration dropped since):
    RESET gives it back without checking it, in Postgres; sluice's restore by set_config would
    check it and fail."""
    with pg.superuser("appdb") as su:
        su.execute("DROP TEXT SEARCH CONFIGURATION IF EXISTS public.h1_conf")
        su.execute("CREATE TEXT SEARCH CONFIGURATION public.h1_conf (COPY = simple)")
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    login = {"options": "-c default_text_search_config=public.h1_conf"}
    direct = raw_login(pg.port, password=APP_PASSWORD, **login)
    pooled = raw_login(s.port, **login)
    try:
        pooled.query("SELECT 1")  # its backend is logged in with the value while it is good
        with pg.superuser("appdb") as su:
            su.execute("DROP TEXT SEARCH CONFIGURATION public.h1_conf")
        for step in [q("SET default_text_search_config = 'simple'"), q("BEGIN"),
                     q("RESET default_text_search_config"),
                     q("SELECT current_setting('default_text_search_config')"), q("COMMIT"),
                     q("SHOW default_text_search_config")]:
            want, got = transcript(direct, step), transcript(pooled, step)
            assert got == want, step[0][:120]
    finally:
        direct.close()
        pooled.close()
