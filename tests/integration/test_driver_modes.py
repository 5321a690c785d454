"""Real drivers in their less common modes, Postgres as the oracle.

Each program is what a careless but legitimate application does with a real driver: psycopg 3
pipelines with errors in the middle (the driver's own pipeline and libpq's, several Syncs, a SET
and a Parse skipped by an earlier error, then the same name prepared again), executemany in a
pipeline, transactions and savepoints inside a pipeline, server-side cursors, binary bytea of
12 MB, client_encoding changes, notices, reported parameters rolled back with their transaction,
a cancel sent while idle, LISTEN/NOTIFY inside one transaction, binary COPY with a bad row; and
pgjdbc with prepareThreshold=1, reWriteBatchedInserts, autosave=always, binaryTransfer,
setFetchSize cursors (Execute with a row limit) and setQueryTimeout. Each runs once directly
against Postgres and once through sluice, in each pool mode where it should be transparent
(docs/pool-modes.md), and everything it sees is compared: each step's rows or error (class,
SQLSTATE, primary message), the notices and notifications, the reported ParameterStatus values
and the transaction status after each step. In transaction mode two other clients keep running
short transactions meanwhile, so the program's transactions move between backends (what it sees
must not depend on which one it gets).

The xfail tests at the end are differences found this way that need more than a local fix.
"""

import os
import select
import shutil
import subprocess
import threading

import psycopg
import pytest
from psycopg import pq

from conftest import APP_DB, APP_PASSWORD, APP_USER, REPO

REPORTED = ("client_encoding", "DateStyle", "TimeZone", "IntervalStyle",
            "standard_conforming_strings", "application_name")


class Recorder:
    """What one program run sees, in order."""

    def __init__(self, conn):
        self.conn = conn
        self.seen = []
        conn.add_notice_handler(
            lambda d: self.seen.append(("notice", d.severity_nonlocalized, d.sqlstate,
                                        d.message_primary)))
        conn.add_notify_handler(lambda n: self.seen.append(("notify", n.channel, n.payload)))

    def state(self):
        info = self.conn.info
        return (pq.TransactionStatus(info.transaction_status).name,
                tuple((p, info.parameter_status(p)) for p in REPORTED))

    def step(self, label, fn):
        try:
            out = fn()
        except psycopg.Error as e:
            out = ("error", type(e).__name__, e.sqlstate,
                   e.diag.message_primary if e.diag else str(e))
        self.seen.append((label, out, self.state()))
        return out


def rows(cur):
    """A cursor's result as something comparable."""
    if cur.description is None:
        return ("status", cur.statusmessage)
    return ("rows", cur.statusmessage, cur.fetchall())


def result(r):
    """A libpq result as something comparable."""
    return (pq.ExecStatus(r.status).name, r.error_field(pq.DiagnosticField.SQLSTATE),
            r.error_field(pq.DiagnosticField.MESSAGE_PRIMARY),
            [r.fname(i) for i in range(r.nfields)],
            [[r.get_value(j, i) for i in range(r.nfields)] for j in range(r.ntuples)])


def libpq_pipeline(pgconn, batches):
    """libpq's pipeline mode: every batch (a list of functions that queue one request each) is
    sent, each followed by a Sync, before anything is read, so what comes back does not depend
    on timing. Returns every result up to the last Sync's."""
    pgconn.enter_pipeline_mode()
    for batch in batches:
        for send in batch:
            send(pgconn)
        pgconn.pipeline_sync()
    while pgconn.flush() != 0:
        select.select([pgconn.socket], [pgconn.socket], [], 5)
    out, syncs = [], 0
    while syncs < len(batches):
        if pgconn.is_busy():
            select.select([pgconn.socket], [], [], 5)
            pgconn.consume_input()
            continue
        r = pgconn.get_result()
        if r is None:
            continue
        out.append(result(r))
        if r.status == pq.ExecStatus.PIPELINE_SYNC:
            syncs += 1
    pgconn.exit_pipeline_mode()
    return out


class Churn:
    """Two other clients running short transactions until stopped: in transaction mode the
    program's own transactions then land on whichever backend is free."""

    def __init__(self, dsn):
        self.dsn = dsn
        self.stop = threading.Event()
        self.errors = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            conns = [psycopg.connect(self.dsn, autocommit=True) for _ in range(2)]
            i = 0
            while not self.stop.is_set():
                c = conns[i % 2]
                i += 1
                with c.transaction():
                    c.execute("SELECT pg_sleep(0.002)")
            for c in conns:
                c.close()
        except Exception as e:  # reported by __exit__
            self.errors.append(e)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)
        assert not self.errors, self.errors


def run_program(dsn, program, churn):
    with Churn(dsn) if churn else _nothing():
        with psycopg.connect(dsn, autocommit=True) as conn:
            rec = Recorder(conn)
            program(conn, rec)
            return rec.seen


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def drop(pg, *tables):
    with pg.superuser(dbname=APP_DB) as c:
        for t in tables:
            c.execute(f"DROP TABLE IF EXISTS {t}")


def compare(pg, sluice, program, table, churn=False):
    """Run the program against Postgres, then through sluice (each starting without `table`);
    what the program saw must be the same, step by step."""
    drop(pg, table)
    want = run_program(pg.direct_dsn(), program, churn)
    drop(pg, table)
    got = run_program(sluice.dsn(), program, churn)
    drop(pg, table)
    for i, (w, g) in enumerate(zip(want, got)):
        assert g == w, (f"step {i} differs\n postgres: {w}\n   sluice: {g}\n"
                        f"postgres saw:\n" + "\n".join(map(str, want))
                        + "\nsluice saw:\n" + "\n".join(map(str, got)))
    assert len(got) == len(want), f"postgres saw {want}\nsluice saw {got}"
    return want


# ---- psycopg programs ----------------------------------------------------------------------------

def prog_libpq_pipeline_errors(t, mode):
    """An error skips the rest of its batch up to the Sync: a SET of a reported parameter and a
    named Parse there never run, so the SET must not count and the name must be free."""
    def program(conn, rec):
        rec.step("create", lambda: rows(conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY)")))
        rec.step("pipeline", lambda: libpq_pipeline(conn.pgconn, [
            [lambda p: p.send_query_params(b"SELECT 1/0", None),
             lambda p: p.send_query_params(b"SET application_name = 'skipped'", None),
             lambda p: p.send_prepare(b"s1", b"SELECT 1")],
            [lambda p: p.send_query_params(b"SELECT $1::int", [b"2"]),
             lambda p: p.send_query_params(b"SET DateStyle = 'SQL, DMY'", None),
             lambda p: p.send_query_params(f"INSERT INTO {t} VALUES (1), (1)".encode(), None),
             lambda p: p.send_query_params(b"SET application_name = 'skipped too'", None)],
            [lambda p: p.send_query_params(b"SET application_name = 'kept'", None),
             lambda p: p.send_query_params(
                 b"SELECT current_setting('application_name'), current_setting('DateStyle')",
                 None)],
            [lambda p: p.send_prepare(b"s1", b"SELECT $1::int * 11"),
             lambda p: p.send_query_prepared(b"s1", [b"4"]),
             lambda p: p.send_describe_prepared(b"s1")],
        ]))
        rec.step("s1-again", lambda: result(conn.pgconn.exec_prepared(b"s1", [b"5"])))
        rec.step("settings", lambda: rows(conn.execute(
            "SELECT current_setting('application_name'), current_setting('DateStyle')")))
        rec.step("count", lambda: rows(conn.execute(f"SELECT count(*) FROM {t}")))
        rec.step("deallocate", lambda: rows(conn.execute("DEALLOCATE s1")))
        rec.step("s1-gone", lambda: result(conn.pgconn.exec_prepared(b"s1", [b"5"])))
    return program


def prog_pipeline_transaction_error(t, mode):
    def program(conn, rec):
        rec.step("create", lambda: rows(conn.execute(
            f"CREATE TABLE {t} (id int PRIMARY KEY, v text)")))

        def failing_transaction():
            with conn.pipeline():
                with conn.transaction():
                    conn.execute(f"INSERT INTO {t} VALUES (%s, %s)", [1, "a"])
                    conn.execute("SELECT 1/0")
        rec.step("pipeline-txn", failing_transaction)

        def savepoint():
            with conn.pipeline():
                with conn.transaction():
                    conn.execute(f"INSERT INTO {t} VALUES (%s, %s)", [2, "b"])
                    try:
                        with conn.transaction():
                            conn.execute(f"INSERT INTO {t} VALUES (%s, %s)", [2, "dup"])
                    except psycopg.errors.UniqueViolation as e:
                        rec.seen.append(("inner", e.sqlstate))
                    conn.execute(f"INSERT INTO {t} VALUES (%s, %s)", [3, "c"])
        rec.step("pipeline-savepoint", savepoint)
        rec.step("after", lambda: rows(conn.execute(f"SELECT id, v FROM {t} ORDER BY id")))
    return program


def prog_executemany(t, mode):
    def program(conn, rec):
        rec.step("create", lambda: rows(conn.execute(
            f"CREATE TABLE {t} (id int PRIMARY KEY, v text)")))
        cur = conn.cursor()

        def returning():
            cur.executemany(f"INSERT INTO {t} VALUES (%s, %s) RETURNING id",
                            [(i, f"v{i}") for i in range(50)], returning=True)
            got = []
            while True:
                got.extend(cur.fetchall())
                if not cur.nextset():
                    return got
        rec.step("many-returning", returning)

        def duplicate():
            with conn.transaction():
                cur.executemany(f"INSERT INTO {t} VALUES (%s, %s)",
                                [(i, "x") for i in range(100, 120)] + [(5, "dup")]
                                + [(i, "x") for i in range(200, 210)])
        rec.step("many-dup", duplicate)

        def in_pipeline():
            with conn.pipeline():
                cur.executemany(f"INSERT INTO {t} VALUES (%s, %s)",
                                [(i, "p") for i in range(300, 330)])
                cur.execute(f"SELECT count(*) FROM {t}")
            return cur.fetchall()
        rec.step("many-in-pipeline", in_pipeline)
        rec.step("after", lambda: rows(conn.execute(f"SELECT count(*), sum(id) FROM {t}")))
    return program


def prog_server_cursor(t, mode):
    def program(conn, rec):
        def fetch():
            out = []
            with conn.transaction():
                with conn.cursor(name="big") as cur:
                    cur.itersize = 7
                    cur.execute("SELECT g, repeat('x', g) FROM generate_series(1, 50) g")
                    out.append(cur.fetchmany(3))
                    cur.scroll(10)
                    out.append(cur.fetchone())
                    out.extend(cur)
            return out
        rec.step("named-cursor", fetch)
        rec.step("named-outside-txn", lambda: conn.cursor(name="c2").execute("SELECT 1"))
        rec.step("binary-cursor", lambda: rows(conn.cursor(binary=True).execute(
            "SELECT g, g::numeric / 3, g::float8 / 7 FROM generate_series(1, 5) g")))
        rec.step("error-mid-result", lambda: rows(conn.execute(
            "SELECT g, repeat('y', 100000) FROM generate_series(1, 40) g WHERE 1 / (g - 30) <> 7")))
    return program


def prog_big_bytea_binary(t, mode):
    def program(conn, rec):
        big = bytes(range(256)) * (12 * 4096 + 7)  # 12 MB and a bit
        cur = conn.cursor(binary=True)
        rec.step("echo", lambda: (lambda r: (len(r[0]), r[0] == big, r[1]))(
            cur.execute("SELECT %b::bytea, md5(%b::bytea)", [big, big]).fetchone()))
        rec.step("text-out", lambda: (lambda r: (len(r[0]), r[0] == big))(
            conn.execute("SELECT %b::bytea", [big]).fetchone()))
        rec.step("generated", lambda: (lambda r: (len(r[0]), r[1]))(cur.execute(
            "SELECT decode(repeat('ab', 6000000), 'hex') b,"
            " md5(decode(repeat('ab', 6000000), 'hex'))").fetchone()))
    return program


def prog_client_encoding(t, mode):
    def program(conn, rec):
        rec.step("latin1", lambda: rows(conn.execute("SET client_encoding TO 'LATIN1'")))
        rec.step("text", lambda: rows(conn.execute("SELECT 'héllo wörld', %s::text", ["çà"])))
        rec.step("unconvertible", lambda: rows(conn.execute("SELECT U&'\\4E2D'")))

        def in_transaction():
            with conn.transaction():
                return rows(conn.execute("SELECT 'ñ', current_setting('client_encoding')"))
        rec.step("in-txn", in_transaction)
        rec.step("sql_ascii", lambda: rows(conn.execute("SET client_encoding TO 'SQL_ASCII'")))
        rec.step("ascii", lambda: rows(conn.execute("SELECT length('hello')")))
        rec.step("reset", lambda: rows(conn.execute("RESET client_encoding")))
        rec.step("utf8", lambda: rows(conn.execute("SELECT 'héllo'")))
    return program


def prog_notices(t, mode):
    def program(conn, rec):
        rec.step("raise", lambda: rows(conn.execute(
            "DO $$BEGIN RAISE NOTICE 'n1'; RAISE WARNING 'w1'; RAISE INFO 'i1'; END$$")))
        rec.step("drop", lambda: rows(conn.execute(f"DROP TABLE IF EXISTS {t}_nope")))
        if mode == "session":  # an unreported SET lasts only its transaction in transaction mode
            rec.step("cmm", lambda: rows(conn.execute("SET client_min_messages TO warning")))
            rec.step("raise2", lambda: rows(conn.execute(
                "DO $$BEGIN RAISE NOTICE 'n2'; RAISE WARNING 'w2'; END$$")))
        rec.step("pipeline", lambda: libpq_pipeline(conn.pgconn, [
            [lambda p: p.send_query_params(b"DO $$BEGIN RAISE WARNING 'p1'; END$$", None),
             lambda p: p.send_query_params(b"SELECT 1/0", None),
             lambda p: p.send_query_params(b"DO $$BEGIN RAISE WARNING 'p2'; END$$", None)],
            [lambda p: p.send_query_params(b"DO $$BEGIN RAISE WARNING 'p3'; END$$", None)]]))
        rec.step("commit-outside", lambda: rows(conn.execute("COMMIT")))
    return program


def prog_reported_parameters_roll_back(t, mode):
    """A SET of a reported parameter undone by its transaction's end (an error in a multi-
    statement Query, ROLLBACK, ROLLBACK TO SAVEPOINT, SET LOCAL)."""
    steps = [
        ("multi-fail", "SET application_name = 'a'; SELECT 1/0"),
        ("show", "SHOW application_name"),
        ("begin", "BEGIN"),
        ("set-in-txn", "SET application_name = 'b'"),
        ("rollback", "ROLLBACK"),
        ("show2", "SHOW application_name"),
        ("begin2", "BEGIN"),
        ("savepoint", "SAVEPOINT s"),
        ("datestyle", "SET DateStyle = 'German'"),
        ("rollback-to", "ROLLBACK TO SAVEPOINT s"),
        ("set-local", "SET LOCAL application_name = 'loc'"),
        ("commit", "COMMIT"),
        ("show3", "SELECT current_setting('application_name'), current_setting('DateStyle')"),
        ("multi-ok", "SET application_name = 'm'; SELECT 1"),
        ("encoding-fail", "SET client_encoding = 'LATIN1'; SELECT 1/0"),
        ("show4", "SELECT current_setting('application_name'),"
                  " current_setting('client_encoding')"),
    ]

    def program(conn, rec):
        for name, sql in steps:
            rec.step(name, lambda sql=sql: rows(conn.execute(sql)))
    return program


def prog_cancel_notify_copy(t, mode):
    def program(conn, rec):
        def q(sql):
            return lambda: rows(conn.execute(sql))
        # A cancel while nothing runs is ignored (Postgres ignores it while it reads a command).
        rec.step("cancel-idle", lambda: conn.cancel())
        rec.step("after-cancel", q("SELECT pg_sleep(0.2), 1"))

        def self_notify():
            with conn.transaction():
                conn.execute("LISTEN ch1")
                conn.execute("NOTIFY ch1, 'hello'")
                conn.execute("SELECT pg_notify('ch1', 'two')")
        rec.step("self-notify", self_notify)
        rec.step("unlisten", q("UNLISTEN *"))
        rec.step("create", q(f"CREATE TABLE {t} (id int PRIMARY KEY, b bytea)"))

        def copy_duplicate():
            with conn.transaction():
                with conn.cursor().copy(f"COPY {t} (id, b) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["int4", "bytea"])
                    for i in range(2000):
                        cp.write_row((i % 1500, b"x" * 1000))
        rec.step("copy-duplicate", copy_duplicate)

        def copy_in():
            cur = conn.cursor()
            with cur.copy(f"COPY {t} (id, b) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["int4", "bytea"])
                for i in range(3000):
                    cp.write_row((i, bytes([i % 256]) * 3000))
            return cur.rowcount
        rec.step("copy-in", copy_in)

        def copy_out():
            n = total = 0
            with conn.cursor().copy(
                    f"COPY (SELECT id, b FROM {t} ORDER BY id) TO STDOUT (FORMAT BINARY)") as cp:
                cp.set_types(["int4", "bytea"])
                for row in cp.rows():
                    n += 1
                    total += len(row[1]) + row[0]
            return n, total
        rec.step("copy-out", copy_out)

        class GiveUp(Exception):
            pass

        def copy_client_fails():
            try:
                with conn.cursor().copy(f"COPY {t} (id, b) FROM STDIN") as cp:
                    cp.write_row((99999, b"a"))
                    raise GiveUp()
            except GiveUp:
                return "gave up"
        rec.step("copy-client-fails", copy_client_fails)
        rec.step("count", q(f"SELECT count(*) FROM {t}"))
    return program


PROGRAMS = {
    # name: (program, modes where it must be transparent)
    "libpq_pipeline_errors": (prog_libpq_pipeline_errors, ("session", "transaction")),
    "pipeline_transaction_error": (prog_pipeline_transaction_error, ("session", "transaction")),
    "executemany": (prog_executemany, ("session", "transaction")),
    "server_cursor": (prog_server_cursor, ("session", "transaction")),
    "big_bytea_binary": (prog_big_bytea_binary, ("session", "transaction")),
    "client_encoding": (prog_client_encoding, ("session", "transaction")),
    "notices": (prog_notices, ("session", "transaction")),
    "reported_parameters_roll_back": (prog_reported_parameters_roll_back,
                                      ("session", "transaction")),
    "cancel_notify_copy": (prog_cancel_notify_copy, ("session", "transaction")),
}

CASES = [(name, mode) for name, (_p, modes) in PROGRAMS.items() for mode in modes]


@pytest.mark.parametrize("name,mode", CASES)
def test_psycopg_program_sees_what_postgres_shows(pg, start_sluice, table, name, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 3})
    compare(pg, s, PROGRAMS[name][0](table, mode), table, churn=(mode == "transaction"))


# ---- named statements: a Parse skipped by an error, then the same name again ------------------

def prog_parse_again_after_skipped_parse(t, mode):
    """libpq pipeline mode, all batches sent before any reply is read: batch 1 errors before its
    Parse of s1 (skipped), batch 2 Parses s1 again (the name is free: it succeeds) and runs it.
    The statement must stay the client's in later transactions, and DEALLOCATE must find it."""
    def program(conn, rec):
        rec.step("pipeline", lambda: libpq_pipeline(conn.pgconn, [
            [lambda p: p.send_query_params(b"SELECT 1/0", None),
             lambda p: p.send_prepare(b"s1", b"SELECT 1")],
            [lambda p: p.send_prepare(b"s1", b"SELECT $1::int * 11"),
             lambda p: p.send_query_prepared(b"s1", [b"4"])],
            [lambda p: p.send_prepare(b"s1", b"SELECT 2")],  # taken now: 42P05
        ]))
        for i in range(3):
            rec.step(f"s1-{i}", lambda: result(conn.pgconn.exec_prepared(b"s1", [b"5"])))
        rec.step("deallocate", lambda: rows(conn.execute("DEALLOCATE s1")))
        rec.step("s1-gone", lambda: result(conn.pgconn.exec_prepared(b"s1", [b"5"])))
    return program


def prog_names_across_undecided_batches(t, mode):
    """More of the same: a Describe and a Bind of a name whose Parse was skipped, a Parse of a
    name whose first Parse ran followed by a skipped second one, and one name Parsed in three
    batches in a row."""
    def program(conn, rec):
        rec.step("pipeline", lambda: libpq_pipeline(conn.pgconn, [
            [lambda p: p.send_prepare(b"ok", b"SELECT 'first'")],
            [lambda p: p.send_query_params(b"SELECT 1/0", None),
             lambda p: p.send_prepare(b"ok", b"SELECT 'second'"),
             lambda p: p.send_prepare(b"gone", b"SELECT 1")],
            [lambda p: p.send_describe_prepared(b"gone")],
            [lambda p: p.send_query_prepared(b"gone", None)],
            [lambda p: p.send_prepare(b"gone", b"SELECT 'third'"),
             lambda p: p.send_query_prepared(b"ok", None)],
            [lambda p: p.send_prepare(b"gone", b"SELECT 'fourth'")],
            [lambda p: p.send_prepare(b"gone", b"SELECT 'fifth'")],
            [lambda p: p.send_query_prepared(b"gone", None)],
        ]))
        rec.step("ok", lambda: result(conn.pgconn.exec_prepared(b"ok", None)))
        rec.step("gone", lambda: result(conn.pgconn.exec_prepared(b"gone", None)))
        rec.step("deallocate-all", lambda: rows(conn.execute("DEALLOCATE ALL")))
        rec.step("ok-gone", lambda: result(conn.pgconn.exec_prepared(b"ok", None)))
    return program


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_name_parsed_again_after_its_parse_was_skipped_stays_the_clients(pg, start_sluice,
                                                                         table, mode):
    # Before the fix, in transaction mode: batch 2's Parse was taken as a Parse of a name the
    # client had (42P05 expected of the server), and the ReadyForQuery of batch 1 then undid
    # the skipped Parse by forgetting the name: s1 later failed with 26000 and DEALLOCATE s1 too.
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2})
    seen = compare(pg, s, prog_parse_again_after_skipped_parse(table, mode), table,
                   churn=(mode == "transaction"))
    assert seen[1][0] == "s1-0" and seen[1][1][0] == "TUPLES_OK", seen  # the oracle: s1 runs
    compare(pg, s, prog_names_across_undecided_batches(table, mode), table,
            churn=(mode == "transaction"))


# ---- a statement's result type after DDL (xfail: known differences) ----------------------------

def run_clients(dsn, table, steps):
    """Several libpq connections; steps are (client index, label, function of its PGconn)."""
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(3)]
    try:
        seen = []
        for i, label, fn in steps:
            out = fn(conns[i].pgconn)  # a result, or a pipeline's results
            seen.append((i, label, out if isinstance(out, list) else result(out)))
        return seen
    finally:
        for c in conns:
            c.close()


def compare_clients(pg, sluice, table, steps):
    drop(pg, table)
    want = run_clients(pg.direct_dsn(), table, steps)
    drop(pg, table)
    got = run_clients(sluice.dsn(), table, steps)
    drop(pg, table)
    assert got == want, ("postgres saw:\n" + "\n".join(map(str, want))
                         + "\nsluice saw:\n" + "\n".join(map(str, got)))


def ddl_steps(t):
    select = f"SELECT v FROM {t} WHERE id = $1".encode()
    return select, [
        (0, "create", lambda p: p.exec_(
            f"CREATE TABLE {t} (id int, v int); INSERT INTO {t} VALUES (1, 5)".encode())),
        (0, "A prepares", lambda p: p.prepare(b"q", select)),
        (0, "A describes", lambda p: p.describe_prepared(b"q")),
        (0, "A runs", lambda p: p.exec_prepared(b"q", [b"1"])),
    ]


# Postgres fixes a prepared statement's result type at its Parse: after DDL that changes it,
# running or describing the statement fails with 0A000 "cached plan must not change result
# type" (drivers prepare it again). sluice prepares statements again from their text (on another
# backend, or when another client Parses the same text on this one): it compares the result
# type each got with the client's and refuses as Postgres would (stmt_track.c).


def on_another_backend(table, alter, use):
    """Steps that prepare A's statement q on one backend (X), run `alter` from another client
    (C), then `use` A's q where only the other backend (Y) is free (pool of 2): Y lacks q, and
    sluice prepares it there from its text."""
    select, steps = ddl_steps(table)
    create, prepare, describe, run = steps
    return [
        create,
        (0, "A begins", lambda p: p.exec_(b"BEGIN")),
        prepare, describe, run,
        (1, "C begins", lambda p: p.exec_(b"BEGIN")),
        (1, "C holds Y", lambda p: p.exec_(b"SELECT 1")),
        (0, "A commits", lambda p: p.exec_(b"COMMIT")),
        (2, "D begins", lambda p: p.exec_(b"BEGIN")),
        (2, "D holds X", lambda p: p.exec_(b"SELECT 1")),
        (1, "C changes the table", lambda p: p.exec_(alter.encode())),
        (1, "C commits", lambda p: p.exec_(b"COMMIT")),
    ] + use + [(2, "D commits", lambda p: p.exec_(b"COMMIT"))]


def test_another_clients_parse_of_the_same_text_after_ddl_does_not_change_my_result_type(
        pg, start_sluice, table):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    select, steps = ddl_steps(table)
    steps += [
        (1, "B alters", lambda p: p.exec_(
            f"ALTER TABLE {table} ALTER COLUMN v TYPE text USING 'abc' || v".encode())),
        (1, "B prepares the same text", lambda p: p.prepare(b"q", select)),
        (1, "B runs", lambda p: p.exec_prepared(b"q", [b"1"])),
        (0, "A runs again", lambda p: p.exec_prepared(b"q", [b"1"])),  # Postgres: 0A000
    ]
    compare_clients(pg, s, table, steps)


def test_a_statement_prepared_again_on_another_backend_after_ddl_keeps_its_result_type(
        pg, start_sluice, table):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2})
    steps = on_another_backend(
        table, f"ALTER TABLE {table} ALTER COLUMN v TYPE text USING 'abc' || v",
        [(0, "A runs again", lambda p: p.exec_prepared(b"q", [b"1"]))])  # Postgres: 0A000
    compare_clients(pg, s, table, steps)


@pytest.mark.parametrize("change", [
    "ALTER TABLE {t} ADD COLUMN w int",                              # SELECT * gains a column
    "ALTER TABLE {t} RENAME COLUMN v TO v2",                         # a column's name
    "ALTER TABLE {t} ALTER COLUMN v TYPE numeric(10,2)",             # type and modifier
    "DROP TABLE {t}; CREATE TABLE {t} (id int, v int); INSERT INTO {t} VALUES (1, 7)",  # same type
    "ALTER TABLE {t} ADD COLUMN w int; ALTER TABLE {t} DROP COLUMN w",  # changed and back
])
def test_select_star_after_ddl_fails_or_runs_as_postgres_says(pg, start_sluice, table, change):
    """The whole surface of the check: which changes refuse the statement (a column more, a
    name, a type modifier) and which do not (the table made again with the same columns, a
    change undone), on a backend where sluice prepares it again, and what the client can do
    next: describe it, run it in a transaction (which the error aborts), prepare it again."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2})
    star = f"SELECT * FROM {table} WHERE id = $1".encode()
    steps = on_another_backend(table, change.format(t=table), [
        (0, "A describes again", lambda p: p.describe_prepared(b"q")),
        (0, "A runs again", lambda p: p.exec_prepared(b"q", [b"1"])),
        (0, "A begins", lambda p: p.exec_(b"BEGIN")),
        (0, "A runs in a transaction", lambda p: p.exec_prepared(b"q", [b"1"])),
        (0, "A's transaction goes on", lambda p: p.exec_(b"SELECT 1")),
        (0, "A rolls back", lambda p: p.exec_(b"ROLLBACK")),
        (0, "A closes q", lambda p: p.exec_(b"DEALLOCATE q")),
        (0, "A prepares q again", lambda p: p.prepare(b"q", star)),
        (0, "A runs the new q", lambda p: p.exec_prepared(b"q", [b"1"])),
    ])
    # A's statement is SELECT * here
    steps = [(i, label, (lambda p: p.prepare(b"q", star)) if label == "A prepares" else fn)
             for i, label, fn in steps]
    compare_clients(pg, s, table, steps)


def test_a_statement_that_returns_no_rows_runs_on_after_ddl(pg, start_sluice, table):
    """An INSERT without RETURNING has no result type to change: Postgres runs it after any
    column is added, and so does sluice, prepared again on another backend."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2})
    insert = f"INSERT INTO {table} (id, v) VALUES ($1, 9)".encode()
    steps = on_another_backend(table, f"ALTER TABLE {table} ADD COLUMN w int", [
        (0, "A inserts again", lambda p: p.exec_prepared(b"q", [b"2"])),
        (0, "A reads", lambda p: p.exec_(f"SELECT * FROM {table} ORDER BY id".encode())),
    ])
    steps = [(i, label, (lambda p: p.prepare(b"q", insert)) if label == "A prepares" else
              (lambda p: p.exec_prepared(b"q", [b"3"])) if label == "A runs" else fn)
             for i, label, fn in steps]
    compare_clients(pg, s, table, steps)


def test_a_pipeline_of_a_changed_statement_fails_once_and_skips_to_its_sync(
        pg, start_sluice, table):
    """Three uses of the changed statement in one batch: the first fails, the server skips the
    rest to the Sync; the batch after it runs."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2})
    steps = on_another_backend(
        table, f"ALTER TABLE {table} ALTER COLUMN v TYPE text USING 'abc' || v",
        [(0, "A's pipeline", lambda p: libpq_pipeline(p, [
            [lambda q: q.send_query_prepared(b"q", [b"1"]),
             lambda q: q.send_query_prepared(b"q", [b"1"]),
             lambda q: q.send_describe_prepared(b"q")],
            [lambda q: q.send_query_params(b"SELECT 42", None)]]))])
    compare_clients(pg, s, table, steps)


# ---- pgjdbc ----------------------------------------------------------------------------------------

JAVA = shutil.which("java")
PGJDBC = "/usr/share/java/postgresql.jar"  # Debian's libpostgresql-jdbc-java
JAVA_PROGRAM = REPO / "tests" / "java" / "DriverModes.java"


def run_java(scenario, port, table):
    assert APP_USER == "app" and APP_PASSWORD == "apppass"  # as DriverModes.java logs in
    p = subprocess.run([JAVA, "-cp", PGJDBC, str(JAVA_PROGRAM), scenario,
                        f"jdbc:postgresql://127.0.0.1:{port}/{APP_DB}", table],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout.splitlines()


def compare_java(pg, sluice, scenario, table):
    drop(pg, table)
    want = run_java(scenario, pg.port, table)
    drop(pg, table)
    got = run_java(scenario, sluice.port, table)
    drop(pg, table)
    assert got == want, ("postgres saw:\n" + "\n".join(want) + "\nsluice saw:\n" + "\n".join(got))
    return want


needs_pgjdbc = pytest.mark.skipif(
    not JAVA or not os.path.exists(PGJDBC),
    reason="needs java (openjdk-17-jdk-headless) and pgjdbc (libpostgresql-jdbc-java): "
           "scripts/install-deps test")


@needs_pgjdbc
@pytest.mark.timeout(300)  # two JVMs that compile the program first
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_pgjdbc_program_sees_what_postgres_shows(pg, start_sluice, table, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 3})
    seen = compare_java(pg, s, "features", table)
    assert any(line.startswith("timeout: ERR 57014") for line in seen), seen


@needs_pgjdbc
@pytest.mark.timeout(300)
def test_pgjdbc_reads_a_changed_column_type_as_postgres_gives_it(pg, start_sluice, table):
    # Postgres: pgjdbc gets 0A000 for A's statement, prepares it again and reads 'abc5' as text.
    # sluice: A's statement silently returns the text column, which pgjdbc, still holding the
    # old int4 description, decodes from binary as 1633837877.
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    compare_java(pg, s, "staleResultType", table)
