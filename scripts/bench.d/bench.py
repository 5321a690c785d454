#!/usr/bin/python3
"""The benchmark behind scripts/bench (see that file for the user-facing description).

Starts a throwaway PostgreSQL cluster, PgBouncer and sluice with equivalent settings and runs the
scenarios against direct Postgres, PgBouncer and sluice, interleaved (direct, PgBouncer, sluice,
direct, ...), for --reps repetitions. Prints a markdown report to stdout and writes it to --output.

Exit status: 0 every scenario ran and sluice passed all of them; 1 sluice failed a scenario
(pgbench error, login failure, crash, non-zero exit); 2 setup failed; 3 timed out or interrupted.
"""

import argparse
import ctypes
import datetime
import fnmatch
import json
import os
import platform
import pwd
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from variants import compare_table, is_sluice, parse_variants

HERE = Path(__file__).resolve().parent
PGCLIENT = HERE / "pgclient.py"
PY = "/usr/bin/python3"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1

BENCH_USER = "bench"
BENCH_PASSWORD = "benchpass"
TRUST_USER = "benchtrust"
BENCH_DB = "bench"
POOL_SIZE = 20
MAX_CLIENT_CONN = 11000
LISTEN_BACKLOG = 1024
MAX_CONNECTIONS = 1100  # direct mode takes 1000 clients; both pools (2 x 20) fit beside them

TARGETS = ("direct", "pgbouncer", "sluice")  # "sluice": every sluice variant (variants.py)


def target_label(target):
    return {"direct": "direct", "pgbouncer": "PgBouncer"}.get(target, target)


class BenchError(Exception):
    """Setup failed: the benchmark cannot go on."""


class Interrupted(Exception):
    pass


def log(*args):
    print("[bench]", *args, file=sys.stderr, flush=True)


# ---- processes ---------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
STARTED = []  # every long-running process we started: (name, Popen, stop_signal)


def _child_setup(deathsig):
    def pre():
        # Runs after setuid: die with us even when we are SIGKILLed.
        _libc.prctl(PR_SET_PDEATHSIG, deathsig, 0, 0, 0)

    return pre


def postgres_ids():
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def spawn(name, argv, logfile, as_postgres, stop_signal=signal.SIGTERM, deathsig=signal.SIGKILL,
          env=None, cwd=None):
    kw = {}
    if as_postgres:
        uid, gid = postgres_ids()
        kw.update(user=uid, group=gid, extra_groups=[])
    out = open(logfile, "ab")
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         preexec_fn=_child_setup(deathsig), start_new_session=True, env=env,
                         cwd=cwd, **kw)
    out.close()
    STARTED.append((name, p, stop_signal))
    return p


def stop(p, sig=signal.SIGTERM, timeout=15.0):
    """Stop one process we started; returns its exit code (negative: killed by a signal)."""
    for i, (_, q, _) in enumerate(STARTED):
        if q is p:
            del STARTED[i]
            break
    if p.poll() is None:
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
            return None  # did not stop in time
    return p.returncode


def cleanup_all():
    for name, p, sig in list(reversed(STARTED)):
        if p.poll() is None:
            log(f"stopping {name} (pid {p.pid})")
        rc = stop(p, sig, timeout=15.0)
        if rc is None:
            log(f"{name} did not stop within 15 s: killed")


# ---- /proc ---------------------------------------------------------------------------------------


def proc_cpu(pid):
    """utime + stime of the process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem(pid):
    """(VmRSS, VmHWM) in kB."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def proc_switches(pid):
    """(voluntary, involuntary) context switches of the process, summed over its live threads
    (sluice's workers each sleep in their own epoll_wait): a voluntary one is a sleep that ended
    with a wake-up, an involuntary one a preemption."""
    vol = invol = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = [str(pid)]
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except OSError:
            pass  # a thread that ended meanwhile
    return vol, invol


def reset_hwm(pid):
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine_busy():
    """Busy CPU seconds of the whole machine (every core), from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    v = [int(x) for x in parts[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def tree_cpu():
    """CPU seconds used so far by this benchmark: this process, its reaped children (pgbench, the
    helpers) and every live descendant (Postgres and its backends, the proxies) including the
    children those have reaped (ended backends). Deltas of this are "our" CPU; the rest of the
    machine's busy time during a run is other work disturbing the measurement."""
    me = os.getpid()
    kids = {}
    cpu = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2 :].split()
        pid, ppid = int(d), int(fields[1])
        kids.setdefault(ppid, []).append(pid)
        cpu[pid] = sum(int(x) for x in fields[11:15]) / CLK_TCK  # utime stime cutime cstime
    total = 0.0
    todo = list(kids.get(me, []))
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(kids.get(pid, []))
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


class CpuWatch:
    """Busy CPU of the machine and of this benchmark over one run."""

    def __init__(self):
        self.t0, self.busy0, self.ours0 = time.monotonic(), machine_busy(), tree_cpu()

    def stop(self, r):
        wall = time.monotonic() - self.t0
        busy, ours = machine_busy() - self.busy0, tree_cpu() - self.ours0
        r.ours_cpu = ours
        ncpu = os.cpu_count() or 1
        if wall > 0:
            r.other_pct = max(0.0, busy - ours) / (wall * ncpu) * 100


# ---- helpers -------------------------------------------------------------------------------------


def free_port(used):
    import random

    for _ in range(2000):
        port = random.randint(20000, 32000)
        if port in used:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        used.add(port)
        return port
    raise BenchError("no free port below 32768")


def wait_port(port, proc, timeout=15.0, what="process"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} did not accept connections on port {port} within {timeout:.0f} s")


def run(argv, timeout, env=None, check=True, **kw):
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout, env=env, **kw)
    if check and r.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r


def exit_how(rc):
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


def median(xs):
    return statistics.median(xs) if xs else None


def tail(path, n=30):
    try:
        return "".join(Path(path).read_text(errors="replace").splitlines(True)[-n:])
    except OSError:
        return ""


# ---- Postgres ------------------------------------------------------------------------------------


class Postgres:
    def __init__(self, bindir, workdir, port, scale):
        self.bindir = Path(bindir)
        self.dir = workdir / "pgdata"
        self.sock = workdir
        self.port = port
        self.scale = scale
        self.log = workdir / "postgres.log"
        self.proc = None

    def tool(self, name):
        return str(self.bindir / name)

    def start(self):
        uid, gid = postgres_ids()
        r = subprocess.run([self.tool("initdb"), "-D", str(self.dir), "-U", "postgres", "-E",
                            "UTF8", "--locale=C", "--auth-local=trust",
                            "--auth-host=scram-sha-256", "--no-sync"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                           user=uid, group=gid, extra_groups=[])
        if r.returncode != 0:
            raise BenchError(f"initdb failed: {r.stderr.strip()}")
        (self.dir / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {TRUST_USER} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        with open(self.dir / "postgresql.conf", "a") as f:
            f.write(
                f"\n# scripts/bench\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.sock}'\nmax_connections = {MAX_CONNECTIONS}\n"
                "shared_buffers = 1GB\nfsync = off\nsynchronous_commit = off\n"
                "full_page_writes = off\nmax_wal_size = 4GB\npassword_encryption = scram-sha-256\n"
                "logging_collector = off\nlog_min_messages = warning\n"
                "log_min_error_statement = panic\n"
            )
        self.proc = spawn("postgres", [self.tool("postgres"), "-D", str(self.dir)], self.log,
                          as_postgres=True, stop_signal=signal.SIGINT, deathsig=signal.SIGQUIT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"postgres exited while starting:\n{tail(self.log)}")
            r = subprocess.run([self.tool("pg_isready"), "-q", "-h", str(self.sock), "-p",
                                str(self.port)], stdin=subprocess.DEVNULL, capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise BenchError(f"postgres did not start:\n{tail(self.log)}")

    def psql(self, sql, db="postgres", user="postgres"):
        r = run([self.tool("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h",
                 str(self.sock), "-p", str(self.port), "-U", user, "-d", db, "-c", sql],
                timeout=300)
        return r.stdout.strip()

    def setup(self):
        self.psql(f"CREATE ROLE {BENCH_USER} LOGIN PASSWORD '{BENCH_PASSWORD}'")
        self.psql(f"CREATE ROLE {TRUST_USER} LOGIN")
        self.psql(f"CREATE DATABASE {BENCH_DB} OWNER {BENCH_USER}")
        t0 = time.monotonic()
        run([self.tool("pgbench"), "-i", "-q", "-s", str(self.scale), "-h", str(self.sock), "-p",
             str(self.port), "-U", BENCH_USER, BENCH_DB], timeout=900)
        log(f"pgbench -i -s {self.scale}: {time.monotonic() - t0:.1f} s")
        self.psql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {TRUST_USER}", db=BENCH_DB)
        self.psql("CHECKPOINT")
        return self.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{BENCH_USER}'")

    def version(self):
        return self.psql("SHOW server_version")


# ---- proxies -------------------------------------------------------------------------------------


class Proxy:
    """One PgBouncer or sluice process with a generated config (sluice: one variant's binary and
    extra [sluice] lines, its files named by the variant's slug)."""

    def __init__(self, kind, binary, workdir, port, pg_port, auth, slug=None, extra=()):
        self.kind = kind
        self.binary = binary
        self.workdir = workdir
        self.port = port
        self.pg_port = pg_port
        self.auth = auth  # "scram-sha-256" or "trust"
        self.extra = list(extra)
        slug = slug or kind
        self.ini = workdir / f"{slug}-{auth}.ini"
        self.log = workdir / f"{slug}.log"
        self.proc = None
        self.failures = []  # crash / exit-code problems

    def config(self):
        dbline = (f"{BENCH_DB} = host=127.0.0.1 port={self.pg_port} dbname={BENCH_DB} "
                  f"user={BENCH_USER} password={BENCH_PASSWORD}")
        common = (
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = {self.auth}\nauth_file = {self.workdir / 'userlist.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {POOL_SIZE}\n"
            f"max_client_conn = {MAX_CLIENT_CONN}\nlisten_backlog = {LISTEN_BACKLOG}\n"
            "log_connections = 0\nlog_disconnections = 0\n"
        )
        if self.kind == "pgbouncer":
            return (f"[databases]\n{dbline}\n\n[pgbouncer]\n{common}log_stats = 0\n"
                    "server_tls_sslmode = disable\n")
        extra = "".join(f"{ln}\n" for ln in self.extra)
        return (f"[sluice]\n{common}stats_period = 0\nlog_level = warning\n"
                f"server_tls_sslmode = disable\n{extra}\n[databases]\n{dbline}\n")

    def start(self):
        self.ini.write_text(self.config())
        uid, gid = postgres_ids()
        os.chown(self.ini, uid, gid)
        with open(self.log, "a") as f:
            f.write(f"\n==== start ({self.auth}) {datetime.datetime.now().isoformat()} ====\n")
        self.proc = spawn(self.kind, [str(self.binary), str(self.ini)], self.log, as_postgres=True)
        wait_port(self.port, self.proc, what=self.kind)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        died_before = self.proc.poll()
        rc = stop(self.proc, signal.SIGTERM)
        if self.kind == "sluice" and rc != 0:
            if rc is None:
                why = "did not stop within 15 s of SIGTERM (killed)"
            else:
                how = exit_how(rc)
                why = (f"had died ({how}) before it was stopped" if died_before is not None
                       else f"ended with {how} on SIGTERM (expected exit code 0)")
            self.failures.append(f"sluice {why}; see bench-logs/{self.log.name}")
        self.proc = None


# ---- scenarios -----------------------------------------------------------------------------------


class Scenario:
    def __init__(self, name, kind, desc, **kw):
        self.name = name
        self.kind = kind  # pgbench | idle | copy
        self.desc = desc
        self.auth = kw.pop("auth", "scram-sha-256")
        self.pgbench = kw.pop("pgbench", [])
        self.clients = kw.pop("clients", 0)
        self.jobs = kw.pop("jobs", 1)
        self.unit = kw.pop("unit", "tx")
        self.n = kw.pop("n", 0)
        self.bytes = kw.pop("bytes", 0)
        self.targets = kw.pop("targets", TARGETS)
        self.note = kw.pop("note", "")
        assert not kw, kw


def scenarios(quick):
    out = []
    clients = (1, 16) if quick else (1, 16, 100, 1000)
    for mode in ("simple", "extended"):
        for c in clients:
            j = 1 if c == 1 else 2
            out.append(Scenario(f"select-{mode}-c{c}", "pgbench",
                                f"pgbench -S -M {mode} -c {c} -j {j}",
                                pgbench=["-S", "-M", mode, "-n"], clients=c, jobs=j))
    out.append(Scenario("prepared-c16", "pgbench", "pgbench -S -M prepared -c 16 -j 16",
                        pgbench=["-S", "-M", "prepared", "-n"], clients=16, jobs=16))
    temp_path = HERE / "temp_path.sql"
    out.append(Scenario("temp-path-c16", "pgbench",
                        "pgbench -M prepared -c 16 -j 2, search_path naming pg_temp in each "
                        "transaction (temp_path.sql; sluice resets temporary objects after each)",
                        pgbench=["-f", str(temp_path), "-M", "prepared", "-n"], clients=16,
                        jobs=2))
    tc = 16 if quick else 32
    out.append(Scenario(f"tpcb-c{tc}", "pgbench", f"pgbench (TPC-B-like) -M simple -c {tc} -j {tc}",
                        pgbench=["-M", "simple"], clients=tc, jobs=tc))
    out.append(Scenario("storm-trust-c16", "pgbench",
                        "pgbench -C -S -c 16 -j 2, auth trust (per new connection)",
                        pgbench=["-C", "-S", "-M", "simple", "-n"], clients=16, jobs=2,
                        auth="trust", unit="conn"))
    out.append(Scenario("storm-scram-c16", "pgbench",
                        "pgbench -C -S -c 16 -j 2, auth scram-sha-256 (per new connection)",
                        pgbench=["-C", "-S", "-M", "simple", "-n"], clients=16, jobs=2,
                        unit="conn"))
    for n in ((100,) if quick else (1000, 10000)):
        out.append(Scenario(f"idle-{n}", "idle", f"{n} idle logged-in clients (scram-sha-256)",
                            n=n, targets=("pgbouncer", "sluice")))
    size = 50 * 10**6 if quick else 10**9
    label = "50mb" if quick else "1gb"
    out.append(Scenario(f"copy-{label}", "copy",
                        f"COPY ... TO STDOUT of {size // 10**6} MB to a slow reader",
                        bytes=size))
    return out


def select(all_scenarios, patterns):
    if not patterns:
        return all_scenarios
    pats = [p for arg in patterns for p in arg.split(",") if p]
    names = {s.name for s in all_scenarios}

    def match(name, p):
        if p in names:  # an exact name selects only itself
            return name == p
        return fnmatch.fnmatch(name, p) or name.startswith(p)

    return [s for s in all_scenarios if any(match(s.name, p) for p in pats)]


# ---- runs ----------------------------------------------------------------------------------------


def connect_allowance(sc):
    """pgbench's -T clock starts before its clients have connected (1000 clients with SCRAM take
    seconds to log in; 1000 new Postgres backends take 10-15 s here), so many clients get extra
    seconds; pgbench's tps excludes that time."""
    if "-C" in sc.pgbench or sc.clients < 100:
        return 0
    return -(-sc.clients * 12 // 1000)  # 100 -> 2 s, 1000 -> 12 s, whatever the target


PGB_ERR_RE = re.compile(r"(ERROR|FATAL|error|could not|aborted)")


def parse_pgbench(stdout, stderr):
    def num(pat, text=stdout, conv=float):
        m = re.search(pat, text, re.M)
        return conv(m.group(1)) if m else None

    res = {
        "tps": num(r"^tps = ([\d.]+)"),
        "tx": num(r"^number of transactions actually processed: (\d+)", conv=int),
        "failed_tx": num(r"^number of failed transactions: (\d+)", conv=int) or 0,
        "lat_ms": num(r"^latency average = ([\d.]+) ms"),
        "conn_ms": num(r"^(?:initial connection time|average connection time) = ([\d.]+) ms"),
    }
    aborted = re.findall(r"client \d+ aborted", stderr)
    res["aborted"] = len(aborted)
    errs = [ln.strip() for ln in stderr.splitlines() if PGB_ERR_RE.search(ln)]
    res["errors"] = errs
    return res


class Run:
    """Result of one (scenario, repetition, target)."""

    def __init__(self, scenario, rep, target):
        self.scenario = scenario
        self.rep = rep
        self.target = target
        self.ok = False
        self.error = None
        self.value = None  # tps / conn per s / MB/s
        self.tx = None
        self.lat_ms = None
        self.proxy_cpu = None  # seconds
        self.cpu_per_unit_us = None
        self.ours_cpu = None  # seconds: pgbench + Postgres + proxies + helpers
        self.ours_cpu_per_unit_us = None
        self.other_pct = None  # busy CPU of other work on the machine, % of all CPUs
        self.vol_csw_per_unit = None  # the proxy's sleeps ended by a wake-up, per tx/conn
        self.invol_csw_per_unit = None  # the proxy's preemptions, per tx/conn
        self.peak_rss_kb = None
        self.rss_growth_kb = None
        self.kb_per_client = None
        self.rss_after_kb = None
        self.extra = ""


class Bench:
    def __init__(self, args):
        self.a = args
        self.runs = []
        self.notes = []
        self.sluice_failed = []
        self.ports = set()

    # -- one pgbench run
    def pgbench(self, sc, rep, target, port, proxy):
        r = Run(sc, rep, target)
        user = BENCH_USER
        if sc.auth == "trust" and target == "direct":
            user = TRUST_USER
        argv = [self.pg.tool("pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", user,
                *sc.pgbench, "-c", str(sc.clients), "-j", str(sc.jobs), "-T",
                str(self.a.duration + connect_allowance(sc)), BENCH_DB]
        env = dict(os.environ, PGPASSWORD=BENCH_PASSWORD, PGSSLMODE="disable",
                   PGCONNECT_TIMEOUT="60", PGAPPNAME="pgbench")
        timeout = self.a.duration + 120 + sc.clients * 0.1
        if proxy:
            reset_hwm(proxy.pid)
            cpu0 = proc_cpu(proxy.pid)
            csw0 = proc_switches(proxy.pid)
        watch = CpuWatch()
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=timeout, env=env)
            out, err, rc = p.stdout, p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = (e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or ""))
            err += f"\npgbench timed out after {timeout:.0f} s"
            rc = -1
        time.sleep(0.2)  # let the proxy finish closing the clients
        watch.stop(r)
        res = parse_pgbench(out, err)
        r.value, r.tx, r.lat_ms = res["tps"], res["tx"], res["lat_ms"]
        if proxy:
            if proxy.alive():
                r.proxy_cpu = proc_cpu(proxy.pid) - cpu0
                csw = [b - a for a, b in zip(csw0, proc_switches(proxy.pid))]
                r.peak_rss_kb = proc_mem(proxy.pid)[1]
            else:
                res["errors"].insert(0, f"{proxy.kind} died ({exit_how(proxy.proc.returncode)})")
                rc = rc or -1
        problems = []
        if rc != 0:
            problems.append(f"pgbench exit code {rc}")
        if res["aborted"]:
            problems.append(f"{res['aborted']} of {sc.clients} clients aborted")
        if res["failed_tx"]:
            problems.append(f"{res['failed_tx']} failed transactions")
        if not r.tx:
            problems.append("no transactions" + (f" within -T {argv[argv.index('-T') + 1]} s "
                                                 "(logins took longer?)" if rc == 0 else ""))
        if problems:
            first = next((e for e in res["errors"] if "ERROR" in e or "FATAL" in e or "died" in e),
                         res["errors"][0] if res["errors"] else "")
            r.error = "; ".join(problems) + (f": {first}" if first else "")
            (self.workdir / "pgbench-failures.log").open("a").write(
                f"==== {sc.name} rep {rep} {target}: {shlex.join(argv)}\n{out}\n{err}\n")
        else:
            r.ok = True
        if r.tx:
            if r.proxy_cpu is not None:
                r.cpu_per_unit_us = r.proxy_cpu / r.tx * 1e6
                r.vol_csw_per_unit, r.invol_csw_per_unit = (n / r.tx for n in csw)
            r.ours_cpu_per_unit_us = r.ours_cpu / r.tx * 1e6
        return r

    # -- idle connections
    def idle(self, sc, rep, target, port, proxy):
        r = Run(sc, rep, target)
        base = [PY, str(PGCLIENT), "idle", "--port", str(port), "--user", BENCH_USER,
                "--password", BENCH_PASSWORD, "--db", BENCH_DB, "--timeout", "120"]
        # warm-up: one login so pools and lazily created state exist before "before"
        w = subprocess.Popen(base + ["--n", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        try:
            line = w.stdout.readline()
            w.stdin.close()
            w.wait(30)
        finally:
            if w.poll() is None:
                w.kill()
        time.sleep(0.3)
        rss0, _ = proc_mem(proxy.pid)
        reset_hwm(proxy.pid)
        cpu0 = proc_cpu(proxy.pid)
        watch = CpuWatch()
        h = subprocess.Popen(base + ["--n", str(sc.n)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
        STARTED.append(("pgclient idle", h, signal.SIGTERM))
        try:
            line = h.stdout.readline()
            try:
                info = json.loads(line)
            except ValueError:
                info = {"ready": 0, "failed": sc.n, "first_error": f"helper said {line!r}"}
            time.sleep(0.5)
            watch.stop(r)
            if proxy.alive():
                rss1, hwm1 = proc_mem(proxy.pid)
                r.proxy_cpu = proc_cpu(proxy.pid) - cpu0
            else:
                rss1 = hwm1 = None
        finally:
            try:
                h.stdin.close()
            except OSError:
                pass
            stop(h, signal.SIGTERM, timeout=60)
        r.tx = info.get("ready")
        r.extra = f"login {info.get('seconds', 0):.1f} s"
        if not proxy.alive():
            r.error = f"{proxy.kind} died ({exit_how(proxy.proc.returncode)})"
        elif info.get("failed"):
            r.error = f"{info['failed']} of {sc.n} logins failed: {info.get('first_error')}"
        else:
            r.ok = True
        if rss1 is not None and r.tx:
            r.rss_after_kb = rss1
            r.peak_rss_kb = hwm1
            r.rss_growth_kb = rss1 - rss0
            r.kb_per_client = (rss1 - rss0) / r.tx
            r.cpu_per_unit_us = r.proxy_cpu / r.tx * 1e6
        return r

    # -- COPY to a slow reader
    def copy(self, sc, rep, target, port, proxy):
        r = Run(sc, rep, target)
        argv = [PY, str(PGCLIENT), "copy", "--port", str(port), "--user", BENCH_USER,
                "--password", BENCH_PASSWORD, "--db", BENCH_DB, "--bytes", str(sc.bytes),
                "--rate", str(self.a.copy_rate), "--timeout", "60"]
        timeout = sc.bytes / (self.a.copy_rate * 1e6) * 3 + 60
        if proxy:
            rss0, _ = proc_mem(proxy.pid)
            reset_hwm(proxy.pid)
            cpu0 = proc_cpu(proxy.pid)
        watch = CpuWatch()
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=timeout)
            try:
                info = json.loads(p.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                info = {"error": f"helper output {p.stdout!r} {p.stderr[-500:]!r}"}
        except subprocess.TimeoutExpired:
            info = {"error": f"COPY did not finish within {timeout:.0f} s"}
        watch.stop(r)
        if proxy:
            if proxy.alive():
                _, hwm1 = proc_mem(proxy.pid)
                r.proxy_cpu = proc_cpu(proxy.pid) - cpu0
                r.peak_rss_kb = hwm1
                r.rss_growth_kb = hwm1 - rss0
            else:
                info["error"] = f"{proxy.kind} died ({exit_how(proxy.proc.returncode)})"
        got = info.get("bytes") or 0
        expected_rows = max(1, sc.bytes // 1001)
        if info.get("error"):
            r.error = info["error"]
        elif info.get("rows") != expected_rows:
            r.error = f"got {info.get('rows')} rows, expected {expected_rows}"
        else:
            r.ok = True
        if got and info.get("seconds"):
            r.value = got / 1e6 / info["seconds"]
            r.tx = got
            if r.proxy_cpu is not None:
                r.cpu_per_unit_us = r.proxy_cpu / (got / 1e9) * 1e6  # µs per GB
        return r

    # -- driver
    def start_proxies(self, auth):
        """{target: Proxy}: PgBouncer and every sluice variant."""
        px = {}
        px["pgbouncer"] = Proxy("pgbouncer", self.a.pgbouncer, self.workdir,
                                free_port(self.ports), self.pg.port, auth).start()
        for v in self.variants:
            px[v.target] = Proxy("sluice", self.pinned[v.target], self.workdir,
                                 free_port(self.ports), self.pg.port, auth, v.slug,
                                 v.extra).start()
        return px

    def targets(self, sc):
        """The scenario's targets with "sluice" expanded to every variant, in run order."""
        return [t for target in sc.targets
                for t in ([v.target for v in self.variants] if target == "sluice" else [target])]

    def stop_proxies(self, px, sc):
        for target, p in px.items():
            p.stop()
            for f in p.failures:
                self.notes.append(f"{sc.name}: {f}")
                if is_sluice(target):
                    self.sluice_failed.append(f"{sc.name}: {target}: {f}")
            p.failures.clear()

    def run_scenario(self, sc):
        fresh_each_rep = sc.kind in ("idle",)
        px = None
        try:
            for rep in range(1, self.a.reps + 1):
                if px is None or fresh_each_rep:
                    if px is not None:
                        self.stop_proxies(px, sc)
                    px = self.start_proxies(sc.auth)
                for target in self.targets(sc):
                    proxy = px.get(target)
                    if proxy is not None and not proxy.alive():
                        # it died in an earlier run: report it, start it again for this one
                        self.stop_proxies({target: proxy}, sc)
                        proxy.start()
                    port = self.pg.port if target == "direct" else proxy.port
                    fn = {"pgbench": self.pgbench, "idle": self.idle, "copy": self.copy}[sc.kind]
                    t0 = time.monotonic()
                    r = fn(sc, rep, target, port, proxy)
                    self.runs.append(r)
                    status = "ok" if r.ok else f"FAILED: {r.error}"
                    val = "" if r.value is None else f" {r.value:.1f}"
                    if r.cpu_per_unit_us is None:
                        cpu = ""
                    elif sc.kind == "copy":
                        cpu = f" cpu {r.cpu_per_unit_us / 1e6:.2f} s/GB"
                    else:
                        unit = {"pgbench": sc.unit, "idle": "login"}[sc.kind]
                        cpu = f" cpu {r.cpu_per_unit_us:.1f} us/{unit}"
                    kbpc = "" if r.kb_per_client is None else f" {r.kb_per_client:.2f} kB/client"
                    other = "" if r.other_pct is None else f", other work {r.other_pct:.0f}%"
                    log(f"{sc.name} rep {rep} {target}:{val}{cpu}{kbpc} "
                        f"({time.monotonic() - t0:.1f} s{other}) {status}")
                    if not r.ok and is_sluice(target):
                        self.sluice_failed.append(f"{sc.name} rep {rep} {target}: {r.error}")
        finally:
            if px is not None:
                self.stop_proxies(px, sc)

    def main(self):
        a = self.a
        self.workdir = Path(tempfile.mkdtemp(prefix="sluice-bench."))
        uid, gid = postgres_ids()
        os.chown(self.workdir, uid, gid)
        os.chmod(self.workdir, 0o755)
        log(f"workdir {self.workdir}")
        # the binaries under test, pinned for the whole run (others may rebuild meanwhile)
        self.pinned = {}
        for v in self.variants:
            self.pinned[v.target] = self.workdir / v.slug
            shutil.copy2(v.binary, self.pinned[v.target])
            os.chmod(self.pinned[v.target], 0o755)

        self.pg = Postgres(a.pg_bin, self.workdir, free_port(self.ports), a.scale)
        self.started_at = datetime.datetime.now(datetime.timezone.utc)
        t0 = time.monotonic()
        self.pg.start()
        scram_secret = self.pg.setup()
        userlist = self.workdir / "userlist.txt"
        userlist.write_text(f'"{BENCH_USER}" "{scram_secret}"\n')
        os.chown(userlist, uid, gid)
        os.chmod(userlist, 0o600)
        log(f"postgres ready on port {self.pg.port} ({time.monotonic() - t0:.1f} s)")

        for sc in self.chosen:
            self.run_scenario(sc)
        self.elapsed = time.monotonic() - t0


# ---- report --------------------------------------------------------------------------------------


def fmt_num(x, unit=""):
    if x is None:
        return "–"
    if x >= 1000:
        s = f"{x:,.0f}"
    elif x >= 100:
        s = f"{x:.0f}"
    elif x >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.2f}"
    return s + unit


def cell(runs, attr, unit=""):
    """median ±half-range% over the successful runs; failures are named."""
    good = [getattr(r, attr) for r in runs if r.ok and getattr(r, attr) is not None]
    bad = [r for r in runs if not r.ok]
    if not runs:
        return "n/a", None
    if not good:
        return "**failed**", None
    m = median(good)
    s = fmt_num(m, unit)
    if len(good) > 1 and max(good) != min(good):
        spread = (max(good) - min(good)) / 2 / abs(m) * 100 if m else float("inf")
        if spread > 100:  # a median near zero: a percentage says nothing, show the range
            s += f" ({fmt_num(min(good))}–{fmt_num(max(good))})"
        else:
            s += f" ±{spread:.0f}%" if spread >= 1 else f" ±{spread:.1f}%"
    if bad:
        s += f" ({len(bad)}/{len(runs)} failed)"
    return s, m


def ratio(x, y):
    if x is None or y is None or y == 0:
        return "–"
    return f"{x / y:.2f}"


def report(b, argv, versions):
    a = b.a
    lines = []
    w = lines.append
    now = b.started_at.strftime("%Y-%m-%d %H:%M UTC")
    try:
        cpu_model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                         if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu_model = platform.processor() or "unknown"
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    w("# sluice benchmark")
    w("")
    w(f"- command: `{argv}`")
    w(f"- date: {now}; took {b.elapsed / 60:.1f} min")
    w(f"- machine: {os.cpu_count()} CPUs ({cpu_model}), {mem_gb:.0f} GiB RAM, Linux "
      f"{platform.release()}; loopback TCP; everything (Postgres, proxies, pgbench) shares the "
      "same CPUs")
    others = [r.other_pct for r in b.runs if r.other_pct is not None]
    if others:
        avg, worst = sum(others) / len(others), max(others)
        w(f"- other work on the machine during the runs (busy CPU not used by the benchmark, % of "
          f"all CPUs): mean {avg:.0f}%, worst {worst:.0f}%; load average at start "
          f"{b.load_start:.2f}"
          + ("; **the machine was shared with other work: treat differences within the spread "
             "as noise**" if avg > 5 or worst > 25 else ""))
    w(f"- versions: PostgreSQL {versions['postgres']}, {versions['pgbouncer']}, "
      f"sluice {versions['sluice']}")
    if len(b.variants) > 1 or b.variants[0].extra:
        w("- sluice variants, run one after the other in each repetition: " + "; ".join(
            f"{v.target} = `{v.binary}`"
            + (" with " + ", ".join(f"`{ln}`" for ln in v.extra) if v.extra else "")
            for v in b.variants))
    w(f"- runs: {a.reps} repetition(s) of {a.duration} s per scenario and target, interleaved "
      "direct → PgBouncer → sluice; cells are the median ± half the min–max range "
      "(relative to the median; the range itself when that exceeds 100%); pgbench's -T clock includes its logins, so runs with 100 or "
      "more clients get extra seconds for them (100: +2 s, 1000: +12 s, every target) and their "
      "tps is "
      "pgbench's \"without initial connection time\"")
    w(f"- both proxies: pool_mode=transaction, default_pool_size={POOL_SIZE}, one pool (forced "
      f"user in [databases]), max_client_conn={MAX_CLIENT_CONN}, listen_backlog="
      f"{LISTEN_BACKLOG}, auth_type=scram-sha-256 (trust in storm-trust) with the same "
      "userlist.txt holding the SCRAM secret copied from pg_authid, server_tls_sslmode=disable, "
      "log_connections=0, log_disconnections=0; every other setting (pkt_buf, ...) is each "
      "proxy's default; both run as user postgres with RLIMIT_NOFILE "
      f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")
    w(f"- Postgres: max_connections={MAX_CONNECTIONS}, shared_buffers=1GB, fsync=off, "
      f"synchronous_commit=off, full_page_writes=off; pgbench scale {a.scale}; clients connect "
      "over TCP with scram-sha-256 (trust: role benchtrust), PGSSLMODE=disable")
    w("- proxy CPU = utime+stime of the proxy process (/proc/PID/stat) over the whole pgbench "
      "run, connection setup included, divided by the transactions (storms: connections) "
      "pgbench completed; peak RSS = VmHWM during the run (reset before it via clear_refs)")
    w("")

    by = {}
    for r in b.runs:
        by.setdefault(r.scenario.name, {}).setdefault(r.target, []).append(r)

    pgb_scen = [s for s in b.chosen if s.kind == "pgbench"]
    if pgb_scen:
        w("## Throughput and proxy cost")
        w("")
        w("| scenario | direct tps | PgBouncer tps | sluice tps | sluice/PgBouncer | "
          "sluice/direct | PgBouncer CPU µs/tx | sluice CPU µs/tx | sluice/PgBouncer CPU | "
          "PgBouncer peak RSS MB | sluice peak RSS MB | wake-ups per tx PgBouncer / sluice | "
          "preemptions per tx PgBouncer / sluice |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for sc, v in ((sc, v) for sc in pgb_scen for v in b.variants):
            t = by.get(sc.name, {})
            d, dm = cell(t.get("direct", []), "value")
            p, pm = cell(t.get("pgbouncer", []), "value")
            s, sm = cell(t.get(v.target, []), "value")
            pc, pcm = cell(t.get("pgbouncer", []), "cpu_per_unit_us")
            scc, scm = cell(t.get(v.target, []), "cpu_per_unit_us")
            pr, _ = cell([_mb(r) for r in t.get("pgbouncer", [])], "mb")
            sr, _ = cell([_mb(r) for r in t.get(v.target, [])], "mb")
            pair = ("pgbouncer", v.target)
            wake = " / ".join(cell(t.get(k, []), "vol_csw_per_unit")[0] for k in pair)
            preempt = " / ".join(cell(t.get(k, []), "invol_csw_per_unit")[0] for k in pair)
            name = f"`{sc.name}`{variant_tag(b, v)} {sc.desc}"
            if sc.unit == "conn":
                name += " — tps = connections/s, CPU per connection"
            w(f"| {name} | {d} | {p} | {s} | {ratio(sm, pm)} | {ratio(sm, dm)} | {pc} | {scc} | "
              f"{ratio(scm, pcm)} | {pr} | {sr} | {wake} | {preempt} |")
        w("")
        w("wake-ups = the proxy's voluntary context switches (a sleep in epoll_wait ended by an "
          "event), preemptions = its involuntary ones (/proc/PID/status), per transaction "
          "(storms: connection): a proxy pays a wake-up's cost and a preempted one waits with "
          "work queued.")
        w("")

    idle_scen = [s for s in b.chosen if s.kind == "idle"]
    if idle_scen:
        w("## Idle clients (memory per logged-in client)")
        w("")
        w("| scenario | PgBouncer kB/client | sluice kB/client | sluice/PgBouncer | "
          "PgBouncer RSS after, MB | sluice RSS after, MB | PgBouncer CPU µs/login | "
          "sluice CPU µs/login |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for sc, v in ((sc, v) for sc in idle_scen for v in b.variants):
            t = by.get(sc.name, {})
            p, pm = cell(t.get("pgbouncer", []), "kb_per_client")
            s, sm = cell(t.get(v.target, []), "kb_per_client")
            pa, _ = cell([_mb(r, "rss_after_kb") for r in t.get("pgbouncer", [])], "mb")
            sa, _ = cell([_mb(r, "rss_after_kb") for r in t.get(v.target, [])], "mb")
            pc, _ = cell(t.get("pgbouncer", []), "cpu_per_unit_us")
            scc, _ = cell(t.get(v.target, []), "cpu_per_unit_us")
            w(f"| `{sc.name}`{variant_tag(b, v)} {sc.desc} | {p} | {s} | {ratio(sm, pm)} | {pa} | {sa} | {pc} | "
              f"{scc} |")
        w("")
        w("kB/client = (VmRSS with all clients logged in and idle − VmRSS after one warm-up "
          "login) / clients; a fresh proxy process for every repetition; direct Postgres is not "
          "measured (a backend process per client).")
        w("")

    copy_scen = [s for s in b.chosen if s.kind == "copy"]
    if copy_scen:
        w("## COPY to a slow reader")
        w("")
        w("| scenario | direct MB/s | PgBouncer MB/s | sluice MB/s | PgBouncer peak RSS growth MB "
          "| sluice peak RSS growth MB | sluice/PgBouncer RSS growth | PgBouncer CPU s/GB | "
          "sluice CPU s/GB |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for sc, v in ((sc, v) for sc in copy_scen for v in b.variants):
            t = by.get(sc.name, {})
            d, _ = cell(t.get("direct", []), "value")
            p, _ = cell(t.get("pgbouncer", []), "value")
            s, _ = cell(t.get(v.target, []), "value")
            pg_, pgm = cell([_mb(r, "rss_growth_kb") for r in t.get("pgbouncer", [])], "mb")
            sg, sgm = cell([_mb(r, "rss_growth_kb") for r in t.get(v.target, [])], "mb")
            pc, _ = cell([_scale(r, "cpu_per_unit_us", 1e-6) for r in t.get("pgbouncer", [])], "x")
            scc, _ = cell([_scale(r, "cpu_per_unit_us", 1e-6)
                           for r in t.get(v.target, [])], "x")
            w(f"| `{sc.name}`{variant_tag(b, v)} {sc.desc} | {d} | {p} | {s} | {pg_} | {sg} | {ratio(sgm, pgm)} | "
              f"{pc} | {scc} |")
        w("")
        w(f"The reader (raw socket, SO_RCVBUF 64 kB) reads at most {a.copy_rate:g} MB/s, so the "
          "proxy has to hold back the server; peak RSS growth = VmHWM during the COPY − VmRSS "
          "before it.")
        w("")

    lines.extend(compare_table(by, pgb_scen, b.variants))

    fails = [r for r in b.runs if not r.ok]
    w("## Failures and notes")
    w("")
    if not fails and not b.notes:
        w("None: every run of every scenario succeeded against every target.")
    for r in fails:
        w(f"- `{r.scenario.name}` rep {r.rep}, {target_label(r.target)}: {r.error}")
    for n in b.notes:
        w(f"- {n}")
    for kind, path in ([(v.target, b.workdir / f"{v.slug}.log") for v in b.variants]
                       + [("PgBouncer", b.workdir / "pgbouncer.log")]):
        msgs = log_problems(path, kind)
        if msgs:
            w(f"- {kind} log: " + "; ".join(msgs))
    w("")

    w("<details><summary>every run</summary>")
    w("")
    w("| scenario | rep | target | tps or MB/s | done | latency ms | proxy CPU s | proxy CPU "
      "µs/unit | wake-ups/unit | preemptions/unit | benchmark CPU µs/unit | peak RSS MB | "
      "other work % | status |")
    w("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in b.runs:
        w(f"| {r.scenario.name} | {r.rep} | {r.target} | {fmt_num(r.value)} | "
          f"{r.tx if r.tx is not None else '–'} | {fmt_num(r.lat_ms)} | "
          f"{fmt_num(r.proxy_cpu)} | {fmt_num(r.cpu_per_unit_us)} | "
          f"{fmt_num(r.vol_csw_per_unit)} | {fmt_num(r.invol_csw_per_unit)} | "
          f"{fmt_num(r.ours_cpu_per_unit_us)} | "
          f"{fmt_num(r.peak_rss_kb / 1024 if r.peak_rss_kb else None)} | "
          f"{fmt_num(r.other_pct)} | "
          f"{'ok' if r.ok else 'FAILED: ' + (r.error or '').replace('|', '/')} "
          f"{r.extra} |")
    w("")
    w("benchmark CPU = CPU of everything this benchmark runs (pgbench, Postgres and its backends, "
      "both proxies, helpers) per transaction (storms: connection); other work = busy CPU of the "
      "machine not used by the benchmark during the run, in % of all CPUs.")
    w("")
    w("</details>")
    w("")
    return "\n".join(lines)


def variant_tag(b, v):
    """A row's variant, named after the scenario when there is more than one."""
    return "" if len(b.variants) == 1 else f" **{v.target}**"


class _Box:
    def __init__(self, ok, **kw):
        self.ok = ok
        self.__dict__.update(kw)


def _mb(r, attr="peak_rss_kb"):
    v = getattr(r, attr)
    return _Box(r.ok, mb=None if v is None else v / 1024)


def _scale(r, attr, f):
    v = getattr(r, attr)
    return _Box(r.ok, x=None if v is None else v * f)


def log_problems(path, kind):
    """Counts of warning/error lines in a proxy's log, with a few distinct examples."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    pat = re.compile(r"\b(ERROR|FATAL|PANIC|WARNING|error|warning)\b|AddressSanitizer|runtime error")
    seen = {}
    for ln in text.splitlines():
        if ln.startswith("==== start") or not pat.search(ln):
            continue
        key = re.sub(r"\d+", "N", ln.split(" ", 2)[-1])[:160]
        seen.setdefault(key, [0, ln.strip()[:300]])[0] += 1
    out = []
    for _, (count, example) in sorted(seen.items(), key=lambda kv: -kv[1][0])[:6]:
        out.append(f"{count}× `{example.replace('`', '')}`")
    return out


# ---- main ----------------------------------------------------------------------------------------

REPO = HERE.parent.parent


def sluice_version(binary, repo=True):
    """The binary's --version, and (repo) this checkout's commit, which built it."""
    if not repo:
        try:
            out = run([binary, "--version"], timeout=10).stdout.strip().replace("sluice ", "")
        except Exception:  # noqa: BLE001
            out = "?"
        return f"{out} (binary {binary})"
    parts = []
    try:
        parts.append(run([binary, "--version"], timeout=10).stdout.strip().replace("sluice ", ""))
    except Exception:  # noqa: BLE001
        parts.append("?")
    try:
        rev = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], timeout=10).stdout
        dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                    timeout=30).stdout.strip()
        parts.append(f"(git {rev.strip()}{', with uncommitted changes' if dirty else ''}; "
                     f"binary {binary})")
    except Exception:  # noqa: BLE001
        parts.append(f"(binary {binary})")
    return " ".join(parts)



def main():
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: ~1 s per run, 1 repetition, 1 and 16 clients, idle 100, "
                        "COPY 50 MB")
    p.add_argument("--duration", type=int, help="seconds per pgbench run (default 10; quick 1)")
    p.add_argument("--reps", type=int, help="repetitions (default 3; quick 1)")
    p.add_argument("--only", action="append", default=[],
                   help="run only scenarios matching NAME (prefix or glob; repeatable, comma "
                        "separated); --list shows them")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--scale", type=int, help="pgbench scale (default 32; quick 1)")
    p.add_argument("--copy-rate", type=float, default=None,
                   help="MB/s the slow COPY reader accepts (default 64)")
    p.add_argument("--sluice-bin", required=True,
                   help="the sluice binary to measure (scripts/bench builds build-bench/sluice, "
                        "release, when this is not given)")
    p.add_argument("--workers", help="measure the sluice binary once per count, with `workers = N` "
                   "(comma separated: 1,2 gives targets 'sluice w=1' and 'sluice w=2')")
    p.add_argument("--sluice-extra", action="append", default=[], metavar="LINE",
                   help="a config line for the [sluice] section of the binary under test "
                        "(repeatable)")
    p.add_argument("--sluice-also", action="append", default=[], metavar="LABEL=PATH",
                   help="another sluice binary measured in the same run as target "
                        "'sluice LABEL', with the bench's config only (repeatable)")
    p.add_argument("--pgbouncer", default=shutil.which("pgbouncer") or "/usr/sbin/pgbouncer",
                   help="PgBouncer binary (default: Debian's)")
    p.add_argument("--pg-bin", default=os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"),
                   help="directory with postgres, initdb, pgbench, psql")
    p.add_argument("--output", help="markdown file (default build-bench/bench-results.md)")
    p.add_argument("--timeout", type=int, help="give up after this many seconds (default: "
                                                "quick 240, otherwise 3600)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.duration = a.duration or (1 if a.quick else 10)
    a.reps = a.reps or (1 if a.quick else 3)
    a.scale = a.scale or (1 if a.quick else 32)
    a.copy_rate = a.copy_rate or 64.0
    a.timeout = a.timeout or (240 if a.quick else 3600)
    chosen = select(scenarios(a.quick), a.only)
    try:
        variants = parse_variants(a.sluice_bin, a.workers, a.sluice_extra, a.sluice_also)
    except ValueError as e:
        print(f"scripts/bench: {e}", file=sys.stderr)
        return 2
    if a.list:
        for s in (chosen if a.only else scenarios(a.quick)):
            print(f"{s.name:22} {s.desc}")
        return 0
    if not chosen:
        print(f"scripts/bench: --only {a.only} matches no scenario (see --list)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("scripts/bench: run as root (Postgres and PgBouncer are run as user postgres)",
              file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 12000:
        log(f"warning: RLIMIT_NOFILE hard limit is {hard}; 10,000 idle clients may not fit")

    def on_signal(signum, frame):
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(s, on_signal)
    signal.alarm(a.timeout)

    b = Bench(a)
    b.chosen = chosen
    b.variants = variants
    b.elapsed = 0.0
    b.started_at = datetime.datetime.now(datetime.timezone.utc)
    b.load_start = os.getloadavg()[0]
    if b.load_start > 1.0:
        log(f"warning: load average is {b.load_start:.2f} before the benchmark starts: other work "
            "on this machine will disturb the numbers")
    status = 0
    text = None
    try:
        b.main()
    except Interrupted as e:
        log(f"interrupted ({e}); cleaning up")
        b.notes.append(f"benchmark interrupted: {e} (timeout {a.timeout} s); results incomplete")
        status = 3
    except (BenchError, subprocess.TimeoutExpired, OSError) as e:
        log(f"setup failed: {e}")
        b.notes.append(f"benchmark aborted: {e}")
        status = 2
    finally:
        signal.alarm(0)
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        cleanup_all()
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
    if b.elapsed == 0.0 and b.runs:
        b.elapsed = (datetime.datetime.now(datetime.timezone.utc) - b.started_at).total_seconds()

    versions = {"postgres": "?", "pgbouncer": "PgBouncer ?", "sluice": "?"}
    try:
        r = run([str(Path(a.pg_bin) / "postgres"), "--version"], timeout=10)
        m = re.search(r"\)\s+(\S+)", r.stdout)
        versions["postgres"] = m.group(1) if m else r.stdout.strip()
    except Exception:  # noqa: BLE001
        pass
    try:
        r = run([a.pgbouncer, "--version"], timeout=10)
        versions["pgbouncer"] = r.stdout.splitlines()[0].strip()
    except Exception:  # noqa: BLE001
        pass
    versions["sluice"] = sluice_version(a.sluice_bin)
    for v in variants:
        if v.binary != Path(a.sluice_bin):
            versions["sluice"] += f"; {v.target}: {sluice_version(v.binary, repo=False)}"

    if getattr(b, "workdir", None) is not None:
        text = report(b, a.command_line or shlex.join(sys.argv), versions)
        print(text)
        out = Path(a.output or REPO / "build-bench" / "bench-results.md")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        logs = out.parent / "bench-logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True, exist_ok=True)
        for f in b.workdir.glob("*.log"):
            shutil.copy2(f, logs / f.name)
        for f in b.workdir.glob("*.ini"):
            shutil.copy2(f, logs / f.name)
        log(f"report written to {out}; logs and configs in {logs}")
        if not a.keep:
            shutil.rmtree(b.workdir, ignore_errors=True)
        else:
            log(f"kept {b.workdir}")

    if status == 0 and b.sluice_failed:
        status = 1
        log("sluice failed: " + "; ".join(b.sluice_failed[:10]))
    if status == 0:
        missing = [s.name for s in b.chosen if not any(r.scenario is s for r in b.runs)]
        if missing:
            status = 2
            log(f"scenarios that did not run: {missing}")
    log(f"exit status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
