"""Careless clients on every one of four workers: clients that leave in the middle of a message,
of a transaction, of a query or of a COPY, plain and over TLS (test_drain.py's cases, spread
over the workers). Each worker drains, rolls back or closes its own servers; nothing of the
leavers stays visible, counted or running, and every worker serves the next clients."""

import ssl
import threading
import time

import pytest

from certs import make_pki
from conftest import APP_DB, APP_USER, Background, wait_until
from multiworker import (SLOW, WORKERS, assert_spread, close_all, connect_many, console,
                         create_id_table, named, raw_many, show, start4, wait_pool)
from pgwire import RawConn, copy_data_msg, query_msg, startup_packet

CARELESS = ("midmsg", "midtxn", "midquery", "midcopy", "cutcopy")


def leave_carelessly(kind, c, table, n):
    """Put c in the state its kind names, then go away with a reset."""
    if kind == "midmsg":
        c.send(query_msg(f"INSERT INTO {table} VALUES ({n})")[:9])
    elif kind == "midtxn":
        c.query("BEGIN")
        c.query(f"INSERT INTO {table} VALUES ({n})")
    elif kind == "midquery":
        c.send(query_msg(f"INSERT INTO {table} SELECT {n} FROM pg_sleep(60) /* left */"))
    elif kind in ("midcopy", "cutcopy"):
        c.send(query_msg(f"COPY {table} FROM STDIN"))
        c.read_until({"G"})
        data = copy_data_msg(f"{n}\n{n}\n".encode())
        c.send(data if kind == "midcopy" else data[:7])
    time.sleep(0.05)
    c.close_abruptly(reset=True)


def backends_by_state(pg):
    return sorted((r[1] or "") for r in pg.backends())


@pytest.mark.timeout(180)
def test_clients_leaving_mid_message_transaction_query_and_copy_on_every_worker(
        start_sluice, pg, table):
    create_id_table(pg, table)
    s = start4(start_sluice, pg, default_pool_size=40, query_wait_timeout=30)
    leavers = {}
    for kind in CARELESS:  # in fours, so each worker gets one of each kind
        leavers.update(zip(named(kind, WORKERS), raw_many(s, kind, WORKERS)))
    try:
        assert_spread(s, **dict.fromkeys(CARELESS, WORKERS))
        workers = [threading.Thread(target=leave_carelessly, args=(name[:-1], c, table, n))
                   for n, (name, c) in enumerate(leavers.items())]
        for w in workers:
            w.start()
        for w in workers:
            w.join(20 * SLOW)
        assert not any(w.is_alive() for w in workers)

        with console(s) as adm:
            wait_until(lambda: not [r for r in show(adm, "CLIENTS") if r["database"] == APP_DB],
                       10 * SLOW, what="every careless client gone from SHOW CLIENTS")
            wait_pool(adm, "no client left", 10 * SLOW, cl_active=0, cl_waiting=0, cl_idle=0,
                      sv_active=0)
        # nothing the leavers sent is left running or open in Postgres
        wait_until(lambda: all(st == "idle" for st in backends_by_state(pg)), 10 * SLOW,
                   what=f"every backend idle: {backends_by_state(pg)}")
        assert not pg.query("SELECT pid FROM pg_stat_activity WHERE query LIKE %s"
                            " AND state <> 'idle' AND usename = %s", ["%/* left */%", APP_USER])
        assert pg.query(f"SELECT count(*) FROM {table}", dbname=APP_DB)[0][0] == 0
        # every worker serves the next clients, on a clean server
        after = connect_many(s, "after", 2 * WORKERS)
        try:
            assert_spread(s, after=2 * WORKERS)
            for c in after:
                assert c.execute("SELECT pg_current_xact_id_if_assigned() IS NULL").fetchone()[0]
                c.execute(f"INSERT INTO {table} VALUES (-1)")
            assert pg.query(f"SELECT count(*) FROM {table}", dbname=APP_DB)[0][0] == 2 * WORKERS
        finally:
            close_all(after)
    finally:
        close_all(list(leavers.values()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki-workers"), "workers")


def tls_main(pki):
    return {"client_tls_sslmode": "require", "client_tls_cert_file": str(pki.server_cert),
            "client_tls_key_file": str(pki.server_key)}


def tls_raw(s, pki, application_name):
    """A raw protocol client over TLS (SSLRequest, then the handshake), logged in."""
    c = RawConn(s.port, timeout=10 * SLOW)
    c.send(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest
    assert c.recv_exact(1) == b"S"
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
    c.send(startup_packet(application_name=application_name))
    c.finish_login()
    return c


@pytest.mark.timeout(180)
def test_tls_clients_spread_over_every_worker_and_careless_ones_leave_nothing(
        start_sluice, pg, pki, table):
    create_id_table(pg, table)
    s = start4(start_sluice, pg, default_pool_size=20, **tls_main(pki))
    tls = {"sslmode": "verify-full", "sslrootcert": str(pki.ca), "host": "localhost"}
    good = connect_many(s, "tls", 2 * WORKERS, **tls)
    careless = [tls_raw(s, pki, f"careless{i}") for i in range(WORKERS)]
    try:
        assert_spread(s, tls=2 * WORKERS)
        with console(s) as adm:
            rows = [r for r in show(adm, "CLIENTS") if r["database"] == APP_DB]
            assert len(rows) == 3 * WORKERS and all(r["tls"] for r in rows), rows

        big = "x" * 200_000  # several TLS records each way

        def exchange(c):
            for _ in range(5):
                assert c.execute("SELECT length(%s::text)", [big]).fetchone()[0] == len(big)
                assert len(c.execute("SELECT repeat('y', 300000)").fetchone()[0]) == 300_000
        runs = [Background(exchange, c) for c in good]
        # meanwhile the careless ones leave mid-transaction and mid-message
        for i, c in enumerate(careless):
            c.query("BEGIN")
            c.query(f"INSERT INTO {table} VALUES ({i})")
            c.send(query_msg("SELECT 1")[:3])
            c.close_abruptly(reset=True)
        for r in runs:
            r.result(60 * SLOW)
        for c in good:
            assert c.execute("SELECT 'still here'").fetchone() == ("still here",)
        with console(s) as adm:
            wait_until(lambda: sorted(r["application_name"] for r in show(adm, "CLIENTS")
                                      if r["database"] == APP_DB)
                       == sorted(named("tls", 2 * WORKERS)), 10 * SLOW,
                       what="only the well-behaved TLS clients left")
        wait_until(lambda: all(st == "idle" for st in backends_by_state(pg)), 10 * SLOW,
                   what="every backend idle")
        assert pg.query(f"SELECT count(*) FROM {table}", dbname=APP_DB)[0][0] == 0
    finally:
        close_all(good + careless)
