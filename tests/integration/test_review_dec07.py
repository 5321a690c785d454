"""Review of 6fd4976/b9f446a/44e86cb (session settings followed by name) and 3ccfd74 (requests
an idle client gets answered without a server), Postgres as the oracle: the same bytes sent
directly and through sluice, everything the client sees compared."""

import psycopg
import pytest

import pgwire

from test_session_leaks_dec07 import TENANT, setting


# scan.l ends a "--" comment at a CR as at a LF (non_newline is [^\n\r]): what follows the CR
# runs. sluice read the comment on to the next LF, so these SETs were not seen at all, and the
# tenant id stayed on the backend for the next client.
CR_COMMENTS = [
    "SELECT 1; -- c\rSET myapp.tenant_id = '42'",
    "-- c\rSET myapp.tenant_id = '42'",
    "SELECT 1 -- c\r; SET myapp.tenant_id = '42'",
    "SET myapp -- c\r. tenant_id = '42'",
    # longer than pkt_buf: the text streams through, and another reader watches it
    "SELECT 1 /* " + "x" * 40000 + " */; -- c\rSET myapp.tenant_id = '42'",
]


@pytest.mark.parametrize("mode", ["transaction", "statement"])
@pytest.mark.parametrize("statement", CR_COMMENTS, ids=[s[:40] for s in CR_COMMENTS])
def test_a_set_after_a_comment_ended_by_a_cr_never_reaches_the_next_client(start_sluice, pg,
                                                                           mode, statement):
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
        direct.execute(statement)
        assert setting(direct, TENANT) == "42", "Postgres itself does not run the SET"
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as a, s.connect() as b:
        pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        a.execute(statement)
        assert b.execute("SELECT pg_backend_pid()").fetchone()[0] == pid, "one shared backend"
        shown = statement[:60]
        assert setting(b, TENANT) in (None, ""), f"B sees A's tenant after {shown!r}"
        # A keeps its value as in Postgres (a text longer than pkt_buf is one sluice does not
        # follow: docs/pool-modes.md, the backend is reset and A's value not carried)
        if len(statement) < 16384:
            assert setting(a, TENANT) == "42", f"A lost its tenant after {shown!r}"


def answers(port, sql, password=None):
    """The messages (type, payload) Postgres or sluice answers a simple Query with."""
    c = pgwire.raw_login(port, password=password)
    try:
        c.send(pgwire.query_msg(sql))
        got = []
        while True:
            mtype, payload = c.read_message()
            got.append((mtype, payload))
            if mtype == "Z":
                return got
    finally:
        c.close()


# 3ccfd74 answers a Query of blanks and whole comments itself (EmptyQueryResponse). A "--"
# comment ended by a CR is no such Query: Postgres runs the statement after the CR.
@pytest.mark.parametrize("mode", ["transaction", "statement"])
@pytest.mark.parametrize("sql", ["-- c\rSELECT 42", "/* a */ -- b\r;SELECT 42;"])
def test_a_query_after_a_comment_ended_by_a_cr_is_run_not_answered_as_empty(start_sluice, pg,
                                                                            mode, sql):
    direct = answers(pg.port, sql, password="apppass")
    assert [t for t, _ in direct] == ["T", "D", "C", "Z"], direct
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    assert answers(s.port, sql) == direct


# A comment ends a name as a space does: Postgres sets myapp.tenant_id for these. sluice took
# the name for one it cannot read (a DISCARD ALL after the request), and A lost its tenant at its
# next transaction.
@pytest.mark.parametrize("mode", ["transaction", "statement"])
@pytest.mark.parametrize("statement", ["SET myapp.tenant_id/**/= '42'",
                                       "SET myapp.tenant_id--c\n= '42'",
                                       "SET SESSION myapp . tenant_id/* c */TO '42'"])
def test_a_set_of_a_name_a_comment_ends_is_followed_for_its_client(start_sluice, pg, mode,
                                                                    statement):
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
        direct.execute(statement)
        assert setting(direct, TENANT) == "42"
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as a, s.connect() as b:
        a.execute(statement)
        assert setting(b, TENANT) in (None, ""), f"B sees A's tenant after {statement!r}"
        assert setting(a, TENANT) == "42", f"A lost its tenant after {statement!r}"


def exchange(conn, msgs):
    """Send msgs, read to the next ReadyForQuery: the (type, SQLSTATE or payload) seen."""
    conn.send(b"".join(msgs))
    got = []
    while True:
        mtype, payload = conn.read_message()
        if mtype in ("E", "N"):
            got.append((mtype, pgwire.parse_fields(payload).get("C")))
        else:
            got.append((mtype, payload))
        if mtype == "Z":
            return got


# 3ccfd74 answered a Close of the unnamed statement itself (CloseComplete), but the client's
# Parse of it stays on the backend it gets again: its next Bind of the unnamed statement ran the
# statement it had closed, where Postgres answers 26000.
@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_a_close_of_the_unnamed_statement_closes_it_as_postgres_does(start_sluice, pg, mode):
    steps = [[pgwire.parse_msg("", "SELECT 1"), pgwire.sync_msg()],
             [pgwire.close_msg("S", ""), pgwire.sync_msg()],
             [pgwire.bind_msg("", ""), pgwire.execute_msg(), pgwire.sync_msg()]]
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    seen = {}
    for who, port, password in (("direct", pg.port, "apppass"), ("sluice", s.port, None)):
        c = pgwire.raw_login(port, password=password)
        try:
            seen[who] = [exchange(c, msgs) for msgs in steps]
        finally:
            c.close()
    assert seen["direct"][2] == [("E", "26000"), ("Z", b"I")]
    assert seen["sluice"] == seen["direct"]
