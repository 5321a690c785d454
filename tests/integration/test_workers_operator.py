"""An operator's console commands against clients of several workers (workers = 4, more threads
than this machine's cores): what the console answers is what happened, whichever worker owns the
client, and the same as for a client of worker 0 (the console's own) and as in PgBouncer."""

import signal

import psycopg
import pytest

from conftest import APP_DB, Background, wait_until
from multiworker import (SLOW, WORKERS, app_backend_pids, app_clients, assert_spread, close_all,
                         console, create_id_table, pool_row, raw_many, start4,
                         two_groups_on_every_worker, wait_pool)
from pgwire import ServerError, copy_data_msg, copy_done_msg, query_msg, raw_login


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
    with two_groups_on_every_worker(s, "left", "live") as (left, live, adm, ids):
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


@pytest.mark.timeout(120)
def test_a_console_that_leaves_while_its_kill_client_waits_for_the_owner_leaves_nothing(
        start_sluice, pg):
    """KILL_CLIENT of another worker's id waits for its owner's answer: a console that hangs up
    (with or without a reset, a query pipelined behind) meanwhile takes its wait with it, the
    answer arriving later finds nobody (ASan's leak check and TSan see it), and a client whose
    KILL_CLIENT was sent by a console that left is still killed."""
    s = start4(start_sluice, pg)
    clients = raw_many(s, "c", 2 * WORKERS)
    try:
        with console(s) as adm:
            ids = {r["application_name"]: r["id"] for r in app_clients(adm)}
            doomed = [ids[f"c{i}"] for i in range(WORKERS)]
            assert {i >> 56 for i in doomed} == set(range(WORKERS))
            for k in range(100):
                hasty = raw_login(s.port, user="admin", database="sluice", timeout=10 * SLOW)
                hasty.send(query_msg(f"KILL_CLIENT {(1 + k % (WORKERS - 1) << 56) + 10**9 + k}")
                           + query_msg("SHOW VERSION"))
                hasty.close_abruptly(reset=k % 2 == 0)
            for ident in doomed:
                hasty = raw_login(s.port, user="admin", database="sluice", timeout=10 * SLOW)
                hasty.send(query_msg(f"KILL_CLIENT {ident}"))
                hasty.close_abruptly()
            wait_until(lambda: sorted(r["id"] for r in app_clients(adm))
                       == sorted(set(ids.values()) - set(doomed)), 10 * SLOW,
                       what="the clients killed by consoles that left gone, the others there")
            assert kill_client(adm, 10**9) == "42704"
    finally:
        close_all(clients)


# ---- console commands and SIGINT while clients of every worker copy, hold and wait -----------

def begin_copy(c, table, n):
    c.send(query_msg(f"COPY {table} FROM STDIN"))
    c.read_until({"G"})
    c.send(copy_data_msg(f"{n}\n".encode()))


def end_copy(c, n):
    c.send(copy_data_msg(f"{n}\n".encode()) + copy_done_msg())
    return c.read_results()[1]


def table_ids(pg, table):
    return sorted(r[0] for r in pg.query(f"SELECT id FROM {table}", dbname=APP_DB))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("action", ["RECONNECT", "DISABLE", "PAUSE", "KILL", "SIGINT"])
def test_operator_commands_while_clients_copy_hold_transactions_and_wait_on_every_worker(
        start_sluice, pg, table, action):
    """Two clients in the middle of COPY FROM STDIN, one in a transaction and four waiting for
    the pool's three servers, four idle, over four workers; then the command. What each client
    sees is PgBouncer's meaning and what is committed is what the clients were told:
    RECONNECT and DISABLE change nothing for open sessions (the servers of RECONNECT are
    replaced once released); PAUSE waits for the COPYs and the transaction, keeps the waiters
    waiting until RESUME; KILL ends every client with FATAL 57P01 and commits nothing of theirs;
    SIGINT lets the COPYs and the transaction commit, answers the waiters and the idle clients
    57P01 and exits 0."""
    create_id_table(pg, table)
    s = start4(start_sluice, pg, default_pool_size=3, query_wait_timeout=60,
               shutdown_timeout=60)
    copiers = raw_many(s, "copy", 2)
    holder = raw_many(s, "txn", 1)[0]
    waiters = raw_many(s, "wait", WORKERS)
    idlers = raw_many(s, "idle", WORKERS)
    everyone = copiers + [holder] + waiters + idlers
    try:
        assert_spread(s, wait=WORKERS, idle=WORKERS)
        with console(s) as adm:
            for i, c in enumerate(copiers):
                begin_copy(c, table, 100 + i)
            holder.query("BEGIN")
            holder.query(f"INSERT INTO {table} VALUES (200)")
            for i, w in enumerate(waiters):
                w.send(query_msg(f"INSERT INTO {table} VALUES ({300 + i})"))
            wait_pool(adm, "every waiter queued", cl_waiting=WORKERS, sv_active=3)
            old_pids = set(app_backend_pids(pg))
            mine = {100, 101, 110, 111, 200}
            theirs = {300 + i for i in range(WORKERS)}

            if action == "KILL":
                assert adm.execute("KILL appdb").statusmessage == "KILL"
                for c in everyone:
                    err = c.expect_error(timeout=10 * SLOW)
                    assert err["C"] == "57P01" and err["S"] == "FATAL", err
                    assert c.is_closed(10 * SLOW)
                wait_until(lambda: pg.count_backends() == 0, 10 * SLOW, what="no backend")
                assert table_ids(pg, table) == []
                adm.execute("RESUME appdb")
                return

            pause = None
            if action == "SIGINT":
                s.send_signal(signal.SIGINT)
                # The signal is handled when sluice's loop gets to it: until every worker has
                # answered its waiters and idle clients, a COPY ended now could hand its server
                # to a waiter that has not yet heard of the shutdown (as a COPY ended a moment
                # before the signal would). So the waiters' answers come first.
                for c in waiters + idlers:
                    err = c.expect_error(timeout=10 * SLOW)
                    assert err["C"] == "57P01" and err["S"] == "FATAL", err
            elif action == "PAUSE":
                pauser = console(s)
                everyone.append(pauser)
                pause = Background(pauser.execute, "PAUSE appdb")
                wait_pool(adm, "the pool paused", paused=1)
                assert not pause.done(), "PAUSE answered while COPYs ran"
            else:
                assert adm.execute(f"{action} appdb").statusmessage == action

            for i, c in enumerate(copiers):
                assert end_copy(c, 110 + i) == ["COPY 2"]
            assert holder.query("COMMIT")[1] == ["COMMIT"]
            if action == "SIGINT":
                for c in everyone:
                    assert c.is_closed(10 * SLOW)
                assert s.wait_exit(30 * SLOW) == 0
                assert set(table_ids(pg, table)) == mine
                return
            if pause is not None:
                assert pause.result(10 * SLOW).statusmessage == "PAUSE"
                assert pool_row(adm)["cl_waiting"] == WORKERS
                assert set(table_ids(pg, table)) == mine, "a waiter ran while paused"
                adm.execute("RESUME appdb")
            for w in waiters:
                assert w.read_results()[1] == ["INSERT 0 1"]
            for i, c in enumerate(idlers):
                assert c.query(f"SELECT {i}")[0] == [[str(i)]]
            assert set(table_ids(pg, table)) == mine | theirs
            if action == "RECONNECT":
                wait_until(lambda: not old_pids & set(app_backend_pids(pg)), 10 * SLOW,
                           what="the servers RECONNECT marked replaced once released")
            if action == "DISABLE":
                with pytest.raises(ServerError) as refused:
                    raw_login(s.port, application_name="late", timeout=10 * SLOW)
                assert refused.value.fields["C"] == "55000"
                adm.execute("ENABLE appdb")
    finally:
        close_all(everyone)
