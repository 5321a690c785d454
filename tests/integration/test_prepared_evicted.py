"""Prepared statements in transaction mode whose backend lacks them (max_prepared_statements
evicted them, or the client got another backend), so that sluice prepares them again from their
text. Postgres keeps a prepared statement as it was prepared:
- whose text no longer prepares (its table, function or type dropped): it fails only when it
  runs, and a DEALLOCATE, a PREPARE or Parse of its name, a Close answer as before the DROP;
- whose parameter types its text would now resolve otherwise (a column's type altered): it
  keeps those of its Parse.
Postgres is the oracle: each program runs on a direct connection and through sluice with one
server that keeps one statement, where every other statement the client names evicts the one
before."""

import time

import pytest

from pgwire import (bind_msg, close_msg, describe_msg, execute_msg, message, parse_fields,
                    parse_msg, query_msg, raw_login, sync_msg)
from test_prepared_oracle import (assert_sluice_shows_what_postgres_shows, batch, bind_run, q,
                                  replies)

EVICT = "SELECT 'evict'"


def evict(c):
    """Another statement of the client's: through sluice it evicts the others from the server
    (max_prepared_statements = 1); on Postgres it is one more statement."""
    return [batch(c, parse_msg("ev", EVICT) + sync_msg()), bind_run(c, "ev"),
            batch(c, close_msg("S", "ev") + sync_msg())]


def described(c, data):
    """What the client sees up to the batch's ReadyForQuery: each message's type, an error's
    SQLSTATE, a ParameterDescription's types."""
    c.send(data)
    seen = []
    while True:
        t, p = c.read_message()
        seen.append(("E", parse_fields(p).get("C")) if t == "E" else (t, p if t == "t" else None))
        if t == "Z":
            return seen


def make_table(c, table="t_ev"):
    return [q(c, f"DROP TABLE IF EXISTS {table}"), q(c, f"CREATE TABLE {table} (a int)"),
            q(c, f"INSERT INTO {table} VALUES (1)")]


def deallocate_of_a_statement_whose_table_was_dropped(c):
    """DEALLOCATE drops it; EXECUTE and Bind fail until the table comes back; Close, Describe
    and DEALLOCATE ALL answer as on Postgres."""
    return (make_table(c) + [batch(c, parse_msg("q1", "SELECT * FROM t_ev") + sync_msg())]
            + evict(c) + [q(c, "DROP TABLE t_ev")] + evict(c)
            + [q(c, "EXECUTE q1")] + evict(c) + [q(c, "DEALLOCATE q1"), bind_run(c, "q1"),
               q(c, "DEALLOCATE q1"),
               batch(c, parse_msg("q1", "SELECT * FROM t_ev") + sync_msg())] + make_table(c)
            + [batch(c, parse_msg("q1", "SELECT * FROM t_ev") + sync_msg())] + evict(c)
            + [q(c, "DROP TABLE t_ev")] + evict(c)
            + [batch(c, close_msg("S", "q1") + sync_msg()),
               batch(c, describe_msg("S", "q1") + sync_msg())] + make_table(c)
            + [batch(c, parse_msg("q1", "SELECT * FROM t_ev") + sync_msg())] + evict(c)
            + [q(c, "DROP TABLE t_ev")] + evict(c) + [q(c, "EXECUTE q1")] + make_table(c)
            + [q(c, "EXECUTE q1")] + evict(c) + [bind_run(c, "q1")] + evict(c)
            + [q(c, "DROP TABLE t_ev")] + evict(c)
            + [q(c, "DEALLOCATE ALL"), bind_run(c, "q1"),
               batch(c, parse_msg("q1", "SELECT 5") + sync_msg()), bind_run(c, "q1")])


def prepare_of_a_name_whose_table_was_dropped(c):
    return (make_table(c) + [batch(c, parse_msg("q2", "SELECT * FROM t_ev") + sync_msg())]
            + evict(c) + [q(c, "DROP TABLE t_ev")] + evict(c)
            + [q(c, "PREPARE q2 AS SELECT 2"), q(c, "BEGIN"), q(c, "PREPARE q2 AS SELECT 2"),
               q(c, "ROLLBACK"), q(c, "EXECUTE q2")] + evict(c)
            + [q(c, "DEALLOCATE q2"), q(c, "BEGIN"), q(c, "PREPARE q2 AS SELECT 3"),
               q(c, "EXECUTE q2"), q(c, "COMMIT")])


def deallocate_and_prepare_behind_requests_in_flight(c):
    """The Query comes inside an extended batch, or pipelined behind a failing one: sluice's
    Parse under the name waits for its outcome there."""
    return (make_table(c) + [batch(c, parse_msg("q6", "SELECT * FROM t_ev") + sync_msg())]
            + evict(c) + [q(c, "DROP TABLE t_ev")] + evict(c)
            + [batch(c, parse_msg("", "SELECT 1") + bind_msg("", "") + execute_msg()
                     + query_msg("DEALLOCATE q6") + bind_msg("", "") + execute_msg() + sync_msg(),
                     2),
               batch(c, parse_msg("q6", "SELECT * FROM t_ev") + sync_msg())] + evict(c)
            + [q(c, "BEGIN"),
               batch(c, query_msg("SELECT 1/0") + query_msg("DEALLOCATE q6")
                     + query_msg("PREPARE q6 AS SELECT 1"), 3),
               q(c, "ROLLBACK"), batch(c, query_msg("SELECT 1") + query_msg("DEALLOCATE q6"), 2),
               q(c, "DEALLOCATE q6")])


def queries_of_several_executes_behind_requests_in_flight(c):
    """A Query that EXECUTEs two statements the backend lacks (both prepared in its one round
    trip, though max_prepared_statements is 1), pipelined behind a failing Query, inside an
    extended batch whose earlier message fails (the server skips sluice's Parses and the Query
    both), and with the first of them failing to prepare (the second skipped, prepared again at
    its next use)."""
    return (make_table(c)
            + [batch(c, parse_msg("q7", "SELECT * FROM t_ev") + parse_msg("q8", "SELECT 8")
                     + sync_msg())] + evict(c)
            + [batch(c, query_msg("SELECT 1/0") + query_msg("EXECUTE q7; EXECUTE q8"), 2)]
            + evict(c)
            + [batch(c, parse_msg("", "SELECT 1/0") + bind_msg("", "") + execute_msg()
                     + query_msg("EXECUTE q7; EXECUTE q8") + sync_msg()),
               q(c, "EXECUTE q8; EXECUTE q7")] + evict(c)
            + [q(c, "DROP TABLE t_ev")] + evict(c)
            + [q(c, "EXECUTE q7; EXECUTE q8"), q(c, "EXECUTE q8"), q(c, "EXECUTE q7")])


def statements_whose_names_or_types_went_away(c):
    """A type or a function dropped: a DEALLOCATE or PREPARE of the name answers as before, the
    statement fails only when it runs. (A Bind of the statement whose type went is left out:
    Postgres answers XX000 naming the type's OID.)"""
    return ([q(c, "DROP TYPE IF EXISTS ev_ty"),
             q(c, "CREATE TYPE ev_ty AS ENUM ('a')"),
             q(c, "CREATE OR REPLACE FUNCTION ev_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
             batch(c, parse_msg("ty", "SELECT 'a'::ev_ty") + sync_msg()),
             batch(c, parse_msg("fn", "SELECT ev_fn()") + sync_msg())] + evict(c)
            + [q(c, "DROP TYPE ev_ty"), q(c, "DROP FUNCTION ev_fn()")] + evict(c)
            + [bind_run(c, "fn")] + evict(c)
            + [q(c, "DEALLOCATE ty"), q(c, "PREPARE fn AS SELECT 1"), q(c, "DEALLOCATE fn"),
               q(c, "DEALLOCATE fn")])


def parse_of_a_taken_name_and_deallocate_by_protocol(c):
    """A Parse of a name the client holds gets 42P05 whatever the statement's text does now;
    a DEALLOCATE by Parse/Bind/Execute (as psycopg sends it) drops the statement."""
    def run_sql(sql):
        return batch(c, parse_msg("", sql) + bind_msg("", "") + execute_msg() + sync_msg())
    return (make_table(c) + [batch(c, parse_msg("q7", "SELECT * FROM t_ev") + sync_msg())]
            + evict(c) + [q(c, "DROP TABLE t_ev")] + evict(c)
            + [batch(c, parse_msg("q7", "SELECT 7") + sync_msg())] + evict(c)
            + [batch(c, parse_msg("q7", "SELECT 7") + bind_msg("", "q7") + execute_msg()
                     + sync_msg()),
               run_sql("DEALLOCATE q7"), run_sql("DEALLOCATE q7")] + make_table(c)
            + [batch(c, parse_msg("q7", "SELECT * FROM t_ev") + sync_msg())] + evict(c)
            + [q(c, "DROP TABLE t_ev")] + evict(c)
            + [run_sql("PREPARE q7 AS SELECT 1"), run_sql("DEALLOCATE PREPARE q7"),
               bind_run(c, "q7")])


def long_quoted_and_multibyte_names(c):
    """The same for names Postgres cuts at 63 bytes, and for an upper-case name (unquoted, SQL
    folds it to another name). A SQL name is cut at its last whole character within 63 bytes, a
    protocol name at 63 bytes: the multibyte names are other statements by SQL (a SQL PREPARE
    of one outside a transaction block is left out, as it ends with the transaction through
    sluice: docs/pool-modes.md)."""
    out = make_table(c)
    for name, same_key in (("x" * 70, True), ("é" * 40, False), ("ab" + "😀" * 20, False),
                           ("Q", True)):
        out += ([batch(c, parse_msg(name, "SELECT * FROM t_ev") + sync_msg())] + evict(c)
                + [q(c, "DROP TABLE t_ev")] + evict(c)
                + ([q(c, f'PREPARE "{name}" AS SELECT 1')] if same_key else [])
                + [q(c, f"DEALLOCATE {name}"), q(c, f'DEALLOCATE "{name}"'), bind_run(c, name),
                   q(c, "BEGIN"), q(c, f'PREPARE "{name}" AS SELECT 1'),
                   q(c, f'EXECUTE "{name}"'), q(c, f'DEALLOCATE "{name}"'), q(c, "COMMIT"),
                   batch(c, close_msg("S", name) + sync_msg())] + make_table(c))
    return out


def parameter_types_fixed_at_the_parse(c):
    """Postgres fixes a statement's parameter types at its Parse: after the column's type is
    altered it still takes an int4 (a value past int4 fails with 22003, its Describe says
    int4). sluice, preparing the text again, had the server resolve int8."""
    def run(stmt, value):
        return batch(c, bind_msg("", stmt, [value]) + execute_msg() + sync_msg())
    return ([q(c, "DROP TABLE IF EXISTS t_pt"), q(c, "CREATE TABLE t_pt (a int, b text)"),
             q(c, "INSERT INTO t_pt VALUES (1, 'x')"),
             batch(c, parse_msg("pt", "SELECT b FROM t_pt WHERE a = $1") + sync_msg()),
             batch(c, parse_msg("pt2", "SELECT b FROM t_pt WHERE a = $1 AND b = $2", [23])
                   + sync_msg())]
            + evict(c) + [q(c, "ALTER TABLE t_pt ALTER a TYPE bigint")] + evict(c)
            + [run("pt", "3000000000"), run("pt", "1"), q(c, "EXECUTE pt(3000000000)"),
               batch(c, bind_msg("", "pt2", ["3000000000", "x"]) + execute_msg() + sync_msg())]
            + evict(c)
            + [described(c, describe_msg("S", "pt") + describe_msg("S", "pt2") + sync_msg())])


def long_executes_of_a_statement_the_backend_lacks(c):
    """An EXECUTE longer than pkt_buf (a big literal argument) of a statement the backend lacks:
    it runs, and once the statement's table is dropped it fails as Postgres's EXECUTE does
    (42P01, its ReadyForQuery), with nothing else in flight, pipelined with a Query after it,
    inside an extended batch and in a transaction block."""
    big = "x" * 40_000
    run = query_msg(f"EXECUTE le('{big}')")
    explain = query_msg(f"EXPLAIN (COSTS OFF) EXECUTE le('{big}')")
    unnamed = parse_msg("", "SELECT 1") + bind_msg("", "") + execute_msg()

    def in_two_reads(data):
        """The Query's header and first bytes, then its rest: sluice reads its head whole (the
        pause makes the split likely; the answer must be the same either way)."""
        c.send(data[:12])
        time.sleep(0.2)
        c.send(data[12:])
        return replies(c)
    return (make_table(c) + [batch(c, parse_msg("le", "SELECT a, length($1::text) FROM t_ev")
                                   + sync_msg())]
            + evict(c) + [batch(c, run)] + evict(c) + [in_two_reads(run)] + evict(c)
            + [batch(c, explain)] + evict(c)
            + [q(c, "BEGIN"), batch(c, run), q(c, "COMMIT")] + evict(c)
            + [batch(c, unnamed + run + bind_msg("", "") + execute_msg() + sync_msg(), 2)]
            + evict(c) + [q(c, "DROP TABLE t_ev")] + evict(c)
            + [batch(c, run), in_two_reads(run), batch(c, explain)] + evict(c)
            + [batch(c, run + query_msg("SELECT 2") + run, 3)] + evict(c)
            + [batch(c, unnamed + run + bind_msg("", "") + execute_msg() + sync_msg(), 2)]
            + evict(c) + [q(c, "BEGIN"), batch(c, run), q(c, "ROLLBACK")]
            + make_table(c) + evict(c) + [batch(c, run)])


def describes_of_statements_whose_table_was_dropped(c):
    """Postgres's Describe of a statement sends the parameter types fixed at its Parse, then
    revalidates it: one with a result fails there (42P01), one without (an INSERT) answers
    NoData. Alone, behind an Execute in its batch, before a Bind of it, and in a failed
    transaction (25P02 before the types). The same for one whose result type changed (0A000
    after the types)."""
    def answers(data):
        return described(c, data)
    before = parse_msg("", "SELECT 1") + bind_msg("", "") + execute_msg()
    return (make_table(c)
            + [batch(c, parse_msg("d1", "SELECT a FROM t_ev WHERE a = $1 AND $2::text > ''")
                     + parse_msg("d2", "SELECT 1 FROM t_ev")
                     + parse_msg("d3", "INSERT INTO t_ev VALUES ($1)") + sync_msg())]
            + evict(c) + [answers(describe_msg("S", "d3") + bind_msg("", "d3", ["2"])
                                  + execute_msg() + describe_msg("S", "d3") + sync_msg())]
            + evict(c) + [answers(describe_msg("S", "d1") + describe_msg("S", "d3")
                                  + sync_msg())]
            + evict(c) + [q(c, "DROP TABLE t_ev")] + evict(c)
            + [answers(describe_msg("S", "d1") + sync_msg())] + evict(c)
            + [answers(describe_msg("S", "d2") + sync_msg())] + evict(c)
            + [answers(before + describe_msg("S", "d1") + bind_msg("", "d1", ["1", "x"])
                       + execute_msg() + sync_msg())]
            + evict(c) + [answers(before + describe_msg("S", "d2") + sync_msg())]
            + evict(c) + [answers(describe_msg("S", "d3") + sync_msg())]
            + evict(c) + [answers(describe_msg("S", "d3") + bind_msg("", "d3", ["1"])
                                  + execute_msg() + sync_msg())]
            + evict(c) + [q(c, "BEGIN"), q(c, "SELECT 1/0"),
                          answers(describe_msg("S", "d1") + sync_msg()), q(c, "ROLLBACK")]
            + make_table(c)
            + [batch(c, parse_msg("d4", "SELECT a FROM t_ev WHERE a = $1") + sync_msg())]
            + evict(c) + [q(c, "ALTER TABLE t_ev ALTER a TYPE bigint")] + evict(c)
            + [answers(describe_msg("S", "d4") + sync_msg()),
               answers(before + describe_msg("S", "d4") + bind_msg("", "d4", ["1"])
                       + execute_msg() + sync_msg())])


def describes_in_a_failed_transaction(c):
    """In a failed transaction Postgres refuses the Describe of a statement with a result
    (25P02) but describes one without (ParameterDescription with the types of its Parse,
    NoData), whether or not its table is still there; the statement runs after the ROLLBACK."""
    def answers(data):
        return described(c, data)
    def failed():
        return [q(c, "BEGIN"), q(c, "SELECT 1/0")]
    return (make_table(c)
            + [batch(c, parse_msg("f1", "INSERT INTO t_ev VALUES ($1)")
                     + parse_msg("f2", "SELECT 1 WHERE false") + sync_msg())]
            + evict(c) + failed()
            + [answers(describe_msg("S", "f1") + sync_msg()),
               answers(describe_msg("S", "f2") + describe_msg("S", "f1") + sync_msg()),
               q(c, "ROLLBACK"), batch(c, bind_msg("", "f1", ["3"]) + execute_msg() + sync_msg())]
            + evict(c) + [q(c, "DROP TABLE t_ev")] + evict(c) + failed()
            + [answers(describe_msg("S", "f1") + sync_msg()), q(c, "ROLLBACK"),
               answers(describe_msg("S", "f1") + sync_msg())])


def unnamed_parses_of_an_execute(c):
    """Postgres parses an unnamed EXECUTE (EXPLAIN EXECUTE) of a statement without looking the
    statement up; a Bind of it finds the statement, which runs (or fails, its table dropped
    since: sluice's error comes at the Bind, without its BindComplete, docs/pool-modes.md). Its
    Parse alone succeeds, in a transaction block too, whose next statement runs; its Bind after
    the statement was evicted runs it."""
    execute = parse_msg("", "EXECUTE u1(1)")
    run = bind_msg("", "") + execute_msg() + sync_msg()
    return (make_table(c)
            + [batch(c, parse_msg("u1", "SELECT a FROM t_ev WHERE a = $1") + sync_msg())]
            + evict(c) + [batch(c, execute + sync_msg())] + evict(c) + [batch(c, run)]
            + [batch(c, parse_msg("", "EXPLAIN (COSTS OFF) EXECUTE u1(1)") + sync_msg())]
            + evict(c) + [batch(c, run), q(c, "BEGIN"), batch(c, execute + sync_msg())] + evict(c)
            + [batch(c, run), q(c, "SELECT 1"), q(c, "COMMIT")]
            + evict(c) + [q(c, "DROP TABLE t_ev")] + evict(c)
            + [q(c, "BEGIN"), batch(c, execute + sync_msg()), q(c, "SELECT 2"), q(c, "ROLLBACK"),
               batch(c, execute + sync_msg())])


def statements_prepared_again_after_client_encoding_changed(c):
    """Postgres converts a statement's text at its Parse: after a SET client_encoding its Bind,
    SQL EXECUTE and Describe run the text it read then. sluice prepares it again in the
    encoding of the moment, converted."""
    def parse(name, text):
        return batch(c, message(b"P", name + b"\0" + text + b"\0\0\0") + sync_msg())

    def execute(name):
        return batch(c, message(b"Q", b"EXECUTE " + name + b"\0"))
    return ([q(c, "SET client_encoding TO LATIN1"), parse(b"e1", b"SELECT '\xe9' AS x"),
             parse(b"e2", b"SELECT $1::text || '\xe0' AS y")]
            + evict(c) + [q(c, "SET client_encoding TO UTF8"), bind_run(c, "e1")]
            + evict(c) + [execute(b"e1")] + evict(c)
            + [batch(c, bind_msg("", "e2", ["\u00e9"]) + execute_msg() + sync_msg())]
            + evict(c) + [q(c, "SET client_encoding TO WIN1252"), bind_run(c, "e1"),
                          parse(b"e3", b"SELECT '\x80' AS z")]
            + evict(c) + [q(c, "SET client_encoding TO UTF8"), bind_run(c, "e3")]
            + evict(c) + [q(c, "SET client_encoding TO LATIN1"), bind_run(c, "e1"),
                          q(c, "RESET client_encoding")]
            # the SET pipelined with the Parse: its encoding is not known when the Parse passes
            + [batch(c, query_msg("SET client_encoding TO LATIN1")
                     + message(b"P", b"e4\0SELECT '\xe8' AS w\0\0\0") + sync_msg(), 2)]
            + evict(c) + [bind_run(c, "e4"), q(c, "RESET client_encoding")])


def statements_parsed_in_a_block_that_set_client_encoding(c):
    """A SET (LOCAL) client_encoding in a transaction block holds for the Parses after it, also
    pipelined ones, until the block ends or rolls back to before it: a Parse pipelined behind
    that ROLLBACK is read in the encoding it restores, here UTF8, which refuses the LATIN1 byte
    (node-postgres sends UTF-8 whatever the session's client_encoding)."""
    def parse(name, text, before=b""):
        return batch(c, before + message(b"P", name + b"\0" + text + b"\0\0\0") + sync_msg(),
                     2 if before[:1] == b"Q" else 1)
    return ([q(c, "BEGIN"), q(c, "SET LOCAL client_encoding TO 'WIN1252'"),
             parse(b"w1", b"SELECT '\xc3\xa4\xe2\x82\xac' AS x"), q(c, "COMMIT")]
            + evict(c) + [bind_run(c, "w1")]
            + [q(c, "BEGIN"), q(c, "SET client_encoding TO 'LATIN1'"),
               parse(b"w2", b"SELECT '\xe9' AS y", parse_msg("", "SELECT 1")),
               parse(b"w4", b"SELECT '\xe8' AS w", query_msg("ROLLBACK"))]
            + evict(c) + [bind_run(c, "w1"), bind_run(c, "w2"), bind_run(c, "w4"),
                          q(c, "SET client_encoding TO 'LATIN1'")]
            + evict(c) + [bind_run(c, "w2"), q(c, "RESET client_encoding")])


def statements_evicted_between_an_unnamed_executes_bind_and_execute(c):
    """Postgres looks the statement an unnamed EXECUTE names up again at the portal's Execute:
    other statements prepared between its Bind and Execute (each evicting the one before
    through sluice) must leave it there."""
    return [batch(c, parse_msg("p0", "SELECT 0") + sync_msg()),
            batch(c, parse_msg("", "EXECUTE p0") + bind_msg("", "") + parse_msg("p1", "SELECT 1")
                  + parse_msg("p2", "SELECT 2") + execute_msg() + sync_msg()),
            batch(c, parse_msg("", "EXECUTE p0") + bind_msg("", "") + parse_msg("p3", "SELECT 3")
                  + bind_msg("", "p3") + execute_msg() + parse_msg("", "EXECUTE p0")
                  + bind_msg("", "") + bind_msg("", "p1") + execute_msg() + sync_msg()),
            q(c, "EXECUTE p0"), bind_run(c, "p2")]


def portals_bound_from_an_unnamed_execute_outlive_the_unnamed_statement(c):
    """A portal bound from an unnamed EXECUTE p0 runs p0 at its Execute, looked up then, after
    another unnamed Parse replaced the statement it was bound from and other statements were
    prepared (each evicting the one before through sluice): in a transaction block, a batch, or
    behind a simple Query."""
    return [batch(c, parse_msg("p0", "SELECT 0") + sync_msg()), q(c, "BEGIN"),
            described(c, parse_msg("", "EXECUTE p0") + bind_msg("pp", "") + sync_msg()),
            described(c, parse_msg("", "SELECT 5") + bind_msg("", "") + execute_msg()
                      + sync_msg()),
            batch(c, parse_msg("p1", "SELECT 1") + parse_msg("p2", "SELECT 2") + sync_msg()),
            described(c, execute_msg("pp") + sync_msg()), q(c, "COMMIT"),
            described(c, parse_msg("", "EXECUTE p0") + bind_msg("pq", "")
                      + parse_msg("", "SELECT 6") + parse_msg("p3", "SELECT 3")
                      + execute_msg("pq") + sync_msg()),
            q(c, "BEGIN"),
            described(c, parse_msg("", "EXECUTE p0") + bind_msg("pr", "") + sync_msg()),
            q(c, "SELECT 7"), batch(c, parse_msg("p4", "SELECT 4") + sync_msg()),
            described(c, execute_msg("pr") + sync_msg()), q(c, "COMMIT"),
            # after the transaction the portals are gone: p0 is evicted as any other
            batch(c, parse_msg("p5", "SELECT 5") + sync_msg()), q(c, "EXECUTE p0")]


SCENARIOS = [deallocate_of_a_statement_whose_table_was_dropped,
             prepare_of_a_name_whose_table_was_dropped,
             deallocate_and_prepare_behind_requests_in_flight,
             queries_of_several_executes_behind_requests_in_flight,
             statements_whose_names_or_types_went_away,
             parse_of_a_taken_name_and_deallocate_by_protocol,
             long_quoted_and_multibyte_names, parameter_types_fixed_at_the_parse,
             long_executes_of_a_statement_the_backend_lacks,
             describes_of_statements_whose_table_was_dropped,
             describes_in_a_failed_transaction, unnamed_parses_of_an_execute,
             statements_prepared_again_after_client_encoding_changed,
             statements_parsed_in_a_block_that_set_client_encoding,
             statements_evicted_between_an_unnamed_executes_bind_and_execute,
             portals_bound_from_an_unnamed_execute_outlive_the_unnamed_statement]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[f.__name__ for f in SCENARIOS])
def test_a_statement_the_backend_lacks_answers_as_on_postgres(pg, start_sluice, scenario):
    assert_sluice_shows_what_postgres_shows(
        pg, start_sluice, 1, scenario, main={"default_pool_size": 1, "max_prepared_statements": 1})


def test_a_statement_whose_text_the_new_client_encoding_lacks_fails_the_session(pg,
                                                                                start_sluice):
    """A UTF8 client's statement with a character LATIN1 lacks ('\u20ac'), Bound after SET
    client_encoding LATIN1 on a backend that lacks it: Postgres runs the text it converted at
    the Parse; sluice cannot send that text in LATIN1, and fails the session with 22P05 naming
    the statement and both encodings, rather than run a text that reads otherwise."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 1})
    text = "SELECT 1 AS one WHERE '\u20ac' <> ''"

    def program(c):
        return ([batch(c, parse_msg("euro", text) + sync_msg())] + evict(c)
                + [q(c, "SET client_encoding TO LATIN1")])
    direct = raw_login(pg.port, password="apppass")
    pooled = raw_login(s.port)
    try:
        assert program(direct) == program(pooled)
        assert bind_run(direct, "euro") == ["2", ("D", (b"1",)), ("C", "SELECT 1"), "ZI"]
        pooled.send(bind_msg("", "euro") + execute_msg() + sync_msg())
        t, p = pooled.read_message()
        f = parse_fields(p)
        assert (t, f.get("S"), f.get("C")) == ("E", "FATAL", "22P05"), f
        assert '"euro" was sent in UTF8; the session now uses LATIN1' in f["M"], f
        assert pooled.is_closed()
        after = raw_login(s.port)  # the pool serves on
        try:
            assert q(after, "SELECT 2") == ["T", ("D", (b"2",)), ("C", "SELECT 1"), "ZI"]
        finally:
            after.close()
    finally:
        direct.close()
        pooled.close()



def two_clients_of_one_text(a, b):
    """b prepares a's text after the column's type changed: on one server they are one name of
    sluice's, and each must still run with its own parameter types."""
    def run(c, value):
        return batch(c, bind_msg("", "pt", [value]) + execute_msg() + sync_msg())
    text = "SELECT b FROM t_pt2 WHERE a = $1"
    return [q(a, "DROP TABLE IF EXISTS t_pt2"), q(a, "CREATE TABLE t_pt2 (a int, b text)"),
            batch(a, parse_msg("pt", text) + sync_msg()), run(a, "1"),
            q(a, "ALTER TABLE t_pt2 ALTER a TYPE bigint"),
            batch(b, parse_msg("pt", text) + sync_msg()), run(b, "3000000000"),
            run(a, "3000000000"), run(b, "3000000000"), run(a, "3000000000"),
            described(a, describe_msg("S", "pt") + sync_msg()),
            described(b, describe_msg("S", "pt") + sync_msg())]


def test_two_clients_of_one_text_keep_their_parameter_types(pg, start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    conns = [raw_login(pg.port, password="apppass"), raw_login(pg.port, password="apppass"),
             raw_login(s.port), raw_login(s.port)]
    try:
        expected, seen = two_clients_of_one_text(*conns[:2]), two_clients_of_one_text(*conns[2:])
        diffs = [f"step {i}:\n  postgres {x}\n  sluice   {y}"
                 for i, (x, y) in enumerate(zip(expected, seen)) if x != y]
        assert not diffs, "\n".join(diffs)
    finally:
        for c in conns:
            c.close()



def test_a_client_gone_in_the_middle_of_a_long_execute_whose_prepare_failed(pg, start_sluice):
    """sluice answers such an EXECUTE once its re-prepare failed and drops the rest of it as the
    client sends it: a client that leaves before sending it all leaves the server whole (the
    server has none of it), and the next client gets it."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 1})
    a = raw_login(s.port)
    try:
        make_table(a, "t_gone")
        batch(a, parse_msg("lg", "SELECT a FROM t_gone WHERE $1::text > ''") + sync_msg())
        evict(a)
        q(a, "DROP TABLE t_gone")
        evict(a)
        run = query_msg(f"EXECUTE lg('{'x' * 40_000}')")
        a.send(run[:20_000])
        assert replies(a) == [("E", "42P01", 'relation "t_gone" does not exist'), "ZI"]
    finally:
        a.close()
    b = raw_login(s.port)
    try:
        assert q(b, "SELECT 1") == ["T", ("D", (b"1",)), ("C", "SELECT 1"), "ZI"]
    finally:
        b.close()
