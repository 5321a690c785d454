"""The tools and the driver most operators and Django/SQLAlchemy users run through a pooler,
Postgres as the oracle.

pg_dump (plain, custom, directory with -j 2), pg_restore -j 2 and psql -f run once directly
against Postgres and once through sluice; what a user sees (exit code, output, errors) and what
lands in the database (compared as pg_dump prints it) must be the same. psql scripts (\\copy,
inline COPY, \\gexec, \\gset, \\if, FETCH_COUNT, ON_ERROR_ROLLBACK, ON_ERROR_STOP, ECHO),
pgbench -i, vacuumdb -j, reindexdb, clusterdb and pg_isready are compared the same way.
psycopg2 (Django's driver) runs named and WITH HOLD cursors, copy_expert, LISTEN/NOTIFY with
poll, set_session, autocommit, large objects, cancel (mid-query, mid-COPY), execute_values,
execute_batch and async connections both ways. Careless clients (closed or SIGKILLed inside a
transaction holding a lock, in the middle of a COPY in or out, of a query) must leave nothing
behind: Postgres's pg_locks and pg_stat_activity say, a client queued meanwhile gets a clean
server, and the pool never passes its cap.

Transaction mode: pg_dump and restores set search_path for their session before their
transaction, and psycopg2's set_session(isolation_level=...) in autocommit sends SET
default_transaction_isolation; Postgres reports neither, sluice follows both (read back at the
request's end, given to each server the client gets), so every session_state_policy gives the
direct dump and the isolation level. docs/pool-modes.md tells users.
"""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import (APP_DB, APP_PASSWORD, APP_USER, Background, BackendSampler, run_tool,
                      wait_until)
from test_driver_modes import Churn

psycopg2 = pytest.importorskip("psycopg2")
import psycopg2.extensions  # noqa: E402
import psycopg2.extras  # noqa: E402

SRC_DB = "tools_src"
ADMIN = "sluiceadmin"


# ---- a database with something of each kind pg_dump handles ------------------------------------

SOURCE_SQL = """
CREATE SEQUENCE order_ids START 100;
CREATE TABLE orders (
    id int PRIMARY KEY DEFAULT nextval('order_ids'),
    note text NOT NULL,
    amount numeric(10,2) CHECK (amount >= 0),
    made timestamptz NOT NULL);
COMMENT ON TABLE orders IS 'what customers bought';
INSERT INTO orders (note, amount, made)
    SELECT 'order ' || g || E'\\twith a tab', g * 1.25,
           timestamptz '2024-01-01 00:00+00' + g * interval '1 hour'
    FROM generate_series(1, 3000) g;
CREATE TABLE items (
    id serial PRIMARY KEY,
    order_id int NOT NULL REFERENCES orders,
    body bytea);
INSERT INTO items (order_id, body)
    SELECT 100 + g % 3000, decode(md5(g::text), 'hex') FROM generate_series(1, 2000) g;
CREATE INDEX items_order ON items (order_id);
CREATE FUNCTION order_total(o int) RETURNS numeric LANGUAGE sql STABLE
    AS $$ SELECT amount FROM orders WHERE id = o $$;
CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.amount := NEW.amount + 0; RETURN NEW; END $$;
CREATE TRIGGER orders_bump BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION bump();
CREATE VIEW big_orders AS SELECT id, order_total(id) AS total FROM orders WHERE amount > 100;
CREATE SCHEMA extra;
CREATE TABLE extra.notes (k text PRIMARY KEY, v jsonb DEFAULT '{}');
INSERT INTO extra.notes VALUES ('a', '{"x": 1}'), ('b', '[1, 2]');
SELECT setval('order_ids', 4000);
SELECT lo_from_bytea(4242, convert_to(repeat('large object ', 5000), 'UTF8'));
COMMENT ON LARGE OBJECT 4242 IS 'a large object';
"""


def execute(pg, sql, dbname=APP_DB):
    """A statement run directly as the superuser, its result not wanted."""
    with pg.superuser(dbname) as c:
        c.execute(sql)


def create_db(pg, name):
    with pg.superuser() as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {name} OWNER {APP_USER}")


def drop_dbs(pg, names):
    with pg.superuser() as c:
        for name in names:
            with contextlib.suppress(Exception):
                c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def source_db(pg):
    create_db(pg, SRC_DB)
    with psycopg2.connect(pg.direct_dsn(dbname=SRC_DB)) as c, c.cursor() as cur:
        cur.execute(SOURCE_SQL)
    c.close()
    yield SRC_DB
    drop_dbs(pg, [SRC_DB])


def tool(name, port, args, timeout=120, input=None):
    """A client tool (pg_dump, pg_restore, psql, pgbench) as app against 127.0.0.1:port."""
    return run_tool(name, ["-h", "127.0.0.1", "-p", str(port), "-U", APP_USER] + list(args),
                    password=APP_PASSWORD, timeout=timeout, input=input)


def seen(p):
    """What a user of a tool sees: its exit code, its output and its messages."""
    return {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}


# pg_dump 15.14 and later put a random key in plain output (\\restrict) unless given one
PLAIN = ["--restrict-key=sluicetests"] if "--restrict-key" in run_tool("pg_dump", ["--help"]).stdout \
    else []


def dump_text(pg, db):
    """The database as pg_dump prints it (directly, as app): two databases with the same text
    hold the same things."""
    p = tool("pg_dump", pg.port, PLAIN + ["-d", db])
    assert p.returncode == 0, p.stderr
    return p.stdout


def sluice_for(start_sluice, pg, dbs, mode, **main):
    m = {"pool_mode": mode, "default_pool_size": 4}
    m.update(main)
    return start_sluice(m, databases={db: pg.db_entry(dbname=db) for db in dbs})


# ---- pg_dump / pg_restore / psql -f in session mode -----------------------------------------------

@pytest.mark.timeout(240)
def test_pg_dump_and_restore_through_sluice_give_the_database_a_direct_run_gives(
        pg, start_sluice, source_db, tmp_path):
    targets = ["tools_r_direct", "tools_r_custom", "tools_r_dir", "tools_r_plain"]
    for t in targets:
        create_db(pg, t)
    try:
        s = sluice_for(start_sluice, pg, [source_db] + targets, "session")
        direct_plain = tool("pg_dump", pg.port, PLAIN + ["-d", source_db])
        pooled_plain = tool("pg_dump", s.port, PLAIN + ["-d", source_db])
        assert direct_plain.returncode == 0, direct_plain.stderr
        assert seen(pooled_plain) == seen(direct_plain)

        # custom format, restored with two jobs
        direct_fc, pooled_fc = tmp_path / "direct.dump", tmp_path / "pooled.dump"
        p = tool("pg_dump", pg.port, ["-Fc", "-f", str(direct_fc), "-d", source_db])
        assert p.returncode == 0, p.stderr
        p = tool("pg_dump", s.port, ["-Fc", "-f", str(pooled_fc), "-d", source_db])
        assert seen(p) == {"rc": 0, "stdout": "", "stderr": ""}
        r = tool("pg_restore", pg.port, ["-j", "2", "-d", "tools_r_direct", str(direct_fc)])
        assert r.returncode == 0, r.stderr
        want = dump_text(pg, "tools_r_direct")
        assert want == dump_text(pg, source_db)
        r = tool("pg_restore", s.port, ["-j", "2", "-d", "tools_r_custom", str(pooled_fc)])
        assert seen(r) == {"rc": 0, "stdout": "", "stderr": ""}
        assert dump_text(pg, "tools_r_custom") == want

        # directory format, dumped with two jobs (a snapshot exported to the workers)
        pooled_fd = tmp_path / "pooled.dir"
        p = tool("pg_dump", s.port, ["-Fd", "-j", "2", "-f", str(pooled_fd), "-d", source_db])
        assert seen(p) == {"rc": 0, "stdout": "", "stderr": ""}
        r = tool("pg_restore", s.port, ["-j", "2", "-d", "tools_r_dir", str(pooled_fd)])
        assert seen(r) == {"rc": 0, "stdout": "", "stderr": ""}
        assert dump_text(pg, "tools_r_dir") == want

        # the plain dump replayed by psql
        plain = tmp_path / "pooled.sql"
        plain.write_text(pooled_plain.stdout)
        r = tool("psql", s.port, ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "tools_r_plain",
                                  "-f", str(plain)])
        assert (r.returncode, r.stderr) == (0, "")
        assert dump_text(pg, "tools_r_plain") == want
    finally:
        drop_dbs(pg, targets)


# ---- pg_dump in transaction mode ------------------------------------------------------------------
# pg_dump sets search_path (and statement_timeout, row_security, ...) for its session before it
# opens its REPEATABLE READ transaction: in transaction mode those are SETs of parameters
# Postgres does not report, which sluice follows (docs/pool-modes.md).

@pytest.mark.timeout(180)
def test_pg_dump_in_transaction_mode_with_policy_pin_gives_the_direct_dump_also_with_jobs(
        pg, start_sluice, source_db, tmp_path):
    want = dump_text(pg, source_db)
    s = sluice_for(start_sluice, pg, [source_db], "transaction", session_state_policy="pin")
    p = tool("pg_dump", s.port, PLAIN + ["-d", source_db])
    assert (p.returncode, p.stderr) == (0, "")
    assert p.stdout == want
    # -j 2: the workers import the leader's exported snapshot on their own backends
    p = tool("pg_dump", s.port, ["-Fd", "-j", "2", "-f", str(tmp_path / "d"), "-d", source_db])
    assert seen(p) == {"rc": 0, "stdout": "", "stderr": ""}
    r = tool("pg_restore", pg.port, PLAIN + ["-f", "-", str(tmp_path / "d")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == want


@pytest.mark.timeout(180)
def test_pg_dump_in_transaction_mode_with_policy_refuse_fails_with_0A000_saying_what_to_do(
        pg, start_sluice, source_db, tmp_path):
    """pg_dump's SETs (search_path '', statement_timeout, its set_config(name, ...) FROM
    pg_settings WHERE name = '...') are followed, so not refused; its SQL-level PREPARE is."""
    s = sluice_for(start_sluice, pg, [source_db], "transaction", session_state_policy="refuse")
    for args in (PLAIN, ["-Fd", "-j", "2", "-f", str(tmp_path / "d")]):
        p = tool("pg_dump", s.port, args + ["-d", source_db])
        assert p.returncode == 1 and p.stdout == "", p
        assert "is not supported in transaction pooling mode (session_state_policy = refuse)" \
            in p.stderr, p.stderr
        assert "use session mode for this application, or session_state_policy = pin" \
            in p.stderr, p.stderr
        assert "SET of a parameter" not in p.stderr, p.stderr
    # the statement pg_dump starts with, as a driver sees it, is followed; a SET sluice cannot
    # follow (a computed name) gets SQLSTATE 0A000, and the session goes on
    c = psycopg2.connect(s.dsn(dbname=source_db))
    try:
        c.autocommit = True  # as pg_dump runs it: outside a transaction block
        fetch(c, "SELECT pg_catalog.set_config('search_path', '', false)")
        with pytest.raises(psycopg2.errors.FeatureNotSupported) as e:
            fetch(c, "SELECT pg_catalog.set_config('search_' || 'path', 'x', false)")
        assert e.value.pgcode == "0A000"
        assert fetch(c, "SELECT current_setting('search_path')") == [('',)]
    finally:
        c.close()


@pytest.mark.timeout(180)
def test_restore_in_one_transaction_through_transaction_mode_gives_the_direct_database(
        pg, start_sluice, source_db, tmp_path):
    """pg_restore -1 and psql -1 keep the restore's search_path inside its one transaction:
    what docs/pool-modes.md tells users to do when only a transaction-mode pool is at hand."""
    targets = ["tools_one_direct", "tools_one_restore", "tools_one_psql"]
    for t in targets:
        create_db(pg, t)
    try:
        want = dump_text(pg, source_db)
        archive = tmp_path / "c.dump"
        p = tool("pg_dump", pg.port, ["-Fc", "-f", str(archive), "-d", source_db])
        assert p.returncode == 0, p.stderr
        s = sluice_for(start_sluice, pg, targets, "transaction")
        r = tool("pg_restore", s.port, ["-1", "-d", "tools_one_restore", str(archive)])
        assert seen(r) == {"rc": 0, "stdout": "", "stderr": ""}
        assert dump_text(pg, "tools_one_restore") == want
        args = ["-X", "-q", "-1", "-v", "ON_ERROR_STOP=1"]
        direct = tool("psql", pg.port, args + ["-d", "tools_one_direct"], input=want)
        pooled = tool("psql", s.port, args + ["-d", "tools_one_psql"], input=want)
        assert direct.returncode == 0, direct.stderr
        assert seen(pooled) == seen(direct)
        assert dump_text(pg, "tools_one_psql") == want
    finally:
        drop_dbs(pg, targets)


@pytest.mark.timeout(120)
def test_pg_dump_with_more_jobs_than_the_pool_has_servers_fails_with_53300_naming_pool_size(
        pg, start_sluice, source_db, tmp_path):
    """-j 2 needs three sessions (the leader and two workers): with pool_size = 2 in session
    mode the second worker waits for a server the leader never gives back."""
    s = sluice_for(start_sluice, pg, [source_db], "session", default_pool_size=2,
                   query_wait_timeout=2)
    p = tool("pg_dump", s.port, ["-Fd", "-j", "2", "-f", str(tmp_path / "d"), "-d", source_db])
    assert p.returncode == 1
    assert f'pool "{source_db}/app" is full: 2 of 2 servers busy' in p.stderr, p.stderr
    assert "pool_size = 2 is reached: raise it" in p.stderr, p.stderr


@pytest.mark.timeout(120)
def test_pg_dump_in_transaction_mode_with_the_default_policy_gives_the_direct_dump(
        pg, start_sluice, source_db, tmp_path):
    """Its SET search_path = '' (and the rest) before its transaction is followed: read back
    at the end of that request and given to the server its transaction gets."""
    want = dump_text(pg, source_db)
    s = sluice_for(start_sluice, pg, [source_db], "transaction")
    p = tool("pg_dump", s.port, PLAIN + ["-d", source_db])
    assert p.returncode == 0, p.stderr
    assert p.stdout == want
    p = tool("pg_dump", s.port, ["-Fd", "-j", "2", "-f", str(tmp_path / "d"), "-d", source_db])
    assert seen(p) == {"rc": 0, "stdout": "", "stderr": ""}
    r = tool("pg_restore", pg.port, PLAIN + ["-f", "-", str(tmp_path / "d")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == want


# ---- psql scripts ---------------------------------------------------------------------------------

PSQL_SCRIPT = r"""
\set ECHO all
\set VERBOSITY verbose
CREATE TABLE {t} (id int PRIMARY KEY, name text, at date);
\copy {t} FROM '{dir}/in.csv' WITH (FORMAT csv, HEADER)
SELECT count(*), sum(id) FROM {t};
\copy (SELECT * FROM {t} ORDER BY id) TO '{dir}/out.csv' WITH (FORMAT csv)
SELECT format('UPDATE {t} SET name = upper(name) WHERE id = %s', id) FROM {t} WHERE id <= 3 \gexec
SELECT max(id) AS top FROM {t} \gset
\echo top is :top
\if :{{?top}}
\echo it is set
\endif
\d {t}
\pset format unaligned
SELECT * FROM {t} WHERE id <= 5 ORDER BY id;
COPY {t} FROM STDIN;
2000	inline	2024-02-01
2001	\N	\N
\.
\set FETCH_COUNT 100
SELECT g FROM generate_series(1, 350) g WHERE g % 100 = 0;
\unset FETCH_COUNT
\set ON_ERROR_ROLLBACK on
BEGIN;
INSERT INTO {t} VALUES (1000, 'kept', NULL);
INSERT INTO {t} VALUES (1000, 'dup', NULL);
COMMIT;
SELECT name FROM {t} WHERE id IN (1000, 2000, 2001) ORDER BY id;
\set ON_ERROR_ROLLBACK off
BEGIN;
INSERT INTO {t} VALUES (1, 'dup', NULL);
SELECT 'not reached in the transaction';
ROLLBACK;
\set ON_ERROR_STOP 1
\copy {t} FROM '{dir}/bad.csv' WITH (FORMAT csv)
SELECT 'never';
"""


def run_psql_script(port, t, workdir):
    workdir.mkdir()
    (workdir / "in.csv").write_text("id,name,at\n" + "".join(
        f"{i},name {i},2024-01-{i % 28 + 1:02d}\n" for i in range(1, 501)))
    (workdir / "bad.csv").write_text("1000,ok,2024-01-01\nnot a number,x,2024-01-01\n")
    script = workdir / "script.sql"
    script.write_text(PSQL_SCRIPT.format(t=t, dir=workdir))
    p = tool("psql", port, ["-X", "-d", APP_DB, "-f", str(script)], timeout=60)
    out = seen(p)
    out["out.csv"] = (workdir / "out.csv").read_text()
    out["stdout"] = out["stdout"].replace(str(workdir), "DIR")
    out["stderr"] = out["stderr"].replace(str(workdir), "DIR")
    return out


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_psql_script_with_copy_gexec_and_on_error_stop_sees_what_postgres_shows(
        pg, start_sluice, table, tmp_path, mode):
    want = run_psql_script(pg.port, table, tmp_path / "direct")
    execute(pg, f"DROP TABLE {table}")
    s = sluice_for(start_sluice, pg, [APP_DB], mode)
    got = run_psql_script(s.port, table, tmp_path / "pooled")
    assert want["rc"] == 3 and "22P02" in want["stderr"], want
    assert "top is 500" in want["stdout"] and "\nit is set\n" in want["stdout"]
    assert "COPY 500" in want["stdout"] and "kept" in want["stdout"] and "UPDATE 1" in want["stdout"], want["stdout"]
    for k in want:
        assert got[k] == want[k], f"{k} differs:\n--- postgres\n{want[k]}\n--- sluice\n{got[k]}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_pgbench_init_through_sluice_builds_the_tables_a_direct_run_builds(
        pg, start_sluice, mode):
    db = "tools_bench"
    create_db(pg, db)
    try:
        s = sluice_for(start_sluice, pg, [db], mode)
        p = tool("pgbench", s.port, ["-i", "-s", "2", "--foreign-keys", db])
        assert p.returncode == 0, p.stderr
        assert "done in" in p.stderr, p.stderr
        counts = pg.query("SELECT (SELECT count(*) FROM pgbench_accounts),"
                          " (SELECT count(*) FROM pgbench_branches),"
                          " (SELECT count(*) FROM pgbench_tellers),"
                          " (SELECT sum(abalance) FROM pgbench_accounts)", dbname=db)
        assert counts == [(200000, 2, 20, 0)]
        p = tool("pgbench", s.port, ["-t", "20", "-c", "2", "-M", "prepared", db])
        assert p.returncode == 0, p.stderr
        assert "number of transactions actually processed: 40/40" in p.stdout, p.stdout
    finally:
        drop_dbs(pg, [db])


# ---- psycopg2 -------------------------------------------------------------------------------------

def pg2_dsn(port, dbname=APP_DB):
    return (f"host=127.0.0.1 port={port} dbname={dbname} user={APP_USER} "
            f"password={APP_PASSWORD} connect_timeout=10 application_name=psycopg2-tests")


def pg2_error(e):
    return ("error", type(e).__name__, e.pgcode, (e.pgerror or str(e)).splitlines()[0])


class Steps:
    """What one psycopg2 program sees, step by step: rows or the error, and the connection's
    transaction status after each step."""

    def __init__(self, conn):
        self.conn = conn
        self.seen = []

    def __call__(self, label, fn):
        try:
            out = fn()
        except psycopg2.Error as e:
            out = pg2_error(e)
        self.seen.append((label, out, self.conn.get_transaction_status()))
        return out


def fetch(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else cur.statusmessage


def prog_named_cursors(t):
    def run(conn, step):
        step("create", lambda: fetch(conn, f"CREATE TABLE {t} (id int, v text)"))
        step("fill", lambda: fetch(conn, f"INSERT INTO {t} SELECT g, md5(g::text) "
                                         "FROM generate_series(1, 5000) g"))
        conn.commit()
        cur = conn.cursor("big")
        cur.itersize = 700
        step("declare", lambda: cur.execute(f"SELECT id, v FROM {t} ORDER BY id"))
        step("fetchmany", lambda: [r[0] for r in cur.fetchmany(3)])
        step("iterate", lambda: sum(r[0] for r in cur))
        step("scroll", lambda: (cur.scroll(10, mode="absolute"), cur.fetchone())[1])
        step("close", cur.close)
        conn.commit()
        bad = conn.cursor("bad")
        step("declare bad", lambda: bad.execute("SELECT 1/0"))
        step("fetch bad", lambda: bad.fetchall())
        conn.rollback()
        # values, batch: Django's bulk_create and executemany paths
        with conn.cursor() as cur2:
            step("execute_values", lambda: psycopg2.extras.execute_values(
                cur2, f"INSERT INTO {t} VALUES %s RETURNING id",
                [(10000 + i, f"v{i}") for i in range(250)], page_size=100, fetch=True)[-3:])
            step("execute_batch", lambda: psycopg2.extras.execute_batch(
                cur2, f"UPDATE {t} SET v = %s WHERE id = %s",
                [(f"b{i}", i) for i in range(1, 300)], page_size=50))
            step("batch error", lambda: psycopg2.extras.execute_batch(
                cur2, f"INSERT INTO {t} VALUES (%s, %s)", [(1, "x"), ("y", "z")]))
        conn.rollback()
        step("after rollback", lambda: fetch(conn, f"SELECT count(*), min(v) FROM {t}"))
        conn.commit()
    return run


def prog_copy_and_settings(t):
    def run(conn, step):
        import io
        # what Django's backend does on a new connection whose TimeZone is not its own
        step("time zone", lambda: fetch(conn, "SELECT set_config('TimeZone', %s, false)",
                                        ["Asia/Tokyo"]))
        conn.commit()
        step("time zone kept", lambda: fetch(conn, "SELECT current_setting('TimeZone'), "
                                                   "timestamptz '2024-01-01 00:00+00'::text"))
        conn.commit()
        step("create", lambda: fetch(conn, f"CREATE TABLE {t} (id int PRIMARY KEY, v text)"))
        conn.commit()
        data = "".join(f"{i}\tline {i}\n" for i in range(1, 20001))
        with conn.cursor() as cur:
            step("copy from", lambda: (cur.copy_expert(f"COPY {t} FROM STDIN", io.StringIO(data)),
                                       cur.rowcount)[1])
            conn.commit()
            out = io.StringIO()
            step("copy to", lambda: (cur.copy_expert(f"COPY (SELECT * FROM {t} ORDER BY id) "
                                                     "TO STDOUT WITH (FORMAT csv)", out),
                                     len(out.getvalue()), out.getvalue()[-40:])[1:])
            step("copy bad", lambda: cur.copy_expert(f"COPY {t} FROM STDIN",
                                                     io.StringIO("1\tdup\n")))
            conn.rollback()
        # set_session outside autocommit: psycopg2 puts it in each BEGIN
        conn.set_session(isolation_level="SERIALIZABLE", readonly=True, deferrable=True)
        step("settings in txn", lambda: fetch(
            conn, "SELECT current_setting('transaction_isolation'),"
                  " current_setting('transaction_read_only'),"
                  " current_setting('transaction_deferrable')"))
        step("write refused", lambda: fetch(conn, f"INSERT INTO {t} VALUES (0, 'x')"))
        conn.rollback()
        conn.set_session(isolation_level="REPEATABLE READ", readonly=False, deferrable=False)
        step("repeatable read", lambda: fetch(
            conn, "SELECT current_setting('transaction_isolation'),"
                  " current_setting('transaction_read_only')"))
        conn.commit()
        # autocommit toggled on and off
        conn.autocommit = True
        step("autocommit insert", lambda: fetch(conn, f"INSERT INTO {t} VALUES (0, 'auto')"))
        step("autocommit status", lambda: fetch(conn, "SELECT now() = statement_timestamp()"))
        conn.autocommit = False
        step("txn insert", lambda: fetch(conn, f"INSERT INTO {t} VALUES (-1, 'txn')"))
        conn.rollback()
        step("count", lambda: fetch(conn, f"SELECT count(*) FROM {t} WHERE id <= 0"))
        conn.commit()
        # large objects: libpq's lo_* calls are FunctionCall messages
        oid = 424242
        lo = conn.lobject(0, "wb", new_oid=oid)
        step("lo write", lambda: lo.write(b"0123456789" * 20000))
        lo.close()
        conn.commit()
        step("lo read", lambda: (lambda o: (o.seek(199990), o.read(), o.close())[1])(
            conn.lobject(oid, "rb")))
        step("lo unlink", lambda: conn.lobject(oid, "rb").unlink())
        conn.commit()
        step("lo gone", lambda: conn.lobject(oid, "rb"))
        conn.rollback()
    return run


def prog_autocommit_set_session(t):
    """set_session in autocommit mode: psycopg2 sends SET default_transaction_isolation /
    default_transaction_read_only for the session (Django's OPTIONS isolation_level)."""
    def run(conn, step):
        conn.autocommit = True
        step("create", lambda: fetch(conn, f"CREATE TABLE {t} (id int)"))
        conn.set_session(isolation_level="SERIALIZABLE", readonly=True)
        step("defaults", lambda: fetch(
            conn, "SELECT current_setting('transaction_isolation'),"
                  " current_setting('transaction_read_only')"))
        step("write refused", lambda: fetch(conn, f"DELETE FROM {t}"))
    return run


def run_pg2(dsn, program, churn=False):
    """Run a program on a psycopg2 connection; with churn, two other clients run short
    transactions meanwhile (test_driver_modes.Churn), so in transaction mode the program's
    transactions land on whichever backend is free."""
    with Churn(dsn) if churn else contextlib.nullcontext():
        conn = psycopg2.connect(dsn)
        try:
            step = Steps(conn)
            program(conn, step)
            return step.seen
        finally:
            conn.close()


def compare_pg2(pg, s, program, table, churn=False):
    execute(pg, "SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE oid = 424242")
    execute(pg, f"DROP TABLE IF EXISTS {table}")
    want = run_pg2(pg2_dsn(pg.port), program, churn)
    execute(pg, f"DROP TABLE IF EXISTS {table}")
    got = run_pg2(pg2_dsn(s.port), program, churn)
    for i, (w, g) in enumerate(zip(want, got)):
        assert g == w, (f"step {i} differs\n postgres: {w}\n   sluice: {g}\npostgres saw:\n"
                        + "\n".join(map(str, want)) + "\nsluice saw:\n" + "\n".join(map(str, got)))
    assert len(got) == len(want)
    return want


def prog_misc(t):
    """Several statements in one execute, notices, conn.reset(), two-phase commit (refused:
    max_prepared_transactions = 0), set_client_encoding, reported parameters."""
    def run(conn, step):
        step("create", lambda: fetch(conn, f"CREATE TABLE {t} (id int PRIMARY KEY, v text)"))
        conn.commit()
        step("multi", lambda: fetch(conn, f"INSERT INTO {t} VALUES (1, 'a'); SELECT count(*) FROM {t}; "
                                          "SELECT 'last'"))
        step("notice", lambda: (fetch(conn, "DO $$BEGIN RAISE NOTICE 'hello %', 42; "
                                            "RAISE WARNING 'careful'; END$$"), list(conn.notices))[1])
        conn.commit()
        step("reset", conn.reset)
        step("after reset", lambda: fetch(conn, "SELECT current_setting('application_name'), "
                                                "current_user, session_user"))
        conn.commit()
        step("tpc", lambda: (conn.tpc_begin(conn.xid(1, "g", "b")),
                             fetch(conn, f"INSERT INTO {t} VALUES (2, 'tpc')"),
                             conn.tpc_prepare()))
        step("tpc rollback", conn.tpc_rollback)
        step("count", lambda: fetch(conn, f"SELECT count(*) FROM {t}"))
        conn.commit()
        step("encoding", lambda: (conn.set_client_encoding("LATIN1"),
                                  fetch(conn, "SELECT 'é', current_setting('client_encoding')"))[1])
        conn.commit()
        step("server_version", lambda: conn.server_version > 0)
        step("params", lambda: [conn.get_parameter_status(p) for p in
                                ("client_encoding", "DateStyle", "TimeZone",
                                 "standard_conforming_strings", "integer_datetimes")])
    return run


PG2_CASES = [(p, m) for p in (prog_named_cursors, prog_copy_and_settings, prog_misc)
             for m in ("session", "transaction")] + [(prog_autocommit_set_session, "session")]


@pytest.mark.parametrize("prog,mode", PG2_CASES)
def test_psycopg2_program_sees_what_postgres_shows(pg, start_sluice, table, mode, prog):
    s = sluice_for(start_sluice, pg, [APP_DB], mode, default_pool_size=3)
    compare_pg2(pg, s, prog(table), table, churn=(mode == "transaction"))


def test_psycopg2_autocommit_set_session_isolation_is_kept_in_transaction_mode(
        pg, start_sluice, table):
    s = sluice_for(start_sluice, pg, [APP_DB], "transaction", default_pool_size=3)
    compare_pg2(pg, s, prog_autocommit_set_session(table), table, churn=True)


def test_psycopg2_isolation_given_at_login_is_kept_in_transaction_mode(pg, start_sluice, table):
    s = sluice_for(start_sluice, pg, [APP_DB], "transaction", default_pool_size=2)
    opts = " options='-c default_transaction_isolation=serializable'"
    with Churn(pg2_dsn(s.port)):
        conn = psycopg2.connect(pg2_dsn(s.port) + opts)
        try:
            conn.autocommit = True
            for _ in range(5):
                assert fetch(conn, "SELECT current_setting('transaction_isolation')") == \
                    [("serializable",)]
        finally:
            conn.close()


def held_cursor_program(port, table, autocommit=False):
    """psycopg2's withhold=True named cursor: fetch some rows, commit, fetch more. Returns what
    the client saw after the commit, and what the next client of the pool's only backend finds
    in pg_cursors. With autocommit it is Django's QuerySet.iterator() outside atomic(): a
    NO SCROLL WITH HOLD cursor declared and fetched in autocommit statements."""
    conn = psycopg2.connect(pg2_dsn(port))
    try:
        conn.autocommit = autocommit
        cur = conn.cursor("held", withhold=True, scrollable=False if autocommit else None)
        cur.execute(f"SELECT id FROM {table} ORDER BY id")

        def fetch5():
            try:
                return cur.fetchmany(5)
            except psycopg2.Error as e:
                conn.rollback()
                return pg2_error(e)
        first = fetch5()
        conn.commit()
        after = fetch5()
        conn.rollback()
    finally:
        conn.close()
    other = psycopg2.connect(pg2_dsn(port))
    try:
        other.autocommit = True
        left = fetch(other, "SELECT name FROM pg_cursors")
    finally:
        other.close()
    return first, after, left


@pytest.mark.parametrize("autocommit", [False, True])
@pytest.mark.parametrize("policy", ["warn", "pin"])
def test_psycopg2_withhold_cursor_in_transaction_mode_fails_honestly_or_is_pinned(
        pg, start_sluice, table, policy, autocommit):
    execute(pg, f"CREATE TABLE {table} AS SELECT g AS id FROM generate_series(1, 100) g")
    execute(pg, f"GRANT ALL ON {table} TO {APP_USER}")
    want = held_cursor_program(pg.port, table, autocommit)
    assert want == ([(i,) for i in range(1, 6)], [(i,) for i in range(6, 11)], [])
    # one backend: the next client gets the very backend the cursor was declared on
    s = sluice_for(start_sluice, pg, [APP_DB], "transaction", default_pool_size=1,
                   session_state_policy=policy)
    got = held_cursor_program(s.port, table, autocommit)
    if policy == "pin":
        assert got == want
    else:
        # the cursor ended with its transaction (the backend was reset): an error Postgres
        # would give for a cursor that is gone, never another backend's rows; in autocommit
        # (Django's iterator()) the first fetch already fails
        gone = ("error", "InvalidCursorName", "34000", 'ERROR:  cursor "held" does not exist')
        assert got == ((gone if autocommit else want[0]), gone, [])
        s.wait_for_log(r"uses a WITH HOLD cursor in transaction mode .*session_state_policy = pin")


def wait_notifies(conn, n, timeout=30):
    """conn.poll() on readable, as a psycopg2 LISTEN loop does, until n notifications came."""
    import select
    got = []

    def check():
        if select.select([conn], [], [], 0.2)[0]:
            conn.poll()
        while conn.notifies:
            nt = conn.notifies.pop(0)
            got.append((nt.channel, nt.payload))
        return len(got) >= n
    wait_until(check, timeout, interval=0, what=f"{n} notifications")
    return got


def listen_program(port):
    listener = psycopg2.connect(pg2_dsn(port))
    talker = psycopg2.connect(pg2_dsn(port))
    try:
        listener.autocommit = True
        talker.autocommit = True
        fetch(listener, "LISTEN jobs")
        fetch(talker, "NOTIFY jobs, 'one'")
        with talker:  # a transaction: delivered at its commit, in order
            fetch(talker, "SELECT pg_notify('jobs', 'two'), pg_notify('other', 'x')")
            fetch(talker, "NOTIFY jobs, 'three'")
        got = wait_notifies(listener, 3)
        fetch(listener, "UNLISTEN jobs")
        fetch(talker, "NOTIFY jobs, 'after unlisten'")
        fetch(listener, "SELECT 1")  # a round trip in which a late notification would come
        listener.poll()
        return got, [(nt.channel, nt.payload) for nt in listener.notifies]
    finally:
        listener.close()
        talker.close()


def test_psycopg2_listen_notify_with_poll_in_session_mode(pg, start_sluice):
    want = listen_program(pg.port)
    assert want == ([("jobs", "one"), ("jobs", "two"), ("jobs", "three")], [])
    s = sluice_for(start_sluice, pg, [APP_DB], "session")
    assert listen_program(s.port) == want


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_psycopg2_cancel_mid_query_gives_57014_and_the_connection_goes_on(
        pg, start_sluice, mode):
    import threading
    s = sluice_for(start_sluice, pg, [APP_DB], mode, default_pool_size=2)
    for autocommit in (True, False):
        conn = psycopg2.connect(pg2_dsn(s.port))
        conn.autocommit = autocommit
        err = []

        def run():
            try:
                fetch(conn, "SELECT pg_sleep(60) /* cancel me */")
            except psycopg2.Error as e:
                err.append(pg2_error(e))
        t = threading.Thread(target=run, daemon=True)
        t.start()
        pg.wait_for_active(APP_USER, "cancel me", timeout=30)
        conn.cancel()
        t.join(30)
        assert err == [("error", "QueryCanceled", "57014",
                        "ERROR:  canceling statement due to user request")]
        assert conn.get_transaction_status() == (
            psycopg2.extensions.TRANSACTION_STATUS_IDLE if autocommit
            else psycopg2.extensions.TRANSACTION_STATUS_INERROR)
        conn.rollback()
        assert fetch(conn, "SELECT 42") == [(42,)]
        conn.close()


# ---- clients that leave in the middle -------------------------------------------------------------

def app_locks_on(pg, table):
    """Locks app's backends hold on table, as pg_locks shows them."""
    return pg.query("SELECT l.pid, l.mode FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                    " WHERE a.usename = %s AND l.relation = %s::regclass",
                    [APP_USER, table], dbname=APP_DB)


def app_sessions(pg):
    return pg.query("SELECT state, query FROM pg_stat_activity WHERE usename = %s"
                    " AND backend_type = 'client backend' ORDER BY pid", [APP_USER])


def row_lockable(pg, table):
    """A direct client can lock row 1 at once (NOWAIT): nobody holds it."""
    try:
        with pg.superuser(APP_DB) as c, c.transaction():
            c.execute(f"SELECT id FROM {table} WHERE id = 1 FOR UPDATE NOWAIT")
        return True
    except Exception:  # noqa: BLE001 - 55P03 while the lock is held
        return False


def make_locked_table(pg, table):
    execute(pg, f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    execute(pg, f"INSERT INTO {table} SELECT g, 'v' FROM generate_series(1, 10) g")
    execute(pg, f"GRANT ALL ON {table} TO {APP_USER}")


def assert_nothing_left(pg, s, table, pool_size):
    """After a client left in the middle: no lock of its on the table, no backend idle in a
    transaction or still in its COPY, its rows are not there, the next client works, and the
    pool never had more than pool_size backends."""
    wait_until(lambda: not app_locks_on(pg, table) and row_lockable(pg, table), 30,
               interval=0.1, what="the row lock to be released")
    wait_until(lambda: all(st == "idle" for st, _q in app_sessions(pg)), 30, interval=0.1,
               what="app's backends to be idle (not in a transaction, not in COPY)")
    assert pg.query(f"SELECT count(*) FROM {table}", dbname=APP_DB) == [(10,)]
    assert pg.query(f"SELECT v FROM {table} WHERE id = 1", dbname=APP_DB) == [("v",)]
    with psycopg2.connect(pg2_dsn(s.port)) as c:
        assert fetch(c, f"SELECT count(*), txid_current_if_assigned() FROM {table}") == \
            [(10, None)]
        assert fetch(c, "SELECT name FROM pg_cursors") == []
        assert fetch(c, f"SELECT id FROM {table} WHERE id = 1 FOR UPDATE NOWAIT") == [(1,)]
    c.close()
    assert pg.count_backends(APP_USER, APP_DB) <= pool_size


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_psycopg2_close_inside_a_transaction_leaves_nothing_for_the_next_client(
        pg, start_sluice, table, mode):
    make_locked_table(pg, table)
    s = sluice_for(start_sluice, pg, [APP_DB], mode, default_pool_size=1)
    conn = psycopg2.connect(pg2_dsn(s.port))
    fetch(conn, f"SELECT v FROM {table} WHERE id = 1 FOR UPDATE")
    fetch(conn, f"UPDATE {table} SET v = 'changed' WHERE id = 1")
    fetch(conn, f"INSERT INTO {table} VALUES (11, 'new')")
    fetch(conn, "DECLARE c CURSOR FOR SELECT 1")
    assert app_locks_on(pg, table)
    conn.close()  # Terminate inside the transaction
    assert_nothing_left(pg, s, table, 1)


CARELESS_CHILD = textwrap.dedent("""
    import sys, time, psycopg2
    conn = psycopg2.connect(sys.argv[1])
    cur = conn.cursor()
    table, what = sys.argv[2], sys.argv[3]
    if what == "lock":
        cur.execute(f"SELECT v FROM {table} WHERE id = 1 FOR UPDATE")
        cur.execute(f"UPDATE {table} SET v = 'changed' WHERE id = 1")
        print("locked", flush=True)
        time.sleep(600)
    if what in ("sleep", "copy out"):
        cur.execute(f"SELECT v FROM {table} WHERE id = 1 FOR UPDATE")
        print("running", flush=True)
        if what == "sleep":
            cur.execute("SELECT pg_sleep(600)")

        class Stuck:
            "A COPY TO STDOUT reader that stops reading: the server's writes back up."
            def write(self, data):
                time.sleep(600)
        cur.copy_expert(f"COPY (SELECT g, repeat('x', 1000) FROM generate_series(1, 1000000) g)"
                        " TO STDOUT", Stuck())

    class Stalling:
        "A COPY source that sends some rows, then stalls mid-row."
        def __init__(self):
            self.calls = 0
        def read(self, size=-1):
            self.calls += 1
            if self.calls <= 50:
                return "".join(f"{100 + self.calls * 1000 + i}\\tcopied\\n" for i in range(500))
            if self.calls == 51:
                print("copying", flush=True)
                return "999999\\tcut in the mid"
            time.sleep(600)
        readline = read
    cur.execute(f"SELECT v FROM {table} WHERE id = 1 FOR UPDATE")
    cur.copy_expert(f"COPY {table} FROM STDIN", Stalling(), size=8192)
""")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("what,marker", [("lock", "locked"), ("copy", "copying"),
                                         ("sleep", "running"), ("copy out", "running")])
def test_psycopg2_client_killed_holding_a_lock_or_in_copy_leaves_nothing_behind(
        pg, start_sluice, table, tmp_path, mode, what, marker):
    make_locked_table(pg, table)
    s = sluice_for(start_sluice, pg, [APP_DB], mode, default_pool_size=1, admin_users=ADMIN)
    child_py = tmp_path / "child.py"
    child_py.write_text(CARELESS_CHILD)
    with BackendSampler(pg, APP_USER, datname=APP_DB) as sampler:
        child = subprocess.Popen([sys.executable, str(child_py), pg2_dsn(s.port), table, what],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline()
            assert line.strip() == marker, (line, child.stderr.read() if child.poll() else "")
            wait_until(lambda: app_locks_on(pg, table), 30, what="the child's lock")
            if what != "lock":
                busy = "pg_sleep" if what == "sleep" else "COPY"
                wait_until(lambda: any(st == "active" and busy in q
                                       for st, q in app_sessions(pg)), 30,
                           what=f"the child's {what} running on its backend")
            # a client queued for the pool's one server meanwhile: it gets a clean one
            waiter = Background(waiting_client, s.port, table)
            wait_until(lambda: pool_waiting(s) >= 1, 30, what="the waiter to queue")
            os.kill(child.pid, signal.SIGKILL)
            child.wait(30)
            assert waiter.result(60) == [(10, "v", None)]
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(30)
        assert_nothing_left(pg, s, table, 1)
    assert sampler.max <= 1, sampler.history


def waiting_client(port, table):
    conn = psycopg2.connect(pg2_dsn(port))
    try:
        return fetch(conn, f"SELECT count(*), min(v), txid_current_if_assigned() FROM {table}")
    finally:
        conn.close()


def pool_waiting(s):
    """Clients waiting for a server in appdb/app, from the admin console's SHOW POOLS."""
    import psycopg
    with psycopg.connect(s.dsn(dbname="sluice", user=ADMIN, password=None),
                         autocommit=True) as adm:
        cur = adm.execute("SHOW POOLS")
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    return sum(r["cl_waiting"] for r in rows if (r["database"], r["user"]) == (APP_DB, APP_USER))


def async_program(port):
    """psycopg2's asynchronous connections (psycogreen, gevent, aiopg): each step polled."""
    from psycopg2.extras import wait_select
    conn = psycopg2.connect(pg2_dsn(port), async_=1)
    wait_select(conn)
    out = []
    cur = conn.cursor()
    for sql in ("SELECT 1, 'one'", "SELECT 1/0", "SELECT pg_sleep(0.01), 'slept'",
                "SELECT count(*) FROM generate_series(1, 100000)"):
        try:
            cur.execute(sql)
            wait_select(conn)
            out.append(cur.fetchall())
        except psycopg2.Error as e:
            out.append(pg2_error(e))
    conn.close()
    return out


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_psycopg2_async_connection_sees_what_postgres_shows(pg, start_sluice, mode):
    want = async_program(pg.port)
    assert want[0] == [(1, "one")] and want[1][2] == "22012"
    s = sluice_for(start_sluice, pg, [APP_DB], mode)
    assert async_program(s.port) == want


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_notifications_for_a_listener_that_left_never_reach_the_next_client(pg, start_sluice,
                                                                             mode):
    """A listener leaves while a direct client keeps notifying its channel; the next client of
    that one backend must get none of them (in transaction mode the LISTEN already ends with
    its transaction: the backend is reset)."""
    import threading
    s = sluice_for(start_sluice, pg, [APP_DB], mode, default_pool_size=1)
    stop = threading.Event()
    sent = []

    def talk():
        t = psycopg2.connect(pg2_dsn(pg.port))
        t.autocommit = True  # each NOTIFY is delivered at once
        try:
            while not stop.is_set():
                fetch(t, f"NOTIFY jobs, 'n{len(sent)}'")
                sent.append(1)
                stop.wait(0.001)
        finally:
            t.close()
    talker = threading.Thread(target=talk, daemon=True)
    talker.start()
    try:
        got = []
        for _ in range(10):
            a = psycopg2.connect(pg2_dsn(s.port))
            a.autocommit = True
            fetch(a, "LISTEN jobs")
            if mode == "session":
                wait_notifies(a, 1)
            a.close()
            b = psycopg2.connect(pg2_dsn(s.port))
            b.autocommit = True
            for _ in range(3):
                fetch(b, "SELECT pg_sleep(0.01)")
                b.poll()
            got += b.notifies
            b.close()
    finally:
        stop.set()
        talker.join(30)
    assert sent and got == []


def cancel_copy_program(port, table):
    """conn.cancel() while copy_expert streams a slow source into COPY FROM STDIN."""
    import threading
    conn = psycopg2.connect(pg2_dsn(port))
    go, cancelled = threading.Event(), threading.Event()

    class Slow:
        """20 chunks, then a stop until conn.cancel() has returned (the backend has been
        signalled by then), then 20 more: the COPY is in the middle either way."""
        def __init__(self):
            self.n = 0

        def read(self, size=-1):
            self.n += 1
            if self.n == 21:
                go.set()
                assert cancelled.wait(60), "conn.cancel() did not return"
            if self.n > 40:
                return ""
            return "".join(f"{self.n * 1000 + i}\tx\n" for i in range(100))
        readline = read
    out = []

    def canceller():
        if go.wait(60):
            conn.cancel()
            cancelled.set()
    th = threading.Thread(target=canceller, daemon=True)
    th.start()
    try:
        with conn.cursor() as cur:
            cur.copy_expert(f"COPY {table} FROM STDIN", Slow(), size=4096)
        out.append("finished")
    except psycopg2.Error as e:
        out.append(pg2_error(e))
    out.append(conn.get_transaction_status())
    conn.rollback()
    out.append(fetch(conn, f"SELECT count(*) FROM {table}"))
    conn.close()
    return out


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_psycopg2_cancel_in_the_middle_of_copy_from_stdin_sees_what_postgres_shows(
        pg, start_sluice, table, mode):
    execute(pg, f"CREATE TABLE {table} (id int, v text)")
    execute(pg, f"GRANT ALL ON {table} TO {APP_USER}")
    want = cancel_copy_program(pg.port, table)
    assert want[0][2] == "57014", want
    s = sluice_for(start_sluice, pg, [APP_DB], mode, default_pool_size=1)
    assert cancel_copy_program(s.port, table) == want


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_maintenance_tools_through_sluice_say_what_they_say_directly(pg, start_sluice, source_db,
                                                                     mode):
    s = sluice_for(start_sluice, pg, [source_db], mode)

    def run(name, port, args):
        out = seen(tool(name, port, args))
        out["stdout"] = out["stdout"].replace(f":{port} ", ":PORT ")
        out["stderr"] = sorted(out["stderr"].splitlines())  # -j: in the order jobs finish
        return out
    for name, args in (("vacuumdb", ["-j", "2", "-z", "-d", source_db]),
                       ("vacuumdb", ["--analyze-in-stages", "-d", source_db]),
                       ("reindexdb", ["-d", source_db]),
                       ("clusterdb", ["-d", source_db]),
                       ("pg_isready", ["-d", source_db])):
        want = run(name, pg.port, args)
        assert want["rc"] == 0, want
        assert run(name, s.port, args) == want, (name, args)


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_pg_isready_through_sluice_answers_for_sluice_not_for_the_database(pg, start_sluice, mode):
    """libpq's ping (pg_isready) counts any authentication message as 'up', and sluice refuses
    a login for a database that is down (57P03) only after AuthenticationOk, as it refuses
    everything once the password is proven (a stranger learns nothing of a database). So
    pg_isready through sluice says 'accepting connections' while the database is down, where
    Postgres itself gives 'no response' (down) or 'rejecting connections' (57P03 before
    authentication, while it starts up). docs/operations.md says to probe /health instead."""
    from conftest import pick_port
    s = start_sluice({"pool_mode": mode}, databases={APP_DB: pg.db_entry(port=pick_port())})
    p = tool("psql", s.port, ["-X", "-d", APP_DB, "-c", "SELECT 1"])
    assert p.returncode == 2 and "the database is down or refuses connections" in p.stderr, p
    p = tool("pg_isready", s.port, ["-d", APP_DB])
    assert (p.returncode, p.stdout) == (0, f"127.0.0.1:{s.port} - accepting connections\n")


def test_pg_dump_and_psycopg2_in_statement_mode_get_0A000_for_their_begin(pg, start_sluice,
                                                                          source_db):
    s = sluice_for(start_sluice, pg, [source_db], "statement")
    p = tool("pg_dump", s.port, PLAIN + ["-d", source_db])
    assert (p.returncode, p.stdout) == (1, "")
    assert "ERROR:  transaction blocks are not allowed in statement pooling mode" in p.stderr
    assert "Query was: BEGIN" in p.stderr, p.stderr
    c = psycopg2.connect(pg2_dsn(s.port, source_db))  # not autocommit: psycopg2 sends BEGIN
    try:
        with pytest.raises(psycopg2.errors.FeatureNotSupported) as e:
            fetch(c, "SELECT 1")
        assert e.value.pgcode == "0A000"
    finally:
        c.close()
