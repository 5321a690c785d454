"""A client that pipelines its whole life into one write: StartupMessage, a request and
Terminate, before it has seen AuthenticationOk (possible where no password is asked: trust), then
goes. Postgres reads the startup packet, logs in, then reads and runs the request before it reads
the Terminate; what the client did with its socket afterwards (closed it, reset it, shut its write
side) does not undo what the kernel already received. Through sluice the same must hold, whether
the pool already has an idle server or this client's login is the pool's first (sluice connects
upstream while the client's bytes wait), with Postgres over its trust unix socket as the oracle.

A client that closes or resets its socket instead of reading gets no such promise from Postgres:
its backend's first writes (the welcome) fail once the client's kernel answers with a reset, and
whether it has read and run the request by then is a race. Through sluice the request may run or
not, once at most, and the pool must serve the next client at once within its cap.
"""

import os
import socket
import struct
import time

import pytest

from conftest import APP_USER, BackendSampler, wait_until
from pgwire import (RawConn, bind_msg, execute_msg, parse_msg, query_msg,
                    startup_packet, sync_msg, terminate_msg)
from test_leaving_client_oracle import answers, rows
from test_terminate import make_table

CALL_TIMEOUT = 10.0


def whole_life(i, table, request_kind, startup_params):
    sql = f"INSERT INTO {table} SELECT {i} FROM pg_sleep(0.05)"
    if request_kind == "query":
        request = query_msg(sql)
    else:
        request = parse_msg("", sql) + bind_msg("", "") + execute_msg() + sync_msg()
    return (startup_packet(user=APP_USER, database="appdb", **startup_params) + request +
            terminate_msg())


def connect(target, pg, s):
    if target == "postgres":
        return RawConn.over_unix_socket(os.path.join(pg.sockdir, f".s.PGSQL.{pg.port}"),
                                        timeout=CALL_TIMEOUT)
    return RawConn(s.port, timeout=CALL_TIMEOUT)


def end(conn, ending):
    if ending == "half_close":
        conn.sock.shutdown(socket.SHUT_WR)
    elif ending == "reset":
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if ending in ("read", "half_close"):
        return [m if m == "EOF" else m[0] for m in answers(conn)]
    conn.close()
    return None


def serves_the_next_client(s):
    c = RawConn(s.port, timeout=CALL_TIMEOUT)
    try:
        c.startup(user=APP_USER)
        assert c.query("SELECT 1")[0] == [["1"]]
    finally:
        c.close()


def make_pool(pg, s, pool):
    if pool == "idle_server":
        serves_the_next_client(s)
        wait_until(lambda: pg.count_backends(APP_USER) == 1, 15, what="one pooled server")


# startup parameters the first server must be given with SET before the welcome (LOGIN_SYNC)
STARTUP_PARAMS = {"none": {}, "set_at_login": {"DateStyle": "SQL, DMY", "lock_timeout": "3s"}}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("request_kind", ["query", "extended"])
@pytest.mark.parametrize("pool", ["first_login", "idle_server"])
@pytest.mark.parametrize("startup", sorted(STARTUP_PARAMS))
@pytest.mark.parametrize("ending", ["read", "half_close"])
def test_startup_request_and_terminate_in_one_write_run_like_postgres(
        start_sluice, pg, table, mode, request_kind, pool, startup, ending):
    make_table(pg, table)
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1,
                      "server_lifetime": 3600, "server_idle_timeout": 3600})
    make_pool(pg, s, pool)
    seen = {}
    for i, target in enumerate(("postgres", "sluice")):
        wait_until(lambda: pg.count_backends(APP_USER) <= (pool == "idle_server"), 15,
                   what="the direct backend gone")
        with BackendSampler(pg) as smp:
            c = connect(target, pg, s)
            c.send(whole_life(i, table, request_kind, STARTUP_PARAMS[startup]))
            seen[target] = end(c, ending)
            c.close()
            wait_until(lambda: len(rows(pg, table)) == i + 1, 15,
                       what=f"the INSERT committed ({target}, {ending})")
        if target == "sluice":
            assert smp.error is None and smp.max <= 1, f"{smp.max} backends at once, cap 1"
    assert rows(pg, table) == [0, 1]

    # Postgres's welcome (R, S..., K, Z) and the answer: the types, since the ParameterStatus
    # set and the key differ by design (docs/compatibility.md)
    def shape(msgs):
        return [m for m in msgs if m not in ("S", "N")]
    assert shape(seen["sluice"]) == shape(seen["postgres"])
    assert shape(seen["postgres"])[-3:] == ["C", "Z", "EOF"]
    serves_the_next_client(s)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("pool", ["first_login", "idle_server"])
@pytest.mark.parametrize("startup", sorted(STARTUP_PARAMS))
@pytest.mark.parametrize("ending", ["close", "reset"])
def test_startup_request_and_terminate_then_gone_run_at_most_once_and_free_the_server(
        start_sluice, pg, table, mode, pool, startup, ending):
    make_table(pg, table)
    s = start_sluice({"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1,
                      "server_lifetime": 3600, "server_idle_timeout": 3600})
    make_pool(pg, s, pool)
    with BackendSampler(pg) as smp:
        c = connect("sluice", pg, s)
        c.send(whole_life(7, table, "query", STARTUP_PARAMS[startup]))
        end(c, ending)
        wait_until(lambda: pg.count_backends(APP_USER) <= 1 and
                   all(r[1] == "idle" for r in pg.backends(APP_USER)), 15,
                   what="the pool's one server idle")
        time.sleep(0.3)  # a request still on its way would show now
        assert rows(pg, table) in ([], [7])
        serves_the_next_client(s)
    assert smp.error is None and smp.max <= 1, f"{smp.max} backends at once, cap 1"
