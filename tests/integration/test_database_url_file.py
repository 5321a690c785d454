"""DATABASE_URL_FILE: the upstream URL (with its password) from a mounted secret, read by sluice
itself at its start and at every reload, so that a rotated secret takes a RELOAD (or SIGHUP), not
a restart. A file that cannot be used at a reload leaves the running configuration as it was; its
content (a password) is never written to the log."""

import signal

import psycopg
import pytest

from conftest import APP_DB
from test_cli import run

ROLE = "rotated"


def url(pg, password, user=ROLE):
    return f"postgresql://{user}:{password}@127.0.0.1:{pg.port}/{APP_DB}"


@pytest.fixture
def rotated_role(pg):
    with pg.superuser() as su:
        su.execute(f"DROP ROLE IF EXISTS {ROLE}")
        su.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD 'first-secret'")
    yield ROLE
    pg.clear_backends(ROLE)
    with pg.superuser() as su:
        su.execute(f"DROP ROLE IF EXISTS {ROLE}")


def start_from_file(start_sluice, secret, **main):
    env = {"DATABASE_URL_FILE": str(secret), "SLUICE_LISTEN_ADDR": "127.0.0.1",
           "SLUICE_LISTEN_PORT": "0", "SLUICE_POOL_MODE": "transaction"}
    env.update({f"SLUICE_{k.upper()}": str(v) for k, v in main.items()})
    return start_sluice(config=False, env=env)


def whoami(s, password):
    with s.connect(user=ROLE, password=password) as c:
        return c.execute("SELECT current_user, pg_backend_pid()").fetchone()


def login_refused(s, password):
    with pytest.raises(psycopg.OperationalError) as ei:
        s.connect(user=ROLE, password=password).close()
    return str(ei.value)


def reload_and_wait(s, what):
    mark = s.mark()
    s.send_signal(signal.SIGHUP)
    s.wait_for_log(what, timeout=10, since=mark)


def test_a_rotated_secret_is_read_at_reload(start_sluice, pg, rotated_role, tmp_path):
    secret = tmp_path / "database_url"
    # As a secret file usually looks: one line, blanks around it, CR LF at its end.
    secret.write_text(f"  {url(pg, 'first-secret')} \r\n")
    s = start_from_file(start_sluice, secret, default_pool_size=1)
    user, first_pid = whoami(s, "first-secret")
    assert user == ROLE

    # The secret is rotated: Postgres first, then the file, then the reload.
    with pg.superuser() as su:
        su.execute(f"ALTER ROLE {ROLE} PASSWORD 'second-secret'")
    secret.write_text(url(pg, "second-secret") + "\n")
    reload_and_wait(s, r"configuration reloaded")
    # clients log in with the new password, and no longer with the old one
    user, pid = whoami(s, "second-secret")
    assert user == ROLE
    assert "password authentication failed" in login_refused(s, "first-secret")
    # the backend opened with the old settings was replaced by one opened with the new password
    assert pid != first_pid
    assert not any("first-secret" in line or "second-secret" in line
                   for line in s.log_text().splitlines()), "a password reached the log"


@pytest.mark.parametrize("spoil", ["removed", "emptied", "not a url"])
def test_a_file_unusable_at_reload_keeps_the_running_configuration(start_sluice, pg,
                                                                     rotated_role, tmp_path,
                                                                     spoil):
    secret = tmp_path / "database_url"
    secret.write_text(url(pg, "first-secret") + "\n")
    s = start_from_file(start_sluice, secret)
    assert whoami(s, "first-secret")[0] == ROLE
    if spoil == "removed":
        secret.unlink()
        reason = rf"DATABASE_URL_FILE={secret}: cannot read it: No such file"
    elif spoil == "emptied":
        secret.write_text(" \n")
        reason = rf"DATABASE_URL_FILE={secret} is empty"
    else:
        secret.write_text("host=db password=first-secret\n")
        reason = r"DATABASE_URL: expected postgres://"
    mark = s.mark()
    s.send_signal(signal.SIGHUP)
    s.wait_for_log(reason, timeout=10, since=mark)
    s.wait_for_log(r"reload: the new configuration is invalid; keeping the old one", since=mark)
    assert whoami(s, "first-secret")[0] == ROLE
    assert "first-secret" not in s.log_text()


def test_check_reads_the_file_and_names_what_is_wrong(pg, tmp_path):
    secret = tmp_path / "database_url"
    secret.write_text(url(pg, "x") + "\n")
    p = run(["--check"], env={"DATABASE_URL_FILE": str(secret), "SLUICE_LISTEN_PORT": "0"})
    assert p.returncode == 0, p.stderr
    p = run(["--check"], env={"DATABASE_URL_FILE": str(tmp_path / "nope"),
                              "SLUICE_LISTEN_PORT": "0"})
    assert p.returncode != 0 and "nope: cannot read it" in p.stderr, p.stderr
    p = run(["--check"], env={"DATABASE_URL_FILE": str(secret), "DATABASE_URL": url(pg, "y"),
                              "SLUICE_LISTEN_PORT": "0"})
    assert p.returncode != 0, p.stderr
    assert "both DATABASE_URL and DATABASE_URL_FILE are set" in p.stderr, p.stderr
    secret.write_text("x" * 9000)
    p = run(["--check"], env={"DATABASE_URL_FILE": str(secret), "SLUICE_LISTEN_PORT": "0"})
    assert p.returncode != 0 and "over 8191 bytes" in p.stderr, p.stderr
