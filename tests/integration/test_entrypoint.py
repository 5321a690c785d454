"""scripts/docker-entrypoint, run directly with SLUICE_BIN pointing at the sluice under test
(there is no Docker engine here): it configures sluice from DATABASE_URL, DATABASE_URL_FILE or a
config file, refuses to start with none of them (exit 64), and execs sluice so the container's
stop signal reaches sluice itself. Also its `healthcheck` subcommand, and (opt-in, slow)
`scripts/run` with no arguments."""

import http.server
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from conftest import (APP_DB, APP_PASSWORD, APP_USER, REPO, SANITIZER_PATTERNS, Sluice,
                      pick_port, render_ini, sluice_bin)

ENTRYPOINT = REPO / "scripts" / "docker-entrypoint"
RUN_SCRIPT = REPO / "scripts" / "run"


def base_env(**extra):
    """The test's environment minus anything that configures sluice, plus `extra`."""
    e = {k: v for k, v in os.environ.items()
         if not (k.startswith("SLUICE_") or k.startswith("DATABASE_URL"))}
    e.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    e.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
    e.update({k: str(v) for k, v in extra.items()})
    return e


def database_url(pg, password=APP_PASSWORD):
    return f"postgres://{APP_USER}:{password}@127.0.0.1:{pg.port}/{APP_DB}?sslmode=disable"


def require_binary():
    binary = sluice_bin()
    if not binary.exists():
        pytest.fail(f"sluice binary not found at {binary}: build it with "
                    f"`meson setup build && ninja -C build`, or set SLUICE_BIN", pytrace=False)
    return binary


@pytest.fixture
def entrypoint(pg, request, tmp_path):
    """Factory: entrypoint(env, args=()) starts scripts/docker-entrypoint the way the image
    does and waits for sluice's 'listening on' line. On teardown sluice must exit 0 on SIGTERM
    (which only happens if the entrypoint exec'd it) and print no sanitizer report."""
    binary = require_binary()
    started = []
    request.node._sluices = started  # conftest attaches their logs to a failure report

    def start(env, args=()):
        workdir = tmp_path / f"entrypoint{len(started)}"
        workdir.mkdir()
        full_env = base_env(SLUICE_BIN=binary, SLUICE_LISTEN_ADDR="127.0.0.1",
                            SLUICE_LISTEN_PORT=0, **env)
        s = Sluice(binary, workdir, [str(ENTRYPOINT)] + list(args), full_env)
        started.append(s)
        s.wait_listening()
        return s

    yield start

    problems = []
    for s in started:
        code = s.stop(signal.SIGTERM)
        if s.stop_problem:
            problems.append(s.stop_problem)
        if code != 0:
            problems.append(f"sluice under docker-entrypoint exited {code} on SIGTERM, expected 0"
                            f"\n{s.log_tail(40)}")
        text = s.log_text()
        if any(p in text for p in SANITIZER_PATTERNS):
            problems.append(f"sanitizer report in sluice's stderr:\n{s.log_tail(120)}")
    pg.clear_backends(APP_USER)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def assert_login_and_query(s):
    """A client logs in through sluice with the upstream's own user and password."""
    with psycopg.connect(host="127.0.0.1", port=s.port, user=APP_USER, password=APP_PASSWORD,
                         dbname=APP_DB, connect_timeout=10, autocommit=True) as c:
        row = c.execute("SELECT current_user, current_database(), 40 + 2").fetchone()
    assert row == (APP_USER, APP_DB, 42)


def run_entrypoint(env, args=(), timeout=20):
    return subprocess.run([str(ENTRYPOINT)] + list(args), env=base_env(**env),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


# ---- running sluice ------------------------------------------------------------------------------


def test_entrypoint_with_database_url_lets_clients_log_in_with_the_upstream_credentials(
        entrypoint, pg):
    s = entrypoint({"DATABASE_URL": database_url(pg)})
    assert_login_and_query(s)


def test_entrypoint_execs_sluice_so_signals_reach_it(entrypoint, pg):
    s = entrypoint({"DATABASE_URL": database_url(pg)})
    # The process the container runtime signals is sluice itself, not a shell around it.
    exe = os.readlink(f"/proc/{s.pid}/exe")
    assert Path(exe) == Path(sluice_bin()).resolve(), exe
    assert_login_and_query(s)
    assert s.stop(signal.SIGINT, timeout=15) == 0, s.log_tail(40)


def test_entrypoint_reads_database_url_from_database_url_file(entrypoint, pg, tmp_path):
    secret = tmp_path / "database_url"
    # As a secret file usually looks: one line, trailing newline (here with a CR too).
    secret.write_text(database_url(pg) + "\r\n")
    secret.chmod(0o400)
    s = entrypoint({"DATABASE_URL_FILE": secret})
    assert_login_and_query(s)


def test_entrypoint_uses_the_config_file_named_by_sluice_config(entrypoint, pg, tmp_path):
    ini = tmp_path / "sluice.ini"
    userlist = tmp_path / "userlist.txt"
    userlist.write_text(f'"{APP_USER}" "{APP_PASSWORD}"\n')
    ini.write_text(render_ini(
        {"listen_addr": "127.0.0.1", "listen_port": 0, "auth_type": "md5",
         "auth_file": str(userlist)},
        {APP_DB: pg.db_entry()}))
    s = entrypoint({"SLUICE_CONFIG": ini})
    assert_login_and_query(s)


# ---- refusing to start ---------------------------------------------------------------------------


@pytest.mark.skipif(Path("/etc/sluice/sluice.ini").exists(),
                    reason="/etc/sluice/sluice.ini exists here, so the entrypoint would use it")
def test_entrypoint_without_database_url_or_config_exits_64_naming_both():
    # SLUICE_BIN=/bin/true: the entrypoint must stop before it runs sluice at all.
    p = run_entrypoint({"SLUICE_BIN": "/bin/true"})
    assert p.returncode == 64, (p.returncode, p.stdout, p.stderr)
    assert "DATABASE_URL" in p.stderr, p.stderr
    assert "/etc/sluice/sluice.ini" in p.stderr, p.stderr
    assert "SLUICE_CONFIG" in p.stderr, p.stderr


def test_entrypoint_refuses_database_url_and_database_url_file_together(tmp_path):
    secret = tmp_path / "database_url"
    secret.write_text("postgres://a:b@127.0.0.1:1/x\n")
    p = run_entrypoint({"SLUICE_BIN": "/bin/true", "DATABASE_URL": "postgres://a:b@h/x",
                        "DATABASE_URL_FILE": secret})
    assert p.returncode == 64, (p.returncode, p.stderr)
    assert "DATABASE_URL_FILE" in p.stderr, p.stderr


def test_entrypoint_with_a_missing_database_url_file_names_it(tmp_path):
    missing = tmp_path / "nope"
    p = run_entrypoint({"SLUICE_BIN": "/bin/true", "DATABASE_URL_FILE": missing})
    assert p.returncode == 66, (p.returncode, p.stderr)
    assert str(missing) in p.stderr, p.stderr


def test_entrypoint_with_a_missing_sluice_config_names_it(tmp_path):
    missing = tmp_path / "nope.ini"
    p = run_entrypoint({"SLUICE_BIN": "/bin/true", "SLUICE_CONFIG": missing})
    assert p.returncode == 66, (p.returncode, p.stderr)
    assert str(missing) in p.stderr, p.stderr


def test_entrypoint_passes_version_through_without_needing_a_config():
    binary = require_binary()
    p = run_entrypoint({"SLUICE_BIN": binary}, args=["--version"])
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert re.search(r"\d+\.\d+", p.stdout + p.stderr), (p.stdout, p.stderr)


def test_entrypoint_runs_other_commands_as_given():
    p = run_entrypoint({}, args=["sh", "-c", "echo hello from $0", "entry"])
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "hello from entry"


# ---- healthcheck ---------------------------------------------------------------------------------


class _HealthHandler(http.server.BaseHTTPRequestHandler):
    """A stand-in sluice: /livez answers live_status, /health (readiness) ready_status."""
    live_status = 200
    ready_status = 200

    def do_GET(self):  # noqa: N802 - http.server's naming
        code = {"/livez": self.live_status, "/health": self.ready_status}.get(self.path, 404)
        body = b'{"status":"ok"}' if code == 200 else b'{"status":"down"}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


# The container HEALTHCHECK is liveness: a database outage (/health 503) must not get the pooler
# restarted, so only /livez counts.
@pytest.mark.parametrize("live_status, ready_status, expected_rc",
                         [(200, 200, 0), (200, 503, 0), (503, 200, 1)])
def test_entrypoint_healthcheck_follows_livez_not_readiness(live_status, ready_status,
                                                            expected_rc):
    handler = type("H", (_HealthHandler,), {"live_status": live_status,
                                            "ready_status": ready_status})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        p = run_entrypoint({"SLUICE_HTTP_LISTEN_ADDR": "0.0.0.0",
                            "SLUICE_HTTP_LISTEN_PORT": server.server_address[1]},
                           args=["healthcheck"], timeout=15)
    finally:
        server.shutdown()
        server.server_close()
    assert p.returncode == expected_rc, (p.returncode, p.stderr)


def test_entrypoint_healthcheck_passes_against_a_running_sluice(entrypoint, pg):
    # As in the image: HTTP on 0.0.0.0, the healthcheck reaches it on 127.0.0.1.
    http_env = {"SLUICE_HTTP_LISTEN_ADDR": "0.0.0.0", "SLUICE_HTTP_LISTEN_PORT": pick_port()}
    s = entrypoint({"DATABASE_URL": database_url(pg), **http_env})
    assert_login_and_query(s)
    s.wait_for_log(r"HTTP .*listening on", timeout=5)
    p = run_entrypoint(http_env, args=["healthcheck"])
    assert p.returncode == 0, (p.returncode, p.stderr, s.log_tail(20))


def test_entrypoint_healthcheck_fails_when_nothing_listens():
    p = run_entrypoint({"SLUICE_HTTP_LISTEN_PORT": pick_port()}, args=["healthcheck"])
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "cannot connect" in p.stderr, p.stderr


# ---- scripts/run (opt-in: it builds and starts its own PostgreSQL) ------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(os.environ.get("SLUICE_TEST_SCRIPTS_RUN") != "1",
                    reason="slow (builds, starts its own PostgreSQL): set SLUICE_TEST_SCRIPTS_RUN=1")
def test_scripts_run_without_arguments_serves_a_throwaway_database_until_ctrl_c():
    """Also: the printed admin console URL answers SHOW VERSION, and the printed HTTP URL's
    /health answers with sluice's JSON report (and /livez with 200)."""
    env = base_env(SLUICE_SKIP_DEPS=1)
    if os.environ.get("SLUICE_BUILD_DIR"):
        env["SLUICE_BUILD_DIR"] = os.environ["SLUICE_BUILD_DIR"]
    proc = subprocess.Popen(["bash", str(RUN_SCRIPT)], cwd=str(REPO), env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    url = admin_url = health_url = None
    tmpdir = None
    try:
        deadline = time.monotonic() + 240
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            lines.append(line)
            m = re.search(r"DATABASE_URL=(postgres://\S+)", line)
            if m:
                url = m.group(1)
            m = re.search(r"Admin console: (postgres://\S+)", line)
            if m:
                admin_url = m.group(1)
            m = re.search(r"HTTP: +(http://\S+/health)", line)
            if m:
                health_url = m.group(1)
            m = re.search(r"(/tmp/sluice-run\.\w+)", line)
            if m:
                tmpdir = Path(m.group(1))
            # The block with the URLs ends with the Ctrl-C line.
            if (url and "Ctrl-C stops" in line) or time.monotonic() > deadline:
                break
        log = "\n".join(lines)
        assert url, f"scripts/run printed no DATABASE_URL:\n{log}"
        with psycopg.connect(url, connect_timeout=10, autocommit=True) as c:
            assert c.execute("SELECT current_user, current_database()").fetchone() == ("app", "app")
        assert admin_url, f"scripts/run printed no admin console URL:\n{log}"
        with psycopg.connect(admin_url, connect_timeout=10, autocommit=True) as c:
            version = c.execute("SHOW VERSION").fetchone()[0]
        assert "sluice" in version.lower(), version
        assert health_url, f"scripts/run printed no /health URL:\n{log}"
        try:
            with urllib.request.urlopen(health_url, timeout=10) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:  # 503 is an answer too (a pool down)
            status, body = e.code, e.read()
        assert status in (200, 503), (status, body)
        assert "pools" in json.loads(body), body
        livez = health_url.rsplit("/", 1)[0] + "/livez"
        with urllib.request.urlopen(livez, timeout=10) as r:
            assert r.status == 200
        assert tmpdir and tmpdir.exists(), log
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rest, _ = proc.communicate(timeout=60)
        log += "\n" + rest.decode("utf-8", "replace")
        assert proc.returncode == 130, f"exit {proc.returncode}\n{log}"
        assert not tmpdir.exists(), f"{tmpdir} left behind\n{log}"
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=3)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
