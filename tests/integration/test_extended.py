"""Extended query protocol (Parse/Bind/Describe/Execute/Sync) through sluice, via psycopg and by
hand, in session and transaction mode."""

import psycopg
import pytest
from psycopg import errors, pq

from pgwire import (bind_msg, describe_msg, execute_msg, parse_data_row, parse_fields, parse_msg,
                    raw_login, sync_msg)

MODES = ["session", "transaction"]


@pytest.mark.parametrize("mode", MODES)
def test_parameterized_queries_return_the_bound_values(start_sluice, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as c:
        row = c.execute("SELECT %s::int + %s::int, %s::text, %s::text IS NULL",
                        [1, 2, "héllo", None]).fetchone()
        assert row == (3, "héllo", True)
        row = c.cursor(binary=True).execute("SELECT %b::bigint * 2, %b::bytea",
                                            [2**40, b"\x00\xff"]).fetchone()
        assert row == (2**41, b"\x00\xff")
        cur = c.cursor()
        cur.executemany("SELECT %s::int", [(i,) for i in range(20)])


@pytest.mark.parametrize("mode", MODES)
def test_large_bind_parameter_round_trips(start_sluice, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    big = "x" * (3 * 1024 * 1024)
    with s.connect() as c:
        assert c.execute("SELECT length(%s::text), md5(%s::text) = md5(repeat('x', 3145728))",
                         [big, big]).fetchone() == (len(big), True)


def test_prepared_statements_are_reused_in_session_mode(start_sluice):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    with s.connect(prepare_threshold=5) as c:
        for i in range(5):
            assert c.execute("SELECT %s::int + 1", [i], prepare=True).fetchone()[0] == i + 1
        n = c.execute("SELECT count(*) FROM pg_prepared_statements"
                      " WHERE statement LIKE 'SELECT $1::int + 1%'").fetchone()[0]
        assert n == 1


@pytest.mark.parametrize("mode", MODES)
def test_pipeline_runs_several_queries_and_returns_each_result(start_sluice, mode, table):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as c:
        c.execute(f"CREATE TABLE {table} (id int, v text)")
        with c.pipeline():
            curs = []
            for i in range(10):
                c.execute(f"INSERT INTO {table} VALUES (%s, %s)", [i, f"v{i}"])
            for i in range(10):
                curs.append(c.execute(f"SELECT v FROM {table} WHERE id = %s", [i]))
            total = c.execute(f"SELECT count(*) FROM {table}")
        assert [cur.fetchone()[0] for cur in curs] == [f"v{i}" for i in range(10)]
        assert total.fetchone()[0] == 10
        assert c.info.transaction_status == pq.TransactionStatus.IDLE


@pytest.mark.parametrize("mode", MODES)
def test_error_inside_a_pipeline_aborts_the_rest_and_the_session_recovers(start_sluice, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2})
    with s.connect() as c, s.connect() as other:
        with pytest.raises(errors.DivisionByZero):
            with c.pipeline():
                c.execute("SELECT 1")
                c.execute("SELECT 1/0")
                c.execute("SELECT 2")
        assert c.info.transaction_status == pq.TransactionStatus.IDLE
        assert c.execute("SELECT 3").fetchone()[0] == 3
        assert other.execute("SELECT 4").fetchone()[0] == 4


@pytest.mark.parametrize("mode", MODES)
def test_describe_reports_column_names_and_types(start_sluice, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as c:
        cur = c.execute("SELECT 1::int4 AS a, 'x'::text AS b, now() AS c")
        assert [d.name for d in cur.description] == ["a", "b", "c"]
        assert [d.type_code for d in cur.description] == [23, 25, 1184]
        # Describe of a named statement, by hand through libpq (one client: one server)
        pgc = c.pgconn
        if mode == "session":
            res = pgc.prepare(b"s_describe", b"SELECT $1::int4 AS n, $2::text AS t")
            assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
            res = pgc.describe_prepared(b"s_describe")
            assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
            assert [res.fname(i) for i in range(res.nfields)] == [b"n", b"t"]
            assert [res.param_type(i) for i in range(res.nparams)] == [23, 25]


def test_raw_extended_protocol_unnamed_statement_with_describe_in_transaction_mode(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    c = raw_login(s.port)
    try:
        c.send(parse_msg("", "SELECT $1::int + 1 AS n", [23]) + bind_msg("", "", ["41"])
               + describe_msg("P", "") + execute_msg("", 0) + sync_msg())
        seen, rows = [], []
        while True:
            mtype, payload = c.read_message()
            seen.append(mtype)
            if mtype == "D":
                rows.append(parse_data_row(payload))
            if mtype == "E":
                raise AssertionError(parse_fields(payload))
            if mtype == "Z":
                assert payload == b"I"
                break
        assert seen == ["1", "2", "T", "D", "C", "Z"], seen
        assert rows == [["42"]]
        # Several Syncs in one write: each gets its own ReadyForQuery.
        batch = b""
        for i in range(3):
            batch += parse_msg("", f"SELECT {i}") + bind_msg("", "") + execute_msg() + sync_msg()
        c.send(batch)
        got = []
        for _ in range(3):
            t, p = c.read_until({"D"})
            got.append(parse_data_row(p)[0])
            c.read_until({"Z"})
        assert got == ["0", "1", "2"]
        rows, _ = c.query("SELECT 'still here'")
        assert rows == [["still here"]]
    finally:
        c.close()


@pytest.mark.parametrize("mode", MODES)
def test_server_errors_pass_through_and_the_session_continues(start_sluice, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as c:
        with pytest.raises(errors.DivisionByZero) as ei:
            c.execute("SELECT 1/0")
        assert ei.value.sqlstate == "22012"
        assert c.execute("SELECT 1").fetchone()[0] == 1
        with pytest.raises(errors.UndefinedTable):
            c.execute("SELECT * FROM no_such_table_here")
        with pytest.raises(errors.SyntaxError):
            c.execute("SELEKT 1")
        # an error inside a transaction: the transaction is failed until ROLLBACK
        c.execute("BEGIN")
        with pytest.raises(errors.DivisionByZero):
            c.execute("SELECT 1/0")
        with pytest.raises(errors.InFailedSqlTransaction):
            c.execute("SELECT 1")
        c.execute("ROLLBACK")
        assert c.execute("SELECT 2").fetchone()[0] == 2
        # notices pass through too
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        assert "hello from plpgsql" in notices


def test_simple_protocol_multi_statement_query_returns_every_result(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    c = raw_login(s.port)
    try:
        rows, tags = c.query("SELECT 1; SELECT 2, 3; SET application_name = 'x'; SELECT 4")
        assert rows == [["1"], ["2", "3"], ["4"]]
        assert tags == ["SELECT 1", "SELECT 1", "SET", "SELECT 1"]
        assert c.last_status == "I"
        rows, _ = c.query("")  # EmptyQueryResponse then ReadyForQuery
        assert rows == []
    finally:
        c.close()


def test_psycopg_client_cursor_and_server_cursor_work_in_session_mode(start_sluice):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    with s.connect(autocommit=False) as c:
        with c.cursor(name="big_cursor") as cur:
            cur.execute("SELECT g FROM generate_series(1, 10000) g")
            total = 0
            while True:
                rows = cur.fetchmany(1000)
                if not rows:
                    break
                total += sum(r[0] for r in rows)
            assert total == 10000 * 10001 // 2
        c.commit()
    with psycopg.connect(s.dsn(), cursor_factory=psycopg.ClientCursor, autocommit=True) as c:
        assert c.execute("SELECT %s::text", ["it's"]).fetchone()[0] == "it's"


def test_transaction_mode_named_prepared_statements_of_clients_sharing_a_server_do_not_collide(
        start_sluice):
    """DESIGN.md: 'named prepared statements are re-prepared on the server a client gets'.
    psycopg names its statements _pg3_0, _pg3_1, ... per connection, so two clients sharing one
    backend both prepare '_pg3_0' with different text (psycopg also prepares automatically
    after 5 runs of a query, so this is what any psycopg app does in transaction mode)."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect(prepare_threshold=5) as a, s.connect(prepare_threshold=5) as b:
        for i in range(4):
            assert a.execute("SELECT %s::int + 1", [i], prepare=True).fetchone()[0] == i + 1
            assert b.execute("SELECT %s::text || '-b'", [str(i)],
                             prepare=True).fetchone()[0] == f"{i}-b"


def test_flush_without_sync_gets_results_and_keeps_the_server_until_sync(start_sluice):
    """Drivers such as JDBC and asyncpg send Flush ('H') and read results before Sync
    (protocol 55.2.3): sluice must pass Flush on and keep the server linked until Sync."""
    from conftest import Background
    from pgwire import message

    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    c = raw_login(s.port)
    try:
        c.send(parse_msg("", "SELECT 7 AS n") + bind_msg("", "") + execute_msg()
               + message(b"H"))
        seen = []
        while "C" not in seen:
            mtype, payload = c.read_message()
            seen.append(mtype)
            assert mtype != "E", parse_fields(payload)
        assert seen == ["1", "2", "D", "C"], seen
        with s.connect() as other:
            q = Background(lambda: other.execute("SELECT 1").fetchone())
            assert not q.wait(0.8), "another client got the server before the Sync"
            c.send(sync_msg())
            mtype, payload = c.read_message()
            assert (mtype, payload) == ("Z", b"I")
            assert q.result(10) == (1,)
    finally:
        c.close()


def test_sync_alone_is_answered_with_ready_for_query(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    c = raw_login(s.port)
    try:
        c.send(sync_msg())
        mtype, payload = c.read_message()
        assert (mtype, payload) == ("Z", b"I")
        rows, _ = c.query("SELECT 'after sync'")
        assert rows == [["after sync"]]
    finally:
        c.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", MODES)
def test_a_20mb_result_row_streams_through(start_sluice, mode, sluice_is_sanitized):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as c:
        n = 20 * 1024 * 1024
        v = c.execute("SELECT repeat('ab', %s)", [n // 2]).fetchone()[0]
        assert len(v) == n and v[:4] == "abab" and v[-2:] == "ab"
        assert c.execute("SELECT 1").fetchone()[0] == 1
    peak = s.peak_rss_kb()
    if not sluice_is_sanitized:
        assert peak < 40 * 1024, f"sluice's peak RSS {peak} kB: a 20 MB row was buffered whole"
