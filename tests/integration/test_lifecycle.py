"""Process lifecycle and upstream failures: signals, lost servers, unreachable Postgres."""

import errno
import os
import shutil
import signal
import subprocess
import tempfile
import time

import psycopg
import pytest

from conftest import (APP_DB, APP_PASSWORD, APP_USER, Background, pg_tool, pick_port,
                      wait_until)
from pgwire import PeerClosed, RawConn, ServerError, raw_login, startup_packet


@pytest.mark.timeout(60)
def test_sigterm_exits_promptly_with_code_0_while_clients_are_connected(start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 3})
    idle = s.connect()
    busy = s.connect()
    in_txn = s.connect()
    try:
        idle.execute("SELECT 1")
        in_txn.execute("BEGIN")
        in_txn.execute("SELECT 1")
        q = Background(lambda: busy.execute("SELECT pg_sleep(20)"))
        pg.wait_for_active("app", "pg_sleep", timeout=10)
        t0 = time.monotonic()
        code = s.stop(signal.SIGTERM, timeout=10)
        took = time.monotonic() - t0
        assert code == 0, f"exit code {code} after SIGTERM"
        assert took < 5, f"SIGTERM took {took:.1f} s"
        assert q.error(10) is not None, "the running query should fail when sluice exits"
    finally:
        for c in (idle, busy, in_txn):
            c.close()


@pytest.mark.timeout(60)
def test_sigterm_with_no_clients_exits_0(start_sluice):
    s = start_sluice({"pool_mode": "transaction"})
    with s.connect() as c:
        c.execute("SELECT 1")
    assert s.stop(signal.SIGTERM, timeout=10) == 0


@pytest.mark.timeout(60)
def test_sigint_lets_a_running_query_finish_then_exits_0(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2,
                      "shutdown_timeout": 15})
    busy = s.connect()
    try:
        q = Background(lambda: busy.execute("SELECT pg_sleep(2), 'finished'").fetchone())
        pg.wait_for_active("app", "pg_sleep", timeout=10)
        s.send_signal(signal.SIGINT)
        assert q.result(10)[1] == "finished", "SIGINT should let the running query finish"
        code = s.wait_exit(15)
        assert code == 0, f"after SIGINT sluice exited with {code}"
    finally:
        busy.close()


@pytest.mark.timeout(60)
def test_sigint_refuses_new_logins_while_draining(start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 2, "shutdown_timeout": 15})
    busy = s.connect()
    try:
        q = Background(lambda: busy.execute("SELECT pg_sleep(3)"))
        pg.wait_for_active("app", "pg_sleep", timeout=10)
        s.send_signal(signal.SIGINT)
        time.sleep(0.3)
        try:
            c = RawConn(s.port, timeout=5)
        except OSError:
            pass  # listener already closed: also a refusal
        else:
            try:
                c.send(startup_packet())
                try:
                    err = c.expect_error(timeout=5)
                    assert err.get("C") in ("57P01", "57P03", "08P01", "53300"), err
                except (AssertionError, OSError) as e:
                    if "EOF" not in str(e) and "reset" not in str(e):
                        raise
            finally:
                c.close()
        q.result(10)
        busy.close()  # session mode: the server is released when its client leaves
        assert s.wait_exit(10) == 0
    finally:
        busy.close()


@pytest.mark.timeout(60)
def test_server_terminated_under_a_session_client_reports_an_error_and_pool_recovers(
        start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 1})
    c = s.connect()
    try:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        pg.query("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT 1")
            c.execute("SELECT 1")
        assert ei.value.sqlstate in ("57P01", "08006", None), ei.value
    finally:
        c.close()
    with s.connect() as d:
        assert d.execute("SELECT pg_backend_pid()").fetchone()[0] != pid


@pytest.mark.timeout(60)
def test_server_lost_mid_query_gives_the_client_an_error_not_a_hang(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    c = raw_login(s.port)
    try:
        c.send(b"Q" + (len(b"SELECT pg_sleep(20)\0") + 4).to_bytes(4, "big")
               + b"SELECT pg_sleep(20)\0")
        pids = pg.wait_for_active("app", "pg_sleep", timeout=10)
        pg.query("SELECT pg_terminate_backend(%s)", [pids[0]])
        err = c.expect_error(timeout=10)
        assert err.get("C") in ("57P01", "08006"), err
    finally:
        c.close()
    with s.connect() as d:
        assert d.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.timeout(60)
def test_idle_server_terminated_in_the_pool_is_replaced_transparently(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1})
    with s.connect() as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        pg.query("SELECT pg_terminate_backend(%s)", [pid])
        time.sleep(0.5)  # the server is gone; sluice sees its socket close
        assert c.execute("SELECT pg_backend_pid()").fetchone()[0] != pid


@pytest.mark.timeout(60)
def test_unreachable_postgres_gives_clients_an_error_instead_of_a_hang(start_sluice, pg):
    dead_port = pick_port()
    s = start_sluice({"pool_mode": "transaction", "server_connect_timeout": 2,
                      "query_wait_timeout": 5, "server_login_retry": 1},
                     databases={"appdb": pg.db_entry(port=dead_port)})
    t0 = time.monotonic()
    with pytest.raises(ServerError) as ei:
        c = raw_login(s.port, timeout=15)
        try:
            c.query("SELECT 1")
        finally:
            c.close()
    assert ei.value.sqlstate == "57P03", ei.value.fields
    assert time.monotonic() - t0 < 12


@pytest.mark.timeout(60)
def test_wrong_upstream_password_gives_clients_an_error_with_the_servers_reason(start_sluice,
                                                                                pg):
    s = start_sluice({"pool_mode": "transaction", "server_login_retry": 1,
                      "query_wait_timeout": 5},
                     databases={"appdb": pg.db_entry(password="not-the-password")})
    with pytest.raises(ServerError) as ei:
        c = raw_login(s.port, timeout=15)
        try:
            c.query("SELECT 1")
        finally:
            c.close()
    assert ei.value.sqlstate == "28P01", ei.value.fields
    assert "password authentication failed" in ei.value.fields.get("M", ""), ei.value.fields


def test_a_second_sigint_exits_at_once_as_in_pgbouncer(start_sluice, pg):
    """The first SIGINT waits for the open transaction (up to shutdown_timeout); a second one,
    like PgBouncer's, is an immediate shutdown: the client gets 57P01 and sluice exits 0."""
    s = start_sluice({"pool_mode": "transaction", "shutdown_timeout": 60})
    busy = s.connect()
    try:
        busy.execute("BEGIN")
        busy.execute("SELECT 1")
        s.send_signal(signal.SIGINT)
        s.wait_for_log(r"graceful shutdown", timeout=10)
        time.sleep(0.5)
        assert s.alive(), "one SIGINT should wait for the open transaction"
        started = time.monotonic()
        s.send_signal(signal.SIGINT)
        code = s.wait_exit(20)
        assert time.monotonic() - started < 10, "the second SIGINT should not wait"
        assert code == 0, f"exit code {code}"
    finally:
        busy.close()


@pytest.mark.timeout(90)
def test_sigint_under_short_transactions_exits_0_promptly(start_sluice, pg, tmp_path):
    """pgbench -c 10 of short transactions through 2 servers: after SIGINT every new request is
    answered 57P01 at once (queued ones too), transactions under way finish, and sluice exits 0
    as soon as none is open, not after shutdown_timeout."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 2,
                      "max_db_connections": 2, "shutdown_timeout": 30})
    script = tmp_path / "short.sql"
    script.write_text("SELECT pg_sleep(0.01);\n")
    env = dict(os.environ, PGPASSWORD=APP_PASSWORD, PGCONNECT_TIMEOUT="10")
    bench = subprocess.Popen(
        [pg_tool("pgbench"), "-n", "-c", "10", "-T", "60", "-f", str(script), "-h", "127.0.0.1",
         "-p", str(s.port), "-U", APP_USER, APP_DB],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_until(lambda: pg.count_backends() == 2, 15, what="pgbench running")
        time.sleep(1.0)
        t0 = time.monotonic()
        s.send_signal(signal.SIGINT)
        code = s.wait_exit(25)
        took = time.monotonic() - t0
        assert code == 0, f"after SIGINT sluice exited with {code} (None: still running)"
        assert took < 5, f"exit took {took:.1f} s after SIGINT"
    finally:
        bench.kill()
        bench.wait()


@pytest.mark.timeout(60)
def test_sigint_closes_idle_clients_at_once_with_57P01(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "shutdown_timeout": 30})
    c = raw_login(s.port)
    try:
        c.query("SELECT 1")
        t0 = time.monotonic()
        s.send_signal(signal.SIGINT)
        err = c.expect_error(timeout=5)
        assert err.get("C") == "57P01", err
        assert time.monotonic() - t0 < 2
        assert s.wait_exit(5) == 0
    finally:
        c.close()


def _first_error_code(c, timeout=10):
    """The SQLSTATE of the first ErrorResponse c reads, or how the connection ended without one."""
    try:
        return c.expect_error(timeout=timeout).get("C")
    except PeerClosed as e:
        return f"no ErrorResponse: {e}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_connections_still_queued_at_shutdown_are_told_57P01_not_reset(start_sluice, sig, workers):
    """Past its accept limit (max_client_conn + max_client_logins + 100) sluice stops accepting
    and new connections wait in the kernel's accept queue, as in any connection storm. Closing
    the listening sockets at shutdown would reset them (ECONNRESET after a connect that
    succeeded); they are accepted first and told 57P01 like the logins in progress, over TCP and
    the unix socket, with one worker or several."""
    sockdir = tempfile.mkdtemp(prefix="sluice-q")  # a unix socket's path has at most 107 bytes
    logins = 150
    # A backlog the logins below cannot overflow: a dropped SYN is sent again after 1 s, and a
    # login older than 1 s gives its place up to a new one, so the limit would not be reached.
    s = start_sluice({"workers": workers, "max_client_conn": 1, "max_client_logins": logins,
                      "client_login_timeout": 60, "shutdown_timeout": 30,
                      "listen_backlog": 1024, "unix_socket_dir": sockdir},
                     auth_file={APP_USER: APP_PASSWORD})
    holding, queued = [], []
    try:
        # logins that wait for their password, up to the accept limit and one past it
        for _ in range(1 + logins + 100 + 1):
            holding.append(RawConn(s.port))
            holding[-1].send(startup_packet())
        s.wait_for_log(r"not accepting more until some leave", timeout=20)
        for i in range(10):
            c = (RawConn(s.port) if i % 2 else
                 RawConn.over_unix_socket(os.path.join(sockdir, f".s.PGSQL.{s.port}")))
            queued.append(c)
            c.send(startup_packet())
        time.sleep(0.2)
        s.send_signal(sig)
        assert [_first_error_code(c) for c in queued] == ["57P01"] * len(queued)
        # one of these may have been the oldest login giving its place up (53300) on a slow run
        told = [_first_error_code(c) for c in holding]
        assert set(told) <= {"57P01", "53300"}, sorted(set(told))
        assert s.wait_exit(20) == 0
        s.wait_for_log(r"shutdown: accepted \d+ queued connections", timeout=5)
    finally:
        for c in holding + queued:
            c.close()
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("workers", [1, 2])
def test_connections_during_a_storm_of_reloads_all_succeed(start_sluice, workers):
    """A reload never touches the listening sockets (listen_addr, listen_port and
    unix_socket_dir need a restart): logins over TCP and the unix socket while SIGHUP arrives
    every 20 ms are never refused nor reset."""
    sockdir = tempfile.mkdtemp(prefix="sluice-r")
    s = start_sluice({"workers": workers, "pool_mode": "transaction",
                      "unix_socket_dir": sockdir})
    unix_path = os.path.join(sockdir, f".s.PGSQL.{s.port}")
    s.wait_for_log(r"listening on unix socket")  # opened after the TCP port the fixture waits for
    storming = True

    def storm():
        sent = 0
        while storming:
            s.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.02)
        return sent

    reloads = Background(storm)
    failures = []
    try:
        deadline = time.monotonic() + 3
        logins = 0
        while time.monotonic() < deadline:
            c = None
            try:
                c = RawConn(s.port) if logins % 2 else RawConn.over_unix_socket(unix_path)
                c.startup()
                c.query("SELECT 1")
            except (OSError, AssertionError) as e:
                failures.append(f"login {logins}: {e!r}")
            finally:
                if c:
                    c.close()
            logins += 1
    finally:
        storming = False
        sent = reloads.result(10)
        shutil.rmtree(sockdir, ignore_errors=True)
    assert failures == [], failures[:5]
    assert logins >= 20 and sent >= 20, f"{logins} logins under {sent} reloads"
    assert s.log_text().count("configuration reloaded") >= 20


def test_a_reload_that_changes_restart_only_keys_says_so_and_keeps_them(start_sluice):
    """config_keys.def: a RESTART key's changed value is logged and ignored on reload. It was
    neither: the log said only 'configuration reloaded' and SHOW CONFIG showed the file's new
    listen_port and workers while sluice still listened on the old port with the old workers."""
    from test_admin import console, show
    s = start_sluice({"admin_users": "admin", "workers": 2, "pool_mode": "transaction"})

    def config():
        with console(s) as c:
            return {r["key"]: (r["value"], r["source"]) for r in show(c, "CONFIG")}

    before = config()
    text = s.ini_path.read_text()
    assert "workers = 2" in text, text
    text = text.replace("workers = 2", "workers = 3").replace(
        "pool_mode = transaction", "pool_mode = session")
    text = text.replace("[sluice]\n", "[sluice]\nlisten_backlog = 7\n", 1)
    s.ini_path.write_text(text)
    mark = len(s.log)
    s.send_signal(signal.SIGHUP)
    s.wait_for_log(r"reload: workers = '3' takes effect only at a restart; '2' stays in use",
                   since=mark)
    s.wait_for_log(r"reload: listen_backlog = '7' takes effect only at a restart; '128' stays",
                   since=mark)
    s.wait_for_log(r"configuration reloaded", since=mark)
    after = config()
    assert after["workers"] == before["workers"] and after["listen_backlog"] == before[
        "listen_backlog"], (before, after)
    assert after["pool_mode"] == ("session", "file"), after["pool_mode"]  # a RELOAD key changes
    with s.connect() as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def _connect_as_nobody(path):
    """errno of a unix socket connect by user nobody (0: connected)."""
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX)\n"
            "sys.exit(s.connect_ex(sys.argv[1]))\n")
    return subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", code, path],
                          timeout=30).returncode


@pytest.mark.timeout(60)
def test_unix_socket_mode_and_group_keep_the_socket_to_one_group(start_sluice):
    """PgBouncer's unix_socket_mode and unix_socket_group were ignored with a warning: an operator
    who kept the socket to one group got one any local user could connect to (0777). Now the
    socket has the mode and group before it accepts anything; the default stays 0777, as in
    PgBouncer; a group that does not exist fails the start."""
    import grp
    import stat
    sockdir = tempfile.mkdtemp(prefix="sluice-m")
    os.chmod(sockdir, 0o755)  # nobody may reach the socket: only its own mode decides
    try:
        group = grp.getgrnam("postgres")
        s = start_sluice({"unix_socket_dir": sockdir, "unix_socket_mode": "0770",
                          "unix_socket_group": "postgres"})
        s.wait_for_log(r"listening on unix socket", timeout=10)  # after the TCP port is ready
        path = os.path.join(sockdir, f".s.PGSQL.{s.port}")
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o770 and st.st_gid == group.gr_gid, oct(st.st_mode)
        assert _connect_as_nobody(path) == errno.EACCES
        c = RawConn.over_unix_socket(path)  # root, and so the group's members, still connect
        c.send(startup_packet())
        c.close()
        s.stop()

        s = start_sluice({"unix_socket_dir": sockdir})
        s.wait_for_log(r"listening on unix socket", timeout=10)
        path = os.path.join(sockdir, f".s.PGSQL.{s.port}")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o777
        assert _connect_as_nobody(path) == 0
        s.stop()

        s = start_sluice({"unix_socket_dir": sockdir, "unix_socket_group": "no-such-group-x"},
                         wait=False)
        code = s.wait_exit(20)
        s.expected_exit_codes = None
        assert code not in (None, 0)
        assert "unix_socket_group no-such-group-x: no such group" in s.log_text()
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.timeout(60)
def test_unix_socket_group_with_a_long_member_list(start_sluice):
    """A group whose /etc/group entry (its member list) passes 4 kB, as LDAP- or sssd-backed
    groups of a few hundred members do: the lookup needs a larger buffer, and sluice refused to
    start ("Numerical result out of range") where it must take the group."""
    import grp
    import stat
    name, gid = "sluice_t_big", 45678
    line = f"{name}:x:{gid}:" + ",".join(f"member{i:04d}" for i in range(900)) + "\n"
    with open("/etc/group") as f:
        before = f.read()
    if f"\n{name}:" in "\n" + before:
        pytest.skip(f"group {name} exists already")
    sockdir = tempfile.mkdtemp(prefix="sluice-g")
    try:
        with open("/etc/group", "a") as f:
            f.write(line)
        assert len(grp.getgrnam(name).gr_mem) == 900
        s = start_sluice({"unix_socket_dir": sockdir, "unix_socket_mode": "0770",
                          "unix_socket_group": name})
        s.wait_for_log(r"listening on unix socket", timeout=10)
        st = os.stat(os.path.join(sockdir, f".s.PGSQL.{s.port}"))
        assert st.st_gid == gid and stat.S_IMODE(st.st_mode) == 0o770
    finally:
        with open("/etc/group") as f:
            now = f.read()
        with open("/etc/group", "w") as f:
            f.write(now.replace(line, ""))
        shutil.rmtree(sockdir, ignore_errors=True)
