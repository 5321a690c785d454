"""Startup-packet framing, Postgres as the oracle: the same bytes sent to Postgres and to
sluice, what the client gets back compared byte for byte. Postgres closes a connection whose
startup length is out of range without a word (ProcessStartupPacket logs "invalid length of
startup packet" as COMMERROR, never sent), and goes by an SSLRequest's or GSSENCRequest's code
alone, whatever bytes follow it in the packet. Last, requests sent ahead of an unknown message
type: answered before its FATAL, as by Postgres."""

import socket
import struct
import time

import pytest

from pgwire import (GSSENC_REQUEST_CODE, SSL_REQUEST_CODE, PeerClosed, RawConn, ServerError,
                    bind_msg, message, parse_msg, query_msg, startup_packet, sync_msg)
from test_result_type_attacks import TABLE, compare_raw, exchange, summary


def answer_until_close(port, data):
    """Every byte the server sends after data, up to its close (None if it stays open)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        sock.sendall(data)
        got = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return got
            except socket.timeout:
                return None
            if not chunk:
                return got
            got += chunk
    finally:
        sock.close()


# The length word alone: Postgres judges it before reading the rest (a packet is at least its
# length and a protocol version, at most 10000 bytes after the length word).
LENGTHS = {"0": 0, "3": 3, "4": 4, "7": 7, "10005": 10005, "0x7fffffff": 0x7FFFFFFF}


@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_a_startup_length_out_of_range_is_closed_without_a_word_as_by_postgres(
        pg, start_sluice, length):
    """sluice answered FATAL 08P01 "invalid startup packet: length outside 8..10004 bytes";
    Postgres sends nothing and closes."""
    s = start_sluice({"pool_mode": "transaction"})
    data = struct.pack("!I", LENGTHS[length])
    want = answer_until_close(pg.port, data)
    assert want == b""
    assert answer_until_close(s.port, data) == want
    s.wait_for_log(r"bad_startup: closing without an answer, as Postgres does: invalid length "
                   r"of startup packet \(%d, outside 8\.\.10004 bytes\)" % LENGTHS[length])
    assert s.alive()


def test_an_http_request_instead_of_a_startup_packet_is_closed_without_a_word_as_by_postgres(
        pg, start_sluice):
    """A browser or health checker pointed at the Postgres port: "GET " read as a length."""
    s = start_sluice({"pool_mode": "transaction"})
    data = b"GET / HTTP/1.1\r\nHost: sluice\r\n\r\n"
    want = answer_until_close(pg.port, data)
    assert want == b""
    assert answer_until_close(s.port, data) == want
    s.wait_for_log(r"bad_startup: closing without an answer, as Postgres does: invalid length "
                   r"of startup packet \(%d, outside" % struct.unpack("!I", data[:4])[0])
    assert s.alive()


def first_answer(port, request):
    """The one byte a server answers an encryption request with."""
    c = RawConn(port, timeout=15)
    try:
        c.send(request)
        return c.read_byte()
    except PeerClosed:
        return b"closed"
    finally:
        c.close()


def request_then_login(port, request, password):
    """An encryption request, then, after its 'N', a startup packet: how the login ends."""
    c = RawConn(port, timeout=15)
    try:
        c.send(request)
        try:
            first = c.read_byte()
        except PeerClosed:
            return ("closed",)
        if first != b"N":
            c.buf = first + c.buf
            try:
                e = c.expect_error()
                return ("refused", e.get("S"), e.get("C"), e.get("M"))
            except PeerClosed:
                return ("closed",)
        c.send(startup_packet())
        try:
            c.finish_login(password=password)
        except ServerError as e:
            return ("N", "refused", e.fields.get("C"), e.fields.get("M"))
        return ("N", "logged in")
    finally:
        c.close()


def request(code, extra):
    return struct.pack("!II", 8 + len(extra), code) + extra


@pytest.mark.parametrize("extra", [b"\0" * 4, b"\x01" * 8, b"x"])
def test_an_ssl_request_with_bytes_after_its_code_is_answered_as_by_postgres(
        pg, start_sluice, extra):
    """Postgres answers an SSLRequest longer than 8 bytes as an SSLRequest (here 'N', its TLS
    off) and the login goes on; sluice refused it with FATAL 08P01 "invalid startup packet:
    malformed packet"."""
    s = start_sluice({"pool_mode": "transaction"})
    want = request_then_login(pg.port, request(SSL_REQUEST_CODE, extra), "apppass")
    assert want == ("N", "logged in")
    assert request_then_login(s.port, request(SSL_REQUEST_CODE, extra), None) == want


def test_a_gssenc_request_with_bytes_after_its_code_is_answered_as_one_of_8_bytes(
        pg, start_sluice):
    """Postgres answers a GSSENCRequest by its code alone: a longer one gets the answer an
    8-byte one gets (its own 'G' where built with GSSAPI, sluice's 'N'), and after sluice's 'N'
    the login goes on; sluice refused it with FATAL 08P01 "invalid startup packet: malformed
    packet"."""
    s = start_sluice({"pool_mode": "transaction"})
    longer = request(GSSENC_REQUEST_CODE, b"\0" * 4)
    assert first_answer(pg.port, longer) == first_answer(pg.port, request(GSSENC_REQUEST_CODE, b""))
    assert first_answer(s.port, longer) == b"N"
    assert request_then_login(s.port, longer, None) == ("N", "logged in")


# ---- requests sent ahead of an unknown message type -------------------------------------------

AHEAD = {
    "a query": lambda t: [query_msg(f"INSERT INTO {t} VALUES (5, 9)")],
    "a synced batch": lambda t: [parse_msg("", f"INSERT INTO {t} VALUES (5, 9)"),
                                 bind_msg("", ""), message(b"E", b"\0\0\0\0\0"), sync_msg()],
    "a batch not synced": lambda t: [parse_msg("", f"INSERT INTO {t} VALUES (4, 8)"),
                                     bind_msg("", "")],
    # its INSERT runs, answered, but its implicit transaction is rolled back by the FATAL
    "an execute not synced": lambda t: [parse_msg("", f"INSERT INTO {t} VALUES (6, 1)"),
                                        bind_msg("", ""), message(b"E", b"\0\0\0\0\0")],
}


def answered_before_the_fatal(pg, s, table, send_ahead):
    """What a client that sent requests, then a message of type 'Y', gets up to the close, and
    what the next client then finds: compared with Postgres's. send_ahead(a, table) sends what
    goes in writes of its own and returns what goes in the write of the 'Y', ahead of it."""
    def program(conns, t):
        a, b = conns[0], conns[1]
        a.send(send_ahead(a, t) + message(b"Y", b"abc"))
        out = []
        try:
            while True:
                out.append(summary(*a.read_message()))
        except PeerClosed:
            out.append("closed")
        b.settimeout(10)
        return out + exchange(b, [query_msg(f"SELECT id, v FROM {t} ORDER BY id; "
                                            "SELECT txid_current_if_assigned() IS NULL")], 1)

    seen = compare_raw(pg, s, table, TABLE, program)
    assert ("E", "08P01", "invalid frontend message type 89") in seen, seen
    assert "closed" in seen, seen


@pytest.mark.parametrize("ahead", sorted(AHEAD))
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_requests_sent_ahead_of_an_unknown_type_are_answered_first_as_by_postgres(
        pg, start_sluice, table, mode, ahead):
    """Postgres reads message by message: what came before the unknown type byte runs and is
    answered (an INSERT committed, its CommandComplete and ReadyForQuery; a batch not synced
    gets its ParseComplete and BindComplete, flushed with the FATAL), then FATAL 08P01 "invalid
    frontend message type 89". sluice sent only the FATAL, and the INSERT never ran. The next
    client (default_pool_size 1: the server the first one held is gone, its backend ended by
    the FATAL) finds the row exactly where Postgres kept it (a query's INSERT committed, an
    unsynced Execute's rolled back) and no transaction open."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})
    answered_before_the_fatal(pg, s, table, lambda a, t: b"".join(AHEAD[ahead](t)))


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_query_still_running_when_an_unknown_type_comes_is_answered_first(
        pg, start_sluice, table, mode):
    """The 'Y' comes in a later write, while the query sent before it runs: Postgres reads it
    only once the query is answered (its INSERT committed). sluice refused it as it came, the
    query cancelled with the link's end."""
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1})

    def send_ahead(a, t):
        a.send(query_msg(f"SELECT pg_sleep(1); INSERT INTO {t} VALUES (7, 3)"))
        time.sleep(0.3)  # (if the query has ended by then, both see the same: no flake)
        return b""

    answered_before_the_fatal(pg, s, table, send_ahead)
