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

The strict xfail is a difference found this way: a client that sends Terminate while its query
runs (relay.c).

Run with Debian's interpreter: /usr/bin/python3 -m pytest tests/integration/test_asyncpg.py
"""

import asyncio
import io

import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, BackendSampler

asyncpg = pytest.importorskip(
    "asyncpg", reason="needs asyncpg (python3-asyncpg): scripts/install-deps test")

LONG = 60.0  # generous limit for anything that should take well under a second
SLEEP = "SELECT pg_sleep(60)"  # a query that runs until something ends it


class Target:
    """Where a program connects: Postgres itself or sluice."""

    def __init__(self, port, postgres_port):
        self.kw = {"host": "127.0.0.1", "port": port, "user": APP_USER,
                   "password": APP_PASSWORD, "database": APP_DB}
        self.postgres_port = postgres_port

    def observer(self):
        """A connection straight to Postgres, to watch pg_stat_activity without waiting for
        a pool's backend."""
        return Target(self.postgres_port, self.postgres_port).connect()

    def connect(self, **kw):
        kw.setdefault("timeout", LONG)
        return asyncpg.connect(**self.kw, **self.settings(kw))

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
            runs.append(asyncio.run(program(Target(port, pg.port), schema)))
        finally:
            drop_schema(pg, schema)
    want, got = runs
    assert set(got) == set(want)
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
        # a run that failed may leave a leaver's query holding its locks: end it first
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"
                  " AND query = %s", [APP_USER, SLEEP])
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

def prog_prepare(mode):
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
        if mode == "session":  # in transaction mode the view lists the backend's (docs)
            await seen.step("pg_prepared_statements", conn, conn.fetchval(
                "SELECT count(*) FROM pg_prepared_statements"
                " WHERE statement = 'SELECT $1::int * 3'"))
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
    compare(pg, s, prog_prepare(mode), table)


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


# ---- asyncpg.create_pool: the reset query on release --------------------------------------------

SETTINGS_SQL = ("SELECT current_setting('application_name') a, current_setting('DateStyle') d,"
                " current_setting('TimeZone') z, current_setting('jit') j")
REPORTED = ("server_version", "server_encoding", "client_encoding", "DateStyle", "TimeZone",
            "IntervalStyle", "integer_datetimes", "standard_conforming_strings",
            "application_name", "is_superuser", "session_authorization")


def prog_pool(mode, workers, rounds):
    async def program(target, s):
        setup = await target.connect()
        await setup.execute(f"CREATE TABLE {s}.t (id int PRIMARY KEY, w int)")
        await setup.close()
        pool = await target.create_pool(min_size=2, max_size=4)
        first = Seen()
        async with pool.acquire() as conn:
            settings = conn.get_settings()
            await first.step("reported", conn, asyncio.sleep(0, [
                (p, getattr(settings, p, None)) for p in REPORTED]))
            await first.step("reset-query", conn, asyncio.sleep(0, conn._get_reset_query()))

        async def worker(i):
            seen = Seen()
            for r in range(rounds):
                async with pool.acquire() as conn:
                    # what the last holder changed must be gone (the reset query's RESET ALL)
                    await seen.step("settings", conn, conn.fetchrow(SETTINGS_SQL))
                    await seen.step("set", conn, conn.execute(
                        f"SET application_name = 'w{i}'; SET DateStyle = 'German';"
                        " SET TimeZone = 'Asia/Tokyo'"))
                    await seen.step("set-seen", conn, conn.fetchrow(
                        SETTINGS_SQL + ", '2024-01-02 03:04:05+00'::timestamptz::text t"))
                    if mode == "session":  # unreported: lasts only its transaction otherwise
                        await seen.step("jit-on", conn, conn.execute("SET jit = on"))
                        await seen.step("lock", conn, conn.fetchval(
                            "SELECT pg_advisory_lock($1)", i))

                    async def insert():
                        async with conn.transaction():
                            await conn.execute(f"INSERT INTO {s}.t VALUES ($1, $2)",
                                               i * 1000 + r, i)
                            return await conn.fetchval(
                                f"SELECT count(*) FROM {s}.t WHERE w = $1", i)
                    await seen.step("txn", conn, insert())
                    if r == 1:
                        await seen.step("left-in-txn", conn, conn.execute("BEGIN"))
                    if r == 2:
                        async with conn.transaction():  # a cursor left open: CLOSE ALL
                            await conn.cursor("SELECT 1")
                await seen.step("pool-fetchval", None, pool.fetchval("SELECT $1::int * 2", r))
                if mode == "session":  # the lock went with the reset query: anyone may take it
                    await seen.step("lock-free", None, pool.fetchval(
                        "SELECT pg_try_advisory_lock($1) AND pg_advisory_unlock($1)", i))
            return seen

        results = await asyncio.gather(*(worker(i) for i in range(workers)))
        await pool.close()
        return {"first": first, **dict(enumerate(results))}
    return program


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_pool_reset_query_leaves_nothing_for_the_next_holder(pg, start_sluice, table, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 4 if mode == "session" else 2})
    seen = compare(pg, s, prog_pool(mode, 6, 4), table)
    assert "RESET ALL" in seen["first"].log[1][1][1], seen["first"].log


def test_pool_reset_query_is_not_refused_by_session_state_policy(pg, start_sluice, table):
    # UNLISTEN *, CLOSE ALL and pg_advisory_unlock_all() undo session state, they make none:
    # session_state_policy = refuse must let asyncpg's reset query through.
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2,
                      "session_state_policy": "refuse"})
    compare(pg, s, prog_pool("transaction", 3, 3), table)


# ---- timeouts, cancelled tasks, close() and terminate() mid-query --------------------------------

async def wait_active(target, sql, count=1):
    """Wait until `count` backends of the user run `sql`."""
    conn = await target.observer()
    try:
        for _ in range(int(LONG / 0.05)):
            n = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $1",
                sql)
            if n == count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{count} backends never ran {sql!r}")
    finally:
        await conn.close()


async def cancelled(task):
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return "cancelled"
    return "finished"


def prog_timeouts_and_cancels():
    async def program(target, s):
        seen = Seen()
        conn = await target.connect()
        seen.watch(conn)
        await conn.execute(f"CREATE TABLE {s}.t (id int)")
        await seen.step("timeout", conn, conn.fetchval(SLEEP, timeout=1))
        await seen.step("after-timeout", conn, conn.fetchval("SELECT 1"))

        tr = conn.transaction()
        await tr.start()
        await seen.step("insert", conn, conn.execute(f"INSERT INTO {s}.t VALUES (1)"))
        await seen.step("timeout-in-txn", conn, conn.fetchval(SLEEP, timeout=1))
        await seen.step("aborted", conn, conn.fetchval("SELECT 1"))
        await seen.step("rollback", conn, tr.rollback())

        task = asyncio.ensure_future(conn.fetch(SLEEP))
        await wait_active(target, SLEEP)
        await seen.step("task-cancelled", conn, cancelled(task))
        await seen.step("after-cancel", conn, conn.fetchval("SELECT 2"))

        async def cancel_in_transaction():
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {s}.t VALUES (2)")
                task = asyncio.ensure_future(conn.fetch(SLEEP))
                await wait_active(target, SLEEP)
                return await cancelled(task)
        await seen.step("cancelled-in-txn", conn, cancel_in_transaction())
        await seen.step("count", conn, conn.fetchval(f"SELECT count(*) FROM {s}.t"))
        await conn.close()
        return {0: seen}
    return program


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_timeouts_and_cancelled_tasks(pg, start_sluice, table, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2})
    seen = compare(pg, s, prog_timeouts_and_cancels(), table)
    assert seen[0].log[0][1][1] == "TimeoutError", seen[0].log


def prog_leave_mid_query(how):
    """A client holding a table lock in a transaction leaves while its query runs; the next
    client must get the table (the lock gone with the leaver's transaction) and a backend with
    nothing of it: no transaction, its settings gone."""
    async def program(target, s):
        seen = Seen()
        setup = await target.connect()
        await setup.execute(f"CREATE TABLE {s}.t (id int); INSERT INTO {s}.t VALUES (1)")
        await setup.close()
        leaver = await target.connect()
        await leaver.execute("BEGIN")
        await leaver.execute(f"SET LOCAL application_name = 'leaver'; LOCK TABLE {s}.t;"
                             f" INSERT INTO {s}.t VALUES (2)")
        task = asyncio.ensure_future(leaver.fetch(SLEEP))
        await wait_active(target, SLEEP)
        if how == "close":  # asyncpg cancels the query, then sends Terminate
            await seen.step("close", None, leaver.close(timeout=LONG))
        elif how == "terminate":  # Terminate, and the socket closed at once
            await seen.step("terminate", None, asyncio.sleep(0, leaver.terminate()))
        else:  # the socket closed, no Terminate: a process killed, a host gone
            await seen.step("drop", None, asyncio.sleep(0, leaver._transport.abort()))
        try:
            await task
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            # Postgres: QueryCanceledError (close() cancels the query first), or
            # ConnectionDoesNotExistError (terminate())
            seen.log.append(("task", type(e).__name__))
        # Postgres notices the leaver within client_connection_check_interval (1 s here)
        try:
            nxt = await target.connect(timeout=20)  # its login may need the leaver's server
        except asyncio.TimeoutError:
            seen.log.append(("next-login", "timed out"))
            return {0: seen}
        seen.watch(nxt)
        reads = await seen.step("next-reads", nxt, nxt.fetch(
            f"SELECT id FROM {s}.t ORDER BY id", timeout=20))
        if reads[0] == "error":
            return {0: seen}  # the leaver is still there: the rest would wait for it too
        await seen.step("next-state", nxt, nxt.fetchrow(
            "SELECT current_setting('application_name') a, now() = statement_timestamp() fresh,"
            " pg_current_xact_id_if_assigned() IS NULL no_xid"))

        await nxt.close()

        async def leaver_gone():
            observer = await target.observer()
            try:
                for _ in range(int(LONG / 0.05)):
                    n = await observer.fetchval(
                        "SELECT count(*) FROM pg_stat_activity a LEFT JOIN pg_locks l"
                        " ON l.pid = a.pid AND l.relation = $1::regclass"
                        " WHERE a.pid <> pg_backend_pid() AND a.usename = current_user"
                        " AND (a.query = $2 OR a.application_name = 'leaver'"
                        "      OR l.pid IS NOT NULL)", f"{s}.t", SLEEP)
                    if n == 0:
                        return "gone"
                    await asyncio.sleep(0.05)
                return "still there"
            finally:
                await observer.close()
        await seen.step("leaver-gone", None, leaver_gone())
        return {0: seen}
    return program


def leave_mid_query(pg, start_sluice, table, mode, how):
    # one backend: the next client gets the leaver's server once sluice has dealt with it
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    seen = compare(pg, s, prog_leave_mid_query(how), table)
    assert seen[0].log[-1][1] == ("ok", "'gone'"), seen[0].log


@pytest.mark.parametrize("how", ["close", "drop"])
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_client_leaving_mid_query_leaves_nothing_to_the_next(pg, start_sluice, table, mode,
                                                              how):
    leave_mid_query(pg, start_sluice, table, mode, how)


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_client_terminating_mid_query_leaves_nothing_to_the_next(pg, start_sluice, table, mode):
    """asyncpg's terminate(): Terminate, and the socket closed at once, while a query that sends
    nothing runs. Postgres ends it within client_connection_check_interval; sluice, whose socket
    to the backend stays open, sees the hang-up and cancels the query after
    server_drain_timeout, as it cancels a vanished client's (docs/operations.md)."""
    leave_mid_query(pg, start_sluice, table, mode, "terminate")


# ---- LISTEN / NOTIFY -------------------------------------------------------------------------------

def prog_listen():
    async def program(target, s):
        seen = Seen()
        listener = await target.connect()
        sender = await target.connect()
        got = asyncio.Queue()

        def on_notify(conn, pid, channel, payload):
            got.put_nowait((channel, payload))

        async def next_notification():
            return await asyncio.wait_for(got.get(), LONG)

        await seen.step("listen", listener, listener.add_listener("ch", on_notify))
        await seen.step("notify", sender, sender.execute("NOTIFY ch, 'one'"))
        await seen.step("pg_notify", sender, sender.execute("SELECT pg_notify('ch', 'two')"))
        await seen.step("got-1", listener, next_notification())
        await seen.step("got-2", listener, next_notification())

        async def in_transaction():
            async with sender.transaction():
                await sender.execute("NOTIFY ch, 'txn-a'; NOTIFY ch, 'txn-b'; NOTIFY ch, 'txn-a'")
        await seen.step("txn-notify", sender, in_transaction())
        await seen.step("got-3", listener, next_notification())
        await seen.step("got-4", listener, next_notification())
        await seen.step("self", listener, listener.execute("NOTIFY ch, 'self'"))
        await seen.step("got-self", listener, next_notification())
        await seen.step("unlisten", listener, listener.remove_listener("ch", on_notify))
        await seen.step("listen-2", listener, listener.add_listener("ch2", on_notify))
        await seen.step("notify-lost", sender, sender.execute("NOTIFY ch, 'lost'"))
        await seen.step("notify-marker", sender, sender.execute("NOTIFY ch2, 'marker'"))
        # notifications come in commit order: 'lost', had it come, would be first
        await seen.step("got-marker", listener, next_notification())
        await seen.step("channels", listener, listener.fetch(
            "SELECT pg_listening_channels() c"))
        await listener.close()
        await sender.close()
        return {0: seen}
    return program


def test_listen_notify_in_session_mode(pg, start_sluice, table):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 2})
    compare(pg, s, prog_listen(), table)


def test_listen_in_transaction_mode_is_warned_or_refused_as_documented(pg, start_sluice, table):
    # docs/pool-modes.md: LISTEN does not outlive its transaction in transaction mode; the
    # default policy (warn) logs it. refuse answers 0A000 and the session goes on. asyncpg's
    # add_listener sends LISTEN by Parse: before the fix sluice answered the ERROR and a
    # ReadyForQuery and then closed the connection (a refused simple Query went on).
    async def listen(target, s):
        conn = await target.connect()
        try:
            try:
                await conn.add_listener("ch", lambda *a: None)
                listening = "listening"
            except asyncpg.PostgresError as e:
                listening = (type(e).__name__, e.sqlstate, e.severity)
            try:
                after = (await conn.fetch("SELECT pg_listening_channels()"),
                         await conn.fetchval("SELECT 1"))
            except asyncpg.ConnectionDoesNotExistError as e:
                after = type(e).__name__
            return listening, after
        finally:
            await conn.close()

    warn = start_sluice({"pool_mode": "transaction", "default_pool_size": 2})
    assert asyncio.run(listen(Target(warn.port, pg.port), table)) == ("listening", ([], 1))
    warn.wait_for_log(r"uses LISTEN in transaction mode", timeout=LONG)

    refuse = start_sluice({"pool_mode": "transaction", "default_pool_size": 2,
                           "session_state_policy": "refuse"})
    assert asyncio.run(listen(Target(refuse.port, pg.port), table)) == (
        ("FeatureNotSupportedError", "0A000", "ERROR"), ([], 1))


def test_session_state_refused_by_parse_leaves_the_session_going_on(pg, start_sluice):
    # Postgres skips what follows a failed Parse up to the Sync; sluice, refusing the Parse in
    # its place, does the same, so the client gets ERROR 0A000 and ReadyForQuery and goes on,
    # outside a transaction and inside one. Before the fix: the connection was closed. Inside a
    # transaction block the error fails the transaction, as any error does in Postgres: what
    # follows gets 25P02 and the COMMIT rolls back (before that fix the transaction went on and
    # the COMMIT committed it).
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2,
                      "session_state_policy": "refuse"})

    async def program(target):
        seen = Seen()
        conn = await target.connect()
        await seen.step("lock", conn, conn.fetchval("SELECT pg_advisory_lock($1)", 7))
        await seen.step("after", conn, conn.fetchval("SELECT $1::int + 1", 1))
        await seen.step("begin", conn, conn.execute("BEGIN"))
        await seen.step("in-txn", conn, conn.fetchval("SELECT 2"))
        await seen.step("temp-in-txn", conn, conn.prepare("CREATE TEMP TABLE tt (i int)"))
        await seen.step("still-in-txn", conn, conn.fetchval("SELECT 3"))
        await seen.step("commit", conn, conn.execute("COMMIT"))
        await seen.step("executemany", conn, conn.executemany(
            "SELECT pg_advisory_lock($1)", [(1,), (2,)]))
        await seen.step("last", conn, conn.fetchval("SELECT 4"))
        await conn.close()
        return seen.log

    refused = ("error", "FeatureNotSupportedError", "0A000",
               "a session advisory lock is not supported in transaction pooling mode"
               " (session_state_policy = refuse)")
    assert asyncio.run(program(Target(s.port, pg.port))) == [
        ("lock", refused, False),
        ("after", ("ok", "2"), False),
        ("begin", ("ok", "'BEGIN'"), True),
        ("in-txn", ("ok", "2"), True),
        ("temp-in-txn", ("error", "FeatureNotSupportedError", "0A000",
                         "a temporary table is not supported in transaction pooling mode"
                         " (session_state_policy = refuse)"), True),
        ("still-in-txn", ("error", "InFailedSQLTransactionError", "25P02",
                          "current transaction is aborted, commands ignored until end of"
                          " transaction block"), True),
        ("commit", ("ok", "'ROLLBACK'"), False),
        ("executemany", refused, False),
        ("last", ("ok", "4"), False),
    ]


# ---- caps under a storm of pools -------------------------------------------------------------------

def test_a_storm_of_pools_never_passes_the_pool_size(pg, start_sluice, table):
    size = 3
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": size,
                      "max_client_conn": 200})

    async def storm(target):
        await (await target.connect()).execute(
            f"CREATE TABLE {table} (id int PRIMARY KEY, pool int)")
        pools = [await target.create_pool(min_size=2, max_size=5) for _ in range(8)]

        async def work(p, k):
            for r in range(10):
                async with pools[p].acquire() as conn:
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)",
                                           (p * 100 + k) * 100 + r, p)
                        await conn.fetchval("SELECT pg_sleep(0.001)")
                    assert await conn.fetchval("SELECT $1::int + 1", r) == r + 1
        await asyncio.gather(*(work(p, k) for p in range(8) for k in range(6)))
        for p in pools:
            await p.close()
        conn = await target.connect()
        try:
            return await conn.fetch(f"SELECT pool, count(*) FROM {table} GROUP BY 1 ORDER BY 1")
        finally:
            await conn.close()

    with BackendSampler(pg, APP_USER, interval=0.05) as sampler:
        rows = asyncio.run(storm(Target(s.port, pg.port)))
    assert [tuple(r) for r in rows] == [(p, 60) for p in range(8)]
    assert sampler.samples > 3
    assert sampler.max <= size, sampler.history


# ---- a cached statement's result type after DDL ------------------------------------------------------

def prog_result_type_after_ddl():
    """asyncpg caches a statement with its result description. After another client changes
    the column's type, Postgres answers the old statement 0A000 'cached plan must not change
    result type', and asyncpg prepares it again by itself (outside a transaction). In
    transaction mode the steps put A's statement on one backend (X) only, then run it after
    the DDL where only the other (Y) is free, so sluice prepares it there from its text."""
    async def program(target, s):
        seen = Seen()
        a, c, d = [await target.connect() for _ in range(3)]
        await a.execute(f"CREATE TABLE {s}.t (id int, v int); INSERT INTO {s}.t VALUES (1, 5)")
        q = f"SELECT v FROM {s}.t WHERE id = $1"
        await a.execute("BEGIN")
        await seen.step("a-reads-on-x", a, a.fetch(q, 1))
        await c.execute("BEGIN")
        await c.execute("SELECT 1")  # C holds Y
        await a.execute("COMMIT")
        await d.execute("BEGIN")
        await d.execute("SELECT 1")  # D holds X
        await seen.step("c-alters", c, c.execute(
            f"ALTER TABLE {s}.t ALTER COLUMN v TYPE text USING 'abc' || v"))
        await c.execute("COMMIT")
        await seen.step("a-reads-after", a, a.fetch(q, 1))  # Postgres: 0A000, asyncpg retries
        await d.execute("COMMIT")
        for conn in (a, c, d):
            await conn.close()
        return {0: seen}
    return program


# Before sluice checked result types, transaction mode prepared the statement again from its
# text on a backend that lacked it, and asyncpg decoded the new text column with the int4 codec
# it had described ('abc5' as 1633837877); now it gets 0A000 and prepares it again, as with
# Postgres.
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_cached_statement_after_ddl_changes_its_result_type(pg, start_sluice, table, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2 if mode == "transaction" else 3})
    compare(pg, s, prog_result_type_after_ddl(), table)


# ---- big executemany, a small statement cache ----------------------------------------------------

def prog_big_executemany_small_cache(mode):
    """executemany streams one Bind/Execute per row and one Sync at the end, writing while the
    server answers; a statement cache of 3 closes statements as it evicts them (Close)."""
    async def program(target, s):
        seen = Seen()
        conn = await target.connect(statement_cache_size=3)
        await conn.execute(f"CREATE TABLE {s}.t (id int PRIMARY KEY, v text)")
        await seen.step("many", conn, conn.executemany(
            f"INSERT INTO {s}.t VALUES ($1, $2)", [(i, "x" * (i % 300)) for i in range(20000)]))
        await seen.step("many-dup-last", conn, conn.executemany(
            f"INSERT INTO {s}.t VALUES ($1, $2)", [(30000 + i, "y") for i in range(5000)]
            + [(0, "dup")]))
        await seen.step("count", conn, conn.fetchrow(
            f"SELECT count(*), sum(length(v)) FROM {s}.t"))
        for r in range(4):
            for k in range(8):  # more texts than the cache holds: each evicts another
                await seen.step(f"q{k}", conn, conn.fetchval(f"SELECT $1::int + {k}", r))
        if mode == "session":  # in transaction mode the view lists the backend's (docs)
            await seen.step("prepared", conn, conn.fetchval(
                "SELECT count(*) FROM pg_prepared_statements"))
        await conn.close()
        return {0: seen}
    return program


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_big_executemany_and_a_small_statement_cache(pg, start_sluice, table, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2})
    compare(pg, s, prog_big_executemany_small_cache(mode), table)
