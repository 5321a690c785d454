"""A login holding a setting Postgres takes only at connection start (PGC_BACKEND, here
ignore_system_indexes, which any role may give at login and none may SET after it) in transaction
and statement mode. sluice gave a login's settings to a shared backend with set_config, which
Postgres refuses for such a setting: the client got FATAL 55P02 where Postgres logs it in. Now
its servers are opened with its startup parameters and serve only clients that sent the same
ones, so the value holds on every transaction, a plain client never gets such a server, and the
pool's caps hold while both kinds storm a small pool. Postgres, reached directly, is the oracle."""

import psycopg
import pytest

from conftest import Background, BackendSampler

OPTIONS = "-c ignore_system_indexes=on"
MODES = ["transaction", "statement"]


def show(conn):
    return conn.execute("SHOW ignore_system_indexes").fetchone()[0]


def oracle(pg, **extra):
    """SHOW ignore_system_indexes on a direct login to Postgres with these options."""
    with psycopg.connect(pg.direct_dsn(**extra), autocommit=True) as c:
        return show(c)


def one_transaction(conn, mode):
    """The setting as one transaction sees it: BEGIN ... COMMIT in transaction mode, a single
    statement (its own transaction) in statement mode, which refuses BEGIN."""
    if mode == "statement":
        return show(conn)
    with conn.transaction():
        conn.execute("SELECT 1")
        return show(conn)


@pytest.mark.parametrize("mode", MODES)
def test_a_setting_only_a_login_gives_logs_in_and_holds_on_every_transaction(pg, start_sluice,
                                                                               mode):
    want = oracle(pg, options=OPTIONS)
    plain_want = oracle(pg)
    assert (want, plain_want) == ("on", "off")
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2})
    with s.connect(options=OPTIONS) as special, s.connect() as plain:
        for _ in range(6):
            assert one_transaction(special, mode) == want
            assert one_transaction(plain, mode) == plain_want
        # a second client with the same options shares the first one's servers' setting
        with s.connect(options=OPTIONS) as again:
            for _ in range(3):
                assert one_transaction(again, mode) == want
                assert one_transaction(plain, mode) == plain_want


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", MODES)
def test_clients_with_and_without_such_a_setting_storming_a_small_pool_stay_within_pool_size(
        pg, start_sluice, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2, "max_db_connections": 2})
    queries = 8

    def work(options):
        want = "on" if options else "off"
        extra = {"options": options} if options else {}
        with s.connect(**extra) as c:
            seen = [one_transaction(c, mode) for _ in range(queries)]
        assert seen == [want] * queries, (options, seen)
        return len(seen)

    with BackendSampler(pg, "app") as sampler:
        jobs = [Background(work, OPTIONS if i % 2 else None) for i in range(20)]
        done = [j.result(150) for j in jobs]
    assert done == [queries] * 20
    assert sampler.samples > 0
    assert sampler.max <= 2, f"saw {sampler.max} backends with pool_size=2: {sampler.history}"
    # the pool still serves both kinds afterwards
    with s.connect(options=OPTIONS) as special, s.connect() as plain:
        assert (show(special), show(plain)) == ("on", "off")
