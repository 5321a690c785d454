"""Wire-protocol edge cases: SSL/GSS negotiation, bad versions, hostile bytes, LISTEN/NOTIFY.
Protocol reference: PostgreSQL docs 55.2.1 (start-up), 55.2.10 (SSL), 55.7 (message formats)."""

import socket
import struct
import time

import pytest

from pgwire import (PROTOCOL_3_0, RawConn, ServerError, gssenc_request, message,
                    raw_login, ssl_request, startup_packet, terminate_msg)


@pytest.fixture
def s(start_sluice):
    return start_sluice({"pool_mode": "transaction", "default_pool_size": 2})


@pytest.fixture
def bystander(s):
    """A client that is logged in before the hostile one and must keep working after it."""
    c = s.connect()
    assert c.execute("SELECT 1").fetchone()[0] == 1
    yield c
    assert c.execute("SELECT 'still working'").fetchone()[0] == "still working", \
        "a hostile client disturbed another client"
    c.close()


def expect_fatal_and_close(c, sqlstate):
    err = c.expect_error(timeout=10)
    assert err.get("C") == sqlstate, f"expected SQLSTATE {sqlstate}, got {err}"
    assert err.get("S") in ("FATAL", "ERROR"), err
    assert c.is_closed(5), "sluice should close the connection after this error"
    return err


# ---- negotiation ---------------------------------------------------------------------------------


def test_ssl_request_is_answered_N_and_a_normal_login_follows(s):
    c = RawConn(s.port)
    try:
        c.send(ssl_request())
        assert c.recv_exact(1) == b"N"
        c.startup()
        rows, _ = c.query("SELECT 'plain after N'")
        assert rows == [["plain after N"]]
    finally:
        c.close()


def test_gssenc_request_is_answered_N_and_a_normal_login_follows(s):
    c = RawConn(s.port)
    try:
        c.send(gssenc_request())
        assert c.recv_exact(1) == b"N"
        c.send(ssl_request())  # libpq tries SSL next
        assert c.recv_exact(1) == b"N"
        c.startup()
        rows, _ = c.query("SELECT 1")
        assert rows == [["1"]]
    finally:
        c.close()


def test_libpq_with_sslmode_disable_and_prefer_both_connect(s):
    import psycopg
    for mode in ("disable", "prefer", "allow"):
        with psycopg.connect(s.dsn(sslmode=mode), autocommit=True) as c:
            assert c.execute("SELECT 1").fetchone()[0] == 1


def test_sslmode_require_is_refused_cleanly_without_tls(s):
    import psycopg
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(s.dsn(sslmode="require"))
    assert "SSL" in str(ei.value) or "ssl" in str(ei.value)


@pytest.mark.parametrize("major,minor", [(2, 0), (1, 0), (4, 0)])
def test_startup_with_an_unsupported_protocol_version_gets_0A000(s, bystander, major, minor):
    c = RawConn(s.port)
    try:
        c.send(startup_packet(protocol=(major << 16) | minor))
        expect_fatal_and_close(c, "0A000")
    finally:
        c.close()


# ---- hostile bytes ---------------------------------------------------------------------------------


# A startup length out of range (garbage, 0x7fffffff, shorter than its header) is closed without
# a word, as by Postgres: test_protocol_framing_dec07.py compares it with Postgres.


def test_startup_packet_without_its_final_terminator_gets_08P01_and_is_closed(s, bystander):
    body = struct.pack("!I", PROTOCOL_3_0) + b"user\0app\0database\0appdb"  # cut mid-list
    c = RawConn(s.port)
    try:
        c.send(struct.pack("!I", len(body) + 4) + body)
        expect_fatal_and_close(c, "08P01")
    finally:
        c.close()


def test_startup_packet_cut_off_by_eof_is_closed_and_sluice_keeps_serving(s, bystander):
    pkt = startup_packet()
    c = RawConn(s.port)
    try:
        c.send(pkt[: len(pkt) // 2])
        c.sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 5
        data = b""
        while time.monotonic() < deadline:
            try:
                chunk = c.sock.recv(4096)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
        else:
            raise AssertionError("sluice kept a half-sent startup packet open for 5 s after EOF")
        if data:  # nothing, or an 08P01 ErrorResponse
            assert data[:1] == b"E" and b"C08P01\0" in data, data[:200]
    finally:
        c.close()
    assert s.alive()


def test_startup_without_a_user_gets_an_error_and_is_closed(s, bystander):
    c = RawConn(s.port)
    try:
        c.send(startup_packet(user=None))
        err = c.expect_error(timeout=10)
        assert err.get("C") in ("08P01", "28000"), err
        assert c.is_closed(5)
    finally:
        c.close()


def test_message_length_of_0x7fffffff_after_login_gets_08P01_and_is_closed(s, bystander, pg):
    c = raw_login(s.port)
    try:
        c.send(b"Q" + struct.pack("!I", 0x7FFFFFFF) + b"SELECT 1")
        expect_fatal_and_close(c, "08P01")
    finally:
        c.close()
    with s.connect() as d:  # the pool is not poisoned
        assert d.execute("SELECT now() = statement_timestamp()").fetchone()[0] is True


@pytest.mark.parametrize("length", [0, 3])
def test_message_length_below_4_after_login_gets_08P01_and_is_closed(s, bystander, length):
    c = raw_login(s.port)
    try:
        c.send(b"Q" + struct.pack("!I", length))
        expect_fatal_and_close(c, "08P01")
    finally:
        c.close()


def test_unknown_message_type_after_login_gets_08P01(s, bystander):
    c = raw_login(s.port)
    try:
        c.send(message(b"\x01", b"zzzz"))
        err = c.expect_error(timeout=10)
        assert err.get("C") == "08P01", err
        assert c.is_closed(5)
    finally:
        c.close()


def test_random_bytes_after_login_never_crash_sluice(s, bystander):
    import random
    rng = random.Random(1234)
    for _ in range(20):
        c = raw_login(s.port)
        try:
            c.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
            c.is_closed(0.3)
        finally:
            c.close_abruptly(reset=True)
    assert s.alive()


def test_terminate_closes_the_connection(s):
    c = raw_login(s.port)
    try:
        c.send(terminate_msg())
        assert c.is_closed(5)
    finally:
        c.close()


# ---- login errors -----------------------------------------------------------------------------------


def test_unknown_database_gets_3D000(s, bystander):
    c = RawConn(s.port)
    try:
        c.send(startup_packet(database="no_such_db"))
        err = c.expect_error(timeout=10)
        assert err.get("C") == "3D000", err
        assert "no_such_db" in err.get("M", ""), err
        assert c.is_closed(5)
    finally:
        c.close()


def test_unknown_database_via_libpq_fails_to_connect(s):
    import psycopg
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(s.dsn(dbname="no_such_db"))
    assert "no_such_db" in str(ei.value)


# ---- asynchronous messages ----------------------------------------------------------------------------


def test_listen_notify_is_delivered_in_session_mode(start_sluice):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 2})
    with s.connect() as listener, s.connect() as sender:
        got = []
        listener.add_notify_handler(lambda n: got.append((n.channel, n.payload)))
        listener.execute("LISTEN sluice_chan")
        sender.execute("NOTIFY sluice_chan, 'hello'")
        sender.execute("SELECT pg_notify('sluice_chan', 'second')")
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            listener.execute("SELECT 1")
            time.sleep(0.05)
        assert got == [("sluice_chan", "hello"), ("sluice_chan", "second")]


def test_notification_reaches_an_idle_session_mode_client_without_a_query(start_sluice):
    """NotificationResponse arrives asynchronously (55.2.7): sluice must forward it while the
    client is idle, not only piggy-backed on the client's next query."""
    s = start_sluice({"pool_mode": "session", "default_pool_size": 2})
    c = raw_login(s.port)
    try:
        c.query("LISTEN idle_chan")
        with s.connect() as sender:
            sender.execute("NOTIFY idle_chan, 'wake up'")
        c.settimeout(5)
        mtype, payload = c.read_until({"A"})
        assert b"idle_chan" in payload and b"wake up" in payload
    finally:
        c.close()


def test_server_error_response_fields_reach_the_client_unchanged(s):
    c = raw_login(s.port)
    try:
        with pytest.raises(ServerError) as ei:
            c.query("SELECT * FROM no_such_table_xyz")
        f = ei.value.fields
        assert f["C"] == "42P01"
        assert "no_such_table_xyz" in f["M"]
        assert "P" in f  # position
        rows, _ = c.query("SELECT 'after error'")
        assert rows == [["after error"]]
    finally:
        c.close()
