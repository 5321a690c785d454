"""A server sluice closes at its release (marked by RECONNECT, or past server_lifetime) while a
client waits for the pool's one slot: its replacement may be opened only once Postgres has let
the old backend go, or Postgres holds one backend more than the cap (on a managed Postgres whose
max_connections the cap was sized to, the replacement's login fails "too many clients").
Checked in Postgres itself, with a backend slow to leave: a forwarder between sluice and
Postgres holds sluice's Terminate, and its close, for a few seconds (a loaded machine or a slow
network; the chaos test once caught the replacement logging in 1 ms after the old backend's
last reset, and the old one still listed)."""

import threading
import time

import psycopg
import pytest

from conftest import APP_USER, pump
from tcp_proxy import ForwardingProxy

# under SERVER_LEAVING_WAIT_MS (2 s), after which sluice stops waiting for a backend to leave
HOLD_CLOSE_S = 1.0
TERMINATE = b"X\x00\x00\x00\x04"


class SlowToCloseProxy(ForwardingProxy):
    """Bytes both ways at once, but sluice's Terminate and close reach Postgres HOLD_CLOSE_S
    later."""

    def serve_session(self, a, b):
        def up():
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    if TERMINATE in data:
                        time.sleep(HOLD_CLOSE_S)
                    b.sendall(data)
            except OSError:
                pass
            time.sleep(HOLD_CLOSE_S)
            b.close()

        threading.Thread(target=up, daemon=True).start()
        threading.Thread(target=pump, args=(b, a), daemon=True).start()


COUNT_APP_BACKENDS = ("SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
                      " AND backend_type = 'client backend'")


@pytest.mark.parametrize("why", ["reconnect", "server_lifetime"])
def test_a_server_closed_at_release_is_replaced_only_once_postgres_let_it_go(
        pg, start_sluice, why):
    proxy = SlowToCloseProxy(pg.port)
    main = {"pool_mode": "transaction", "default_pool_size": 1, "admin_users": APP_USER,
            "query_wait_timeout": 60}
    if why == "server_lifetime":
        main["server_lifetime"] = 1
    s = start_sluice(main, databases={"appdb": pg.db_entry(port=proxy.port)})
    holder = s.connect()
    waiter = s.connect()
    try:
        holder.execute("BEGIN")
        (old_pid,) = holder.execute("SELECT pg_backend_pid()").fetchone()
        got = {}

        def wait_for_the_slot():
            try:
                got["row"] = waiter.execute(
                    "SELECT pg_backend_pid(), (" + COUNT_APP_BACKENDS + ")",
                    (APP_USER,)).fetchone()
            except Exception as e:  # reported below
                got["error"] = e

        t = threading.Thread(target=wait_for_the_slot)
        t.start()
        time.sleep(0.3)  # the waiter is queued for the one slot (it waits whatever the timing)
        if why == "reconnect":
            with psycopg.connect(s.dsn(dbname="pgbouncer"), autocommit=True,
                                 prepare_threshold=None) as adm:
                adm.execute("RECONNECT appdb")
        else:
            time.sleep(1.2)  # past server_lifetime
        holder.execute("COMMIT")  # released: closed, and the waiter's server opened
        t.join(60)
        assert "error" not in got, got
        new_pid, backends = got["row"]
        assert new_pid != old_pid
        # the old backend was gone before the new one logged in: one backend for a cap of 1
        assert backends == 1, f"{backends} backends of {APP_USER} under default_pool_size = 1"
    finally:
        holder.close()
        waiter.close()
        proxy.close()
