"""Startup-packet framing, Postgres as the oracle: the same bytes sent to Postgres and to
sluice, what the client gets back compared byte for byte. Postgres closes a connection whose
startup length is out of range without a word (ProcessStartupPacket logs "invalid length of
startup packet" as COMMERROR, never sent)."""

import socket
import struct

import pytest



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
