"""Careless and hostile clients, seen from the outside: what one client leaves on its backend
never reaches the next client of that backend, whichever way the client ran it (a FunctionCall
message, a DO block, a named statement bound in a later transaction), and the answers match
what Postgres gives the same bytes. One backend per pool (default_pool_size = 1) and two workers,
so the next client gets the very backend the careless one used, handed over between workers."""

import struct

import pytest

from conftest import APP_PASSWORD
from pgwire import (
    PROTOCOL_3_0,
    PeerClosed,
    RawConn,
    ServerError,
    bind_msg,
    copy_data_msg,
    gssenc_request,
    execute_msg,
    message,
    parse_fields,
    parse_msg,
    query_msg,
    raw_login,
    ssl_request,
    startup_packet,
    sync_msg,
    terminate_msg,
)

MODES = ["session", "transaction", "statement"]

# What the next client of a backend must find, whatever the one before it did.
NEXT_CLIENT_SQL = (
    "SELECT current_user, session_user, current_setting('role'),"
    " current_setting('app.leak', true) IS DISTINCT FROM 'leaked',"
    " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),"
    " (SELECT count(*) FROM pg_listening_channels()),"
    " current_setting('search_path'), current_setting('work_mem')")
CLEAN = [["app", "app", "none", "t", "0", "0", '"$user", public', "4MB"]]


def next_client_sees(port):
    c = raw_login(port)
    try:
        return c.query(NEXT_CLIENT_SQL)[0]
    finally:
        c.close()


def function_call(oid, *args):
    """FunctionCall ('F', protocol 55.7): text arguments, a text result."""
    payload = struct.pack("!IH", oid, 0) + struct.pack("!H", len(args))
    for a in args:
        b = str(a).encode()
        payload += struct.pack("!i", len(b)) + b
    return message(b"F", payload + struct.pack("!H", 0))


def one_backend_sluice(start_sluice, mode):
    return start_sluice({"pool_mode": mode, "default_pool_size": 1, "workers": 2})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_a_function_call_message_leaves_nothing_to_the_next_client(start_sluice, pg, mode,
                                                                   app_may_become_app2):
    """A FunctionCall runs a function sluice cannot read: set_config of the role or of any
    parameter, an advisory lock. Through Postgres they end with the session; through sluice
    they must end before the backend serves anyone else."""
    oids = pg.query("SELECT 'set_config'::regproc::oid,"
                    " 'pg_advisory_lock(bigint)'::regprocedure::oid")[0]
    s = one_backend_sluice(start_sluice, mode)
    assert next_client_sees(s.port) == CLEAN
    a = raw_login(s.port)
    for msg in (function_call(oids[0], "role", "app2", "false"),
                function_call(oids[0], "app.leak", "leaked", "false"),
                function_call(oids[0], "search_path", "pg_catalog", "false"),
                function_call(oids[1], 44)):
        a.send(msg)
        mtype, _ = a.read_until({"V"})
        assert mtype == "V"
        a.read_until({"Z"})
    if mode == "session":  # transaction mode keeps none of it past the transaction
        assert a.query("SELECT current_user")[0] == [["app2"]]
    a.send(terminate_msg())
    a.close()
    assert next_client_sees(s.port) == CLEAN


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_a_do_block_leaves_nothing_to_the_next_client(start_sluice, pg, mode,
                                                      app_may_become_app2):
    """A DO block's dynamic SQL is text sluice does not read (EXECUTE 'SET ROLE ...')."""
    s = one_backend_sluice(start_sluice, mode)
    a = raw_login(s.port)
    do = ("DO $$BEGIN EXECUTE 'SET ROLE app2'; EXECUTE 'LISTEN h26_do';"
          " EXECUTE 'SET work_mem = ''7MB'''; END$$")
    if mode == "statement":
        a.query(do)
    else:
        rows, _ = a.query(f"BEGIN; {do}; SELECT current_user, current_setting('work_mem');"
                          " COMMIT")
        assert rows == [["app2", "7MB"]]
    a.send(terminate_msg())
    a.close()
    assert next_client_sees(s.port) == CLEAN


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("run", ["query", "bind", "sql_execute"])
def test_a_named_statement_run_in_a_later_transaction_leaves_nothing_to_the_next_client(
        start_sluice, pg, mode, run):
    """The statement's text is seen when it is parsed, but it runs at each Bind (or SQL EXECUTE),
    maybe in another transaction on another backend: what it leaves must be reset there. The
    set_config before the lock is one sluice follows: the lock must still be seen (and in a
    simple Query too)."""
    s = one_backend_sluice(start_sluice, mode)
    a = raw_login(s.port)
    leaky = "SELECT set_config('app.leak', 'leaked', false), pg_advisory_lock(45)"
    if run != "query":
        a.send(parse_msg("leaky", leaky) + sync_msg())
        a.read_until({"Z"})
    if run == "query":
        a.query(leaky)
    elif run == "bind":
        a.send(bind_msg("", "leaky") + execute_msg() + sync_msg())
        a.read_until({"Z"})
    else:
        a.query("EXECUTE leaky")
    a.send(terminate_msg())
    a.close()
    assert next_client_sees(s.port) == CLEAN


# ---- startup packets a careless client builds -------------------------------------------------


def startup_pairs(pairs):
    """A StartupMessage with exactly these (name, value) pairs, duplicates and order kept."""
    body = struct.pack("!I", PROTOCOL_3_0)
    for k, v in pairs:
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def login_with(port, password, pairs, sql):
    """(rows of sql, None) after a login with pairs, or (None, (severity, sqlstate))."""
    c = RawConn(port, timeout=10)
    try:
        c.send(startup_pairs(pairs))
        try:
            c.finish_login(password=password)
        except ServerError as e:
            return None, (e.fields.get("S"), e.sqlstate)
        return c.query(sql)[0], None
    finally:
        c.close()


SHOW = ("SELECT current_database(), current_setting('application_name'),"
        " current_setting('work_mem'), current_setting('extra_float_digits')")
LOGIN = [("user", "app"), ("database", "appdb")]
TWICE = {
    "database": [("user", "app"), ("database", "postgres"), ("database", "appdb")],
    "application_name": LOGIN + [("application_name", "a1"), ("application_name", "a2")],
    "options": LOGIN + [("options", "-c work_mem=5MB"), ("options", "-c work_mem=6MB")],
    "a_parameter": LOGIN + [("work_mem", "5MB"), ("work_mem", "6MB")],
    # pgjdbc sends extra_float_digits=2 of its own; a user's options must not win over it
    "options_then_parameter": LOGIN + [("options", "-c extra_float_digits=3 -c work_mem=5MB"),
                                       ("extra_float_digits", "2")],
    "parameter_then_options": LOGIN + [("extra_float_digits", "2"),
                                       ("options", "-c extra_float_digits=3 -c work_mem=5MB")],
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_startup_parameter_given_twice_or_also_in_options_is_read_as_postgres_reads_it(
        start_sluice, pg, mode):
    """Postgres keeps the last value of a name given twice, and a parameter of its own wins over
    the same setting in options, wherever it stands (process_startup_options)."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2, "workers": 2})
    for case, pairs in TWICE.items():
        want = login_with(pg.port, APP_PASSWORD, pairs, SHOW)
        got = login_with(s.port, None, pairs, SHOW)
        assert got == want, f"{case}: Postgres {want}, sluice {got}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value,postgres_reads", [
    ("false", "off"), ("f", "off"), ("FA", "off"), ("no", "off"), ("of", "off"), ("0", "off"),
    ("maybe", "invalid"), ("", "invalid"), ("o", "invalid"), ("00", "invalid"),
    ("Database", "invalid"),
    ("true", "on"), ("T", "on"), ("yes", "on"), ("ON", "on"), ("1", "on"), ("database", "on"),
])
def test_the_replication_parameter_is_read_as_postgres_reads_it(start_sluice, pg, value,
                                                                postgres_reads):
    """A value Postgres reads as false is an ordinary login; one it cannot read gets its 22023;
    a walsender login is refused by sluice with 0A000 (Postgres: 42501 for a role without
    REPLICATION, a session of its own otherwise)."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "workers": 2})
    pairs = LOGIN + [("replication", value)]
    want = login_with(pg.port, APP_PASSWORD, pairs, "SELECT 1")
    got = login_with(s.port, None, pairs, "SELECT 1")
    if postgres_reads == "on":
        assert want == (None, ("FATAL", "42501"))
        assert got == (None, ("FATAL", "0A000"))
    else:
        assert got == want
        assert want == ([["1"]], None) if postgres_reads == "off" else (None, ("FATAL", "22023"))


# ---- the server ends the session -----------------------------------------------------------------


def answers_until_closed(conn, timeout=10):
    """Each message until the connection closes: (type, severity, sqlstate) for errors."""
    out = []
    conn.settimeout(timeout)
    while True:
        try:
            mtype, payload = conn.read_message()
        except PeerClosed:
            return out
        if mtype == "E":
            f = parse_fields(payload)
            out.append(("E", f.get("S"), f.get("C")))
        elif mtype != "N":
            out.append((mtype,))


def copy_then(port, password, table, after):
    c = RawConn(port, timeout=10)
    try:
        c.startup(password=password)
        c.send(query_msg(f"COPY {table} FROM STDIN"))
        c.read_until({"G"})
        c.send(copy_data_msg(b"1\n") + after)
        return answers_until_closed(c)
    finally:
        c.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("after", ["query", "parse"])
def test_a_message_that_breaks_a_copy_gets_postgres_errors_and_nothing_more(
        start_sluice, pg, table, mode, after):
    """A Query or Parse inside COPY FROM STDIN: Postgres answers ERROR 08P01, then FATAL 08P01
    (protocol synchronization was lost), and closes. Through sluice the client sees the same two,
    not a third FATAL of sluice's saying the server closed, and the pool serves on."""
    with pg.superuser("appdb") as c:
        c.execute(f"CREATE TABLE {table} (id int)")
        c.execute(f"GRANT ALL ON {table} TO app")
    s = one_backend_sluice(start_sluice, mode)
    msg = query_msg("SELECT 1") if after == "query" else parse_msg("", "SELECT 1") + sync_msg()
    want = copy_then(pg.port, APP_PASSWORD, table, msg)
    got = copy_then(s.port, None, table, msg)
    assert want == [("E", "ERROR", "08P01"), ("E", "FATAL", "08P01")]
    assert got == want
    assert next_client_sees(s.port) == CLEAN


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_a_terminated_backend_s_client_gets_only_postgres_fatal(start_sluice, pg, mode):
    """pg_terminate_backend: the client gets FATAL 57P01 and the close, as from Postgres."""
    s = one_backend_sluice(start_sluice, mode)
    c = raw_login(s.port)
    try:
        c.send(query_msg("SELECT pg_sleep(30) /* h26 victim */"))
        (pid,) = pg.wait_for_active("app", "h26 victim", timeout=10)
        pg.query("SELECT pg_terminate_backend(%s)", [pid])
        assert answers_until_closed(c) == [("T",), ("E", "FATAL", "57P01")]
    finally:
        c.close()
    assert next_client_sees(s.port) == CLEAN


# ---- encryption requests -------------------------------------------------------------------------


def negotiate(port, password, requests):
    """Send each request and read its one-byte answer while they are 'N'; then log in. Returns
    the answers and "logged in", or the (severity, sqlstate) of the error that came instead."""
    c = RawConn(port, timeout=10)
    try:
        answers = []
        for r in requests:
            c.send(r)
            b = c.recv_exact(1)
            answers.append(b.decode())
            if b != b"N":
                c.buf = b + c.buf  # an ErrorResponse: read it whole
                fields = c.expect_error(timeout=5)
                return answers, (fields.get("S"), fields.get("C"))
        c.startup(password=password)
        rows, _ = c.query("SELECT 'in'")
        return answers, "logged in" if rows == [["in"]] else rows
    finally:
        c.close()


@pytest.mark.timeout(60)
def test_each_encryption_request_is_answered_once_as_postgres_answers_it(start_sluice, pg):
    """Postgres answers an SSLRequest once: a second is read as a startup packet of protocol
    1234.5679 and refused with FATAL 0A000; so is a second GSSENCRequest. One of each, in
    either order, is a normal negotiation (sluice answers both 'N')."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "workers": 2})
    twice = [ssl_request(), ssl_request()]
    assert negotiate(s.port, None, twice) == negotiate(pg.port, APP_PASSWORD, twice) == (
        ["N", "E"], ("FATAL", "0A000"))
    assert negotiate(s.port, None, [gssenc_request(), gssenc_request()]) == (
        ["N", "E"], ("FATAL", "0A000"))
    for order in ([ssl_request(), gssenc_request()], [gssenc_request(), ssl_request()]):
        assert negotiate(s.port, None, order) == (["N", "N"], "logged in")
    assert negotiate(s.port, None, [gssenc_request(), ssl_request(), gssenc_request()]) == (
        ["N", "N", "E"], ("FATAL", "0A000"))


def pipelined_after_request(port, request):
    """An encryption request with the startup packet behind it in the same write, not waiting
    for the answer: (the answer byte, (severity, sqlstate, message) of what followed)."""
    c = RawConn(port, timeout=10)
    try:
        c.send(request + startup_packet())
        answer = c.recv_exact(1).decode()
        fields = c.expect_error(timeout=5)
        return answer, (fields.get("S"), fields.get("C"),
                        fields.get("M").removeprefix("protocol violation: "))
    finally:
        c.close()


@pytest.mark.timeout(60)
def test_bytes_sent_behind_an_encryption_request_are_refused_as_postgres_refuses_them(
        start_sluice, pg):
    """Postgres refuses anything the client sent behind its SSLRequest before the answer came,
    whatever the answer (ProcessStartupPacket: 'received unencrypted data after SSL request'),
    and the same behind a GSSENCRequest. Before, sluice answered 'N' and logged the client in
    from the pipelined startup packet: a client that works through sluice but not against
    Postgres."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    refused = ("N", ("FATAL", "08P01", "received unencrypted data after SSL request"))
    assert pipelined_after_request(pg.port, ssl_request()) == refused
    assert pipelined_after_request(s.port, ssl_request()) == refused
    # the Postgres of the tests has GSSAPI built in (answers 'G'); sluice answers 'N' and then
    # refuses as a Postgres without it does
    assert pipelined_after_request(s.port, gssenc_request()) == (
        "N", ("FATAL", "08P01", "received unencrypted data after GSSAPI encryption request"))
    assert negotiate(s.port, None, [ssl_request()]) == (["N"], "logged in")


def one_byte_of_an_unknown_type(port, password):
    c = raw_login(port, password=password)
    try:
        c.send(b"\x00")  # a CancelRequest's first byte, sent on the session by mistake
        try:
            fields = c.expect_error(timeout=3)
        except (TimeoutError, OSError):
            return "no answer"
        return fields.get("S"), fields.get("C"), c.is_closed(3)
    finally:
        c.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_an_unknown_message_type_is_refused_on_its_first_byte_as_postgres_refuses_it(
        start_sluice, pg, mode):
    """Postgres reads the type byte first and refuses an unknown one at once (FATAL 08P01),
    without waiting for a length: a client that sent one such byte is answered, not left
    waiting for a reply that never comes."""
    s = one_backend_sluice(start_sluice, mode)
    want = one_byte_of_an_unknown_type(pg.port, APP_PASSWORD)
    assert want == ("FATAL", "08P01", True)
    assert one_byte_of_an_unknown_type(s.port, None) == want
    assert next_client_sees(s.port) == CLEAN


def cancel_answer(port, packet):
    """What a connection sending only this CancelRequest gets back before the close."""
    c = RawConn(port, timeout=5)
    try:
        c.send(packet)
        data = b""
        while True:
            chunk = c.sock.recv(4096)
            if not chunk:
                return data
            data += chunk
    finally:
        c.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("length", [12, 20, 24])
def test_a_cancel_request_of_the_wrong_length_is_closed_without_a_word_as_by_postgres(
        start_sluice, pg, length):
    s = one_backend_sluice(start_sluice, "transaction")
    packet = struct.pack("!II", length, 80877102) + b"\x00" * (length - 8)
    assert cancel_answer(pg.port, packet) == b""
    assert cancel_answer(s.port, packet) == b""
    assert next_client_sees(s.port) == CLEAN
