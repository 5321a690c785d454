"""Attacks on a simple Query that names prepared statements a backend lacks (transaction mode:
sluice prepares them there first, all in one round trip, and the Query waits for them), and on
statements named by U&"..." identifiers. Postgres is the oracle: each scenario runs on a direct
connection and through sluice, and the client must see the same (rows, tags, errors with their
SQLSTATE, message and position, ReadyForQuery status), then the same state afterwards."""

import socket
import time

import pytest

from conftest import wait_until
from pgwire import cancel_request, message, parse_data_row, parse_fields, parse_msg, raw_login, sync_msg
from test_prepared_many_executes import on_another_backend, prepare
from test_prepared_oracle import raw_bind_run, raw_parse, read_until_ready


def item(t, p):
    if t in "EN":
        f = parse_fields(p)
        if t == "N" and f.get("C") != "42622":
            return None
        return (t, f.get("C"), f.get("M"), f.get("P"))
    if t == "D":
        return ("D", tuple(parse_data_row(p, value=lambda r: r)))
    if t == "C":
        return ("C", p.rstrip(b"\0").decode())
    if t in "123nstT":
        return t
    return None


def seen(c, n_ready=1):
    return read_until_ready(c, n_ready, item)


def qb(c, sql: bytes):
    c.send(message(b"Q", sql + b"\0"))
    return seen(c)


def q(c, sql):
    return qb(c, sql.encode())


def compare(expected, got):
    diffs = [f"step {i}:\n  postgres {x}\n  sluice   {y}"
             for i, (x, y) in enumerate(zip(expected, got)) if x != y]
    assert not diffs and len(expected) == len(got), "\n".join(diffs)


def latin1_names(c):
    """client_encoding LATIN1: Postgres reads the client's names in it, converted to the
    server's UTF8, and a U&"..." escape is a character of the server's: U&"\\00e9" is the
    statement the client named b"\\xe9" by Parse, and not one it named b"\\xc3\\xa9"."""
    parses = (raw_parse(b"\xe9", b"SELECT 'e-acute'") + raw_parse(b"\xc3\xa9", b"SELECT 'A-tilde'")
              + raw_parse(b"x\xe9y", b"SELECT 'xey'"))
    c.send(parses + sync_msg())
    return [seen(c)] + [qb(c, sql) for sql in [
        b'EXECUTE U&"\\00e9"', b'EXECUTE U&"\\00c3\\00a9"', b'EXECUTE U&"x\\00e9y"',
        b'EXECUTE U&"\\00c3\xa9"', b'EXECUTE "\xe9"', b'EXECUTE U&"\\20ac"',
        b'EXECUTE U&"x\\00e9y"; SELECT \'\xe9\', * FROM nosuch_tbl',
        b'DEALLOCATE U&"\\00e9"', b'EXECUTE "\xe9"', b'EXECUTE "\xc3\xa9"']] + [
        (c.send(raw_bind_run(b"\xe9")), seen(c))[1]]


@pytest.mark.parametrize("spelled", ["LATIN1", "latin1", "iso88591"])
def test_unicode_escaped_names_under_latin1_name_the_statement_postgres_does(pg, start_sluice,
                                                                              spelled):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    direct = raw_login(pg.port, password="apppass", client_encoding=spelled)
    pooled = raw_login(s.port, client_encoding=spelled)
    try:
        compare(latin1_names(direct), latin1_names(pooled))
    finally:
        direct.close()
        pooled.close()


def escape_characters(c):
    """UESCAPE with a character Postgres refuses as the escape (a hex digit, +, a space, a
    double quote): the name is refused (42601), whatever it would decode to."""
    c.send(parse_msg("a", "SELECT 1") + sync_msg())
    return [seen(c)] + [q(c, sql) for sql in [
        'EXECUTE U&"a0061" UESCAPE \'a\'', 'EXECUTE U&"+0061" UESCAPE \'+\'',
        'EXECUTE U&" 0061" UESCAPE \' \'', 'EXECUTE U&"!0061" UESCAPE E\'!\'',
        'EXECUTE U&"\\0061" UESCAPE \'\\\'', 'EXECUTE U&"\\zzzz"', 'EXECUTE U&"\\006"',
        'EXECUTE U&"!0061" /* c */ UESCAPE --x\n \'!\'', 'EXECUTE a',
        'EXECUTE U&"!0061" UESCAPE \'!\'; SELECT * FROM nosuch_tbl']]


def test_unicode_escape_characters_postgres_refuses_reach_it_unchanged(pg, start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    direct = raw_login(pg.port, password="apppass")
    pooled = raw_login(s.port)
    try:
        compare(escape_characters(direct), escape_characters(pooled))
    finally:
        direct.close()
        pooled.close()


def mixed_query(c):
    return [q(c, sql) for sql in [
        "PREPARE x AS SELECT 10; EXECUTE x; DEALLOCATE x; EXECUTE s0; DEALLOCATE s0; EXECUTE s0",
        "EXECUTE s0", "EXECUTE s1; DEALLOCATE s1; PREPARE s1 AS SELECT 22; EXECUTE s1; "
        "DEALLOCATE s1", "EXECUTE s1", "DEALLOCATE s2; EXECUTE s3; EXECUTE s2",
        "EXECUTE s4; DEALLOCATE ALL; EXECUTE s5", "EXECUTE s4", "EXECUTE s5"]] + [
        (c.send(raw_bind_run(b"s1")), seen(c))[1], (c.send(raw_bind_run(b"s3")), seen(c))[1]]


def test_a_query_mixing_prepare_execute_and_deallocate_of_lacking_statements(pg, start_sluice):
    named = [(f"s{i}", f"SELECT {i} AS v") for i in range(6)]
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1})
    direct = raw_login(pg.port, password="apppass")
    c = raw_login(s.port)
    holder = None
    try:
        prepare(direct, named)
        holder = on_another_backend(s, c, named)
        compare(mixed_query(direct), mixed_query(c))
    finally:
        for x in (c, direct, holder):
            if x:
                x.close()


def ddl(pg, sql):
    with pg.superuser("appdb") as su:
        su.execute(sql)


def fresh_table(pg, name):
    ddl(pg, f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (a int); "
            f"INSERT INTO {name} VALUES (7); GRANT ALL ON {name} TO PUBLIC")


def failing_named(table):
    return [("a", "SELECT 1 AS v"), ("b", "SELECT 2 AS v"), ("g", f"SELECT a FROM {table}"),
            ("h", "SELECT 4 AS v")]


def after_a_failed_parse(c):
    """What the client can do with each statement afterwards."""
    return [q(c, sql) for sql in ["EXECUTE a", "EXECUTE b", "EXECUTE h", "EXECUTE g",
                                  "EXECUTE h; EXECUTE a"]]


def run_both(pg, start_sluice, named, steps, main=None, setup=None):
    """steps(c) on a direct connection and through sluice, c's statements `named` prepared on
    another backend than the one its steps run on; setup() between preparing and the steps."""
    cfg = {"pool_mode": "transaction", "default_pool_size": 2, "workers": 1}
    cfg.update(main or {})
    s = start_sluice(cfg)
    direct = raw_login(pg.port, password="apppass")
    c = raw_login(s.port)
    holder = None
    try:
        prepare(direct, named)
        holder = on_another_backend(s, c, named)
        if setup:
            setup()
        return steps(direct), steps(c)
    finally:
        for x in (c, direct, holder):
            if x:
                x.close()


def last_two(replies):
    return replies[-2:]


def test_a_failed_parse_in_a_block_and_in_an_implicit_transaction(pg, start_sluice):
    """BEGIN; EXECUTE a; EXECUTE g (g's table dropped): the error and a failed block, then the
    block's end; the same in one Query (implicit transaction); each statement afterwards."""
    table = "t_attack_block"
    fresh_table(pg, table)

    def steps(c):
        out = [q(c, "BEGIN"), last_two(q(c, "EXECUTE a; EXECUTE g; EXECUTE b")),
               q(c, "EXECUTE h"), q(c, "ROLLBACK")]
        out += after_a_failed_parse(c)
        out += [last_two(q(c, "EXECUTE b; EXECUTE g; COMMIT")), q(c, "SELECT 1")]
        return out + after_a_failed_parse(c)

    want, got = run_both(pg, start_sluice, failing_named(table), steps,
                         setup=lambda: ddl(pg, f"DROP TABLE {table}"))
    compare(want, got)


def test_a_failed_parse_after_statements_whose_effects_outlive_the_error(pg, start_sluice):
    """EXECUTE a; DEALLOCATE a; EXECUTE g: Postgres runs the DEALLOCATE before g fails, and a
    DEALLOCATE is not undone by the implicit transaction's rollback: `a` is gone after it.
    BEGIN; EXECUTE b; EXECUTE g: the BEGIN opened a block, which the error fails (E)."""
    table = "t_attack_dealloc"
    fresh_table(pg, table)

    def steps(c):
        return [last_two(q(c, "EXECUTE a; DEALLOCATE a; EXECUTE g")), q(c, "EXECUTE a"),
                last_two(q(c, "BEGIN; EXECUTE b; EXECUTE g; EXECUTE h")), q(c, "SELECT 1"),
                q(c, "ROLLBACK"), q(c, "EXECUTE b")]

    want, got = run_both(pg, start_sluice, failing_named(table), steps,
                         setup=lambda: ddl(pg, f"DROP TABLE {table}"))
    compare(want, got)


def test_the_statements_before_a_failed_parse_run_as_on_postgres(pg, start_sluice):
    """SELECT 7; EXECUTE a; EXECUTE g; DEALLOCATE g: the rows before g's error come as from
    Postgres, and the DEALLOCATE after it does not run (g is still there to deallocate); a
    DEALLOCATE of h before it runs; a statement the client named after the failed one is
    prepared at its next use."""
    table = "t_attack_before"
    fresh_table(pg, table)

    def steps(c):
        return [q(c, "SELECT 7; EXECUTE a; EXECUTE g; DEALLOCATE g"),
                q(c, "DEALLOCATE h; EXECUTE b; EXECUTE g; EXECUTE a"), q(c, "EXECUTE h"),
                q(c, "EXECUTE a; EXECUTE b"), q(c, "DEALLOCATE g"), q(c, "EXECUTE g")]

    want, got = run_both(pg, start_sluice, failing_named(table), steps,
                         setup=lambda: ddl(pg, f"DROP TABLE {table}"))
    compare(want, got)


def cancel(port, c):
    r = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        r.sendall(cancel_request(*c.backend_key))
        r.recv(1)
    except OSError:
        pass
    finally:
        r.close()


def lock_waiters(pg):
    return pg.query("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND usename = 'app'")[0][0]


def locked_named(table):
    return [("a", "SELECT 1 AS v"), ("k", f"SELECT a FROM {table}"), ("b", "SELECT 2 AS v")]


def test_cancel_while_the_pipelined_parses_wait_on_a_lock(pg, start_sluice):
    """sluice's Parse of `k` waits on a lock another session holds on k's table; the client
    cancels: it gets Postgres's 57014 and ReadyForQuery, and every statement works after."""
    table = "t_attack_cancel"
    fresh_table(pg, table)
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1})
    direct = raw_login(pg.port, password="apppass")
    c = raw_login(s.port)
    holder = locker = None
    try:
        named = locked_named(table)
        prepare(direct, named)
        holder = on_another_backend(s, c, named)
        out = {}
        for who, conn, port in (("postgres", direct, pg.port), ("sluice", c, s.port)):
            locker = pg.superuser("appdb")
            locker.execute("BEGIN")
            locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            conn.send(message(b"Q", b"EXECUTE a; EXECUTE k; EXECUTE b\0"))
            wait_until(lambda: lock_waiters(pg) == 1, 30, what="a backend waiting on the lock")
            cancel(port, conn)
            first = seen(conn)
            locker.execute("ROLLBACK")
            locker.close()
            locker = None
            out[who] = [last_two(first)] + [q(conn, sql) for sql in [
                "EXECUTE a; EXECUTE k; EXECUTE b", "EXECUTE k", "EXECUTE b"]]
        compare(out["postgres"], out["sluice"])
    finally:
        for x in (c, direct, holder, locker):
            if x:
                x.close()


def runs_its_own(d):
    """The next client d, with statements of the names the one gone used and other texts,
    prepares them and runs its own."""
    mine = [("a", "SELECT 'd-a'"), ("k", "SELECT 'd-k'"), ("b", "SELECT 'd-b'")]
    prepare(d, mine)
    got = [q(d, sql) for sql in ["EXECUTE a; EXECUTE k; EXECUTE b", "SELECT 1"]]
    assert got == [["T", ("D", (b"d-a",)), ("C", "SELECT 1"), "T", ("D", (b"d-k",)),
                    ("C", "SELECT 1"), "T", ("D", (b"d-b",)), ("C", "SELECT 1"), "ZI"],
                   ["T", ("D", (b"1",)), ("C", "SELECT 1"), "ZI"]], got


def test_a_client_gone_while_the_pipelined_parses_wait_leaves_a_clean_backend(pg, start_sluice):
    """The client leaves while sluice's Parses for its Query wait on a lock: the backend comes
    back clean (or is closed). The next client on it, with statements of the same names and
    other texts, runs its own."""
    table = "t_attack_gone"
    fresh_table(pg, table)
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1})
    c = raw_login(s.port)
    holder = locker = d = None
    try:
        named = locked_named(table)
        holder = on_another_backend(s, c, named)
        locker = pg.superuser("appdb")
        locker.execute("BEGIN")
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        c.send(message(b"Q", b"EXECUTE a; EXECUTE k; EXECUTE b\0"))
        wait_until(lambda: lock_waiters(pg) == 1, 30, what="a backend waiting on the lock")
        c.close_abruptly()
        time.sleep(0.5)
        locker.execute("ROLLBACK")
        d = raw_login(s.port)
        for _ in range(3):
            runs_its_own(d)
            assert q(d, "EXECUTE zz")[0][1] == "26000"
    finally:
        for x in (c, holder, locker, d):
            if x:
                x.close()


def test_clients_taking_turns_on_few_backends_with_evictions(pg, start_sluice):
    """Three clients, each with its own six statements of the same names, on two backends
    (pool_size = 2) that keep only three statements each (max_prepared_statements = 3): every
    Query of several EXECUTEs finds a backend lacking some, and runs the client's own."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1,
                      "max_prepared_statements": 3})
    clients = [raw_login(s.port) for _ in range(3)]
    try:
        for n, c in enumerate(clients):
            prepare(c, [(f"s{i}", f"SELECT 'c{n}-s{i}'") for i in range(6)])
        for rnd in range(4):
            for n, c in enumerate(clients):
                order = [5, 0, 3, 1, 5, 4, 2] if rnd % 2 == 0 else [2, 4, 1]
                sql = "; ".join(f"EXECUTE s{i}" for i in order)
                got = q(c, sql)
                rows = [x[1][0].decode() for x in got if x[0] == "D"]
                assert rows == [f"c{n}-s{i}" for i in order] and got[-1] == "ZI", (rnd, n, got)
                got = q(c, "DEALLOCATE s5; EXECUTE s0")
                assert got == [("C", "DEALLOCATE"), "T", ("D", (f"c{n}-s0".encode(),)),
                               ("C", "SELECT 1"), "ZI"], got
                prepare(c, [("s5", f"SELECT 'c{n}-s5'")])
    finally:
        for c in clients:
            c.close()


def split_named(k, bad=None, table=None):
    named = [(f"s{i}", f"SELECT {i} AS v") for i in range(k)]
    if bad is not None:
        named[bad] = (f"s{bad}", f"SELECT a FROM {table}")
    return named


def executes(named):
    return "; ".join(f"EXECUTE {name}" for name, _ in named)


def around_the_split(pg, start_sluice, k, bad=None, maxp=4000):
    table = "t_attack_split"
    named = split_named(k, bad, table)
    if bad is not None:
        fresh_table(pg, table)
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1,
                      "pkt_buf": 65536, "max_prepared_statements": maxp})
    direct = raw_login(pg.port, password="apppass", timeout=120)
    c = raw_login(s.port, timeout=120)
    holder = None
    try:
        prepare(direct, named)
        holder = on_another_backend(s, c, named)
        if bad is not None:
            ddl(pg, f"DROP TABLE {table}")
        want, got = q(direct, executes(named)), q(c, executes(named))
        if bad is None:
            assert want == got
        else:
            assert last_two(want) == last_two(got)
            rest = [x for x in named if x[0] != f"s{bad}"]
            assert q(direct, executes(rest)) == q(c, executes(rest))
            assert q(direct, f"EXECUTE s{bad}") == q(c, f"EXECUTE s{bad}")
        assert q(direct, "EXECUTE s0") == q(c, "EXECUTE s0")
    finally:
        for x in (c, direct, holder):
            if x:
                x.close()


@pytest.mark.parametrize("k", [2727, 2728, 2729, 2730])
def test_executes_around_the_split_run_whole(pg, start_sluice, k):
    around_the_split(pg, start_sluice, k)


@pytest.mark.parametrize("bad", [2727, 2728, 2729, 2740])
def test_a_failed_parse_around_the_split(pg, start_sluice, bad):
    around_the_split(pg, start_sluice, 2760, bad)


def test_around_the_split_with_evictions(pg, start_sluice):
    around_the_split(pg, start_sluice, 2760, None, maxp=100)
    around_the_split(pg, start_sluice, 2760, 2100, maxp=100)


def bind_exec(name):
    return raw_bind_run(name.encode())[:-5]  # without its Sync


def extended_mix(c):
    Q = lambda sql: message(b"Q", sql.encode() + b"\0")  # noqa: E731
    out = [
        batch(c, parse_msg("x", "SELECT 9") + bind_exec("a") + Q("EXECUTE b; EXECUTE h")
              + bind_exec("x") + sync_msg(), 2),
        batch(c, bind_exec("a") + Q("EXECUTE g; EXECUTE b") + bind_exec("h") + sync_msg(), 2),
        batch(c, bind_exec("a") + sync_msg() + Q("EXECUTE g; EXECUTE b") + bind_exec("b")
              + sync_msg(), 3),
        batch(c, parse_msg("", "SELECT 1/0") + bind_exec("") + Q("EXECUTE b; EXECUTE h")
              + sync_msg(), 1),
        batch(c, bind_exec("g") + Q("EXECUTE a; EXECUTE b") + sync_msg(), 1),
        batch(c, Q("BEGIN") + bind_exec("a") + Q("EXECUTE g") + bind_exec("b") + sync_msg()
              + Q("ROLLBACK"), 4),
    ]
    return out + [q(c, sql) for sql in ["EXECUTE a", "EXECUTE b", "EXECUTE g", "EXECUTE h"]] + [
        batch(c, raw_bind_run(n)) for n in (b"a", b"b", b"g", b"h", b"x")]


def batch(c, data, n_ready=1):
    c.send(data)
    return seen(c, n_ready)


def test_extended_messages_and_query_executes_in_one_pipeline(pg, start_sluice):
    table = "t_attack_mix"
    fresh_table(pg, table)
    want, got = run_both(pg, start_sluice, failing_named(table), extended_mix,
                         setup=lambda: ddl(pg, f"DROP TABLE {table}"))
    compare(want, got)


def test_extended_mix_on_a_backend_with_room_for_two(pg, start_sluice):
    table = "t_attack_mix2"
    fresh_table(pg, table)
    want, got = run_both(pg, start_sluice, failing_named(table), extended_mix,
                         main={"max_prepared_statements": 2},
                         setup=lambda: ddl(pg, f"DROP TABLE {table}"))
    compare(want, got)


def test_a_client_gone_while_the_parses_wait_then_one_fails_leaves_a_clean_backend(
        pg, start_sluice):
    """As above, but the table is dropped under the lock: sluice's waiting Parse of `k` then
    fails, after its client left. The server skips to a Sync: the backend must get one (or be
    closed) before another client's Query, which would otherwise be skipped."""
    table = "t_attack_gone_fail"
    fresh_table(pg, table)
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1})
    c = raw_login(s.port)
    holder = locker = d = None
    try:
        named = locked_named(table)
        holder = on_another_backend(s, c, named)
        locker = pg.superuser("appdb")
        locker.execute("BEGIN")
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        c.send(message(b"Q", b"EXECUTE a; EXECUTE k; EXECUTE b\0"))
        wait_until(lambda: lock_waiters(pg) == 1, 30, what="a backend waiting on the lock")
        c.close_abruptly()
        time.sleep(0.5)
        locker.execute(f"DROP TABLE {table}")
        locker.execute("COMMIT")
        d = raw_login(s.port, timeout=20)
        for _ in range(3):
            runs_its_own(d)
    finally:
        for x in (c, holder, locker, d):
            if x:
                x.close()


def test_the_backend_terminated_while_the_parses_wait(pg, start_sluice):
    """The backend whose Parses wait on a lock is terminated: the client gets an error, never a
    hang, and a new connection runs its statements."""
    table = "t_attack_term"
    fresh_table(pg, table)
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1})
    c = raw_login(s.port, timeout=20)
    holder = locker = d = None
    try:
        named = locked_named(table)
        holder = on_another_backend(s, c, named)
        locker = pg.superuser("appdb")
        locker.execute("BEGIN")
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        c.send(message(b"Q", b"EXECUTE a; EXECUTE k; EXECUTE b\0"))
        wait_until(lambda: lock_waiters(pg) == 1, 30, what="a backend waiting on the lock")
        pg.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                 " WHERE wait_event_type = 'Lock' AND usename = 'app'")
        errors = []
        try:
            while True:
                t, p = c.read_message()
                if t == "E":
                    errors.append(parse_fields(p).get("C"))
                if t == "Z":
                    break
        except Exception as e:  # noqa: BLE001 - closed is fine after the error
            errors.append(type(e).__name__)
        assert errors and errors[0] in ("57P01", "08006"), errors
        locker.execute("ROLLBACK")
        d = raw_login(s.port)
        prepare(d, named)
        assert [x for x in q(d, "EXECUTE a; EXECUTE k; EXECUTE b") if x[0] == "D"] == [
            ("D", (b"1",)), ("D", (b"7",)), ("D", (b"2",))]
    finally:
        for x in (c, holder, locker, d):
            if x:
                x.close()


def unicode_on_a_lacking_backend(c):
    return [q(c, sql) for sql in [
        'EXECUTE U&"\\0073\\0030"; EXECUTE s0; EXECUTE U&"!0053!0031" UESCAPE \'!\'; '
        'EXECUTE U&"\\0053\\0031"; EXECUTE "S1"; EXECUTE U&"\\0061\\0062"',
        'DEALLOCATE U&"\\0073\\0030"; EXECUTE s0', 'EXECUTE ab; EXECUTE "S1"; EXECUTE ln',
        'EXECUTE ln; EXECUTE U&"\\006cn"']]


def test_unicode_names_and_notices_among_executes_a_backend_lacks(pg, start_sluice):
    """U&"..." names of statements the backend lacks, in one Query with their plain names, a
    name equal to another's once decoded, and a statement whose Parse raises a NOTICE (42622,
    which the client had at its own Parse and not again at EXECUTE)."""
    named = [("s0", "SELECT 0"), ("S1", "SELECT 1"), ("s1", "SELECT 11"), ("ab", "SELECT 2"),
             ("ln", "SELECT 3 AS " + "x" * 70)]
    want, got = run_both(pg, start_sluice, named, unicode_on_a_lacking_backend)
    compare(want, got)


def test_a_failing_parse_before_a_name_of_sluices_form_in_one_query(pg, start_sluice):
    """EXECUTE s0; EXECUTE g; EXECUTE sluice_0123abcd (g's table dropped; the last a name of
    sluice's form the client does not hold, which sluice closes on the server first): the Query
    waits for g's Parse too, and gets Postgres's error and ReadyForQuery, not silence (the
    server skips a Query sent after a failed Parse, and answers nothing until a Sync)."""
    table = "t_attack_form"
    fresh_table(pg, table)
    named = [("s0", "SELECT 0 AS v"), ("g", f"SELECT a FROM {table}"), ("s1", "SELECT 1 AS v")]

    def steps(c):
        c.settimeout(20)
        return [last_two(q(c, sql)) for sql in [
            "EXECUTE s0; EXECUTE g; EXECUTE sluice_0123abcd",
            "EXECUTE s1; EXECUTE g; DEALLOCATE sluice_0123abcd"]] + [
            q(c, sql) for sql in ["EXECUTE s0", "EXECUTE s1", "SELECT 1"]]

    want, got = run_both(pg, start_sluice, named, steps,
                         setup=lambda: ddl(pg, f"DROP TABLE {table}"))
    compare(want, got)


def test_a_client_failed_in_the_middle_of_a_round_trip_leaves_a_clean_backend(pg, start_sluice):
    """The client changed client_encoding since it prepared s1, whose text LATIN1 lacks: sluice
    sends s0's Parse, then fails the client at s1 (22P05, FATAL). The next client on that
    backend runs its own statements of the same names."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": 1})
    c = raw_login(s.port)
    holder = d = None
    try:
        named = [("s0", "SELECT 0 AS v"), ("s1", "SELECT '\u20ac' AS v"), ("s2", "SELECT 2")]
        holder = on_another_backend(s, c, named)
        q(c, "SET client_encoding TO 'LATIN1'")
        c.send(message(b"Q", b"EXECUTE s0; EXECUTE s1; EXECUTE s2\0"))
        got = []
        try:
            while True:
                t, p = c.read_message()
                got.append(item(t, p) or t)
                if t == "Z":
                    break
        except Exception:  # noqa: BLE001 - a FATAL closes the connection
            pass
        assert got and got[-1][:2] == ("E", "22P05"), got
        d = raw_login(s.port, timeout=20)
        mine = [("s0", "SELECT 'd0'"), ("s1", "SELECT 'd1'"), ("s2", "SELECT 'd2'")]
        for _ in range(3):
            prepare(d, mine)
            got = q(d, "EXECUTE s0; EXECUTE s1; EXECUTE s2")
            assert [x for x in got if x[0] == "D"] == [
                ("D", (b"d0",)), ("D", (b"d1",)), ("D", (b"d2",))] and got[-1] == "ZI", got
    finally:
        for x in (c, holder, d):
            if x:
                x.close()


def prepare_by_sql_among_executes(c):
    return [q(c, sql) for sql in [
        "EXECUTE s0; PREPARE s9 AS SELECT 9; EXECUTE s9; DEALLOCATE s9; EXECUTE s1",
        "EXECUTE s2; PREPARE s3 AS SELECT 33", "EXECUTE s3", "PREPARE s4 AS SELECT 44; EXECUTE s2",
        "EXECUTE s4", "EXECUTE s5; DEALLOCATE PREPARE s5; PREPARE s5 AS SELECT 55; EXECUTE s5; "
        "DEALLOCATE s5", "EXECUTE s5", "EXPLAIN (COSTS OFF) EXECUTE s2; EXECUTE s1"]]


def test_sql_prepare_among_executes_of_lacking_statements(pg, start_sluice):
    named = [(f"s{i}", f"SELECT {i} AS v") for i in range(6)]
    want, got = run_both(pg, start_sluice, named, prepare_by_sql_among_executes)
    compare(want, got)


def long_unicode_names(c):
    """U&"..." names Postgres truncates to 63 bytes, whatever their length decoded (past 255
    bytes too): the statement of that key runs (its NOTICE 42622 aside, docs/pool-modes.md)."""
    c.send(parse_msg("a" * 63, "SELECT 63") + parse_msg("\u00e9" * 31, "SELECT 31")
           + sync_msg())
    return [seen(c)] + [[x for x in q(c, sql) if x[0] != "N"] for sql in [
        'EXECUTE U&"' + "a" * 300 + '"', 'EXECUTE U&"' + "\\0061" * 70 + '"',
        'EXECUTE U&"' + "\\00e9" * 200 + '"', 'EXECUTE U&"' + "a" * 62 + "\\+01F600" * 100 + '"',
        'DEALLOCATE U&"' + "a" * 400 + '"', 'EXECUTE U&"' + "a" * 63 + '"']]


def test_long_unicode_escaped_names_are_the_statement_of_their_key(pg, start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    direct = raw_login(pg.port, password="apppass")
    pooled = raw_login(s.port)
    try:
        compare(long_unicode_names(direct), long_unicode_names(pooled))
    finally:
        direct.close()
        pooled.close()


def test_clients_sharing_statement_texts_after_a_failed_round_trip(pg, start_sluice):
    """Two clients with the same statement texts (one server statement each on the backend,
    pool_size = 1): A's Query fails at g's Parse, which makes the server skip the Parses after
    it; B's and A's next Queries of those statements run them, never 26000."""
    table = "t_attack_shared"
    fresh_table(pg, table)
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "workers": 1,
                      "max_prepared_statements": 3})
    named = [("s0", "SELECT 0 AS v"), ("s1", "SELECT 1 AS v"), ("g", f"SELECT a FROM {table}"),
             ("s3", "SELECT 3 AS v"), ("s4", "SELECT 4 AS v")]
    a, b = raw_login(s.port), raw_login(s.port)
    try:
        prepare(a, named)
        prepare(b, named)
        q(b, "EXECUTE s4; EXECUTE s3")
        ddl(pg, f"DROP TABLE {table}")
        got = q(a, "EXECUTE s0; EXECUTE s1; EXECUTE g; EXECUTE s3; EXECUTE s4")
        assert got[-2][1] == "42P01" and got[-1] == "ZI", got
        for c in (b, a, b):
            got = q(c, "EXECUTE s3; EXECUTE s4; EXECUTE s0; EXECUTE s1")
            assert [x for x in got if x[0] == "D"] == [
                ("D", (b"3",)), ("D", (b"4",)), ("D", (b"0",)), ("D", (b"1",))], got
    finally:
        a.close()
        b.close()


def test_sql_execute_of_a_statement_whose_result_type_changed(pg, start_sluice):
    """w Parsed, then a column added to its SELECT *: its EXECUTE on a backend that lacked it
    (sluice prepares it there again) fails with Postgres's 0A000, alone, after another
    statement, in a block, at the head of a Query longer than pkt_buf; once the client
    DEALLOCATEs it and PREPAREs it again (by SQL, by Parse), it runs with the new columns."""
    table = "t_attack_shape"
    fresh_table(pg, table)
    named = [("w", f"SELECT * FROM {table}"), ("s1", "SELECT 1 AS v")]
    long_tail = " /* " + "x" * 40000 + " */"

    def steps(c):
        return [q(c, sql) for sql in [
            "EXECUTE w", "EXECUTE s1; EXECUTE w", "EXECUTE w; EXECUTE w", "SELECT 1",
            "BEGIN", "EXECUTE w", "EXECUTE s1", "ROLLBACK", "EXECUTE w" + long_tail,
            f"DEALLOCATE w; PREPARE w AS SELECT * FROM {table}; EXECUTE w; DEALLOCATE w",
            "EXECUTE w"]] + [prepare(c, named[:1]), q(c, "EXECUTE s1; EXECUTE w")]

    want, got = run_both(pg, start_sluice, named, steps,
                         setup=lambda: ddl(pg, f"ALTER TABLE {table} ADD COLUMN b int"))
    assert want[0] == [("E", "0A000", "cached plan must not change result type", None), "ZI"]
    compare(want, got)


def test_sql_execute_of_a_statement_whose_result_type_changed_on_its_own_backend(pg,
                                                                                start_sluice):
    """The same on the backend the client's Parse prepared it on: there Postgres's own plan
    cache refuses the EXECUTE (0A000), and sluice passes its answer on."""
    table = "t_attack_shape_own"
    fresh_table(pg, table)
    named = [("w", f"SELECT * FROM {table}")]
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "workers": 1})
    direct = raw_login(pg.port, password="apppass")
    c = raw_login(s.port)
    try:
        for x in (direct, c):
            prepare(x, named)
        before = [q(x, "EXECUTE w") for x in (direct, c)]
        ddl(pg, f"ALTER TABLE {table} ADD COLUMN b int")
        want, got = ([q(x, sql) for sql in [
            "EXECUTE w", "EXECUTE w",
            f"DEALLOCATE w; PREPARE w AS SELECT * FROM {table}; EXECUTE w; DEALLOCATE w"]]
            + [prepare(x, named), q(x, "EXECUTE w")] for x in (direct, c))
    finally:
        c.close()
        direct.close()
    compare(before[:1], before[1:])
    assert want[0][0][1] == "0A000"
    compare(want, got)
