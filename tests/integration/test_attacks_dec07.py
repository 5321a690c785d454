"""Hostile clients of Dec 7, Postgres as the oracle: a message type Postgres does not know (in
every pool mode, idle, inside a transaction and inside an extended batch), startup settings
Postgres refuses that sluice let through (a value given twice, the first one invalid; an empty
client_encoding in session mode), and malformed startup packets, refused in Postgres's words.
Each compares what a client sees directly and through sluice, and where a server is shared
checks that the next client on it finds nothing of the last."""

import socket
import struct

import pytest

from conftest import BackendSampler
from pgwire import (PROTOCOL_3_0, PeerClosed, RawConn, ServerError, bind_msg, close_msg,
                    copy_data_msg, execute_msg, message, parse_fields, parse_msg, query_msg,
                    raw_login, startup_packet, sync_msg)
from test_result_type_attacks import TABLE, compare_raw, exchange
from test_startup_params import startup

# ---- a message type Postgres does not know -----------------------------------------------------


def unknown_type(a, before):
    """before (messages), then a message of type 'Y': what a sees up to the FATAL, and that the
    connection then closes."""
    out = exchange(a, before[1], before[0]) if before[0] else []
    if before[0] == 0 and before[1]:
        a.send(b"".join(before[1]))
    a.send(message(b"Y", b"abc"))
    # Postgres flushes the replies it framed before the FATAL (the ParseComplete and
    # BindComplete of a batch not yet synced): the client gets them through sluice too.
    out += exchange(a, [], 1, until=("E",))
    out.append(("closed", a.is_closed(10)))
    return out


BEFORE = {
    "idle": lambda t: (0, []),
    # the server is the client's while its transaction is open (transaction mode)
    "in a transaction": lambda t: (1, [query_msg(f"BEGIN; INSERT INTO {t} VALUES (3, 7)")]),
    # an extended batch not yet synced holds the server too
    "inside a batch": lambda t: (0, [parse_msg("", f"INSERT INTO {t} VALUES (4, 8)"),
                                     bind_msg("", "")]),
}


@pytest.mark.parametrize("where", sorted(BEFORE))
@pytest.mark.parametrize("mode", ["transaction", "session", "statement"])
def test_an_unknown_message_type_is_refused_in_postgres_words(pg, start_sluice, table, mode,
                                                               where):
    """Postgres answers a type byte it does not know with FATAL 08P01 "invalid frontend message
    type 89" (SocketBackend) and closes; sluice said "protocol violation: unexpected message
    type 0x59". What the transaction wrote is gone, and the next client gets the one server."""
    if mode == "statement" and where == "in a transaction":
        pytest.skip("statement mode refuses BEGIN")
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1})

    def program(conns, t):
        a, b = conns[0], conns[1]
        out = unknown_type(a, BEFORE[where](t))
        b.settimeout(10)
        return out + exchange(b, [query_msg(f"SELECT id, v FROM {t} ORDER BY id; "
                                            "SELECT txid_current_if_assigned() IS NULL")], 1)

    with BackendSampler(pg) as sampler:
        seen = compare_raw(pg, s, table, TABLE, program)
    fatal = [x for x in seen if x[0] == "E"]
    assert fatal == [("E", "08P01", "invalid frontend message type 89")], seen
    assert ("closed", True) in seen
    # three direct clients, then three through sluice on one server
    assert sampler.max <= 3, sampler.history


# ---- startup settings Postgres refuses ---------------------------------------------------------


def login_outcome(port, packet, password=None):
    """(severity, SQLSTATE, message) of the login's refusal, or None and the encoding reported."""
    c = RawConn(port, timeout=15)
    try:
        c.send(packet)
        c.finish_login(password=password)
        return (None, c.params.get("client_encoding"))
    except ServerError as e:
        return (e.fields.get("S"), e.fields.get("C"), e.fields.get("M"))
    except PeerClosed:
        return ("closed",)
    finally:
        c.close()


TWICE = {
    "a pair twice": startup([("work_mem", "lots"), ("work_mem", "4MB")]),
    "in options, then a pair": startup([("options", "-c work_mem=lots"), ("work_mem", "4MB")]),
    "twice in options": startup([("options", "-c TimeZone=Nowhere/Land -c TimeZone=UTC")]),
    # Postgres names the first value it refuses, here one given once, before the repeat
    "after another refused value": startup([("statement_timeout", "bogus"),
                                            ("work_mem", "lots"), ("work_mem", "4MB")]),
}


@pytest.mark.parametrize("case", sorted(TWICE))
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_setting_given_twice_whose_first_value_postgres_refuses(pg, start_sluice, mode, case):
    """Postgres applies every value of a name given twice, in order (process_startup_options:
    options, then the pairs), and the first invalid one fails the login with 22023."""
    s = start_sluice({"pool_mode": mode})
    want = login_outcome(pg.port, TWICE[case], password="apppass")
    assert want[:2] == ("FATAL", "22023"), want
    assert login_outcome(s.port, TWICE[case]) == want


TWICE_GOOD = {
    # the last value is the server's own (SERVER'S: as the server reports it), the first was tried
    "a pair twice": [("work_mem", "1MB"), ("work_mem", "4MB")],
    "in options, then a pair": [("options", "-c TimeZone=Asia/Tokyo"), ("TimeZone", "SERVER'S")],
    "twice in options": [("options", "-c work_mem=1MB -c work_mem=4MB")],
    "the last one refused": [("work_mem", "1MB"), ("work_mem", "lots")],
    "a reported one twice": [("DateStyle", "German"), ("DateStyle", "SERVER'S")],
}
SETTINGS_SQL = ("SELECT current_setting('work_mem'), current_setting('TimeZone'), "
                "current_setting('DateStyle')")


@pytest.mark.parametrize("case", sorted(TWICE_GOOD))
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_setting_given_twice_ends_with_its_last_value(pg, start_sluice, mode, case):
    """Each value is tried in order: the client sees what Postgres shows (its last value, or the
    refusal of it) in ParameterStatus and SHOW, and the one server is left as the next client
    should find it. A reported setting whose last value the server already had was left at the
    first one (DateStyle German): the sync, reckoned before the first was tried, sent nothing."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1,
                      "server_reset_query": "DISCARD ALL"})
    c = RawConn(pg.port, timeout=15)
    c.send(startup_packet())
    c.finish_login(password="apppass")
    servers = dict(c.params)
    c.close()
    pairs = [(n, servers[n] if v == "SERVER'S" else v) for n, v in TWICE_GOOD[case]]
    seen = []
    for port, password in ((pg.port, "apppass"), (s.port, None)):
        out = []
        c = RawConn(port, timeout=15)
        try:
            c.send(startup(pairs))
            c.finish_login(password=password)
            out.append(("reported", c.params["TimeZone"], c.params["DateStyle"]))
            rows, _ = c.query(SETTINGS_SQL)
            out.append(tuple(rows[0]))
        except ServerError as e:
            out.append((e.fields.get("C"), e.fields.get("M")))
        finally:
            c.close()
        c = RawConn(port, timeout=15)
        c.send(startup_packet())
        c.finish_login(password=password)
        rows, _ = c.query(SETTINGS_SQL)
        out.append(tuple(rows[0]))
        c.close()
        seen.append(out)
    assert seen[1] == seen[0]


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_seed_given_twice_seeds_nothing(pg, start_sluice, mode):
    """Postgres seeds random() from no login's seed (check_random_seed arms setseed only when
    SET), however often it comes; through sluice the repeat had each value set_config'd, and
    random() followed setseed's sequence."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    seeded = set()
    for seed in ("0.5", "0.25"):
        c = RawConn(pg.port, timeout=15)
        c.send(startup_packet())
        c.finish_login(password="apppass")
        rows, _ = c.query(f"SELECT setseed({seed}), random()")
        seeded.add(rows[0][1])
        c.close()
    for port, password in ((pg.port, "apppass"), (s.port, None)):
        c = RawConn(port, timeout=15)
        c.send(startup([("seed", "0.5"), ("seed", "0.25")]))
        c.finish_login(password=password)
        rows, _ = c.query("SELECT random()")
        c.close()
        assert rows[0][0] not in seeded, (port, rows, seeded)


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("given", ["as a parameter", "in options"])
def test_an_empty_client_encoding_is_refused_as_by_postgres(pg, start_sluice, mode, given):
    """Session mode opens the backend with the client's client_encoding as a libpq keyword,
    and libpq drops an empty one: the login went on in UTF8 where Postgres refuses it (FATAL
    22023), given as a parameter or in options (which sluice reads into the same setting)."""
    s = start_sluice({"pool_mode": mode})
    packet = (startup_packet(client_encoding="") if given == "as a parameter"
              else startup_packet(options="-c client_encoding="))
    want = login_outcome(pg.port, packet, password="apppass")
    assert want == ("FATAL", "22023", 'invalid value for parameter "client_encoding": ""')
    for _ in range(5):
        assert login_outcome(s.port, packet) == want
    # the refusals are the client's: the database is not taken for down
    assert login_outcome(s.port, startup_packet()) == (None, "UTF8")


BACKEND_ONLY = {
    # PGC_BACKEND: any role may set them at login, no one after it
    "ignore_system_indexes": startup_packet(ignore_system_indexes="on"),
    "post_auth_delay": startup_packet(post_auth_delay="0"),
    "-P in options": startup_packet(options="-P"),
    # PGC_SU_BACKEND: at login a plain role is refused with 42501
    "log_connections": startup_packet(log_connections="on"),
}


@pytest.mark.parametrize("mode", ["transaction", "statement"])
@pytest.mark.parametrize("case", sorted(BACKEND_ONLY))
def test_a_setting_postgres_takes_only_at_login_in_transaction_mode(pg, start_sluice, mode,
                                                                    case):
    """Postgres takes such a setting only at connection start: sluice gave it to a shared backend
    with set_config (FATAL 55P02 where Postgres logs in, or where it refuses with 42501). Such a
    client's servers are opened with its startup parameters now (test_backend_settings_login)."""
    s = start_sluice({"pool_mode": mode})
    want = login_outcome(pg.port, BACKEND_ONLY[case], password="apppass")
    assert login_outcome(s.port, BACKEND_ONLY[case]) == want


@pytest.mark.parametrize("case", sorted(BACKEND_ONLY))
def test_a_setting_postgres_takes_only_at_login_ignored_by_name(pg, start_sluice, case):
    """What pool-modes.md offers in transaction mode: ignore_startup_parameters drops such a
    setting, as a pair and from options, and the client logs in."""
    s = start_sluice({"pool_mode": "transaction", "ignore_startup_parameters":
                      "ignore_system_indexes,post_auth_delay,log_connections"})
    assert login_outcome(s.port, BACKEND_ONLY[case]) == (None, "UTF8")


@pytest.mark.parametrize("case", sorted(BACKEND_ONLY))
def test_a_setting_postgres_takes_only_at_login_in_session_mode(pg, start_sluice, case):
    """Session mode opens the backend with the login's settings: as on Postgres."""
    s = start_sluice({"pool_mode": "session"})
    want = login_outcome(pg.port, BACKEND_ONLY[case], password="apppass")
    assert login_outcome(s.port, BACKEND_ONLY[case]) == want


# ---- startup packets Postgres refuses, in its words -------------------------------------------


def packet(body):
    """A 3.0 StartupMessage of exactly these bytes after the protocol version."""
    body = struct.pack("!I", PROTOCOL_3_0) + body
    return struct.pack("!I", len(body) + 4) + body


BAD_PACKETS = {
    "no final zero byte": packet(b"user\0app\0database\0appdb\0"),
    "a name without a value": packet(b"user\0app\0database\0appdb\0lonely\0\0"),
    "a value without its zero byte": packet(b"user\0app\0database\0appdb"),
    "an empty name before the end": packet(b"user\0app\0\0x\0\0"),
    "bytes after the end": packet(b"user\0app\0\0junk"),
    "no pairs, no end": packet(b""),
    "no pairs": packet(b"\0"),
    "an empty user": packet(b"user\0\0\0"),
}


@pytest.mark.parametrize("case", sorted(BAD_PACKETS))
def test_a_startup_packet_postgres_refuses_is_refused_in_its_words(pg, start_sluice, case):
    """Postgres refuses a packet whose pairs do not end in one zero byte with FATAL 08P01
    "invalid startup packet layout: expected terminator as last byte", and one without a user
    with FATAL 28000 "no PostgreSQL user name specified in startup packet"; sluice said
    "invalid startup packet: malformed packet" and "no user name given in the startup packet"."""
    s = start_sluice({"pool_mode": "transaction"})
    want = login_outcome(pg.port, BAD_PACKETS[case], password="apppass")
    assert want[0] == "FATAL", want
    assert login_outcome(s.port, BAD_PACKETS[case]) == want


# ---- a bare Sync while every server is busy ---------------------------------------------------


def answers_until_ready(c, readies, timeout):
    """What c sees (no pids, keys or parameters) up to its readies-th ReadyForQuery."""
    c.settimeout(timeout)
    out = []
    while readies:
        mtype, payload = c.read_message()
        if mtype == "E":
            out.append(("E", parse_fields(payload).get("C")))
        elif mtype not in "SNK":
            out.append((mtype, payload))
        readies -= mtype == "Z"
    return out


BARE = {
    "a sync": ([sync_msg()], 1),
    "syncs and a flush": ([sync_msg(), message(b"H"), sync_msg(), sync_msg()], 3),
    "copy data, then a sync": ([copy_data_msg(b"x"), sync_msg()], 1),
}


@pytest.mark.parametrize("what", sorted(BARE))
@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_a_bare_sync_is_answered_while_every_server_is_busy(pg, start_sluice, mode, what):
    """An idle client's Sync with nothing before it: Postgres answers ReadyForQuery 'I' at
    once. sluice leased a server for it, and with the one server busy the client waited, then
    got query_wait_timeout's 53300 ERROR before its ReadyForQuery. A query sent after it still
    waits for the server and runs."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1,
                      "query_wait_timeout": 30})
    msgs, readies = BARE[what]
    direct = raw_login(pg.port, password="apppass")
    try:
        direct.send(b"".join(msgs))
        want = answers_until_ready(direct, readies, 10)
    finally:
        direct.close()
    assert want == [("Z", b"I")] * readies
    busy = raw_login(s.port)
    b = raw_login(s.port)
    try:
        busy.send(query_msg("SELECT pg_sleep(3)"))
        pg.wait_for_active("app", "pg_sleep(3)")
        b.send(b"".join(msgs))
        # well before the sleep ends: answered by sluice, no server needed
        assert answers_until_ready(b, readies, 2) == want
        b.send(query_msg("SELECT 7"))
        assert answers_until_ready(b, 1, 20)[-2:] == [("C", b"SELECT 1\0"), ("Z", b"I")]
        busy.read_results()
    finally:
        busy.close()
        b.close()


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_syncs_from_a_client_that_does_not_read_its_answers_are_read_no_faster(pg, start_sluice,
                                                                                mode):
    """A client that sends Syncs and never reads what they answer: Postgres stops reading it
    once its answers do not go out. sluice read on and kept every ReadyForQuery it answered in
    memory (64 MB of Syncs: 77 MB kept). Now what the sockets hold is all it takes (a few MB);
    once the client reads, every Sync is answered and a query runs."""
    s = start_sluice({"pool_mode": mode})
    c = raw_login(s.port)
    total = 64 << 20
    chunk = sync_msg() * ((64 << 10) // 5)
    sent = 0
    c.settimeout(5)
    try:
        while sent < total:
            sent += c.sock.send(chunk[:min(len(chunk), total - sent)])
    except socket.timeout:
        pass
    assert sent < total // 2, "sluice read every Sync while its answers stayed unread"
    c.settimeout(60)
    if sent % 5:  # the rest of a Sync cut short
        c.sock.sendall(sync_msg()[sent % 5:])
    due, got = -(-sent // 5) * 6, bytearray()
    while len(got) < due:
        data = c.sock.recv(1 << 20)
        assert data, "closed"
        got += data
    assert bytes(got) == b"Z\0\0\0\x05I" * (due // 6)
    c.send(query_msg("SELECT 7"))
    assert answers_until_ready(c, 1, 20)[-2:] == [("C", b"SELECT 1\0"), ("Z", b"I")]
    c.close()


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_syncs_sent_at_once_are_all_answered_while_the_client_reads(pg, start_sluice, mode):
    """Syncs sent in one go by a client that reads its answers: each block of answers the
    socket takes whole left the Syncs still in sluice's buffer with no write to come back for
    them and, once the client had sent them all, no read either: the client waited for ever
    (seen once in a plain run of the test above)."""
    s = start_sluice({"pool_mode": mode})
    c = raw_login(s.port)
    n = 3000  # one read (16 kB block) holding more Syncs than one block of answers (2730)
    c.settimeout(30)
    c.sock.sendall(sync_msg() * n)
    due, got = n * 6, bytearray()
    while len(got) < due:
        data = c.sock.recv(1 << 20)
        assert data, "closed"
        got += data
    assert bytes(got) == b"Z\0\0\0\x05I" * n
    c.send(query_msg("SELECT 7"))
    assert answers_until_ready(c, 1, 20)[-2:] == [("C", b"SELECT 1\0"), ("Z", b"I")]
    c.close()


# ---- requests Postgres answers without a server's state, while every server is busy -----------

# (messages, ReadyForQuery count): each answered by Postgres from nothing a session holds
WITHOUT_SERVER = {
    "an empty query": ([query_msg("")], 1),
    "a query of blanks, semicolons and comments": (
        [query_msg(" \t\n-- a comment; SELECT 1\n/* a /* nested */ block */ ;;\r\f")], 1),
    "a query of a comment to its end": ([query_msg("-- SELECT 1")], 1),
    "closes of names never prepared, then a sync": (
        [close_msg("S", "never"), close_msg("P", ""), close_msg("P", "p1"), sync_msg()], 1),
    "a long name's close": ([close_msg("S", "n" * 100), sync_msg()], 1),
    "syncs, empty queries and closes in one batch": (
        [sync_msg(), query_msg(""), close_msg("S", "x"), sync_msg(), message(b"H"), query_msg(" "),
         sync_msg()], 5),
}

# not answered without a server: Postgres's own error (or answer) as a server gives it
WITH_SERVER = {
    "an unended block comment": [query_msg("/* unended")],
    "a query of a statement after a comment": [query_msg("-- c\nSELECT 1")],
    "a close with a bad subtype": [message(b"C", b"Xname\0"), sync_msg()],
    "a close with bytes after its name": [message(b"C", b"Sname\0x"), sync_msg()],
    "a close, then a parse": [close_msg("S", "x"), parse_msg("", "SELECT 1"), sync_msg()],
    "a close with a flush before its sync": [close_msg("S", "x"), message(b"H"), sync_msg()],
    # the client's unnamed statement stays on its backend (test_review_dec07.py)
    "a close of the unnamed statement": [close_msg("S", ""), sync_msg()],
}


class BusyPool:
    """sluice with one server, busy until free(): its client waits there for an advisory lock
    that a direct session holds (in any mode, and nothing ends it by itself), and a
    query_wait_timeout that a request queued meanwhile meets soon."""

    def __init__(self, pg, start_sluice, mode):
        self.sluice = start_sluice({"pool_mode": mode, "default_pool_size": 1,
                                    "max_db_connections": 1, "query_wait_timeout": 2})
        self.locker = raw_login(pg.port, password="apppass")
        self.locker.send(query_msg("SELECT pg_advisory_lock(91)"))
        assert answers_until_ready(self.locker, 1, 20)[-1] == ("Z", b"I")
        self.busy = raw_login(self.sluice.port)
        self.busy.send(query_msg("SELECT pg_advisory_lock(91) /* busy */"))
        pg.wait_for_active("app", "/* busy */")

    def free(self):
        if self.locker:
            self.locker.close()
            self.locker = None
            self.busy.read_results()
            self.busy.send(query_msg("SELECT pg_advisory_unlock_all()"))
            self.busy.read_results()

    def close(self):
        if self.locker:
            self.locker.close()
        self.busy.close()


def direct_answer(pg, msgs, readies):
    direct = raw_login(pg.port, password="apppass")
    try:
        direct.send(b"".join(msgs))
        return answers_until_ready(direct, readies, 10)
    finally:
        direct.close()


@pytest.mark.parametrize("what", sorted(WITHOUT_SERVER))
@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_requests_postgres_answers_from_nothing_are_answered_while_every_server_is_busy(
        pg, start_sluice, mode, what):
    """An idle client's empty Query (blanks, ';' and comments only), or its Closes of names it
    never prepared followed by a Sync: Postgres answers at once (EmptyQueryResponse, or
    CloseComplete each, then ReadyForQuery 'I'). sluice leased a server for them, and with the
    one server busy the client got query_wait_timeout's 53300. Now the same bytes as Postgres
    sends come at once, and a query after them still runs."""
    msgs, readies = WITHOUT_SERVER[what]
    want = direct_answer(pg, msgs, readies)
    assert all(m in "I3Z" for m, _ in want), want
    pool = BusyPool(pg, start_sluice, mode)
    b = raw_login(pool.sluice.port)
    try:
        b.send(b"".join(msgs))
        assert answers_until_ready(b, readies, 20) == want
        pool.free()
        b.send(query_msg("SELECT 7"))
        assert answers_until_ready(b, 1, 20)[-2:] == [("C", b"SELECT 1\0"), ("Z", b"I")]
    finally:
        pool.close()
        b.close()


@pytest.mark.parametrize("what", sorted(WITH_SERVER))
def test_requests_that_need_a_server_still_get_its_answer(pg, start_sluice, what):
    """What only a server answers in Postgres's words (a syntax error, a malformed Close, a Close
    whose batch goes on) still waits for one: with the one server busy, query_wait_timeout's
    53300; with it free, Postgres's own answer."""
    msgs = WITH_SERVER[what]
    want = direct_answer(pg, msgs, 1)
    pool = BusyPool(pg, start_sluice, "transaction")
    b = raw_login(pool.sluice.port)
    try:
        b.send(b"".join(msgs))
        assert answers_until_ready(b, 1, 20) == [("E", "53300"), ("Z", b"I")]
        pool.free()
        b.send(b"".join(msgs))
        assert answers_until_ready(b, 1, 20) == want
    finally:
        pool.close()
        b.close()


def test_a_close_of_a_statement_the_client_prepared_goes_to_a_server(pg, start_sluice):
    """A Close of a name the client prepared is not answered by sluice: it waits for a server
    (query_wait_timeout's 53300 while the one server is busy), and once one is free the
    statement is closed there, so a Bind of it then fails with 26000 as on Postgres."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "max_db_connections": 1, "query_wait_timeout": 2})
    b = raw_login(s.port)
    busy = raw_login(s.port)
    try:
        b.send(parse_msg("mine", "SELECT 1") + sync_msg())
        assert answers_until_ready(b, 1, 20) == [("1", b""), ("Z", b"I")]
        busy.send(query_msg("BEGIN"))
        assert answers_until_ready(busy, 1, 20)[-1] == ("Z", b"T")
        b.send(close_msg("S", "mine") + sync_msg())
        assert answers_until_ready(b, 1, 20) == [("E", "53300"), ("Z", b"I")]
        busy.send(query_msg("COMMIT"))
        busy.read_results()
        b.send(close_msg("S", "mine") + sync_msg())
        assert answers_until_ready(b, 1, 20) == [("3", b""), ("Z", b"I")]
        b.send(bind_msg("", "mine") + execute_msg() + sync_msg())
        assert answers_until_ready(b, 1, 20) == [("E", "26000"), ("Z", b"I")]
    finally:
        busy.close()
        b.close()


def test_an_empty_query_under_disable_pqexec_is_refused_as_any_query(start_sluice):
    """disable_pqexec refuses every Query message: an empty one too, though sluice answers an
    empty Query itself otherwise (FATAL 0A000 naming the key, then the close)."""
    s = start_sluice({"pool_mode": "transaction", "disable_pqexec": 1})
    c = raw_login(s.port)
    try:
        c.send(query_msg(""))
        err = c.expect_error()
        assert (err["S"], err["C"]) == ("FATAL", "0A000"), err
        assert "disable_pqexec" in err["M"], err
        assert c.is_closed(5)
    finally:
        c.close()
