"""asyncpg behind sluice, Postgres as the oracle.

asyncpg (python3-asyncpg) is the async Python driver most applications put behind a pooler. It
prepares every query as a named statement (its statement cache, on by default), introspects
pg_type the first time it meets a type, runs cursors as named portals, resets a pooled
connection with `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;` and cancels
a timed-out query with a CancelRequest on a connection of its own (after an SSLRequest: its
default sslmode is `prefer`). Each program here runs once directly against Postgres and once
through sluice and everything it sees is compared: each step's result (the repr of its records,
which holds the Python type of every value), error (class, SQLSTATE, message), the notices and
notifications, and whether the connection is in a transaction. In transaction mode several
clients run at once on a pool smaller than their number, so cached statements meet backends
that lack them.

Run with Debian's interpreter: /usr/bin/python3 -m pytest tests/integration/test_asyncpg.py
"""

import asyncio
import io

import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, BackendSampler, wait_until

asyncpg = pytest.importorskip(
    "asyncpg", reason="needs asyncpg (python3-asyncpg): scripts/install-deps test")

LONG = 60.0  # generous limit for anything that should take well under a second


class Target:
    """Where a program connects: Postgres itself or sluice."""

    def __init__(self, port):
        self.kw = {"host": "127.0.0.1", "port": port, "user": APP_USER,
                   "password": APP_PASSWORD, "database": APP_DB}

    def connect(self, **kw):
        return asyncpg.connect(**self.kw, timeout=LONG, **self.settings(kw))

    def create_pool(self, **kw):
        return asyncpg.create_pool(**self.kw, timeout=LONG, **self.settings(kw))

    @staticmethod
    def settings(kw):
        # asyncpg's own advice: its introspection query takes seconds with JIT on
        kw.setdefault("server_settings", {"jit": "off"})
        return kw


class Seen:
    """What one client of a program sees, in order."""

    def __init__(self):
        self.log = []

    def watch(self, conn):
        conn.add_log_listener(lambda c, m: self.log.append(
            ("notice", m.severity, m.sqlstate, m.message)))

    async def step(self, label, conn, awaitable):
        try:
            out = ("ok", shape(await awaitable))
        except asyncpg.PostgresError as e:
            out = ("error", type(e).__name__, e.sqlstate, e.message)
        except (asyncpg.InterfaceError, asyncio.TimeoutError) as e:
            out = ("error", type(e).__name__, str(e))
        self.log.append((label, out, in_transaction(conn)))
        return out


def in_transaction(conn):
    return None if conn is None or conn.is_closed() else conn.is_in_transaction()


def shape(v):
    """A result as something comparable: the repr of records holds each value's Python type
    (Decimal('1') and 1 differ); type descriptions lose their OIDs, which differ between runs
    that create the types afresh."""
    if isinstance(v, (list, tuple)) and v and isinstance(v[0], asyncpg.types.Attribute):
        return [(a.name, a.type.name, a.type.kind, a.type.schema) for a in v]
    if isinstance(v, (list, tuple)) and v and isinstance(v[0], asyncpg.types.Type):
        return [(t.name, t.kind, t.schema) for t in v]
    return repr(v)


def compare(pg, sluice, program, schema):
    """Run program(target, schema) against Postgres, then through sluice, each in a fresh
    schema; it returns {client: Seen}; every client must have seen the same."""
    runs = []
    for port in (pg.port, sluice.port):
        drop_schema(pg, schema)
        with pg.superuser(dbname=APP_DB) as c:
            c.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {APP_USER}")
        try:
            runs.append(asyncio.run(program(Target(port), schema)))
        finally:
            drop_schema(pg, schema)
    want, got = runs
    assert sorted(got) == sorted(want)
    for client in want:
        w, g = want[client].log, got[client].log
        for i, (ws, gs) in enumerate(zip(w, g)):
            assert gs == ws, (f"client {client} step {i} differs\n postgres: {ws}\n   sluice: "
                              f"{gs}\npostgres saw:\n" + "\n".join(map(str, w))
                              + "\nsluice saw:\n" + "\n".join(map(str, g)))
        assert len(g) == len(w), f"postgres saw {w}\nsluice saw {g}"
    return want


def drop_schema(pg, schema):
    with pg.superuser(dbname=APP_DB) as c:
        c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# ---- the statement cache: many clients, fewer backends -------------------------------------------

def prog_statement_cache(clients, rounds):
    async def program(target, s):
        setup = await target.connect()
        await setup.execute(f"CREATE TABLE {s}.t (id int PRIMARY KEY, client int, v text)")
        await setup.close()

        async def client(i):
            seen = Seen()
            conn = await target.connect(server_settings={})  # asyncpg's defaults
            seen.watch(conn)
            base = i * 10000
            for r in range(rounds):
                await seen.step("fetchval", conn, conn.fetchval("SELECT $1::int + 1", r))
                await seen.step("fetchrow", conn, conn.fetchrow(
                    "SELECT $1::text || 'x' AS s, $2::numeric * 2 AS n, $3::float8 AS f",
                    f"c{i}", r, r / 3))
                await seen.step("execute", conn, conn.execute(
                    f"INSERT INTO {s}.t VALUES ($1, $2, $3)", base + r, i, f"v{r}"))
                await seen.step("executemany", conn, conn.executemany(
                    f"INSERT INTO {s}.t VALUES ($1, $2, $3)",
                    [(base + 1000 + r * 10 + k, i, None) for k in range(5)]))
                await seen.step("fetch", conn, conn.fetch(
                    f"SELECT id, v FROM {s}.t WHERE client = $1 AND id % 7 = $2 ORDER BY id",
                    i, r % 7))
                await asyncio.sleep(0)  # let the other clients take the backends
            # executemany is atomic: a duplicate key undoes the whole batch
            await seen.step("executemany-dup", conn, conn.executemany(
                f"INSERT INTO {s}.t VALUES ($1, $2, $3)",
                [(base + 5000 + k, i, "d") for k in range(5)] + [(base, i, "dup")]))
            await seen.step("count", conn, conn.fetchval(
                f"SELECT count(*) FROM {s}.t WHERE client = $1", i))
            await seen.step("bad-param", conn, conn.fetchval("SELECT $1::int", "x"))
            await seen.step("server-error", conn, conn.fetchval("SELECT 1 / $1::int", 0))
            await seen.step("notice", conn, conn.execute(
                f"DROP TABLE IF EXISTS {s}.nope_{i}"))
            await seen.step("after", conn, conn.fetchval("SELECT $1::int + 1", 41))
            await conn.close()
            return seen

        results = await asyncio.gather(*(client(i) for i in range(clients)))
        return dict(enumerate(results))
    return program


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_statement_cache_across_more_clients_than_backends(pg, start_sluice, table, mode):
    # 6 clients on 2 backends (transaction mode): each cached statement meets backends that
    # lack it, and identical texts of different clients share one statement per backend.
    size = 2 if mode == "transaction" else 6
    s = start_sluice({"pool_mode": mode, "default_pool_size": size})
    seen = compare(pg, s, prog_statement_cache(6, 12), table)
    assert seen[0].log[-1][1] == ("ok", "42"), seen[0].log


# ---- types: introspection of custom types ------------------------------------------------------

def prog_types():
    async def program(target, s):
        seen = Seen()
        conn = await target.connect()
        seen.watch(conn)

        async def q(label, sql, *args):
            await seen.step(label, conn, conn.fetch(sql, *args))

        await seen.step("ddl", conn, conn.execute(f"""
            CREATE TYPE {s}.mood AS ENUM ('sad', 'ok', 'happy');
            CREATE TYPE {s}.pair AS (a int, b text, m {s}.mood);
            CREATE DOMAIN {s}.pos AS int CHECK (VALUE > 0);
            CREATE TYPE {s}.nested AS (p {s}.pair, ps {s}.pair[], d {s}.pos)"""))
        await q("enum", f"SELECT 'happy'::{s}.mood AS m, ARRAY['sad', 'ok']::{s}.mood[] AS ms")
        await q("enum-param", f"SELECT $1::{s}.mood AS m, $2::{s}.mood[] AS ms",
                "ok", ["happy", "sad"])
        await q("bad-enum", f"SELECT $1::{s}.mood", "angry")
        await q("composite", f"SELECT ROW(1, 'x', 'ok')::{s}.pair AS p,"
                             f" ARRAY[ROW(2, NULL, 'sad')::{s}.pair] AS ps")
        await q("composite-param", f"SELECT $1::{s}.pair AS p", (7, "seven", "happy"))
        await q("domain", f"SELECT 5::{s}.pos AS d, $1::{s}.pos AS e", 6)
        await q("domain-violation", f"SELECT $1::{s}.pos", -1)
        await q("nested", f"SELECT ROW(ROW(1, 'a', 'ok'), ARRAY[ROW(2, 'b', 'sad')::{s}.pair],"
                          f" 3)::{s}.nested AS n")
        await q("arrays", "SELECT ARRAY[[1, 2], [3, NULL]]::int[] AS a,"
                          " ARRAY['x', NULL, 'z']::text[] AS t, '{}'::int[] AS e,"
                          " $1::float8[] AS f", [1.5, float("inf")])
        await q("jsonb", """SELECT '{"a": [1, 2.5, null]}'::jsonb AS j, '[1]'::json AS k,"""
                         " $1::jsonb AS p", '{"b": true}')
        await q("numeric", "SELECT 1.50::numeric AS n, 'NaN'::numeric AS nan,"
                           " 123456789012345678901234567890.123456789::numeric AS big,"
                           " $1::numeric AS p, 1e-20::numeric AS small", "2.000")
        await q("times", "SELECT '2024-02-29 12:34:56.789+05'::timestamptz AS tz,"
                         " '2024-02-29 12:34:56'::timestamp AS ts, 'infinity'::timestamp AS inf,"
                         " '1 year 2 days 03:04:05'::interval AS iv, '2024-02-29'::date AS d,"
                         " '12:00+02'::timetz AS tt")
        await q("misc", "SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,"
                        " '10.0.0.1/8'::inet AS i, '\\x00ff'::bytea AS b,"
                        " int4range(1, 5) AS r, $1::int8range AS pr, 'x'::\"char\" AS c,"
                        " 12.5::money AS mo, B'101'::bit(3) AS bits",
                asyncpg.Range(2, 9))
        await seen.step("table", conn, conn.execute(f"""
            CREATE TABLE {s}.typed (id serial PRIMARY KEY, m {s}.mood, p {s}.pair, d {s}.pos,
                                    j jsonb, n numeric(10, 2), ts timestamptz);
            ALTER TYPE {s}.mood ADD VALUE 'ecstatic'"""))
        await seen.step("insert-typed", conn, conn.executemany(
            f"INSERT INTO {s}.typed (m, p, d, j, n, ts) VALUES ($1, $2, $3, $4, $5, $6)",
            [("ok", (1, "a", "sad"), 1, "{}", "1.005", None),
             ("ecstatic", None, 2, '{"x": 1}', "99999999.99", None)]))
        await q("select-typed", f"SELECT m, p, d, j, n FROM {s}.typed ORDER BY id")
        await conn.set_type_codec("jsonb", encoder=lambda v: repr(v).replace("'", '"'),
                                  decoder=lambda t: ("decoded", t), schema="pg_catalog")
        await q("jsonb-codec", f"SELECT j, $1::jsonb AS p FROM {s}.typed ORDER BY id",
                {"k": 1})
        await conn.close()
        # a second connection introspects the types again
        conn = await target.connect()
        await seen.step("second-conn", conn, conn.fetch(
            f"SELECT m, p, d FROM {s}.typed ORDER BY id"))
        await conn.close()
        return {0: seen}
    return program


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_type_introspection_of_custom_types(pg, start_sluice, table, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2})
    seen = compare(pg, s, prog_types(), table)
    assert "Record m='happy'" in seen[0].log[1][1][1], seen[0].log


# ---- conn.prepare() ----------------------------------------------------------------------------

def prog_prepare():
    async def program(target, s):
        seen = Seen()
        conn = await target.connect()
        seen.watch(conn)
        await conn.execute(f"CREATE TABLE {s}.t AS SELECT g AS id, g * 2 AS v"
                           " FROM generate_series(1, 50) g")
        st = await conn.prepare(f"SELECT id, v, $1::text AS tag FROM {s}.t WHERE id <= $2"
                                " ORDER BY id")
        await seen.step("attributes", conn, asyncio.sleep(0, st.get_attributes()))
        await seen.step("parameters", conn, asyncio.sleep(0, st.get_parameters()))
        await seen.step("query", conn, asyncio.sleep(0, st.get_query()))
        for r in range(4):
            await seen.step("fetch", conn, st.fetch("x", 3 + r))
            await seen.step("fetchrow", conn, st.fetchrow("y", r))
            await seen.step("fetchval", conn, st.fetchval("z", 40, column=1))
            await seen.step("status", conn, asyncio.sleep(0, st.get_statusmsg()))
        await seen.step("explain", conn, st.explain("x", 3))
        await seen.step("bad-arg", conn, st.fetch(1, 2))
        named = await conn.prepare("SELECT $1::int * 3", name="my_stmt")
        await seen.step("named", conn, named.fetchval(5))
        await seen.step("named-again", conn, conn.prepare("SELECT 1", name="my_stmt"))
        await seen.step("pg_prepared_statements", conn, conn.fetchval(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::int * 3'"))
        ins = await conn.prepare(f"INSERT INTO {s}.t VALUES ($1, $2)")
        await seen.step("stmt-executemany", conn, ins.executemany([(100, 1), (101, 2)]))
        await seen.step("stmt-executemany-dup", conn, ins.executemany([(102, 1), (100, 2)]))
        async with conn.transaction():
            await seen.step("in-txn", conn, st.fetchval("t", 50))
            cur = await st.cursor("c", 50)
            await seen.step("stmt-cursor", conn, cur.fetch(3))
        await conn.close()
        return {0: seen}
    return program


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_prepared_statement_objects(pg, start_sluice, table, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2})
    compare(pg, s, prog_prepare(), table)


# ---- transactions, savepoints, isolation -------------------------------------------------------

def prog_transactions():
    async def program(target, s):
        seen = Seen()
        conn = await target.connect()
        seen.watch(conn)
        await conn.execute(f"CREATE TABLE {s}.t (id int PRIMARY KEY)")

        async def nested():
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {s}.t VALUES (1)")
                try:
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO {s}.t VALUES (2)")
                        await conn.execute(f"INSERT INTO {s}.t VALUES (1)")
                except asyncpg.UniqueViolationError as e:
                    seen.log.append(("inner", e.sqlstate, in_transaction(conn)))
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {s}.t VALUES (3)")
            return await conn.fetch(f"SELECT id FROM {s}.t ORDER BY id")
        await seen.step("nested", conn, nested())

        async def isolated(isolation, readonly, deferrable):
            async with conn.transaction(isolation=isolation, readonly=readonly,
                                        deferrable=deferrable):
                got = await conn.fetchrow("SELECT current_setting('transaction_isolation') i,"
                                          " current_setting('transaction_read_only') r,"
                                          " current_setting('transaction_deferrable') d")
                try:
                    await conn.execute(f"INSERT INTO {s}.t VALUES (10)")
                except asyncpg.PostgresError as e:
                    return got, e.sqlstate
                return got, "inserted"
        for iso in ("serializable", "repeatable_read", "read_committed"):
            for ro in (False, True):
                await seen.step(f"{iso}-{ro}", conn, isolated(iso, ro, iso == "serializable"))
                await conn.execute(f"DELETE FROM {s}.t WHERE id = 10")

        async def fails():
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {s}.t VALUES (20)")
                await conn.execute("SELECT 1 / 0")
        await seen.step("fails", conn, fails())
        await seen.step("after-fail", conn, conn.fetchval(f"SELECT count(*) FROM {s}.t"))

        tr = conn.transaction()
        await tr.start()
        await seen.step("manual-insert", conn, conn.execute(f"INSERT INTO {s}.t VALUES (30)"))
        await seen.step("manual-error", conn, conn.execute("SELECT 1 / 0"))
        await seen.step("manual-aborted", conn, conn.execute("SELECT 1"))
        await seen.step("manual-rollback", conn, tr.rollback())
        await seen.step("begin-sql", conn, conn.execute("BEGIN"))
        await seen.step("sql-savepoint", conn, conn.execute("SAVEPOINT a; SELECT 1 / 0"))
        await seen.step("sql-rollback-to", conn, conn.execute("ROLLBACK TO SAVEPOINT a"))
        await seen.step("sql-commit", conn, conn.execute("COMMIT"))
        await seen.step("commit-outside", conn, conn.execute("COMMIT"))
        await seen.step("final", conn, conn.fetch(f"SELECT id FROM {s}.t ORDER BY id"))
        await conn.close()
        return {0: seen}
    return program


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_transactions_savepoints_and_isolation(pg, start_sluice, table, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2})
    compare(pg, s, prog_transactions(), table)


# ---- cursors --------------------------------------------------------------------------------------

def prog_cursors():
    async def program(target, s):
        seen = Seen()
        conn = await target.connect()
        seen.watch(conn)

        async def iterate():
            async with conn.transaction():
                return [r["g"] async for r in conn.cursor(
                    "SELECT g FROM generate_series(1, $1::int) g", 60, prefetch=7)]
        await seen.step("iterate", conn, iterate())

        async def navigate():
            out = []
            async with conn.transaction():
                cur = await conn.cursor("SELECT g, repeat('x', g) r FROM generate_series(1, 50) g")
                out.append(await cur.fetch(5))
                out.append(await cur.forward(10))
                out.append(await cur.fetchrow())
                out.append(await cur.fetch(100))
                out.append(await cur.fetchrow())
            return out
        await seen.step("navigate", conn, navigate())

        async def outside():
            cur = await conn.cursor("SELECT 1")
            return await cur.fetch(1)
        await seen.step("outside-txn", conn, outside())

        async def error_midway():
            async with conn.transaction():
                return [r[0] async for r in conn.cursor(
                    "SELECT g FROM generate_series(1, 40) g WHERE 1 / (g - 30) <> 7",
                    prefetch=8)]
        await seen.step("error-midway", conn, error_midway())
        await seen.step("after", conn, conn.fetchval("SELECT 1"))
        await conn.close()
        return {0: seen}
    return program


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_cursors_in_a_transaction(pg, start_sluice, table, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2})
    compare(pg, s, prog_cursors(), table)


# ---- COPY -------------------------------------------------------------------------------------------

def prog_copy():
    async def program(target, s):
        seen = Seen()
        conn = await target.connect()
        seen.watch(conn)
        await conn.execute(f"CREATE TABLE {s}.t (id int PRIMARY KEY, v text, n numeric)")
        await seen.step("records", conn, conn.copy_records_to_table(
            "t", schema_name=s, records=[(i, f"v{i}", i / 4) for i in range(3000)]))
        await seen.step("records-dup", conn, conn.copy_records_to_table(
            "t", schema_name=s, records=[(5000, "a", 1), (1, "dup", 2)]))
        await seen.step("records-columns", conn, conn.copy_records_to_table(
            "t", schema_name=s, columns=["id", "v"], records=[(6000 + i, "w") for i in range(10)]))
        src = io.BytesIO("".join(f"{7000 + i},csv{i},{i}.5\n" for i in range(500)).encode())
        await seen.step("to-table", conn, conn.copy_to_table(
            "t", schema_name=s, source=src, format="csv"))
        await seen.step("to-table-bad", conn, conn.copy_to_table(
            "t", schema_name=s, source=io.BytesIO(b"1,x,notanumber\n"), format="csv"))

        async def from_query():
            out = io.BytesIO()
            status = await conn.copy_from_query(
                f"SELECT * FROM {s}.t WHERE id > $1 ORDER BY id", 2990, output=out,
                format="csv")
            return status, out.getvalue()
        await seen.step("from-query", conn, from_query())

        async def from_table():
            out = io.BytesIO()
            status = await conn.copy_from_table("t", schema_name=s, output=out,
                                                columns=["id", "n"], format="binary")
            return status, len(out.getvalue())
        await seen.step("from-table", conn, from_table())

        async def in_transaction():
            async with conn.transaction():
                await conn.copy_records_to_table("t", schema_name=s, records=[(9000, "x", 0)])
                return await conn.fetchval(f"SELECT count(*) FROM {s}.t")
        await seen.step("in-txn", conn, in_transaction())
        await seen.step("count", conn, conn.fetchrow(f"SELECT count(*), sum(id) FROM {s}.t"))
        await conn.close()
        return {0: seen}
    return program


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_copy(pg, start_sluice, table, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2})
    compare(pg, s, prog_copy(), table)
