"""auth_query with workers = 4: the process's few auth_query connections (secret.h
SECRET_QUERY_CONNECTIONS, every worker's together) serve a crowd of logins spread over the
workers. A worker whose lookups wait for one gets a turn within a short while: a worker holding
one gives it back once it has had its turn (SECRET_QUERY_TURN_MS), and the longest waiter takes
it, rather than the holders keeping theirs until their own queues are done."""
import statistics
import threading
import time

import psycopg
import pytest

from conftest import APP_DB
from multiworker import SLOW, worker_of_id_text
from pgwire import RawConn, startup_packet
from test_auth_query_flood import AUTH_QUERY_SET, AUTH_USER, flood_roles  # noqa: F401

WORKERS = 4
LOOKUP_S = 0.05
CROWD = 80
# Every lookup sleeps LOOKUP_S in Postgres, found or not (the second branch's filter runs once
# per query).
SLOW_QUERY = ("SELECT usename, passwd FROM pg_shadow WHERE usename = $1 "
              f"UNION ALL SELECT NULL, NULL WHERE pg_sleep({LOOKUP_S}) IS NULL")


def crowd_sluice(start_sluice, pg, workers):
    return start_sluice({"auth_type": "scram-sha-256", "auth_user": AUTH_USER,
                         "workers": workers, "admin_users": "admin", "auth_query": SLOW_QUERY,
                         "max_client_conn": 400},
                        auth_file={AUTH_USER: "authpass", "admin": "adminpass"},
                        databases={APP_DB: pg.db_entry()})


def crowd(s, n):
    """n logins of made-up names sent at once: {name: (seconds from its startup packet to its
    answer, its worker)}."""
    names = [f"crowd_{i}" for i in range(n)]
    conns, sent, answers = [], {}, {}
    for name in names:
        c = RawConn(s.port, timeout=60 * SLOW)
        c.send(startup_packet(user=name, database=APP_DB))
        sent[name] = time.monotonic()
        conns.append((name, c))

    def read(name, c):
        mtype, _ = c.read_message()
        answers[name] = (time.monotonic() - sent[name], mtype)

    readers = [threading.Thread(target=read, args=nc) for nc in conns]
    for r in readers:
        r.start()
    for r in readers:
        r.join(60 * SLOW)
    try:
        assert len(answers) == n
        assert all(m == "R" for _, m in answers.values()), answers  # asked for a password
        # still connected, waiting for their passwords: each one's worker from its id
        with psycopg.connect(s.dsn(dbname="sluice", user="admin", password="adminpass"),
                             autocommit=True) as adm:
            cur = adm.execute("SHOW CLIENTS")
            cols = [d.name for d in cur.description]
            where = {r["user"]: worker_of_id_text(r["ptr"])
                     for r in (dict(zip(cols, row)) for row in cur.fetchall())}
    finally:
        for _, c in conns:
            c.close()
    return {name: (answers[name][0], where[name]) for name in names}


def summary(label, answers, n):
    delays = [d for d, _ in answers.values()]
    by_worker = {}
    for d, w in answers.values():
        by_worker.setdefault(w, []).append(d)
    firsts = {w: round(min(ds), 2) for w, ds in sorted(by_worker.items())}
    worsts = {w: round(max(ds), 2) for w, ds in sorted(by_worker.items())}
    drain = n * LOOKUP_S / AUTH_QUERY_SET
    print(f"\n{label}: {n} logins, {AUTH_QUERY_SET} connections x {LOOKUP_S}s lookups = "
          f"{drain:.2f}s of lookups; worst {max(delays):.2f}s, median "
          f"{statistics.median(delays):.2f}s; first answer per worker {firsts}, worst {worsts}")
    return drain, max(delays), firsts


@pytest.mark.timeout(180)
def test_every_workers_logins_get_an_auth_query_connection_in_turn(start_sluice, pg,
                                                                    flood_roles):  # noqa: F811
    """80 logins over 4 workers, 2 connections, 50 ms a lookup: 2 s of lookups in all. Every
    worker's first login is answered within a turn or two of the others', not after the workers
    holding the connections drained their queues (1 s: 2026-12-05, before the turn), and the
    last one no later than the lookups take plus the connections opened for the turns."""
    s = crowd_sluice(start_sluice, pg, WORKERS)
    drain, worst, firsts = summary(f"workers={WORKERS}", crowd(s, CROWD), CROWD)
    assert set(firsts) == set(range(WORKERS)), firsts
    # Load slows every lookup's round alike (the suite beside a pgbench: worst 3.36 s, first
    # answers 0.12-0.30 s), so the first answers may also be measured against the whole crowd's
    # time: before the turn they came at 1.0-1.5 s of 2.1 s, half of it, past both bounds.
    assert max(firsts.values()) < max(drain / 3 * SLOW, worst / 4), (firsts, worst)
    # a bound on what the turns cost (2.3-2.8 s unloaded, 3.36 s under load): a turn that
    # stalled or reconnected for every lookup would take several times the lookups' 2 s
    assert worst < drain * 3 * SLOW, worst
