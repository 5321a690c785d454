"""Names of protocol-level prepared statements in transaction mode (issue 17, docs/pool-modes.md).

Clients share backends, so sluice gives each statement a server-side name of its own
(sluice_...) and keeps the client's names in the client's map: a SQL EXECUTE or DEALLOCATE
names what the client itself prepared, as it would talking to Postgres directly, never another
client's statement on the same backend. Session mode passes names through unchanged."""

import pytest

from pgwire import (ServerError, bind_msg, close_msg, describe_msg, execute_msg, parse_data_row,
                    parse_fields, parse_msg, raw_login, sync_msg)
from test_prepared_oracle import batch, q


def run_batch(c, data):
    """Send an extended-protocol batch ending in Sync: (message types, rows, error fields)."""
    c.send(data)
    seen, rows, error = [], [], None
    while True:
        mtype, payload = c.read_message()
        seen.append(mtype)
        if mtype == "D":
            rows.append(parse_data_row(payload))
        elif mtype == "E":
            error = parse_fields(payload)
        elif mtype == "Z":
            return seen, rows, error


def bind_run(c, name, params=()):
    return run_batch(c, bind_msg("", name, params) + execute_msg() + sync_msg())


def sqlstate_of(c, sql):
    try:
        c.query(sql)
    except ServerError as e:
        return e.sqlstate
    return None


@pytest.fixture
def one_backend(start_sluice):
    """Transaction mode, one backend shared by clients a and b; a has prepared stmt1 by Parse."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    a, b = raw_login(s.port), raw_login(s.port)
    seen, _, error = run_batch(a, parse_msg("stmt1", "SELECT 'A-secret'::text") + sync_msg())
    assert error is None and seen == ["1", "Z"], (seen, error)
    yield s, a, b
    a.close()
    b.close()


def test_execute_of_another_clients_statement_name_finds_nothing(one_backend):
    _, a, b = one_backend
    assert sqlstate_of(b, "EXECUTE stmt1") == "26000"
    assert bind_run(a, "stmt1")[1] == [["A-secret"]]


def test_deallocate_of_another_clients_statement_name_leaves_it_alone(one_backend):
    _, a, b = one_backend
    assert sqlstate_of(b, "DEALLOCATE stmt1") == "26000"
    seen, rows, error = bind_run(a, "stmt1")
    assert error is None and rows == [["A-secret"]], (seen, error)


def test_another_client_may_prepare_the_same_name_with_its_own_text(one_backend):
    _, a, b = one_backend
    seen, _, error = run_batch(b, parse_msg("stmt1", "SELECT 'B-own'::text") + sync_msg())
    assert error is None, error
    assert bind_run(b, "stmt1")[1] == [["B-own"]]
    assert bind_run(a, "stmt1")[1] == [["A-secret"]]
    assert sqlstate_of(b, "PREPARE stmt2 AS SELECT 1") is None  # SQL PREPARE: the backend's
    assert sqlstate_of(b, "DEALLOCATE stmt2") == "26000"  # ended with its transaction


def test_a_client_deallocates_and_executes_its_own_statement_by_sql(one_backend):
    _, a, b = one_backend
    assert bind_run(b, "stmt1")[2]["C"] == "26000"
    assert a.query("EXECUTE stmt1") == ([["A-secret"]], ["SELECT 1"])
    assert a.query("DEALLOCATE stmt1") == ([], ["DEALLOCATE"])
    assert bind_run(a, "stmt1")[2]["C"] == "26000"
    # and again through the extended protocol (psycopg evicts so)
    run_batch(a, parse_msg("stmt1", "SELECT 'again'::text") + sync_msg())
    seen, _, error = run_batch(a, parse_msg("", "DEALLOCATE stmt1") + bind_msg("", "")
                               + execute_msg() + sync_msg())
    assert error is None and "C" in seen, (seen, error)
    assert bind_run(a, "stmt1")[2]["C"] == "26000"


def test_describe_and_close_use_the_clients_name(one_backend):
    _, a, b = one_backend
    seen, _, error = run_batch(a, describe_msg("S", "stmt1") + close_msg("S", "stmt1")
                               + sync_msg())
    assert error is None and seen == ["t", "T", "3", "Z"], (seen, error)
    assert bind_run(a, "stmt1")[2]["C"] == "26000"
    # a Parse of a name the client has: 42P05, as Postgres says it (the client's name)
    run_batch(a, parse_msg("stmt1", "SELECT $1::int") + sync_msg())
    error = run_batch(a, parse_msg("stmt1", "SELECT 2") + sync_msg())[2]
    assert (error["C"], error["M"]) == ("42P05", 'prepared statement "stmt1" already exists')
    error = bind_run(a, "stmt1")[2]
    assert error["M"] == ('bind message supplies 0 parameters, but prepared statement "stmt1"'
                          ' requires 1'), error


def test_a_failed_parse_pipelined_with_its_bind_names_the_clients_statement(one_backend):
    """The Bind is framed before the Parse's error comes back, so it goes out under sluice's name;
    the 26000 it gets must still name the client's statement (difftest seeds 101, 102, 132)."""
    _, a, _ = one_backend
    a.send(parse_msg("s0_1", "SELECT * FROM no_such_table_h6") + describe_msg("S", "s0_1")
           + sync_msg() + bind_msg("", "s0_1") + execute_msg() + sync_msg())
    errors = []
    for _ in range(2):
        while True:
            mtype, payload = a.read_message()
            if mtype == "E":
                errors.append(parse_fields(payload))
            if mtype == "Z":
                break
    assert [e["C"] for e in errors] == ["42P01", "26000"], errors
    assert errors[1]["M"] == 'prepared statement "s0_1" does not exist'


def test_large_named_parse_and_bind_are_renamed_as_they_stream(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    a, b = raw_login(s.port), raw_login(s.port)
    try:
        pad = "x" * (200 * 1024)
        sql = f"SELECT length($1::text) + length('{pad}')"
        seen, _, error = run_batch(a, parse_msg("big", sql) + sync_msg())
        assert error is None, error
        for _ in range(2):
            seen, rows, error = bind_run(a, "big", ["y" * (300 * 1024)])
            assert error is None and rows == [[str(300 * 1024 + 200 * 1024)]], (seen, error)
        assert sqlstate_of(b, "EXECUTE big('z')") == "26000"
    finally:
        a.close()
        b.close()


def test_session_mode_keeps_the_clients_names(start_sluice):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    a = raw_login(s.port)
    try:
        run_batch(a, parse_msg("stmt1", "SELECT 'mine'::text") + sync_msg())
        assert a.query("SELECT name FROM pg_prepared_statements")[0] == [["stmt1"]]
        assert a.query("EXECUTE stmt1")[0] == [["mine"]]
    finally:
        a.close()


@pytest.mark.parametrize("sql", ["EXECUTE gone", "DEALLOCATE gone"])
def test_a_statement_that_no_longer_parses_does_not_stall_the_query_naming_it(start_sluice, table,
                                                                              sql):
    """sluice prepares the client's statement again before a Query that names it by SQL; when
    that Parse fails (its table was dropped), the server must not skip the Query waiting for a
    Sync that never comes."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    a, b = raw_login(s.port, timeout=5), raw_login(s.port)
    try:
        b.query(f"CREATE TABLE {table} (x int)")
        run_batch(a, parse_msg("gone", f"SELECT * FROM {table}") + sync_msg())
        b.query(f"DROP TABLE {table}")
        b.query("DISCARD ALL")  # what the server holds is unknown to sluice now
        assert sqlstate_of(a, sql) in (None, "42P01", "26000")
        assert a.query("SELECT 1")[0] == [["1"]]
    finally:
        a.close()
        b.close()


def test_clients_share_one_backend_statement_for_the_same_text(one_backend):
    _, a, b = one_backend
    run_batch(b, parse_msg("other_name", "SELECT 'A-secret'::text") + sync_msg())
    assert bind_run(b, "other_name")[1] == [["A-secret"]]
    rows = b.query("SELECT name, statement FROM pg_prepared_statements")[0]
    assert len(rows) == 1 and rows[0][0].startswith("sluice_"), rows
    assert bind_run(a, "stmt1")[1] == [["A-secret"]]


def test_a_long_statement_name_is_named_in_errors_as_the_client_spelled_it(one_backend):
    """A name of 63 bytes or more goes to the server as sluice's name padded to 63 bytes, then
    the rest of the client's name; Postgres names it whole in its errors, and so must sluice:
    the client's key, then that rest (not sluice's padding)."""
    _, a, _ = one_backend
    long_name, key = "L" * 70 + "tail", "L" * 63
    assert run_batch(a, parse_msg(long_name, "SELECT $1::int") + sync_msg())[2] is None
    for spelled in (long_name, key + "other"):
        error = bind_run(a, spelled)[2]
        assert error["M"] == (f'bind message supplies 0 parameters, but prepared statement '
                              f'"{spelled}" requires 1'), error
    error = run_batch(a, parse_msg(key + "zz", "SELECT 2") + sync_msg())[2]
    assert error["M"] == f'prepared statement "{key}zz" already exists', error
    # a failed Parse pipelined with its Bind: the Bind went out under sluice's name
    a.send(parse_msg("Q" * 80, "SELECT * FROM no_such_table_h13") + sync_msg()
           + bind_msg("", "Q" * 80) + execute_msg() + sync_msg())
    errors = []
    for _ in range(2):
        while True:
            mtype, payload = a.read_message()
            if mtype == "E":
                errors.append(parse_fields(payload))
            if mtype == "Z":
                break
    assert errors[1]["M"] == f'prepared statement "{"Q" * 80}" does not exist', errors


def test_errors_name_the_statement_used_when_two_names_share_a_text(one_backend):
    """Two names of one client for the same text are one statement on the server (one server
    name): an error about it names the one the client used, as Postgres does."""
    _, a, _ = one_backend
    for name in ("first", "second"):
        assert run_batch(a, parse_msg(name, "SELECT $1::int") + sync_msg())[2] is None
    for name in ("first", "second", "first"):
        error = bind_run(a, name)[2]
        assert error["M"] == (f'bind message supplies 0 parameters, but prepared statement '
                              f'"{name}" requires 1'), error
        error = run_batch(a, parse_msg(name, "SELECT 2") + sync_msg())[2]
        assert error["M"] == f'prepared statement "{name}" already exists', error
    with pytest.raises(ServerError) as e:
        a.query("EXECUTE second(1, 2)")
    assert e.value.fields["M"] == 'wrong number of parameters for prepared statement "second"'


@pytest.mark.parametrize("drop", ["SELECT 1; DEALLOCATE ALL", "/* evict */ DEALLOCATE ALL",
                                  "named Parse of DEALLOCATE ALL"])
def test_a_deallocate_sluice_cannot_see_breaks_another_clients_statement_once_at_most(
        one_backend, drop):
    """A DEALLOCATE ALL that sluice does not follow (after another statement, behind a comment,
    in a named statement run later) drops the statements of every client on that backend.
    Sluice then finds out from the 26000 of the next Bind; what the backend holds is unknown from
    there, and the statement is prepared again: the other client is not broken for good."""
    _, a, b = one_backend
    assert bind_run(a, "stmt1")[1] == [["A-secret"]]
    if drop.startswith("named"):
        run_batch(b, parse_msg("evict", "DEALLOCATE ALL") + sync_msg())
        assert bind_run(a, "stmt1")[1] == [["A-secret"]]
        assert bind_run(b, "evict")[2] is None
    else:
        assert sqlstate_of(b, drop) is None
    bind_run(a, "stmt1")  # may fail once: nothing told sluice the statement went
    for _ in range(2):
        seen, rows, error = bind_run(a, "stmt1")
        assert error is None and rows == [["A-secret"]], (seen, error)


@pytest.mark.parametrize("sql", ["/* app:web */ EXECUTE stmt1", "-- traced\nEXECUTE stmt1",
                                 "EXECUTE /* a /* nested */ comment */ stmt1"])
def test_sql_execute_after_a_comment_finds_the_clients_statement(one_backend, sql):
    """Postgres skips comments before and inside the statement; ORMs and tracers prepend them."""
    _, a, _ = one_backend
    assert a.query(sql)[0] == [["A-secret"]]
    assert a.query("/* evict */ DEALLOCATE stmt1") == ([], ["DEALLOCATE"])
    assert bind_run(a, "stmt1")[2]["C"] == "26000"


def test_sql_execute_with_an_argument_longer_than_pkt_buf_finds_the_clients_statement(one_backend):
    """The Query streams through the buffer; its head names the statement, and that is enough."""
    _, a, _ = one_backend
    run_batch(a, parse_msg("long_arg", "SELECT length($1::text)") + sync_msg())
    for n in (100, 40_000):
        assert a.query(f"EXECUTE long_arg('{'x' * n}')")[0] == [[str(n)]]
    assert a.query(f"DEALLOCATE long_arg /* {'x' * 40_000} */") == ([], ["DEALLOCATE"])
    assert bind_run(a, "long_arg")[2]["C"] == "26000"


def server_name_of_a_statement(b, word):
    """What any client of the backend reads in pg_prepared_statements: sluice's name for it."""
    rows, _ = b.query("SELECT name FROM pg_prepared_statements WHERE position("
                      f"'{word}' in statement) > 0")
    assert len(rows) == 1, rows
    return rows[0][0]


def error_of(c, sql):
    try:
        c.query(sql)
    except ServerError as e:
        return e.sqlstate, e.fields.get("M")
    return None


def test_sluices_name_for_another_clients_statement_finds_nothing(one_backend):
    """Another client's statement, by the name sluice gives it on the backend (which b reads in
    pg_prepared_statements): Postgres knows no statement of that name for b, and says so."""
    _, a, b = one_backend
    name = server_name_of_a_statement(b, "A-secret")
    assert name.startswith("sluice_"), name
    missing = ("26000", f'prepared statement "{name}" does not exist')
    for sql in (f"EXECUTE {name}", f"EXECUTE {name.upper()}", f'EXECUTE "{name}"',
                f"EXPLAIN EXECUTE {name}", f"explain (costs off) execute {name}",
                f"/* c */ EXPLAIN ANALYZE VERBOSE EXECUTE {name}", f"DEALLOCATE {name}",
                f"DEALLOCATE PREPARE {name}"):
        assert error_of(b, sql) == missing, sql
        assert bind_run(a, "stmt1")[1] == [["A-secret"]]
        assert error_of(b, sql) == missing, sql  # a's statement is back on the backend
    for msgs in (bind_msg("", name) + execute_msg(), describe_msg("S", name)):
        seen, rows, error = run_batch(b, msgs + sync_msg())
        assert rows == [] and (error["C"], error["M"]) == missing, (seen, error)
        assert bind_run(a, "stmt1")[1] == [["A-secret"]]
    seen, _, error = run_batch(b, close_msg("S", name) + sync_msg())
    assert error is None and seen == ["3", "Z"], (seen, error)
    assert bind_run(a, "stmt1")[1] == [["A-secret"]]
    # b may prepare its own by that name, as on Postgres, and runs its own
    b.query("BEGIN")
    assert error_of(b, f"PREPARE {name} AS SELECT 'B-own'::text") is None
    assert b.query(f"EXECUTE {name}")[0] == [["B-own"]]
    b.query("COMMIT")
    assert bind_run(a, "stmt1")[1] == [["A-secret"]]


def test_with_tracking_off_a_client_keeps_a_name_of_sluices_form(start_sluice):
    """max_prepared_statements = 0: names reach the backend as the client wrote them, and a
    client's own statement named like sluice's is the client's."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 0})
    c = raw_login(s.port)
    try:
        c.query("BEGIN")
        seen, _, error = run_batch(c, parse_msg("sluice_0123abcd", "SELECT 'mine'::text")
                                   + sync_msg())
        assert error is None, error
        assert bind_run(c, "sluice_0123abcd")[1] == [["mine"]]
        assert c.query("EXECUTE sluice_0123abcd")[0] == [["mine"]]
        c.query("COMMIT")
    finally:
        c.close()


def unicode_names(c):
    """EXECUTE and DEALLOCATE of the client's statements named by U&"..." identifiers, which
    Postgres decodes (escapes, another escape character after UESCAPE, a surrogate pair, one it
    refuses) before it looks the statement up."""
    parses = b"".join(parse_msg(name, text) for name, text in [
        ("a", "SELECT 1"), ("ab", "SELECT 2"), ("A", "SELECT 3"), ("\u00e9", "SELECT 4"),
        ("\U0001f600", "SELECT 5"), ("u", "SELECT 6")])
    return [batch(c, parses + sync_msg())] + [q(c, sql) for sql in [
        'EXECUTE U&"\\0061"', 'EXECUTE u&"!0061" UESCAPE \'!\'', 'EXECUTE U&"\\0061b"',
        'EXECUTE U&"\\0041"', 'EXECUTE U&"\\00e9"', 'EXECUTE U&"\\+01F600"',
        'EXECUTE U&"\\d83d\\de00"', 'EXECUTE U&"\\d83d"', 'EXECUTE U&"a\\\\"',
        'SELECT 0; EXECUTE /* x */ U&"\\0061"; EXECUTE U&"\\0041"',
        'DEALLOCATE U&"\\0061"', 'EXECUTE a', 'EXECUTE u']]


def test_unicode_escaped_statement_names_are_the_clients_statements(pg, start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    direct = raw_login(pg.port, password="apppass")
    pooled = raw_login(s.port)
    try:
        expected, seen = unicode_names(direct), unicode_names(pooled)
        diffs = [f"step {i}:\n  postgres {x}\n  sluice   {y}"
                 for i, (x, y) in enumerate(zip(expected, seen)) if x != y]
        assert not diffs, "\n".join(diffs)
        assert expected[1][1] == ("D", (b"1",)) and expected[-2][0][:2] == ("E", "26000")
    finally:
        direct.close()
        pooled.close()
