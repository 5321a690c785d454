"""The console's SET with `workers = 3`: its answer comes once every worker runs under the new
generation (as RELOAD's does), so a client of any worker that connects right after it meets the
new value. Before, SET answered at once and a worker could still be on the previous generation."""

import threading

import psycopg

from pgwire import raw_login

ADMIN = "admin"
WORKERS = 3
ROUNDS = 10


def statement_timeouts(s):
    """WORKERS logins at once (held together, so the acceptor puts one on each worker), each
    sending -c statement_timeout=4321 in options: what each session has."""
    conns, errors = [None] * WORKERS, []

    def login(i):
        try:
            conns[i] = raw_login(s.port, options="-c statement_timeout=4321")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=login, args=(i,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        return [c.query("SELECT current_setting('statement_timeout')")[0][0][0] for c in conns]
    finally:
        for c in conns:
            if c:
                c.close()


def test_set_answers_when_every_worker_runs_the_new_value(start_sluice):
    s = start_sluice({"workers": WORKERS, "pool_mode": "transaction", "admin_users": ADMIN})
    with psycopg.connect(s.dsn(dbname="sluice", user=ADMIN, password=None), autocommit=True,
                         prepare_threshold=None) as console:
        for _ in range(ROUNDS):
            console.execute("SET ignore_startup_parameters = 'options'")
            assert statement_timeouts(s) == ["0"] * WORKERS
            console.execute("SET ignore_startup_parameters = ''")
            assert statement_timeouts(s) == ["4321ms"] * WORKERS
