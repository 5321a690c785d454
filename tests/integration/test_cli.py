"""The command line: --version, --help, --check, -c, and configuration from the environment."""

import re
import subprocess

import pytest

from conftest import render_ini, sluice_bin


def run(args, timeout=10, env=None):
    b = sluice_bin()
    if not b.exists():
        pytest.fail(f"sluice binary not found at {b}: build it or set SLUICE_BIN", pytrace=False)
    import os
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_") and k != "DATABASE_URL"}
    e.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    if env:
        e.update(env)
    return subprocess.run([str(b)] + args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=e)


def assert_no_sanitizer_report(p):
    for pat in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        assert pat not in p.stderr, p.stderr


def test_version_prints_name_and_version_and_exits_0():
    p = run(["--version"])
    assert p.returncode == 0, p.stderr
    out = p.stdout + p.stderr
    assert "sluice" in out.lower()
    assert re.search(r"\d+\.\d+\.\d+", out), out
    assert_no_sanitizer_report(p)


def test_help_describes_usage_and_exits_0():
    p = run(["--help"])
    assert p.returncode == 0, p.stderr
    out = p.stdout + p.stderr
    assert "--check" in out and "--version" in out, out
    assert_no_sanitizer_report(p)


def test_unknown_option_exits_non_zero():
    p = run(["--no-such-option"])
    assert p.returncode != 0
    assert_no_sanitizer_report(p)


def write(tmp_path, text, name="sluice.ini"):
    f = tmp_path / name
    f.write_text(text)
    return str(f)


def valid_ini(pg):
    return render_ini({"listen_addr": "127.0.0.1", "listen_port": 0, "auth_type": "trust",
                       "pool_mode": "transaction", "default_pool_size": 5},
                      {"appdb": pg.db_entry(pool_size=3)})


def test_check_of_a_valid_config_exits_0(tmp_path, pg):
    p = run(["--check", write(tmp_path, valid_ini(pg))])
    assert p.returncode == 0, f"stdout: {p.stdout}\nstderr: {p.stderr}"
    assert_no_sanitizer_report(p)


def test_check_of_a_config_with_an_unknown_key_exits_1_naming_the_line(tmp_path, pg):
    text = valid_ini(pg)
    lines = text.splitlines()
    at = lines.index("[sluice]") + 2
    lines.insert(at, "no_such_setting_xyz = 1")
    lineno = at + 1
    p = run(["--check", write(tmp_path, "\n".join(lines) + "\n")])
    assert p.returncode == 1, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert "no_such_setting_xyz" in p.stderr, p.stderr
    assert re.search(rf"(line |:){lineno}\b", p.stderr), \
        f"the error should name line {lineno}:\n{p.stderr}"
    assert_no_sanitizer_report(p)


@pytest.mark.parametrize("bad", ["pool_mode = sideways", "default_pool_size = many",
                                 "auth_type = telepathy", "query_wait_timeout = soon"])
def test_check_of_a_config_with_a_bad_value_exits_1(tmp_path, pg, bad):
    text = valid_ini(pg).replace("[sluice]\n", f"[sluice]\n{bad}\n")
    p = run(["--check", write(tmp_path, text)])
    assert p.returncode == 1, f"{bad!r} accepted:\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert bad.split(" = ")[0] in p.stderr, p.stderr
    assert_no_sanitizer_report(p)


@pytest.mark.parametrize("url", ["postgres://app:pw@db:notaport/app", "postgres://app:pw@db:99999/app",
                                 "postgres://app:pw@db:0/app"])
def test_check_refuses_a_database_url_whose_port_is_not_a_port(url):
    """libpq would refuse it at every connection, so sluice would start, accept clients and
    report the database as down; PgBouncer refuses such a port at load ("invalid port")."""
    p = run(["--check"], env={"DATABASE_URL": url, "SLUICE_AUTH_TYPE": "trust"})
    assert p.returncode == 1, f"{url!r} accepted:\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert "DATABASE_URL" in p.stderr and "port" in p.stderr, p.stderr
    assert "pw" not in p.stderr.replace("port", ""), "the URL, password and all, was echoed"
    assert_no_sanitizer_report(p)


@pytest.mark.parametrize("port", ["notaport", "70000", "5432x"])
def test_check_refuses_a_database_entry_whose_port_is_not_a_port(tmp_path, pg, port):
    text = valid_ini(pg).replace("[databases]\n",
                                 f"[databases]\nother = host=127.0.0.1 port={port} dbname=x\n")
    p = run(["--check", write(tmp_path, text)])
    assert p.returncode == 1, f"port={port!r} accepted:\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert "'other'" in p.stderr and "port" in p.stderr, p.stderr
    assert_no_sanitizer_report(p)


def test_check_accepts_a_port_per_host(tmp_path, pg):
    text = valid_ini(pg).replace("[databases]\n",
                                 "[databases]\nother = host=h1,h2 port=5432,5433 dbname=x\n")
    p = run(["--check", write(tmp_path, text)])
    assert p.returncode == 0, f"stdout: {p.stdout}\nstderr: {p.stderr}"


@pytest.mark.parametrize("name", ["SLUICE_NO_SUCH_KEY", "SLUICE_"])
def test_check_refuses_an_unknown_sluice_variable_naming_it(name):
    """docs/config.md: an unknown SLUICE_ variable is an error (a typo must not pass silently)."""
    p = run(["--check"], env={"DATABASE_URL": "postgres://app:pw@db/app", name: "1"})
    assert p.returncode == 1, f"{name} accepted:\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert f"unknown variable {name} " in p.stderr, p.stderr
    assert_no_sanitizer_report(p)


def test_check_of_a_missing_file_exits_1(tmp_path):
    p = run(["--check", str(tmp_path / "nope.ini")])
    assert p.returncode == 1
    assert "nope.ini" in p.stderr
    assert_no_sanitizer_report(p)


def test_dash_c_config_form_starts_and_serves(start_sluice):
    s = start_sluice({"pool_mode": "session"}, dash_c=True)
    with s.connect() as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_environment_only_configuration_serves_database_url(start_sluice, pg):
    s = start_sluice(config=False, env={
        "DATABASE_URL": f"postgresql://app:apppass@127.0.0.1:{pg.port}/appdb",
        "SLUICE_LISTEN_ADDR": "127.0.0.1",
        "SLUICE_LISTEN_PORT": "0",
        "SLUICE_AUTH_TYPE": "trust",
        "SLUICE_POOL_MODE": "transaction",
        "SLUICE_DEFAULT_POOL_SIZE": "2",
    })
    with s.connect() as a, s.connect() as b:
        assert a.execute("SELECT current_user, current_database()").fetchone() == ("app", "appdb")
        assert b.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.parametrize("around", [("", "\n"), ("", "\r\n"), ("  ", " \t")],
                         ids=["newline", "crlf", "blanks"])
def test_database_url_with_a_trailing_newline_or_blanks_serves_its_database(start_sluice, pg,
                                                                              around):
    """A URL pasted from a .env file written on Windows (CRLF) or a secret made with `echo`
    carries a line end. Python's and Node's URL parsers drop it, so the app reaches "appdb" with
    that same DATABASE_URL; DATABASE_URL_FILE dropped it too. Before, sluice started "valid" with
    a database named "appdb\n", and told every client that "appdb" is not configured (3D000)."""
    url = f"postgresql://app:apppass@127.0.0.1:{pg.port}/appdb"
    s = start_sluice(config=False, env={
        "DATABASE_URL": around[0] + url + around[1],
        "SLUICE_LISTEN_ADDR": "127.0.0.1",
        "SLUICE_LISTEN_PORT": "0",
    })
    with s.connect() as c:
        assert c.execute("SELECT current_database()").fetchone() == ("appdb",)


def test_environment_values_ending_in_a_crlf_are_read_as_the_file_reads_them(start_sluice, pg,
                                                                              tmp_path):
    """An env file written on Windows gives every value a trailing CR (docker --env-file keeps
    it); the same values in the ini file are read without it. Before, sluice refused to start:
    `pool_mode = 'transaction\r': expected session, transaction or statement`, a line the CR
    garbled in a terminal."""
    url_file = tmp_path / "url"
    url_file.write_text(f"postgresql://app:apppass@127.0.0.1:{pg.port}/appdb\n")
    s = start_sluice(config=False, env={
        "DATABASE_URL_FILE": f"{url_file}\r",
        "SLUICE_LISTEN_ADDR": "127.0.0.1\r",
        "SLUICE_LISTEN_PORT": "0\r",
        "SLUICE_POOL_MODE": "transaction\r",
        "SLUICE_DEFAULT_POOL_SIZE": " 1\r",
    })
    with s.connect() as a, s.connect() as b:
        # transaction mode with one server: both clients share the backend
        pa = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        pb = b.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert pa == pb


def test_a_database_url_of_blanks_alone_is_refused_as_no_url():
    p = run(["--check"], env={"DATABASE_URL": " \n"})
    assert p.returncode == 1, p.stderr
    assert "DATABASE_URL: expected postgres://" in p.stderr, p.stderr
    assert_no_sanitizer_report(p)


def test_environment_overrides_the_file(start_sluice, pg):
    s = start_sluice({"pool_mode": "session", "default_pool_size": 5},
                     env={"SLUICE_POOL_MODE": "transaction", "SLUICE_DEFAULT_POOL_SIZE": "1"})
    with s.connect() as a, s.connect() as b:
        # transaction mode with one server: both clients share the backend
        pa = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        pb = b.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert pa == pb


def test_start_with_an_invalid_config_exits_non_zero_with_the_reason(start_sluice):
    s = start_sluice({"pool_mode": "sideways"}, wait=False)
    code = s.wait_exit(10)
    s.expected_exit_codes = None  # a non-zero exit is the point here
    assert code not in (None, 0), "sluice started with pool_mode = sideways"
    assert "pool_mode" in s.log_text()
