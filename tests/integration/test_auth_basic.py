"""Client authentication against sluice's auth_file (PgBouncer userlist.txt format)."""

import hashlib

import psycopg
import pytest

from pgwire import RawConn, ServerError, raw_login, startup_packet

USERS = {"app": "sluice-secret", "app2": "other-secret"}


def md5_secret(user, password):
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def test_md5_login_with_the_right_password_works(start_sluice):
    s = start_sluice({"auth_type": "md5"}, auth_file=USERS)
    with s.connect(password="sluice-secret") as c:
        # upstream login uses the [databases] credentials, not the client's
        assert c.execute("SELECT current_user").fetchone()[0] == "app"
    p = s.psql("SELECT 'psql ok'", password="sluice-secret")
    assert p.returncode == 0 and p.stdout.strip() == "psql ok", p.stderr


def test_md5_login_with_a_wrong_password_gets_28P01(start_sluice):
    s = start_sluice({"auth_type": "md5"}, auth_file=USERS)
    with pytest.raises(ServerError) as ei:
        raw_login(s.port, password="wrong")
    assert ei.value.sqlstate == "28P01", ei.value.fields
    with pytest.raises(psycopg.OperationalError) as ei2:
        psycopg.connect(s.dsn(password="wrong"))
    assert "password" in str(ei2.value).lower()


def test_md5_login_of_a_user_missing_from_auth_file_gets_28P01(start_sluice):
    s = start_sluice({"auth_type": "md5"}, auth_file=USERS)
    with pytest.raises(ServerError) as ei:
        raw_login(s.port, user="nobody", password="x")
    assert ei.value.sqlstate == "28P01", ei.value.fields


def test_md5_login_with_an_md5_secret_in_auth_file_works(start_sluice):
    s = start_sluice({"auth_type": "md5"}, auth_file={"app": md5_secret("app", "hashed-pw")})
    c = raw_login(s.port, password="hashed-pw")
    try:
        rows, _ = c.query("SELECT 1")
        assert rows == [["1"]]
    finally:
        c.close()
    with pytest.raises(ServerError) as ei:
        raw_login(s.port, password="not-it")
    assert ei.value.sqlstate == "28P01"


def test_plain_auth_asks_for_a_cleartext_password(start_sluice):
    s = start_sluice({"auth_type": "plain"}, auth_file=USERS)
    c = RawConn(s.port)
    try:
        c.send(startup_packet())
        mtype, payload = c.read_message()
        assert mtype == "R" and payload[:4] == b"\0\0\0\x03", (mtype, payload)
        c.send(b"p" + (len(b"sluice-secret\0") + 4).to_bytes(4, "big") + b"sluice-secret\0")
        c.finish_login()
        rows, _ = c.query("SELECT 1")
        assert rows == [["1"]]
    finally:
        c.close()
    with pytest.raises(ServerError) as ei:
        raw_login(s.port, password="wrong")
    assert ei.value.sqlstate == "28P01"


def test_trust_auth_needs_no_password(start_sluice):
    s = start_sluice({"auth_type": "trust"})
    c = raw_login(s.port, password=None)
    try:
        rows, _ = c.query("SELECT current_user")
        assert rows == [["app"]]
    finally:
        c.close()


def test_empty_password_message_is_refused(start_sluice):
    s = start_sluice({"auth_type": "md5"}, auth_file=USERS)
    c = RawConn(s.port)
    try:
        c.send(startup_packet())
        mtype, payload = c.read_message()
        assert mtype == "R"
        c.send(b"p\0\0\0\x05\0")
        err = c.expect_error(timeout=10)
        assert err.get("C") in ("28P01", "08P01"), err
        assert c.is_closed(5)
    finally:
        c.close()


def test_wrong_password_does_not_disturb_logged_in_clients(start_sluice):
    s = start_sluice({"auth_type": "md5", "pool_mode": "transaction", "default_pool_size": 1},
                     auth_file=USERS)
    with s.connect(password="sluice-secret") as good:
        for _ in range(5):
            with pytest.raises(ServerError):
                raw_login(s.port, password="wrong")
        assert good.execute("SELECT 1").fetchone()[0] == 1


def test_scram_login_with_the_right_password_works_and_a_wrong_one_gets_28P01(start_sluice):
    s = start_sluice({"auth_type": "scram-sha-256"}, auth_file=USERS)
    c = raw_login(s.port, password="sluice-secret")
    c.close()
    with psycopg.connect(s.dsn(password="sluice-secret")) as pc:
        assert pc.execute("SELECT 1").fetchone()[0] == 1
    with pytest.raises(ServerError) as ei:
        raw_login(s.port, password="wrong")
    assert ei.value.sqlstate == "28P01"
