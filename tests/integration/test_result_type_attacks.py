"""Attacks on sluice's check of a prepared statement's result type after DDL (stmt_track.c,
docs/pool-modes.md "A statement's result type after DDL"), as careless and hostile clients make
them, Postgres as the oracle where the behaviour is transparent."""

import collections
import contextlib
import struct
import threading

import psycopg
import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, BackendSampler, wait_until
from pgwire import (bind_msg, close_msg, describe_msg, execute_msg, message, parse_data_row,
                    parse_fields,
                    parse_msg, query_msg, raw_login, sync_msg, terminate_msg)
from test_admin import console, pool_row
from test_driver_modes import compare_clients, drop, libpq_pipeline, on_another_backend

ALTER_TO_TEXT = "ALTER TABLE {t} ALTER COLUMN v TYPE text USING 'abc' || v"


def error_then_wait(p):
    """A batch whose first request fails, then a use of q that needs q prepared again on this
    backend (sluice's Parse and Describe, skipped by the server after the error), then a
    batch that uses q again."""
    return libpq_pipeline(p, [
        [lambda q: q.send_query_params(b"SELECT 1/0", None),
         lambda q: q.send_query_prepared(b"q", [b"1"])],
        [lambda q: q.send_query_prepared(b"q", [b"1"])],
        [lambda q: q.send_query_params(b"SELECT 42", None)]])


def test_a_use_after_a_failed_batch_that_skipped_the_prepare_again(pg, start_sluice, table):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2})
    for alter in (ALTER_TO_TEXT, "SELECT 1 FROM {t}"):
        steps = on_another_backend(table, alter.format(t=table),
                                   [(0, "A's pipeline", error_then_wait)])
        compare_clients(pg, s, table, steps)


# ---- the protocol by hand: every reply compared --------------------------------------------------

def summary(mtype, payload):
    """What a client sees of one message (no backend pids or keys)."""
    if mtype == "E":
        f = parse_fields(payload)
        return ("E", f.get("C"), f.get("M"))
    if mtype == "T":
        (n,) = struct.unpack_from("!h", payload)
        cols, at = [], 2
        for _ in range(n):
            end = payload.index(b"\0", at)
            name = payload[at:end]
            _, _, typ, _, mod, _ = struct.unpack_from("!ihihih", payload, end + 1)
            cols.append((name, typ, mod))
            at = end + 1 + 18
        return ("T", len(cols), hash(tuple(cols)))
    if mtype == "D":
        return ("D", parse_data_row(payload)[:3])
    if mtype == "C":
        return ("C", payload.rstrip(b"\0").decode())
    if mtype == "Z":
        return ("Z", payload.decode())
    if mtype in "SNK":
        return None
    return (mtype, payload[:64])


def exchange(conn, msgs, syncs, until=("Z",)):
    """Send msgs at once and read everything up to the syncs-th reply of a type in until."""
    conn.send(b"".join(msgs))
    seen = []
    while syncs:
        mtype, payload = conn.read_message()
        s = summary(mtype, payload)
        if s:
            seen.append(s)
        if mtype in until:
            syncs -= 1
    return seen


def direct(pg):
    return raw_login(pg.port, password=APP_PASSWORD)


def through(sluice):
    return raw_login(sluice.port, password=APP_PASSWORD)


def compare_raw(pg, sluice, table, setup, program):
    """program(conns, table) -> what the clients saw, run against Postgres directly and through
    sluice, each from a fresh table (setup: SQL); both must be the same."""
    seen = []
    for connect in (lambda: direct(pg), lambda: through(sluice)):
        drop(pg, table)
        with pg.superuser(dbname=APP_DB) as c:
            c.execute(f"SET ROLE {APP_USER}; " + setup.format(t=table))
        conns = [connect() for _ in range(3)]
        try:
            seen.append(program(conns, table))
        finally:
            for c in conns:
                c.close()
    drop(pg, table)
    want, got = seen
    assert got == want, ("postgres saw:\n" + "\n".join(map(str, want))
                         + "\nsluice saw:\n" + "\n".join(map(str, got)))
    return want


TABLE = "CREATE TABLE {t} (id int, v int); INSERT INTO {t} VALUES (1, 5), (2, 6)"


def test_a_pipeline_that_closes_and_parses_a_name_again_with_its_describes(
        pg, start_sluice, table):
    """Parse q; Describe q; Bind q; Close q; Parse q (another text); Describe; Bind, in one
    batch, the client's own Describes right after sluice's, then uses in the next batches."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})

    def program(conns, t):
        a, b = conns[0], conns[1]
        out = exchange(a, [
            parse_msg("q", f"SELECT v FROM {t} WHERE id = $1"), describe_msg("S", "q"),
            bind_msg("", "q", ["1"]), execute_msg(), close_msg("S", "q"),
            parse_msg("q", f"SELECT v::text || 'x' AS w, id FROM {t} WHERE id = $1"),
            describe_msg("S", "q"), bind_msg("", "q", ["2"]), describe_msg("P", ""),
            execute_msg(), sync_msg(),
            bind_msg("", "q", ["1"]), execute_msg(), sync_msg()], 2)
        out += exchange(b, [query_msg(f"ALTER TABLE {t} ALTER COLUMN v TYPE text")], 1)
        out += exchange(b, [parse_msg("r", f"SELECT v::text || 'x' AS w, id FROM {t} WHERE id = $1"),
                            sync_msg()], 1)
        out += exchange(a, [bind_msg("", "q", ["2"]), execute_msg(), sync_msg(),
                            parse_msg("bad", "SELEC 1"), bind_msg("", "bad"), execute_msg(),
                            describe_msg("S", "bad"), sync_msg(),
                            describe_msg("S", "bad"), bind_msg("", "q", ["1"]), execute_msg(),
                            sync_msg()], 3)
        return out

    compare_raw(pg, s, table, TABLE, program)


def wide_select(t, n):
    return "SELECT " + ", ".join(f"v + {i} AS c{i}" for i in range(n)) + f" FROM {t} WHERE id = $1"


def test_wide_statements_a_copy_and_no_rows_prepared_by_name(pg, start_sluice, table):
    """A RowDescription (and a ParameterDescription) larger than pkt_buf: sluice does not check
    its result type, and the statement runs as in Postgres, described by the client too, used
    from another backend and after DDL; a COPY and a statement without rows prepared by name."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "pkt_buf": 4096,
                      "max_prepared_statements": 3})
    many_params = "SELECT " + " + ".join(f"${i}::int" for i in range(1, 1201))

    def program(conns, t):
        a, b = conns[0], conns[1]
        out = exchange(a, [
            parse_msg("wide", wide_select(t, 1500)), describe_msg("S", "wide"),
            bind_msg("", "wide", ["1"]), execute_msg(), sync_msg(),
            parse_msg("params", many_params), describe_msg("S", "params"),
            bind_msg("", "params", [str(i) for i in range(1200)]), execute_msg(),
            parse_msg("copy", f"COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT"),
            describe_msg("S", "copy"), bind_msg("", "copy"), execute_msg(),
            parse_msg("none", f"SELECT v FROM {t} WHERE false"), describe_msg("S", "none"),
            bind_msg("", "none"), execute_msg(),
            parse_msg("ins", f"INSERT INTO {t} VALUES ($1, 1)"), describe_msg("S", "ins"),
            bind_msg("", "ins", ["3"]), execute_msg(), sync_msg()], 2)
        # the other client's statements push a's out of the server (max_prepared_statements)
        out += exchange(b, [parse_msg(f"o{i}", f"SELECT {i}") for i in range(4)]
                        + [sync_msg()], 1)
        out += exchange(a, [bind_msg("", "wide", ["2"]), execute_msg(), sync_msg(),
                            bind_msg("", "copy"), execute_msg(), bind_msg("", "none"),
                            execute_msg(), bind_msg("", "ins", ["4"]), execute_msg(),
                            sync_msg()], 2)
        out += exchange(b, [query_msg(f"ALTER TABLE {t} ALTER COLUMN v TYPE bigint")], 1)
        out += exchange(b, [parse_msg(f"p{i}", f"SELECT {i}") for i in range(4)]
                        + [sync_msg()], 1)
        # (not "wide": its result type is not checked; a Describe of "none" gets the
        # ParameterDescription before the error, as from Postgres)
        for stmt in ("copy", "none", "ins", "params"):
            params = ([str(i) for i in range(1200)] if stmt == "params"
                      else ["5"] if stmt == "ins" else [])
            described = [describe_msg("S", stmt)]
            out += exchange(a, described + [bind_msg("", stmt, params), execute_msg(),
                                             sync_msg()], 1)
        out += exchange(a, [query_msg(f"SELECT count(*) FROM {t}")], 1)
        return out

    compare_raw(pg, s, table, TABLE, program)


# ---- clients that leave while sluice waits for a result type -------------------------------------

def next_client(conn, t):
    """What a client sees of the server a client that left hands on: no stray replies."""
    out = exchange(conn, [parse_msg("n", f"SELECT v, id FROM {t} WHERE id = $1"),
                          describe_msg("S", "n"), bind_msg("", "n", ["2"]), execute_msg(),
                          sync_msg()], 1)
    out += exchange(conn, [query_msg("SELECT 7; SELECT txid_current_if_assigned() IS NULL")], 1)
    out += exchange(conn, [bind_msg("", "n", ["1"]), execute_msg(), sync_msg()], 1)
    return out


def leave(conn, how):
    if how == "terminate":
        conn.send(terminate_msg())
        conn.close()
    else:
        conn.close_abruptly(reset=how == "reset")


LEAVINGS = {
    # its Bind waits for sluice's Describe of q0, prepared again (q1 pushed it out)
    "bind waits": lambda t: [bind_msg("", "q0", ["1"]), execute_msg(), sync_msg()],
    "bind waits, no sync": lambda t: [bind_msg("", "q0", ["1"]), execute_msg()],
    # sluice's Describe of the Parse is due before its next message, which never comes
    "after a parse": lambda t: [parse_msg("q2", f"SELECT id + 1 FROM {t}")],
    "parse and bind": lambda t: [parse_msg("q2", f"SELECT id + 1 FROM {t}"),
                                 bind_msg("", "q2"), execute_msg()],
    "describe waits": lambda t: [describe_msg("S", "q0"), sync_msg()],
    "in a transaction": lambda t: [query_msg("BEGIN"), bind_msg("", "q0", ["1"]),
                                   execute_msg(), sync_msg()],
}


def fresh_table_and_what_postgres_gives(pg, table):
    """The table made again (owned by the app user), and what next_client sees of it directly."""
    drop(pg, table)
    with pg.superuser(dbname=APP_DB) as c:
        c.execute(f"SET ROLE {APP_USER}; " + TABLE.format(t=table))
    d = direct(pg)
    try:
        return next_client(d, table)
    finally:
        d.close()


def test_clients_that_leave_while_a_result_type_is_awaited_leave_a_clean_server(
        pg, start_sluice, table):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 1})
    want = fresh_table_and_what_postgres_gives(pg, table)
    # A reset (RST) lands at many points, the replies sluice framed for the client unwritten
    # among them: the server was handed on with them, to the next client.
    with BackendSampler(pg) as sampler:
        for round in range(30):
            for what, msgs in LEAVINGS.items():
                for how in ("close", "terminate", "reset") if round < 3 else ("reset",):
                    a = through(s)
                    exchange(a, [parse_msg("q0", f"SELECT v FROM {table} WHERE id = $1"),
                                 parse_msg("q1", f"SELECT id FROM {table} WHERE id = $1"),
                                 sync_msg()], 1)
                    a.send(b"".join(msgs(table)))
                    leave(a, how)
                    b = through(s)
                    try:
                        got = next_client(b, table)
                    finally:
                        b.close()
                    assert got == want, (round, what, how, got)
    assert sampler.max <= 1, sampler.history


# ---- few slots on the server, many statements, DDL between, the same texts by two clients --------

def stmt_text(t, i):
    return f"SELECT v + {i} AS c, id FROM {t} WHERE id = $1"


def run_all(conn, names, one_batch):
    msgs = []
    for n in names:
        msgs += [bind_msg("", n, ["1"]), execute_msg()] + ([] if one_batch else [sync_msg()])
    return exchange(conn, msgs + ([sync_msg()] if one_batch else []),
                    1 if one_batch else len(names))


def reprepare(conn, names, texts):
    msgs = [close_msg("S", n) for n in names]
    msgs += [parse_msg(n, x) for n, x in zip(names, texts)]
    return exchange(conn, msgs + [sync_msg()], 1)


def ping_pong(conns, t, pin):
    a, b, c = conns
    out = exchange(a, [query_msg("LISTEN sluice_attack")], 1) if pin else []
    mine = [f"s{i}" for i in range(6)]
    theirs = [f"r{i}" for i in range(6)]
    texts = [stmt_text(t, i) for i in range(6)]
    out += exchange(a, [parse_msg(n, x) for n, x in zip(mine, texts)] + [sync_msg()], 1)
    out += run_all(a, mine, True)
    out += exchange(c, [query_msg(f"ALTER TABLE {t} ALTER COLUMN v TYPE bigint")], 1)
    out += run_all(a, mine, False)          # each: 0A000
    out += run_all(a, mine[::-1], True)     # the first fails, the rest skipped
    out += exchange(b, [parse_msg(n, x) for n, x in zip(theirs, texts)] + [sync_msg()], 1)
    out += run_all(b, theirs, True)
    out += reprepare(a, mine, texts)
    out += run_all(a, mine, False)
    out += exchange(c, [query_msg(f"ALTER TABLE {t} ALTER COLUMN v TYPE int")], 1)
    for _ in range(2):  # each prepares again, the other's fails
        out += run_all(b, theirs, False)
        out += run_all(a, mine, True)
        out += reprepare(b, theirs, texts)
        out += run_all(b, theirs, True)
        out += run_all(a, mine, False)
        out += reprepare(a, mine, texts)
        out += exchange(c, [query_msg(f"ALTER TABLE {t} ADD COLUMN w{_} int")], 1)
    out += exchange(a, [parse_msg("star", f"SELECT * FROM {t}"), bind_msg("", "star"),
                        execute_msg(), sync_msg()], 1)
    out += exchange(c, [query_msg(f"ALTER TABLE {t} DROP COLUMN w0")], 1)
    out += exchange(a, [bind_msg("", "star"), execute_msg(), sync_msg(), query_msg("SELECT 1")],
                    2)
    if pin:
        out += exchange(a, [query_msg("UNLISTEN *")], 1)
    return out


@pytest.mark.parametrize("mode, policy", [("transaction", "warn"), ("statement", "warn"),
                                          ("transaction", "pin")])
def test_many_statements_few_server_slots_ddl_and_another_clients_same_texts(
        pg, start_sluice, table, mode, policy):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2, "workers": 2,
                      "max_prepared_statements": 2, "session_state_policy": policy})
    compare_raw(pg, s, table, TABLE, lambda conns, t: ping_pong(conns, t, policy == "pin"))


@pytest.mark.parametrize("how", ["close", "terminate", "reset"])
@pytest.mark.parametrize("in_transaction", [False, True])
def test_a_client_that_leaves_while_sluices_prepare_again_is_blocked_leaves_a_clean_server(
        pg, start_sluice, table, how, in_transaction):
    """sluice's Parse of q0 again (and its Describe) waits on a lock, the client's Bind waiting
    for its result type, when the client leaves: what it sent runs, and the server is not
    handed on before the replies are in. (sluice no longer reads the client's socket while it
    waits so: a client that leaves then is seen once its requests are framed. One that left
    with sluice's requests unsynced was handed on at once, with nothing of the client's in
    flight: in a transaction sluice's ROLLBACK went after them, and the replies to the next
    client's requests went missing; the loop above still reaches it, a write to the client
    failing.)"""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 1, "admin_users": "admin"})
    want = fresh_table_and_what_postgres_gives(pg, table)
    with BackendSampler(pg) as sampler, pg.superuser(dbname=APP_DB) as locker:
        a = through(s)
        exchange(a, [parse_msg("q0", f"SELECT v FROM {table} WHERE id = $1"),
                     parse_msg("q1", f"SELECT id FROM {table} WHERE id = $1"), sync_msg()], 1)
        if in_transaction:
            exchange(a, [query_msg("BEGIN")], 1)
        locker.execute("BEGIN")
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        a.send(bind_msg("", "q0", ["1"]) + execute_msg() + sync_msg())
        wait_until(lambda: pg.query(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
            " AND wait_event_type = 'Lock'", [APP_USER])[0][0] == 1, 60,
            what="sluice's Parse waiting on the lock")
        leave(a, how)
        locker.execute("COMMIT")
        with console(s) as adm:
            wait_until(lambda: pool_row(adm)["cl_active"] == 0, 60, what="the client gone")
        b = through(s)
        try:
            got = next_client(b, table)
        finally:
            b.close()
        assert got == want
    assert sampler.max <= 1, sampler.history


def test_requests_sent_before_a_terminate_run_while_their_result_type_is_checked(
        pg, start_sluice, table):
    """Bind, Execute and Sync of an INSERT, Terminate, and the client closes without reading:
    Postgres runs what it read before the close. sluice read the close while the Bind waited
    for the result type of the statement it prepared again, and dropped the requests: most
    INSERTs went missing. (Without the Terminate, sluice cancels what still runs of a client
    that vanished: docs/architecture.md, link_fate.)"""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 1})
    drop(pg, table)
    with pg.superuser(dbname=APP_DB) as c:
        c.execute(f"SET ROLE {APP_USER}; " + TABLE.format(t=table))
    counts = {}
    for name, connect in (("postgres", lambda: direct(pg)), ("sluice", lambda: through(s))):
        for i in range(20):
            a = connect()
            exchange(a, [parse_msg("ins", f"INSERT INTO {table} VALUES ($1, 0)"),
                         parse_msg("other", f"SELECT id FROM {table}"), sync_msg()], 1)
            a.send(bind_msg("", "ins", [str(100 + i)]) + execute_msg() + sync_msg())
            leave(a, "terminate")

        def inserted():
            return pg.query(f"SELECT count(*) FROM {table} WHERE id >= 100", dbname=APP_DB)[0][0]
        try:
            wait_until(lambda: inserted() == 20, 30, what="every INSERT")
        except AssertionError:
            pass
        counts[name] = inserted()
        with pg.superuser(dbname=APP_DB) as c:
            c.execute(f"DELETE FROM {table} WHERE id >= 100")
    assert counts == {"postgres": 20, "sluice": 20}


def test_ddl_that_commits_while_the_prepare_again_waits_and_a_failed_transaction(
        pg, start_sluice, table):
    """A column's type changes in a transaction that holds the table while q0 is used: Postgres
    revalidates q0 once the lock is free (0A000), sluice's Parse of q0 again waits for the same
    lock and sees the new type. Then uses of q0 in a failed transaction (25P02, the Parse
    sluice sends first refused alike) and after its ROLLBACK."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 1})

    def program(conns, t):
        a = conns[0]
        out = exchange(a, [parse_msg("q0", f"SELECT v FROM {t} WHERE id = $1"),
                           parse_msg("q1", f"SELECT id FROM {t} WHERE id = $1"), sync_msg()], 1)
        with pg.superuser(dbname=APP_DB) as locker:
            locker.execute("BEGIN")
            locker.execute(f"ALTER TABLE {t} ALTER COLUMN v TYPE text")
            a.send(bind_msg("", "q0", ["1"]) + execute_msg() + sync_msg())
            wait_until(lambda: pg.query(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
                " AND wait_event_type = 'Lock'", [APP_USER])[0][0] == 1, 60,
                what="q0 waiting on the lock")
            locker.execute("COMMIT")
        out += exchange(a, [], 1)
        out += exchange(a, [query_msg("BEGIN"), parse_msg("", "SELECT 1/0"), bind_msg("", ""),
                            execute_msg(), sync_msg(), bind_msg("", "q1", ["1"]), execute_msg(),
                            sync_msg(), describe_msg("S", "q1"), sync_msg(),
                            query_msg("ROLLBACK"), bind_msg("", "q1", ["1"]), execute_msg(),
                            sync_msg()], 6)
        out += exchange(a, [close_msg("S", "q0"), parse_msg("q0", f"SELECT v FROM {t} WHERE id = $1"),
                            bind_msg("", "q0", ["1"]), execute_msg(), sync_msg()], 1)
        return out

    compare_raw(pg, s, table, TABLE, program)


def test_flushes_in_place_of_syncs_while_statements_are_prepared_again(pg, start_sluice, table):
    """A client that reads each reply after a Flush (no Sync until the end), with statements
    sluice prepares again and describes in between, its own Describe right after a Parse."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 1})
    flush = message(b"H")

    def program(conns, t):
        a, b = conns[0], conns[1]
        out = exchange(a, [parse_msg("q0", f"SELECT v FROM {t} WHERE id = $1"), flush], 1,
                       until=("1",))
        out += exchange(a, [describe_msg("S", "q0"), flush], 1, until=("T",))
        out += exchange(a, [parse_msg("q1", f"SELECT id, v FROM {t} WHERE id = $1"),
                            describe_msg("S", "q1"), flush], 1, until=("T",))
        out += exchange(a, [bind_msg("", "q0", ["1"]), execute_msg(), flush], 1, until=("C",))
        out += exchange(a, [bind_msg("", "q1", ["2"]), execute_msg(), flush], 1, until=("C",))
        out += exchange(a, [describe_msg("S", "q0"), bind_msg("", "q0", ["2"]), execute_msg(),
                            flush], 1, until=("C",))
        out += exchange(a, [sync_msg()], 1)
        out += exchange(b, [query_msg(f"ALTER TABLE {t} ALTER COLUMN v TYPE bigint")], 1)
        out += exchange(a, [bind_msg("", "q1", ["2"]), execute_msg(), flush], 1, until=("E",))
        out += exchange(a, [bind_msg("", "q0", ["2"]), execute_msg(), sync_msg()], 1)
        return out

    compare_raw(pg, s, table, TABLE, program)


# ---- many clients, DDL flipping a column's type: no hang, nothing but 0A000, within the caps -----

def test_clients_racing_ddl_that_flips_a_result_type_see_rows_or_0a000_only(
        pg, start_sluice, table):
    """Five psycopg clients (statements prepared at once, some in pipelines) run three texts on
    one table while a sixth flips a column's type 30 times; servers hold two statements and
    move between clients and workers. Which use fails depends on timing: each must return rows
    or 0A000, never hang, and the pool stays within its 2 servers."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 2,
                      "max_prepared_statements": 2})
    drop(pg, table)
    with pg.superuser(dbname=APP_DB) as c:
        c.execute(f"SET ROLE {APP_USER}; " + TABLE.format(t=table))
    stop = threading.Event()
    errors, done = [], collections.Counter()
    texts = [f"SELECT v FROM {table} WHERE id = %s", f"SELECT * FROM {table} WHERE id = %s",
             f"SELECT v, id FROM {table} WHERE id = %s"]

    def client(k):
        try:
            with psycopg.connect(s.dsn(), autocommit=True, prepare_threshold=0) as conn:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        with conn.pipeline() if i % 5 == 0 else contextlib.nullcontext():
                            conn.execute(texts[i % 3], [1]).fetchall()
                        done["rows"] += 1
                    except psycopg.Error as e:
                        done[e.sqlstate] += 1
                        if e.sqlstate != "0A000":
                            errors.append((k, e.sqlstate, str(e)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((k, "lost", repr(e)))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(5)]
    with BackendSampler(pg) as sampler:
        for t in threads:
            t.start()
        with psycopg.connect(s.dsn(), autocommit=True) as ddl:
            for j in range(30):
                ddl.execute(f"ALTER TABLE {table} ALTER COLUMN v TYPE "
                            f"{'bigint' if j % 2 == 0 else 'int'}")
                before = sum(done.values())
                wait_until(lambda: sum(done.values()) >= before + 20 or errors, 60,
                           what="the clients going on")
        stop.set()
        for t in threads:
            t.join(60)
            assert not t.is_alive(), "a client hangs"
    assert not errors, errors[:5]
    assert done["rows"] > 0 and done["0A000"] > 0, done
    assert sampler.max <= 2, sampler.history


def test_a_simple_query_right_after_a_named_parse(pg, start_sluice, table):
    """Parse (no Sync) then a simple Query: sluice's Describe of the statement goes between
    them; the Query's results, its error, and the statement's later uses as in Postgres."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_prepared_statements": 1})

    def program(conns, t):
        a, b = conns[0], conns[1]
        out = exchange(a, [parse_msg("q0", f"SELECT v FROM {t} WHERE id = $1"),
                           query_msg("SELECT 1")], 1)
        out += exchange(a, [parse_msg("q1", f"SELECT id FROM {t} WHERE id = $1"),
                            query_msg("SELECT 1/0")], 1)
        out += exchange(a, [bind_msg("", "q0", ["1"]), execute_msg(), sync_msg(),
                            bind_msg("", "q1", ["2"]), execute_msg(), sync_msg()], 2)
        out += exchange(b, [query_msg(f"ALTER TABLE {t} ALTER COLUMN v TYPE text")], 1)
        out += exchange(a, [parse_msg("q2", f"SELECT v FROM {t} WHERE id = $1"),
                            query_msg(f"SELECT v FROM {t}")], 1)  # (SQL EXECUTE of q0: not
        # checked, docs/pool-modes.md)
        out += exchange(a, [bind_msg("", "q0", ["1"]), execute_msg(), sync_msg(),
                            bind_msg("", "q2", ["1"]), execute_msg(), sync_msg()], 2)
        return out

    compare_raw(pg, s, table, TABLE, program)


# ---- xfail: differences found this way that need more than a local fix ----------------------------

def test_a_query_that_postgres_skips_after_a_failed_parse_does_not_hold_the_server(
        pg, start_sluice, table):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})

    def program(conns, t):
        a, b = conns[0], conns[1]
        b.settimeout(10)
        out = exchange(a, [parse_msg("q", "SELEC 1"), query_msg("SELECT 1"), sync_msg()], 1)
        out += exchange(a, [query_msg("SELECT 2")], 1)
        out += exchange(b, [query_msg("SELECT 3")], 1)  # sluice: waits for a's server for ever
        out += exchange(a, [query_msg("SELECT 4")], 1)
        return out

    compare_raw(pg, s, table, TABLE, program)
