"""PgBouncer users' expectations of [databases] and [users] entries, checked against a real
Postgres with PgBouncer-style configs (issue 22):

- RELOAD applies a changed connection string: new transactions reach the new target, servers
  made with the old settings close, an unchanged entry keeps its servers.
- A forced user= keys the pool by that user: its pool_size and min_pool_size apply (and
  min_pool_size opens servers at start, before any client).
- Per-user and per-database pool_mode, reserve_pool_size, server_lifetime, query_timeout,
  idle_transaction_timeout and client_idle_timeout, with PgBouncer's precedence: [users] over
  [databases] over the main section.
"""

import re
import signal
import threading
import time

import psycopg
import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, BackendSampler, wait_until

OTHER_DB = "appdb_reload_target"


@pytest.fixture
def other_db(pg):
    """A second database on the same cluster, owned by app."""
    if not pg.query("SELECT 1 FROM pg_database WHERE datname = %s", [OTHER_DB]):
        with pg.superuser() as c:
            c.execute(f"CREATE DATABASE {OTHER_DB} OWNER {APP_USER}")
    return OTHER_DB


def reload_file(s, old, new):
    text = s.ini_path.read_text()
    assert old in text
    s.ini_path.write_text(text.replace(old, new))
    mark = s.mark()
    s.send_signal(signal.SIGHUP)
    s.wait_for_log(r"configuration reloaded", since=mark)


def db_and_pid(conn):
    return conn.execute("SELECT current_database(), pg_backend_pid()").fetchone()


def backend_alive(pg, pid):
    return bool(pg.query("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]))


# ---- item 6: RELOAD applies a changed connection string ----------------------------------------


@pytest.mark.timeout(60)
def test_reload_with_a_new_dbname_sends_new_transactions_to_it(pg, start_sluice, other_db):
    s = start_sluice(main={"pool_mode": "transaction", "default_pool_size": 1},
                     databases={APP_DB: pg.db_entry(), "unchanged": pg.db_entry()})
    with s.connect() as c, s.connect(dbname="unchanged") as u:
        db, old_pid = db_and_pid(c)
        assert db == APP_DB
        _, unchanged_pid = db_and_pid(u)
        reload_file(s, f"{APP_DB} = host=127.0.0.1 port={pg.port} dbname={APP_DB} ",
                    f"{APP_DB} = host=127.0.0.1 port={pg.port} dbname={other_db} ")
        # The same client's next transaction, and a new client's, reach the new database.
        assert db_and_pid(c)[0] == other_db
        with s.connect() as c2:
            assert db_and_pid(c2)[0] == other_db
        # The server made with the old settings is closed, not kept idle.
        wait_until(lambda: not backend_alive(pg, old_pid), timeout=10,
                   what="the old database's server to close")
        # An entry whose settings did not change keeps its server.
        assert db_and_pid(u) == (APP_DB, unchanged_pid)
    assert "connection settings changed by reload" in s.log_text()


@pytest.mark.timeout(60)
def test_reload_retires_a_busy_server_when_it_is_released(pg, start_sluice, other_db):
    s = start_sluice(main={"pool_mode": "session", "default_pool_size": 2},
                     databases={APP_DB: pg.db_entry()})
    with s.connect() as c:
        db, old_pid = db_and_pid(c)
        reload_file(s, f"dbname={APP_DB} ", f"dbname={other_db} ")
        # In session mode the client keeps its server until it leaves.
        assert db_and_pid(c) == (APP_DB, old_pid)
    wait_until(lambda: not backend_alive(pg, old_pid), timeout=10,
               what="the released server of the old settings to close")
    with s.connect() as c:
        assert db_and_pid(c)[0] == other_db


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["entry", "main"])
def test_reload_with_other_tls_settings_retires_servers(pg, start_sluice, where):
    """sslmode= of the entry, or the main section's server_tls_sslmode."""
    main = {"pool_mode": "transaction", "default_pool_size": 1}
    entry = pg.db_entry()
    if where == "entry":
        entry["sslmode"] = "disable"
        old, new = "sslmode=disable", "sslmode=prefer"
    else:
        main["server_tls_sslmode"] = "disable"
        old, new = "server_tls_sslmode = disable", "server_tls_sslmode = prefer"
    s = start_sluice(main=main, databases={APP_DB: entry})
    with s.connect() as c:
        _, old_pid = db_and_pid(c)
        assert db_and_pid(c)[1] == old_pid  # nothing changed: the same server
        reload_file(s, old, new)
        wait_until(lambda: not backend_alive(pg, old_pid), timeout=10,
                   what="the server made with the old sslmode to close")
        assert db_and_pid(c)[1] != old_pid


# ---- item 3: a forced user= keys the pool by that user ------------------------------------------


AUTH = {"alice": "alicepw", "bob": "bobpw"}


@pytest.mark.timeout(60)
def test_forced_user_pool_opens_min_pool_size_before_any_client(pg, start_sluice):
    pg.clear_backends()
    s = start_sluice(main={"pool_mode": "transaction"}, auth_file=AUTH,
                     databases={APP_DB: pg.db_entry(min_pool_size=2)})
    wait_until(lambda: pg.count_backends(APP_USER, APP_DB) >= 2, timeout=15,
               what="min_pool_size servers of the forced user's pool, with no client yet")
    s.stop()
    pg.clear_backends()


@pytest.mark.timeout(90)
def test_forced_user_pool_size_is_the_forced_users_not_the_clients(pg, start_sluice):
    """[users] pool_size of the client's user does not widen a forced user's pool: clients of
    different users share the one pool of (database, forced user), sized by its settings."""
    pg.clear_backends()
    s = start_sluice(main={"pool_mode": "transaction", "default_pool_size": 1,
                           "query_wait_timeout": 60},
                     auth_file=AUTH, databases={APP_DB: pg.db_entry()},
                     users={"alice": {"pool_size": 4}, "bob": {"pool_size": 4}})
    errors = []

    def busy(user):
        try:
            with psycopg.connect(s.dsn(user=user, password=AUTH[user]), autocommit=True) as c:
                for _ in range(3):
                    c.execute("SELECT pg_sleep(0.3)")
        except Exception as e:  # noqa: BLE001 - asserted below
            errors.append(e)

    with BackendSampler(pg, APP_USER, max_seconds=60) as sampler:
        threads = [threading.Thread(target=busy, args=(u,)) for u in ("alice", "alice", "bob",
                                                                      "bob")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(45)
    assert not errors, errors
    assert sampler.samples >= 5
    assert sampler.max == 1, f"{sampler.max} backends for a pool of size 1"


# ---- per-user and per-database overrides -------------------------------------------------------


def plain_entry(pg, **extra):
    """A [databases] entry that lets each client log in as itself (no forced user)."""
    e = {"host": "127.0.0.1", "port": pg.port, "dbname": APP_DB}
    e.update(extra)
    return e


APP_AUTH = {APP_USER: APP_PASSWORD}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("db_value,user_value", [("1", None), ("600", "1")],
                         ids=["database-over-main", "user-over-database"])
def test_query_timeout_per_entry(pg, start_sluice, db_value, user_value):
    users = {APP_USER: {"query_timeout": user_value}} if user_value else None
    s = start_sluice(main={"pool_mode": "transaction", "query_timeout": 0}, auth_file=APP_AUTH,
                     databases={APP_DB: plain_entry(pg, query_timeout=db_value)}, users=users)
    assert "not supported" not in s.log_text()
    with s.connect() as c:
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - t0 < 20
        assert c.execute("SELECT 1").fetchone() == (1,)  # the session stays


@pytest.mark.timeout(60)
def test_user_query_timeout_longer_than_the_databases_wins(pg, start_sluice):
    s = start_sluice(main={"pool_mode": "transaction"}, auth_file=APP_AUTH,
                     databases={APP_DB: plain_entry(pg, query_timeout=1)},
                     users={APP_USER: {"query_timeout": 60}})
    with s.connect() as c:
        assert c.execute("SELECT pg_sleep(2.5), 1").fetchone()[1] == 1


@pytest.mark.timeout(60)
def test_client_idle_timeout_per_user(pg, start_sluice):
    s = start_sluice(main={"pool_mode": "transaction"}, auth_file=APP_AUTH,
                     databases={APP_DB: plain_entry(pg)},
                     users={APP_USER: {"client_idle_timeout": 1}})
    with s.connect() as c:
        c.execute("SELECT 1")
        time.sleep(4)
        with pytest.raises(psycopg.OperationalError):
            c.execute("SELECT 1")
    assert re.search(r"client_idle_timeout", s.log_text())


@pytest.mark.timeout(60)
def test_idle_transaction_timeout_per_database(pg, start_sluice):
    s = start_sluice(main={"pool_mode": "transaction"}, auth_file=APP_AUTH,
                     databases={APP_DB: plain_entry(pg, idle_transaction_timeout=1)})
    with s.connect() as c:
        c.execute("BEGIN")
        c.execute("SELECT 1")
        time.sleep(4)
        with pytest.raises(psycopg.OperationalError):
            c.execute("SELECT 1")


@pytest.mark.timeout(60)
def test_server_lifetime_per_database(pg, start_sluice):
    s = start_sluice(main={"pool_mode": "transaction", "default_pool_size": 1,
                           "admin_users": APP_USER},
                     auth_file=APP_AUTH, databases={APP_DB: plain_entry(pg, server_lifetime=1)})
    with s.connect(dbname="pgbouncer") as adm:
        cur = adm.execute("SHOW DATABASES")
        cols = [d.name for d in cur.description]
        rows = {r[cols.index("name")]: dict(zip(cols, r)) for r in cur.fetchall()}
        assert rows[APP_DB]["server_lifetime"] == 1
    with s.connect() as c:
        _, first = db_and_pid(c)
        time.sleep(3)
        wait_until(lambda: not backend_alive(pg, first), timeout=10,
                   what="the server past its database's server_lifetime to close")
        assert db_and_pid(c)[1] != first


@pytest.mark.timeout(60)
def test_reserve_pool_size_per_user(pg, start_sluice):
    """[users] reserve_pool_size lets the user's pool open extra servers once a client has
    waited reserve_pool_timeout (the database entry and the main section say 0)."""
    pg.clear_backends()
    s = start_sluice(main={"pool_mode": "transaction", "default_pool_size": 1,
                           "reserve_pool_size": 0, "reserve_pool_timeout": 0.2},
                     auth_file=APP_AUTH, databases={APP_DB: plain_entry(pg)},
                     users={APP_USER: {"reserve_pool_size": 1}})
    errors = []

    def sleeper():
        try:
            with s.connect() as c:
                c.execute("SELECT pg_sleep(3)")
        except Exception as e:  # noqa: BLE001 - asserted below
            errors.append(e)

    with BackendSampler(pg, APP_USER, max_seconds=30) as sampler:
        threads = [threading.Thread(target=sleeper) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert not errors, errors
    assert sampler.max == 2, f"{sampler.max} backends: the reserve server did not open"


@pytest.mark.timeout(60)
def test_pgbouncer_per_entry_keys_load_without_warnings(pg, start_sluice):
    s = start_sluice(main={"pool_mode": "transaction"}, auth_file=APP_AUTH,
                     databases={APP_DB: plain_entry(pg, server_lifetime=600, query_timeout=600,
                                                    idle_transaction_timeout=600,
                                                    client_idle_timeout=600)},
                     users={APP_USER: {"pool_mode": "session", "reserve_pool_size": 2,
                                       "server_lifetime": 600, "query_timeout": 600,
                                       "idle_transaction_timeout": 600,
                                       "client_idle_timeout": 600}})
    assert "not supported" not in s.log_text()
    with s.connect() as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
