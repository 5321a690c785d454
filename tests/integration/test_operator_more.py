"""An operator's probes from the outside, with 2 workers: the signals PgBouncer's operators send
(PgBouncer 1.23+: SIGQUIT immediate shutdown, SIGUSR1 PAUSE, SIGUSR2 RESUME), and what the
console and /metrics report against ground truth (the connections a test opened, the backends in
pg_stat_activity, the transactions it ran)."""

import signal
import time

import pytest

from conftest import APP_USER, Background, wait_until
from multiworker import console, pool_row, show

WORKERS2 = {"workers": 2, "admin_users": "admin", "pool_mode": "transaction"}


def two_workers(start_sluice, **main):
    m = dict(WORKERS2)
    m.update(main)
    return start_sluice(m)


# ---- signals -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_sigquit_is_an_immediate_shutdown_that_exits_0_as_in_pgbouncer(start_sluice, pg):
    """PgBouncer 1.23+ documents SIGQUIT as its immediate shutdown (the old SIGTERM). Before,
    sluice had no handler: the kernel's default killed it with a core dump, mid-session, with no
    FATAL to its clients and no log line."""
    s = two_workers(start_sluice)
    busy = s.connect()
    try:
        q = Background(lambda: busy.execute("SELECT pg_sleep(20)"))
        pg.wait_for_active(APP_USER, "pg_sleep", timeout=10)
        t0 = time.monotonic()
        code = s.stop(signal.SIGQUIT, timeout=10)
        assert code == 0, f"exit code {code} after SIGQUIT (negative: killed by the signal)"
        assert time.monotonic() - t0 < 5
        assert q.error(10) is not None, "the running query should fail when sluice exits"
        wait_until(lambda: pg.count_backends() == 0, 10, what="sluice's backends to end")
    finally:
        busy.close()


@pytest.mark.timeout(90)
def test_sigusr1_pauses_and_sigusr2_resumes_every_worker_as_in_pgbouncer(start_sluice, pg):
    """PgBouncer: SIGUSR1 is PAUSE, SIGUSR2 is RESUME. Before, both killed sluice (the kernel's
    default action for them), dropping every client: an operator who paused for a database
    restart the PgBouncer way lost the pooler instead."""
    s = two_workers(start_sluice, default_pool_size=4)
    clients = [s.connect(application_name=f"c{i}") for i in range(4)]
    try:
        for c in clients:
            c.execute("SELECT 1")
        holder = clients[0]
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        with console(s) as adm:
            s.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            assert s.alive(), f"sluice died of SIGUSR1\n{s.log_tail(20)}"
            wait_until(lambda: pool_row(adm)["paused"] == 1, 5, what="the pool to be paused")
            # PAUSE waits for the running transaction, then closes the servers
            assert pg.count_backends() >= 1
            holder.execute("COMMIT")
            wait_until(lambda: pg.count_backends() == 0, 10, what="servers closed by the pause")
            queued = [Background(lambda c=c: c.execute("SELECT 'resumed'").fetchone())
                      for c in clients]
            time.sleep(1.0)
            assert not any(q.done() for q in queued), "a query ran while paused"
            assert pg.count_backends() == 0
            s.send_signal(signal.SIGUSR2)
            for q in queued:
                assert q.result(10) == ("resumed",)
            assert pool_row(adm)["paused"] == 0
            assert s.alive()
        assert any("SIGUSR1" in line for line in s.log), "the pause should be logged"
    finally:
        for c in clients:
            c.close()
