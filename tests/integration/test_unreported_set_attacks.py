"""Attacks on the following of a client's SET of parameters Postgres does not report in
transaction mode (docs/pool-modes.md, "SET of parameters Postgres does not report"): no other
client may ever see the values, and the client itself sees what Postgres would show.

Postgres is the oracle: where a program's result is compared, it runs once directly and once
through sluice with a pool of one server that another client takes between the steps."""

import psycopg
import pytest

from conftest import APP_PASSWORD
from pgwire import (PeerClosed, bind_msg, execute_msg, message, parse_msg, query_msg, raw_login,
                    sync_msg, terminate_msg)
from test_unreported_set import transcript

DEFAULTS_SQL = ("SELECT current_setting('search_path'), "
                "current_setting('default_transaction_isolation'), "
                "current_setting('default_transaction_deferrable'), "
                "coalesce(current_setting('app.x', true), '')")


def b_sees_defaults(b):
    got = b.execute(DEFAULTS_SQL).fetchone()
    assert got[:3] == ('"$user", public', "read committed", "off"), got
    assert got[3] == "", got


def one_server(start_sluice, **more):
    return start_sluice({"pool_mode": "transaction", "default_pool_size": 1, **more})


def runs_as_on_postgres(pg, start_sluice, program):
    """program(conn, between) run directly, then through one pooled server with another client
    checking between its steps that it sees the defaults: the client sees the same."""
    direct = raw_login(pg.port, password=APP_PASSWORD)
    try:
        want = program(direct, lambda: None)
    finally:
        direct.close()
    s = one_server(start_sluice)
    with s.connect() as b:
        pooled = raw_login(s.port)
        try:
            got = program(pooled, lambda: b_sees_defaults(b))
        finally:
            pooled.close()
        b_sees_defaults(b)
    assert got == want


def test_session_characteristics_are_followed_and_never_reach_another_client(pg, start_sluice):
    s = one_server(start_sluice)
    with s.connect() as a, s.connect() as b:
        a.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, "
                  "DEFERRABLE")
        b_sees_defaults(b)
        assert a.execute("SELECT current_setting('default_transaction_isolation'), "
                         "current_setting('default_transaction_deferrable')").fetchone() == \
            ("serializable", "on")


@pytest.fixture
def hijack_schema(pg):
    with pg.superuser("appdb") as su:
        su.execute("DROP SCHEMA IF EXISTS h48evil CASCADE")
        su.execute("CREATE SCHEMA h48evil AUTHORIZATION app")
    yield "h48evil"
    with pg.superuser("appdb") as su:
        su.execute("DROP SCHEMA IF EXISTS h48evil CASCADE")


def test_functions_of_the_clients_search_path_do_not_steer_the_read_back(
        pg, start_sluice, hijack_schema):
    """The read back runs in the client's session, under its search_path: a client whose schema
    comes before pg_catalog must not make sluice believe its values are the defaults."""
    s = one_server(start_sluice)
    with s.connect() as a, s.connect() as b:
        a.execute("CREATE FUNCTION h48evil.lower(text) RETURNS text LANGUAGE sql "
                  "AS $$ SELECT 'x' $$")
        a.execute("CREATE FUNCTION h48evil.octet_length(text) RETURNS int LANGUAGE sql "
                  "AS $$ SELECT 1 $$")
        a.execute("CREATE FUNCTION h48evil.textne(text, text) RETURNS bool LANGUAGE sql "
                  "AS $$ SELECT true $$")
        a.execute("CREATE OPERATOR h48evil.<> (LEFTARG = text, RIGHTARG = text, "
                  "FUNCTION = h48evil.textne)")
        a.execute("SET search_path = h48evil, pg_catalog")
        a.execute("SET app.x = 'mine'")
        b_sees_defaults(b)
        assert a.execute("SELECT current_setting('search_path'), "
                         "current_setting('app.x')").fetchone() == ("h48evil, pg_catalog", "mine")


@pytest.mark.parametrize("mode,policy", [("transaction", "warn"), ("statement", "warn"),
                                         ("transaction", "refuse")])
def test_a_set_config_prepared_by_the_driver_is_kept(start_sluice, mode, policy):
    """psycopg prepares a statement run often (prepare_threshold): a set_config with a bound
    value then runs by Bind of a named statement. Followed, it meets no session_state_policy:
    refuse lets its Parse run, warn logs nothing."""
    s = one_server(start_sluice, pool_mode=mode, session_state_policy=policy)
    with s.connect(prepare_threshold=1) as a, s.connect() as b:
        for i in range(4):
            a.execute("SELECT set_config('app.x', %s, false)", [f"v{i}"])
            b_sees_defaults(b)
            assert a.execute("SELECT current_setting('app.x')").fetchone() == (f"v{i}",)
    assert "cannot track" not in s.log_text()


def test_a_long_placeholder_name_never_reaches_another_client(pg, start_sluice):
    """A name of 64 bytes or more is not followed (docs/pool-modes.md): its backend gets a full
    reset before it serves again, so the client finds it unset on its next backend, and no other
    client ever sees it."""
    long = "app.x" + "y" * 70
    s = one_server(start_sluice)
    with s.connect() as a, s.connect() as b:
        a.execute(f"SET {long} = 'v'")
        assert b.execute(f"SELECT current_setting('{long[:67]}', true)").fetchone()[0] in \
            ("", None)
        assert a.execute(f"SELECT current_setting('{long[:67]}', true)").fetchone()[0] in \
            ("", None)


@pytest.mark.parametrize("leave", ["terminate", "close", "reset"])
def test_a_client_leaving_right_after_its_set_leaves_nothing(start_sluice, leave):
    s = one_server(start_sluice)
    with s.connect() as b:
        for i in range(5):
            a = raw_login(s.port)
            a.send(query_msg("SET app.x = 'leak'; SET search_path = leak") +
                   parse_msg("", "SELECT set_config('default_transaction_isolation', "
                             "'serializable', false)") + bind_msg("", "") + execute_msg() +
                   sync_msg() + (terminate_msg() if leave == "terminate" else b""))
            if leave == "reset":
                a.close_abruptly(reset=True)
            else:
                a.close()
            b_sees_defaults(b)


def test_session_mode_sends_no_read_back(start_sluice):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1, "log_level": "debug"})
    with s.connect() as a:
        a.execute("SET app.x = 'v'")
        a.execute("SET search_path = x")
        assert a.execute("SELECT current_setting('app.x')").fetchone() == ("v",)
    assert not [ln for ln in s.log_text().splitlines() if "values the client SET" in ln]


# Placeholders whose first part is a word of SET's own grammar (SET LOCAL, SET SESSION, SET TIME
# ZONE, SET NAMES, SET SCHEMA, SET ROLE, SET TRANSACTION, SET XML OPTION, ...).
KEYWORD_NAMES = ["local.x", "session.x", "time.x", "names.x", "schema.x", "role.x",
                 "transaction.x", "xml.x", "characteristics.x", "authorization.x", "zone.x",
                 "option.x"]


@pytest.mark.parametrize("name", KEYWORD_NAMES)
def test_a_placeholder_named_like_a_set_keyword(pg, start_sluice, name):
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as d:
        try:
            d.execute(f"SET {name} = 'v'")
            want = d.execute(f"SELECT current_setting('{name}', true)").fetchone()
        except psycopg.Error as e:
            want = e.sqlstate
    s = one_server(start_sluice)
    with s.connect() as a, s.connect() as b:
        try:
            a.execute(f"SET {name} = 'v'")
        except psycopg.Error as e:
            assert e.sqlstate == want
            return
        assert b.execute(f"SELECT current_setting('{name}', true)").fetchone()[0] in ("", None)
        assert a.execute(f"SELECT current_setting('{name}', true)").fetchone() == want


# '$' may follow an identifier's first character; sluice's own blocks are tagged $sluice$
ODD_NAMES = ["app.x$y", "app.a$sluice$", "app.b$sluice$x$sluice1$", "app.é", "app.x2é", "app._x",
             "app.x_$", "app." + "z" * 59]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_a_placeholder_with_odd_characters(pg, start_sluice, name):
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as d:
        try:
            d.execute(f"SET {name} = 'v'")
            want = d.execute(f"SELECT current_setting('{name}', true)").fetchone()
        except psycopg.Error as e:
            want = e.sqlstate
    s = one_server(start_sluice)
    with s.connect() as a, s.connect() as b:
        try:
            a.execute(f"SET {name} = 'v'")
        except psycopg.Error as e:
            assert e.sqlstate == want
            return
        assert b.execute(f"SELECT current_setting('{name}', true)").fetchone()[0] in ("", None)
        got = a.execute(f"SELECT current_setting('{name}', true)").fetchone()
        if name.isascii():
            assert got == want
        else:
            # a non-ASCII name is not followed (its bytes are in the client's encoding): its
            # backend gets a full reset, and the client its default
            assert got[0] in ("", None)


def message_flush():
    return message("H")


PROBE = "SELECT coalesce(current_setting('app.x', true), ''), current_setting('search_path')"
EXT_PROBE = parse_msg("", PROBE) + bind_msg("", "") + execute_msg() + sync_msg()

RAW_ATTACKS = {
    "100 batches pipelined behind a SET":
        [(query_msg("SET app.x = 'p'") + EXT_PROBE * 100, 101)],
    "Sync-only batches after a SET":
        [(query_msg("SET app.x = 's'") + sync_msg() * 3 + EXT_PROBE, 5)],
    "a batch ending in Flush, then Sync":
        [(parse_msg("", "SET search_path = f1, f2") + bind_msg("", "") + execute_msg() +
          message_flush(), None), (sync_msg() + EXT_PROBE, 2)],
    "COPY after a SET in one Query":
        [(query_msg("SET app.x = 'c'; COPY (SELECT current_setting('app.x')) TO STDOUT"), 1),
         (query_msg(PROBE), 1)],
    "SET then an error in one batch":
        [(parse_msg("", "SET app.x = 'b'") + bind_msg("", "") + execute_msg() +
          parse_msg("", "SELECT 1/0") + bind_msg("", "") + execute_msg() + sync_msg() +
          EXT_PROBE, 2)],
    "SET in a failed block then ROLLBACK":
        [(query_msg("BEGIN") + query_msg("SET app.x = 'f'") + query_msg("SELECT 1/0") +
          query_msg("SET app.x = 'g'") + query_msg("ROLLBACK") + query_msg(PROBE), 6)],
    "SET, savepoint, SET, rollback to savepoint, COMMIT":
        [(query_msg("BEGIN; SET app.x = 'one'; SAVEPOINT s; SET app.x = 'two'; "
                    "ROLLBACK TO SAVEPOINT s; COMMIT") + query_msg(PROBE), 2)],
    "SET TIME ZONE and DateStyle beside an unreported SET":
        [(query_msg("SET TIME ZONE 'Europe/Paris'; SET app.x = 'tz'; SET datestyle = 'German'"),
          1), (query_msg("SHOW TimeZone") + query_msg("SHOW DateStyle"), 2)],
    "SET SESSION CHARACTERISTICS, SET XML OPTION":
        [(query_msg("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ,"
                    " READ ONLY") + query_msg("SET XML OPTION DOCUMENT"), 2),
         (query_msg("SELECT current_setting('default_transaction_isolation'), "
                    "current_setting('default_transaction_read_only'), "
                    "current_setting('xmloption')"), 1)],
    "set_config with a NULL bound value":
        [(query_msg("SET search_path = n1") + parse_msg("", "SELECT set_config('search_path', "
                                                        "$1, false)") +
          bind_msg("", "", [None]) + execute_msg() + sync_msg() + EXT_PROBE, 3)],
}


@pytest.mark.parametrize("what", list(RAW_ATTACKS))
def test_raw_requests_around_a_set_see_what_postgres_shows(pg, start_sluice, what):

    def program(conn, between):
        seen = []
        for data, ready in RAW_ATTACKS[what]:
            if ready is None:
                conn.send(data)
                seen.append(conn.read_message())  # ParseComplete
                seen.append(conn.read_message())  # BindComplete
                seen.append(conn.read_message())  # CommandComplete
                continue
            seen.append(transcript(conn, data, ready))
            between()
        seen.append(transcript(conn, query_msg(PROBE), 1))
        return seen

    runs_as_on_postgres(pg, start_sluice, program)


def test_a_named_statement_that_sets_is_followed_at_each_bind_and_execute(pg, start_sluice):
    """A SET prepared under a name runs at each Bind (or SQL EXECUTE of the name), in later
    transactions: each run is read back as a Query's SET is, and never reaches another client."""

    def program(conn, between):
        seen = [transcript(conn, parse_msg("s1", "SET search_path = named, public") +
                           parse_msg("s2", "SELECT set_config('app.x', $1, false)") +
                           sync_msg(), 1)]
        between()
        for i in range(3):
            seen.append(transcript(conn, bind_msg("", "s2", [f"n{i}"]) + execute_msg() +
                                   sync_msg(), 1))
            between()
            seen.append(transcript(conn, query_msg(PROBE), 1))
        seen.append(transcript(conn, bind_msg("", "s1") + execute_msg() + sync_msg(), 1))
        between()
        seen.append(transcript(conn, query_msg("EXECUTE s2('sql')"), 1))
        between()
        seen.append(transcript(conn, query_msg(PROBE), 1))
        return seen

    runs_as_on_postgres(pg, start_sluice, program)


# A parameter the client may not read (GUC_SUPERUSER_ONLY: current_setting raises 42501 for it
# even with missing_ok) that it tried to SET (55P02): the read back of the transaction's names
# must not fail on it and lose what the transaction kept.
UNREADABLE = [
    ("BEGIN", None), ("SAVEPOINT s", None), ("SET data_directory = '/x'", "fails"),
    ("ROLLBACK TO SAVEPOINT s", None), ("SET app.x = 'kept'", None),
    ("SET search_path = kept", None), ("COMMIT", None),
]


def test_a_parameter_the_client_may_not_read_does_not_break_the_read_back(pg, start_sluice):
    def program(conn, between):
        seen = []
        for sql, _ in UNREADABLE:
            try:
                conn.execute(sql)
                seen.append(None)
            except psycopg.Error as e:
                seen.append((e.sqlstate, str(e)))
        between()
        seen.append(conn.execute(PROBE).fetchone())
        seen.append(conn.info.transaction_status)
        return seen

    with psycopg.connect(pg.direct_dsn(), autocommit=True) as d:
        want = program(d, lambda: None)
    s = one_server(start_sluice)
    with s.connect() as a, s.connect() as b:
        got = program(a, lambda: b_sees_defaults(b))
        b_sees_defaults(b)
    assert got == want


def send_cancel(port, key):
    from pgwire import RawConn, cancel_request
    r = RawConn(port)
    try:
        r.send(cancel_request(*key))
        r.is_closed(timeout=10)
    finally:
        r.close()


@pytest.mark.timeout(180)
def test_a_cancel_racing_the_read_back_loses_no_value_the_client_saw_set(start_sluice):
    """A CancelRequest sent right after a SET: on Postgres it cancels the SET (57014, the value
    is not set) or lands on an idle backend and does nothing (the value is set). Through sluice
    it may land on the read back instead: the client was told SET, so it must keep the value."""
    import threading
    s = one_server(start_sluice, log_level="debug")
    with s.connect() as b:
        a = raw_login(s.port)
        try:
            have = ""
            for i in range(40):
                t = threading.Thread(target=send_cancel, args=(s.port, a.backend_key))
                a.send(query_msg(f"SET app.x = 'c{i}'"))
                t.start()
                out = transcript(a, b"", 1)
                t.join(30)
                if not any(m == "E" for m, _ in out):
                    have = f"c{i}"
                b_sees_defaults(b)
                got = transcript(
                    a, query_msg("SELECT coalesce(current_setting('app.x', true), '')"), 1)
                rows = [p for m, p in got if m == "D"]
                assert rows and rows[0][6:].decode() == have, (i, got)
        finally:
            a.close()


def test_the_unnamed_statement_bound_again_in_a_later_request(pg, start_sluice):
    """The unnamed statement lives until the next Parse of it: a SET Parsed in one request and
    bound in the next ones runs in each (libpq's PQprepare with "", then PQexecPrepared)."""

    def program(conn, between):
        seen = [transcript(conn, parse_msg("", "SET app.x = 'unnamed'") + sync_msg(), 1)]
        between()
        seen.append(transcript(conn, query_msg(PROBE), 1))
        seen.append(transcript(conn, bind_msg("", "") + execute_msg() + sync_msg(), 1))
        between()
        seen.append(transcript(conn, query_msg(PROBE), 1))
        return seen

    direct = raw_login(pg.port, password=APP_PASSWORD)
    try:
        want = program(direct, lambda: None)
    finally:
        direct.close()
    s = one_server(start_sluice)
    with s.connect() as b:
        pooled = raw_login(s.port)
        try:
            # no other client between the Parse and its Bind: the backend keeps the statement
            got = [transcript(pooled, parse_msg("", "SET app.x = 'unnamed'") + sync_msg(), 1),
                   transcript(pooled, query_msg(PROBE), 1),
                   transcript(pooled, bind_msg("", "") + execute_msg() + sync_msg(), 1)]
            b_sees_defaults(b)
            got.append(transcript(pooled, query_msg(PROBE), 1))
        finally:
            pooled.close()
        b_sees_defaults(b)
    assert got == want


@pytest.mark.timeout(180)
@pytest.mark.parametrize("command", ["RECONNECT appdb", "KILL_CLIENT", "RELOAD"])
def test_admin_commands_racing_the_read_back_leak_nothing(start_sluice, command):
    """RECONNECT, RELOAD and KILL_CLIENT of the client while its SET is read back: the client
    either goes on with what it was told, or is gone; no other client sees its values."""
    import threading
    from test_admin import CONSOLE_MAIN, console, show
    s = start_sluice({**CONSOLE_MAIN, "default_pool_size": 1})
    with s.connect() as b, console(s) as adm:
        for i in range(15):
            a = raw_login(s.port)
            try:
                cmd = command
                if command == "KILL_CLIENT":
                    mine = [r for r in show(adm, "CLIENTS") if r["database"] == "appdb"]
                    cmd = f"KILL_CLIENT {max(r['id'] for r in mine)}"
                t = threading.Thread(target=adm.execute, args=(cmd,))
                a.send(query_msg(f"SET app.x = 'k{i}'; SET search_path = k{i}"))
                t.start()
                try:
                    out = transcript(a, b"", 1)
                except Exception:  # killed: gone
                    out = None
                t.join(30)
                b_sees_defaults(b)
                if out is not None and not any(m == "E" for m, _ in out):
                    try:
                        got = transcript(a, query_msg(PROBE), 1)
                    except PeerClosed:
                        assert command == "KILL_CLIENT"
                        continue
                    rows = [p for m, p in got if m == "D"]
                    assert rows and f"k{i}" in rows[0].decode(), got
            finally:
                a.close()
            b_sees_defaults(b)


@pytest.mark.parametrize("reset", ["RESET ALL", "RESET app.x", "SET app.x TO DEFAULT"])
def test_a_reset_prepared_by_the_driver_is_followed(pg, start_sluice, reset):
    """psycopg prepares any statement it runs often, a RESET too: at each run the client's
    values are back at their defaults, as on Postgres."""
    def program(conn, between):
        seen = []
        for i in range(3):
            conn.execute(f"SET app.x = 'r{i}'")
            between()
            seen.append(conn.execute(PROBE).fetchone())
            conn.execute(reset)
            between()
            seen.append(conn.execute(PROBE).fetchone())
        return seen

    with psycopg.connect(pg.direct_dsn(), autocommit=True, prepare_threshold=0) as d:
        want = program(d, lambda: None)
    s = one_server(start_sluice)
    with s.connect(prepare_threshold=0) as a, s.connect() as b:
        got = program(a, lambda: b_sees_defaults(b))
    assert got == want


@pytest.mark.parametrize("tail", ["SET app.x = 'leak'", "SELECT set_config('app.x', 'leak', false)",
                                  "SET search_path = leak", "-- a comment\nSET app.x = 'leak'",
                                  "/* a comment */ SET app.x = 'leak'",
                                  "DO $$BEGIN EXECUTE 'SET search_path = leak'; END$$",
                                  "do $$BEGIN EXECUTE 'SET search_path = leak'; END$$"])
def test_a_set_at_the_end_of_a_text_longer_than_the_buffer_never_reaches_another_client(
        start_sluice, tail):
    """A Query longer than pkt_buf streams through: only its start is looked at. A SET at its
    end must still never reach another client."""
    s = one_server(start_sluice)
    with s.connect() as a, s.connect() as b:
        with psycopg.ClientCursor(a) as cur:
            cur.execute(f"SELECT length('{'y' * 40000}'); {tail}")
        b_sees_defaults(b)


def test_a_set_config_at_the_end_of_a_long_named_statement_never_reaches_another_client(
        start_sluice):
    """A named Parse longer than pkt_buf streams through; its Bind, in later transactions, runs
    the set_config at the end of its text again."""
    s = one_server(start_sluice)
    with s.connect() as b:
        a = raw_login(s.port)
        try:
            text = (f"SELECT length('{'y' * 40000}'), "
                    "set_config('app.x', 'leak' || $1::text, false)")
            transcript(a, parse_msg("long", text) + sync_msg(), 1)
            b_sees_defaults(b)
            for i in range(3):
                out = transcript(a, bind_msg("", "long", [str(i)]) + execute_msg() + sync_msg(), 1)
                assert not any(m == "E" for m, _ in out), out
                b_sees_defaults(b)
        finally:
            a.close()


@pytest.mark.parametrize("encoding", ["LATIN1", "UTF8"])
def test_a_non_ascii_value_in_the_clients_encoding(pg, start_sluice, encoding):
    """The value read back is in the client's client_encoding; its next backend must be given
    it in that encoding too."""
    def program(conn, between):
        conn.execute("SET app.x = 'café'")
        conn.execute("SET search_path = 'schéma', public")
        between()
        return conn.execute(PROBE).fetchone()

    with psycopg.connect(pg.direct_dsn(client_encoding=encoding), autocommit=True) as d:
        want = program(d, lambda: None)
    s = one_server(start_sluice)
    with s.connect(client_encoding=encoding) as a, s.connect() as b:
        got = program(a, lambda: b_sees_defaults(b))
    assert got == want


@pytest.fixture
def two_tables(pg):
    with pg.superuser("appdb") as su:
        su.execute("DROP SCHEMA IF EXISTS h48s CASCADE")
        su.execute("CREATE SCHEMA h48s AUTHORIZATION app")
        su.execute("DROP TABLE IF EXISTS public.h48t")
        su.execute("CREATE TABLE public.h48t AS SELECT 'public'::text AS v")
        su.execute("CREATE TABLE h48s.h48t AS SELECT 'schema'::text AS v")
        su.execute("GRANT SELECT ON public.h48t, h48s.h48t TO app")
    yield
    with pg.superuser("appdb") as su:
        su.execute("DROP SCHEMA IF EXISTS h48s CASCADE")
        su.execute("DROP TABLE IF EXISTS public.h48t")


def test_a_statement_prepared_again_on_a_fresh_backend_sees_the_clients_search_path(
        start_sluice, two_tables):
    """sluice prepares a client's statement again on a backend that lacks it: after giving that
    backend the client's search_path, so its table names resolve as where it was first made."""
    from test_admin import CONSOLE_MAIN, console
    s = start_sluice({**CONSOLE_MAIN, "default_pool_size": 1})
    with s.connect(prepare_threshold=0) as a, console(s) as adm:
        a.execute("SET search_path = h48s, public")
        assert a.execute("SELECT v, pg_backend_pid() FROM h48t").fetchone()[0] == "schema"
        first = a.execute("SELECT v, pg_backend_pid() FROM h48t").fetchone()[1]
        adm.execute("RECONNECT appdb")
        v, pid = a.execute("SELECT v, pg_backend_pid() FROM h48t").fetchone()
        assert pid != first, "RECONNECT closes the idle backend"
        assert v == "schema"


@pytest.mark.timeout(180)
def test_another_clients_short_statement_timeout_never_cancels_the_reset(start_sluice):
    """The RESET of a client's statement_timeout runs on the backend under that very value: a
    1 ms one must not make the RESET fail and leave it to the next client."""
    from test_admin import CONSOLE_MAIN, console
    s = start_sluice({**CONSOLE_MAIN, "default_pool_size": 1})
    with console(s) as adm, s.connect() as b:
        for i in range(8):
            adm.execute("RECONNECT appdb")  # a fresh backend: PL/pgSQL not loaded yet
            with s.connect() as a:
                a.execute("SET app.x = 'a'; SET search_path = a")
                a.execute("SET statement_timeout = '1ms'")
            b.execute("SELECT pg_sleep(0.01)")
            assert b.execute("SELECT current_setting('statement_timeout')").fetchone() == ("0",)


@pytest.fixture
def copy_table(pg):
    with pg.superuser("appdb") as su:
        su.execute("CREATE TABLE IF NOT EXISTS h48c (v text)")
        su.execute("GRANT INSERT ON h48c TO app")
    yield
    with pg.superuser("appdb") as su:
        su.execute("DROP TABLE IF EXISTS h48c")


def test_copy_from_stdin_after_a_set_in_one_query(pg, start_sluice, copy_table):
    """The ReadyForQuery that ends a Query holding a SET and a COPY comes after the copy."""
    from pgwire import copy_data_msg, copy_done_msg

    def program(conn, between):
        seen = transcript(conn, query_msg("SET app.x = 'copy'; COPY h48c FROM STDIN"), 0)
        while not seen or seen[-1][0] not in "GZ":
            seen.append(conn.read_message())
        seen.extend(transcript(conn, copy_data_msg(b"r\n") + copy_done_msg(), 1))
        between()
        seen.extend(transcript(conn, query_msg(PROBE), 1))
        return seen

    runs_as_on_postgres(pg, start_sluice, program)


def test_a_connection_setup_query_with_many_sets_is_followed(pg, start_sluice):
    """Applications set up a session with several SETs in one Query."""
    setup = ("SET search_path = setup, public; SET statement_timeout = '30s'; "
             "SET lock_timeout = '5s'; SET work_mem = '16MB'; SET app.x = 'setup'; "
             "SET idle_in_transaction_session_timeout = '1min'; SET app.y = 'y'; "
             "SET default_transaction_isolation = 'repeatable read'")
    probe = ("SELECT current_setting('search_path'), current_setting('statement_timeout'), "
             "current_setting('lock_timeout'), current_setting('work_mem'), "
             "current_setting('app.x'), current_setting('idle_in_transaction_session_timeout'), "
             "current_setting('app.y'), current_setting('default_transaction_isolation')")

    def program(conn, between):
        with psycopg.ClientCursor(conn) as cur:
            cur.execute(setup)
        between()
        return conn.execute(probe).fetchone()

    with psycopg.connect(pg.direct_dsn(), autocommit=True) as d:
        want = program(d, lambda: None)
    s = one_server(start_sluice)
    with s.connect() as a, s.connect() as b:
        got = program(a, lambda: b_sees_defaults(b))
        b_sees_defaults(b)
    assert got == want
    assert "cannot track" not in s.log_text()


@pytest.mark.parametrize("encoding", ["SJIS", "BIG5", "GBK"])
def test_a_value_in_a_client_encoding_with_backslash_trail_bytes_stays_one_value(
        pg, start_sluice, encoding):
    """In SJIS, BIG5 and GBK the byte of a backslash can end a character ('ソ' is 0x83 0x5C in
    SJIS): sluice must give the value back whole, never let it end the literal and run the rest
    of it as SQL that sets what sluice does not see."""
    ch = {"SJIS": "ソ", "BIG5": "許", "GBK": "乗"}[encoding]
    assert ch.encode({"SJIS": "shift_jis", "BIG5": "big5", "GBK": "gbk"}[encoding])[-1:] == b"\\"
    value = (ch + "', false); SELECT pg_catalog.set_config($a$app.y$a$, $a$evil$a$, false); "
             "SELECT pg_catalog.set_config($a$search_path$a$, $a$evil$a$, false); --")
    s = one_server(start_sluice)
    with s.connect(client_encoding=encoding) as a, s.connect() as b:
        a.execute("SELECT set_config('app.x', %s, false)", [value])
        b_sees_defaults(b)
        assert a.execute("SELECT current_setting('app.x')").fetchone() == (value,)
        assert b.execute("SELECT coalesce(current_setting('app.y', true), '')").fetchone() == ("",)
        b_sees_defaults(b)
        assert a.execute("SELECT current_setting('search_path')").fetchone() == ('"$user", public',)


def test_prepared_set_configs_in_a_psycopg_pipeline(pg, start_sluice):
    def program(conn, between):
        seen = []
        for i in range(3):
            with conn.pipeline():
                conn.execute("SELECT set_config('app.x', %s, false)", [f"p{i}"])
                c = conn.execute("SELECT current_setting('app.x')")
                conn.execute("SELECT set_config('search_path', %s, false)", [f"s{i}, public"])
            seen.append(c.fetchone())
            between()
            seen.append(conn.execute(PROBE).fetchone())
        return seen

    with psycopg.connect(pg.direct_dsn(), autocommit=True, prepare_threshold=0) as d:
        want = program(d, lambda: None)
    s = one_server(start_sluice)
    with s.connect(prepare_threshold=0) as a, s.connect() as b:
        got = program(a, lambda: b_sees_defaults(b))
    assert got == want


HIDING_TEXTS = [
    "-- don't forget the schema\nSET search_path = leak",
    "SELECT 1; -- it's the tenant's\nSET app.x = 'leak'",
    "SELECT $$it's$$; SET search_path = leak",
    "SELECT $body$ it's $body$; SET app.x = 'leak'",
    "SELECT E'\\''; SET search_path = leak",
    "SELECT E'\\\\'; SET app.x = 'leak'",
    "SELECT 1 /* a /* nested ' */ comment */; SET search_path = leak",
    "SELECT \"it's\" FROM (SELECT 1 AS \"it's\") t; SET app.x = 'leak'",
    "SELECT 'a''b'; SET search_path = leak",
]


@pytest.mark.parametrize("text", HIDING_TEXTS)
def test_a_set_after_a_quote_in_a_comment_or_literal_never_reaches_another_client(
        pg, start_sluice, text):
    """sluice splits a Query's text into statements to find its SETs. An apostrophe in a
    comment ("-- don't"), a quote inside a dollar-quoted function body, an escaped quote in an
    E'' literal or a nested comment made it read a literal running to the end of the text: the
    SET after it went unseen, stayed on the pooled server, and the next client of that server
    ran in the first one's search_path. Postgres's lexer is the oracle: the client sees what it
    set, no other client ever does."""

    def program(conn, between):
        conn.query(text)
        between()
        rows, _ = conn.query("SELECT current_setting('search_path'), "
                             "coalesce(current_setting('app.x', true), '')")
        return rows

    runs_as_on_postgres(pg, start_sluice, program)


@pytest.mark.parametrize("text", ["SELECT '\\''; SET search_path = leak",
                                  "SELECT 'a\\'; SET search_path = leak; SELECT ''"])
def test_a_text_that_splits_by_standard_conforming_strings_never_reaches_another_client(
        start_sluice, text):
    """With standard_conforming_strings off (a client may set it) a backslash in a plain
    literal escapes, and the statements split elsewhere than with it on. Whichever the client
    chose, what such a text may have set never reaches another client."""
    s = one_server(start_sluice)
    for scs in ("off", "on"):
        with s.connect() as a, s.connect() as b:
            a.execute(f"SET standard_conforming_strings = {scs}")
            try:
                with psycopg.ClientCursor(a) as cur:
                    cur.execute(text)
            except psycopg.errors.SyntaxError:
                pass  # the text is not SQL under this setting: it ran nothing
            b_sees_defaults(b)


@pytest.mark.parametrize("encoding", ["SJIS", "BIG5", "GBK"])
def test_a_set_after_a_character_ending_in_a_backslash_byte_never_reaches_another_client(
        start_sluice, encoding):
    """In SJIS, BIG5 and GBK a character's second byte may be 0x5C, a backslash. Postgres lexes
    the text once it is in the server's encoding, where that byte escapes nothing: E'ソ' ends
    at its quote and the SET after it runs. Read byte by byte, the 0x5C escaped the quote and
    the SET seemed inside the literal: it went unseen and stayed on the pooled server."""
    char = {"SJIS": "ソ", "BIG5": "許", "GBK": "乗"}[encoding]
    assert char.encode(encoding)[-1:] == b"\\"
    s = one_server(start_sluice)
    with s.connect() as a, s.connect() as b:
        a.execute(f"SET client_encoding = {encoding}")
        with psycopg.ClientCursor(a) as cur:
            cur.execute(f"SELECT E'{char}'; SET search_path = leak")
        b_sees_defaults(b)


@pytest.mark.parametrize("sql", [
    "SELECT set_config('app.x', E'\\'', false)",
    "SELECT set_config('app.x', E'\\', true) x', false)",
    "SELECT set_config('app.x', $$', true)$$, false)",
    "SELECT set_config('app.x', 'a' /* , true) */, false)",
    "SELECT set_config('app.x', 'a' -- , true)\n, false)",
    "SELECT set_config('search_path', 'leak', (SELECT false))",
])
def test_a_session_set_config_whose_arguments_hide_a_true_never_reaches_another_client(
        start_sluice, sql):
    """set_config's third argument says whether the value ends with the transaction. Its
    arguments were split at ',' and ')' outside '...' and "..." only: a "', true)" inside an
    E'' literal with an escaped quote, a dollar quote or a comment read as a local set_config,
    which was not followed, and the session-wide value stayed on the server."""
    s = one_server(start_sluice)
    with s.connect() as a, s.connect() as b:
        with psycopg.ClientCursor(a) as cur:
            cur.execute(sql)
        b_sees_defaults(b)


@pytest.mark.parametrize("encoding,char", [("SJIS", "ソ"), ("BIG5", "許"), ("LATIN1", "é"),
                                           ("EUC_JP", "ソ")])
def test_a_value_in_a_client_encoding_whose_characters_end_in_a_backslash_byte_is_followed(
        start_sluice, encoding, char):
    """In SJIS 'ソ' is 0x83 0x5C: byte by byte, and with standard_conforming_strings off, its
    second byte would escape the closing quote. sluice reads the client's text in its own
    client_encoding and standard_conforming_strings: the SET is followed, on every server the
    client gets, as in Postgres (not taken for a text it cannot read)."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2})
    with s.connect() as a, s.connect() as b:
        a.execute(f"SET client_encoding = {encoding}")
        with psycopg.ClientCursor(a) as cur:
            cur.execute(f"SET app.x = '{char}'; SET search_path = '{char}', public")
        want = (char, f'"{char}", public')
        seen = []
        for i in range(4):
            if i % 2:
                seen.append(a.execute("SELECT current_setting('app.x'), "
                                      "current_setting('search_path')").fetchone())
                continue
            with b.transaction():  # a's next transaction runs on the other server
                b.execute("SELECT 1")
                seen.append(a.execute("SELECT current_setting('app.x'), "
                                      "current_setting('search_path')").fetchone())
        assert seen == [want] * 4
        b_sees_defaults(b)


@pytest.mark.parametrize("value", ["C:\\", "C:\\temp\\", "\\"])
def test_a_value_that_ends_in_a_backslash_is_followed(start_sluice, value):
    """Under standard_conforming_strings on (the client's, and Postgres's default) 'C:\\' is a
    literal that ends at its quote. Read with the setting off it would run on to the end of the
    text, where Postgres would refuse the whole text: that reading runs nothing and must not
    make the SET unreadable (it was: not followed, a warning logged, the value lost on the
    client's next server)."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2})
    with s.connect() as a, s.connect() as b:
        mark = s.mark()
        with psycopg.ClientCursor(a) as cur:
            cur.execute(f"SET app.x = '{value}'")
        with b.transaction():  # a's next transaction runs on the other server
            b.execute("SELECT 1")
            assert a.execute("SELECT current_setting('app.x')").fetchone() == (value,)
        assert "cannot track" not in s.log_since(mark)
        b_sees_defaults(b)
