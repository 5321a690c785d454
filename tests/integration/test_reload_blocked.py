"""A reload whose files block: a FIFO nobody has written yet (a secret-injection sidecar that is
late, an operator's mistake) or a file on a hung NFS mount as a %include'd config file,
DATABASE_URL_FILE or auth_file. The reload reads them on a thread of its own, so while it waits
sluice goes on serving: queries, /health, /metrics and the admin console answer; the console's
RELOAD answers once its reload ended; reloads asked for meanwhile become one more read; and a
SIGTERM still ends sluice at once. The console's SET of a key that names a file (client_tls_*,
auth_hba_file, auth_ident_file, logfile) reads it through the same reader: the session waits,
everything else is served, a cancel gives 57014 and changes nothing.

Each test proves the read is blocked without timing: it opens the FIFO's writing end only once
sluice's reader has opened the reading end (which an O_NONBLOCK open for writing says), and then
writes nothing, so the reader sits in read() until the test writes."""

import contextlib
import errno
import os
import signal
import subprocess
import time

import psycopg
import pytest

from certs import make_pki
from conftest import APP_DB, APP_PASSWORD, APP_USER, Background, pg_tool, pick_port, \
    render_ini, timeout_scale, wait_until
from test_admin import ADMIN, CONSOLE_MAIN, console, pool_row, show
from test_database_url_file import start_from_file
from test_http import get


def fifo_writer_once_read(path, timeout=20):
    """The FIFO's writing end, opened once sluice's reload has opened the reading end: from
    here until something is written and this end closed, the reload is stuck in read()."""
    deadline = time.monotonic() + timeout * timeout_scale()
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO or time.monotonic() > deadline:
                raise AssertionError(f"sluice's reload never opened {path} to read it") from e
            time.sleep(0.05)
            continue
        os.set_blocking(fd, True)
        return fd


def write_and_close(fd, text):
    os.write(fd, text.encode())
    os.close(fd)


def release_reader(path, text, fd=None):
    """Teardown: a reader still waiting on the FIFO (the old code's stuck loop) gets text, so
    that the sluice under test can be stopped; fd: the writing end the test still holds."""
    if fd is None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return
        os.set_blocking(fd, True)
    try:
        os.write(fd, text.encode())
    except BrokenPipeError:
        pass  # the reader is gone (sluice exited)
    os.close(fd)


def answered(fn, what, timeout=10):
    """fn's result, which must come within timeout: on a loop stuck in the reload's read it
    never would."""
    b = Background(fn)
    if not b.wait(timeout * timeout_scale()):
        raise AssertionError(f"{what} was not answered within {timeout} s while the reload's "
                             f"file blocked")
    return b.result(0)


def databases_text(pg, pool_size):
    return render_ini({}, {APP_DB: pg.db_entry(pool_size=pool_size)}).split("\n\n")[0] + "\n"


def start_with_included_databases(start_sluice, pg, tmp_path, pool_size, **main):
    """sluice whose [databases] section is in dbs.ini, a %include'd file, then made a FIFO."""
    m = dict(CONSOLE_MAIN, default_pool_size=2, **main)
    s = start_sluice(m)
    dbs = s.ini_path.parent / "dbs.ini"
    dbs.write_text(databases_text(pg, pool_size))
    full = dict(m, listen_addr="127.0.0.1", auth_type="trust", log_level="info", listen_port=0)
    s.ini_path.write_text(render_ini(full, {}) + "%include dbs.ini\n")
    with console(s) as adm:
        assert adm.execute("RELOAD").statusmessage == "RELOAD"
        assert pool_row(adm)["pool_size"] == pool_size
    dbs.unlink()
    os.mkfifo(dbs)
    return s, dbs


def query_served(s):
    with s.connect() as c:
        return c.execute("SELECT 'served'").fetchone()[0]


def assert_loop_serves(s, held, port):
    """While a read blocks, the loop serves a new client, a client connected before, /health
    and /metrics."""
    assert answered(lambda: query_served(s), "a new client's query") == "served"
    assert answered(lambda: held.execute("SELECT 2").fetchone(), "a held client") == (2,)
    assert answered(lambda: get(port, "/health")[0], "GET /health") == 200
    status, _, body = answered(lambda: get(port, "/metrics"), "GET /metrics")
    assert status == 200 and b"sluice_" in body


def test_sighup_with_an_include_fifo_nobody_writes_leaves_clients_health_and_console_served(
        start_sluice, pg, tmp_path):
    port = pick_port()
    s, fifo = start_with_included_databases(start_sluice, pg, tmp_path, 3,
                                            http_listen_port=port,
                                            http_listen_addr="127.0.0.1")
    s.wait_for_log(rf"HTTP .* listening on 127\.0\.0\.1:{port}")
    held = s.connect()  # a client connected before the reload, in the middle of its session
    held.execute("SELECT 1")
    fd = None
    try:
        mark = s.mark()
        s.send_signal(signal.SIGHUP)
        fd = fifo_writer_once_read(fifo)
        # the reload now waits in read(): everything the loop serves goes on
        assert_loop_serves(s, held, port)

        def console_pool_size():
            with console(s) as adm:
                return pool_row(adm)["pool_size"]
        assert answered(console_pool_size, "the console's SHOW POOLS") == 3  # the old config
        # the log says what is going on, and which part of the reload is stuck
        s.wait_for_log(r"reload: reading .*sluice\.ini", since=mark)
        s.wait_for_log(r"reload: still reading the configuration \(the config file, its "
                       r"%include files", timeout=30 * timeout_scale(), since=mark)
        assert not any("configuration reloaded" in line for line in s.log_since(mark))

        write_and_close(fd, databases_text(pg, 5))
        fd = None
        s.wait_for_log(r"configuration reloaded", timeout=20, since=mark)
        with console(s) as adm:
            assert pool_row(adm)["pool_size"] == 5
        assert held.execute("SELECT 3").fetchone() == (3,)
    finally:
        release_reader(fifo, databases_text(pg, 3), fd)
        held.close()


def test_console_reload_answers_when_its_fifo_is_written_and_other_sessions_go_on(
        start_sluice, pg, tmp_path):
    """RELOAD in one console session waits for its reload; another session's SHOW POOLS is
    answered meanwhile. Two SIGHUPs during the wait become one more read (of the newest files),
    not two and not none."""
    s, fifo = start_with_included_databases(start_sluice, pg, tmp_path, 3)
    fd = None
    reloading = console(s)
    try:
        mark = s.mark()
        reload = Background(lambda: reloading.execute("RELOAD").statusmessage)
        fd = fifo_writer_once_read(fifo)

        def other_session_show_pools():
            with console(s) as adm:
                return pool_row(adm)["pool_size"]
        assert answered(other_session_show_pools, "another console session's SHOW POOLS") == 3
        assert answered(lambda: query_served(s), "a client's query") == "served"
        assert not reload.done(), "RELOAD answered before its reload had read its files"

        # one at a time: the kernel merges a SIGHUP sent while another is still pending
        for n in (1, 2):
            s.send_signal(signal.SIGHUP)
            wait_until(lambda: sum("one more read follows" in line
                                   for line in s.log_since(mark)) == n,
                       10 * timeout_scale(), what=f"SIGHUP {n} coalesced")

        write_and_close(fd, databases_text(pg, 5))
        fd = None
        assert reload.result(20 * timeout_scale()) == "RELOAD"
        # the one read the SIGHUPs asked for comes next, and reads the FIFO again
        fd = fifo_writer_once_read(fifo)
        write_and_close(fd, databases_text(pg, 7))
        fd = None
        wait_until(lambda: sum("configuration reloaded" in line for line in s.log_since(mark))
                   == 2, 20 * timeout_scale(), what="the second reload applied")
        assert pool_row(reloading)["pool_size"] == 7
        reads = [line for line in s.log_since(mark) if "reload: reading" in line]
        assert len(reads) == 2, reads  # one RELOAD + two SIGHUPs: two reads
    finally:
        release_reader(fifo, databases_text(pg, 3), fd)
        reloading.close()


def test_console_reload_of_a_fifo_that_says_nonsense_answers_with_the_config_error(
        start_sluice, pg, tmp_path):
    s, fifo = start_with_included_databases(start_sluice, pg, tmp_path, 3)
    fd = None
    adm = console(s)
    try:
        reload = Background(lambda: adm.execute("RELOAD"))
        fd = fifo_writer_once_read(fifo)
        write_and_close(fd, "[databases]\nappdb = host=127.0.0.1 pool_size=lots\n")
        fd = None
        err = reload.error(20 * timeout_scale())
        assert err is not None and err.sqlstate == "F0000", err
        assert "the previous one stays in force" in str(err)
        assert pool_row(adm)["pool_size"] == 3
    finally:
        release_reader(fifo, databases_text(pg, 3), fd)
        adm.close()


@pytest.mark.parametrize("stop", ["SIGTERM", "console SHUTDOWN"])
def test_shutdown_while_database_url_file_is_a_fifo_nobody_writes_exits_at_once(
        start_sluice, pg, tmp_path, stop):
    secret = tmp_path / "database_url"
    url = f"postgresql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{pg.port}/{APP_DB}"
    secret.write_text(url + "\n")
    s = start_from_file(start_sluice, secret, admin_users="admin", auth_type="trust")
    assert query_served(s) == "served"
    secret.unlink()
    os.mkfifo(secret)
    fd = None
    try:
        s.send_signal(signal.SIGHUP)
        fd = fifo_writer_once_read(secret)
        assert answered(lambda: query_served(s), "a client's query") == "served"
        started = time.monotonic()
        if stop == "SIGTERM":
            s.send_signal(signal.SIGTERM)
        else:
            adm = console(s)
            with contextlib.suppress(psycopg.OperationalError):  # closed as it answers
                adm.execute("SHUTDOWN")
            adm.close()
        code = s.wait_exit(10 * timeout_scale())
        assert code == 0, (f"sluice did not exit within 10 s of {stop} while its reload was "
                           f"blocked (exit code {code})\n{s.log_tail(20)}")
        assert time.monotonic() - started < 10 * timeout_scale()
        s.wait_for_log(r"reload: still reading its files at exit; not waiting for it")
    finally:
        release_reader(secret, url + "\n", fd)


def test_an_auth_hba_file_fifo_is_read_once_and_its_rules_put_in_force(start_sluice, pg,
                                                                        tmp_path):
    """The hba rules a reload reads are the ones it puts in force: the loop does not open the
    file a second time (a FIFO, written once, would then hold it for ever)."""
    hba = tmp_path / "hba.conf"
    hba.write_text("host all all 127.0.0.1/32 trust\n")
    s = start_sluice({"auth_type": "hba", "auth_hba_file": str(hba)})
    assert query_served(s) == "served"
    hba.unlink()
    os.mkfifo(hba)
    fd = None
    try:
        mark = s.mark()
        s.send_signal(signal.SIGHUP)
        fd = fifo_writer_once_read(hba)
        assert answered(lambda: query_served(s), "a client's query") == "served"
        write_and_close(fd, "host all all 127.0.0.1/32 reject\n")
        fd = None
        s.wait_for_log(r"reload: auth_hba_file .*: 1 rules", timeout=20, since=mark)
        s.wait_for_log(r"configuration reloaded", timeout=20, since=mark)

        def refused():
            try:
                query_served(s)
            except Exception as e:  # noqa: BLE001 - the refusal is what is checked
                return str(e)
            return None
        why = answered(refused, "a login after the reload")
        assert why is not None and "hba rule rejects the connection" in why, why
    finally:
        release_reader(hba, "host all all 127.0.0.1/32 trust\n", fd)


def test_a_cancelled_console_reload_gives_the_session_back_and_the_reload_goes_on(
        start_sluice, pg, tmp_path):
    s, fifo = start_with_included_databases(start_sluice, pg, tmp_path, 3)
    fd = None
    adm = console(s)
    try:
        mark = s.mark()
        reload = Background(lambda: adm.execute("RELOAD"))
        fd = fifo_writer_once_read(fifo)
        answered(adm.cancel, "the console's CancelRequest")  # PQcancel waits for the close
        err = reload.error(10 * timeout_scale())
        assert err is not None and err.sqlstate == "57014", err
        assert "The reload goes on" in (err.diag.message_hint or ""), err.diag.message_hint
        assert pool_row(adm)["pool_size"] == 3  # the session answers; the old config is in force
        write_and_close(fd, databases_text(pg, 5))
        fd = None
        s.wait_for_log(r"configuration reloaded", timeout=20, since=mark)
        assert pool_row(adm)["pool_size"] == 5
    finally:
        release_reader(fifo, databases_text(pg, 3), fd)
        adm.close()


def test_a_console_set_of_an_auth_hba_file_fifo_reads_it_once(start_sluice, pg, tmp_path):
    """SET auth_hba_file to a FIFO written once (a sidecar's): the rules SET read to check the
    file are the ones it puts in force. Before, SET read the file to check it, then opened it
    again to apply it, and that second open waited for ever on the loop that also serves the
    console and worker 0's clients: SET never answered and sluice stopped serving."""
    hba = tmp_path / "hba.conf"
    os.mkfifo(hba)
    s = start_sluice(dict(CONSOLE_MAIN, auth_type="trust"))
    assert query_served(s) == "served"
    fd = None
    adm = console(s)
    try:
        b = Background(lambda: adm.execute(f"SET auth_hba_file = '{hba}'").statusmessage)
        fd = fifo_writer_once_read(hba)
        write_and_close(fd, "host all all 127.0.0.1/32 trust\n")
        fd = None
        assert b.wait(10 * timeout_scale()), \
            "SET auth_hba_file never answered: it opened the FIFO a second time"
        assert b.result(0) == "SET"
        assert answered(lambda: query_served(s), "a client's query after the SET") == "served"
    finally:
        release_reader(hba, "host all all 127.0.0.1/32 trust\n", fd)
        adm.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), "test", clients=("app",))


def config_value(adm, key):
    return {r["key"]: r["value"] for r in show(adm, "CONFIG")}[key]


def test_console_set_of_a_client_tls_ca_file_fifo_leaves_clients_health_and_console_served(
        start_sluice, pg, pki, tmp_path):
    """SET client_tls_ca_file to a FIFO nobody has written yet: before, SET read it on the loop
    that serves every client of worker 0, /health, /metrics and the console, and all of them
    stopped until the FIFO was written. Now the reader's thread waits; the session's SET
    answers once the file is read, and the CA is put in force as read (opened once)."""
    port = pick_port()
    s = start_sluice(dict(CONSOLE_MAIN, http_listen_port=port, http_listen_addr="127.0.0.1",
                          **{"client_tls_sslmode": "prefer",
                             "client_tls_cert_file": str(pki.server_cert),
                             "client_tls_key_file": str(pki.server_key)}))
    s.wait_for_log(rf"HTTP .* listening on 127\.0\.0\.1:{port}")
    ca = tmp_path / "ca.pem"
    os.mkfifo(ca)
    held = s.connect()
    held.execute("SELECT 1")
    adm = console(s)
    fd = None
    try:
        mark = s.mark()
        b = Background(lambda: adm.execute(f"SET client_tls_ca_file = '{ca}'").statusmessage)
        fd = fifo_writer_once_read(ca)
        assert_loop_serves(s, held, port)

        def other_session_config():
            with console(s) as other:
                return config_value(other, "client_tls_ca_file")
        assert answered(other_session_config, "another console session's SHOW CONFIG") == ""
        s.wait_for_log(r"admin: SET client_tls_ca_file = .*: still reading the files it names",
                       timeout=30 * timeout_scale(), since=mark)
        assert not b.done(), "SET answered before its file was read"

        write_and_close(fd, pki.ca.read_text())
        fd = None
        assert b.result(20 * timeout_scale()) == "SET"
        assert config_value(adm, "client_tls_ca_file") == str(ca)
        s.wait_for_log(r"reload: client TLS: prefer, certificate .* reloaded", since=mark)
        # the CA as read is the one in force: a certificate it signed is accepted
        with s.connect(host="localhost", hostaddr="127.0.0.1", sslmode="require",
                       sslcert=str(pki.client_cert("app")),
                       sslkey=str(pki.client_key("app"))) as c:
            assert c.execute("SELECT 3").fetchone() == (3,)
    finally:
        release_reader(ca, pki.ca.read_text(), fd)
        held.close()
        adm.close()


def test_a_cancelled_console_set_of_an_auth_ident_file_fifo_changes_nothing_and_frees_the_reader(
        start_sluice, pg, tmp_path):
    """SET auth_ident_file to a FIFO nobody writes, then a cancel: 57014, the key keeps its
    value, the session goes on, and a RELOAD after it is not held behind the abandoned read."""
    ident = tmp_path / "ident.conf"
    os.mkfifo(ident)
    s = start_sluice(dict(CONSOLE_MAIN, auth_type="trust"))
    adm = console(s)
    fd = None
    try:
        mark = s.mark()
        b = Background(lambda: adm.execute(f"SET auth_ident_file = '{ident}'"))
        fd = fifo_writer_once_read(ident)
        assert answered(lambda: query_served(s), "a client's query") == "served"
        assert not b.done(), "SET answered before its file was read"
        answered(adm.cancel, "the console's CancelRequest")
        err = b.error(10 * timeout_scale())
        assert err is not None and err.sqlstate == "57014", err
        assert "Nothing was changed" in (err.diag.message_hint or ""), err.diag.message_hint
        assert config_value(adm, "auth_ident_file") == ""
        s.wait_for_log(r"cancelled while reading its files: the read is abandoned", since=mark)
        assert answered(lambda: adm.execute("RELOAD").statusmessage,
                        "a RELOAD after the cancelled SET") == "RELOAD"
        assert config_value(adm, "auth_ident_file") == ""
    finally:
        release_reader(ident, "", fd)  # the abandoned thread returns and frees what it read
        adm.close()


def test_a_console_set_of_an_unreadable_hba_file_answers_22023_naming_the_file(start_sluice,
                                                                                pg, tmp_path):
    hba = tmp_path / "hba.conf"
    hba.write_text("host all all everywhere trust\n")
    s = start_sluice(dict(CONSOLE_MAIN, auth_type="trust"))
    with console(s) as adm:
        with pytest.raises(psycopg.Error) as ei:
            adm.execute(f"SET auth_hba_file = '{hba}'")
        assert ei.value.sqlstate == "22023", ei.value
        assert str(hba) in str(ei.value) and "everywhere" in str(ei.value), ei.value
        with pytest.raises(psycopg.Error) as ei:
            adm.execute(f"SET auth_hba_file = '{tmp_path / 'missing.conf'}'")
        assert ei.value.sqlstate == "22023", ei.value
        assert "missing.conf" in str(ei.value), ei.value
        assert config_value(adm, "auth_hba_file") == ""
        assert adm.execute("SHOW VERSION").fetchone()


def test_a_console_set_during_a_blocked_reload_applies_after_it(start_sluice, pg, tmp_path):
    """A SET meeting a reload in progress waits for it and applies to the configuration the
    reload left, so a reload asked for first cannot undo the SET afterwards; the reload's
    RELOAD answers first, then the SET."""
    s, fifo = start_with_included_databases(start_sluice, pg, tmp_path, 3)
    fd = None
    reloading = console(s)
    setting = console(s)
    try:
        mark = s.mark()
        reload = Background(lambda: reloading.execute("RELOAD").statusmessage)
        fd = fifo_writer_once_read(fifo)
        set_ = Background(lambda: setting.execute("SET client_idle_timeout = 123456")
                          .statusmessage)
        s.wait_for_log(r"admin: SET client_idle_timeout = '123456' waits for the reload before "
                       r"it", since=mark)
        assert answered(lambda: query_served(s), "a client's query") == "served"
        assert not set_.done() and not reload.done()
        write_and_close(fd, databases_text(pg, 5))
        fd = None
        assert reload.result(20 * timeout_scale()) == "RELOAD"
        assert set_.result(20 * timeout_scale()) == "SET"
        with console(s) as adm:
            assert pool_row(adm)["pool_size"] == 5  # the reload's
            assert config_value(adm, "client_idle_timeout") in ("123456", "123456ms",
                                                                  "123456 ms"), \
                config_value(adm, "client_idle_timeout")
    finally:
        release_reader(fifo, databases_text(pg, 3), fd)
        reloading.close()
        setting.close()


def test_a_console_set_whose_session_closes_is_dropped_and_frees_the_reader(start_sluice, pg,
                                                                            tmp_path):
    """psql killed while its SET auth_ident_file reads a FIFO nobody writes: the SET is dropped
    as a cancelled one (nothing changes), so a RELOAD after it is not held behind the read."""
    ident = tmp_path / "ident.conf"
    os.mkfifo(ident)
    s = start_sluice(dict(CONSOLE_MAIN, auth_type="trust"))
    psql = subprocess.Popen([pg_tool("psql"), "-X", "-h", "127.0.0.1", "-p", str(s.port), "-U",
                             ADMIN, "-d", "sluice", "-c", f"SET auth_ident_file = '{ident}'"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    fd = None
    try:
        mark = s.mark()
        fd = fifo_writer_once_read(ident)
        psql.kill()
        psql.wait(10)
        s.wait_for_log(r"cancelled while reading its files: the read is abandoned", since=mark,
                       timeout=10 * timeout_scale())
        with console(s) as adm:
            assert answered(lambda: adm.execute("RELOAD").statusmessage,
                            "a RELOAD after the dropped SET") == "RELOAD"
            assert config_value(adm, "auth_ident_file") == ""
    finally:
        if psql.poll() is None:
            psql.kill()
        release_reader(ident, "", fd)


def test_cancelled_sets_of_fifos_nobody_writes_pile_up_no_more_than_eight_threads(
        start_sluice, pg, tmp_path):
    """Each cancelled SET whose FIFO is never written leaves its read's thread in read() for
    ever: before, an operator (or a script) retrying SET and cancel piled up threads without
    end. Past eight such reads, a SET that names files is refused with 54000 (no thread
    started), the other keys (and log_level without a logfile) still SET; once one FIFO is written its thread returns and a SET
    reads again."""
    s = start_sluice(dict(CONSOLE_MAIN, auth_type="trust"))
    adm = console(s)
    fds = []
    fifos = []

    def threads():
        return len(os.listdir(f"/proc/{s.pid}/task"))
    try:
        before = threads()
        for i in range(8):
            ident = tmp_path / f"ident{i}.conf"
            os.mkfifo(ident)
            fifos.append(ident)
            b = Background(lambda: adm.execute(f"SET auth_ident_file = '{ident}'"))
            fds.append(fifo_writer_once_read(ident))
            answered(adm.cancel, "the console's CancelRequest")
            err = b.error(10 * timeout_scale())
            assert err is not None and err.sqlstate == "57014", err
        assert threads() >= before + 8
        stuck = threads()
        ninth = tmp_path / "ident8.conf"
        os.mkfifo(ninth)
        fifos.append(ninth)
        b = Background(lambda: adm.execute(f"SET auth_ident_file = '{ninth}'"))
        err = b.error(10 * timeout_scale())
        assert err is not None and err.sqlstate == "54000", err
        assert "8 cancelled SETs' reads" in str(err), err
        assert threads() == stuck
        assert config_value(adm, "auth_ident_file") == ""
        assert adm.execute("SET client_idle_timeout = 4321").statusmessage == "SET"
        # with no logfile, log_level reads nothing: the log can still be turned up
        assert adm.execute("SET log_level = 'debug'").statusmessage == "SET"
        assert answered(lambda: query_served(s), "a client's query") == "served"
        # one FIFO written: its thread returns, and a SET of a file reads again
        write_and_close(fds.pop(0), "")
        plain = tmp_path / "ident.conf"
        plain.write_text("")
        deadline = time.monotonic() + 20 * timeout_scale()
        while True:
            try:
                assert adm.execute(f"SET auth_ident_file = '{plain}'").statusmessage == "SET"
                break
            except psycopg.Error as e:
                assert e.sqlstate == "54000", e
                assert time.monotonic() < deadline, "the returned read was never counted off"
                time.sleep(0.1)
        assert config_value(adm, "auth_ident_file") == str(plain)
    finally:
        for fd in fds:
            write_and_close(fd, "")
        for f in fifos:
            release_reader(f, "")
        adm.close()


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT", "console SHUTDOWN"])
def test_shutdown_while_a_console_set_reads_a_fifo_and_another_waits_exits_at_once(
        start_sluice, pg, tmp_path, stop):
    """One console's SET auth_ident_file reads a FIFO nobody writes, a RELOAD and another
    console's SET wait behind it, clients run queries: SIGTERM, SIGINT or SHUTDOWN still ends
    sluice at once, with code 0 (the consoles are closed, their SETs dropped, the read
    abandoned), and when closing everything it starts no new read for what was queued."""
    ident = tmp_path / "ident.conf"
    os.mkfifo(ident)
    s = start_sluice(dict(CONSOLE_MAIN, auth_type="trust"))
    reading, reloading, waiting = console(s), console(s), console(s)
    fd = None
    try:
        mark = s.mark()
        set1 = Background(lambda: reading.execute(f"SET auth_ident_file = '{ident}'"))
        fd = fifo_writer_once_read(ident)
        reload = Background(lambda: reloading.execute("RELOAD"))
        set2 = Background(lambda: waiting.execute("SET client_idle_timeout = 777"))
        s.wait_for_log(r"admin: SET client_idle_timeout = '777' waits for the console SET",
                       since=mark)
        assert answered(lambda: query_served(s), "a client's query") == "served"
        assert not set1.done() and not reload.done() and not set2.done()
        started = time.monotonic()
        stopping = s.mark()
        if stop == "console SHUTDOWN":
            adm = console(s)
            with contextlib.suppress(psycopg.OperationalError):  # closed as it answers
                adm.execute("SHUTDOWN")
            adm.close()
        else:
            s.send_signal(getattr(signal, stop))
        code = s.wait_exit(10 * timeout_scale())
        assert code == 0, (f"sluice did not exit within 10 s of {stop} while a SET's read was "
                           f"blocked (exit code {code})\n{s.log_tail(20)}")
        assert time.monotonic() - started < 10 * timeout_scale()
        if stop != "SIGINT":
            # closing everything, sluice starts no read: the RELOAD asked behind the dropped
            # SET is not begun as it exits (before, "reload: reading" and then "still reading
            # its files at exit" told on-call of a reload stuck at exit that never was)
            after = "\n".join(s.log_since(stopping))
            assert "reload: reading" not in after, after
        for b in (set1, reload, set2):
            b.wait(10 * timeout_scale())
    finally:
        release_reader(ident, "", fd)
        for c in (reading, reloading, waiting):
            with contextlib.suppress(Exception):
                c.close()
