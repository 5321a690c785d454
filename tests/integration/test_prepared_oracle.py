"""Prepared statements in transaction mode, with Postgres as the oracle: each scenario runs on a
direct connection and through sluice (1 and 2 workers), and the client must see the same replies
(errors with their SQLSTATE and message, rows, ReadyForQuery status) both ways.

What cannot be the same is left out on purpose: pg_prepared_statements lists the backend's
statements, which through sluice are sluice's names (sluice_<hash>) and those of other clients
on the same backend (docs/pool-modes.md)."""

import struct
import time

import pytest

from pgwire import (bind_msg, close_msg, describe_msg, execute_msg, message, parse_data_row,
                    parse_fields, parse_msg, query_msg, raw_login, sync_msg)


def read_until_ready(c, n_ready, seen_as):
    """Each message up to the client's n_ready-th ReadyForQuery, as seen_as(type, payload)
    names it (None: not looked at); a ReadyForQuery as Z and its status."""
    seen, zs = [], 0
    while zs < n_ready:
        t, p = c.read_message()
        if t == "Z":
            zs += 1
            seen.append("Z" + p.decode())
            continue
        item = seen_as(t, p)
        if item is not None:
            seen.append(item)
    return seen


def oracle_item(t, p):
    if t == "E" or (t == "N" and parse_fields(p).get("C") == "42622"):
        # of the NOTICEs only an identifier's truncation: others (DROP ... IF EXISTS) say
        # what tests before left in the database
        f = parse_fields(p)
        return (t, f.get("C"), f.get("M"))
    if t == "D":
        return ("D", tuple(parse_data_row(p, value=lambda r: r)))
    if t == "C":
        return ("C", p.rstrip(b"\0").decode())
    if t in "123nstT":
        return t
    return None


def replies(c, n_ready=1):
    """What the client sees up to its n_ready-th ReadyForQuery."""
    return read_until_ready(c, n_ready, oracle_item)


def q(c, sql):
    c.send(query_msg(sql))
    return replies(c)


def batch(c, data, n_ready=1):
    c.send(data)
    return replies(c, n_ready)


def bind_run(c, name):
    return batch(c, bind_msg("", name) + execute_msg() + sync_msg())


def raw_parse(name: bytes, sql: bytes):
    return message(b"P", name + b"\0" + sql + b"\0" + struct.pack("!H", 0))


def raw_bind_run(name: bytes):
    return (message(b"B", b"\0" + name + b"\0" + struct.pack("!HHH", 0, 0, 0)) + execute_msg()
            + sync_msg())


# ---- scenarios: each returns what its client saw, step by step ----------------------------------


def sql_prepare_then_parse_in_a_transaction(c):
    return [q(c, "BEGIN"), q(c, "PREPARE x AS SELECT 1"),
            batch(c, parse_msg("x", "SELECT 2") + sync_msg()), q(c, "ROLLBACK")]


def sql_prepare_then_parse_in_one_pipeline(c):
    return [q(c, "BEGIN"),
            batch(c, parse_msg("", "PREPARE x AS SELECT 1") + bind_msg("", "") + execute_msg()
                  + parse_msg("x", "SELECT 2") + sync_msg()),
            q(c, "COMMIT")]


def parse_then_sql_prepare(c):
    return [batch(c, parse_msg("x", "SELECT 2") + sync_msg()), q(c, "PREPARE x AS SELECT 1"),
            q(c, "EXECUTE x"), q(c, "BEGIN"), q(c, 'PREPARE "x" AS SELECT 1'), q(c, "ROLLBACK"),
            batch(c, parse_msg("", "PREPARE x AS SELECT 3") + bind_msg("", "") + execute_msg()
                  + sync_msg()),
            bind_run(c, "x")]


def sql_prepared_statement_used_by_protocol_in_its_transaction(c):
    return [q(c, "BEGIN"), q(c, "PREPARE x AS SELECT 1"), bind_run(c, "x"),
            batch(c, describe_msg("S", "x") + sync_msg()),
            batch(c, close_msg("S", "x") + sync_msg()), q(c, "EXECUTE x"),
            batch(c, parse_msg("x", "SELECT 2") + sync_msg()), bind_run(c, "x"), q(c, "COMMIT")]


def sql_deallocate_then_parse(c):
    return [q(c, "BEGIN"), q(c, "PREPARE x AS SELECT 1"), q(c, "DEALLOCATE x"),
            batch(c, parse_msg("x", "SELECT 2") + sync_msg()), bind_run(c, "x"),
            q(c, "PREPARE y AS SELECT 1"), q(c, "DEALLOCATE ALL"),
            batch(c, parse_msg("y", "SELECT 3") + sync_msg()), bind_run(c, "y"), q(c, "COMMIT"),
            bind_run(c, "x"), bind_run(c, "y")]


def deallocate_all_and_discard_all_drop_protocol_statements(c):
    return [batch(c, parse_msg("x", "SELECT 2") + sync_msg()), q(c, "DEALLOCATE ALL"),
            bind_run(c, "x"), batch(c, parse_msg("x", "SELECT 3") + sync_msg()),
            q(c, "DEALLOCATE x"), bind_run(c, "x"),
            batch(c, parse_msg("x", "SELECT 4") + sync_msg()), q(c, "DISCARD ALL"),
            bind_run(c, "x")]


def names_that_are_not_valid_text(c):
    """Postgres reads each name as text of the client's encoding (UTF8 here): one that is not is
    refused (22021) before it is looked up; sluice renamed it, and the server never saw it."""
    out = []
    for name in (b"\xff\xfe", b"ok\xc3", b"\xed\xa0\x80"):
        out += [batch(c, raw_parse(name, b"SELECT 7") + sync_msg()), batch(c, raw_bind_run(name)),
                batch(c, message(b"C", b"S" + name + b"\0") + sync_msg())]
    long_name = b"L" * 70
    out += [batch(c, raw_parse(long_name, b"SELECT 8") + sync_msg()),
            batch(c, raw_bind_run(b"L" * 63 + b"\xff")), batch(c, raw_bind_run(long_name)),
            batch(c, raw_parse(b"L" * 63 + b"\xff", b"SELECT 9") + sync_msg())]
    return out


def long_names_cut_inside_a_character(c):
    """Postgres keys a statement by the first 63 bytes of its name, which may end inside a UTF-8
    character; its errors name the statement as the client spelled it, whole."""
    out = []
    for name in ("é" * 40, "a" + "€" * 30, "ab" + "😀" * 20, "é" * 31 + "ü" + "x" * 5):
        other = name[:-1] + "z"  # the same key
        out += [batch(c, parse_msg(name, "SELECT $1::int") + sync_msg()), bind_run(c, name),
                bind_run(c, other), batch(c, parse_msg(other, "SELECT 2") + sync_msg()),
                batch(c, describe_msg("S", name) + close_msg("S", other) + sync_msg()),
                bind_run(c, name)]
    # two names whose cut falls inside different characters of the same head: one key
    out += [batch(c, parse_msg("a" * 62 + "é", "SELECT 1") + sync_msg()),
            batch(c, parse_msg("a" * 62 + "è", "SELECT 2") + sync_msg()),
            batch(c, parse_msg("a" * 62 + "èx", "SELECT 2") + bind_msg("", "a" * 62 + "èx")
                  + execute_msg() + sync_msg())]
    return out


def names_that_never_end(c):
    """A name without its NUL: Postgres answers ERROR 08P01 and the session goes on (sluice
    closed it with a FATAL)."""
    out = []
    for mtype, body in ((b"B", b"\0abc"), (b"B", b"portal"), (b"P", b"n"), (b"D", b"Sn"),
                        (b"C", b"Sn"), (b"D", b"S" + b"L" * 70), (b"C", b"P")):
        out += [batch(c, message(mtype, body) + sync_msg()), q(c, "SELECT 1")]
    out += [batch(c, parse_msg("L" * 70, "SELECT 3") + sync_msg()),
            batch(c, message(b"B", b"\0" + b"L" * 70) + sync_msg()), bind_run(c, "L" * 70)]
    return out


def careless_pipelines(c):
    """Close and Parse again in one batch, a Close skipped after an error, a DEALLOCATE in a
    failed transaction, Describe of a closed statement, the unnamed statement across Syncs and
    errors, a Query in the middle of a batch."""
    return [
        batch(c, parse_msg("x", "SELECT 1") + close_msg("S", "x") + parse_msg("x", "SELECT 2")
              + bind_msg("", "x") + execute_msg() + sync_msg()),
        batch(c, parse_msg("y", "SELECT 1") + parse_msg("bad", "SELEC") + close_msg("S", "y")
              + sync_msg()),
        bind_run(c, "y"), q(c, "BEGIN"), q(c, "SELECT 1/0"), q(c, "DEALLOCATE y"),
        q(c, "ROLLBACK"), bind_run(c, "y"),
        batch(c, close_msg("S", "y") + close_msg("S", "y") + bind_msg("", "y") + sync_msg()),
        batch(c, parse_msg("z", "SELECT 1") + sync_msg() + close_msg("S", "z")
              + describe_msg("S", "z") + sync_msg(), 2),
        batch(c, parse_msg("", "SELECT 9") + sync_msg() + bind_msg("", "") + execute_msg()
              + sync_msg() + bind_msg("", "") + execute_msg() + sync_msg(), 3),
        batch(c, parse_msg("", "SELECT 1/0") + bind_msg("", "") + execute_msg() + sync_msg()
              + bind_msg("", "") + execute_msg() + sync_msg(), 2),
        q(c, "SELECT 1"), batch(c, bind_msg("", "") + execute_msg() + sync_msg()),
        batch(c, parse_msg("w", "SELECT 1") + bind_msg("", "w") + execute_msg()
              + query_msg("DEALLOCATE w") + bind_msg("", "w") + execute_msg() + sync_msg(), 2)]


def sql_statements_by_unnamed_parse_in_a_transaction(c):
    return [q(c, "BEGIN"),
            batch(c, parse_msg("", "PREPARE u AS SELECT 1") + bind_msg("", "") + execute_msg()
                  + sync_msg()),
            q(c, "EXECUTE u"),
            batch(c, parse_msg("", "DEALLOCATE u") + bind_msg("", "") + execute_msg()
                  + sync_msg()),
            batch(c, parse_msg("u", "SELECT 5") + bind_msg("", "u") + execute_msg() + sync_msg()),
            q(c, "PREPARE u AS SELECT 6"), q(c, "ROLLBACK"), bind_run(c, "u"),
            q(c, "BEGIN"), q(c, "PREPARE v AS SELECT 7"), q(c, "SAVEPOINT s"),
            batch(c, parse_msg("v", "SELECT 8") + sync_msg()), q(c, "ROLLBACK TO s"),
            q(c, "EXECUTE v"), q(c, "COMMIT")]


def long_names_cut_inside_a_character_in_messages_larger_than_the_buffer(c):
    """The same in a Parse and a Bind that stream through sluice's buffer (pkt_buf)."""
    name, pad = "é" * 40, "x" * (200 * 1024)
    big_bind = bind_msg("", name, ["y" * (300 * 1024)]) + execute_msg() + sync_msg()
    return [batch(c, parse_msg(name, f"SELECT length($1::text) + length('{pad}')") + sync_msg()),
            batch(c, big_bind), batch(c, big_bind),
            batch(c, parse_msg(name[:-1] + "z", f"SELECT '{pad}'") + sync_msg()),
            batch(c, bind_msg("", name[:-1] + "z", ["y" * (300 * 1024), 1]) + sync_msg())]


def drops_that_fail_keep_sql_statements(c):
    """A DISCARD ALL or DEALLOCATE that does not run (25001 inside a transaction block, 25P02 in
    a failed transaction) leaves the SQL statements: a Parse of the name still collides."""
    out = [q(c, "BEGIN"), q(c, "PREPARE x AS SELECT 1"), q(c, "SAVEPOINT s")]
    for drop in ("DISCARD ALL", "DEALLOCATE ALL", "DEALLOCATE x"):
        out += [q(c, "SELECT 1/0"), q(c, drop), q(c, "ROLLBACK TO s"),
                batch(c, parse_msg("x", "SELECT 2") + sync_msg()), q(c, "EXECUTE x")]
    out += [q(c, "DISCARD ALL"), q(c, "ROLLBACK TO s"),
            batch(c, parse_msg("x", "SELECT 2") + sync_msg()), q(c, "EXECUTE x"),
            q(c, "ROLLBACK")]
    return out


def unnamed_executes_of_a_statement_closed_or_prepared_again(c):
    """An unnamed Parse of EXECUTE p0 looks p0 up at its Bind, on Postgres: closed since, the
    Bind gets 26000 naming p0; prepared again since under that name, the Bind runs the new
    text."""
    run = bind_msg("", "") + execute_msg()
    return [batch(c, parse_msg("p0", "SELECT 0") + parse_msg("", "EXECUTE p0") + run
                  + describe_msg("S", "") + run + sync_msg()),
            batch(c, parse_msg("", "EXECUTE p0") + close_msg("S", "p0") + run + sync_msg()),
            batch(c, parse_msg("p0", "SELECT 10") + parse_msg("", "EXECUTE p0") + sync_msg()),
            batch(c, close_msg("S", "p0") + parse_msg("p0", "SELECT 11") + sync_msg()),
            batch(c, run + sync_msg()), q(c, "EXECUTE p0"),
            batch(c, parse_msg("", "EXECUTE nosuch") + run + sync_msg())]


def long_sql_names_cut_at_a_whole_character(c):
    """Postgres cuts a long SQL identifier at its last whole character within 63 bytes (a
    protocol name at 63 bytes): EXECUTE and DEALLOCATE of a long multibyte name, unquoted and
    quoted, name another key than a Parse of it."""
    out = []
    for name in ("é" * 40, "a" + "€" * 30, "ab" + "😀" * 20):
        for spelled in (name, f'"{name}"'):
            out += [batch(c, parse_msg(name, "SELECT 1") + sync_msg()),
                    q(c, f"EXECUTE {spelled}"), q(c, f"DEALLOCATE {spelled}"), bind_run(c, name),
                    q(c, "BEGIN"), q(c, f"PREPARE {spelled} AS SELECT 2"),
                    q(c, f"EXECUTE {spelled}"), q(c, "SAVEPOINT s"),
                    batch(c, parse_msg(name[:-1] + "z", "SELECT 3") + sync_msg()),
                    q(c, "ROLLBACK TO s"), q(c, f"DEALLOCATE {spelled}"), q(c, "ROLLBACK"), batch(c, close_msg("S", name) + sync_msg())]
    return out


def parse_of_a_taken_name_then_its_close_in_one_batch(c):
    """The Parse fails (42P05: the client has the name) and the server skips the Close (or SQL
    DEALLOCATE, DISCARD ALL, DEALLOCATE ALL) after it. sluice had dropped the name from the client's records as it framed the
    Close, so the error, which comes later, named the statement by sluice's name
    (sluice_<hash>)."""
    return [batch(c, parse_msg("x", "SELECT 1") + sync_msg()),
            batch(c, parse_msg("x", "SELECT 2") + close_msg("S", "x") + sync_msg()),
            bind_run(c, "x"),
            batch(c, parse_msg("x", "SELECT 3") + close_msg("S", "x") + close_msg("S", "x")
                  + parse_msg("x", "SELECT 4") + bind_msg("", "x") + execute_msg() + sync_msg()),
            bind_run(c, "x"),
            # a DEALLOCATE of it after the failed Parse, as the Close (skipped too)
            batch(c, parse_msg("y", "SELECT 5") + sync_msg()),
            batch(c, parse_msg("y", "SELECT 6") + query_msg("DEALLOCATE y") + sync_msg()),
            bind_run(c, "y"),
            # a name longer than the 63 bytes Postgres keys (sluice's name for it padded)
            batch(c, parse_msg("l" * 70, "SELECT 7") + sync_msg()),
            batch(c, parse_msg("l" * 70, "SELECT 8") + close_msg("S", "l" * 70) + sync_msg()),
            bind_run(c, "l" * 70),
            # a DISCARD ALL (or DEALLOCATE ALL) after the failed request takes every name away
            batch(c, parse_msg("z", "SELECT 9") + sync_msg()),
            batch(c, parse_msg("z", "SELECT 10") + query_msg("DISCARD ALL") + sync_msg()),
            batch(c, bind_msg("", "z", ["1"]) + query_msg("DEALLOCATE ALL") + sync_msg()),
            bind_run(c, "z")]



def drops_sent_by_parse_run_at_their_execute(c):
    """A DEALLOCATE, DEALLOCATE ALL or DISCARD ALL sent by Parse runs at each Execute of a
    portal bound from it, not at the Parse: sluice dropped the statement from its records at
    the Parse (the next Bind of it then failed with 26000, or a later Parse of its name with
    42P05), and a named Parse's DEALLOCATE of the client's statement reached the backend with
    the client's name, which it does not have there (26000 where Postgres drops it)."""
    run = bind_msg("", "") + execute_msg()
    return [batch(c, parse_msg("a", "SELECT 1") + sync_msg()),
            # parsed, never run: a stays
            batch(c, parse_msg("d", "DEALLOCATE a") + sync_msg()), bind_run(c, "a"),
            q(c, "EXECUTE a"), batch(c, parse_msg("", "DEALLOCATE a") + describe_msg("S", "")
                                     + bind_msg("", "a") + execute_msg() + sync_msg()),
            # run twice: the second finds a gone (26000), as a Parse of a new a then succeeds
            bind_run(c, "d"), bind_run(c, "a"), bind_run(c, "d"),
            batch(c, parse_msg("a", "SELECT 2") + sync_msg()), bind_run(c, "a"),
            # bound, not executed, then executed by a named portal, twice
            batch(c, bind_msg("", "d") + bind_msg("", "a") + execute_msg() + sync_msg()),
            batch(c, bind_msg("p", "d") + describe_msg("P", "p") + bind_msg("", "a")
                  + execute_msg() + message(b"E", b"p\0" + struct.pack("!i", 0))
                  + bind_msg("", "a") + execute_msg()
                  + message(b"E", b"p\0" + struct.pack("!i", 0)) + sync_msg()),
            batch(c, parse_msg("a", "SELECT 3") + sync_msg()),
            # an error earlier in the batch skips the Execute; a failed transaction refuses it;
            # a rolled back one does not undo it
            batch(c, parse_msg("", "SELECT 1/0") + run + bind_msg("", "d") + execute_msg()
                  + sync_msg()), bind_run(c, "a"),
            q(c, "BEGIN"), q(c, "SELECT 1/0"), bind_run(c, "d"), q(c, "ROLLBACK"),
            bind_run(c, "a"), q(c, "BEGIN"), bind_run(c, "d"), q(c, "ROLLBACK"), bind_run(c, "a"),
            # Parse, Bind and Execute in one batch, then a use of the name there
            batch(c, parse_msg("a", "SELECT 4") + sync_msg()),
            batch(c, parse_msg("", "DEALLOCATE PREPARE a") + run + bind_msg("", "a")
                  + execute_msg() + sync_msg()), bind_run(c, "a"),
            # ALL: the statement that drops them all goes too
            batch(c, parse_msg("a", "SELECT 5") + parse_msg("all", "DEALLOCATE ALL")
                  + parse_msg("discard", "DISCARD ALL") + sync_msg()),
            bind_run(c, "a"), bind_run(c, "all"), bind_run(c, "a"), bind_run(c, "discard"),
            batch(c, parse_msg("a", "SELECT 6") + sync_msg()), bind_run(c, "a")]


def deallocate_sent_by_parse_with_parameter_types(c):
    """A named Parse of DEALLOCATE a that declares parameter types: Postgres checks the Bind's
    parameters against them. sluice bound a text of its own without the types: a Bind with
    the declared count failed (08P01 naming sluice's name) and left a, and one without
    parameters ran the DEALLOCATE that Postgres refuses."""
    return [batch(c, parse_msg("a", "SELECT 1") + sync_msg()),
            batch(c, parse_msg("d", "DEALLOCATE a", [23]) + sync_msg()),
            batch(c, bind_msg("", "d", ["5"]) + execute_msg() + sync_msg()), bind_run(c, "a"),
            batch(c, parse_msg("a", "SELECT 2") + sync_msg()),
            batch(c, bind_msg("", "d") + execute_msg() + sync_msg()), bind_run(c, "a")]


def deallocate_by_parse_drops_the_statement_of_that_name_at_its_execute(c):
    """Postgres looks up the statement a DEALLOCATE a sent by Parse drops at its Execute.
    sluice fixed it earlier: at the Bind of a named statement, at the Parse of the unnamed one
    (whose text got sluice's name for the a of then). A client that closed a and prepared it
    again with another text before the Execute got 26000 (inside BEGIN its COMMIT became
    ROLLBACK) and kept the new a, which a later Bind ran; one that closed a and did not prepare
    it again had its DEALLOCATE succeed; one that sent the DEALLOCATE before it prepared a got
    26000 and kept a."""
    run_p = message(b"E", b"p\0" + struct.pack("!i", 0))
    return [batch(c, parse_msg("a", "SELECT 1") + sync_msg()),
            # unnamed: prepared again with another text between the Parse and the Execute
            batch(c, parse_msg("", "DEALLOCATE a") + close_msg("S", "a")
                  + parse_msg("a", "SELECT 2") + bind_msg("", "") + execute_msg() + sync_msg()),
            bind_run(c, "a"),
            # the same inside BEGIN, over several batches
            q(c, "BEGIN"), batch(c, parse_msg("a", "SELECT 3") + sync_msg()),
            batch(c, parse_msg("", "DEALLOCATE a") + sync_msg()),
            batch(c, close_msg("S", "a") + parse_msg("a", "SELECT 4") + sync_msg()),
            batch(c, bind_msg("", "") + execute_msg() + sync_msg()), q(c, "COMMIT"),
            bind_run(c, "a"),
            # a named portal bound from a named statement
            batch(c, parse_msg("a", "SELECT 5") + parse_msg("d", "DEALLOCATE a") + sync_msg()),
            q(c, "BEGIN"), batch(c, bind_msg("p", "d") + sync_msg()),
            batch(c, close_msg("S", "a") + parse_msg("a", "SELECT 6") + sync_msg()),
            batch(c, run_p + sync_msg()), q(c, "COMMIT"), bind_run(c, "a"),
            # sent before a exists
            batch(c, parse_msg("", "DEALLOCATE a") + parse_msg("a", "SELECT 7")
                  + bind_msg("", "") + execute_msg() + sync_msg()), bind_run(c, "a"),
            q(c, "BEGIN"), batch(c, parse_msg("", "DEALLOCATE a") + sync_msg()),
            batch(c, parse_msg("a", "SELECT 8") + sync_msg()),
            batch(c, bind_msg("", "") + execute_msg() + sync_msg()), q(c, "COMMIT"),
            bind_run(c, "a"),
            # named, bound before a exists
            q(c, "BEGIN"), batch(c, bind_msg("p", "d") + sync_msg()),
            batch(c, parse_msg("a", "SELECT 9") + sync_msg()),
            batch(c, run_p + sync_msg()), q(c, "COMMIT"), bind_run(c, "a"),
            # closed and not prepared again: 26000
            batch(c, parse_msg("a", "SELECT 10") + sync_msg()),
            batch(c, parse_msg("", "DEALLOCATE a") + close_msg("S", "a") + bind_msg("", "")
                  + execute_msg() + sync_msg()),
            q(c, "BEGIN"), batch(c, parse_msg("a", "SELECT 11") + sync_msg()),
            batch(c, bind_msg("p", "d") + sync_msg()),
            batch(c, close_msg("S", "a") + sync_msg()),
            batch(c, run_p + sync_msg()), q(c, "ROLLBACK"), bind_run(c, "a")]


def deallocate_after_other_statements_in_one_query(c):
    """A DEALLOCATE after another statement in the same Query: sluice looked at the first
    statement only, so the backend got the client's name, answered 26000 (the statements before
    it rolled back with it), and the client kept a; Postgres drops it."""
    return [batch(c, parse_msg("a", "SELECT 1") + sync_msg()),
            q(c, "SELECT 1; DEALLOCATE a"), bind_run(c, "a"),
            batch(c, parse_msg("a", "SELECT 2") + sync_msg()),
            q(c, "SELECT ';' AS x /* ; */; -- ;\n DEALLOCATE PREPARE a"), bind_run(c, "a"),
            batch(c, parse_msg("a", "SELECT 3") + sync_msg()),
            # an error before it skips it: a stays
            q(c, "SELECT 1/0; DEALLOCATE a"), bind_run(c, "a"),
            q(c, "BEGIN"), q(c, "SELECT 1; DEALLOCATE a; SELECT 2"), q(c, "ROLLBACK"),
            bind_run(c, "a"), batch(c, parse_msg("a", "SELECT 4") + sync_msg()),
            q(c, "SELECT 1; DEALLOCATE ALL"), bind_run(c, "a"),
            batch(c, parse_msg("a", "SELECT 6") + sync_msg()),
            q(c, "BEGIN; DEALLOCATE a; COMMIT"), bind_run(c, "a"),
            # the second is not followed: it fails, and the first stays done, as on Postgres
            batch(c, parse_msg("a", "SELECT 7") + sync_msg()),
            q(c, "SELECT 1; DEALLOCATE a; DEALLOCATE a"), bind_run(c, "a"),
            # a name the client does not hold is the backend's own
            q(c, "SELECT 1; DEALLOCATE b"), q(c, "PREPARE b AS SELECT 5; DEALLOCATE b"),
            q(c, "EXECUTE b")]


def sql_names_longer_than_their_key_get_the_notice(c):
    """Postgres truncates a SQL name longer than 63 bytes with a NOTICE (42622 identifier ...
    will be truncated to ...). sluice wrote its own name in place of the client's statement's,
    and the NOTICE never came; now the name's rest follows sluice's name, which the server
    truncates, and the NOTICE names the client's statement as Postgres's does."""
    out = []
    for name, spelled in [("n" * 70, "N" * 35 + "n" * 35), ('q"' * 40, '"' + 'q""' * 40 + '"'),
                          ("Ab" * 40, '"' + "Ab" * 40 + '"')]:
        out += [batch(c, parse_msg(name, "SELECT 1") + sync_msg()), q(c, f"EXECUTE {spelled}"),
                q(c, f"EXPLAIN EXECUTE {spelled}"),
                batch(c, parse_msg("", f"EXECUTE {spelled}") + bind_msg("", "") + execute_msg()
                      + sync_msg()),
                q(c, f"PREPARE {spelled} AS SELECT 2"),
                batch(c, parse_msg("", f"DEALLOCATE {spelled}") + sync_msg()),
                q(c, f"DEALLOCATE {spelled}"), q(c, f"DEALLOCATE {spelled}"), bind_run(c, name)]
    return out


def texts_whose_parse_raises_a_notice(c):
    """Postgres raises 42622 as it parses a text with an identifier of 64 bytes or more: at the
    client's Parse. sluice's own Parse of the text on a backend that lacks it (another one,
    each time here with HoppingBackends) raised it again, before the Bind's BindComplete."""
    long = "c" * 70
    return [batch(c, parse_msg("x", f"SELECT 1 AS {long}") + sync_msg()), bind_run(c, "x"),
            bind_run(c, "x"), batch(c, describe_msg("S", "x") + sync_msg()),
            batch(c, parse_msg("", f"SELECT 2 AS {long}") + bind_msg("", "") + execute_msg()
                  + bind_msg("", "x") + execute_msg() + sync_msg()),
            q(c, f"SELECT 3 AS {long}"), q(c, "EXECUTE x"),
            # a NOTICE of the client's Execute right before that Parse of sluice's is the client's
            batch(c, parse_msg("", "DO $$ BEGIN RAISE NOTICE USING ERRCODE = '42622', MESSAGE = "
                               "'mine'; END $$") + bind_msg("", "") + execute_msg()
                  + bind_msg("", "x") + execute_msg() + sync_msg())]


def every_statement_of_a_query_is_followed(c):
    """An EXECUTE after another statement in one Query, a second DEALLOCATE, and a DEALLOCATE
    after a literal holding a backslash: sluice followed only the first EXECUTE or DEALLOCATE of
    a Query, and none after such a literal. The client's statement then reached the backend
    under its own name: 26000 where Postgres runs it, or a dropped statement sluice still
    thought prepared (42P05 at the next Parse of its name)."""
    return [batch(c, parse_msg("a", "SELECT 1") + parse_msg("b", "SELECT 2") + sync_msg()),
            q(c, "SELECT 1; EXECUTE a"), q(c, "SELECT 0; EXECUTE a; EXECUTE b; EXECUTE a"),
            q(c, "DEALLOCATE a; DEALLOCATE b"), bind_run(c, "a"), bind_run(c, "b"),
            batch(c, parse_msg("a", "SELECT 3") + parse_msg("b", "SELECT 4") + sync_msg()),
            # after a DEALLOCATE the name is the backend's own, as on Postgres (26000)
            q(c, "EXECUTE a; DEALLOCATE a; EXECUTE a"), bind_run(c, "a"), bind_run(c, "b"),
            q(c, "EXECUTE b; DEALLOCATE b; PREPARE b AS SELECT 40; EXECUTE b; DEALLOCATE b"),
            batch(c, parse_msg("a", "SELECT 5") + parse_msg("b", "SELECT 6") + sync_msg()),
            # literals with a backslash, read as the session reads them
            q(c, r"SELECT E'\\'''; DEALLOCATE a"), bind_run(c, "a"),
            batch(c, parse_msg("a", "SELECT 7") + sync_msg()),
            q(c, r"SELECT '\'; EXECUTE a; DEALLOCATE a"), bind_run(c, "a"),
            batch(c, parse_msg("a", "SELECT 8") + sync_msg()),
            q(c, r"SELECT 'x\', E'\';'; EXECUTE b; DEALLOCATE b"), bind_run(c, "b"),
            batch(c, parse_msg("b", "SELECT 9") + sync_msg()),
            q(c, "SET standard_conforming_strings = off"),
            q(c, r"SELECT 'it\'s'; EXECUTE a; DEALLOCATE a"), bind_run(c, "a"),
            q(c, r"SELECT '\\'; DEALLOCATE b"), bind_run(c, "b"),
            q(c, "RESET standard_conforming_strings"),
            batch(c, parse_msg("b", "SELECT 11") + sync_msg()),
            q(c, r"SELECT 'c:\'; DEALLOCATE b"), bind_run(c, "b"),
            # a text Postgres refuses whole runs none of its statements
            batch(c, parse_msg("a", "SELECT 10") + sync_msg()),
            q(c, "DEALLOCATE a; SELEC 1"), bind_run(c, "a"), q(c, "EXECUTE a; SELECT 'x"),
            bind_run(c, "a")]


def five_portals_bound_from_deallocate_in_one_transaction(c):
    """Each portal bound from a DEALLOCATE drops its statement at its Execute. sluice kept four
    such portals per server: a fifth's drop applied at its Bind (undone at the Sync), and its
    Execute, no longer followed, left a statement sluice still thought prepared."""
    n = 6
    out = [batch(c, b"".join(parse_msg(f"a{i}", f"SELECT {i}")
                             + parse_msg(f"d{i}", f"DEALLOCATE a{i}") for i in range(n))
                 + sync_msg()),
           q(c, "BEGIN"),
           batch(c, b"".join(bind_msg(f"p{i}", f"d{i}") for i in range(n)) + sync_msg()),
           bind_run(c, f"a{n - 1}"),
           batch(c, b"".join(execute_msg(f"p{i}") for i in range(n)) + sync_msg()),
           q(c, "COMMIT")]
    for i in range(n):
        out += [bind_run(c, f"a{i}"), batch(c, parse_msg(f"a{i}", "SELECT 99") + sync_msg()),
                bind_run(c, f"a{i}")]
    return out


def deallocate_by_parse_of_a_statement_closed_and_its_text_prepared_by_another_name(c):
    """The unnamed Parse of DEALLOCATE a, then a closed and its text prepared as b: Postgres's
    26000 at the Execute names a, the statement the DEALLOCATE names; sluice's named b (the
    server's name for the text is b's now)."""
    return [batch(c, parse_msg("a", "SELECT 1") + sync_msg()),
            batch(c, parse_msg("", "DEALLOCATE a") + close_msg("S", "a")
                  + parse_msg("b", "SELECT 1") + bind_msg("", "") + execute_msg() + sync_msg()),
            bind_run(c, "b"), bind_run(c, "a")]



def statements_of_a_query_after_a_drop_in_a_pipeline_and_a_block(c):
    """The same behind a DEALLOCATE, in a Query pipelined inside an extended batch, and in a
    transaction block."""
    return [batch(c, parse_msg("a", "SELECT 1") + parse_msg("b", "SELECT 2") + sync_msg()),
            q(c, "DEALLOCATE a; EXECUTE b; DEALLOCATE b"), bind_run(c, "a"), bind_run(c, "b"),
            batch(c, parse_msg("a", "SELECT 1") + parse_msg("b", "SELECT 2") + sync_msg()),
            batch(c, bind_msg("", "a") + execute_msg()
                  + query_msg("DEALLOCATE a; EXECUTE b; SELECT 3") + bind_msg("", "b")
                  + execute_msg() + sync_msg(), 2),
            q(c, "BEGIN"), q(c, "EXECUTE b; DEALLOCATE b; EXECUTE b"), q(c, "ROLLBACK"),
            bind_run(c, "b"), bind_run(c, "a")]


SCENARIOS = [sql_prepare_then_parse_in_a_transaction, sql_prepare_then_parse_in_one_pipeline,
             parse_then_sql_prepare, sql_prepared_statement_used_by_protocol_in_its_transaction,
             sql_deallocate_then_parse, deallocate_all_and_discard_all_drop_protocol_statements,
             names_that_are_not_valid_text, long_names_cut_inside_a_character,
             names_that_never_end, careless_pipelines,
             sql_statements_by_unnamed_parse_in_a_transaction,
             long_names_cut_inside_a_character_in_messages_larger_than_the_buffer,
             drops_that_fail_keep_sql_statements, long_sql_names_cut_at_a_whole_character,
             unnamed_executes_of_a_statement_closed_or_prepared_again,
             parse_of_a_taken_name_then_its_close_in_one_batch,
             drops_sent_by_parse_run_at_their_execute,
             deallocate_sent_by_parse_with_parameter_types,
             deallocate_by_parse_drops_the_statement_of_that_name_at_its_execute,
             deallocate_after_other_statements_in_one_query,
             sql_names_longer_than_their_key_get_the_notice,
             texts_whose_parse_raises_a_notice, every_statement_of_a_query_is_followed,
             five_portals_bound_from_deallocate_in_one_transaction,
             deallocate_by_parse_of_a_statement_closed_and_its_text_prepared_by_another_name,
             statements_of_a_query_after_a_drop_in_a_pipeline_and_a_block]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[f.__name__ for f in SCENARIOS])
def test_a_client_sees_what_postgres_shows_it(pg, start_sluice, scenario, workers):
    assert_sluice_shows_what_postgres_shows(pg, start_sluice, workers, scenario)


def assert_sluice_shows_what_postgres_shows(pg, start_sluice, workers, scenario, main=None,
                                            **login):
    """Run scenario(conn) on a direct connection and one through sluice (transaction mode;
    main: more [sluice] keys): every step's answer the same."""
    conf = {"pool_mode": "transaction", "default_pool_size": 2, "workers": workers}
    conf.update(main or {})
    s = start_sluice(conf)
    direct = raw_login(pg.port, password="apppass", **login)
    pooled = raw_login(s.port, **login)
    try:
        expected, seen = scenario(direct), scenario(pooled)
        diffs = [f"step {i}:\n  postgres {x}\n  sluice   {y}"
                 for i, (x, y) in enumerate(zip(expected, seen)) if x != y]
        assert not diffs, "\n".join(diffs)
    finally:
        direct.close()
        pooled.close()


def latin1_names(c):
    """A LATIN1 client's short non-ASCII names, by protocol and by unquoted SQL (Postgres reads
    every byte of a non-ASCII character as an identifier byte)."""
    name = "café".encode("latin-1")
    sql = lambda text: message(b"Q", text + b"\0")  # noqa: E731
    return [batch(c, raw_parse(name, b"SELECT 1") + sync_msg()), batch(c, raw_bind_run(name)),
            batch(c, sql(b"EXECUTE " + name)), batch(c, sql(b"EXECUTE CAF\xc9")),
            batch(c, sql(b"DEALLOCATE " + name)), batch(c, raw_bind_run(name))]


def latin1_long_sql_names(c):
    """A LATIN1 name whose UTF-8 form is 63 bytes or more: Postgres keys a SQL name at its last
    whole character within 63 bytes of UTF-8, a protocol name at 63 bytes of UTF-8."""
    sql = lambda text: message(b"Q", text + b"\0")  # noqa: E731
    out = []
    for name in (b"\xe9" * 40, b"a" + b"\xe9" * 31, b"ab" + b"\xe9" * 31):
        sql_key = name[:31] if name[0] == 0xe9 else name[:32] if name[1] == 0xe9 else name[:32]
        for spelled in (name, b'"' + name + b'"'):
            out += [batch(c, raw_parse(name, b"SELECT 1") + sync_msg()),
                    batch(c, sql(b"EXECUTE " + spelled)), q(c, "BEGIN"),
                    batch(c, sql(b"PREPARE " + spelled + b" AS SELECT 2")),
                    batch(c, sql(b"EXECUTE " + sql_key)), q(c, "SAVEPOINT s"),
                    batch(c, raw_parse(sql_key, b"SELECT 3") + sync_msg()),
                    q(c, "ROLLBACK TO s"), batch(c, sql(b"DEALLOCATE " + spelled)),
                    q(c, "ROLLBACK"), batch(c, raw_bind_run(name)),
                    batch(c, message(b"C", b"S" + name + b"\0") + sync_msg())]
    return out


def latin1_long_protocol_names(c):
    """A LATIN1 name's key on a UTF8 database is its first 63 bytes once converted (each
    character from 0x80 up is two bytes of UTF-8), cut wherever they end: names of fewer than 63
    LATIN1 bytes may share it, and names of more may differ within their first 63 bytes and
    still share it. The second Parse of such a pair gets 42P05, and a Bind of either runs the
    first's statement."""
    out = []
    pairs = [(b"\xe9" * 40, b"\xe9" * 35 + b"zzzzz"),             # under 63 bytes as sent
             (b"\xe9" * 50 + b"a" * 20, b"\xe9" * 50 + b"b" * 20),  # over 63, differ past 32
             (b"a" * 61 + b"\xe9" + b"x", b"a" * 61 + b"\xe9" + b"y"),  # cut after a whole char
             (b"\xe9" * 31 + b"\xe0", b"\xe9" * 31 + b"\xe0zz"),     # cut inside the 32nd
             (b"\xe9" * 31 + b"\xa1", b"\xe9" * 31 + b"\xe0"),      # 0xA1 is C2 A1: two keys
             (b"a" * 61 + b"\xe9", b"a" * 61 + b"\xe9q")]            # 63 bytes, whole or not
    for first, second in pairs:
        out += [batch(c, raw_parse(first, b"SELECT 1") + sync_msg()),
                batch(c, raw_parse(second, b"SELECT 2") + sync_msg()),
                batch(c, raw_bind_run(second)), batch(c, raw_bind_run(first)),
                batch(c, message(b"D", b"S" + second + b"\0") + sync_msg()),
                batch(c, message(b"C", b"S" + second + b"\0") + sync_msg()),
                batch(c, raw_bind_run(first)),
                batch(c, raw_parse(second, b"SELECT $1::int") + sync_msg()),
                batch(c, raw_parse(first, b"SELECT 3") + sync_msg()),
                batch(c, message(b"B", b"\0" + first + b"\0" + struct.pack("!HHH", 0, 0, 0))
                      + sync_msg()),
                batch(c, message(b"C", b"S" + first + b"\0") + sync_msg()),
                batch(c, message(b"C", b"S" + second + b"\0") + sync_msg())]
    return out


def latin1_long_protocol_names_in_messages_larger_than_the_buffer(c):
    """The same in a Parse and a Bind that stream through sluice's buffer (pkt_buf): the key of
    the name, shorter than the name, becomes sluice's 63-byte name in the message's start."""
    name, other = b"\xe9" * 40, b"\xe9" * 35 + b"zzzzz"
    pad = b"x" * (200 * 1024)
    value = b"y" * (300 * 1024)

    def big_bind(stmt):
        return (message(b"B", b"\0" + stmt + b"\0" + struct.pack("!HHi", 0, 1, len(value))
                        + value + struct.pack("!H", 0)) + execute_msg() + sync_msg())
    return [batch(c, raw_parse(name, b"SELECT length($1::text) + length('" + pad + b"')")
                  + sync_msg()),
            batch(c, big_bind(name)), batch(c, big_bind(other)),
            batch(c, raw_parse(other, b"SELECT '" + pad + b"'") + sync_msg()),
            batch(c, message(b"C", b"S" + other + b"\0") + sync_msg()), batch(c, big_bind(name))]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_latin1_client_sees_what_postgres_shows_it(pg, start_sluice, workers):
    assert_sluice_shows_what_postgres_shows(
        pg, start_sluice, workers,
        lambda c: (latin1_names(c) + latin1_long_sql_names(c) + latin1_long_protocol_names(c)
                   + latin1_long_protocol_names_in_messages_larger_than_the_buffer(c)),
        client_encoding="LATIN1")


def names_whose_characters_hold_ascii_bytes(encoding):
    """A client in SJIS, BIG5 or GBK, whose characters' second byte may be an ASCII letter
    (SJIS 'ア' is 83 41) or another ASCII byte ('ソ' is 83 5C): Postgres reads an unquoted SQL
    name once converted to the server's encoding, where such a byte is part of its character,
    neither folded to lower case nor ending the name. sluice read it as ASCII, named another
    statement, and the client's EXECUTE and DEALLOCATE got 26000 (and the statement stayed)."""
    def scenario(c):
        sql = lambda text: message(b"Q", text + b"\0")  # noqa: E731
        out = []
        for char in ("ア", "ソ", "許", "ァ"):
            try:
                name = char.encode(encoding)
            except UnicodeEncodeError:
                continue
            out += [batch(c, raw_parse(name, b"SELECT 1") + sync_msg()),
                    batch(c, sql(b"EXECUTE " + name)),
                    batch(c, sql(b"SELECT 0; EXECUTE " + name + b"; EXECUTE \"" + name + b"\"")),
                    batch(c, sql(b"SELECT 1; DEALLOCATE " + name)), batch(c, raw_bind_run(name))]
        if encoding == "shift_jis":
            # a half-width katakana (B1) is one byte: what follows it is not part of it
            kana = "ｱ".encode(encoding)
            out += [batch(c, raw_parse(kana + b"b", b"SELECT 2") + raw_parse(kana, b"SELECT 3")
                          + raw_parse(b"a", b"SELECT 4") + sync_msg()),
                    batch(c, sql(b"EXECUTE " + kana + b"B; EXECUTE " + kana + b";SELECT 1")),
                    batch(c, sql(b"SELECT E'" + kana + b"\\\\'; DEALLOCATE a")),
                    batch(c, raw_bind_run(b"a"))]
        return out
    return scenario


@pytest.mark.parametrize("encoding", ["SJIS", "BIG5", "GBK"])
def test_a_client_in_an_encoding_with_ascii_second_bytes_sees_what_postgres_shows(
        pg, start_sluice, encoding):
    codec = {"SJIS": "shift_jis", "BIG5": "big5", "GBK": "gbk"}[encoding]
    assert_sluice_shows_what_postgres_shows(pg, start_sluice, 1,
                                            names_whose_characters_hold_ascii_bytes(codec),
                                            client_encoding=encoding)


def one_text_in_two_encodings(latin1, utf8):
    """The same bytes (C3 A9) as a LATIN1 client's text ('Ã©') and a UTF8 client's ('é'): two
    statements on Postgres, each client reading its own back; through sluice too, with both
    clients on one server, whichever prepared it first there. Each client's name is also
    prepared in the other's encoding, with a long name (the text after the name's rest)."""
    text = b"SELECT '\xc3\xa9' AS x"
    long_name = b"n" * 70
    return [batch(latin1, raw_parse(b"x", text) + sync_msg()),
            batch(utf8, raw_parse(b"y", text) + sync_msg()),
            batch(latin1, raw_bind_run(b"x")), batch(utf8, raw_bind_run(b"y")),
            batch(utf8, raw_parse(long_name, text) + sync_msg()),
            batch(latin1, raw_parse(long_name, text) + sync_msg()),
            batch(utf8, raw_bind_run(long_name)), batch(latin1, raw_bind_run(long_name)),
            batch(latin1, raw_bind_run(b"x")), batch(utf8, raw_bind_run(b"y"))]


def test_one_text_sent_in_two_encodings_is_two_statements(pg, start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "workers": 1})
    seen = {}
    for where, port, login in (("postgres", pg.port, {"password": "apppass"}),
                               ("sluice", s.port, {})):
        latin1 = raw_login(port, client_encoding="LATIN1", **login)
        utf8 = raw_login(port, **login)
        try:
            seen[where] = one_text_in_two_encodings(latin1, utf8)
        finally:
            latin1.close()
            utf8.close()
    assert seen["sluice"] == seen["postgres"]


def test_a_pipelined_parse_of_one_text_is_one_statement_per_encoding(pg, start_sluice):
    """Two UTF8 clients each send a non-ASCII statement second in a batch (behind another Parse
    the server has not answered yet): nothing before it in the batch can change
    client_encoding, so both are read in UTF8 and share one statement on their server. A
    LATIN1 client's Parse of the same bytes, and one behind a pipelined SET client_encoding
    (which the server runs before it reads the Parse), are other statements: each client reads
    its own text back, as on Postgres."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "workers": 1})
    text = b"SELECT '\xc3\xa9' AS x"

    def pipelined(c, name):
        return batch(c, raw_parse(b"a_" + name, b"SELECT 1") + raw_parse(name, text)
                     + raw_bind_run(name))

    def set_then_parse(c, name, encoding):
        return batch(c, raw_parse(b"", b"SET client_encoding TO " + encoding)
                     + raw_bind_run(b"")[:-5] + raw_parse(name, text) + raw_bind_run(name))

    seen = {}
    for where, port, login in (("postgres", pg.port, {"password": "apppass"}),
                               ("sluice", s.port, {})):
        conns = [raw_login(port, **login), raw_login(port, **login),
                 raw_login(port, client_encoding="LATIN1", **login), raw_login(port, **login)]
        try:
            u1, u2, latin1, switching = conns
            seen[where] = [pipelined(u1, b"u1"), pipelined(u2, b"u2"), pipelined(latin1, b"l1"),
                           set_then_parse(switching, b"s1", b"LATIN1"),
                           batch(switching, raw_bind_run(b"s1")),
                           set_then_parse(switching, b"s2", b"UTF8"),
                           pipelined(u1, b"u3"), batch(u2, raw_bind_run(b"u1"))]
            if where == "sluice":  # one backend: count its statements of each text
                rows = q(u1, "SELECT statement, count(*) FROM pg_prepared_statements "
                             "WHERE statement LIKE 'SELECT ''%' GROUP BY 1 ORDER BY 1")
        finally:
            for c in conns:
                c.close()
    assert seen["sluice"] == seen["postgres"]
    # 'é' of the UTF8 clients (u1, u2, u3, and s2 after its SET back to UTF8) is one statement
    # but for s2's, whose Parse passed behind the SET; 'Ã©' of the LATIN1 reading, l1's and
    # s1's, likewise.
    assert rows[1:-2] == [("D", ("SELECT 'Ã©' AS x".encode(), b"2")),
                          ("D", ("SELECT 'é' AS x".encode(), b"2"))], rows


class HoppingBackends:
    """A client through sluice that lands on the other backend at each of its requests made
    while it is idle: before each, the helper that holds no backend takes the idle one the
    client used last (the pool hands out the one released latest), then the other helper lets
    its own go. Inside a transaction block the client keeps its backend, as it must."""

    def __init__(self, conn, helpers):
        self.conn, self.helpers, self.holder, self.idle = conn, helpers, None, True

    def send(self, data):
        if self.idle:
            taker = self.helpers[1] if self.holder is self.helpers[0] else self.helpers[0]
            q(taker, "BEGIN")
            if self.holder is not None:
                q(self.holder, "COMMIT")
            self.holder = taker
        self.conn.send(data)

    def read_message(self):
        t, p = self.conn.read_message()
        if t == "Z":
            self.idle = p == b"I"
        return t, p


# The unnamed statement is sure only within its transaction (docs/pool-modes.md).
HOPPING_SCENARIOS = [f for f in SCENARIOS
                     if f is not unnamed_executes_of_a_statement_closed_or_prepared_again]


@pytest.mark.parametrize("scenario", HOPPING_SCENARIOS, ids=[f.__name__ for f in HOPPING_SCENARIOS])
def test_a_client_on_another_backend_each_time_sees_what_postgres_shows(pg, start_sluice,
                                                                         scenario):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1})
    direct = raw_login(pg.port, password="apppass")
    pooled, helpers = raw_login(s.port), [raw_login(s.port), raw_login(s.port)]
    try:
        hopping = HoppingBackends(pooled, helpers)
        expected, seen = scenario(direct), scenario(hopping)
        diffs = [f"step {i}:\n  postgres {x}\n  sluice   {y}"
                 for i, (x, y) in enumerate(zip(expected, seen)) if x != y]
        assert not diffs, "\n".join(diffs)
        # it did hop
        pid = q(pooled, "SELECT pg_backend_pid()")
        assert pid != q(hopping, "SELECT pg_backend_pid()")
    finally:
        for conn in [direct, pooled] + helpers:
            conn.close()


def more_statements_in_one_query_than_a_server_keeps(c):
    """Each EXECUTE of a Query needs its statement on the server when the Query runs: one
    prepared for a later EXECUTE must not close one an earlier EXECUTE needs, whatever
    max_prepared_statements (2 here) says."""
    names = ["a", "b", "c", "d"]
    return [batch(c, b"".join(parse_msg(n, f"SELECT '{n}'") for n in names) + sync_msg()),
            q(c, "; ".join(f"EXECUTE {n}" for n in names)),
            q(c, "EXECUTE d; EXECUTE c; SELECT 1; EXECUTE b; EXECUTE a; DEALLOCATE c"),
            q(c, "BEGIN; EXECUTE a; EXECUTE b; EXECUTE c; COMMIT")] + [bind_run(c, n) for n in names]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_query_naming_more_statements_than_a_server_keeps(pg, start_sluice, workers):
    assert_sluice_shows_what_postgres_shows(pg, start_sluice, workers,
                                            more_statements_in_one_query_than_a_server_keeps,
                                            main={"max_prepared_statements": 2})


def test_too_many_portals_bound_from_deallocate_fail_the_client(pg, start_sluice):
    """sluice follows every portal bound from a DEALLOCATE until its Execute, up to 1024 at once
    (server.h, SERVER_PORTAL_DROPS_MAX): past that the client is failed with 54000 naming the
    limit, not followed less exactly."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "workers": 1})
    c = raw_login(s.port)
    try:
        assert batch(c, parse_msg("a", "SELECT 1") + parse_msg("d", "DEALLOCATE a")
                     + sync_msg()) == ["1", "1", "ZI"]
        assert q(c, "BEGIN")[-1] == "ZT"
        c.send(b"".join(bind_msg(f"p{i}", "d") for i in range(1025)) + sync_msg())
        seen = []
        while True:
            t, p = c.read_message()
            if t == "E":
                f = parse_fields(p)
                seen.append((f.get("S"), f.get("C"), f.get("M")))
                break
            assert t == "2", (t, p)
        assert seen[0][:2] == ("FATAL", "54000"), seen
        assert "1024 portals" in seen[0][2], seen
    finally:
        c.close()


def test_a_long_query_that_drops_every_statement_leaves_no_client_without_its_own(pg,
                                                                                 start_sluice):
    """A Query larger than pkt_buf streams through sluice, which follows only its first
    statement: a DEALLOCATE ALL further on dropped every statement of the backend, another
    client's too, which sluice still thought prepared there (that client's next Bind: 26000).
    Now a DEALLOCATE or DISCARD anywhere in such a Query, its start or its rest as it streams,
    makes sluice prepare each statement again at its next use on that backend."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "workers": 1})
    x, y = raw_login(s.port), raw_login(s.port)
    try:
        assert batch(x, parse_msg("a", "SELECT 1") + sync_msg()) == ["1", "ZI"]
        for text in ("SELECT 1;" * 3000 + "DEALLOCATE ALL",             # in its streamed rest
                     "SELECT 1; DEALLOCATE ALL;" + "SELECT 1;" * 3000,  # in its start
                     "SELECT 1;" * 3000 + "DEALLOCATE PREPARE ALL; SELECT '" + "x" * 20000 + "'"):
            assert bind_run(x, "a")[-2:] == [("C", "SELECT 1"), "ZI"]
            assert q(y, text)[-1] == "ZI"
            assert bind_run(x, "a")[-2:] == [("C", "SELECT 1"), "ZI"], text[:40]
        # the word split between two reads of the streamed rest
        msg = query_msg("SELECT 1;" * 3000 + "DEALLOCATE ALL")
        cut = msg.index(b"LOCATE ALL")
        assert bind_run(x, "a")[-2:] == [("C", "SELECT 1"), "ZI"]
        y.send(msg[:cut])
        time.sleep(0.3)
        y.send(msg[cut:])
        assert replies(y)[-1] == "ZI"
        assert bind_run(x, "a")[-2:] == [("C", "SELECT 1"), "ZI"]
    finally:
        x.close()
        y.close()
