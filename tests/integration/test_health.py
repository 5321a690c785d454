"""/health answers the operator's question: for each pool and in total, the effective server cap
and the key that sets it, the servers in use as a share of that cap, the server's own
max_connections and reserved slots (read from the server) and sluice's share of them; warnings
that name the key to raise. Readiness (/health, 503 while a pool is down) is split from liveness
(/livez, 200 while sluice serves), and a pool that has never reached its database is "unknown"."""

import time

import psycopg
import pytest

from conftest import Background, pick_port, wait_until
from test_budgets import start_with_budgets  # noqa: F401 - a fixture
from test_http import get, health, hold_transaction, metrics, parse_metrics, pool_of, sample


def start_http(start_sluice, main=None, **kw):
    port = pick_port()
    m = {"http_listen_port": port, "http_listen_addr": "127.0.0.1", "pool_mode": "transaction"}
    m.update(main or {})
    s = start_sluice(m, **kw)
    s.http_port = port
    s.wait_for_log(rf"HTTP .* listening on 127\.0\.0\.1:{port}")
    return s


def server_numbers(pg):
    with pg.superuser() as su:
        max_conn = int(su.execute("SHOW max_connections").fetchone()[0])
        reserved = int(su.execute("SHOW superuser_reserved_connections").fetchone()[0])
    return max_conn, reserved


@pytest.mark.parametrize("workers", [1, 2])
def test_health_reports_the_cap_that_binds_and_the_servers_share_of_max_connections(
        start_sluice, pg, workers):
    """pool_size 10 but max_db_connections 3: 3 transactions use the whole cap. Before, usage_pct
    was servers / pool_size (30) with no warning. With 2 workers the server's sluice_servers
    counted only the answering worker's servers (2 of the 3)."""
    max_conn, reserved = server_numbers(pg)
    s = start_http(start_sluice, {"default_pool_size": 10, "max_db_connections": 3,
                                  "workers": workers})
    holders = [hold_transaction(s, application_name="etl") for _ in range(3)]
    try:
        # other workers' pools are as they published them at their last tick (100 ms)
        status, doc = wait_until(lambda: (lambda r: r if pool_of(r[1])["cap"]["in_use"] == 3
                                          else None)(health(s)), 5, what="3 servers in use")
        assert status == 200 and doc["status"] == "ok", doc
        p = pool_of(doc)
        assert p["status"] == "ok"
        assert p["cap"] == {"servers": 3, "key": "max_db_connections", "in_use": 3,
                            "usage_pct": 100.0}, p
        assert p["usage_pct"] == pytest.approx(100.0)
        srv = p["server"]
        assert srv["max_connections"] == max_conn and srv["reserved_connections"] == reserved
        assert srv["sluice_servers"] == 3
        assert srv["sluice_share_pct"] == pytest.approx(round(300 / max_conn, 1), abs=0.06)
        assert srv["cap_share_pct"] == pytest.approx(round(300 / max_conn, 1), abs=0.06)
        t = doc["total"]
        assert t["cap"]["servers"] == 3 and t["cap"]["in_use"] == 3
        assert t["usage_pct"] == pytest.approx(100.0)
        (up,) = t["upstreams"]
        assert up["max_connections"] == max_conn and up["sluice_servers"] == 3
        (w,) = doc["warnings"]
        assert "uses 3 of 3 servers that max_db_connections allows" in w, w
        assert "raise max_db_connections" in w and '"etl"' in w, w
        assert f"max_connections {max_conn}" in w, w
        samples, _ = parse_metrics(metrics(s))
        lab = {"database": "appdb", "user": "app"}
        assert sample(samples, "sluice_pool_cap", key="max_db_connections", **lab) == 3
        assert sample(samples, "sluice_pool_cap_in_use", **lab) == 3
        assert sample(samples, "sluice_server_max_connections", **lab) == max_conn
        assert sample(samples, "sluice_server_reserved_connections", **lab) == reserved
        assert sample(samples, "sluice_pool_down", **lab) == 0
    finally:
        for c in holders:
            c.close()


def test_a_percent_cap_is_reported_as_resolved_against_the_server(start_sluice, pg):
    max_conn, reserved = server_numbers(pg)
    usable = max_conn - reserved
    percent = max(1, 300 // usable)
    cap = max(1, usable * percent // 100)
    s = start_http(start_sluice, {"default_pool_size": 40, "max_db_connections": f"{percent}%"})
    with s.connect() as c:
        c.execute("SELECT 1")
        _, doc = health(s)
    p = pool_of(doc)
    assert p["cap"]["key"] == "max_db_connections" and p["cap"]["servers"] == cap, p


@pytest.mark.timeout(60)
def test_a_pool_that_never_reached_its_database_is_unknown_then_down_while_livez_stays_200(
        start_sluice, pg):
    dead_port = pick_port()
    s = start_http(start_sluice, {"server_connect_timeout": 2},
                   databases={"appdb": pg.db_entry(port=dead_port)})
    status, doc = health(s)
    assert status == 200 and doc["status"] == "unknown", doc  # no server tried yet: not "ok"
    with pytest.raises(Exception):
        s.connect()
    status, doc = health(s)
    assert status == 503 and doc["status"] == "down", doc
    assert pool_of(doc)["status"] == "down"
    status, headers, body = get(s.http_port, "/livez")
    assert status == 200 and body == b"alive\n", (status, body)
    samples, _ = parse_metrics(metrics(s))
    assert sample(samples, "sluice_pool_down", database="appdb", user="app") == 1


def test_a_pool_is_unknown_until_its_first_server_logs_in(start_sluice, pg):
    s = start_http(start_sluice, {"default_pool_size": 2})
    status, doc = health(s)
    # (the entry forces user=app, so its pool exists from the start, as in PgBouncer)
    assert status == 200 and doc["status"] == "unknown", doc
    assert all(p["status"] == "unknown" for p in doc["pools"]), doc
    with s.connect() as c:
        c.execute("SELECT 1")
    status, doc = wait_until(lambda: (lambda r: r if r[1]["status"] == "ok" else None)(health(s)),
                             5, what="/health ok after the first login")
    assert pool_of(doc)["status"] == "ok" and pool_of(doc)["server"]["max_connections"] > 0
    assert get(s.http_port, "/livez")[0] == 200


def test_a_budget_that_takes_every_client_of_the_pool_sets_its_cap(start_with_budgets):
    port = pick_port()
    s = start_with_budgets({"pool_mode": "transaction", "default_pool_size": 10,
                            "http_listen_port": port, "http_listen_addr": "127.0.0.1"},
                           # (the fallback budget: the [databases] entry forces user=app, so
                           # a user= budget could not claim every client of the pool)
                           {"default": "max_servers=2"})
    s.http_port = port
    s.wait_for_log(rf"HTTP .* listening on 127\.0\.0\.1:{port}")
    holders = [hold_transaction(s, application_name="etl") for _ in range(2)]
    try:
        _, doc = health(s)
        p = pool_of(doc)
        assert p["cap"] == {"servers": 2, "key": "max_servers", "in_use": 2, "usage_pct": 100.0,
                            "budget": "default"}, p
        (w,) = doc["warnings"]
        assert "raise max_servers of [budgets] default (now 2)" in w, w
    finally:
        for c in holders:
            c.close()


def test_a_budget_only_some_clients_fall_into_does_not_set_the_pools_cap(start_with_budgets):
    port = pick_port()
    s = start_with_budgets({"pool_mode": "transaction", "default_pool_size": 10,
                            "http_listen_port": port, "http_listen_addr": "127.0.0.1"},
                           {"studio": "app=prisma-studio* max_servers=1"})
    s.http_port = port
    s.wait_for_log(rf"HTTP .* listening on 127\.0\.0\.1:{port}")
    with s.connect() as c:
        c.execute("SELECT 1")
        _, doc = health(s)
    assert pool_of(doc)["cap"]["key"] == "pool_size" and pool_of(doc)["cap"]["servers"] == 10


@pytest.mark.timeout(60)
def test_health_warns_about_clients_that_waited_even_when_none_waits_now(start_sluice):
    s = start_http(start_sluice, {"default_pool_size": 1, "stats_period": 1})
    hog = hold_transaction(s, application_name="nightly-report")
    waiter = s.connect(application_name="web")
    bg = Background(waiter.execute, "SELECT 'served'")
    try:
        wait_until(lambda: pool_of(health(s)[1])["clients"]["waiting"] == 1, 5,
                   what="the waiter to queue")
        time.sleep(0.3)  # it waits well over 100 ms
        hog.execute("COMMIT")
        assert bg.result(10).fetchone() == ("served",)

        def warned():
            _, doc = health(s)
            ws = [w for w in doc["warnings"] if "waited over 100 ms" in w]
            return ws if ws and pool_of(doc)["clients"]["waiting"] == 0 else None
        (w,) = wait_until(warned, 10, what="a warning about the client that waited")
        assert "database appdb: 1 client waited over 100 ms for a server in the last 1 s" in w, w
        assert "raise default_pool_size" in w, w
    finally:
        hog.close()
        waiter.close()


@pytest.mark.timeout(60)
def test_health_sums_every_workers_top_application_and_cap(start_sluice):
    """workers = 3: a console session first (moved to worker 0, so worker 0 has the most clients),
    then two transactions of "etl" land on workers 1 and 2 (the acceptor picks the least loaded),
    none on the control thread's worker. The pool's cap is the process's (max_db_connections 3,
    in use 2, as with one worker) and its top application holds both servers. Before, in_use
    counted the control worker's lists only (0) and top_application was null (a published
    frame held no names)."""
    s = start_http(start_sluice, {"workers": 3, "default_pool_size": 10, "max_db_connections": 3,
                                  "admin_users": "admin"})
    adm = psycopg.connect(s.dsn(dbname="sluice", user="admin", password=None), autocommit=True,
                          prepare_threshold=None)
    holders = []
    try:
        adm.execute("SHOW VERSION")
        holders = [hold_transaction(s, application_name="etl") for _ in range(2)]

        def both_counted():
            _, doc = health(s)
            p = pool_of(doc)
            return p if p["servers"]["active"] == 2 else None
        p = wait_until(both_counted, 10, what="both workers' frames to count their transaction")
        assert p["top_application"] == {"name": "etl", "servers": 2}, p
        assert p["cap"] == {"servers": 3, "key": "max_db_connections", "in_use": 2,
                            "usage_pct": 66.7}, p
        samples, _ = parse_metrics(metrics(s))
        lab = {"database": "appdb", "user": "app"}
        assert sample(samples, "sluice_pool_cap", key="max_db_connections", **lab) == 3
        assert sample(samples, "sluice_pool_cap_in_use", **lab) == 2
    finally:
        for c in holders:
            c.close()
        adm.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_client_naming_a_database_the_server_lacks_leaves_readiness_alone(start_sluice, pg,
                                                                           workers):
    """With a "*" entry a client's typo in its database name gets the server's FATAL 3D000, as
    from Postgres. It is the client's mistake, not an outage: /health stays 200 and the name is
    not probed. Before, the typo's pool went down: 503 for good, a probe every 3 s for nobody."""
    star = pg.db_entry()
    del star["dbname"]  # the client's own database name goes through
    s = start_http(start_sluice, {"workers": workers},
                   databases={"appdb": pg.db_entry(), "*": star})
    with psycopg.connect(s.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
    wait_until(lambda: health(s)[0] == 200, 5, what="/health 200 once appdb logged in")
    for _ in range(2):  # a second client naming it tries again, as against Postgres
        with pytest.raises(psycopg.OperationalError) as ei:
            psycopg.connect(s.dsn(dbname="apdb_typo"), connect_timeout=10)
        assert 'FATAL:  database "apdb_typo" does not exist' in str(ei.value), ei.value
    # the picture is published every 100 ms per worker: a down pool shows within a second
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        status, doc = health(s)
        assert status == 200 and doc["status"] != "down", doc
        time.sleep(0.1)
    assert "pool apdb_typo/app is down" not in s.log_text(), s.log_tail()
