"""Bounded load through sluice with pgbench: many clients, few backends, no failures."""

import re

import pytest

from conftest import BackendSampler

POOL_SIZE = 5


@pytest.fixture(scope="module")
def pgbench_tables(pg):
    p = pg.pgbench(["-i", "-s", "1", "-q", "--unlogged-tables"], timeout=180)
    assert p.returncode == 0, f"pgbench -i failed:\n{p.stdout}\n{p.stderr}"
    return True


def check_pgbench(p):
    out = p.stdout + p.stderr
    assert p.returncode == 0, f"pgbench exited {p.returncode}:\n{out[-4000:]}"
    m = re.search(r"number of failed transactions: (\d+)", out)
    assert m, f"no failed-transactions line in pgbench output:\n{out[-3000:]}"
    assert int(m.group(1)) == 0, f"pgbench reported failed transactions:\n{out[-3000:]}"
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    assert m and int(m.group(1)) > 0, out[-3000:]
    return int(m.group(1))


def load_sluice(start_sluice, **main):
    conf = {"pool_mode": "transaction", "default_pool_size": POOL_SIZE, "max_client_conn": 260,
            "query_wait_timeout": 60, "log_connections": 0, "log_disconnections": 0}
    conf.update(main)
    return start_sluice(conf)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_200_pgbench_clients_share_5_servers_in_transaction_mode_without_failures(
        start_sluice, pg, pgbench_tables):
    s = load_sluice(start_sluice)
    with BackendSampler(pg, "app") as sampler:
        p = s.pgbench(["-c", "200", "-j", "2", "-T", "10", "-S", "-n"], timeout=90)
    check_pgbench(p)
    assert sampler.samples > 20
    assert sampler.max <= POOL_SIZE, f"saw {sampler.max} backends with pool_size={POOL_SIZE}"
    with s.connect() as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_pgbench_read_write_transactions_through_transaction_pooling_have_no_failures(
        start_sluice, pg, pgbench_tables):
    s = load_sluice(start_sluice)
    with BackendSampler(pg, "app") as sampler:
        p = s.pgbench(["-c", "40", "-j", "2", "-T", "5", "-n"], timeout=60)
    check_pgbench(p)
    assert sampler.max <= POOL_SIZE, f"saw {sampler.max} backends with pool_size={POOL_SIZE}"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_pgbench_extended_protocol_through_transaction_pooling_has_no_failures(
        start_sluice, pg, pgbench_tables):
    s = load_sluice(start_sluice)
    with BackendSampler(pg, "app") as sampler:
        p = s.pgbench(["-c", "50", "-j", "2", "-T", "5", "-S", "-n", "-M", "extended"],
                      timeout=60)
    check_pgbench(p)
    assert sampler.max <= POOL_SIZE


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_pgbench_prepared_statements_through_transaction_pooling_have_no_failures(
        start_sluice, pg, pgbench_tables):
    """DESIGN.md: named prepared statements are re-prepared on the server a client gets."""
    s = load_sluice(start_sluice)
    with BackendSampler(pg, "app") as sampler:
        p = s.pgbench(["-c", "50", "-j", "2", "-T", "5", "-S", "-n", "-M", "prepared"],
                      timeout=60)
    check_pgbench(p)
    assert sampler.max <= POOL_SIZE


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_pgbench_new_connection_per_transaction_storm_is_served(start_sluice, pg,
                                                               pgbench_tables):
    """-C: every transaction logs in anew, so logins and disconnects are the load."""
    s = load_sluice(start_sluice)
    with BackendSampler(pg, "app") as sampler:
        p = s.pgbench(["-c", "20", "-j", "2", "-t", "100", "-S", "-n", "-C"], timeout=60)
    n = check_pgbench(p)
    assert n == 2000
    assert sampler.max <= POOL_SIZE


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_session_mode_pgbench_with_as_many_clients_as_servers(start_sluice, pg, pgbench_tables):
    s = load_sluice(start_sluice, pool_mode="session", default_pool_size=10)
    with BackendSampler(pg, "app") as sampler:
        p = s.pgbench(["-c", "10", "-j", "2", "-T", "4", "-S", "-n", "-M", "prepared"],
                      timeout=60)
    check_pgbench(p)
    assert sampler.max <= 10
