"""An operator's console commands against clients of several workers (workers = 4, more threads
than this machine's cores): what the console answers is what happened, whichever worker owns the
client, and the same as for a client of worker 0 (the console's own) and as in PgBouncer."""

import psycopg
import pytest

from conftest import APP_DB, wait_until
from multiworker import SLOW, WORKERS, close_all, console, raw_many, show, start4, worker_of


def app_clients(adm):
    return [r for r in show(adm, "CLIENTS") if r["database"] == APP_DB]


def kill_client(adm, ident):
    """KILL_CLIENT's answer: its tag, or the SQLSTATE of its error."""
    try:
        return adm.execute(f"KILL_CLIENT {ident}").statusmessage
    except psycopg.Error as e:
        return e.sqlstate


@pytest.mark.timeout(120)
def test_kill_client_of_an_id_that_names_no_client_is_refused_on_every_worker(start_sluice, pg):
    """KILL_CLIENT answers 42704 "no client with id" (PgBouncer: "client not found") for an id
    that names no client, whichever worker's id it is: a client that has left, one killed a
    moment ago, a number never handed out. Before, only worker 0's ids were checked: another
    worker's were answered KILL_CLIENT at once, so an operator (or a script) killing a client
    that had just left, or a mistyped id, was told it had been killed. A live client of any
    worker is killed, and its KILL_CLIENT answers only once it is gone: the same id again is no
    client."""
    s = start4(start_sluice, pg)
    left = raw_many(s, "left", WORKERS)
    live = raw_many(s, "live", WORKERS)
    try:
        for c in left + live:
            c.query("SELECT 1")
        with console(s) as adm:
            ids = {r["application_name"]: r["id"] for r in app_clients(adm)}
            assert {worker_of({"id": ids[f"left{i}"]}) for i in range(WORKERS)} == \
                set(range(WORKERS))
            assert {worker_of({"id": ids[f"live{i}"]}) for i in range(WORKERS)} == \
                set(range(WORKERS))
            close_all(left)
            wait_until(lambda: not any(r["application_name"].startswith("left")
                                       for r in app_clients(adm)), 10 * SLOW,
                       what="the clients that left gone from SHOW CLIENTS")
            answers = {f"left{i}": kill_client(adm, ids[f"left{i}"]) for i in range(WORKERS)}
            # numbers never handed out, on each worker (ids count up from index << 56)
            answers.update({f"never{w}": kill_client(adm, (w << 56) + 10**9)
                            for w in range(WORKERS)})
            assert answers == dict.fromkeys(answers, "42704"), answers

            for i, c in enumerate(live):
                assert kill_client(adm, ids[f"live{i}"]) == "KILL_CLIENT"
                assert kill_client(adm, ids[f"live{i}"]) == "42704", \
                    f"live{i} was still there after its KILL_CLIENT was answered"
                err = c.expect_error(timeout=10 * SLOW)
                assert err["C"] == "57P01", err
            assert not app_clients(adm)
    finally:
        close_all(left + live)
