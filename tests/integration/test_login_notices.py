"""What Postgres tells a client at login besides the welcome reaches it through sluice too
(issue 17): an application_name of 64 bytes or more gets Postgres's NOTICE 42622 "identifier
... will be truncated to ...", right after AuthenticationOk and before the first
ParameterStatus, in both pool modes, for every client (also one given a backend another client
logged in), unless the client's own client_min_messages is above NOTICE."""

import struct

import pytest

from conftest import APP_PASSWORD
from pgwire import RawConn, ScramClient, message, parse_fields, raw_login, startup_packet

LONG = "x" * 80
MULTIBYTE = "é" * 40  # 80 bytes: Postgres cuts it at a character boundary (62 bytes)


def login_trace(port, password=None, **params):
    """The login's messages as (type, detail): a NoticeResponse with all its fields, a
    ParameterStatus by name, others by type. Returns (trace, connection)."""
    c = RawConn(port)
    c.send(startup_packet(user="app", database="appdb", **params))
    out, scram = [], None
    while True:
        t, p = c.read_message()
        if t == "R":
            (code,) = struct.unpack_from("!I", p)
            if code == 10:
                scram = ScramClient(password)
                first = scram.client_first()
                c.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
                continue
            if code == 11:
                c.send(message(b"p", scram.client_final(p[4:])))
                continue
            if code == 12:
                continue
            out.append(("R", code))
        elif t in "NE":
            out.append((t, parse_fields(p)))
        elif t == "S":
            out.append(("S", p.split(b"\0")[0].decode()))
        else:
            out.append((t, None))
        if t in "ZE":
            return out, c


def direct_and_pooled(pg, s, **params):
    want, d = login_trace(pg.port, password=APP_PASSWORD, **params)
    d.close()
    got, c = login_trace(s.port, **params)
    return want, got, c


def shown_app_name(c):
    return c.query("SHOW application_name")[0][0][0]


CASES = [
    pytest.param({"application_name": LONG}, id="long"),
    pytest.param({"application_name": MULTIBYTE}, id="multibyte"),
    pytest.param({"application_name": LONG, "options": "-c client_min_messages=warning"},
                 id="long-min-warning"),
    pytest.param({"application_name": LONG, "options": "-c client_min_messages=error"},
                 id="long-min-error"),
    pytest.param({"application_name": LONG, "options": "-c client_min_messages=debug1"},
                 id="long-min-debug1"),
    pytest.param({"application_name": "y" * 63}, id="63-bytes"),
    pytest.param({"application_name": "short"}, id="short"),
]


@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("params", CASES)
def test_login_notices_are_postgres_own_message_by_message(start_sluice, pg, mode, params):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2})
    direct_name, pids = None, []
    for i in range(2):  # the second client reuses the first one's backend or welcome
        want, got, c = direct_and_pooled(pg, s, **params)
        try:
            assert got == want
            if direct_name is None:
                d = raw_login(pg.port, password=APP_PASSWORD, **params)
                direct_name = shown_app_name(d)
                d.close()
            assert shown_app_name(c) == direct_name
            pids.append(c.query("SELECT pg_backend_pid()")[0][0][0])
        finally:
            c.close()
    if mode == "session":
        assert pids[0] == pids[1]  # the second client was given the first one's backend
    notices = [m for m in want if m[0] == "N"]
    long_name = len(params["application_name"].encode()) >= 64
    quiet = any(f"client_min_messages={lvl}" in params.get("options", "")
                for lvl in ("warning", "error"))
    assert len(notices) == (1 if long_name and not quiet else 0)
