"""Fixtures for sluice's integration tests.

- `pg` (session): a throwaway PostgreSQL cluster in /tmp, run by the `postgres` user, on a free
  port, with role `app` (password `apppass`) owning database `appdb`.
- `start_sluice` (function): starts the sluice binary ($SLUICE_BIN, default <repo>/build/sluice)
  on a generated config with listen_port = 0, parses the port from its log, and on teardown stops
  it and fails the test when it did not exit with 0 or printed a sanitizer report.
- `BackendSampler`: counts a user's backends in pg_stat_activity every 50 ms and keeps the max.
- psql/pgbench runners and raw-socket helpers (pgwire.py), every one with a timeout.

Run: /usr/bin/python3 -m pytest tests/integration   (see scripts/test).
"""

import contextlib
import fcntl
import functools
import os
import pwd
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import termios
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TEST_TIMEOUT = float(os.environ.get("SLUICE_TEST_TIMEOUT", "60"))
START_TIMEOUT = float(os.environ.get("SLUICE_START_TIMEOUT", "10"))

APP_USER = "app"
APP_PASSWORD = "apppass"
APP_DB = "appdb"

SANITIZER_PATTERNS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "WARNING: ThreadSanitizer",
    "ERROR: ThreadSanitizer",
)
LISTEN_RE = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def _find_pg_bin():
    env = os.environ.get("PG_BIN")
    if env:
        return Path(env)
    for v in ("15", "16", "17", "14", "13"):
        p = Path(f"/usr/lib/postgresql/{v}/bin")
        if (p / "postgres").exists():
            return p
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise RuntimeError("PostgreSQL server binaries not found; set PG_BIN")


PG_BIN = _find_pg_bin()


def pg_tool(name):
    return str(PG_BIN / name)


def sluice_bin():
    return Path(os.environ.get("SLUICE_BIN", str(REPO / "build" / "sluice")))


@functools.lru_cache(maxsize=None)
def binary_sanitizer(path):
    """'thread' for a ThreadSanitizer build, 'address' for AddressSanitizer/UBSan, else None."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    try:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    if b"__tsan_init" in data or "libtsan" in out:
        return "thread"
    if b"__asan_init" in data or b"__ubsan_handle" in data or "libasan" in out \
            or "libubsan" in out:
        return "address"
    return None


def binary_is_sanitized(path):
    """ASan/UBSan and TSan builds use far more memory (shadow, quarantine, history), so RSS
    bounds apply only to the plain build."""
    return binary_sanitizer(str(path)) is not None


def timeout_scale():
    """ThreadSanitizer makes sluice 5-15x slower: under it the per-test timeout, sluice's start
    and its exit get 3x the time (the tests' own waits are generous already)."""
    return 3 if binary_sanitizer(str(sluice_bin())) == "thread" else 1


# ThreadSanitizer's report options: a report fails the test through sluice's exit code (66) and
# the "WARNING: ThreadSanitizer" line in its output (SANITIZER_PATTERNS). scripts/test sets
# TSAN_OPTIONS itself; this default serves a run by hand, with tests/tsan.supp when it exists.
_TSAN_SUPP = REPO / "tests" / "tsan.supp"
os.environ.setdefault("TSAN_OPTIONS", "halt_on_error=0:exitcode=66:second_deadlock_stack=1"
                      + (f":suppressions={_TSAN_SUPP}" if _TSAN_SUPP.exists() else ""))


# ---- per-test timeout (no pytest-timeout plugin on this machine) ------------------------------


class TestTimeout(Exception):
    pass


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): fail the test after this many seconds")
    config.addinivalue_line("markers", "slow: a test that takes more than a few seconds")


@pytest.fixture(autouse=True)
def _test_timeout(request):
    marker = request.node.get_closest_marker("timeout")
    seconds = (float(marker.args[0]) if marker else DEFAULT_TEST_TIMEOUT) * timeout_scale()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise TestTimeout(f"test did not finish within {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when in ("call", "setup") and rep.failed:
        for s in getattr(item, "_sluices", []):
            if not getattr(s, "log_in_report", True):  # a test said this one does not matter
                continue
            rep.sections.append((f"sluice log (pid {s.pid}, port {s.port})", s.log_tail(120)))


# ---- background work with a bounded wait -------------------------------------------------------


class Background:
    """Run fn in a daemon thread; .result(timeout) returns its value or re-raises its error.
    Daemon threads never keep the test process alive if sluice leaves a client hanging."""

    def __init__(self, fn, *args, **kwargs):
        self._done = threading.Event()
        self._value = None
        self._error = None
        self.started_at = time.monotonic()
        self.finished_at = None

        def run():
            try:
                self._value = fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting test
                self._error = e
            finally:
                self.finished_at = time.monotonic()
                self._done.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def done(self):
        return self._done.is_set()

    def wait(self, timeout):
        return self._done.wait(timeout)

    def result(self, timeout):
        if not self._done.wait(timeout):
            raise TimeoutError(f"background call did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value

    def error(self, timeout):
        """The exception it raised (None when it returned normally)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"background call did not finish within {timeout} s")
        return self._error

    @property
    def elapsed(self):
        return (self.finished_at or time.monotonic()) - self.started_at


def wait_until(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ---- PostgreSQL ---------------------------------------------------------------------------------


def _as_postgres(cmd):
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + cmd
    return cmd


def port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port():
    """A free port below the ephemeral range (32768-60999), so a burst of outgoing connections
    cannot take it between the check and the server's bind."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        if port_is_free(port):
            return port
    raise RuntimeError("no free port found in 20000-32000")


def pump(src, dst):
    """One direction of a TCP forwarder: copies src to dst until src ends or either fails, then
    shuts both down, which ends the other direction's pump too."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def forward_both_ways(a, b):
    """Joins two connected sockets: a pump each way, each in a daemon thread."""
    for src, dst in ((a, b), (b, a)):
        threading.Thread(target=pump, args=(src, dst), daemon=True).start()


class PgCluster:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-it-pg-", dir="/tmp"))
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.data = self.dir / "data"
        self.sockdir = str(self.dir)
        self.logfile = self.dir / "postgres.log"
        self.port = None
        self.running = False

    def _run(self, cmd, timeout=120, check=True):
        p = subprocess.run(_as_postgres(cmd), capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout}\n{p.stderr}\n"
                               f"{self.log_tail()}")
        return p

    def log_tail(self, n=40):
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no postgres log)"

    def start(self):
        self._run([pg_tool("initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                   "--no-locale", "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256"])
        base_conf = (self.data / "postgresql.conf").read_text()
        last_err = None
        for _attempt in range(5):
            self.port = pick_port()
            conf = base_conf + "\n".join([
                "",
                "# sluice integration tests",
                "listen_addresses = '127.0.0.1'",
                f"port = {self.port}",
                f"unix_socket_directories = '{self.sockdir}'",
                "max_connections = 100",
                "fsync = off",
                "synchronous_commit = off",
                "full_page_writes = off",
                "shared_buffers = 64MB",
                # notice clients that went away even while a query runs (pg_sleep), so tests
                # never leave busy backends behind
                "client_connection_check_interval = 1s",
                "log_min_messages = warning",
                "log_line_prefix = '%m [%p] %u@%d '",
                "",
            ])
            (self.data / "postgresql.conf").write_text(conf)
            p = self._run([pg_tool("pg_ctl"), "-D", str(self.data), "-l", str(self.logfile),
                           "-w", "-t", "60", "start"], check=False)
            if p.returncode == 0:
                self.running = True
                break
            last_err = f"pg_ctl start exited {p.returncode}: {p.stdout}{p.stderr}\n{self.log_tail()}"
            if "could not bind" not in self.log_tail() and "in use" not in self.log_tail():
                break
        if not self.running:
            raise RuntimeError(f"PostgreSQL did not start: {last_err}")
        with self.superuser() as c:
            c.execute(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'")
            c.execute(f"CREATE DATABASE {APP_DB} OWNER {APP_USER}")
            c.execute("CREATE ROLE app2 LOGIN PASSWORD 'app2pass'")
            c.execute(f"GRANT ALL ON DATABASE {APP_DB} TO app2")
        with self.superuser(dbname=APP_DB) as c:
            c.execute("GRANT ALL ON SCHEMA public TO app2")

    def stop(self):
        if self.running:
            self._run([pg_tool("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t",
                       "30", "stop"], check=False)
            self.running = False
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- connections that bypass sluice
    def superuser(self, dbname="postgres"):
        """Unix-socket superuser connection (trust), autocommit."""
        return psycopg.connect(host=self.sockdir, port=self.port, user="postgres", dbname=dbname,
                               autocommit=True, connect_timeout=10)

    def db_entry(self, **overrides):
        """A [databases] entry reaching this cluster as `app` over TCP (SCRAM)."""
        e = {"host": "127.0.0.1", "port": self.port, "dbname": APP_DB, "user": APP_USER,
             "password": APP_PASSWORD}
        e.update(overrides)
        return e

    def direct_dsn(self, dbname=APP_DB, user=APP_USER, password=APP_PASSWORD, **extra):
        return make_conninfo(host="127.0.0.1", port=self.port, dbname=dbname, user=user,
                             password=password, connect_timeout=10, **extra)

    def query(self, sql, params=None, dbname="postgres"):
        with self.superuser(dbname) as c:
            return c.execute(sql, params).fetchall()

    def stored_secret(self, role):
        """The role's password as Postgres stores it (pg_authid.rolpassword): a SCRAM or md5
        secret, as an auth_file copied from the server holds it."""
        return self.query("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role])[0][0]

    def count_backends(self, usename=APP_USER, dbname=None):
        sql = ("SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
               " AND backend_type = 'client backend'")
        params = [usename]
        if dbname:
            sql += " AND datname = %s"
            params.append(dbname)
        return self.query(sql, params)[0][0]

    def backends(self, usename=APP_USER):
        return self.query(
            "SELECT pid, state, xact_start IS NOT NULL AS in_xact, query, application_name"
            " FROM pg_stat_activity WHERE usename = %s AND backend_type = 'client backend'"
            " ORDER BY pid", [usename])

    def wait_for_active(self, usename, query_substring, count=1, timeout=10):
        """Wait until `count` backends of usename are active running a query containing the
        substring; returns their pids."""
        def check():
            rows = self.query(
                "SELECT pid FROM pg_stat_activity WHERE usename = %s AND state = 'active'"
                " AND query LIKE %s", [usename, f"%{query_substring}%"])
            return [r[0] for r in rows] if len(rows) >= count else None
        return wait_until(check, timeout, what=f"{count} active '{query_substring}' backends")

    def clear_backends(self, usename=APP_USER, timeout=10):
        """Between tests: wait for a stopped sluice's backends to exit, then terminate any left."""
        try:
            wait_until(lambda: self.count_backends(usename) == 0, timeout, interval=0.1,
                       what=f"{usename} backends to go away")
        except AssertionError:
            self.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                       [usename])

    def pgbench(self, args, timeout=120, user=APP_USER, password=APP_PASSWORD, dbname=APP_DB):
        return run_tool("pgbench", ["-h", "127.0.0.1", "-p", str(self.port), "-U", user] + list(args)
                        + [dbname], password=password, timeout=timeout)

    def psql(self, sql, timeout=30, user=APP_USER, password=APP_PASSWORD, dbname=APP_DB):
        return run_psql(self.port, sql, dbname=dbname, user=user, password=password,
                        timeout=timeout)


@pytest.fixture(scope="session")
def pg():
    cluster = PgCluster()
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture
def table(pg):
    """A fresh table name in appdb owned by app (dropped afterwards)."""
    name = f"t_{os.getpid()}_{random.randrange(1 << 30)}"
    yield name
    with contextlib.suppress(Exception):
        pg.query(f"DROP TABLE IF EXISTS {name}", dbname=APP_DB)



@contextlib.contextmanager
def superuser_change(pg, do, undo):
    """Postgres changed by the superuser statement `do` while the block runs, `undo` after."""
    with pg.superuser() as c:
        c.execute(do)
    try:
        yield
    finally:
        with pg.superuser() as c:
            c.execute(undo)


@pytest.fixture
def app_may_become_app2(pg):
    """app is granted membership of app2 (SET ROLE app2) for the test."""
    with superuser_change(pg, "GRANT app2 TO app", "REVOKE app2 FROM app"):
        yield

# ---- running client tools -----------------------------------------------------------------------


def run_tool(name, args, password=None, timeout=60, input=None, env=None):
    e = dict(os.environ)
    e.update({"PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "sluice-tests"})
    for k in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE", "PGOPTIONS"):
        e.pop(k, None)
    if password is not None:
        e["PGPASSWORD"] = password
    if env:
        e.update(env)
    return subprocess.run([pg_tool(name)] + list(args), capture_output=True, text=True,
                          timeout=timeout, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL, env=e)


def run_psql(port, sql, dbname=APP_DB, user=APP_USER, password=APP_PASSWORD, timeout=30,
             args=(), env=None):
    """psql -X -At -v ON_ERROR_STOP=1 -c SQL; returns CompletedProcess (text)."""
    return run_tool("psql", ["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
                             str(port), "-U", user, "-d", dbname, "-c", sql] + list(args),
                    password=password, timeout=timeout, env=env)


# ---- sluice ---------------------------------------------------------------------------------------


def _ini_value(v):
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def _conn_value(v):
    """A value inside a [databases] connection string (libpq keyword=value syntax)."""
    s = _ini_value(v)
    if s == "" or re.search(r"[\s'\\]", s):
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return s


def render_ini(main, databases, users=None):
    lines = ["[databases]"]
    for name, entry in databases.items():
        if isinstance(entry, dict):
            entry = " ".join(f"{k}={_conn_value(v)}" for k, v in entry.items())
        lines.append(f"{name} = {entry}")
    lines += ["", "[sluice]"]
    for k, v in main.items():
        lines.append(f"{k} = {_ini_value(v)}")
    if users:
        lines += ["", "[users]"]
        for name, entry in users.items():
            if isinstance(entry, dict):
                entry = " ".join(f"{k}={_conn_value(v)}" for k, v in entry.items())
            lines.append(f"{name} = {entry}")
    return "\n".join(lines) + "\n"


def render_userlist(auth_file):
    return "".join(f'"{u}" "{p}"\n' for u, p in auth_file.items())


class Sluice:
    def __init__(self, binary, workdir, argv, env, ini_path=None):
        self.binary = binary
        self.workdir = workdir
        self.ini_path = ini_path
        self.lines = []
        self.port = None
        self.exit_code = None
        self.stop_problem = None
        self.expected_exit_codes = (0,)
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self.logfile_path = workdir / "sluice.log"
        self._logfile = open(self.logfile_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, cwd=str(workdir))
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.lines.append(line)
                self._logfile.write(line + "\n")
                self._logfile.flush()
            if self.port is None:
                m = LISTEN_RE.search(line)
                if m:
                    self.port = int(m.group(1))
                    self._listening.set()
        self.proc.stdout.close()
        self._listening.set()

    def wait_listening(self, timeout=None):
        timeout = timeout or START_TIMEOUT * timeout_scale()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._listening.wait(0.05) and self.port is not None:
                return self.port
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader collect the last lines
                break
        code = self.proc.poll()
        why = (f"exited with code {code}" if code is not None
               else f"printed no 'listening on 127.0.0.1:<port>' line within {timeout} s")
        raise AssertionError(f"sluice {why}\ncommand: {self.proc.args}\n--- log ---\n"
                             f"{self.log_tail(80)}")

    # -- log
    def _drain(self, timeout=1.0):
        """Let the reader thread take in what sluice has already written: a line logged before
        the event a test just observed (a closed socket) is in the pipe, not yet in .lines."""
        if not self._reader.is_alive():
            return
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno() if not self.proc.stdout.closed else None
        while fd is not None and time.monotonic() < deadline:
            try:
                pending = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
            except OSError:
                break
            if pending == 0:
                break
            time.sleep(0.01)
        time.sleep(0.02)  # the last chunk read may still be being split into lines

    @property
    def log(self):
        self._drain()
        with self._lock:
            return list(self.lines)

    @property
    def workers(self):
        """How many workers this sluice runs, as its start line says ("started: N workers";
        `auto` is the CPUs the process may use, so a test cannot know it beforehand)."""
        for line in self.log:
            m = re.search(r"started: (\d+) workers?", line)
            if m:
                return int(m.group(1))
        raise AssertionError(f"sluice logged no 'started: N workers' line\n{self.log_tail(20)}")

    def log_text(self):
        return "\n".join(self.log)

    def log_tail(self, n=60):
        return "\n".join(self.log[-n:]) or "(sluice printed nothing)"

    def log_since(self, mark):
        return self.log[mark:]

    def mark(self):
        self._drain()
        with self._lock:
            return len(self.lines)

    def wait_for_log(self, pattern, timeout=5, since=0):
        rx = re.compile(pattern)

        def find():
            with self._lock:
                lines = self.lines[since:]
            return next((line for line in lines if rx.search(line)), None)
        return wait_until(find, timeout, what=f"log line matching {pattern!r}")

    def sanitizer_report(self):
        lines = self.log
        for i, line in enumerate(lines):
            if any(p in line for p in SANITIZER_PATTERNS):
                start = max(0, i - 2)
                return "\n".join(lines[start:start + 120])
        return None

    # -- connecting
    def dsn(self, dbname=APP_DB, user=APP_USER, password=APP_PASSWORD, **extra):
        kw = {"host": "127.0.0.1", "port": self.port, "dbname": dbname, "user": user,
              "connect_timeout": 10}
        if password is not None:
            kw["password"] = password
        kw.update(extra)
        return make_conninfo(**kw)

    def connect(self, dbname=APP_DB, user=APP_USER, password=APP_PASSWORD, autocommit=True,
                prepare_threshold=None, **extra):
        """psycopg connection through sluice. prepare_threshold=None turns off psycopg's
        automatic server-side prepares, so only tests about prepared statements use them."""
        return psycopg.connect(self.dsn(dbname=dbname, user=user, password=password, **extra),
                               autocommit=autocommit, prepare_threshold=prepare_threshold)

    def psql(self, sql, dbname=APP_DB, user=APP_USER, password=APP_PASSWORD, timeout=30, args=()):
        return run_psql(self.port, sql, dbname=dbname, user=user, password=password,
                        timeout=timeout, args=args)

    def pgbench(self, args, dbname=APP_DB, user=APP_USER, password=APP_PASSWORD, timeout=120):
        return run_tool("pgbench", ["-h", "127.0.0.1", "-p", str(self.port), "-U", user]
                        + list(args) + [dbname], password=password, timeout=timeout)

    # -- process
    def _status_kb(self, field):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def rss_kb(self):
        return self._status_kb("VmRSS")

    def peak_rss_kb(self):
        return self._status_kb("VmHWM")

    def alive(self):
        return self.proc.poll() is None

    def send_signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        try:
            self.exit_code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(5)
        return self.exit_code

    def stop(self, sig=signal.SIGTERM, timeout=None):
        """Send sig and wait for exit; returns the exit code (negative: killed by a signal).
        If it does not exit within timeout (10 s, scaled) it is killed and the problem recorded."""
        timeout = timeout or 10 * timeout_scale()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.stop_problem = (f"sluice did not exit within {timeout} s after "
                                     f"{signal.Signals(sig).name}; killed it")
                self.proc.kill()
                self.proc.wait(10)
        self.exit_code = self.proc.returncode
        self._reader.join(5)
        with self._lock:
            if not self._logfile.closed:
                self._logfile.close()
        return self.exit_code


@pytest.fixture
def start_sluice(pg, request, tmp_path):
    """Factory: start_sluice(main=None, databases=None, users=None, auth_file=None, env=None,
    config=True, args=None, wait=True, budgets=None) -> Sluice.

    main: [sluice] keys (listen_port is forced to 0; auth_type defaults to trust, or md5 when an
    auth_file dict is given). databases: {name: dict|str}, default {'appdb': pg.db_entry()}.
    auth_file: {user: password} written as a PgBouncer userlist.txt. config=False starts sluice
    with environment variables only; dash_c=True passes the file as `-c FILE`. budgets:
    {name: rule} written as a [budgets] section after the generated config.
    $SLUICE_TEST_WORKERS=N runs every sluice whose test sets no `workers` (in main or as
    SLUICE_WORKERS in env) with N workers."""
    binary = sluice_bin()
    instances = []
    request.node._sluices = instances

    def factory(main=None, databases=None, users=None, auth_file=None, env=None, config=True,
                args=None, wait=True, dash_c=False, budgets=None):
        if not binary.exists():
            pytest.fail(f"sluice binary not found at {binary}: build it with "
                        f"`meson setup build && ninja -C build`, or set SLUICE_BIN", pytrace=False)
        n = len(instances)
        workdir = tmp_path / f"sluice{n}"
        workdir.mkdir()
        e = dict(os.environ)
        e.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        e.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
        supp = REPO / "tests" / "lsan.supp"  # leaks inside system libraries, if any need hiding
        if supp.exists():
            e.setdefault("LSAN_OPTIONS", f"suppressions={supp}:print_suppressions=0")
        # sluice reads SLUICE_<KEY> and DATABASE_URL(_FILE): only the test decides what it gets
        for k in list(e):
            if k.startswith("SLUICE_") or k in ("DATABASE_URL", "DATABASE_URL_FILE"):
                del e[k]
        if env:
            e.update({k: str(v) for k, v in env.items()})
        test_workers = os.environ.get("SLUICE_TEST_WORKERS")
        if test_workers and "workers" not in (main or {}) and "SLUICE_WORKERS" not in e:
            # every sluice the suite starts runs with this many workers unless its test chose;
            # the environment, not the file, so a test that rewrites its ini keeps the number
            e["SLUICE_WORKERS"] = test_workers
        ini_path = None
        if config:
            m = {"listen_addr": "127.0.0.1", "auth_type": "trust", "log_level": "info"}
            if auth_file is not None:
                userlist = workdir / "userlist.txt"
                userlist.write_text(render_userlist(auth_file))
                m["auth_type"] = "md5"
                m["auth_file"] = str(userlist)
            m.update(main or {})
            m["listen_port"] = 0
            dbs = databases if databases is not None else {APP_DB: pg.db_entry()}
            ini_path = workdir / "sluice.ini"
            text = render_ini(m, dbs, users)
            if budgets is not None:
                text += "\n[budgets]\n" + "".join(f"{k} = {v}\n" for k, v in budgets.items())
            ini_path.write_text(text)
            argv = [str(binary)] + (["-c"] if dash_c else []) + [str(ini_path)] + list(args or [])
        else:
            argv = [str(binary)] + list(args or [])
        s = Sluice(binary, workdir, argv, e, ini_path)
        instances.append(s)
        if wait:
            s.wait_listening()
        return s

    yield factory

    problems = []
    for s in instances:
        code = s.stop()
        if s.stop_problem:
            problems.append(s.stop_problem)
        if s.expected_exit_codes is not None and code not in s.expected_exit_codes:
            problems.append(f"sluice (pid {s.pid}) exited with code {code}, expected "
                            f"{' or '.join(map(str, s.expected_exit_codes))}")
        report = s.sanitizer_report()
        if report:
            problems.append(f"sanitizer report in sluice's stderr (pid {s.pid}):\n{report}")
        elif problems:
            problems.append(f"--- sluice log tail (pid {s.pid}) ---\n{s.log_tail(60)}")
    pg.clear_backends(APP_USER)
    pg.clear_backends("app2")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def sluice_is_sanitized():
    return binary_is_sanitized(sluice_bin())


# ---- sampling pg_stat_activity --------------------------------------------------------------------


class BackendSampler:
    """with BackendSampler(pg, 'app') as s: ...; s.max is the most backends of that user (or of
    any of a list of users; in database `datname` when given) seen at once, sampled every
    `interval` s for at most `max_seconds`; s.history holds every count."""

    def __init__(self, pg, usename=APP_USER, interval=0.05, max_seconds=180, datname=None):
        self.pg = pg
        self.usenames = [usename] if isinstance(usename, str) else list(usename)
        self.datname = datname
        self.interval = interval
        self.max_seconds = max_seconds
        self.max = 0
        self.samples = 0
        self.history = []
        self.error = None
        self._stop = threading.Event()
        self._thread = None

    def count(self, c):
        """One sample, read over the superuser connection c."""
        (n,) = c.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = ANY(%s)"
                         " AND (%s::name IS NULL OR datname = %s)"
                         " AND backend_type = 'client backend'",
                         [self.usenames, self.datname, self.datname]).fetchone()
        return n

    def _run(self):
        deadline = time.monotonic() + self.max_seconds
        try:
            with self.pg.superuser() as c:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    n = self.count(c)
                    self.samples += 1
                    self.history.append(n)
                    self.max = max(self.max, n)
                    self._stop.wait(self.interval)
        except Exception as e:  # noqa: BLE001 - reported by __exit__
            self.error = e

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        if self.error and not exc[0]:
            raise AssertionError(f"backend sampler failed: {self.error}")
        return False
