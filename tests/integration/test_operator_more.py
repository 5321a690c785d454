"""An operator's probes from the outside, with 2 workers: the signals PgBouncer's operators send
(PgBouncer 1.23+: SIGQUIT immediate shutdown, SIGUSR1 PAUSE, SIGUSR2 RESUME), and what the
console and /metrics report against ground truth (the connections a test opened, the backends in
pg_stat_activity, the transactions it ran)."""

import json
import signal
import threading
import time
import urllib.error
import urllib.request

import psycopg
import pytest

from certs import make_pki
from conftest import APP_USER, Background, BackendSampler, pick_port, wait_until
from multiworker import console, pool_row, show, wait_pool

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


@pytest.mark.timeout(120)
def test_pause_resume_and_reload_signals_in_bursts_under_load_keep_caps_and_clients(start_sluice,
                                                                                    pg):
    """30 bursts of SIGUSR1, SIGUSR2 and SIGHUP while 10 clients on two workers run
    transactions through pool_size = 3: no client sees an error (each waits out the pauses),
    Postgres never sees more than 3 backends, sluice stays up and ends resumed."""
    s = two_workers(start_sluice, default_pool_size=3, query_wait_timeout=20)
    stop = threading.Event()
    done, errors = [0], []

    def run(i):
        with s.connect(application_name=f"l{i}") as c:
            while not stop.is_set():
                try:
                    c.execute("SELECT pg_sleep(0.002)")
                    done[0] += 1
                except psycopg.Error as e:
                    errors.append(f"{e.sqlstate}: {e}")
                    return
    threads = [threading.Thread(target=run, args=(i,)) for i in range(10)]
    with BackendSampler(pg) as sampler:
        for t in threads:
            t.start()
        time.sleep(0.5)
        for i in range(30):
            s.send_signal(signal.SIGUSR1)
            time.sleep(0.05 * (i % 4))
            s.send_signal(signal.SIGUSR2)
            time.sleep(0.05)
            s.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert done[0] > 100, done[0]
    assert sampler.max <= 3, sampler.max
    assert s.alive()
    with console(s) as adm:
        assert pool_row(adm)["paused"] == 0


# ---- a reload whose certificate or hba file cannot be used ---------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki-operator"))


def config_of(adm, *keys):
    return {r["key"]: r["value"] for r in show(adm, "CONFIG") if r["key"] in keys}


@pytest.mark.timeout(60)
def test_a_reload_requiring_tls_with_a_missing_certificate_is_refused_whole(start_sluice, pki):
    """The operator turns on client_tls_sslmode = require with a certificate path that is wrong.
    Before, RELOAD answered RELOAD, sluice went on accepting plaintext logins (the old TLS
    settings, as one log line said), and SHOW CONFIG showed require and the wrong path: the
    console told the operator that TLS was enforced while it was not. Now the reload is refused
    as a whole, as for any invalid file (F0000; the old configuration stays, SHOW CONFIG with
    it), and the log names the file."""
    s = two_workers(start_sluice, default_pool_size=2)
    tls_keys = ("client_tls_sslmode", "client_tls_cert_file", "client_tls_key_file",
                "default_pool_size")
    with console(s) as adm:
        before = config_of(adm, *tls_keys)
        s.ini_path.write_text(s.ini_path.read_text().replace(
            "[sluice]\n", "[sluice]\nclient_tls_sslmode = require\n"
            "client_tls_cert_file = /nonexistent/server.pem\n"
            f"client_tls_key_file = {pki.server_key}\n").replace(
            "default_pool_size = 2", "default_pool_size = 3"))
        mark = s.mark()
        with pytest.raises(psycopg.Error) as ei:
            adm.execute("RELOAD")
        assert ei.value.sqlstate == "F0000", ei.value
        assert config_of(adm, *tls_keys) == before
        s.wait_for_log(r"client_tls_cert_file /nonexistent/server.pem", since=mark)
        s.wait_for_log(r"keeping the old one", since=mark)
        # SIGHUP says the same in the log and keeps the same
        mark = s.mark()
        s.send_signal(signal.SIGHUP)
        s.wait_for_log(r"reload: the new configuration is invalid; keeping the old one",
                       since=mark)
        assert config_of(adm, *tls_keys) == before
        # SET of a mode that the (absent) certificate cannot serve is refused, not shown
        with pytest.raises(psycopg.Error) as ei:
            adm.execute("SET client_tls_sslmode = 'require'")
        assert "client_tls_cert_file" in str(ei.value), ei.value
        assert config_of(adm, *tls_keys) == before
    with s.connect(sslmode="disable") as c:  # what the running settings allow, as shown
        assert c.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.timeout(60)
def test_a_reload_naming_a_broken_hba_file_is_refused_whole(start_sluice, pg, tmp_path):
    """auth_type = hba, and the reload names a new auth_hba_file with a line sluice cannot
    read: the rules in force stay, so SHOW CONFIG must keep naming the file they came from."""
    good = tmp_path / "good.conf"
    good.write_text("host all all 127.0.0.1/32 trust\n")
    bad = tmp_path / "bad.conf"
    bad.write_text("host all all everywhere trust\n")
    s = two_workers(start_sluice, auth_type="hba", auth_hba_file=str(good))
    with console(s) as adm:
        s.ini_path.write_text(s.ini_path.read_text().replace(str(good), str(bad)))
        mark = s.mark()
        with pytest.raises(psycopg.Error) as ei:
            adm.execute("RELOAD")
        assert ei.value.sqlstate == "F0000", ei.value
        assert config_of(adm, "auth_hba_file") == {"auth_hba_file": str(good)}
        s.wait_for_log(r"everywhere", since=mark)
    with s.connect() as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


# ---- what /health advises while a database is paused ---------------------------------------


def http_get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.timeout(60)
def test_health_says_clients_wait_for_resume_not_for_a_bigger_pool_while_paused(start_sluice,
                                                                                pg):
    """During a PAUSE for maintenance the clients queue. /health used to tell the operator to
    `raise default_pool_size (now 2)`: advice that would not release a single client, and that
    an operator following the warnings (or an automation reading them) would act on. It now
    names the pause and RESUME."""
    port = pick_port()
    s = two_workers(start_sluice, default_pool_size=2, http_listen_port=port,
                    query_wait_timeout=30)
    clients = [s.connect(application_name=f"c{i}") for i in range(4)]
    try:
        for c in clients:
            c.execute("SELECT 1")
        with console(s) as adm:
            adm.execute("PAUSE")
            queued = [Background(lambda c=c: c.execute("SELECT 1").fetchone()) for c in clients]
            wait_pool(adm, "every client queued", cl_waiting=4)

            def paused_warning():
                status, body = http_get(port, "/health")
                warnings = json.loads(body)["warnings"]
                return warnings if any("waiting" in w for w in warnings) else None
            warnings = wait_until(paused_warning, 5, what="a warning about the waiting clients")
            waiting = [w for w in warnings if "waiting" in w]
            assert len(waiting) == 1, warnings
            assert "paused" in waiting[0] and "RESUME" in waiting[0], waiting
            assert "raise" not in waiting[0], waiting
            adm.execute("RESUME")
            for q in queued:
                assert q.result(10) == (1,)
    finally:
        for c in clients:
            c.close()


# ---- log lines say why a client was closed -------------------------------------------------


@pytest.mark.timeout(60)
def test_log_lines_of_kill_client_and_shutdown_say_why_the_client_was_closed(start_sluice):
    """Failures with no detail of their own were logged with nothing after "closing:"
    (`WARNING C-3 appdb/app@... shutdown: closing: `): an operator reading why clients went
    away learnt only a category. The line now carries the message the client got."""
    s = two_workers(start_sluice)
    victim, idle = s.connect(), s.connect()
    try:
        victim.execute("SELECT 1")
        idle.execute("SELECT 1")
        with console(s) as adm:
            rows = [r for r in show(adm, "CLIENTS") if r["database"] == "appdb"]
            mark = s.mark()
            adm.execute(f"KILL_CLIENT {rows[0]['id']}")
            line = s.wait_for_log(r"admin_killed: closing", since=mark)
            assert line.rstrip().endswith("connection closed by the administrator"), line
        mark = s.mark()
        s.send_signal(signal.SIGINT)
        assert s.wait_exit(10) == 0
        lines = [ln for ln in s.log_since(mark) if "shutdown: closing" in ln]
        assert lines, s.log_tail(20)
        for ln in lines:
            assert ln.rstrip().endswith("sluice is shutting down"), ln
    finally:
        victim.close()
        idle.close()


@pytest.mark.timeout(60)
def test_a_logfile_that_cannot_be_opened_is_refused_by_reload_and_set(start_sluice, tmp_path):
    """Before, RELOAD and SET of a logfile in a directory that does not exist answered as done:
    sluice closed the file it was writing, printed one bare line on stderr, and SHOW CONFIG named
    a file that received nothing."""
    good = tmp_path / "sluice-file.log"
    s = two_workers(start_sluice, logfile=str(good))
    with console(s) as adm:
        with pytest.raises(psycopg.Error) as ei:
            adm.execute("SET logfile = '/nonexistent/dir/sluice.log'")
        assert "/nonexistent/dir/sluice.log" in str(ei.value)
        s.ini_path.write_text(s.ini_path.read_text().replace(str(good),
                                                             "/nonexistent/dir/sluice.log"))
        with pytest.raises(psycopg.Error) as ei:
            adm.execute("RELOAD")
        assert ei.value.sqlstate == "F0000"
        assert config_of(adm, "logfile") == {"logfile": str(good)}
        adm.execute("SHOW VERSION")
    wait_until(lambda: "logfile /nonexistent/dir/sluice.log: cannot open it" in good.read_text(),
               5, what="the refusal in the logfile still in use")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pause", ["PAUSE", "PAUSE appdb"])
def test_a_client_that_waited_out_a_pause_is_told_the_resume_that_releases_it(start_sluice,
                                                                              pause):
    """The 57000 a client gets after query_wait_timeout in a paused pool said `RESUME appdb
    serves clients again` also when the pause was a PAUSE without a name, which RESUME appdb
    leaves in force: an operator following the message released nobody."""
    s = two_workers(start_sluice, default_pool_size=2, query_wait_timeout=1)
    c = s.connect()
    try:
        c.execute("SELECT 1")
        with console(s) as adm:
            adm.execute(pause)
            with pytest.raises(psycopg.Error) as ei:
                c.execute("SELECT 1")
            assert ei.value.sqlstate == "57000", ei.value
            told = str(ei.value)
            want = "RESUME appdb serves" if pause == "PAUSE appdb" else "RESUME serves"
            assert want in told, told
            assert "admin console" not in told, told  # SIGUSR1 pauses too
            adm.execute(want.replace(" serves", ""))
            assert c.execute("SELECT 'again'").fetchone() == ("again",)
    finally:
        c.close()


# ---- a database removed by a reload and added back starts afresh ---------------------------


@pytest.mark.timeout(60)
def test_a_database_removed_by_reload_and_added_back_is_no_longer_paused_or_disabled(
        start_sluice, pg):
    """PgBouncer forgets a database that a reload removes, its PAUSE, KILL and DISABLE with it,
    so adding it back gives a database that serves. sluice kept the state by name: the database
    came back paused (its clients waited out query_wait_timeout for a RESUME nobody knew was
    needed) or disabled (55000 at login)."""
    dbs = {"appdb": pg.db_entry(), "otherdb": pg.db_entry(), "keep": pg.db_entry()}
    s = two_workers(start_sluice, query_wait_timeout=2)
    main = "[sluice]" + s.ini_path.read_text().partition("[sluice]")[2]

    def write(databases):
        s.ini_path.write_text("[databases]\n" + "".join(
            f"{name} = " + " ".join(f"{k}={v}" for k, v in e.items()) + "\n"
            for name, e in databases.items()) + "\n" + main)
    with console(s) as adm:
        write(dbs)
        adm.execute("RELOAD")
        with s.connect(dbname="otherdb") as c:
            c.execute("SELECT 1")
        adm.execute("PAUSE otherdb")
        adm.execute("DISABLE appdb")
        write({"keep": dbs["keep"]})
        adm.execute("RELOAD")
        write(dbs)
        adm.execute("RELOAD")
        rows = {r["name"]: r for r in show(adm, "DATABASES")}
        assert (rows["otherdb"]["paused"], rows["appdb"]["disabled"]) == (0, 0), rows
        for db in ("appdb", "otherdb"):
            with s.connect(dbname=db) as c:
                assert c.execute("SELECT 1").fetchone() == (1,)
        # a database the reload keeps keeps its state, as before
        adm.execute("DISABLE keep")
        adm.execute("RELOAD")
        assert {r["name"]: r for r in show(adm, "DATABASES")}["keep"]["disabled"] == 1


# ---- SET auth_file is refused, not half done --------------------------------------------------


@pytest.mark.timeout(60)
def test_set_auth_file_is_refused_and_the_file_in_force_stays(start_sluice, tmp_path):
    """auth_file is read with the whole configuration, so a console SET of it is refused with
    55P02 and a hint to RELOAD, never taken as a key changed while its users stay the old
    file's: SHOW CONFIG keeps naming the file in force, its users log in, and a user only in
    the file the SET named does not. (A guard: it passed before and after Dec 7's framing
    fixes; a session's notes had it that the SET changed the key only.)"""
    s = start_sluice({"admin_users": "admin", "pool_mode": "transaction"},
                     auth_file={APP_USER: "apppass", "admin": "adminpass"})
    other = tmp_path / "other_userlist.txt"
    other.write_text(f'"{APP_USER}" "apppass"\n"admin" "adminpass"\n"newcomer" "newpass"\n')
    with console(s, password="adminpass") as adm:
        before = [r for r in show(adm, "CONFIG") if r["key"] == "auth_file"]
        with pytest.raises(psycopg.Error) as ei:
            adm.execute(f"SET auth_file = '{other}'")
        assert ei.value.sqlstate == "55P02", ei.value
        assert "RELOAD" in (ei.value.diag.message_hint or ""), ei.value.diag.message_hint
        assert [r for r in show(adm, "CONFIG") if r["key"] == "auth_file"] == before
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(s.dsn(user="newcomer", password="newpass")).close()
    assert 'password authentication failed for user "newcomer"' in str(ei.value), ei.value
    s.wait_for_log(r"newcomer@.* login failed \(md5\): no such user in auth_file")
    with s.connect(password="apppass") as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
