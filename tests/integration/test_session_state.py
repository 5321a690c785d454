"""Session state a client cannot tell from Postgres's: startup options survive the resets between
clients, a bad startup option is refused as Postgres refuses it and never changes another client's
session, DEALLOCATE/DISCARD are followed whichever protocol carries them, and set_config is seen
by session_state_policy. Where it makes sense the answer is compared with Postgres itself."""

import struct

import psycopg
import pytest

from conftest import APP_PASSWORD, superuser_change
from pgwire import (RawConn, ServerError, bind_msg, describe_msg, execute_msg, message,
                    parse_data_row, parse_fields, parse_msg, query_msg, raw_login, startup_packet,
                    sync_msg)

EVIL = "-c search_path=evil -c statement_timeout=1234"


def settings(conn):
    return conn.execute("SELECT current_setting('search_path'),"
                        " current_setting('statement_timeout')").fetchone()


@pytest.mark.parametrize("reset", ["server_reset_query", "server_reset_query_always"])
def test_startup_options_survive_the_reset_between_clients(start_sluice, pg, reset):
    mode = "session" if reset == "server_reset_query" else "transaction"
    main = {"pool_mode": mode, "default_pool_size": 1, "server_reset_query": "DISCARD ALL"}
    if reset == "server_reset_query_always":
        main["server_reset_query_always"] = 1
    s = start_sluice(main)
    with psycopg.connect(pg.direct_dsn(options=EVIL), autocommit=True) as direct:
        expected = settings(direct)
    assert expected == ("evil", "1234ms")
    for i in range(3):
        with s.connect(options=EVIL) as c:
            assert settings(c) == expected, f"connection {i + 1} lost its startup options"
            pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        if i == 0:
            first = pid
        assert pid == first, "pool_size 1: every connection should share one backend"
    with s.connect() as plain:
        assert settings(plain) == ("\"$user\", public", "0"), "a plain client inherited them"


@pytest.mark.parametrize("statement", ["RESET ALL", "DISCARD ALL", "RESET search_path"])
def test_transaction_mode_a_clients_reset_is_followed(start_sluice, statement):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect(options=EVIL) as a, s.connect(options=EVIL) as b:
        assert settings(a)[0] == "evil"
        a.execute(statement)
        assert settings(b)[0] == "evil", f"after A's {statement} B lost its startup options"
        # Postgres resets to the session's startup values: A keeps them too
        assert settings(a)[0] == "evil"


def test_transaction_mode_an_untracked_set_does_not_leak_to_the_next_client(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect(options=EVIL) as a, s.connect(options=EVIL) as b, s.connect() as plain:
        assert settings(a) == ("evil", "1234ms")
        a.execute("SET search_path = public")
        a.execute("SELECT set_config('statement_timeout', '99', false)")
        assert settings(b) == ("evil", "1234ms")
        a.execute("SET statement_timeout = 77")
        assert settings(plain) == ("\"$user\", public", "0")
        # a name the server does not know, and a custom one: resetting them fails nobody's sync
        with pytest.raises(psycopg.errors.UndefinedObject):
            a.execute("SET no_such_setting = 1")
        a.execute("SET myapp.tenant = 'a'")
        assert settings(b) == ("evil", "1234ms")
        assert settings(plain) == ("\"$user\", public", "0")
        assert plain.execute("SELECT current_setting('myapp.tenant', true)").fetchone()[0] in ("", None)


@pytest.mark.parametrize("sql", [
    "select set_config('search_path', 'evil', false)",
    "SELECT pg_catalog.set_config('statement_timeout', '4321', false)",
])
def test_refuse_policy_lets_a_followed_session_level_set_config_run(start_sluice, sql):
    """A set_config sluice can name is followed (read back, given to each server the client
    gets): refuse has nothing to refuse. The other client never gets it."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "session_state_policy": "refuse"})
    with s.connect() as a, s.connect() as b:
        a.execute(sql)
        assert settings(b) == ("\"$user\", public", "0"), "B inherited A's set_config"
        assert "evil" in settings(a) or "4321ms" in settings(a)
        # transaction-local set_config ends with the transaction, as SET LOCAL does
        a.execute("RESET ALL")
        a.execute("BEGIN")
        a.execute("select set_config('search_path', 'evil', true)")
        assert settings(a)[0] == "evil"
        a.execute("COMMIT")
        assert settings(a)[0] == "\"$user\", public"


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_psycopg_deallocate_by_extended_protocol_is_followed(start_sluice, mode):
    """psycopg 3 with prepared_max=1 evicts with DEALLOCATE sent as Parse/Bind/Execute; another
    client's statement of the same name must still be prepared when it runs."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    a = s.connect(prepare_threshold=0)
    b = s.connect(prepare_threshold=0)
    try:
        a.prepared_max = 1
        b.prepared_max = 1
        for i in range(4):
            for conn in (a, b):
                assert conn.execute("SELECT %s::int + " + str(i), [i]).fetchone()[0] == 2 * i
    finally:
        a.close()
        b.close()


def login_error(port, password=None, **params):
    """The ErrorResponse a login gets (None when it is let in)."""
    try:
        raw_login(port, password=password, **params).close()
    except ServerError as e:
        return e.fields.get("S"), e.sqlstate, e.fields.get("M")
    return None


@pytest.mark.parametrize("warm", [False, True], ids=["first-login-of-the-pool", "later-login"])
@pytest.mark.parametrize("options", ["-c no_such_setting=1", "-c statement_timeout=abc",
                                     "-c search_path=evil -c no_such_setting=1"])
def test_a_startup_option_postgres_refuses_is_refused_with_its_error(start_sluice, pg, warm,
                                                                      options):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    expected = login_error(pg.port, password=APP_PASSWORD, options=options)
    assert expected is not None and expected[0] == "FATAL", expected
    if warm:
        with s.connect() as c:
            c.execute("SELECT 1")
    assert login_error(s.port, options=options) == expected
    # and the server it was tried on serves the next clients as if it had never come
    with s.connect() as plain:
        assert settings(plain) == ("\"$user\", public", "0")
    with s.connect(options=EVIL) as evil:
        assert settings(evil) == ("evil", "1234ms")
    assert login_error(s.port, options=options) == expected


def test_a_refused_login_never_changes_another_clients_session(start_sluice, pg):
    """After a bad login, the next clients on the same backend get their own sessions: a plain
    one the default search_path, a LATIN1 one its encoding (else its text is stored wrong)."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with pg.superuser("appdb") as su:
        su.execute("DROP TABLE IF EXISTS enc_probe")
        su.execute("CREATE TABLE enc_probe (t text)")
        su.execute("GRANT ALL ON enc_probe TO app")
    with s.connect(options="-c search_path=evil") as evil:
        assert settings(evil)[0] == "evil"
    refused = None
    try:
        bad = raw_login(s.port, options="-c search_path=evil -c no_such_setting=1")
        try:
            bad.query("SELECT 1")  # let in: its parameters are SET now
        except ServerError:
            pass
        bad.close()
    except ServerError as e:
        refused = e.sqlstate
    with s.connect() as plain:
        assert settings(plain)[0] == "\"$user\", public", "a plain client got search_path=evil"
    latin1 = raw_login(s.port, client_encoding="LATIN1")
    try:
        latin1.send(query_msg_latin1("INSERT INTO enc_probe VALUES ('\u00e9')"))
        latin1.read_results()
    finally:
        latin1.close()
    assert pg.query("SELECT t FROM enc_probe", dbname="appdb") == [("\u00e9",)]
    assert refused == "42704"


def query_msg_latin1(sql):
    body = sql.encode("latin-1") + b"\0"
    return b"Q" + struct.pack("!I", len(body) + 4) + body


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_an_empty_application_name_stays_empty(start_sluice, pg, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with psycopg.connect(pg.direct_dsn(application_name=""), autocommit=True) as direct:
        expected = direct.execute("SHOW application_name").fetchone()[0]
    assert expected == ""
    for _ in range(2):
        with s.connect(application_name="") as c:  # libpq does not even send an empty one
            assert c.execute("SHOW application_name").fetchone()[0] == expected
            assert c.info.parameter_status("application_name") == expected
        c = raw_login(s.port, application_name="")
        try:
            assert c.params.get("application_name") == expected
            rows, _ = c.query("SHOW application_name")
            assert rows == [[expected]]
        finally:
            c.close()


def test_ignore_startup_parameters_covers_dash_c_inside_options(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "ignore_startup_parameters": "extra_float_digits,statement_timeout"})
    with s.connect(options="-c extra_float_digits=3 -c statement_timeout=4321 "
                           "-c search_path=evil") as c:
        assert c.execute("SELECT current_setting('extra_float_digits'),"
                         " current_setting('statement_timeout'),"
                         " current_setting('search_path')").fetchone() == ("1", "0", "evil")


def test_ignore_startup_parameters_options_ignores_every_option(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "ignore_startup_parameters": "options"})
    with s.connect(options=EVIL) as c:
        assert settings(c) == ("\"$user\", public", "0")


def run_extended(conn, msgs):
    """Send extended-protocol messages ending in Sync; (rows, error fields or None)."""
    conn.send(b"".join(msgs))
    rows, error = [], None
    while True:
        mtype, payload = conn.read_message()
        if mtype == "D":
            rows.append(parse_data_row(payload))
        elif mtype == "E":
            error = parse_fields(payload)
        elif mtype == "Z":
            return rows, error


def reparse_script(conn):
    """Prepare s1, prepare s1 again with other text, then use it: what does the client see?"""
    out = [run_extended(conn, [parse_msg("s1", "SELECT 1"), sync_msg()])]
    out.append(run_extended(conn, [parse_msg("s1", "SELECT 2"), bind_msg("", "s1"),
                                   execute_msg(), sync_msg()]))
    out.append(run_extended(conn, [bind_msg("", "s1"), execute_msg(), sync_msg()]))
    return [(rows, err and (err.get("C"), err.get("M"))) for rows, err in out]


def test_parse_of_a_name_the_client_already_prepared_fails_as_in_postgres(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    direct = raw_login(pg.port, password=APP_PASSWORD)
    try:
        expected = reparse_script(direct)
    finally:
        direct.close()
    assert expected[1][1] == ("42P05", 'prepared statement "s1" already exists')
    a, b = raw_login(s.port), raw_login(s.port)
    try:
        assert reparse_script(a) == expected
        # again after another client took the name on the shared backend
        run_extended(a, [parse_msg("s2", "SELECT 1"), sync_msg()])
        run_extended(b, [parse_msg("s2", "SELECT 'b'"), sync_msg()])
        rows, err = run_extended(a, [parse_msg("s2", "SELECT 3"), sync_msg()])
        assert err and err.get("C") == "42P05"
        assert run_extended(a, [bind_msg("", "s2"), execute_msg(), sync_msg()]) == ([["1"]], None)
        assert run_extended(b, [bind_msg("", "s2"), execute_msg(), sync_msg()]) == ([["b"]], None)
    finally:
        a.close()
        b.close()


def test_max_prepared_statements_0_passes_statements_through_untracked(start_sluice):
    """As in PgBouncer: 0 turns the tracking off; clients sharing a backend share its names."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 0})
    a, b = raw_login(s.port), raw_login(s.port)
    try:
        assert run_extended(a, [parse_msg("s1", "SELECT 'a'"), sync_msg()]) == ([], None)
        rows, err = run_extended(b, [parse_msg("s1", "SELECT 'b'"), sync_msg()])
        assert err and err.get("C") == "42P05", "sluice still re-prepared under the name"
        assert run_extended(b, [bind_msg("", "s1"), execute_msg(), sync_msg()]) == ([["a"]], None)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("options", [EVIL, "-c no_such_setting=1"])
def test_a_query_sent_with_the_startup_packet_waits_for_the_parameters(start_sluice, options):
    """Bytes pipelined behind the login never run before the startup parameters are in force,
    and never run at all when the login is refused."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as warm:
        warm.execute("SELECT 1")
    c = RawConn(s.port)
    try:
        c.send(startup_packet(options=options)
               + query_msg("SELECT current_setting('search_path'),"
                           " current_setting('statement_timeout')"))
        if "no_such" in options:
            with pytest.raises(ServerError) as e:
                c.finish_login()
            assert e.value.sqlstate == "42704"
            return
        c.finish_login()
        rows, _ = c.read_results()
        assert rows == [["evil", "1234ms"]]
    finally:
        c.close()


# ---- RESET gives back the client's login values, as in Postgres --------------------------------

LOGIN = {"application_name": "login_app", "DateStyle": "German", "client_encoding": "LATIN1",
         "options": "-c search_path=evil -c statement_timeout=1234 -c TimeZone=Asia/Kolkata"}
PROBE = ("SELECT current_setting('application_name'), current_setting('DateStyle'),"
         " current_setting('search_path'), current_setting('statement_timeout')")
# each step is one Query; what the client receives for it (ParameterStatus included) must be
# Postgres's own
RESET_SCRIPT = [
    "SET application_name = 'changed'", "RESET application_name", PROBE,
    "SET DateStyle = ISO; SET search_path = public", "RESET ALL", PROBE,
    "RESET ALL", PROBE,  # nothing changed: Postgres reports nothing
    "SET application_name TO DEFAULT", "SET statement_timeout = 5", "RESET statement_timeout", PROBE,
    "SET application_name = 'y'", "BEGIN", "RESET application_name", PROBE, "ROLLBACK", PROBE,
    "BEGIN", "RESET ALL", "COMMIT", PROBE,
    "SET application_name = 'z'; SET IntervalStyle = 'iso_8601'", "SELECT 1/0; RESET ALL", PROBE,
    # unreported ones inside a transaction block (transaction mode reads a session SET of one
    # back when the block ends: test_unreported_set.py)
    "BEGIN", "SET search_path = public", "RESET search_path", PROBE, "COMMIT", PROBE,
    "SET DateStyle = 'SQL'", "DISCARD ALL", PROBE,
    "SET application_name = 'w'", "reset   application_name ;", PROBE,
    "SET TIME ZONE 'UTC'; SET client_encoding = 'UTF8'", "RESET TIME ZONE; RESET client_encoding",
    "SHOW TimeZone", "SET TimeZone = 'UTC'", "SET TimeZone TO DEFAULT", "SHOW TimeZone",
]


def transcript(conn, sql):
    """Every message the client receives for one Query, as (type, payload)."""
    conn.send(query_msg(sql))
    out = []
    while True:
        mtype, payload = conn.read_message()
        out.append((mtype, payload))
        if mtype == "Z":
            return out


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_reset_gives_back_the_login_values_as_postgres_does(start_sluice, pg, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    direct = raw_login(pg.port, password=APP_PASSWORD, **LOGIN)
    pooled = raw_login(s.port, **LOGIN)
    try:
        assert pooled.params == direct.params
        for sql in RESET_SCRIPT:
            want, got = transcript(direct, sql), transcript(pooled, sql)
            assert got == want, f"after {sql!r}"
    finally:
        direct.close()
        pooled.close()


def test_reset_login_values_reach_the_next_transaction(start_sluice):
    """Transaction mode: what the reset left is what the client's later transactions get, on
    the backend another client used in between."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    a = raw_login(s.port, **LOGIN)
    b = raw_login(s.port, application_name="other")
    try:
        a.query("SET application_name = 'changed'")
        a.query("RESET ALL")
        assert a.params["application_name"] == "login_app"
        b.query("SET DateStyle = 'SQL'")
        rows, _ = a.query(PROBE)
        assert rows == [["login_app", "German, DMY", "evil", "1234ms"]]
        rows, _ = b.query("SELECT current_setting('application_name')")
        assert rows == [["other"]]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_reset_pipelined_with_other_queries_still_answers_them_all(start_sluice, mode):
    """A RESET whose Query has others pipelined behind it: they wait for its reply and the
    login values given back after it, so they see those values (test_login_reset.py compares
    every message with Postgres)."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    c = raw_login(s.port, **LOGIN)
    try:
        c.query("SET application_name = 'changed'")
        c.send(query_msg("RESET ALL") + query_msg("SELECT current_setting('application_name')"))
        c.read_results()
        rows, _ = c.read_results()
        assert rows == [["login_app"]] and c.params["application_name"] == "login_app"
        c.query("SET application_name = 'again'")
        c.query("RESET ALL")
        rows, _ = c.query(PROBE)
        assert rows == [["login_app", "German, DMY", "evil", "1234ms"]]
        assert c.params["application_name"] == "login_app"
    finally:
        c.close()


# ---- a change sluice cannot name: the server is reset before anyone else gets it ----

SESSION_LEAKS = [
    # the view's rule runs set_config(name, setting, false) for each row
    "UPDATE pg_settings SET setting = 'evil' WHERE name = 'search_path'",
    "UPDATE ONLY pg_catalog . \"pg_settings\" SET setting = 'evil' WHERE name = 'search_path'",
    "EXPLAIN ANALYZE UPDATE pg_settings SET setting = 'evil' WHERE name = 'search_path'",
    "UPDATE U&\"pg_catalo\\0067\".U&\"pg\\005fsettings\" SET setting = 'evil'"
    " WHERE name = 'search_path'",
    # a function name spelled with Unicode escapes, which Postgres decodes
    "SELECT U&\"set\\005fconfig\"('search_path', 'evil', false)",
    "SELECT pg_catalog.U&\"set!005fconfig\" UESCAPE '!' ('role', 'app2', false)",
    "SET ROLE app2",
    "SET SESSION ROLE app2",
    'SET "role" TO app2',
    "SELECT set_config('role', 'app2', false)",
    "SET SCHEMA 'evil'",
    'SET "search_path" TO evil',
    'RESET "search_path"; SET "search_path" TO evil',
    "SELECT set_config(E'search_path', 'evil', false)",
    "SELECT set_config(U&'search_path', 'evil', false)",
    "SELECT set_config($$search_path$$, 'evil', false)",
    "SELECT set_config('search_'||'path', 'evil', false)",
    "SELECT set_config(n, 'evil', false) FROM (VALUES ('search_path')) v(n)",
    'SELECT "set_config"(\'search_path\', \'evil\', false)',
    'SELECT pg_catalog."set_config"(\'search_path\', \'evil\', false)',
]


@pytest.mark.parametrize("sql", SESSION_LEAKS)
def test_transaction_mode_session_state_never_reaches_the_next_client(start_sluice,
                                                                     app_may_become_app2, sql):
    """Default session_state_policy (warn), one server: what client A changed, B never sees."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as a:
        a.execute(sql)
    with s.connect() as b:
        row = b.execute("SELECT current_user, current_setting('search_path')").fetchone()
    assert row == ("app", "\"$user\", public")


@pytest.mark.parametrize("sql", ["SET ROLE app2", "SET SESSION ROLE app2",
                                 "SELECT set_config('role', 'app2', false)"])
def test_refuse_policy_sees_role_changes(start_sluice, app_may_become_app2, sql):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "session_state_policy": "refuse"})
    with s.connect() as a:
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            a.execute(sql)
        row = a.execute("SELECT current_user, current_setting('search_path')").fetchone()
    assert row == ("app", "\"$user\", public")


@pytest.mark.parametrize("sql", [
    'SELECT "set_config"(\'search_path\', \'evil\', false)',
    'SET "search_path" TO evil',
    "SET SCHEMA 'evil'",
])
def test_refuse_policy_follows_quoted_search_path_changes(start_sluice, sql):
    """Quoted names and SET SCHEMA name search_path: followed, so not refused; the client keeps
    the value on the server another client used in between, and that client never sees it."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "session_state_policy": "refuse"})
    with s.connect() as a, s.connect() as b:
        a.execute(sql)
        assert b.execute("SELECT current_setting('search_path')").fetchone() == \
            ("\"$user\", public",)
        assert a.execute("SELECT current_setting('search_path')").fetchone() == ("evil",)


@pytest.mark.parametrize("policy", ["warn", "pin"])
def test_transaction_mode_session_objects_never_reach_the_next_client(start_sluice, pg, policy):
    """What Postgres drops when a session ends (a SQL-prepared statement, a temporary table, a
    WITH HOLD cursor, LISTEN, a session advisory lock) never reaches the next client: the server
    is reset (DISCARD ALL) before it serves again."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "session_state_policy": policy})
    objects = {
        "PREPARE foo AS SELECT 'A-secret'": "EXECUTE foo",
        "CREATE TEMP TABLE tt(x text)": "SELECT * FROM tt",
        "DECLARE cur CURSOR WITH HOLD FOR SELECT 'A-cursor'": "FETCH cur",
    }
    for make, use in objects.items():
        with s.connect() as a:
            a.execute(make)
        with s.connect() as b:
            with pytest.raises(psycopg.Error):
                b.execute(use)
    # a comment in place of each space between DECLARE's words
    with s.connect() as a:
        a.execute("DECLARE c/**/NO/**/SCROLL/**/CURSOR/**/WITH/**/HOLD/**/FOR SELECT 'A-cursor'")
    with s.connect() as b:
        assert b.execute("SELECT count(*) FROM pg_cursors").fetchone() == (0,)
    for sql in ["LISTEN a_channel", "SELECT pg_advisory_lock(4242)",
                "SELECT pg_advisory_lock /* the lock */ (4243)",
                "SELECT U&\"pg\\005fadvisory\\005flock\"(4244)",
                "SELECT U&\"pg_try_advisory_lock_shar\\+000065d\"(4245)"]:
        with s.connect() as a:
            a.execute(sql)
        with s.connect() as b:
            row = b.execute("SELECT (SELECT count(*) FROM pg_listening_channels()),"
                            " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                            "  AND pid = pg_backend_pid())").fetchone()
            assert row == (0, 0), f"B inherited A's {sql}"


SEEDS = [
    "SELECT setseed(0.25)",
    "SELECT pg_catalog.SetSeed(0.25), 1 AS one",
    'SELECT U&"setsee\\0064"(0.25)',
    # a feature a reset undoes first in the text hides nothing that only closing the server ends
    "LISTEN a_channel; SELECT setseed(0.25)",
    "SELECT pg_advisory_lock(4246), setseed(0.25)",
    # a function of one argument is called as a field too
    "SELECT (0.25::float8).setseed",
    "SELECT (0.25::float8) . \"setseed\"",
    # the parameter seed calls setseed as it is set (SET LOCAL too), and RESET does not undo it
    "SET seed = 0.25",
    "SET LOCAL \"seed\" TO 0.25",
    "SELECT set_config('seed', '0.25', true)",
]


@pytest.mark.parametrize("mode", ["transaction", "statement"])
@pytest.mark.parametrize("sql,long_text", [(sql, False) for sql in SEEDS] + [
    # past a long text's start the stream watch looks for the word setseed (a U&"..." name or
    # the parameter seed there costs a full reset only: docs)
    (sql, True) for sql in SEEDS if "U&" not in sql and "seed'" not in sql and "SET " not in sql])
def test_a_random_seed_never_reaches_the_next_client(start_sluice, pg, mode, sql, long_text):
    """setseed fixes what random() gives for the rest of the backend's life, and no reset undoes
    it (DISCARD ALL included); a new Postgres session seeds itself from a strong random source.
    The next client on that backend got the very numbers client A could compute (a token, a
    sample) until sluice closed such a server when released, as it closes a LOAD's."""
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
        direct.execute("SELECT setseed(0.25)")
        seeded = [direct.execute("SELECT random()").fetchone()[0] for _ in range(3)]
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as a:
        if long_text:
            load_after_a_long_text(a, sql)
        else:
            a.execute(sql)
    with s.connect() as b:
        got = [b.execute("SELECT random()").fetchone()[0] for _ in range(3)]
    assert got != seeded, f"B's random() followed A's {sql}"


def test_refuse_policy_refuses_setseed(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "session_state_policy": "refuse"})
    with s.connect() as a:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="setseed"):
            a.execute("SELECT setseed(0.25)")
        assert a.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("mode", ["transaction", "statement"])
@pytest.mark.parametrize("sql", [
    "SELECT (4250::bigint).pg_advisory_lock",
    "SELECT (4251::bigint).pg_try_advisory_lock_shared AS got",
    "SELECT (x.id).pg_advisory_lock_shared FROM (SELECT 4252::bigint AS id) x",
    'SELECT (4253::bigint) . "pg_try_advisory_lock"',
    'SELECT (4254::bigint).U&"pg\\005fadvisory\\005flock"',
])
def test_a_session_advisory_lock_called_as_a_field_never_reaches_the_next_client(
        start_sluice, pg, mode, sql):
    """Postgres calls a function of one argument written as a field of it, (1::bigint).f, as
    f(1::bigint). sluice looked for a '(' after the lock function's name, so the lock stayed
    on the backend and the next client of it found it held (its own pg_advisory_lock of the
    same key would wait forever)."""
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
        assert direct.execute(sql).fetchone()[0] in (True, "")
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as a:
        a.execute(sql)
    with s.connect() as b:
        held = b.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                         " AND pid = pg_backend_pid()").fetchone()[0]
    assert held == 0, f"B's backend holds A's {sql}"


TEMP_OBJECTS = [
    "SELECT 'A-secret' AS x INTO TEMP tt",
    "SELECT 'A-secret' AS x INTO TEMPORARY TABLE tt",
    "WITH v AS (SELECT 'A-secret' AS x) SELECT * INTO LOCAL TEMP tt FROM v",
    "CREATE TABLE pg_temp.tt AS SELECT 'A-secret' AS x",
    "CREATE TABLE \"pg_temp\".tt AS SELECT 'A-secret' AS x",
    "CREATE TABLE PG_TEMP . tt AS SELECT 'A-secret' AS x",
    "CREATE VIEW pg_temp.tt AS SELECT 'A-secret' AS x",
    "EXPLAIN ANALYZE CREATE TEMP TABLE tt AS SELECT 'A-secret' AS x",
    "EXPLAIN (ANALYZE, COSTS OFF) SELECT 'A-secret' AS x INTO TEMP tt",
    "-- it's the cache\nCREATE TEMP TABLE tt AS SELECT 'A-secret' AS x",
    # Postgres decodes a U&"..." name's escapes before it looks the schema up
    "CREATE TABLE U&\"pg_tem\\0070\".tt AS SELECT 'A-secret' AS x",
    "CREATE TABLE U&\"pg!005ftemp\" UESCAPE '!' . tt AS SELECT 'A-secret' AS x",
    "SELECT 'A-secret' AS x INTO u&\"pg\\+00005ftemp\".tt",
    # a temporary table kept past the commit, whatever a comment or a name says
    "CREATE TEMP TABLE tt ON COMMIT PRESERVE ROWS AS SELECT 'A-secret' AS x",
    "CREATE TEMP TABLE tt /* ON COMMIT DROP */ AS SELECT 'A-secret' AS x",
    "CREATE TEMP TABLE tt AS SELECT 'A-secret' AS x, 1 AS \"on commit drop\"",
]


@pytest.mark.parametrize("make", TEMP_OBJECTS)
def test_temporary_objects_made_without_create_temp_never_reach_the_next_client(
        start_sluice, make):
    """A temporary table or view lives as long as its backend. Made by SELECT INTO TEMP, by a
    name in the pg_temp schema or under EXPLAIN ANALYZE, sluice did not see it: the server went
    to the next client as it was, and that client read the first one's rows from tt."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as a, a.transaction():
        a.execute(make)
        assert a.execute("SELECT x FROM tt").fetchone() == ("A-secret",)
    with s.connect() as b:
        with pytest.raises(psycopg.errors.UndefinedTable):
            b.execute("SELECT x FROM tt")


ON_COMMIT_DROP = [
    "CREATE TEMP TABLE tt (x text DEFAULT 'as') ON COMMIT DROP",
    "CREATE LOCAL TEMPORARY TABLE IF NOT EXISTS tt (x text CHECK (x <> 'on commit preserve rows'))"
    " WITH (fillfactor = 90) ON/**/COMMIT/**/DROP",
    "create temp table tt on commit drop as select 'A-secret'::text as x",
    "EXPLAIN ANALYZE CREATE TEMP TABLE tt ON COMMIT DROP AS SELECT 'A-secret' AS x",
]


def test_a_temporary_table_dropped_at_commit_is_neither_refused_nor_reset(start_sluice, table):
    """CREATE TEMP TABLE ... ON COMMIT DROP, the temporary table that suits a transaction
    pooler, ends with its transaction: under session_state_policy = refuse it was refused (pin
    pinned the client, warn reset the server with DISCARD ALL after each such transaction).
    Now it runs as on Postgres, and the server keeps its session (lastval() still reads the
    sequence value of the transaction before)."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "session_state_policy": "refuse"})
    with s.connect() as a:
        a.execute(f"CREATE SEQUENCE public.{table}_seq")
        try:
            for n, make in enumerate(ON_COMMIT_DROP, start=1):
                with a.transaction():
                    a.execute(f"SELECT nextval('public.{table}_seq')")
                    a.execute(make)
                    a.execute("INSERT INTO tt (x) VALUES ('A')")
                assert a.execute("SELECT lastval(), to_regclass('pg_temp.tt')").fetchone() == \
                    (n, None), make
        finally:
            a.execute(f"DROP SEQUENCE public.{table}_seq")


TEMP_ONLY = [
    ["CREATE TEMP TABLE tt AS SELECT 'A-secret' AS x"],
    ["SELECT 'A-secret' AS x INTO TEMP tt"],
    # PostgREST's way: the value a Bind parameter, which may name pg_temp
    ["SELECT set_config('search_path', %s, true)", "CREATE TABLE tt AS SELECT 'A-secret' AS x"],
]


@pytest.mark.parametrize("steps", TEMP_ONLY)
def test_temporary_objects_cost_a_discard_temp_not_a_full_reset(start_sluice, table, steps):
    """A temporary object is all such a transaction leaves that sluice does not follow: the
    server gets DISCARD TEMP, which drops it for the next client and keeps the rest of the
    session (its prepared statements, its parameters, lastval()). A DISCARD ALL after each
    transaction made every later client prepare and set again."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as a:
        a.execute(f"CREATE SEQUENCE public.{table}_seq")
        try:
            for n in (1, 2):
                with a.transaction():
                    a.execute(f"SELECT nextval('public.{table}_seq')")
                    for sql in steps:
                        a.execute(sql, ["pg_temp, public"] if "%s" in sql else None)
                    assert a.execute("SELECT x FROM tt").fetchone() == ("A-secret",)
                row = a.execute("SELECT lastval(), to_regclass('pg_temp.tt')").fetchone()
                assert row == (n, None)
        finally:
            a.execute(f"DROP SEQUENCE public.{table}_seq")


TEMP_SEARCH_PATHS = [
    "SET search_path = pg_temp, public",
    "SET LOCAL search_path = pg_temp",
    "SET SESSION \"search_path\" TO 'pg_temp'",
    "SET SCHEMA 'pg_temp'",
    "SET search_path = missing, PG_TEMP",
    "SELECT set_config('search_path', 'pg_temp', true)",
    "SELECT set_config('search_path', 'pg_temp,public', false)",
    "SELECT set_config('search_path', concat('pg_', 'temp'), true)",
    "SET LOCAL search_path = U&\"pg\\005ftemp\"",
    # a name sluice cannot read may be search_path, even for a transaction
    "SELECT set_config(n, 'pg_temp', true) FROM (VALUES ('search_path')) v(n)",
    "SELECT set_config('search' || '_path', 'pg_temp', true)",
]


def count_temp_objects(conn):
    return conn.execute(
        "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())"
        " + (SELECT count(*) FROM pg_type WHERE typnamespace = pg_my_temp_schema()"
        "    AND typrelid = 0)").fetchone()[0]


@pytest.mark.parametrize("set_path", TEMP_SEARCH_PATHS)
def test_a_plain_create_under_a_search_path_naming_pg_temp_never_reaches_the_next_client(
        start_sluice, set_path):
    """With pg_temp first in search_path (or the schemas before it missing), a CREATE without a
    schema makes a temporary object: the next client of the server found the first one's table
    (pg_temp is searched first, so it even shadows a real table of that name), and a SET LOCAL
    or set_config left nothing in sluice's records to reset."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as a:
        with a.transaction():
            a.execute(set_path)
            a.execute("CREATE TABLE tt AS SELECT 'A-secret' AS x")
            a.execute("CREATE TYPE mood AS ENUM ('a')")
            assert a.execute("SELECT x FROM tt").fetchone() == ("A-secret",)
        a.execute("RESET search_path")
    with s.connect() as b:
        assert count_temp_objects(b) == 0
        with pytest.raises(psycopg.errors.UndefinedTable):
            b.execute("SELECT x FROM tt")


@pytest.mark.parametrize("how", ["followed SET", "login option"])
def test_a_search_path_naming_pg_temp_that_sluice_gives_each_server_resets_each_one(
        start_sluice, how):
    """A search_path the client SET in an earlier transaction (sluice follows it and gives it to
    each server the client gets) or sent at login names pg_temp: a CREATE in any later
    transaction, with nothing in its own text, makes a temporary table, and the server must not
    reach the next client with it."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    opts = {"options": "-csearch_path=pg_temp,public"} if how == "login option" else {}
    with s.connect(**opts) as a:
        if how == "followed SET":
            a.execute("SET search_path = pg_temp, public")
        path = a.execute("SHOW search_path").fetchone()[0]
        assert path.replace(" ", "") == "pg_temp,public"
        a.execute("CREATE TABLE tt AS SELECT 'A-secret' AS x")
        with s.connect() as b:
            assert count_temp_objects(b) == 0
        assert a.execute("SHOW search_path").fetchone() == (path,)


def test_a_search_path_without_pg_temp_costs_no_reset(start_sluice, table):
    """The common SET search_path (and one that names a schema like pg_temporary_data) is
    followed as before, without a full reset of the server at each release: a DISCARD ALL would
    have dropped the backend's sequence values, which lastval() still reads on the next lease."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as a:
        a.execute(f"CREATE SEQUENCE public.{table}_seq")
        try:
            a.execute("SET search_path = pg_temporary_data, public")
            a.execute("SELECT set_config('search_path', '\"$user\", public', false)")
            a.execute(f"SELECT nextval('public.{table}_seq')")
            assert a.execute("SELECT lastval()").fetchone() == (1,)
        finally:
            a.execute(f"DROP SEQUENCE public.{table}_seq")


LONG_TEXT_TAILS = ["SELECT pg_advisory_lock(4242)", "SELECT pg_try_advisory_lock_shared(4242)",
                   "LISTEN chan", "CREATE TEMP TABLE tt (a int)",
                   "CREATE OR REPLACE TEMPORARY VIEW tt AS SELECT 1",
                   "DECLARE c CURSOR WITH HOLD FOR SELECT 1", "PREPARE p AS SELECT 1",
                   "SELECT 1 AS a INTO TEMP tt", "CREATE TABLE pg_temp.tt (a int)",
                   "SET ROLE app2", "UPDATE pg_settings SET setting = 'evil' WHERE name = 'search_path'",
                   "CREATE TABLE U&\"pg_tem\\0070\".tt (a int)",
                   "SELECT U&\"pg\\005fadvisory\\005flock\"(4242)"]


@pytest.mark.parametrize("tail", LONG_TEXT_TAILS)
def test_session_objects_at_the_end_of_a_text_longer_than_the_buffer_never_reach_the_next_client(
        start_sluice, app_may_become_app2, tail):
    """A Query longer than pkt_buf streams through: the inspector reads only its start, and
    the rest was watched for SET alone. An advisory lock, LISTEN, temporary table, WITH HOLD
    cursor or SQL PREPARE at its end stayed on the server: the next client inherited it (a
    lock nobody would release while the server lived)."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as a:
        with psycopg.ClientCursor(a) as cur:
            cur.execute(f"SELECT length('{'y' * 40000}'); {tail}")
    with s.connect() as b:
        row = b.execute(
            "SELECT (SELECT count(*) FROM pg_listening_channels()),"
            " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            "  AND pid = pg_backend_pid()),"
            " (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()),"
            " (SELECT count(*) FROM pg_cursors), (SELECT count(*) FROM pg_prepared_statements),"
            " current_user, current_setting('search_path')").fetchone()
    assert row == (0, 0, 0, 0, 0, "app", "\"$user\", public")


def test_an_insert_into_a_table_named_temp_is_no_temporary_object(start_sluice, pg):
    """TEMP is no reserved word: INSERT INTO temp names a table. No warning is logged for it."""
    with pg.superuser("appdb") as su:
        su.execute("CREATE TABLE IF NOT EXISTS public.temp (x int)")
        su.execute("GRANT ALL ON public.temp TO app")
    try:
        s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
        with s.connect() as a:
            mark = s.mark()
            a.execute("INSERT INTO temp VALUES (1)")
            a.execute("INSERT INTO temp SELECT x FROM temp")
        assert "temporary table" not in s.log_since(mark)
    finally:
        with pg.superuser("appdb") as su:
            su.execute("DROP TABLE IF EXISTS public.temp")


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_login_role_is_checked_every_time(start_sluice, pg, mode):
    """options='-c role=app2' is let in while app may become app2, and refused as Postgres
    refuses it once that is revoked: an earlier login's success proves nothing about the next."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2})
    with pg.superuser() as su:
        su.execute("GRANT app2 TO app")
    try:
        with s.connect(options="-c role=app2") as c:
            assert c.execute("SELECT current_user").fetchone()[0] == "app2"
    finally:
        with pg.superuser() as su:
            su.execute("REVOKE app2 FROM app")
    expected = login_error(pg.port, password=APP_PASSWORD, options="-c role=app2")
    assert expected is not None and expected[0] == "FATAL", expected
    assert login_error(s.port, options="-c role=app2") == expected
    with s.connect() as plain:
        assert plain.execute("SELECT current_user").fetchone()[0] == "app"


# ---- session_state_policy = refuse inside a transaction block: Postgres's failed transaction ----
#
# Postgres is the oracle: the same program runs against it with the refused statement replaced by
# one that fails at its Parse (STAND_IN), and through sluice with the policy on. After the ERROR
# everything the client sees must be Postgres's: ReadyForQuery 'E', 25P02 for what follows, a
# COMMIT that answers ROLLBACK, the statements after it in the same Query or batch skipped, and
# the table as Postgres leaves it. Before the fix sluice answered ReadyForQuery 'T', and a later
# COMMIT committed the rows written before the error.

REFUSED = "LISTEN refused_channel"
STAND_IN = "SELECT * FROM no_such_table_stands_in_for_the_refused"  # 42P01, at its Parse
REFUSAL_M = ("LISTEN is not supported in transaction pooling mode (session_state_policy = "
             "refuse)")


def flush_msg():
    return message(b"H")


def exchange(conn, data, readies=1, errors=0):
    """Send data; what the client gets until `readies` ReadyForQuery (or, with readies=0, until
    `errors` ErrorResponse), as (type, tag / SQLSTATE / status / row). The first error's fields
    are kept in conn.first_error."""
    conn.send(data)
    out = []
    while readies > 0 or errors > 0:
        mtype, payload = conn.read_message()
        if mtype == "C":
            out.append(("C", payload.rstrip(b"\0").decode()))
        elif mtype == "E":
            fields = parse_fields(payload)
            if getattr(conn, "first_error", None) is None:
                conn.first_error = fields
            out.append(("E", fields.get("C")))
            errors -= 1
        elif mtype == "Z":
            out.append(("Z", chr(payload[0])))
            readies -= 1
        elif mtype == "D":
            out.append(("D", tuple(parse_data_row(payload))))
        elif mtype == "N":
            out.append(("N", parse_fields(payload).get("C")))
        elif mtype != "S":
            out.append((mtype, None))
    return out


def extended(sql):
    return parse_msg("", sql) + bind_msg("", "") + execute_msg()


def prog_simple(conn, t, refused):
    return [exchange(conn, query_msg(sql)) for sql in [
        "BEGIN", f"INSERT INTO {t} VALUES (1)", refused, f"INSERT INTO {t} VALUES (2)", refused,
        "COMMIT", f"SELECT i FROM {t} ORDER BY i"]]


def prog_multi_statement(conn, t, refused):
    return [exchange(conn, query_msg(sql)) for sql in [
        "BEGIN", f"INSERT INTO {t} VALUES (1); {refused}; INSERT INTO {t} VALUES (2)",
        f"INSERT INTO {t} VALUES (3)", "COMMIT",
        # a BEGIN before it in the same Query, outside a transaction block
        f"BEGIN; INSERT INTO {t} VALUES (4); {refused}", f"INSERT INTO {t} VALUES (5)", "COMMIT",
        # a COMMIT before it in the same Query: what came before is committed
        "BEGIN", f"INSERT INTO {t} VALUES (6)", f"INSERT INTO {t} VALUES (7); COMMIT; {refused}",
        f"INSERT INTO {t} VALUES (8)", "COMMIT",
        f"SELECT i FROM {t} ORDER BY i"]]


def prog_extended(conn, t, refused):
    out = [exchange(conn, extended("BEGIN") + sync_msg()),
           exchange(conn, extended(f"INSERT INTO {t} VALUES (1)") + sync_msg()),
           exchange(conn, extended(refused) + sync_msg()),
           exchange(conn, extended(f"INSERT INTO {t} VALUES (2)") + sync_msg()),
           exchange(conn, query_msg("ROLLBACK")),
           # a named statement prepared as asyncpg does: Parse, Describe, Flush; the Sync later
           exchange(conn, extended("BEGIN") + sync_msg()),
           exchange(conn, extended(f"INSERT INTO {t} VALUES (3)") + sync_msg()),
           exchange(conn, parse_msg("s1", refused) + describe_msg("S", "s1") + flush_msg(),
                    readies=0, errors=1),
           exchange(conn, sync_msg()),
           exchange(conn, bind_msg("", "s1") + execute_msg() + sync_msg()),
           exchange(conn, extended("COMMIT") + sync_msg()),
           exchange(conn, query_msg(f"SELECT i FROM {t} ORDER BY i"))]
    return out


def prog_pipeline(conn, t, refused):
    """Everything in one write: the statements after the refused one in its batch are skipped,
    the next batches answer 25P02, the COMMIT rolls back; then the same with simple Queries."""
    batch = (extended("BEGIN") + extended(f"INSERT INTO {t} VALUES (1)") + extended(refused)
             + extended(f"INSERT INTO {t} VALUES (2)") + sync_msg()
             + extended(f"INSERT INTO {t} VALUES (3)") + sync_msg()
             + extended("COMMIT") + sync_msg())
    queries = b"".join(query_msg(sql) for sql in [
        "BEGIN", f"INSERT INTO {t} VALUES (4)", refused, f"INSERT INTO {t} VALUES (5)", "COMMIT"])
    return [exchange(conn, batch, readies=3), exchange(conn, queries, readies=5),
            exchange(conn, query_msg(f"SELECT i FROM {t} ORDER BY i"))]


def refusal_oracle(start_sluice, pg, table, program, refused=REFUSED, mode="transaction"):
    """(Postgres's transcript with STAND_IN, sluice's with the refused statement), its refusal
    being the same SQLSTATE in both; sluice's first error is kept to check."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2,
                      "session_state_policy": "refuse"})
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as d:
        d.execute(f"CREATE TABLE {table} (i int)")
    direct = raw_login(pg.port, password=APP_PASSWORD)
    try:
        want = program(direct, table, STAND_IN)
    finally:
        direct.close()
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as d:
        d.execute(f"TRUNCATE {table}")
    pooled = raw_login(s.port)
    try:
        got = program(pooled, table, refused)
        first = pooled.first_error
    finally:
        pooled.close()
    # the refusal's SQLSTATE is sluice's own; everything else must be Postgres's
    want = [[("E", "0A000") if m == ("E", "42P01") else m for m in step] for step in want]
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as d:
        rows = d.execute(f"SELECT i FROM {table} ORDER BY i").fetchall()
    return want, got, first, rows


@pytest.mark.parametrize("program", [prog_simple, prog_multi_statement, prog_extended,
                                     prog_pipeline])
def test_refuse_inside_a_transaction_fails_it_as_postgres_does(start_sluice, pg, table, program):
    want, got, first, rows = refusal_oracle(start_sluice, pg, table, program)
    assert ("Z", "E") in [m for step in want for m in step], want  # the oracle is in a failed tx
    assert got == want
    assert (first.get("S"), first.get("C"), first.get("M")) == ("ERROR", "0A000", REFUSAL_M)
    # what the COMMITs left in the table, read afterwards, is what Postgres left
    assert [str(r[0]) for r in rows] == [m[1][0] for m in want[-1] if m[0] == "D"]


def prog_pipelined_outside_a_transaction(conn, t, refused):
    """Behind requests not answered yet, sluice cannot answer alone (it closed the session
    before): the server answers each in turn, the refused one with the error."""
    queries = b"".join(query_msg(sql) for sql in [
        f"INSERT INTO {t} VALUES (1)", refused, f"INSERT INTO {t} VALUES (2)",
        f"INSERT INTO {t} VALUES (3); {refused}; INSERT INTO {t} VALUES (4)"])
    batch = (extended(f"INSERT INTO {t} VALUES (5)") + sync_msg() + extended(refused)
             + extended(f"INSERT INTO {t} VALUES (6)") + sync_msg()
             + extended(f"INSERT INTO {t} VALUES (7)") + sync_msg())
    return [exchange(conn, queries, readies=4), exchange(conn, batch, readies=3),
            exchange(conn, query_msg(f"SELECT i FROM {t} ORDER BY i"))]


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_refuse_behind_unanswered_requests_answers_as_postgres_does(start_sluice, pg, table,
                                                                     mode):
    want, got, first, rows = refusal_oracle(start_sluice, pg, table,
                                            prog_pipelined_outside_a_transaction, mode=mode)
    assert got == want
    assert (first.get("C"), first.get("M")) == ("0A000", REFUSAL_M)
    assert [str(r[0]) for r in rows] == [m[1][0] for m in want[-1] if m[0] == "D"]


REFUSED_FEATURES = ["LISTEN ch", "SELECT pg_advisory_lock(42)",
                    "DECLARE cur CURSOR WITH HOLD FOR SELECT 1", "CREATE TEMP TABLE tt (i int)",
                    "SET ROLE app", "PREPARE p AS SELECT 1", "LOAD 'auto_explain'"]


def test_every_refusal_in_a_transaction_is_the_same_error_as_outside_it(start_sluice):
    """Each feature refused inside a transaction block (the server fails it in the statement's
    place) gets the very ErrorResponse sluice gives outside one, then ReadyForQuery 'E'; the
    session goes on after the ROLLBACK."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "session_state_policy": "refuse"})
    c = raw_login(s.port)
    try:
        for sql in REFUSED_FEATURES:
            for how in (query_msg, lambda q: extended(q) + sync_msg()):
                c.send(how(sql))
                outside = c.expect_error()
                assert c.read_message() == ("Z", b"I")
                c.query("BEGIN")
                c.send(how(sql))
                inside = c.expect_error()
                assert c.read_message() == ("Z", b"E"), sql
                assert inside == outside, sql
                assert outside["C"] == "0A000", outside
                assert c.query("ROLLBACK") == ([], ["ROLLBACK"])
        assert c.query("SELECT 1") == ([["1"]], ["SELECT 1"])
    finally:
        c.close()


# ---- LOAD: a shared library stays in its backend for the backend's life ------------------------
#
# No reset undoes a LOAD (DISCARD ALL leaves the library, its hooks and its parameters), so the
# next client of the server ran with it: auto_explain's parameters defined, its plans logged. The
# oracle: a library's parameter is undefined in a fresh Postgres session.

LIBRARY_PARAM = "SELECT current_setting('auto_explain.log_min_duration', true)"


@pytest.fixture
def app_is_superuser(pg):
    """LOAD of a library outside $libdir/plugins takes a superuser: app is one for the test."""
    with superuser_change(pg, "ALTER ROLE app SUPERUSER", "ALTER ROLE app NOSUPERUSER"):
        yield


def test_postgres_keeps_a_loaded_library_for_the_session_only(pg, app_is_superuser):
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as a:
        assert a.execute(LIBRARY_PARAM).fetchone() == (None,)
        a.execute("LOAD 'auto_explain'")
        a.execute("DISCARD ALL")
        assert a.execute(LIBRARY_PARAM).fetchone() == ("-1",), "DISCARD ALL unloaded it"
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as b:
        assert b.execute(LIBRARY_PARAM).fetchone() == (None,)


def load_by_query(conn, sql):
    conn.execute(sql)


def load_in_a_transaction(conn, sql):
    with conn.transaction():
        conn.execute("SELECT 1")
        conn.execute(sql)


def load_after_a_long_text(conn, sql):
    """A Query longer than pkt_buf: the inspector sees its start, the stream watch the rest."""
    with psycopg.ClientCursor(conn) as cur:
        cur.execute(f"SELECT length('{'y' * 40000}'); {sql}")


def load_by_extended_protocol(conn, sql):
    conn.execute(sql, prepare=False)


def load_by_named_statement(conn, sql):
    """Parse of a named statement, then Bind/Execute of it (psycopg's prepare)."""
    conn.execute(sql, prepare=True)


LOADS = [load_by_query, load_in_a_transaction, load_after_a_long_text,
         load_by_extended_protocol, load_by_named_statement]


@pytest.mark.parametrize("policy", ["warn", "pin"])
@pytest.mark.parametrize("load", LOADS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("sql", ["LOAD 'auto_explain'", "/* plans */ load'auto_explain'"])
def test_a_loaded_library_never_reaches_the_next_client(start_sluice, app_is_superuser, policy,
                                                        load, sql):
    """The server a client LOADed a library on is closed when it is released (warn: at the end
    of the transaction; pin: when the client leaves): DISCARD ALL cannot unload it."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "session_state_policy": policy})
    with s.connect() as a:
        load(a, sql)
        # (past a long text's start no policy applies: the server is closed all the same)
        if policy == "pin" and load is not load_after_a_long_text:
            assert a.execute(LIBRARY_PARAM).fetchone() == ("-1",), "the pinned client lost it"
    with s.connect() as b:
        assert b.execute(LIBRARY_PARAM).fetchone() == (None,), f"B runs with A's {sql}"


@pytest.mark.parametrize("sql", ["LISTEN a_channel; LOAD 'auto_explain'",
                                 "SELECT pg_advisory_lock(4247); LOAD 'auto_explain'",
                                 "CREATE TEMP TABLE tt (x int); LOAD 'auto_explain'"])
@pytest.mark.parametrize("load", [load_by_query, load_after_a_long_text],
                         ids=lambda f: f.__name__)
def test_a_load_after_a_feature_a_reset_undoes_still_closes_the_server(start_sluice,
                                                                       app_is_superuser, sql,
                                                                       load):
    """A text's first feature used to speak for the whole text: a LOAD after a LISTEN got the
    LISTEN's reset, and DISCARD ALL left the library in the backend for the next client (past a
    long text's start the stream watch stopped at the LISTEN)."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as a:
        load(a, sql)
    with s.connect() as b:
        assert b.execute(LIBRARY_PARAM).fetchone() == (None,), f"B runs with A's {sql}"


def test_refuse_policy_refuses_load(start_sluice, app_is_superuser):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "session_state_policy": "refuse"})
    with s.connect() as a:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            a.execute("LOAD 'auto_explain'")
        assert "LOAD" in str(e.value)
        assert a.execute(LIBRARY_PARAM).fetchone() == (None,)


def test_a_full_pool_says_its_servers_are_pinned(start_sluice):
    """Under session_state_policy = pin a client that used session state keeps its server until
    it leaves; a client that then waits for that pool past query_wait_timeout is told so, not
    only that the pool is full (before, only sluice's log said the server was pinned)."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "session_state_policy": "pin", "query_wait_timeout": 1})
    with s.connect() as a, s.connect() as b:
        a.execute("LISTEN a_channel")
        with pytest.raises(psycopg.Error) as failed:
            b.execute("SELECT 1")
        assert failed.value.sqlstate == "53300"
        message = failed.value.diag.message_primary
        assert "pool_size = 1 is reached" in message
        assert "session_state_policy = pin keeps a server with a client that used session " \
            "state until it disconnects" in message, message
