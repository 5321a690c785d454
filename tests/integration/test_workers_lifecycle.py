"""What must stay one thing across workers, seen from outside: workers = 4 (more threads than
this machine's cores, so the interleavings vary), clients spread over all four, and the
cancels, reloads and console commands that users and operators send (architecture.md 5.5,
5.7). Each test checks first that its clients landed on every worker (multiworker.py)."""

import signal
import time

import pytest
from psycopg import errors

from conftest import APP_DB, APP_USER, Background, BackendSampler, wait_until
from multiworker import (SLOW, WORKERS, Load, active_pids, app_backend_pids, assert_on_every_worker,
                         assert_spread, close_all, connect_many, console, holders_and_idlers,
                         named, pool_row, raw_many, rewrite, show, start4, wait_pool, worker_of,
                         workers_by_app)
from pgwire import RawConn, ServerError, cancel_request, query_msg, raw_login

# ---- CancelRequest -------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_cancel_requests_reach_the_query_of_their_own_client_on_every_worker(start_sluice, pg):
    """16 clients (four per worker, two through psycopg's cancel(), two through a raw
    CancelRequest) each run pg_sleep; each is cancelled through a new connection, which the
    acceptor hands to whichever worker it likes, so most cancels cross workers (5.5). Every one
    ends with 57014 and its session goes on; four bystanders (one per worker) whose keys are
    sent wrong, with another owner's index, or after their client left, keep running."""
    s = start4(start_sluice, pg, default_pool_size=40)
    psy, raw = [], []
    for round_ in range(2):  # in fours, so each worker gets both kinds
        psy += connect_many(s, f"psy{round_}-", WORKERS)
        raw += raw_many(s, f"raw{round_}-", WORKERS, timeout=30 * SLOW)
    bystanders = raw_many(s, "by", WORKERS, timeout=30 * SLOW)
    try:
        where = workers_by_app(s)
        for kind in ("psy", "raw"):  # two rounds of each
            assert_on_every_worker(where, named(f"{kind}0-", WORKERS)
                                   + named(f"{kind}1-", WORKERS))
        assert_on_every_worker(where, named("by", WORKERS))

        # a client that already ended: its key is sent later, to nobody
        gone = raw_login(s.port, application_name="gone")
        gone_key = gone.backend_key
        gone.query("SELECT 1")
        gone.close()

        for b in bystanders:
            b.send(query_msg("SELECT pg_sleep(120) /* bystander */"))
        waits = [Background(lambda c=c: c.execute("SELECT pg_sleep(120) /* target */"))
                 for c in psy]
        for r in raw:
            r.send(query_msg("SELECT pg_sleep(120) /* target */"))
        pg.wait_for_active(APP_USER, "/* target */", count=len(psy) + len(raw),
                           timeout=20 * SLOW)
        pg.wait_for_active(APP_USER, "/* bystander */", count=WORKERS, timeout=20 * SLOW)
        bystander_pids = active_pids(pg, "/* bystander */")

        def raw_cancel(pid, key):
            c = RawConn(s.port, timeout=20 * SLOW)
            try:
                c.send(cancel_request(pid, key))
                assert c.is_closed(20 * SLOW), "sluice should close a CancelRequest connection"
            finally:
                c.close()

        # wrong keys first: a wrong secret, a pid of another owner, a pid naming no worker,
        # the key of a client that left (cancel.c compares only on the owner)
        for b in bystanders:
            pid, key = b.backend_key
            raw_cancel(pid, key ^ 0x5A5A)
            raw_cancel((pid & ~63) | ((pid + 1) & 3), key)
            raw_cancel(pid | 63, key)
        raw_cancel(*gone_key)
        time.sleep(0.5 * SLOW)
        assert active_pids(pg, "/* bystander */") == bystander_pids, \
            "a cancel with a wrong key stopped a bystander's query"
        assert len(active_pids(pg, "/* target */")) == len(psy) + len(raw)

        # the real ones, all at once from threads: they cross workers in every direction
        senders = [Background(c.cancel) for c in psy]
        senders += [Background(raw_cancel, *r.backend_key) for r in raw]
        for snd in senders:
            snd.result(30 * SLOW)
        for c, w in zip(psy, waits):
            err = w.error(20 * SLOW)
            assert isinstance(err, errors.QueryCanceled), \
                f"{c.info.parameter_status('application_name')}: {err!r}, expected 57014"
        for r in raw:
            with pytest.raises(ServerError) as ei:
                r.read_results()
            assert ei.value.sqlstate == "57014", ei.value.fields
            assert r.last_status == "I"
        assert active_pids(pg, "/* target */") == []
        assert active_pids(pg, "/* bystander */") == bystander_pids, \
            "cancelling the targets disturbed a bystander"
        # every cancelled session goes on
        for c in psy:
            assert c.execute("SELECT 1").fetchone() == (1,)
        for r in raw:
            assert r.query("SELECT 2")[0] == [["2"]]
        # and the bystanders can still be cancelled with their own keys
        for b in bystanders:
            raw_cancel(*b.backend_key)
        for b in bystanders:
            with pytest.raises(ServerError) as ei:
                b.read_results()
            assert ei.value.sqlstate == "57014", ei.value.fields
    finally:
        close_all(psy + raw + bystanders)


# ---- RELOAD -------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_reload_under_load_on_every_worker_then_pool_mode_session_at_once(start_sluice, pg):
    """Eight clients (two per worker) run short transactions while the config is reloaded
    again and again, by the console's RELOAD and by SIGHUP: no client sees an error and the
    backends never exceed the cap in force. Then pool_mode = session: right as RELOAD answers,
    each client that logs in keeps its server, on every worker (RELOAD answers once every
    worker applied it, 5.7; a client connected before keeps the mode of its login,
    docs/pool-modes.md)."""
    s = start4(start_sluice, pg, default_pool_size=8)
    conns = connect_many(s, "load", 2 * WORKERS)
    try:
        assert_spread(s, load=2 * WORKERS)
        with console(s) as adm, BackendSampler(pg) as sampler:
            load = Load(conns)
            wait_until(lambda: load.count > 40, 30 * SLOW, what="the load to run")
            for i in range(6):
                size = 8 + i % 2
                rewrite(s, pg, pool_mode="transaction", default_pool_size=size,
                        query_wait_timeout=30 + i)
                if i % 2:
                    mark = s.mark()
                    s.send_signal(signal.SIGHUP)
                    s.wait_for_log(r"reload", timeout=10 * SLOW, since=mark)
                else:
                    assert adm.execute("RELOAD").statusmessage == "RELOAD"
                    assert pool_row(adm)["pool_size"] == size
                before = load.count
                wait_until(lambda: load.count > before + 20, 30 * SLOW,
                           what="the load to go on after the reload")
            load.finish(20 * SLOW)
        assert sampler.max <= 9, sampler.history
        with console(s) as adm:
            rewrite(s, pg, pool_mode="session", default_pool_size=2 * WORKERS)
            assert adm.execute("RELOAD").statusmessage == "RELOAD"
            close_all(conns)
            # no wait: the first login after RELOAD is in session mode on every worker
            conns = connect_many(s, "fresh", 2 * WORKERS)
            assert_spread(s, fresh=2 * WORKERS)
            pids = [c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns]
            # the other workers' rows are their last published frame (<= 100 ms old): a
            # worker that had run that transaction in transaction mode would have let its
            # server go, and stay one short
            row = wait_pool(adm, "every client keeping its server", sv_active=2 * WORKERS)
            assert row["pool_mode"] == "session" and row["pool_size"] == 2 * WORKERS
            assert len(set(pids)) == 2 * WORKERS
            assert [c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns] == pids
            assert pg.count_backends() == 2 * WORKERS
    finally:
        close_all(conns)


def run_everyone(conns, sql="SELECT pg_backend_pid()"):
    return [Background(lambda c=c: c.execute(sql).fetchone()[0]) for c in conns]


@pytest.mark.timeout(180)
def test_reloaded_pool_size_and_max_db_connections_hold_and_free_waiters_on_every_worker(
        start_sluice, pg):
    """Session mode, so a served client keeps its server and the cap shows in pg_stat_activity
    as plainly as in SHOW POOLS. pool_size lowered to 2 by RELOAD: of eight clients (two per
    worker) two are served and six wait, whichever workers they are on; raised to 8, every
    worker's waiters are served at once. max_db_connections = 3 by SIGHUP likewise, then
    removed by SIGHUP."""
    n = 2 * WORKERS
    s = start4(start_sluice, pg, pool_mode="session", default_pool_size=n)
    first = connect_many(s, "first", n)
    try:
        assert_spread(s, first=n)
        for c in first:
            c.execute("SELECT 1")  # every worker's pool has met its server
        with console(s) as adm:
            rewrite(s, pg, pool_mode="session", default_pool_size=2)
            assert adm.execute("RELOAD").statusmessage == "RELOAD"
            close_all(first)  # servers above the cap close as their clients leave
            wait_until(lambda: pg.count_backends() <= 2, 10 * SLOW,
                       what="backends down to the reloaded pool_size")
            second = connect_many(s, "second", n)
            try:
                assert_spread(s, second=n)
                with BackendSampler(pg) as sampler:
                    runs = run_everyone(second)
                    wait_until(lambda: sum(r.done() for r in runs) == 2, 10 * SLOW,
                               what="two clients served")
                    wait_pool(adm, "the others waiting", cl_waiting=n - 2)
                    time.sleep(0.5 * SLOW)
                    assert sum(r.done() for r in runs) == 2
                    rewrite(s, pg, pool_mode="session", default_pool_size=n)
                    assert adm.execute("RELOAD").statusmessage == "RELOAD"
                    pids = [r.result(10 * SLOW) for r in runs]
                assert sampler.max <= n
                assert max(sampler.history[:3]) <= 2, sampler.history
                assert len(set(pids)) == n
                wait_pool(adm, "every client served", sv_active=n, cl_waiting=0)

                rewrite(s, pg, pool_mode="session", default_pool_size=n, max_db_connections=3)
                mark = s.mark()
                s.send_signal(signal.SIGHUP)
                s.wait_for_log(r"reload", timeout=10 * SLOW, since=mark)
            finally:
                close_all(second)
            wait_until(lambda: pg.count_backends() <= 3, 10 * SLOW,
                       what="backends down to max_db_connections")
            # three per worker: a worker may have kept all three idle servers, and each one
            # still serves a client of its own worker (no server moves between workers yet)
            m = 3 * WORKERS
            third = connect_many(s, "third", m)
            try:
                with BackendSampler(pg) as sampler:
                    runs = run_everyone(third)
                    wait_until(lambda: sum(r.done() for r in runs) == 3, 10 * SLOW,
                               what="three clients served")
                    time.sleep(0.5 * SLOW)
                    assert sum(r.done() for r in runs) == 3
                    wait_pool(adm, "the others waiting", cl_waiting=m - 3, sv_active=3)
                    assert pg.count_backends() == 3
                    rewrite(s, pg, pool_mode="session", default_pool_size=m)
                    s.send_signal(signal.SIGHUP)
                    pids = [r.result(10 * SLOW) for r in runs]
                assert len(set(pids)) == m
                assert max(sampler.history[:3]) <= 3, sampler.history
            finally:
                close_all(third)
    finally:
        close_all(first)


# ---- PAUSE / RESUME / KILL / RECONNECT / WAIT_CLOSE / DISABLE / ENABLE ---------------------------


@pytest.mark.timeout(180)
def test_pause_waits_for_every_workers_transactions_and_resume_releases_every_worker(
        start_sluice, pg):
    s = start4(start_sluice, pg, default_pool_size=10)
    holders, idlers = holders_and_idlers(s)  # idle servers and transactions on every worker
    try:
        with console(s) as adm, console(s) as watcher:
            pause = Background(adm.execute, "PAUSE appdb")
            for i, h in enumerate(holders):
                assert not pause.wait(0.7 * SLOW), \
                    f"PAUSE answered while {WORKERS - i} transactions still held servers"
                assert pool_row(watcher)["paused"] == 1
                h.execute("COMMIT")
            pause.result(10 * SLOW)
            # PgBouncer's meaning: no session of the database is left
            wait_until(lambda: pg.count_backends() == 0, 5 * SLOW, what="app backends to exit")
            wait_pool(watcher, "no server left", sv_active=0, sv_idle=0, sv_used=0, sv_login=0)

            queued = [Background(lambda c=c: c.execute("SELECT 'resumed'").fetchone())
                      for c in holders + idlers]
            time.sleep(1.0 * SLOW)
            assert not any(q.done() for q in queued), "a query ran on a paused database"
            assert pg.count_backends() == 0, "a server was opened for a paused database"
            wait_pool(watcher, "every client waiting", cl_waiting=2 * WORKERS)

            assert adm.execute("RESUME appdb").statusmessage == "RESUME"
            for q in queued:
                assert q.result(10 * SLOW) == ("resumed",)
            wait_pool(watcher, "resumed", paused=0)
    finally:
        close_all(holders + idlers)


@pytest.mark.timeout(120)
def test_pause_holds_every_workers_clients_of_pools_made_after_it(start_sluice, pg):
    """PAUSE applies to the database (or to everything), not to the pools of the moment: with a
    "*" entry no pool of appdb exists when PAUSE appdb comes, and none of postgres when PAUSE
    comes; clients that arrive later, on every worker, wait (their login too) until RESUME."""
    s = start4(start_sluice, pg, databases={"*": pg.db_entry()}, default_pool_size=10)
    late = []

    def connect_and_query(name, dbname):
        c = s.connect(dbname=dbname, application_name=name)
        return c, c.execute("SELECT %s", [name]).fetchone()

    try:
        with console(s) as adm:
            for db, pause in (("appdb", "PAUSE appdb"), ("postgres", "PAUSE")):
                adm.execute(pause)
                batch = [Background(connect_and_query, f"{db}{i}", db) for i in range(2 * WORKERS)]
                late += batch
                time.sleep(1.0 * SLOW)
                assert not any(b.done() for b in batch), f"a client was served after {pause}"
                assert pg.count_backends(dbname=db) == 0, f"a server was opened after {pause}"
                adm.execute(pause.replace("PAUSE", "RESUME"))
                assert [b.result(10 * SLOW)[1] for b in batch] == \
                    [(f"{db}{i}",) for i in range(2 * WORKERS)]
            assert_spread(s, appdb=2 * WORKERS)
    finally:
        close_all([b.result(0)[0] for b in late if b.done() and not b.error(0)])


@pytest.mark.timeout(120)
def test_reload_that_removes_a_database_closes_every_workers_clients_with_3d000(
        start_sluice, pg):
    """Every worker drops the clients and servers of a database a reload removed, as PgBouncer
    does: a waiting query fails at once with FATAL 3D000, not at query_wait_timeout."""
    dbs = {APP_DB: pg.db_entry(), "olddb": pg.db_entry(pool_size=WORKERS)}
    s = start4(start_sluice, pg, databases=dbs, query_wait_timeout=120)
    holders = raw_many(s, "hold", WORKERS, database="olddb")
    waiters = raw_many(s, "wait", WORKERS, database="olddb")
    try:
        with console(s) as adm:
            rows = show(adm, "CLIENTS")
            seen = {worker_of(r) for r in rows if r["database"] == "olddb"}
            assert seen == set(range(WORKERS)), seen
            for h in holders:
                h.query("BEGIN")
                h.query("SELECT 1")
            for w in waiters:
                w.send(query_msg("SELECT 'never'"))
            wait_until(lambda: sum(r["cl_waiting"] for r in show(adm, "POOLS")
                                   if r["database"] == "olddb") == WORKERS, 5 * SLOW,
                       what="a client of olddb waiting on every worker")
            rewrite(s, pg, pool_mode="transaction", query_wait_timeout=120)
            assert adm.execute("RELOAD").statusmessage == "RELOAD"
            for c in waiters + holders:
                err = c.expect_error(timeout=5 * SLOW)
                assert err["C"] == "3D000" and err["S"] == "FATAL", err
                assert c.is_closed(5 * SLOW)
            wait_until(lambda: not [r for r in show(adm, "SERVERS") if r["database"] == "olddb"],
                       5 * SLOW, what="olddb's servers on every worker to close")
    finally:
        close_all(holders + waiters)


@pytest.mark.timeout(120)
def test_kill_drops_every_workers_clients_with_57p01_and_leaves_the_database_paused(
        start_sluice, pg):
    s = start4(start_sluice, pg, default_pool_size=10)
    victims = raw_many(s, "victim", 2 * WORKERS)
    try:
        assert_spread(s, victim=2 * WORKERS)
        for v in victims[:WORKERS]:
            v.query("BEGIN")  # half in a transaction, on every worker
            v.query("SELECT 1")
        for v in victims[WORKERS:]:
            v.query("SELECT 1")
        with console(s) as adm:
            assert adm.execute("KILL appdb").statusmessage == "KILL"
            for v in victims:
                err = v.expect_error(timeout=10 * SLOW)
                assert err["C"] == "57P01" and err["S"] == "FATAL", err
                assert err["M"] == "connection closed by the administrator", err
                assert v.is_closed(5 * SLOW)
            wait_until(lambda: pg.count_backends() == 0, 5 * SLOW, what="app backends to exit")
            wait_until(lambda: pool_row(adm)["cl_idle"] + pool_row(adm)["cl_active"] == 0,
                       5 * SLOW, what="SHOW POOLS to count no client")
            late = connect_many(s, "late", WORKERS)
            try:
                assert_spread(s, late=WORKERS)
                queued = [Background(lambda c=c: c.execute("SELECT 'late'").fetchone())
                          for c in late]
                time.sleep(0.8 * SLOW)
                assert not any(q.done() for q in queued), "KILL should leave the db paused"
                adm.execute("RESUME appdb")
                for q in queued:
                    assert q.result(10 * SLOW) == ("late",)
            finally:
                close_all(late)
    finally:
        close_all(victims)


@pytest.mark.timeout(120)
def test_reconnect_and_wait_close_replace_every_workers_servers(start_sluice, pg):
    s = start4(start_sluice, pg, default_pool_size=10)
    holders, idlers = holders_and_idlers(s)
    try:
        held = {c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in holders}
        old = set(app_backend_pids(pg))
        assert held <= old and len(held) == WORKERS
        with console(s) as adm:
            assert adm.execute("RECONNECT appdb").statusmessage == "RECONNECT"
            # the idle servers of every worker close at once, the held ones at release
            wait_until(lambda: set(app_backend_pids(pg)) == held, 5 * SLOW,
                       what="only the held servers left")
            wait_close = Background(adm.execute, "WAIT_CLOSE appdb")
            for i, h in enumerate(holders):
                assert not wait_close.wait(0.7 * SLOW), \
                    f"WAIT_CLOSE answered while {WORKERS - i} marked servers were in use"
                h.execute("COMMIT")
            wait_close.result(10 * SLOW)
            wait_until(lambda: not (set(app_backend_pids(pg)) & old), 5 * SLOW,
                       what="every old backend gone")
            new = {c.execute("SELECT pg_backend_pid()").fetchone()[0]
                   for c in holders + idlers}
            assert not (new & old), "a server from before RECONNECT was handed out again"
            assert all(x["close_needed"] == 0 for x in show(adm, "SERVERS"))
    finally:
        close_all(holders + idlers)


@pytest.mark.timeout(120)
def test_disable_refuses_logins_on_every_worker_and_enable_lets_them_in(start_sluice, pg):
    s = start4(start_sluice, pg)
    open_before = connect_many(s, "before", WORKERS)
    try:
        assert_spread(s, before=WORKERS)
        with console(s) as adm:
            adm.execute("DISABLE appdb")
            # sockets opened together, so the acceptor hands them to every worker
            refused = [RawConn(s.port, timeout=10 * SLOW) for _ in range(2 * WORKERS)]
            try:
                for c in refused:
                    with pytest.raises(ServerError) as ei:
                        c.startup()
                    assert ei.value.sqlstate == "55000", ei.value.fields
                    assert "does not allow connections" in ei.value.fields["M"]
            finally:
                close_all(refused)
            for c in open_before:  # sessions already open are not affected
                assert c.execute("SELECT 1").fetchone() == (1,)
            adm.execute("ENABLE appdb")
            after = connect_many(s, "after", 2 * WORKERS)
            try:
                assert_spread(s, after=2 * WORKERS)
                for c in after:
                    assert c.execute("SELECT 2").fetchone() == (2,)
            finally:
                close_all(after)
    finally:
        close_all(open_before)
