"""A client message longer than Postgres reads for its type (postgres.c SocketBackend: 10000 bytes
for Sync, Flush, Close, Describe, Execute, CopyDone, CopyFail; 1 GB - 2 for the others, the
length word counted) is a broken stream: Postgres closes the connection on it. Through sluice the
client is told 08P01 and closed, and the pooled server it would have killed stays in the pool."""

import struct

import pytest

from pgwire import raw_login

CASES = [("S", 10001), ("H", 20000), ("E", 10001), ("Q", 0x3FFFFFFF), ("Q", 0x40000000)]


def _send_header(c, mtype, length):
    c.send(mtype.encode() + struct.pack("!I", length) + b"x" * 64)


@pytest.mark.parametrize("mtype,length", CASES)
def test_a_message_longer_than_postgres_reads_is_refused_and_spares_the_pooled_server(
        pg, start_sluice, mtype, length):
    direct = raw_login(pg.port, password="apppass")
    try:
        _send_header(direct, mtype, length)
        assert direct.is_closed(10), "Postgres closes on it"
    finally:
        direct.close()

    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    c = raw_login(s.port)
    try:
        before = c.query("SELECT pg_backend_pid()")[0][0][0]
        _send_header(c, mtype, length)
        err = c.expect_error(timeout=10)
        assert (err.get("S"), err.get("C")) == ("FATAL", "08P01"), err
        assert c.is_closed(5)
    finally:
        c.close()
    d = raw_login(s.port)
    try:
        assert d.query("SELECT pg_backend_pid()")[0][0][0] == before
    finally:
        d.close()
