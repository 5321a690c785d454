"""Backend connects that fail on every worker at once while the workers also accept clients and
open servers (architecture.md 5.10, the socket lent to libpq): libpq closes a failed connect's
socket inside PQconnectPoll (a database that closes the connection during the login; a refused
host of a host list, after which libpq opens the next host's socket, maybe under another
number), and the kernel gives the lowest free number to the next socket any thread opens.
sluice must not touch a number libpq closed: removing it from its loop's epoll set then is a use
of another worker's descriptor, which ThreadSanitizer reports (the run fails through
start_sluice's sanitizer check), and watching it would watch someone else's socket.

Many pools (each its own breaker), server_login_retry = 0 (no backoff), so each login to a dead
database is a failed connect; healthy clients log in, query and leave all the while."""

import socket
import threading
import time

import pytest

from conftest import APP_DB
from multiworker import SLOW, WORKERS, start4
from pgwire import ServerError, raw_login
from test_workers_outage import FlakyDatabase

DEAD_DATABASES = 8
LOAD_S = 6.0
FAILING_THREADS = 6
HEALTHY_THREADS = 4


def closed_port():
    """A port on 127.0.0.1 nothing listens on (bound, then closed): connects are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def flaky(pg):
    f = FlakyDatabase(pg.port)  # down: accepts and closes, so libpq sees EOF during its login
    yield f
    f.close()


def dead_databases(pg, flaky):
    """Half close the connection during the login; half are a host list whose first host
    refuses (libpq moves to the second host's socket) and whose second closes."""
    refused = closed_port()
    dbs = {APP_DB: pg.db_entry()}
    for i in range(DEAD_DATABASES):
        if i % 2 == 0:
            dbs[f"dead{i}"] = pg.db_entry(port=flaky.port)
        else:
            dbs[f"dead{i}"] = pg.db_entry(host="127.0.0.1,127.0.0.1",
                                          port=f"{refused},{flaky.port}")
    return dbs


@pytest.mark.timeout(240)
def test_failed_connects_on_every_worker_touch_no_other_workers_descriptor(
        start_sluice, pg, flaky):
    s = start4(start_sluice, pg, databases=dead_databases(pg, flaky), server_login_retry=0,
               server_down_wait=1, server_connect_timeout=5, default_pool_size=4)
    stop = time.monotonic() + LOAD_S
    errors, failed, served = [], [], []

    def failing(n):
        i = n
        while time.monotonic() < stop:
            db = f"dead{i % DEAD_DATABASES}"
            i += 1
            try:
                raw_login(s.port, database=db, timeout=30 * SLOW).close()
                errors.append(f"a login to {db} succeeded")
                return
            except ServerError:
                failed.append(db)
            except OSError as e:
                errors.append(f"{db}: {e!r}")
                return

    def healthy(n):
        while time.monotonic() < stop:
            try:
                c = raw_login(s.port, application_name=f"healthy{n}", timeout=30 * SLOW)
                try:
                    assert c.query("SELECT 1")[0] == [["1"]]
                finally:
                    c.close()
                served.append(n)
            except (ServerError, OSError, AssertionError) as e:
                errors.append(f"healthy client: {e!r}")
                return

    threads = [threading.Thread(target=failing, args=(n,)) for n in range(FAILING_THREADS)]
    threads += [threading.Thread(target=healthy, args=(n,)) for n in range(HEALTHY_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    attempts = flaky.count()
    print(f"in {LOAD_S} s with {WORKERS} workers: {len(failed)} failed logins, "
          f"{attempts} failed connects, {len(served)} healthy logins")
    assert served and len(failed) >= FAILING_THREADS, (len(served), len(failed))
    assert attempts >= DEAD_DATABASES, attempts
    # sluice goes on serving after the storm
    c = raw_login(s.port, timeout=30 * SLOW)
    try:
        assert c.query("SELECT 'still here'")[0] == [["still here"]]
    finally:
        c.close()
