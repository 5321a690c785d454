"""auth_query under a flood of strangers: the lookups run on a small set of connections that count
against the caps, queue for them, and unknown names are remembered as unknown for a while, so
300 made-up user names cost Postgres at most that set (issue 18 item 4)."""
import os
import re
import signal
import socket
import threading
import time
from collections import Counter

import psycopg
import pytest

from conftest import APP_DB, APP_USER, BackendSampler, wait_until
from pgwire import RawConn, startup_packet

AUTH_USER = "flood_auth"
REAL_USER = "flood_real"
REAL_PASSWORD = "realpass"
CAP = 5
# secret.h SECRET_QUERY_CONNECTIONS: the most connections auth_query ever holds, every
# worker's together
AUTH_QUERY_SET = 2


@pytest.fixture(scope="module")
def flood_roles(pg):
    with pg.superuser() as c:
        c.execute(f"CREATE ROLE {AUTH_USER} LOGIN SUPERUSER PASSWORD 'authpass'")
        c.execute("SET password_encryption = 'scram-sha-256'")
        c.execute(f"CREATE ROLE {REAL_USER} LOGIN PASSWORD '{REAL_PASSWORD}'")
    yield
    with pg.superuser() as c:
        for r in (AUTH_USER, REAL_USER):
            c.execute(f"DROP ROLE IF EXISTS {r}")


def flood_sluice(start_sluice, pg, **main):
    m = {"auth_type": "scram-sha-256", "auth_user": AUTH_USER, "log_level": "debug",
         "max_client_conn": 400, "max_db_connections": CAP, "max_server_connections": CAP}
    m.update(main)
    return start_sluice(m, auth_file={AUTH_USER: "authpass"},
                        databases={APP_DB: pg.db_entry()})


def send_strangers(port, names):
    """One startup packet per name, no password; the sockets stay open."""
    conns = []
    for name in names:
        c = RawConn(port, timeout=30)
        c.send(startup_packet(user=name, database=APP_DB))
        conns.append(c)
    return conns


def answered(conns, timeout):
    """Each stranger gets its authentication request (or an error) once its lookup is done."""
    deadline = time.monotonic() + timeout
    for c in conns:
        c.settimeout(max(0.1, deadline - time.monotonic()))
        mtype, _ = c.read_message()
        assert mtype in ("R", "E"), mtype
        c.close()


def real_logins(s, n, errors):
    for _ in range(n):
        try:
            with s.connect(user=REAL_USER, password=REAL_PASSWORD) as c:
                assert c.execute("SELECT current_user").fetchone()[0] == APP_USER
        except Exception as e:  # noqa: BLE001 - checked by the test
            errors.append(e)


def lookups_of(s, names):
    pat = re.compile(r'auth_query: looking up user "([^"]+)"')
    wanted = set(names)
    return [m.group(1) for line in s.log if (m := pat.search(line)) and m.group(1) in wanted]


def test_a_flood_of_made_up_users_never_passes_the_caps(start_sluice, pg, flood_roles):
    s = flood_sluice(start_sluice, pg)
    names = [f"stranger_{i}" for i in range(300)]
    errors = []
    with BackendSampler(pg, [APP_USER, AUTH_USER], datname=APP_DB) as all_sluice, \
            BackendSampler(pg, AUTH_USER) as auth_only:
        real = threading.Thread(target=real_logins, args=(s, 5, errors))
        real.start()
        conns = send_strangers(s.port, names)
        answered(conns, timeout=40)
        real.join(40)
        time.sleep(0.2)  # one more sample after the last lookup
    assert not real.is_alive()
    assert not errors, errors
    assert all_sluice.samples > 0 and auth_only.samples > 0
    assert all_sluice.max <= CAP, f"sluice held {all_sluice.max} backends (cap {CAP})"
    assert auth_only.max <= AUTH_QUERY_SET, \
        f"auth_query held {auth_only.max} connections at once (set of {AUTH_QUERY_SET})"
    # each name was looked up once, and the unknown ones are remembered as unknown for a while:
    # asking again costs Postgres nothing. The cache is each worker's own (architecture.md
    # 5.11): with workers a name asked again on another worker is asked once more there, so
    # it is looked up at most once per worker.
    assert sorted(lookups_of(s, names)) == sorted(names)
    again = names[-20:]
    answered(send_strangers(s.port, again), timeout=20)
    time.sleep(0.2)
    times = Counter(lookups_of(s, again))
    assert set(times) == set(again)
    assert max(times.values()) <= s.workers, f"unknown names were looked up again: {times}"


def test_auth_query_waits_for_room_under_a_full_cap(start_sluice, pg, flood_roles):
    """The caps are full of idle servers: the lookup takes one's place instead of passing the
    cap, and the real user still gets in. The lookup is slowed down so that the sampler sees
    it."""
    s = flood_sluice(start_sluice, pg, auth_query="SELECT usename, passwd FROM pg_shadow, "
                                                   "pg_sleep(0.5) WHERE usename = $1")
    held = [s.connect() for _ in range(CAP)]
    for c in held:
        c.execute("SELECT 1")
    for c in held:
        c.close()  # session mode: the servers go idle; the cap stays full
    wait_until(lambda: pg.count_backends(APP_USER, APP_DB) == CAP, 10, what="5 idle servers")
    with BackendSampler(pg, [APP_USER, AUTH_USER], datname=APP_DB) as sampler:
        errors = []
        real_logins(s, 2, errors)
        assert not errors, errors
        time.sleep(0.2)
    assert sampler.max <= CAP, f"sluice held {sampler.max} backends (cap {CAP})"


def test_a_lookup_on_another_worker_gets_a_connection_given_back(start_sluice, pg, flood_roles):
    """workers = 2: worker 1 holds both of auth_query's connections with a queue of slow lookups
    (names slow_*, 0.5 s each) when a real user's login on worker 0 needs one. Worker 1 gives
    one back when a lookup ends and wakes worker 0 (not on either worker's tick, and not only
    once its whole queue is done): the login gets in while worker 1's last lookups still wait."""
    slow = ("SELECT usename, passwd FROM pg_shadow, "
            "pg_sleep(CASE WHEN $1::text LIKE 'slow%' THEN 0.5 ELSE 0 END) WHERE usename = $1")
    names = [f"slow_{i}" for i in range(6)]
    with pg.superuser() as c:  # found: the sleep runs for a row of pg_shadow
        for n in names:
            c.execute(f"CREATE ROLE {n} LOGIN PASSWORD 'x'")
    try:
        login_during_a_queue_elsewhere(start_sluice, pg, slow, names)
    finally:
        with pg.superuser() as c:
            for n in names:
                c.execute(f"DROP ROLE IF EXISTS {n}")


def login_during_a_queue_elsewhere(start_sluice, pg, slow, names):
    s = start_sluice({"auth_type": "scram-sha-256", "auth_user": AUTH_USER, "log_level": "debug",
                      "workers": 2, "admin_users": "admin", "auth_query": slow},
                     auth_file={AUTH_USER: "authpass", "admin": "adminpass"},
                     databases={APP_DB: pg.db_entry()})
    # console logins run on worker 0 (architecture.md 5.6): while they are open, new clients
    # go to worker 1, the one with fewer clients
    consoles = [psycopg.connect(s.dsn(dbname="sluice", user="admin", password="adminpass"),
                                autocommit=True) for _ in range(10)]
    strangers = send_strangers(s.port, names)
    answer_times = []

    def read_answers():
        for c in strangers:
            c.settimeout(30)
            mtype, _ = c.read_message()
            answer_times.append((time.monotonic(), mtype))
            c.close()

    reader = threading.Thread(target=read_answers)
    reader.start()
    time.sleep(0.2)  # worker 1's first two lookups are running
    for c in consoles:
        c.close()
    wait_until(lambda: len(lookups_of(s, names)) >= 2, 10,
               what="worker 1's first lookups")
    time.sleep(0.2)  # the consoles' clients are gone from worker 0
    errors = []
    real_logins(s, 1, errors)
    logged_in = time.monotonic()
    reader.join(40)
    assert not reader.is_alive()
    assert not errors, errors
    assert all(m in ("R", "E") for _, m in answer_times), answer_times
    done = sorted(t for t, _ in answer_times)
    assert logged_in < done[-2], \
        f"the login waited for worker 1's queue: in at {logged_in - done[0]:+.2f}s after the " \
        f"first lookup's answer, the last two at {done[-2] - done[0]:+.2f}s and {done[-1] - done[0]:+.2f}s"


def test_a_closed_lookup_connection_keeps_its_slot_until_its_backend_has_gone(
        start_sluice, pg, flood_roles):
    """sluice closes an auth_query connection (here at a reload) with a Terminate, and the
    backend stays in pg_stat_activity, counted by Postgres, until it has exited. Its slot was
    given back at once: the next lookups opened connections beside backends still there (3
    auth_query backends from a set of 2, seen on a loaded machine). Stopped backends hold that
    window open: while they are there, no further lookup connection opens; once they go, the
    lookups run."""
    s = flood_sluice(start_sluice, pg)
    answered(send_strangers(s.port, [f"before_{i}" for i in range(20)]), timeout=20)
    pids = [r[0] for r in pg.query("SELECT pid FROM pg_stat_activity WHERE usename = %s",
                                   (AUTH_USER,))]
    assert pids, "no auth_query connection to close"
    mark = s.mark()
    stopped = []
    strangers = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        with BackendSampler(pg, AUTH_USER) as auth_only:
            s.send_signal(signal.SIGHUP)
            s.wait_for_log(r"auth_query: closing the connection .*reloaded", since=mark,
                           timeout=10)
            strangers = send_strangers(s.port, [f"after_{i}" for i in range(20)])
            time.sleep(0.5)  # well inside the 2 s a closed connection's backend is waited for
        assert auth_only.samples > 0
        assert auth_only.max <= AUTH_QUERY_SET, \
            f"auth_query held {auth_only.max} connections at once (set of {AUTH_QUERY_SET})"
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    answered(strangers, timeout=20)
    assert sorted(lookups_of(s, [f"after_{i}" for i in range(20)])) == \
        sorted(f"after_{i}" for i in range(20))


# 1 s for every name, known or not (pg_sleep in a join with pg_shadow runs only when a row is
# found)
SLOW_FOR_EVERY_NAME = ("SELECT u.usename, u.passwd FROM (SELECT pg_sleep(1)) AS s "
                       "LEFT JOIN pg_shadow AS u ON u.usename = $1")


def stranger_from(host, port):
    """A RawConn to sluice from source address host (another loopback address: another peer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(host, 0))
    c = RawConn.__new__(RawConn)
    c._adopt(sock, 60)
    return c


def test_strangers_from_one_address_do_not_hold_the_lookups_of_others(start_sluice, pg,
                                                                       flood_roles):
    """A stranger at 127.0.0.2 opens max_client_logins logins, each for a name of its own, while
    auth_query is slow (1 s a lookup, 2 connections): 30 lookups queued, 15 s of them. A real
    user's login from 127.0.0.1 is looked up before that stranger's queue, not after it: in a
    few seconds, not when the queue has drained (before, its lookup waited behind all 30 and
    the login ran past its 10 s). The strangers held back give their places up to it."""
    s = flood_sluice(start_sluice, pg, workers=1, max_client_logins=30,
                     auth_query=SLOW_FOR_EVERY_NAME)
    strangers = []
    for i in range(30):
        c = stranger_from("127.0.0.2", s.port)
        c.send(startup_packet(user=f"queued_{i}", database=APP_DB))
        strangers.append(c)
    wait_until(lambda: len(lookups_of(s, [f"queued_{i}" for i in range(30)])) == 30, 20,
               what="the 30 strangers' lookups queued")
    started = time.monotonic()
    with s.connect(user=REAL_USER, password=REAL_PASSWORD, connect_timeout=10) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == APP_USER
    took = time.monotonic() - started
    assert took < 8, f"the real login took {took:.1f} s behind the strangers' lookups"
    assert any("max_client_logins (30) reached" in line for line in s.log), s.log_tail(40)
    for c in strangers:
        c.close()



def test_a_lookup_held_back_is_not_starved_once_its_address_is_within_its_share(
        start_sluice, pg, flood_roles):
    """127.0.0.2 asks for 5 made-up names at once while auth_query is slow (1 s a lookup, 2
    connections): 2 start, 2 wait (its share) and the 5th is held back. Meanwhile other
    addresses keep asking, one new name every 0.4 s (faster than the lookups drain). Once its
    first waiting 2 have started, 127.0.0.2 has only the 5th waiting, within its share: it
    joins the queue then and gets its turn. Before, a lookup held back stayed so for ever: it
    started only once no other address had a lookup waiting, here not until they stopped."""
    s = flood_sluice(start_sluice, pg, workers=1, max_client_logins=80,
                     client_login_timeout=120, auth_query=SLOW_FOR_EVERY_NAME)
    own = [f"burst_{i}" for i in range(5)]
    conns = []
    for name in own:
        c = stranger_from("127.0.0.2", s.port)
        c.send(startup_packet(user=name, database=APP_DB))
        conns.append(c)
        wait_until(lambda: name in lookups_of(s, own), 20, what=f"the lookup of {name}")
    assert any('"burst_4"' in line and "(held back" in line for line in s.log), s.log_tail(20)
    held = conns[4]
    answer = []

    def read_held():
        held.settimeout(90)
        answer.append(held.read_message()[0])
        answer.append(time.monotonic())

    reader = threading.Thread(target=read_held)
    reader.start()
    started = time.monotonic()
    feeding_for = 20
    n = 0
    while time.monotonic() - started < feeding_for and not answer:
        # a fresh address each time: every one of these is within its share
        c = stranger_from(f"127.0.{1 + n // 200}.{3 + n % 200}", s.port)
        c.send(startup_packet(user=f"steady_{n}", database=APP_DB))
        conns.append(c)
        n += 1
        time.sleep(0.4)
    reader.join(100)
    assert answer and answer[0] in ("R", "E"), answer
    took = answer[1] - started
    # its turn comes after the lookups queued before its address's first 4 started (a few
    # seconds); before, not until the others stopped coming (20 s and their queue after)
    assert took < feeding_for - 5, \
        f"the held-back lookup waited {took:.1f} s while other addresses kept asking"
    for c in conns:
        c.close()
