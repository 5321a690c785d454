"""The position an error or notice gives (field P, characters of the text from 1) through sluice,
in transaction mode, where sluice sends the client's Query with its prepared statements' names
rewritten to its own (docs/pool-modes.md): the client must get the position in the text it sent,
as Postgres direct gives it, so that psql's '^' points where the error is. Postgres is the oracle.

Found by review: `EXECUTE a; SELECT * FROM nosuchtable` said position 40 through sluice, 26
direct (sluice counted in its rewritten text)."""

import pytest

from pgwire import message, parse_fields, parse_msg, query_msg, raw_login, sync_msg
from test_prepared_oracle import (HoppingBackends, assert_sluice_shows_what_postgres_shows,
                                  read_until_ready)


def position_item(t, p):
    if t in "EN":
        f = parse_fields(p)
        return (t, f.get("C"), f.get("P"))
    return None


def replies(c, n_ready=1):
    """Errors and notices with their position, up to the n_ready-th ReadyForQuery."""
    return read_until_ready(c, n_ready, position_item)


def q(c, sql):
    c.send(query_msg(sql) if isinstance(sql, str) else message(b"Q", sql + b"\0"))
    return replies(c)


def prepare(c, *names):
    c.send(b"".join(message(b"P", n + b"\0SELECT 1\0\0\0") for n in names) + sync_msg())
    return replies(c)


LONG = "a_statement_name_longer_than_sluices_own"


def utf8_positions(c):
    return [prepare(c, b"a", LONG.encode(), "é".encode()),
            q(c, "EXECUTE a; SELECT * FROM nosuchtable"),
            q(c, "EXECUTE a; SELEC 1"),
            q(c, "EXECUTE a; EXECUTE a;\nSELECT nosuchcol"),
            q(c, f"EXECUTE {LONG}; SELECT * FROM nosuchtable"),
            q(c, f'EXECUTE "é"; EXECUTE {LONG}; SELECT \'ü\' FROM nosuchtable'),
            q(c, "SELECT 'ü'; EXECUTE \"é\"; SELECT 'é', nosuchcol"),
            # before the first name, and a Query sluice sends as it is, after one it rewrote
            q(c, "SELEC 1; EXECUTE a"),
            q(c, "SELECT * FROM nosuchtable"),
            # pipelined: each Query's position is its own
            pipelined(c, ["EXECUTE a; SELECT * FROM nosuchtable", "SELECT 1 FROM nosuchtable",
                          f"EXECUTE {LONG}; SELEC 2"]),
            # a DEALLOCATE renamed too, then the name the backend's own
            q(c, "DEALLOCATE a; SELECT * FROM nosuchtable"),
            q(c, "EXECUTE a; SELECT * FROM nosuchtable"),
            # a Query longer than the buffer: its first statement renamed
            q(c, f"EXECUTE {LONG}; SELECT '{'x' * 40000}' FROM nosuchtable"),
            # a notice
            q(c, f"EXECUTE {LONG}; DO $$BEGIN RAISE NOTICE 'hi'; END$$; SELECT 1 FROM nosuchtable")]


def replanned(c):
    """An EXECUTE whose statement is planned again (its table altered) fails with a position in
    the prepared statement's own text, not the Query's: past the end of the text sluice sent, it
    is not moved (it was: 26 became 12)."""
    out = [q(c, "CREATE TABLE replanned (c int)")]
    c.send(parse_msg("a", "SELECT 1, 2, 3, 4, 5, 6, c FROM replanned") + sync_msg())
    out += [replies(c), q(c, "EXECUTE a"), q(c, "ALTER TABLE replanned RENAME c TO d"),
            q(c, "EXECUTE a"), q(c, "DEALLOCATE a"), q(c, "DROP TABLE replanned")]
    return out


def test_a_position_in_a_statement_planned_again_is_not_moved(pg, start_sluice):
    assert_sluice_shows_what_postgres_shows(pg, start_sluice, 1, replanned,
                                            main={"default_pool_size": 1})


def pipelined(c, texts):
    c.send(b"".join(query_msg(t) for t in texts))
    return replies(c, len(texts))


@pytest.mark.parametrize("workers", [1, 2])
def test_error_positions_count_in_the_clients_text(pg, start_sluice, workers):
    assert_sluice_shows_what_postgres_shows(pg, start_sluice, workers, utf8_positions)


def encoded_positions(encoding):
    def scenario(c):
        name = "ア".encode(encoding) if encoding == "shift_jis" else "café".encode(encoding)
        text = "'ソア'" if encoding == "shift_jis" else "'àé'"
        return [prepare(c, name),
                q(c, b"EXECUTE " + name + b"; SELECT " + text.encode(encoding)
                  + b" FROM nosuchtable"),
                q(c, b"SELECT " + text.encode(encoding) + b"; EXECUTE \"" + name
                  + b"\"; SELEC 1")]
    return scenario


@pytest.mark.parametrize("encoding", ["SJIS", "LATIN1"])
def test_error_positions_count_characters_of_the_clients_encoding(pg, start_sluice, encoding):
    codec = {"SJIS": "shift_jis", "LATIN1": "latin-1"}[encoding]
    assert_sluice_shows_what_postgres_shows(pg, start_sluice, 1, encoded_positions(codec),
                                            client_encoding=encoding)


def test_error_positions_after_statements_prepared_again_on_another_backend(pg, start_sluice):
    """Each Query lands on the other backend, where sluice prepares the statements first."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1})
    direct = raw_login(pg.port, password="apppass")
    pooled, helpers = raw_login(s.port), [raw_login(s.port), raw_login(s.port)]

    def scenario(c):
        c.send(parse_msg("a", "SELECT 1") + parse_msg("b", "SELECT 2") + sync_msg())
        return [replies(c), q(c, "EXECUTE a; EXECUTE b; SELECT * FROM nosuchtable"),
                q(c, "EXECUTE b; SELEC 1"), q(c, "EXECUTE a; SELECT 1/0")]
    try:
        hopping = HoppingBackends(pooled, helpers)
        assert scenario(hopping) == scenario(direct)
    finally:
        for conn in [direct, pooled] + helpers:
            conn.close()
