"""Real Node.js clients through sluice, with their DEFAULT settings (issues #6 and #9):

- node-postgres (`pg`): pg.Pool (10 connections), named queries {name, text, values};
- postgres.js (`postgres`): prepare: true (every parameterized query is a named statement, sent
  as Parse/Describe/Flush and then Bind/Execute), pipelining, sql.begin, sql.reserve, cursors,
  query.cancel();
- Prisma 7 with the driver adapter @prisma/adapter-pg: its default (unnamed statements, no
  `pgbouncer=true`), and with the adapter's statementNameGenerator (named statements).

Each runs in session and in transaction mode, logging in with SCRAM. Transaction mode: sluice has
default_pool_size = 2 and the scripts keep 20 client connections busy at once, so a client
connection's named statements, Parsed once on one backend, are bound again on the other one (the
scripts check that one client connection saw more than one pg_backend_pid()). Session mode:
default_pool_size = 12; each connection must keep one backend, 20 workers connect and disconnect
over the backends left, and the next client of a backend Parses the same statement names again
(after the reset). LISTEN/NOTIFY is checked in session mode. Postgres' own log must show no
error the scripts did not cause on purpose (postgres.js would hide a "prepared statement does
not exist" by re-preparing and retrying).

The scripts are in tests/node/ (package.json and package-lock.json pin every version). The
session fixture `node_env` runs `npm ci` once (nothing to do when node_modules matches the lock
file) and `prisma generate` offline; each test runs one script with a timeout and asserts on the
JSON line it prints. The tests are skipped, loudly, only when `node` is not installed.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
import warnings

import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, REPO, BackendSampler

NODE_DIR = REPO / "tests" / "node"
NODE_MODULES = NODE_DIR / "node_modules"
STAMP = NODE_MODULES / ".sluice-install-stamp"
PRISMA_CLIENT = NODE_MODULES / ".sluice-prisma" / "client" / "index.js"
INSTALL_TIMEOUT = float(os.environ.get("SLUICE_TEST_NPM_TIMEOUT", "900"))
SCRIPT_TIMEOUT = 50

NODE = shutil.which("node")
NPM = shutil.which("npm")

TXN_POOL = 2       # servers sluice may open in transaction mode
SESSION_POOL = 12  # in session mode: one app pool of 10 plus room for a few more connections

# Prisma (the CLI and the generated client) must not reach for the network: no update check,
# no telemetry, and no schema-engine download (generation does not need that engine).
PRISMA_ENV = {
    "CHECKPOINT_DISABLE": "1",
    "PRISMA_HIDE_UPDATE_MESSAGE": "1",
    "PRISMA_SCHEMA_ENGINE_BINARY": "/bin/false",
    "PRISMA_ENGINES_CHECKSUM_IGNORE_MISSING": "1",
}


def _node_env_vars(extra=None):
    e = dict(os.environ)
    for k in list(e):
        if k.startswith(("PG", "NODE_OPTIONS")) or k == "DATABASE_URL":
            del e[k]
    e.update(PRISMA_ENV)
    e["NO_UPDATE_NOTIFIER"] = "1"
    e["npm_config_update_notifier"] = "false"
    e["npm_config_fund"] = "false"
    e["npm_config_audit"] = "false"
    if extra:
        e.update(extra)
    return e


def _install_fingerprint():
    h = hashlib.sha256()
    for name in ("package.json", "package-lock.json", "prisma/schema.prisma"):
        h.update(name.encode() + b"\0" + (NODE_DIR / name).read_bytes() + b"\0")
    h.update(subprocess.run([NODE, "--version"], capture_output=True, text=True,
                            timeout=30).stdout.encode())
    return h.hexdigest()


def _run_logged(cmd, timeout, what):
    p = subprocess.run(cmd, cwd=str(NODE_DIR), capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, env=_node_env_vars())
    if p.returncode != 0:
        raise RuntimeError(f"{what} ({' '.join(cmd)}) exited {p.returncode}\n--- stdout ---\n"
                           f"{p.stdout[-4000:]}\n--- stderr ---\n{p.stderr[-4000:]}")
    return p


@pytest.fixture(scope="session")
def node_env():
    """npm ci + prisma generate in tests/node, once; nothing to do when the stamp matches."""
    if NODE is None:
        why = ("NODE.JS NOT FOUND: `node` is not on PATH, so the node-postgres, postgres.js and "
               "Prisma tests through sluice did NOT run (install nodejs and npm)")
        warnings.warn(why)
        pytest.skip(why)
    if NPM is None:
        pytest.fail("`node` is installed but `npm` is not: cannot install tests/node", pytrace=False)
    with open("/tmp/sluice-tests-node-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two pytest runs at once share one install
        want = _install_fingerprint()
        if not (STAMP.exists() and STAMP.read_text() == want and PRISMA_CLIENT.exists()):
            t0 = time.monotonic()
            # --ignore-scripts: prisma's and @prisma/engines' install scripts download engine
            # binaries that a driver-adapter client does not use (and that this network
            # cannot reach); --prefer-offline uses npm's cache when it has the tarballs.
            _run_logged([NPM, "ci", "--ignore-scripts", "--prefer-offline", "--no-audit",
                         "--no-fund", "--loglevel=error"], INSTALL_TIMEOUT, "npm ci")
            _run_logged([NODE, "node_modules/prisma/build/index.js", "generate", "--schema",
                         "prisma/schema.prisma"], 300, "prisma generate")
            STAMP.write_text(want)
            print(f"tests/node installed in {time.monotonic() - t0:.1f} s")
    return NODE_DIR


def run_node(script, sluice, mode, cap, table, timeout=SCRIPT_TIMEOUT, steps=None, env=None):
    url = f"postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{sluice.port}/{APP_DB}"
    extra_env = env
    env = _node_env_vars({"SLUICE_URL": url, "POOL_MODE": mode, "SERVER_CAP": str(cap),
                          "TEST_TABLE": table})
    if steps:
        env["STEPS"] = ",".join(steps)
    env.update(extra_env or {})
    try:
        p = subprocess.run([NODE, script], cwd=str(NODE_DIR), capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        raise AssertionError(f"node {script} did not finish within {timeout} s\n{out[-3000:]}"
                             f"\n--- sluice log ---\n{sluice.log_tail(60)}") from None
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, (f"node {script} printed no JSON (exit {p.returncode})\n--- stdout ---\n"
                   f"{p.stdout[-3000:]}\n--- stderr ---\n{p.stderr[-3000:]}")
    return json.loads(lines[-1]), p


def drop_tables(pg, table):
    with contextlib.suppress(Exception):
        pg.query(f"DROP TABLE IF EXISTS {table}, {table}_d, sluice_node_prisma_account",
                 dbname=APP_DB)


def failed_steps(result):
    fails = {name: s.get("error") for name, s in result["steps"].items() if not s["ok"]}
    if result.get("unhandled"):
        fails["(errors no step awaited)"] = result["unhandled"]
    if not result.get("ok") and not fails:
        fails["(script)"] = result.get("fatal", "ok is false")
    return fails


def pg_log_offset(pg):
    try:
        return pg.logfile.stat().st_size
    except OSError:
        return 0


def pg_log_since(pg, offset):
    try:
        with open(pg.logfile, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# Errors the scripts cause on purpose (and Postgres logs): anything else in the server log
# during a run, such as 26000 "prepared statement ... does not exist" or 42P05 "already
# exists", means sluice sent a statement to a backend that did not have it (postgres.js would
# even hide that from the test by re-preparing and retrying).
EXPECTED_PG_ERRORS = re.compile(
    r"duplicate key value violates unique constraint|division by zero|"
    r"current transaction is aborted|Key \(|application error|"
    r"relation \"t_node_[0-9a-f]+_d\" does not exist|canceling statement due to user request")


def unexpected_pg_errors(text):
    bad = []
    for line in text.splitlines():
        if re.search(r"\b(ERROR|FATAL|PANIC):", line) and not EXPECTED_PG_ERRORS.search(line):
            bad.append(line)
    return bad


CLIENTS = {
    "pg": "pg_client.mjs",
    "postgres.js": "postgres_js.mjs",
    "prisma": "prisma_client.mjs",
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("client", list(CLIENTS))
def test_node_client_with_default_settings(node_env, start_sluice, pg, client, mode):
    cap = TXN_POOL if mode == "transaction" else SESSION_POOL
    s = start_sluice({"pool_mode": mode, "default_pool_size": cap, "max_client_conn": 200,
                      "query_wait_timeout": 30, "auth_type": "scram-sha-256"},
                     auth_file={APP_USER: APP_PASSWORD})
    # start_sluice sets auth_type md5 when an auth_file is given; the main dict wins after that
    table = f"t_node_{uuid.uuid4().hex[:12]}"
    mark = s.mark()
    log_offset = pg_log_offset(pg)
    try:
        with BackendSampler(pg, APP_USER, interval=0.02) as sampler:
            result, proc = run_node(CLIENTS[client], s, mode, cap, table)
            # the backends the script saw are still sluice's, idle in its pool
            live = {r[0] for r in pg.backends(APP_USER)}
    finally:
        drop_tables(pg, table)
    print(f"{client}/{mode}: " + json.dumps({n: {"ok": st["ok"], "ms": st["ms"], **(st.get("data") or {})}
                                             for n, st in result["steps"].items()}))
    fails = failed_steps(result)
    assert not fails, (f"{client} in {mode} mode: steps failed:\n{json.dumps(fails, indent=1)}\n"
                       f"--- node stderr ---\n{proc.stderr[-2000:]}\n--- sluice log ---\n"
                       + "\n".join(s.log_since(mark)[-80:]))
    assert result["ok"] and proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])

    # sluice never opened more servers than its pool allows, however many client connections
    assert sampler.max <= cap, f"{sampler.max} backends at once, pool size {cap}"
    steps = result["steps"]
    seen = set()
    for st in steps.values():
        seen.update((st.get("data") or {}).get("pids", []))
    assert seen, "no step reported backend pids"
    assert len(seen) <= cap, sorted(seen)
    # every backend the clients ran on is a real one sluice still holds (pg_stat_activity)
    assert seen <= live, (sorted(seen), sorted(live))
    if mode == "transaction":
        assert len(seen) > 1, f"every query ran on one backend: {sorted(seen)}"
        moved = [st["data"]["client_connections_that_moved"] for st in steps.values()
                 if "client_connections_that_moved" in (st.get("data") or {})]
        assert moved and max(moved) > 0, (
            "no client connection had its prepared statements bound on a second backend")

    # the expected errors reached the client with their SQLSTATE
    if client == "prisma":
        assert steps["unique_violation"]["data"]["code"] == "P2002"
        assert steps["unique_violation"]["data"]["sqlstate"] == "23505"
    else:
        assert set(steps["unique_violation"]["data"]["codes"]) == {"23505"}
        assert steps["transaction_rollback_on_error"]["data"]["code"] == "23505"
    if mode == "session" and client != "prisma":
        assert steps["listen_notify"]["ok"]

    bad = unexpected_pg_errors(pg_log_since(pg, log_offset))
    assert not bad, "Postgres logged errors the clients did not cause on purpose:\n" + "\n".join(bad[:20])
    sluice_errors = [ln for ln in s.log_since(mark)
                     if re.search(r"\b(WARNING|ERROR|FATAL|error|fatal)\b", ln)
                     and "23505" not in ln and "22012" not in ln and "25P02" not in ln]
    assert not sluice_errors, "sluice logged errors:\n" + "\n".join(sluice_errors[:30])



def run_many_statements(start_sluice, pg, mode, n, conns):
    cap = TXN_POOL if mode == "transaction" else SESSION_POOL
    s = start_sluice({"pool_mode": mode, "default_pool_size": cap})
    table = f"t_node_{uuid.uuid4().hex[:12]}"
    mark = s.mark()
    log_offset = pg_log_offset(pg)
    try:
        result, proc = run_node("postgres_js.mjs", s, mode, cap, table,
                                steps=["many_distinct_statements"],
                                env={"MANY_N": str(n), "MANY_CONNS": str(conns)})
    finally:
        drop_tables(pg, table)
    fails = failed_steps(result)
    assert not fails, (f"postgres.js in {mode} mode, {conns} connection(s) with {n} statements "
                       f"each:\n{json.dumps(fails, indent=1)[:3000]}\n--- sluice log ---\n"
                       + "\n".join(s.log_since(mark)[-30:]))
    bad = unexpected_pg_errors(pg_log_since(pg, log_offset))
    assert not bad, "Postgres logged errors:\n" + "\n".join(bad[:20])
    return result


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_postgres_js_statements_evicted_from_the_servers_are_prepared_again(
        node_env, start_sluice, pg, mode):
    """4 postgres.js connections x 150 distinct prepared queries (each under
    max_prepared_statements = 200, together far over it on sluice's 2 servers): in transaction
    mode the servers' LRU closes statements the connections still use; running them again must
    prepare them again, invisibly."""
    run_many_statements(start_sluice, pg, mode, 150, 4)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", [
    "session",
    "transaction",
])
def test_postgres_js_more_statements_on_one_connection_than_max_prepared_statements(
        node_env, start_sluice, pg, mode):
    """postgres.js (prepare: true) keeps every distinct parameterized query prepared for the
    connection's life and never closes one; an application with more query shapes than
    max_prepared_statements (200) on one connection must keep working."""
    run_many_statements(start_sluice, pg, mode, 300, 1)


@pytest.mark.parametrize("mode", [
    "session",
    "transaction",
])
def test_postgres_js_first_client_of_a_pool_runs_with_its_startup_parameters(
        node_env, start_sluice, pg, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2})
    table = f"t_node_{uuid.uuid4().hex[:12]}"
    try:
        result, _ = run_node("postgres_js.mjs", s, mode, 2, table, steps=["startup_parameters"])
    finally:
        drop_tables(pg, table)
    fails = failed_steps(result)
    assert not fails, json.dumps(fails, indent=1)
