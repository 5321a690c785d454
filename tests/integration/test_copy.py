"""COPY through sluice: large streams both ways with bounded memory, and COPY errors."""

import hashlib
import time

import psycopg
import pytest
from psycopg import errors, pq

from pgwire import copy_data_msg, copy_done_msg, query_msg, raw_login

ROWS = 500_000  # ~53 MB of COPY text
RSS_LIMIT_KB = 40 * 1024


def payload(i):
    return f"{i:08d}" + "abcdefghij" * 9 + f"{i % 97:02d}"  # 100 characters


def copy_in_chunks(rows, chunk_rows=10_000):
    for start in range(1, rows + 1, chunk_rows):
        end = min(start + chunk_rows, rows + 1)
        yield "".join(f"{i}\t{payload(i)}\n" for i in range(start, end)).encode()


def expected_md5(rows):
    h = hashlib.md5()
    for i in range(1, rows + 1):
        if i > 1:
            h.update(b",")
        h.update(f"{i}:{payload(i)}".encode())
    return h.hexdigest()


def assert_rss_bounded(s, sanitized, what):
    peak = s.peak_rss_kb()
    assert peak is not None, "could not read sluice's VmHWM"
    if sanitized:
        return  # ASan's shadow memory and quarantine make RSS meaningless
    assert peak < RSS_LIMIT_KB, (f"sluice's peak RSS reached {peak} kB during {what}: memory is "
                                 f"not bounded while streaming (limit {RSS_LIMIT_KB} kB)")


@pytest.mark.timeout(180)
def test_copy_from_stdin_of_50mb_arrives_whole_with_bounded_memory(start_sluice, table,
                                                                    sluice_is_sanitized):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as c:
        c.execute(f"CREATE TABLE {table} (id int, payload text)")
        sent = 0
        with c.cursor().copy(f"COPY {table} (id, payload) FROM STDIN") as cp:
            for chunk in copy_in_chunks(ROWS):
                cp.write(chunk)
                sent += len(chunk)
        assert sent > 50_000_000
        n, ids, length = c.execute(
            f"SELECT count(*), sum(id), sum(length(payload)) FROM {table}").fetchone()
        assert (n, ids, length) == (ROWS, ROWS * (ROWS + 1) // 2, ROWS * 100)
        md5 = c.execute(f"SELECT md5(string_agg(id || ':' || payload, ',' ORDER BY id))"
                        f" FROM {table}").fetchone()[0]
        assert md5 == expected_md5(ROWS)
        assert c.info.transaction_status == pq.TransactionStatus.IDLE
    assert_rss_bounded(s, sluice_is_sanitized, "a 50 MB COPY FROM STDIN")


@pytest.mark.timeout(180)
def test_copy_to_stdout_of_50mb_arrives_whole_with_bounded_memory(start_sluice,
                                                                  sluice_is_sanitized):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    sql = (f"COPY (SELECT g, repeat(chr(97 + g % 26), 100) FROM generate_series(1, {ROWS}) g)"
           " TO STDOUT")
    want = hashlib.sha256()
    for i in range(1, ROWS + 1):
        want.update(f"{i}\t{chr(97 + i % 26) * 100}\n".encode())
    got = hashlib.sha256()
    nbytes = 0
    with s.connect() as c:
        with c.cursor().copy(sql) as cp:
            for data in cp:
                got.update(data)
                nbytes += len(data)
        assert nbytes > 50_000_000
        assert got.hexdigest() == want.hexdigest(), "COPY TO STDOUT data was altered in transit"
        assert c.execute("SELECT 1").fetchone()[0] == 1
    assert_rss_bounded(s, sluice_is_sanitized, "a 50 MB COPY TO STDOUT")


@pytest.mark.timeout(120)
def test_slow_reader_of_a_large_result_does_not_grow_sluice_memory(start_sluice,
                                                                   sluice_is_sanitized):
    """Backpressure: while the client does not read, sluice must stop reading the server."""
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    c = raw_login(s.port, timeout=30)
    try:
        rows = 400_000  # ~42 MB: far more than the socket buffers between the three processes
        c.send(query_msg(f"COPY (SELECT g, repeat('z', 100) FROM generate_series(1, {rows}) g)"
                         " TO STDOUT"))
        c.read_until({"H"})  # CopyOutResponse
        before = s.rss_kb()
        time.sleep(2)  # the server keeps producing; sluice must not buffer it all
        during = s.rss_kb()
        if not sluice_is_sanitized:
            assert during - before < 30 * 1024, (
                f"sluice RSS grew from {before} kB to {during} kB while its client was not "
                f"reading: no backpressure")
        count = 0
        while True:
            mtype, data = c.read_message()
            if mtype == "d":
                count += 1
            elif mtype == "c":
                break
            else:
                raise AssertionError(f"unexpected {mtype!r} during COPY OUT")
        assert count == rows
        c.read_until({"Z"})
        rows_, _ = c.query("SELECT 'ok'")
        assert rows_ == [["ok"]]
    finally:
        c.close()
    assert_rss_bounded(s, sluice_is_sanitized, "a 42 MB COPY TO STDOUT to a slow reader")


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_copy_from_stdin_with_bad_data_fails_with_22P02_and_the_session_continues(
        start_sluice, table, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2})
    with s.connect() as c, s.connect() as other:
        c.execute(f"CREATE TABLE {table} (id int)")
        with pytest.raises(errors.InvalidTextRepresentation):
            with c.cursor().copy(f"COPY {table} FROM STDIN") as cp:
                cp.write(b"1\n2\nnot-a-number\n")
                for _ in range(50):
                    cp.write(b"3\n" * 1000)
        assert c.info.transaction_status == pq.TransactionStatus.IDLE
        assert c.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
        assert other.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_copy_fail_from_the_client_aborts_the_copy_and_the_session_continues(
        start_sluice, table, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    with s.connect() as c:
        c.execute(f"CREATE TABLE {table} (id int)")

        class Boom(Exception):
            pass

        with pytest.raises((Boom, psycopg.errors.QueryCanceled)):
            with c.cursor().copy(f"COPY {table} FROM STDIN") as cp:
                cp.write(b"1\n2\n")
                raise Boom()  # psycopg sends CopyFail
        assert c.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
        assert c.info.transaction_status == pq.TransactionStatus.IDLE


def test_raw_copy_in_with_many_small_messages_in_transaction_mode(start_sluice, table):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    c = raw_login(s.port)
    try:
        c.query(f"CREATE TABLE {table} (id int)")
        c.send(query_msg(f"COPY {table} FROM STDIN"))
        c.read_until({"G"})
        batch = b"".join(copy_data_msg(f"{i}\n".encode()) for i in range(1, 20001))
        c.send(batch + copy_done_msg())
        _, tags = c.read_results()
        assert tags == ["COPY 20000"]
        rows, _ = c.query(f"SELECT count(*), sum(id) FROM {table}")
        assert rows == [["20000", str(20000 * 20001 // 2)]]
    finally:
        c.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("end", ["done", "fail", "bad_data"])
def test_extended_protocol_copy_in_releases_the_server_in_transaction_mode(
        start_sluice, table, end):
    """libpq's PQexecParams("COPY ... FROM STDIN") sends Parse/Bind/Describe/Execute/Sync, and
    PQputCopyEnd sends CopyDone (or CopyFail) and another Sync. Postgres ignores the first Sync
    (it arrives during copy-in: protocol "COPY Operations") and answers one ReadyForQuery; a
    pooler that counted both would hold the server for ever."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_db_connections": 1, "query_wait_timeout": 5})
    with s.connect() as c:
        c.execute(f"CREATE TABLE {table} (id int)")
    conn = pq.PGconn.connect(s.dsn().encode())
    try:
        assert conn.status == pq.ConnStatus.OK, conn.error_message
        res = conn.exec_params(f"COPY {table} FROM STDIN".encode(), [])
        assert res.status == pq.ExecStatus.COPY_IN, conn.error_message
        conn.put_copy_data(b"1\n2\n" if end != "bad_data" else b"1\nnot-a-number\n")
        conn.put_copy_end(b"client gave up" if end == "fail" else None)
        res = conn.get_result()
        want = pq.ExecStatus.COMMAND_OK if end == "done" else pq.ExecStatus.FATAL_ERROR
        assert res.status == want, conn.error_message
        assert conn.get_result() is None
        assert conn.transaction_status == pq.TransactionStatus.IDLE
        # the one server went back: another client gets it (within query_wait_timeout)
        with s.connect() as other:
            n = other.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        assert n == (2 if end == "done" else 0)
        # and the copying client goes on
        res = conn.exec_params(b"SELECT 42", [])
        assert res.status == pq.ExecStatus.TUPLES_OK and res.get_value(0, 0) == b"42"
    finally:
        conn.finish()
