"""Differential test: random client sessions give the same results through sluice as directly
against Postgres (difftest.py generates, runs, compares and shrinks them).

CI runs DIFFTEST_SEEDS seeds (default 5) per pool mode, from DIFFTEST_FIRST_SEED (default 1).
Longer runs: scripts/difftest --minutes 30 (DIFFTEST_MINUTES: run new seeds until the time is up,
split between the modes). DIFFTEST_FEATURES=a,b limits what the scripts use (difftest.FEATURES),
DIFFTEST_MODES=session|transaction one mode, DIFFTEST_SHRINK_SECONDS the time spent shrinking
failing seeds, per mode in all (default 30; later failing seeds are printed unshrunk),
DIFFTEST_IGNORE_PARAMS=a,b a triage knob that leaves ParameterStatus names out.
"""

import os
import time

import pytest

import difftest
from pgwire import parse_fields

SEEDS = int(os.environ.get("DIFFTEST_SEEDS", "5"))
FIRST_SEED = int(os.environ.get("DIFFTEST_FIRST_SEED", "1"))
MINUTES = float(os.environ.get("DIFFTEST_MINUTES", "0"))
SHRINK_SECONDS = float(os.environ.get("DIFFTEST_SHRINK_SECONDS", "30"))
FEATURES = tuple(f for f in os.environ.get("DIFFTEST_FEATURES", "").split(",") if f) \
    or difftest.ALL_FEATURES
MODES = tuple(m for m in os.environ.get("DIFFTEST_MODES", "").split(",") if m) or difftest.MODES
PER_MODE_SECONDS = MINUTES * 60 / len(MODES)
TIMEOUT = (PER_MODE_SECONDS or SEEDS * 30) + 2 * SHRINK_SECONDS + 120


def test_features_named_in_difftest_features_exist():
    unknown = set(FEATURES) - set(difftest.ALL_FEATURES)
    assert not unknown, f"unknown DIFFTEST_FEATURES {sorted(unknown)}; known: {difftest.ALL_FEATURES}"


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("mode", MODES)
def test_random_client_sessions_see_through_sluice_what_they_see_from_postgres(pg, start_sluice,
                                                                              mode, request):
    # each scenario starts its own sluice; the logs of those that stopped cleanly are left out
    # of a failure report (the fixture still checks every one at teardown)
    def start(main):
        for x in request.node._sluices:
            if not x.alive() and x.exit_code == 0 and not x.sanitizer_report():
                x.log_in_report = False
        return start_sluice(main)

    if PER_MODE_SECONDS:
        deadline = time.monotonic() + PER_MODE_SECONDS
        seeds = range(FIRST_SEED, FIRST_SEED + 10**9)
    else:
        deadline = None
        seeds = range(FIRST_SEED, FIRST_SEED + SEEDS)
    failures, stats = difftest.run_seeds(pg, start, seeds, [mode], FEATURES,
                                         shrink_s=SHRINK_SECONDS, deadline=deadline)
    print(f"difftest {mode}: {stats['scenarios']} scenarios, {stats['clients']} client sessions,"
          f" {stats['blocks']} blocks, {stats['ops']} messages/statements;"
          f" {len(failures)} with differences")
    assert not failures, "\n\n".join(failures)


# ---- differences the harness found, each as its own regression test -----------------------------


def _replies_until_ready(c, n_ready):
    """What a client sees up to its n_ready-th ReadyForQuery: errors (SQLSTATE), rows, and
    Parse/Bind/CommandComplete, in order."""
    seen = []
    zs = 0
    while zs < n_ready:
        mtype, payload = c.read_message()
        if mtype == "Z":
            zs += 1
        elif mtype == "E":
            seen.append(("E", parse_fields(payload).get("C")))
        elif mtype == "D":
            seen.append(("D", payload[6:].decode()))
        elif mtype in "12C":
            seen.append((mtype,))
    return seen


def _parse_twice_then_bind(port, password=None):
    """Parse s_dup, Parse s_dup again with other text, then Bind/Execute it: what comes back."""
    from pgwire import raw_login, parse_msg, bind_msg, execute_msg, sync_msg

    c = raw_login(port, password=password)
    try:
        c.send(parse_msg("s_dup", "SELECT 1 AS first") + sync_msg()
               + parse_msg("s_dup", "SELECT 2 AS second") + sync_msg()
               + bind_msg("", "s_dup") + execute_msg() + sync_msg())
        return _replies_until_ready(c, 3)
    finally:
        c.close()


def test_transaction_mode_parse_of_a_statement_name_in_use_fails_with_42P05_as_in_postgres(
        pg, start_sluice):
    """Found by the harness (seed 2, transaction, --features extended): sluice answered the
    second Parse with ParseComplete instead of Postgres's 42P05."""
    direct = _parse_twice_then_bind(pg.port, password="apppass")
    assert direct == [("1",), ("E", "42P05"), ("2",), ("D", "1"), ("C",)]
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    assert _parse_twice_then_bind(s.port) == direct


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_search_path_list_given_in_startup_options_is_a_list_as_in_postgres(pg, start_sluice, mode):
    """Found by the harness (--features startup): options=-c search_path=public,pg_catalog is two
    schemas for Postgres, but sluice applied it as one quoted name "public,pg_catalog"."""
    from pgwire import raw_login

    opt = "-c search_path=public,pg_catalog"
    c = raw_login(pg.port, password="apppass", options=opt)
    direct = c.query("SHOW search_path")[0]
    c.close()
    assert direct == [["public,pg_catalog"]]
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    c = raw_login(s.port, options=opt)
    try:
        assert c.query("SHOW search_path")[0] == direct
    finally:
        c.close()


def test_transaction_mode_login_reports_only_the_clients_own_parameters_when_logins_race(
        start_sluice):
    """Found by the harness (--features startup, --features encoding): two clients logging in at
    once to a fresh sluice; the one without startup parameters was sent ParameterStatus
    client_encoding=WIN1252 and search_path=evil, the other client's, while its session used
    UTF8 (a client library then encodes with the wrong charset). Postgres never reports
    search_path at all. Fresh sluices, so the race is the first login's: it showed in 3 of 10."""
    import threading
    from pgwire import raw_login

    wrong = []
    for attempt in range(15):
        s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2})
        conns = {}
        barrier = threading.Barrier(2)

        def login(name, **params):
            barrier.wait(10)
            conns[name] = raw_login(s.port, **params)

        threads = [threading.Thread(target=login, args=("other",),
                                    kwargs={"client_encoding": "WIN1252",
                                            "options": "-c search_path=evil"}),
                   threading.Thread(target=login, args=("plain",))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        try:
            p = conns["plain"].params
            if p.get("client_encoding") != "UTF8" or "search_path" in p:
                wrong.append((attempt, p.get("client_encoding"), p.get("search_path")))
        finally:
            for c in conns.values():
                c.close()
            s.stop()
    assert not wrong, f"the plain client was reported another's parameters: {wrong}"


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_datestyle_given_in_startup_options_is_reported_as_postgres_reports_it(pg, start_sluice,
                                                                               mode):
    """Found by the harness (--features set,startup): options=-c DateStyle=German is reported by
    Postgres as 'German, DMY' (its canonical form, which drivers parse); sluice reported the
    option's text 'German'."""
    from pgwire import raw_login

    opt = "-c DateStyle=German"
    c = raw_login(pg.port, password="apppass", options=opt)
    direct = c.params["DateStyle"]
    c.close()
    assert direct == "German, DMY"
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    c = raw_login(s.port, options=opt)
    try:
        assert c.params["DateStyle"] == direct
        assert c.query("SHOW DateStyle")[0] == [[direct]]
    finally:
        c.close()


def _after_resets(port, password=None):
    """A client without application_name resets: what it is told and what it reads back."""
    from pgwire import raw_login

    c = raw_login(port, password=password)
    try:
        seen = [c.params.get("application_name")]
        for sql in ("DISCARD ALL", "RESET ALL", "RESET application_name"):
            c.params.pop("application_name", None)
            c.query(sql)
            rows = c.query("SELECT current_setting('application_name')")[0]
            seen.append((sql, c.params.get("application_name", "(not reported)"), rows))
        return seen
    finally:
        c.close()


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_client_without_application_name_that_resets_keeps_it_empty_as_in_postgres(
        pg, start_sluice, mode):
    """Found by the harness (seed 4, transaction, --features set): after DISCARD ALL a client
    that sent no application_name was reported application_name=sluice, the name of sluice's own
    login to the backend, and read it back; Postgres keeps ''."""
    direct = _after_resets(pg.port, password="apppass")
    assert direct[0] == ""
    assert all(row[1] == "(not reported)" and row[2] == [[""]] for row in direct[1:])
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    assert _after_resets(s.port) == direct


@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("opt", ["-c DateStyle=German", "-c IntervalStyle=ISO_8601",
                                 "-c TimeZone=europe/berlin", "-c client_encoding=latin1"])
def test_later_logins_with_a_startup_value_postgres_respells_are_reported_as_postgres_does(
        pg, start_sluice, mode, opt):
    """The first login was reported Postgres's spelling ('German, DMY', 'LATIN1'), the next with
    the same options the option's own text: its server already had the value, so no
    ParameterStatus came to correct it (and each of its transactions then SET it again)."""
    from pgwire import raw_login

    c = raw_login(pg.port, password="apppass", options=opt)
    direct = dict(c.params)
    c.close()
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    differ = []
    for i in range(3):
        c = raw_login(s.port, options=opt)
        try:
            differ += [(i, k, v) for k, v in c.params.items() if direct.get(k) != v]
        finally:
            c.close()
    assert not differ, f"Postgres reports {direct}"


@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("app", ["ünï", "x" * 80, "tab\there"])
def test_a_startup_application_name_postgres_cleans_is_reported_as_postgres_does(
        pg, start_sluice, mode, app):
    """Postgres keeps printable ASCII only ('?' for other bytes) and 63 bytes of an
    application_name; sluice welcomed such a client with the raw value it sent, without asking
    a server (any application_name was taken as known good)."""
    from pgwire import raw_login

    c = raw_login(pg.port, password="apppass", application_name=app)
    direct = (c.params["application_name"], c.query("SHOW application_name")[0])
    c.close()
    assert direct[0] != app
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    seen = []
    for _ in range(3):
        c = raw_login(s.port, application_name=app)
        try:
            seen.append((c.params["application_name"], c.query("SHOW application_name")[0]))
        finally:
            c.close()
    assert seen == [direct] * 3


def _failed_parse_then_parse_again(port, password=None):
    """Parse s_fail with text that fails, Sync; Parse s_fail again with good text, Bind, Execute."""
    from pgwire import raw_login, parse_msg, bind_msg, describe_msg, execute_msg, sync_msg

    c = raw_login(port, password=password)
    try:
        c.send(parse_msg("s_fail", "SELECT k FROM no_such_table_dt") + describe_msg("S", "s_fail")
               + sync_msg())
        c.send(bind_msg("", "s_fail") + sync_msg())
        c.send(parse_msg("s_fail", "SELECT 7") + sync_msg()
               + bind_msg("", "s_fail") + execute_msg() + sync_msg())
        return _replies_until_ready(c, 4)
    finally:
        c.close()


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_statement_name_whose_parse_failed_is_free_as_in_postgres(pg, start_sluice, mode):
    """Found by the harness (seed 1015, transaction): a named Parse that failed (its table not on
    the client's search_path) was still taken as the client's statement, so its next Parse of the
    name re-prepared the failed text and failed again; Postgres has no such statement."""
    direct = _failed_parse_then_parse_again(pg.port, password="apppass")
    assert direct == [("E", "42P01"), ("E", "26000"), ("1",), ("2",), ("D", "7"), ("C",)]
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    assert _failed_parse_then_parse_again(s.port) == direct


@pytest.mark.parametrize("workers", [1, 2])
def test_transaction_mode_a_refused_login_does_not_change_the_parameters_of_the_next_client(
        start_sluice, workers):
    """Found by the harness (seeds 1078 and 2098, transaction): a login refused for a bad option
    left the rest of its parameter sync running on the server, which went to the next login;
    the ParameterStatus of those leftovers (DateStyle 'ISO, MDY', application_name '') were
    taken as that client's own, so each of its transactions then set the wrong value. A race
    of logins: it showed in about one attempt of 25.
    With 2 workers, a pool that had not learnt its welcome yet learnt it from a server that
    another worker's client had used (handed over, DateStyle 'Postgres, YMD'), and told the
    parameterless client d that value: nearly every attempt."""
    import threading
    from pgwire import ServerError, raw_login

    clients = {
        "a": ({"options": "-c DateStyle=Postgres,\\ YMD", "application_name": "difftest"},
              ("Postgres, YMD", "difftest")),
        "b": ({"options": "-c no_such_setting=1", "client_encoding": "SQL_ASCII"}, "refused"),
        "c": ({"options": "-c DateStyle=Postgres,\\ YMD -c extra_float_digits=0",
               "application_name": ""}, ("Postgres, YMD", "")),
        "d": ({}, ("ISO, MDY", "")),
    }
    wrong = []
    for attempt in range(40):
        s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2, "workers": workers})
        s.log_in_report = False
        barrier = threading.Barrier(len(clients))
        seen = {}

        def one(name, params):
            barrier.wait(10)
            try:
                c = raw_login(s.port, **params)
            except ServerError:
                seen[name] = "refused"
                return
            try:
                seen[name] = {(c.query("SHOW DateStyle")[0][0][0],
                               c.query("SHOW application_name")[0][0][0]) for _ in range(3)}
            finally:
                c.close()

        threads = [threading.Thread(target=one, args=(n, p)) for n, (p, _) in clients.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        s.stop()
        want = {n: w if w == "refused" else {w} for n, (_, w) in clients.items()}
        if seen != want:
            wrong.append((attempt, seen))
    assert not wrong, f"the sessions differ from their startup parameters: {wrong}"


def _replies_until_ready_or_quiet(c, n_ready):
    """Every message up to the n_ready-th ReadyForQuery: type and, for errors, the SQLSTATE; for
    rows their text."""
    seen = []
    while sum(1 for s in seen if s[0] == "Z") < n_ready:
        mtype, payload = c.read_message()
        if mtype in "EN":
            seen.append((mtype, parse_fields(payload).get("C")))
        elif mtype in "DZC":
            seen.append((mtype, payload))
        elif mtype not in "SK":
            seen.append((mtype,))
    return seen


def _statement_drops_that_do_not_run(pipelined):
    """Requests that close or deallocate the statement s_keep but do not run (skipped after an
    error, refused in a failed transaction or a transaction block, parsed and never executed),
    each followed by a use of s_keep. [(messages, ReadyForQuery count)]."""
    from pgwire import parse_msg, bind_msg, close_msg, execute_msg, query_msg, sync_msg

    fail = parse_msg("", "SELECT 1/0") + bind_msg("", "") + execute_msg()
    use = bind_msg("", "s_keep") + execute_msg() + sync_msg()
    steps = [
        (fail + close_msg("S", "s_keep") + sync_msg(), 1),
        (fail + close_msg("S", "s_keep") + parse_msg("s_keep", "SELECT 'other'") + sync_msg(), 1),
        (fail + parse_msg("", "DEALLOCATE s_keep") + bind_msg("", "") + execute_msg()
         + sync_msg(), 1),
        (parse_msg("", "DEALLOCATE s_keep") + sync_msg(), 1),
        (query_msg("BEGIN") + query_msg("SELECT 1/0") + query_msg("DEALLOCATE s_keep")
         + query_msg("ROLLBACK"), 4),
        (query_msg("BEGIN") + query_msg("SELECT 1/0") + query_msg("DEALLOCATE ALL")
         + query_msg("ROLLBACK"), 4),
        (query_msg("BEGIN") + query_msg("DISCARD ALL") + query_msg("ROLLBACK"), 3),
    ]
    out = [(parse_msg("s_keep", "SELECT 'kept'") + sync_msg(), 1)]
    for msgs, n in steps:
        if pipelined:
            out.append((msgs + use, n + 1))
        else:
            out += [(msgs, n), (use, 1)]
    return out


def _drops_seen(port, pipelined, password=None):
    from pgwire import raw_login

    c = raw_login(port, password=password)
    try:
        seen = []
        for msgs, n in _statement_drops_that_do_not_run(pipelined):
            c.send(msgs)
            seen.append(_replies_until_ready_or_quiet(c, n))
        return seen
    finally:
        c.close()


@pytest.mark.parametrize("pipelined", [False, True])
def test_transaction_mode_a_close_or_deallocate_that_does_not_run_keeps_the_statement(
        pg, start_sluice, pipelined):
    """A Close the server skipped after an error, or a DEALLOCATE / DEALLOCATE ALL / DISCARD ALL
    refused in a failed transaction or a transaction block (or parsed and never executed),
    leaves the statement in Postgres; sluice forgot it when it sent the request, so the client's
    next Bind got 26000 prepared statement "s_keep" does not exist."""
    direct = _drops_seen(pg.port, pipelined, password="apppass")
    assert sum(step.count(("D", b"\x00\x01\x00\x00\x00\x04kept")) for step in direct) == 7
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2})
    assert _drops_seen(s.port, pipelined) == direct


def _login_asking_for_protocol(port, protocol, params, password=None):
    """What a client sees logging in with protocol version `protocol` and startup parameters
    `params`: the messages of the login (authentication left out, ParameterStatus by name), then
    whether a _pq_ option became a setting."""
    from pgwire import RawConn, startup_packet

    c = RawConn(port)
    seen = []
    read = c.read_message

    def recording_read():
        mtype, payload = read()
        if mtype == "v":
            seen.append((mtype, payload))
        elif mtype == "S":
            seen.append((mtype, payload.split(b"\0")[0]))
        elif mtype not in "RK":
            seen.append((mtype, payload if mtype != "E" else parse_fields(payload).get("C")))
        return mtype, payload

    c.read_message = recording_read
    try:
        c.send(startup_packet(protocol=protocol, **params))
        c.finish_login(password=password)
        c.read_message = read
        seen.append(c.query("SELECT current_setting('_pq_.opt', true)")[0])
        return seen
    finally:
        c.close()


@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("minor,params", [(1, {}), (2, {"_pq_.opt": "x"}), (0, {"_pq_.opt": "x"})])
def test_a_client_asking_for_a_newer_minor_protocol_or_options_is_told_what_it_gets_as_by_postgres(
        pg, start_sluice, mode, minor, params):
    """Postgres takes a StartupMessage of protocol 3.1 or 3.2 (libpq 18 with
    max_protocol_version) and answers NegotiateProtocolVersion: 3.0, and the _pq_ options it does
    not know, before authentication. sluice refused 3.x for x > 0 (0A000 unsupported frontend
    protocol), and took a _pq_ option as a setting without saying it was not understood."""
    import struct

    protocol = (3 << 16) | minor
    direct = _login_asking_for_protocol(pg.port, protocol, params, password="apppass")
    assert direct[0] == ("v", struct.pack("!II", 3 << 16, len(params))
                         + b"".join(k.encode() + b"\0" for k in params))
    assert direct[-1] == [[None]]
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    assert _login_asking_for_protocol(s.port, protocol, params) == direct


def _long_multibyte_name_used(port, password=None):
    """A statement name of 40 two-byte characters (80 bytes: Postgres keys it by its first 63,
    which end inside a character): Parse, Describe, Bind/Execute while another client holds a
    server (maybe the one it was prepared on), then Close and Bind again."""
    from pgwire import raw_login, parse_msg, bind_msg, close_msg, describe_msg, execute_msg, \
        sync_msg

    name = "é" * 40
    a = raw_login(port, password=password)
    b = raw_login(port, password=password)
    try:
        seen = []
        a.send(parse_msg(name, "SELECT 'long'::text AS v") + describe_msg("S", name) + sync_msg())
        seen.append(_replies_until_ready_or_quiet(a, 1))
        b.query("BEGIN")
        b.query("SELECT 1")
        a.send(bind_msg("", name) + execute_msg() + sync_msg())
        seen.append(_replies_until_ready_or_quiet(a, 1))
        b.query("COMMIT")
        a.send(close_msg("S", name) + sync_msg() + bind_msg("", name) + execute_msg() + sync_msg())
        seen.append(_replies_until_ready_or_quiet(a, 2))
        return seen
    finally:
        a.close()
        b.close()


def test_transaction_mode_a_long_statement_name_cut_inside_a_character_works_as_in_postgres(
        pg, start_sluice):
    """sluice writes its own name over the first 63 bytes of a long client name and leaves the
    rest: when byte 63 was inside a UTF-8 character, the name's rest began with a lone
    continuation byte and the server refused the Parse (22021 invalid byte sequence), where
    Postgres prepares it."""
    direct = _long_multibyte_name_used(pg.port, password="apppass")
    assert ("D", b"\x00\x01\x00\x00\x00\x04long") in direct[1]
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2})
    assert _long_multibyte_name_used(s.port) == direct


def _long_multibyte_name_bound_in_pieces(port, password=None):
    """The statement of _long_multibyte_name_used, bound by a Bind that arrives cut right after
    its name's first 63 bytes, and described one byte a write."""
    import time
    from pgwire import raw_login, parse_msg, bind_msg, describe_msg, execute_msg, sync_msg

    name = "é" * 40
    a = raw_login(port, password=password)
    try:
        seen = []
        a.send(parse_msg(name, "SELECT 'long'::text AS v") + sync_msg())
        seen.append(_replies_until_ready_or_quiet(a, 1))
        msg = bind_msg("", name) + execute_msg() + sync_msg()
        cut = 5 + 1 + 63 + 1  # header, the portal's NUL, the key, one byte of the rest
        for piece in (msg[:cut - 1], msg[cut - 1:cut], msg[cut:]):
            a.send(piece)
            time.sleep(0.2)
        seen.append(_replies_until_ready_or_quiet(a, 1))
        msg = describe_msg("S", name) + sync_msg()
        for i in range(len(msg)):
            a.send(msg[i:i + 1])
            time.sleep(0.005)
        seen.append(_replies_until_ready_or_quiet(a, 1))
        return seen
    finally:
        a.close()


def test_transaction_mode_a_long_statement_name_arriving_in_pieces_works_as_in_postgres(
        pg, start_sluice):
    """A Bind whose long name had arrived only up to its key (and a byte) was renamed at once:
    the rest of the character cut at the key, arriving later, reached the server (22021)."""
    direct = _long_multibyte_name_bound_in_pieces(pg.port, password="apppass")
    assert ("D", b"\x00\x01\x00\x00\x00\x04long") in direct[1]
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2})
    assert _long_multibyte_name_bound_in_pieces(s.port) == direct
