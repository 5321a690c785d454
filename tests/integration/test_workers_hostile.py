"""Hostile tests of the multi-worker server paths (docs/architecture.md 5.4, 5.5, 5.7), from the
outside: small pools so the idle servers move between workers all the time, and the things a
client or an operator can do while one is in a mailbox (TLS to the server, session and statement
mode, prepared statements, session state, cancel, a vanishing client, RECONNECT / PAUSE / KILL /
RELOAD, SIGINT, budgets). Every storm is bounded in time and rounds; BackendSampler checks the
caps; a debug build's ledger_audit aborts sluice on a wrong count (the fixture then fails the
test on the exit code) and logs 'ledger: ...' first, which no test may show."""

import random
import signal
import socket
import threading
import time

import psycopg
import pytest

from conftest import APP_DB, APP_USER, Background, BackendSampler, wait_until
from pgwire import (RawConn, ServerError, bind_msg, cancel_request, describe_msg, execute_msg,
                    parse_msg, query_msg, sync_msg)
from multiworker import (PROMPT_S, QUERY_WAIT_S, app_backend_pids, clients_on_distinct_workers,
                         close_all, console, local_port, main_keys, pool_row,
                         raw_on_distinct_workers, show, worker_at_port)
from test_tls import pki, tls_pg  # noqa: F401 - fixtures
from test_workers_caps import PASSWORDS, workers_sluice
from test_workers_caps import connect as login_as


def assert_no_audit_errors(s):
    bad = [line for line in s.log if "ledger:" in line or "audit" in line]
    assert not bad, "ledger audit complained:\n" + "\n".join(bad[:20])


def spread(s, adm, nworkers, per_worker=1, **login):
    """per_worker clients on each of nworkers workers. Returns (clients, every connection)."""
    chosen, opened = [], []
    for _ in range(per_worker):
        c, o = clients_on_distinct_workers(s, adm, [login] * nworkers, nworkers)
        chosen += c
        opened += o
    return chosen, opened


def start_spread(start_sluice, nworkers, pool_size, per_worker, **extra):
    """sluice with main_keys(nworkers, pool_size, **extra) and per_worker clients on each of its
    workers: (s, clients, every connection opened)."""
    s = start_sluice(main_keys(nworkers, pool_size, **extra))
    with console(s) as adm:
        clients, opened = spread(s, adm, nworkers, per_worker)
    return s, clients, opened


class Hammer:
    """Each client in its own thread runs `rounds` calls of step(client, round, index); every call
    is timed. Errors are kept per client (a storm never raises in a thread)."""

    def __init__(self, clients, rounds, step, stop_on_error=True):
        self.clients = clients
        self.rounds = rounds
        self.step = step
        self.stop_on_error = stop_on_error
        self.done = [0] * len(clients)
        self.worst = [0.0] * len(clients)
        self.errors = [[] for _ in clients]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(len(clients))]

    def _run(self, i):
        c = self.clients[i]
        for r in range(self.rounds):
            if self.stop.is_set():
                return
            t0 = time.monotonic()
            try:
                self.step(c, r, i)
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors[i].append(e)
                if self.stop_on_error:
                    return
                continue
            self.worst[i] = max(self.worst[i], time.monotonic() - t0)
            self.done[i] += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def __exit__(self, *exc):
        self.stop.set()
        self.join(30)
        return False

    def all_errors(self):
        return [e for errs in self.errors for e in errs]


def doubled(c, r, i):
    row = c.execute("SELECT %s::int * 2, %s::int", [r, i]).fetchone()
    assert row == (2 * r, i), (row, r, i)


# ---- TLS to the server: libpq's SSL object crossing threads -------------------------------------


@pytest.mark.timeout(90)
def test_tls_servers_move_between_workers_and_answer_right(start_sluice, tls_pg):
    """server_tls_sslmode = require against a hostssl-only cluster, pool_size = 1, two workers:
    the one TLS backend moves for every other query, first in turn, then under a storm."""
    s = start_sluice(main_keys(2, 1, server_tls_sslmode="require"),
                     databases={APP_DB: tls_pg.db_entry()})
    with console(s) as adm:
        clients, opened = spread(s, adm, 2)
        try:
            with BackendSampler(tls_pg, APP_USER) as sampler:
                pids = set()
                for r in range(20):
                    for i, c in enumerate(clients):
                        t0 = time.monotonic()
                        row = c.execute("SELECT %s::int + %s::int, ssl, pg_backend_pid() FROM"
                                        " pg_stat_ssl WHERE pid = pg_backend_pid()",
                                        [r, i]).fetchone()
                        assert time.monotonic() - t0 < PROMPT_S
                        assert row[:2] == (r + i, True), row
                        pids.add(row[2])
                with Hammer(clients, 60, doubled) as h:
                    assert h.join(60), "the storm did not finish"
            assert not h.all_errors(), h.all_errors()[:3]
            assert h.done == [60, 60]
            assert len(pids) == 1, f"one TLS backend moved between workers, saw {pids}"
            assert sampler.max <= 1, f"pool_size = 1 passed: {sampler.max}"
        finally:
            close_all(opened)
    assert_no_audit_errors(s)


# ---- session state and prepared statements across moves, as with one worker ---------------------


def session_state_story(s, adm, nworkers):
    """What two clients on different workers see of each other's session state in transaction
    mode with one backend: a SET, a temp table, a prepared statement. One worker and two must
    tell the same story (a move neither resets the backend nor loses it)."""
    (a, b), opened = spread(s, adm, 2) if nworkers > 1 else ((s.connect(), s.connect()), None)
    opened = opened or [a, b]
    story = []
    try:
        a.execute("SET work_mem = '1234kB'")
        story.append(b.execute("SELECT current_setting('work_mem')").fetchone()[0])
        a.execute("CREATE TEMP TABLE IF NOT EXISTS hostile_tmp (v int)")
        try:
            a.execute("INSERT INTO hostile_tmp VALUES (7)")
            story.append("insert ok")
        except psycopg.Error as e:
            story.append(e.sqlstate)
        story.append(b.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'hostile_tmp'"
                               ).fetchone()[0])
        # application_name is reported by the server: sluice replays each client's own
        a.execute("SET application_name = 'client_a'")
        story.append(b.execute("SELECT current_setting('application_name')").fetchone()[0])
        story.append(a.execute("SELECT current_setting('application_name')").fetchone()[0])
        for r in range(5):
            story.append(a.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
                         >= 0)
            story.append(b.execute("SELECT %s::int", [r]).fetchone()[0])
    finally:
        close_all(opened)
    return story


@pytest.mark.timeout(60)
def test_session_state_across_moves_is_what_one_worker_shows(start_sluice):
    stories = {}
    for n in (1, 2):
        s = start_sluice(main_keys(n, 1))
        with console(s) as adm:
            stories[n] = session_state_story(s, adm, n)
        assert_no_audit_errors(s)
    assert stories[2] == stories[1], stories


def raw_named_statement_rounds(conns, rounds):
    """Protocol-level named statements (Parse once per client, Bind/Execute every round) on raw
    connections taking turns: each round's answer is the client's own."""
    for i, rc in enumerate(conns):
        rc.send(parse_msg(f"hostile_s{i}", f"SELECT $1::int + {100 * (i + 1)}") + sync_msg())
        rc.read_until("Z")
    for r in range(rounds):
        for i, rc in enumerate(conns):
            t0 = time.monotonic()
            rc.send(bind_msg("", f"hostile_s{i}", [r]) + execute_msg() + sync_msg())
            rows, _ = rc.read_results()
            assert time.monotonic() - t0 < PROMPT_S
            assert rows == [[str(r + 100 * (i + 1))]], (r, i, rows)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_named_statements_survive_moves(start_sluice, mode):
    """psycopg's prepare=True and raw Parse/Bind, on clients of every worker with pool_size 1:
    the statements are re-prepared (or found) on the backend after each move."""
    s = start_sluice(main_keys(2, 1, mode, max_prepared_statements=100))
    with console(s) as adm:
        clients, opened = spread(s, adm, 2, prepare_threshold=0)
        raws = []
        try:
            for r in range(15):
                for i, c in enumerate(clients):
                    row = c.execute("SELECT %s::int * 3 + %s::int", [r, i], prepare=True
                                    ).fetchone()
                    assert row == (3 * r + i,), row
            raws = [RawConn(s.port) for _ in range(4)]
            for rc in raws:
                rc.startup()
            raw_named_statement_rounds(raws, 10)
            with Hammer(clients, 40, lambda c, r, i: c.execute(
                    "SELECT %s::int", [r], prepare=True).fetchone()) as h:
                assert h.join(60)
            assert not h.all_errors(), h.all_errors()[:3]
        finally:
            for rc in raws:
                rc.close()
            close_all(opened)
    assert_no_audit_errors(s)


@pytest.mark.timeout(60)
def test_session_mode_hands_a_released_server_to_another_worker_clean(start_sluice, pg):
    """Session mode, pool_size = 1: each client holds the backend for its session; the next
    client, on another worker, gets it moved after server_reset_query, with nothing of the
    previous session left (no SET, no prepared statement, no temp table)."""
    s = start_sluice(main_keys(2, 1, "session"))
    pids = set()
    with BackendSampler(pg, APP_USER) as sampler:
        for r in range(12):
            with s.connect() as c:
                row = c.execute("SELECT current_setting('work_mem'), (SELECT count(*) FROM"
                                " pg_prepared_statements), (SELECT count(*) FROM pg_tables"
                                " WHERE tablename = 'hostile_sess'), pg_backend_pid()").fetchone()
                assert row[:3] == ("4MB", 0, 0), f"session {r} saw the previous one's: {row}"
                pids.add(row[3])
                c.execute("SET work_mem = '2MB'")
                c.execute("CREATE TEMP TABLE hostile_sess (v int)")
                c.execute("SELECT %s::int", [r], prepare=True)
    assert sampler.max <= 1
    assert len(pids) == 1, f"one backend served every session, saw {pids}"
    assert_no_audit_errors(s)


# ---- cancel and vanishing clients around a move -------------------------------------------------


@pytest.mark.timeout(90)
def test_a_cancel_sent_while_the_server_moves_cancels_the_query(start_sluice):
    """Worker A's client keeps the one backend busy with short queries; worker B's client sends a
    long query, which waits for the backend to move, and a CancelRequest at once or a few ms
    later (while it waits, while the server is in the mailbox, just after it arrived). The long
    query must end well before it would have (57014, or never run) and both clients go on.

    The cancel is sent only once the query's bytes are on their way: a cancel that comes before
    its query is ignored by Postgres too (a backend reading a command drops it), and a driver's
    timer thread racing its own send on a loaded machine made that happen (CI saw it)."""
    s = start_sluice(main_keys(2, 1))
    with console(s) as adm:
        (busy, waiter), opened = raw_on_distinct_workers(s, adm, 2)
        try:
            stop = threading.Event()
            busy_errors = []

            def keep_busy():
                while not stop.is_set():
                    try:
                        busy.query("SELECT pg_sleep(0.01)")
                    except Exception as e:  # noqa: BLE001
                        busy_errors.append(e)
                        return

            t = threading.Thread(target=keep_busy, daemon=True)
            t.start()
            rng = random.Random(21)
            try:
                for k in range(12):
                    delay = [0.0, 0.002, 0.005, 0.01, 0.02][k % 5] + rng.random() * 0.003
                    t0 = time.monotonic()
                    waiter.send(query_msg("SELECT pg_sleep(4)"))
                    time.sleep(delay)
                    send_cancel(s, waiter.backend_key)
                    try:
                        waiter.read_results()
                        outcome = "ran"
                    except ServerError as e:
                        assert e.sqlstate == "57014", e.fields
                        outcome = "canceled"
                    took = time.monotonic() - t0
                    assert took < 3, f"try {k}: the cancel after {delay * 1000:.1f} ms was lost " \
                                     f"({outcome} after {took:.2f} s)"
                    assert waiter.query(f"SELECT 41 + {k}")[0] == [[str(41 + k)]]
            finally:
                stop.set()
                t.join(10)
            assert not busy_errors, busy_errors[:3]
        finally:
            close_all(opened)
    assert_no_audit_errors(s)


def send_cancel(s, key):
    rc = RawConn(s.port)
    rc.send(cancel_request(*key))
    assert rc.is_closed(5)


@pytest.mark.timeout(90)
def test_a_cancel_by_key_reaches_the_right_worker_after_moves(start_sluice):
    """A raw CancelRequest with the key sluice gave, after the client's server moved back and
    forth between the workers: it cancels that client's query, and the other client's cancel
    (sent while it is idle) touches nothing of it."""
    s = start_sluice(main_keys(2, 1))
    with console(s) as adm:
        (a, b), opened = raw_on_distinct_workers(s, adm, 2)
        try:
            for k in range(6):
                for r in range(4):
                    assert a.query(f"SELECT {r}")[0] == [[str(r)]]
                    assert b.query(f"SELECT {r + 10}")[0] == [[str(r + 10)]]
                t0 = time.monotonic()
                b.send(query_msg("SELECT pg_sleep(4)"))
                time.sleep(0.05 * k)
                send_cancel(s, a.backend_key)  # a is idle: nothing of b's may end
                b.settimeout(0.3)
                with pytest.raises(socket.timeout):
                    b.read_message()
                b.settimeout(10)
                send_cancel(s, b.backend_key)
                with pytest.raises(ServerError) as ei:
                    b.read_results()
                assert ei.value.sqlstate == "57014", ei.value.fields
                assert time.monotonic() - t0 < 3
                assert a.query("SELECT 5")[0] == [["5"]]
        finally:
            for rc in opened:
                rc.close()
    assert_no_audit_errors(s)


@pytest.mark.timeout(90)
def test_clients_vanishing_mid_query_free_the_server_for_other_workers(start_sluice, pg):
    """Raw clients on every worker send pg_sleep and go away (FIN or RST) while clients on the
    other workers wait: the waiting ones are served, no backend is left behind, the cap holds."""
    s = start_sluice(main_keys(4, 1))
    with console(s) as adm:
        waiters, opened = spread(s, adm, 4)
        try:
            with BackendSampler(pg, APP_USER) as sampler:
                for k in range(8):
                    rc = RawConn(s.port)
                    rc.startup()
                    rc.send(query_msg("SELECT pg_sleep(0.4)"))
                    time.sleep(0.05)
                    results = {}

                    def ask(i, c):
                        try:
                            results[i] = c.execute("SELECT %s::int", [i]).fetchone()[0]
                        except Exception as e:  # noqa: BLE001
                            results[i] = e

                    ts = [threading.Thread(target=ask, args=(i, c), daemon=True)
                          for i, c in enumerate(waiters)]
                    for t in ts:
                        t.start()
                    time.sleep(0.02 * (k % 3))
                    rc.close_abruptly(reset=bool(k % 2))
                    for t in ts:
                        t.join(QUERY_WAIT_S + 2)
                    assert results == {i: i for i in range(4)}, f"try {k}: {results}"
            assert sampler.max <= 1, f"pool_size = 1 passed: {sampler.max}"
        finally:
            close_all(opened)
    wait_until(lambda: pg.count_backends(APP_USER) <= 1, 10, what="at most the pooled backend")
    assert_no_audit_errors(s)


# ---- operators while servers are in a mailbox ---------------------------------------------------


def rewrite_pool_size(s, size):
    text = s.ini_path.read_text()
    lines = [f"default_pool_size = {size}" if line.startswith("default_pool_size") else line
             for line in text.splitlines()]
    s.ini_path.write_text("\n".join(lines) + "\n")


@pytest.mark.timeout(120)
def test_admin_commands_during_a_storm_of_moves(start_sluice, pg):
    """Four workers, pool_size 2, every worker's clients hammering: RECONNECT, PAUSE/RESUME, KILL
    of another database, RELOAD lowering pool_size to 1. Clients only ever wait (no errors),
    every round completes, the caps hold (2, then 1 once the old servers are gone)."""
    s = start_sluice(main_keys(4, 2))
    with console(s) as adm:
        clients, opened = spread(s, adm, 4, per_worker=2)
        try:
            with BackendSampler(pg, APP_USER) as before:
                with Hammer(clients, 400, doubled) as h:
                    time.sleep(0.3)
                    adm.execute("RECONNECT")
                    time.sleep(0.3)
                    adm.execute("PAUSE")
                    time.sleep(0.2)
                    adm.execute("RESUME")
                    time.sleep(0.3)
                    adm.execute("RECONNECT appdb")
                    time.sleep(0.3)
                    rewrite_pool_size(s, 1)
                    adm.execute("RELOAD")
                    wait_until(lambda: pg.count_backends(APP_USER) <= 1, 10,
                               what="pool_size 1 after RELOAD")
                    with BackendSampler(pg, APP_USER) as after:
                        time.sleep(1.0)
                    assert h.join(60), f"rounds done: {h.done}"
            assert not h.all_errors(), h.all_errors()[:3]
            assert h.done == [400] * len(clients), h.done
            assert before.max <= 2, f"pool_size 2 passed: {before.max}"
            assert after.max <= 1, f"pool_size 1 passed after RELOAD: {after.max}"
            assert all(int(row["sv_active"]) + int(row["sv_idle"]) <= 1
                       for row in show(adm, "POOLS") if row["database"] == APP_DB)
        finally:
            close_all(opened)
    assert_no_audit_errors(s)


@pytest.mark.timeout(90)
def test_kill_during_a_storm_of_moves_closes_clients_and_leaves_no_backend(start_sluice, pg):
    s = start_sluice(main_keys(4, 2))
    with console(s) as adm:
        clients, opened = spread(s, adm, 4, per_worker=2)
        try:
            with Hammer(clients, 100000, doubled) as h:
                time.sleep(0.5)
                adm.execute("KILL appdb")
                assert h.join(20), "a client of KILLed appdb still runs"
            assert all(errs for errs in h.errors), "every client is closed by KILL"
            wait_until(lambda: pg.count_backends(APP_USER) == 0, 10, what="no backend")
            adm.execute("RESUME appdb")
            with s.connect() as c:
                assert c.execute("SELECT 9").fetchone() == (9,)
        finally:
            close_all(opened)
    assert_no_audit_errors(s)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("nworkers", [2, 4])
def test_sigint_while_servers_move_exits_zero_and_leaves_no_backend(start_sluice, pg, nworkers):
    s, clients, opened = start_spread(start_sluice, nworkers, 1, 2, shutdown_timeout=5)
    try:
        with Hammer(clients, 100000, doubled) as h:
            time.sleep(0.6)
            assert sum(h.done) > 10, f"the storm barely ran: {h.done}"
            s.send_signal(signal.SIGINT)
            code = s.wait_exit(20)
            assert h.join(20)
        assert code == 0, f"after SIGINT sluice exited {code}\n{s.log_tail(40)}"
        assert s.sanitizer_report() is None, s.sanitizer_report()
        wait_until(lambda: pg.count_backends(APP_USER) == 0, 10, what="no backend left")
    finally:
        close_all(opened)
    assert_no_audit_errors(s)


# ---- fairness and budgets ------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_every_worker_s_clients_are_served_fairly(start_sluice, pg):
    """pool_size 2, four workers with three hammering clients each: every client finishes all
    its rounds, none waits anywhere near query_wait_timeout, and no client's worst wait is far
    above the others'."""
    s = start_sluice(main_keys(4, 2))
    with console(s) as adm:
        clients, opened = spread(s, adm, 4, per_worker=3)
        try:
            with BackendSampler(pg, APP_USER) as sampler:
                with Hammer(clients, 40, lambda c, r, i: c.execute(
                        "SELECT pg_sleep(0.002), %s::int", [i]).fetchone()) as h:
                    assert h.join(80), f"rounds done: {h.done}"
            assert not h.all_errors(), h.all_errors()[:3]
            assert h.done == [40] * len(clients), h.done
            worst = max(h.worst)
            print(f"worst wait {worst * 1000:.0f} ms, per client "
                  f"{[round(w * 1000) for w in h.worst]}")
            assert worst < QUERY_WAIT_S / 2, f"a client waited {worst:.2f} s"
            assert sampler.max <= 2, f"pool_size 2 passed: {sampler.max}"
        finally:
            close_all(opened)
    assert_no_audit_errors(s)


class LeaseSampler(BackendSampler):
    """The most backends seen running a query that contains `marker` at once: the servers
    leased to clients (max_servers caps those; idle servers may be more, up to pool_size)."""

    def __init__(self, pg, marker):
        super().__init__(pg, interval=0.005)
        self.marker = marker

    def _run(self):
        try:
            with self.pg.superuser() as c:
                while not self._stop.is_set():
                    (n,) = c.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                                     " AND query LIKE %s AND pid <> pg_backend_pid()",
                                     [f"%{self.marker}%"]).fetchone()
                    self.samples += 1
                    self.max = max(self.max, n)
                    self._stop.wait(self.interval)
        except Exception as e:  # noqa: BLE001 - reported by __exit__
            self.error = e


@pytest.mark.timeout(90)
@pytest.mark.parametrize("nworkers", [2, 4])
def test_a_budget_s_max_servers_holds_across_workers_while_servers_move(start_sluice, pg,
                                                                        nworkers):
    """Budget web (max_servers = 2) under pool_size 4, its eight clients spread over the workers:
    never more than 2 of its queries run at once, never more than 4 backends."""
    s = start_sluice(main_keys(nworkers, 4), budgets={"web": "app=web-* max_servers=2"})
    with console(s) as adm:
        clients, opened = spread(s, adm, nworkers, per_worker=8 // nworkers,
                                 application_name="web-1")
        try:
            with BackendSampler(pg, APP_USER) as backends, \
                    LeaseSampler(pg, "hostile_budget") as leases:
                with Hammer(clients, 30, lambda c, r, i: c.execute(
                        "SELECT pg_sleep(0.02), %s::int AS hostile_budget", [r]).fetchone()) as h:
                    assert h.join(60), f"rounds done: {h.done}"
            assert not h.all_errors(), h.all_errors()[:3]
            assert h.done == [30] * len(clients)
            assert leases.samples > 20 and leases.max >= 1
            assert leases.max <= 2, f"budget web's max_servers = 2 passed: {leases.max} leased"
            assert backends.max <= 4, f"pool_size 4 passed: {backends.max}"
        finally:
            close_all(opened)
    assert_no_audit_errors(s)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("nworkers", [2, 4])
def test_each_worker_s_audit_holds_while_servers_sit_in_mailboxes(start_sluice, pg, nworkers):
    """pool_size 1 and clients on every worker: the one backend is in a mailbox much of the time,
    and every worker's ledger_audit (each tick, debug builds) must still find its counts true
    (a server posted to a worker is counted in its nservers before it arrives in its share)."""
    s, clients, opened = start_spread(start_sluice, nworkers, 1, 2)
    try:
        deadline = time.monotonic() + 3.0

        def step(c, r, i):
            if time.monotonic() > deadline:
                raise StopIteration
            c.execute("SELECT 1").fetchone()

        with Hammer(clients, 100000, step) as h:
            assert h.join(30)
        assert all(isinstance(e, StopIteration) for e in h.all_errors()), h.all_errors()[:3]
        assert s.alive(), s.log_tail(20)
    finally:
        close_all(opened)
    assert_no_audit_errors(s)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("command", ["RECONNECT", "KILL"])
def test_a_server_in_a_mailbox_does_not_escape_a_console_command(start_sluice, pg, command):
    """pool_size 1 and four workers hammering: the one backend is in a mailbox much of the
    time. A RECONNECT or KILL told to every worker must reach it too: a server that arrived on
    a worker after that worker applied the command (while its sender had not yet) would live
    on as if nothing had been said. Every backend from before the command is gone soon after."""
    s = start_sluice(main_keys(4, 1))
    with console(s) as adm:
        for k in range(6):
            clients, opened = spread(s, adm, 4, per_worker=2)
            try:
                with Hammer(clients, 100000, doubled, stop_on_error=command == "KILL") as h:
                    time.sleep(0.4)
                    before = set(app_backend_pids(pg))
                    adm.execute(f"{command} appdb")
                    time.sleep(0.3)
                h.join(10)
                if command == "KILL":
                    adm.execute("RESUME appdb")
                wait_until(lambda: not (set(app_backend_pids(pg)) & before), 5,
                           what=f"try {k}: the backends from before {command} gone")
            finally:
                close_all(opened)
    assert_no_audit_errors(s)


# ---- an idle server stays where it is once nobody waits ------------------------------------------


def moves_since(s, mark):
    return [line for line in s.log_since(mark) if "idle: moving to worker" in line]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("nworkers", [2, 3])
def test_an_idle_server_stays_put_once_every_waiter_is_served(start_sluice, nworkers):
    """pool_size 1 and one raw client per worker taking turns: each query moves the one backend
    to the asking worker. Once every client has its answer the backend stays where it is. A
    worker whose last waiter a moved server served kept its entry in the ledger's wait list until
    its next tick (100 ms), and two such stale entries sent the idle backend back and forth
    between their workers, thousands of moves a second (a poll handle closed and opened, the
    ledger's lock and a mailbox trip each), after most queries."""
    s = start_sluice(main_keys(nworkers, 1, log_level="debug"))
    with console(s) as adm:
        clients, opened = raw_on_distinct_workers(s, adm, nworkers)
    try:
        for episode in range(5):
            mark = s.mark()
            for r in range(10):
                for i, c in enumerate(clients):
                    assert c.query(f"SELECT {r} + {i}")[0] == [[str(r + i)]]
            during = len(moves_since(s, mark))
            quiet = s.mark()
            time.sleep(0.3)
            after = moves_since(s, quiet)
            assert during <= 3 * 10 * nworkers, \
                f"episode {episode}: {during} moves for {10 * nworkers} queries"
            assert len(after) <= nworkers, \
                f"episode {episode}: the idle backend moved {len(after)} times in 0.3 s " \
                f"with no client waiting: {after[:4]}"
    finally:
        close_all(opened)
    assert_no_audit_errors(s)


@pytest.mark.timeout(90)
def test_a_waiter_served_on_its_own_worker_leaves_no_room_to_make_elsewhere(start_sluice, pg):
    """max_db_connections = 1, two workers: app2's clients b1 and b2 on one, app's client a on
    the other. b2 waits for b1's transaction and gets its server when b1 commits, on their own
    worker; then a runs three statements in a row, which one backend serves (closing the idle
    app2 backend once for the first). The served waiter's entry stayed in the ledger's wait list
    until its worker's next tick (100 ms), and meanwhile every server a released was closed "to
    free a slot for pool appdb/app2, whose client waits": each of a's statements opened a new
    backend (7 groups of 8 had three)."""
    s = workers_sluice(start_sluice, pg, workers=2, max_db_connections=1)
    with login_as(s, "app", app="a") as a, console(s, PASSWORDS["admin"]) as adm:
        a_worker = worker_at_port(adm, local_port(a))
        bs, opened = [], []
        try:
            while len(bs) < 2:
                b = login_as(s, "app2", app="b")
                opened.append(b)
                if worker_at_port(adm, local_port(b)) != a_worker:
                    bs.append(b)
            b1, b2 = bs
            for k in range(8):
                b1.execute("BEGIN")
                b1.execute("SELECT 1")
                waiter = Background(b2.execute, "SELECT 2")
                wait_until(lambda: pool_row(adm, user="app2")["cl_waiting"] == 1, 10,
                           what="b2 waiting for b1's transaction")
                b1.execute("COMMIT")
                waiter.result(10)
                pids = {a.execute("SELECT pg_backend_pid()").fetchone()[0] for _ in range(3)}
                assert len(pids) == 1, f"group {k}: a's three statements had backends {pids}"
        finally:
            close_all(opened)
    assert_no_audit_errors(s)


# ---- the unnamed statement is its own client's ----------------------------------------------------


def bind_unnamed(rc, describe=False):
    """Bind (or Describe) and Execute the unnamed statement in a batch of its own: its rows, or
    the SQLSTATE of the error."""
    rc.send((describe_msg("S", "") if describe else b"") + bind_msg("", "", []) + execute_msg()
            + sync_msg())
    try:
        return rc.read_results()[0]
    except ServerError as e:
        return e.sqlstate


@pytest.mark.timeout(60)
@pytest.mark.parametrize("nworkers", [1, 2])
def test_a_client_never_runs_another_clients_unnamed_statement(start_sluice, nworkers):
    """Transaction mode, one backend: a Parses the unnamed statement in a batch of its own
    (libpq's PQprepare with ""), then b does, then a Binds it in its next batch (PQexecPrepared).
    Postgres gives a its own statement's rows; a pooler cannot keep an unnamed statement across
    transactions, so a may get 26000 (no unnamed statement), but never b's statement and rows,
    which is what it got: the unnamed statement passed through untracked, and the backend held
    b's."""
    s = start_sluice(main_keys(nworkers, 1))
    with console(s) as adm:
        if nworkers > 1:
            (a, b), opened = raw_on_distinct_workers(s, adm, 2)
        else:
            a, b = RawConn(s.port), RawConn(s.port)
            a.startup()
            b.startup()
            opened = [a, b]
    try:
        for k in range(4):
            a.send(parse_msg("", f"SELECT 'a{k}'::text") + sync_msg())
            a.read_until("Z")
            b.send(parse_msg("", f"SELECT 'b{k}'::text, 2") + sync_msg())
            b.read_until("Z")
            got = bind_unnamed(a, describe=bool(k % 2))
            assert got in ([[f"a{k}"]], "26000"), f"round {k}: a ran b's statement: {got}"
            assert bind_unnamed(b) in ([[f"b{k}", "2"]], "26000")
            # in one batch, as drivers use it, the unnamed statement is the client's own
            a.send(parse_msg("", f"SELECT 'again{k}'::text") + bind_msg("", "", []) +
                   execute_msg() + sync_msg())
            assert a.read_results()[0] == [[f"again{k}"]]
    finally:
        close_all(opened)
    assert_no_audit_errors(s)
