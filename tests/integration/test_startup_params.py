"""Startup packets with many parameters, with Postgres as the oracle. Postgres takes a
StartupMessage of up to 10004 bytes (MAX_STARTUP_PACKET_LENGTH, 10000, counts the bytes after the
length word) with any number of name/value
pairs (ProcessStartupPacket): each becomes a setting, the last of a name given twice counts,
"_pq_." names are protocol options it names back in NegotiateProtocolVersion, and a name that is
no setting is refused after authentication (42704). Through sluice a client with hundreds of
them must see the same, and keep its values on every backend its transactions get."""

import struct

import pytest

from conftest import APP_DB, APP_PASSWORD
from pgwire import PROTOCOL_3_0, RawConn, ServerError, raw_login

CUSTOM = [(f"myapp.p{i:03d}", f"v{i:03d}") for i in range(120)]
GUCS = [("DateStyle", "German"), ("TimeZone", "Asia/Tokyo"), ("IntervalStyle", "postgres_verbose"),
        ("extra_float_digits", "1"), ("search_path", "pg_catalog, public"),
        ("statement_timeout", "123s"), ("lock_timeout", "45s"), ("work_mem", "8MB")]
# an application_name given twenty times: the last counts, as in Postgres
APP_NAMES = [("application_name", f"app{i:02d}") for i in range(20)]
MANY = APP_NAMES + GUCS + CUSTOM + [("options", "-c geqo=off -c myapp.via_options=yes")]
READ_BACK = ([n for n, _ in GUCS] + ["application_name", "geqo", "myapp.via_options"]
             + [n for n, _ in CUSTOM])
READ_SQL = ("SELECT pg_backend_pid(), "
            + ", ".join(f"current_setting('{n}')" for n in READ_BACK))


def startup(pairs, user="app", database="appdb"):
    """A StartupMessage of these pairs in this order (a name may repeat)."""
    body = struct.pack("!I", PROTOCOL_3_0)
    for k, v in [("user", user), ("database", database)] + pairs:
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    assert len(body) + 4 <= 10004
    return struct.pack("!I", len(body) + 4) + body


def login(port, pairs, password=None):
    """Log in with pairs: (conn, what the client saw: NegotiateProtocolVersion's body, the
    ParameterStatus values of the names it asked for, and the refusal's SQLSTATE and message)."""
    c = RawConn(port, timeout=30)
    negotiated = []
    read = c.read_message

    def recording_read():
        mtype, payload = read()
        if mtype == "v":
            negotiated.append(payload)
        return mtype, payload

    c.read_message = recording_read
    c.send(startup(pairs))
    try:
        c.finish_login(password=password)
        refusal = None
    except ServerError as e:
        refusal = (e.fields.get("S"), e.fields.get("C"), e.fields.get("M"))
    asked = {n.lower() for n, _ in pairs}
    reported = {k: v for k, v in c.params.items() if k.lower() in asked}
    return c, (negotiated, reported, refusal)


def read_back(c):
    """(the backend's pid, the values of READ_BACK) in one transaction."""
    rows, _ = c.query(READ_SQL)
    return int(rows[0][0]), rows[0][1:]


@pytest.mark.parametrize("reset", ["", "DISCARD ALL"])
def test_hundreds_of_parameters_hold_on_every_backend_as_on_postgres(pg, start_sluice, reset):
    """A client of 150 startup parameters (reported settings, other settings, custom ones, a
    name given twenty times, options) sees at login and in each transaction what it sees on
    Postgres, while its backend serves another client in between that set other values (and,
    with server_reset_query_always, is reset between them)."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "server_reset_query": reset, "server_reset_query_always": 1 if reset else 0})
    direct, want = login(pg.port, MANY, password="apppass")
    pooled, seen = login(s.port, MANY)
    other, _ = login(s.port, [("application_name", "other"), ("DateStyle", "SQL")]
                     + [(n, "other") for n, _ in CUSTOM[:40]])
    try:
        assert seen == want and want[2] is None
        _, expected = read_back(direct)
        assert expected[READ_BACK.index("application_name")] == "app19"
        pids = set()
        for turn in range(4):
            pid, values = read_back(pooled)
            pids.add(pid)
            assert values == expected, f"turn {turn}"
            other_pid, _ = read_back(other)
            pids.add(other_pid)
            other.query("SET myapp.p050 = 'changed'; SET work_mem = '1MB'; SET TimeZone = 'UTC'")
        pooled.query("BEGIN")
        pid, values = read_back(pooled)
        pooled.query("COMMIT")
        assert values == expected
        assert len(pids) == 1  # one backend for both clients (default_pool_size 1)
    finally:
        for c in (direct, pooled, other):
            c.close()


def test_many_parameters_in_session_mode_are_the_backends_own(pg, start_sluice):
    s = start_sluice({"pool_mode": "session"})
    direct, want = login(pg.port, MANY, password="apppass")
    pooled, seen = login(s.port, MANY)
    try:
        assert seen == want and want[2] is None
        assert read_back(pooled)[1] == read_back(direct)[1]
    finally:
        direct.close()
        pooled.close()


REFUSED = {
    # a name that is no setting: 42704 after authentication
    "unknown_setting": MANY[:-1] + [("no_such_setting", "1")],
    # a setting's bad value: 22023
    "bad_value": MANY[:-1] + [("work_mem", "lots")],
}


@pytest.mark.parametrize("case", sorted(REFUSED))
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_many_parameters_with_one_postgres_refuses_get_its_refusal(pg, start_sluice, case, mode):
    s = start_sluice({"pool_mode": mode})
    pairs = REFUSED[case]
    direct, want = login(pg.port, pairs, password="apppass")
    pooled, seen = login(s.port, pairs)
    direct.close()
    pooled.close()
    assert want[2] is not None and want[2][1] in ("42704", "22023")
    assert seen[2] == want[2]


def test_protocol_options_among_many_parameters_are_named_back(pg, start_sluice):
    """"_pq_." names anywhere in a long list: NegotiateProtocolVersion names each, in order,
    and the login goes on."""
    s = start_sluice({"pool_mode": "transaction"})
    pairs = MANY[:60] + [("_pq_.first", "1")] + MANY[60:] + [("_pq_.second", "x")]
    direct, want = login(pg.port, pairs, password="apppass")
    pooled, seen = login(s.port, pairs)
    try:
        assert want[0] and seen == want and want[2] is None
        assert read_back(pooled)[1] == read_back(direct)[1]
    finally:
        direct.close()
        pooled.close()


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_startup_packet_as_long_as_postgres_takes_with_tiny_parameters(pg, start_sluice, mode):
    """The most pairs 10004 bytes hold (about 2000 custom settings of short names): accepted
    and kept as Postgres keeps them; a byte more and both end the connection unread (Postgres
    only logs "invalid length of startup packet"; sluice says 08P01 first)."""
    s = start_sluice({"pool_mode": mode})
    pairs = []
    budget = 10004 - 4 - 4 - len(b"user\0app\0database\0appdb\0") - 1
    i = 0
    while True:
        pair = (f"x.k{i:x}", "1")
        size = len(pair[0]) + len(pair[1]) + 2
        if size > budget:
            break
        pairs.append(pair)
        budget -= size
        i += 1
    assert len(pairs) > 1000
    pairs[-1] = (pairs[-1][0], "1" * (budget + 1))  # exactly 10004 bytes
    assert len(startup(pairs)) == 10004
    direct, want = login(pg.port, pairs, password="apppass")
    pooled, seen = login(s.port, pairs)
    try:
        assert seen == want and want[2] is None
        sql = "SELECT " + " || ".join(f"current_setting('{n}')" for n, _ in pairs[-200:])
        assert pooled.query(sql)[0] == direct.query(sql)[0]
    finally:
        direct.close()
        pooled.close()
    too_long = startup(pairs[:-1])[4:-1] + f"{pairs[-1][0]}\0{pairs[-1][1]}x\0\0".encode()
    assert len(too_long) + 4 == 10005
    for port in (pg.port, s.port):
        c = RawConn(port, timeout=30)
        c.send(struct.pack("!I", len(too_long) + 4) + too_long)
        assert c.is_closed(timeout=30)
        c.close()


@pytest.mark.parametrize("mode", ["transaction", "statement", "session"])
def test_a_login_seed_does_not_seed_random_as_on_postgres(pg, start_sluice, mode):
    """seed at login (-c seed=0.5) is taken and ignored by Postgres: only a SET of it calls
    setseed (check_random_seed arms it for an interactive source). Through sluice in
    transaction mode each transaction's sync set it, so random() gave setseed(0.5)'s first
    number in every transaction. Now no sync sends it: random() is as unseeded as on Postgres.
    A seed out of range is still refused as Postgres refuses it."""
    seeded = raw_login(pg.port, password=APP_PASSWORD)
    try:
        seeded.query("SELECT setseed(0.5)")
        first = seeded.query("SELECT random()")[0]
    finally:
        seeded.close()
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    for port, password in ((pg.port, APP_PASSWORD), (s.port, None)):
        c = raw_login(port, password=password, options="-c seed=0.5")
        try:
            got = [c.query("SELECT random()")[0] for _ in range(3)]
            assert first not in got, f"random() was seeded by the login's seed ({port})"
            assert c.query("SHOW seed")[0] == [["unavailable"]]
        finally:
            c.close()
    refusals = []
    for port, password in ((pg.port, APP_PASSWORD), (s.port, None)):
        with pytest.raises(ServerError) as e:
            raw_login(port, password=password, options="-c seed=5").close()
        refusals.append((e.value.fields["C"], e.value.fields["M"]))
    assert refusals[0] == refusals[1]


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_database_entry_with_empty_options_first_logs_in(pg, start_sluice, mode):
    """A [databases] entry whose options='' comes before its other keywords (libpq takes an
    empty options as none). The login that had nothing to add to it dropped the entry's own
    slot, ending the keyword list there: sluice crashed (SIGSEGV) on its first server."""
    entry = dict({"options": ""}, **pg.db_entry())
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1}, databases={APP_DB: entry})
    for login in ({}, {"application_name": "with-a-startup-parameter"}):
        c = raw_login(s.port, **login)
        try:
            assert c.query("SELECT current_user, current_setting('application_name')")[0] == \
                [["app", login.get("application_name", "")]]
        finally:
            c.close()
