"""Connection budgets and nested caps against a real Postgres: a budget at its cap makes only its
own clients wait, min_servers keeps servers for its budget, max_clients refuses logins, NN% caps
follow the server's max_connections. The storm over several budgets, with one worker and with
four, is test_workers_budgets.py's."""

import threading
import time

import psycopg
import pytest

from conftest import APP_USER, BackendSampler


@pytest.fixture
def start_with_budgets(start_sluice):
    """start(main, budgets) -> Sluice, with a [budgets] section after the generated config."""
    return lambda main, budgets: start_sluice(main, budgets=budgets)


def connect(s, app):
    return psycopg.connect(s.dsn(application_name=app), autocommit=True, prepare_threshold=None)


@pytest.mark.timeout(60)
def test_budget_at_max_servers_makes_only_its_own_clients_wait(start_with_budgets):
    s = start_with_budgets({"pool_mode": "transaction", "default_pool_size": 4,
                            "query_wait_timeout": 1},
                           {"seeds": "app=seed* max_servers=1"})
    with connect(s, "seed-a") as a, connect(s, "seed-b") as b, connect(s, "web") as w:
        a.execute("BEGIN")
        a.execute("SELECT 1")  # seeds now hold their one server
        t0 = time.monotonic()
        for _ in range(5):
            assert w.execute("SELECT 2").fetchone()[0] == 2
        assert time.monotonic() - t0 < 0.5, "another budget's clients must not wait"
        with pytest.raises(psycopg.errors.TooManyConnections) as ei:
            b.execute("SELECT 3")
        assert 'budget "seeds"' in str(ei.value) and "max_servers" in str(ei.value), ei.value
        a.execute("COMMIT")
        # the waiting client got an ERROR, not FATAL: its session goes on
        assert b.execute("SELECT 4").fetchone()[0] == 4


@pytest.mark.timeout(60)
def test_min_servers_keeps_servers_for_its_budget(start_with_budgets):
    s = start_with_budgets({"pool_mode": "transaction", "default_pool_size": 3,
                            "query_wait_timeout": 1},
                           {"api": "app=api* min_servers=2"})
    with connect(s, "batch-1") as d1, connect(s, "batch-2") as d2, connect(s, "api-1") as a1, \
            connect(s, "api-2") as a2:
        d1.execute("BEGIN")
        d1.execute("SELECT 1")  # 1 of 3 used; the other 2 are held for api
        with pytest.raises(psycopg.errors.TooManyConnections) as ei:
            d2.execute("SELECT 2")
        assert "min_servers" in str(ei.value), ei.value
        a1.execute("BEGIN")
        a1.execute("SELECT 1")
        a2.execute("BEGIN")
        assert a2.execute("SELECT 5").fetchone()[0] == 5  # api gets both of its servers
        for c in (d1, a1, a2):
            c.execute("COMMIT")
        assert d2.execute("SELECT 6").fetchone()[0] == 6


@pytest.mark.timeout(60)
def test_budget_max_clients_refuses_the_next_login_with_53300(start_with_budgets):
    s = start_with_budgets({"pool_mode": "transaction"},
                           {"studio": "app=prisma-studio* max_clients=1"})
    with connect(s, "prisma-studio") as first:
        assert first.execute("SELECT 1").fetchone()[0] == 1
        with pytest.raises(psycopg.OperationalError) as ei:
            connect(s, "prisma-studio")
        assert "max_clients" in str(ei.value) and "studio" in str(ei.value), ei.value
        with connect(s, "web") as other:  # other budgets are not affected
            assert other.execute("SELECT 2").fetchone()[0] == 2
    with connect(s, "prisma-studio") as again:  # the slot is free once the first left
        assert again.execute("SELECT 3").fetchone()[0] == 3


@pytest.mark.timeout(90)
def test_percent_cap_follows_the_servers_max_connections(pg, start_with_budgets):
    with pg.superuser() as su:
        max_conn = int(su.execute("SHOW max_connections").fetchone()[0])
        reserved = int(su.execute("SHOW superuser_reserved_connections").fetchone()[0])
    usable = max_conn - reserved
    percent = max(1, 300 // usable)  # a share that comes to a small number of servers
    cap = max(1, usable * percent // 100)
    s = start_with_budgets({"pool_mode": "transaction", "default_pool_size": 20,
                            "max_db_connections": f"{percent}%", "query_wait_timeout": 20}, {})
    errors = []

    def worker(i):
        try:
            with connect(s, f"w{i}") as c:
                for _ in range(3):
                    c.execute("SELECT pg_sleep(0.1)")
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    with BackendSampler(pg, APP_USER) as sampler:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]
    assert sampler.samples > 5
    assert 1 <= sampler.max <= cap, f"{sampler.max} backends seen, cap {percent}% of {usable} = {cap}"
    assert any(f"allows {usable} connections" in line for line in s.log), \
        "sluice should log what it read from the server"


@pytest.mark.timeout(120)
def test_budget_max_servers_holds_at_start_up_while_servers_are_still_connecting(start_with_budgets):
    """12 seed clients log in at once to a fresh sluice, before any server is up, and loop a
    query that counts, in Postgres, how many seed queries run with it. Repeated on 3 fresh
    instances: the first logins of a pool are the path that once let 3-5 run under max_servers=2."""
    probe = ("SELECT (SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
             " AND query LIKE '%%seedprobe%%') AS running, pg_sleep(0.2) /* seedprobe */")
    most, errors = [], []
    for round_ in range(3):
        s = start_with_budgets({"pool_mode": "transaction", "default_pool_size": 12,
                                "query_wait_timeout": 30},
                               {"seeds": "app=seed* max_servers=2"})
        barrier = threading.Barrier(12)

        def worker(i):
            try:
                barrier.wait(10)
                with connect(s, f"seed-{round_}-{i}") as c:
                    for _ in range(3):
                        most.append(c.execute(probe).fetchone()[0])
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        s.stop()
    assert not errors, errors[:3]
    assert len(most) == 3 * 12 * 3
    assert max(most) <= 2, f"up to {max(most)} seed queries ran at once under max_servers=2"


@pytest.mark.timeout(60)
def test_min_servers_counts_max_db_connections_and_the_error_names_it(start_with_budgets):
    """min_servers holds servers back out of what max_db_connections allows (3 here), not out of
    the pool sizes (10): with 1 in use and 2 held for api, another batch client waits and is told
    that max_db_connections is what binds."""
    s = start_with_budgets({"pool_mode": "transaction", "default_pool_size": 10,
                            "max_db_connections": 3, "query_wait_timeout": 1},
                           {"api": "app=api* min_servers=2"})
    with connect(s, "batch-1") as d1, connect(s, "batch-2") as d2, connect(s, "api-1") as a1, \
            connect(s, "api-2") as a2:
        d1.execute("BEGIN")
        d1.execute("SELECT 1")
        with pytest.raises(psycopg.errors.TooManyConnections) as ei:
            d2.execute("SELECT 2")
        msg = str(ei.value)
        assert "min_servers" in msg and "max_db_connections" in msg, msg
        assert "max_server_connections" not in msg, msg
        for a in (a1, a2):
            a.execute("BEGIN")
            assert a.execute("SELECT 5").fetchone()[0] == 5  # api gets both of its servers
        for c in (d1, a1, a2):
            c.execute("COMMIT")


@pytest.mark.timeout(60)
def test_start_up_log_states_each_pools_resulting_cap(pg, start_with_budgets):
    with pg.superuser() as su:
        max_conn = int(su.execute("SHOW max_connections").fetchone()[0])
        reserved = int(su.execute("SHOW superuser_reserved_connections").fetchone()[0])
    usable = max_conn - reserved
    cap = usable * 10 // 100
    s = start_with_budgets({"pool_mode": "transaction", "default_pool_size": 20,
                            "max_db_connections": "10%"}, {})
    with connect(s, "x") as c:
        c.execute("SELECT 1")
    s.wait_for_log(rf"appdb/app: at most {cap} servers \(max_db_connections = 10% of {usable} "
                   rf"usable = {cap}\)")
