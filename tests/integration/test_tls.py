"""TLS on both sides of sluice: towards clients (client_tls_*, src/transport/tls.c) and towards the servers
(server_tls_* mapped to libpq's sslmode/sslrootcert/sslcert/sslkey).

Certificates are made at test time with the openssl CLI (certs.py). A second PostgreSQL cluster
runs with ssl = on and pg_hba.conf allowing only hostssl, for the upstream tests.
"""

import hashlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings

import psycopg
import pytest

from certs import make_pki
from conftest import APP_DB, APP_PASSWORD, APP_USER, PgCluster, run_tool, wait_until
from pgwire import (RawConn, ServerError, gssenc_request, parse_fields, password_msg, query_msg,
                    ssl_request, startup_packet)

USERS = {"app": "sluice-secret", "app2": "other-secret"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    return make_pki(d, "test", clients=("app", "app2"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory):
    """Another CA, its server certificate, and a client certificate CN=app it signed."""
    d = tmp_path_factory.mktemp("pki-other")
    return make_pki(d, "other", clients=("app",))


def tls_keys(pki, mode="require", **extra):
    m = {"client_tls_sslmode": mode, "client_tls_cert_file": str(pki.server_cert),
         "client_tls_key_file": str(pki.server_key)}
    m.update(extra)
    return m


def tls_dsn(s, pki=None, sslmode="verify-full", **extra):
    """host=localhost for certificate name checks, hostaddr so nothing tries ::1."""
    kw = {"host": "localhost", "hostaddr": "127.0.0.1", "sslmode": sslmode}
    if pki is not None:
        kw["sslrootcert"] = str(pki.ca)
    kw.update(extra)
    return s.dsn(**kw)


def psql_tls(s, sql, conninfo, password=None, extra_args=()):
    """psql with a full conninfo string (sslmode, sslrootcert, sslcert, ...)."""
    return run_tool("psql", ["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql]
                    + list(extra_args), password=password, timeout=30)


def conninfo(s, user=APP_USER, **kw):
    parts = {"host": "localhost", "hostaddr": "127.0.0.1", "port": s.port, "dbname": APP_DB,
             "user": user}
    parts.update(kw)
    return " ".join(f"{k}={v}" for k, v in parts.items())


# ---- client-facing TLS --------------------------------------------------------------------------


def test_psql_with_verify_full_reaches_sluice_over_tls(start_sluice, pki):
    s = start_sluice(tls_keys(pki), auth_file=USERS)
    ci = conninfo(s, sslmode="verify-full", sslrootcert=pki.ca)
    p = psql_tls(s, "SELECT 'over tls'", ci, password="sluice-secret", extra_args=["-c", r"\conninfo"])
    assert p.returncode == 0, p.stderr
    assert "over tls" in p.stdout
    assert "SSL connection (protocol: TLSv1.3" in p.stdout, p.stdout
    with psycopg.connect(tls_dsn(s, pki, password="sluice-secret")) as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("SELECT current_user").fetchone()[0] == "app"


def test_a_client_trusting_another_ca_refuses_sluices_certificate(start_sluice, pki, other_pki):
    s = start_sluice(tls_keys(pki), auth_file=USERS)
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(tls_dsn(s, other_pki, password="sluice-secret"))
    assert "certificate verify failed" in str(ei.value)
    # and sluice is fine afterwards
    with psycopg.connect(tls_dsn(s, pki, password="sluice-secret")) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_require_refuses_plain_clients_with_28000(start_sluice, pki):
    s = start_sluice(tls_keys(pki, "require"), auth_file=USERS)
    with pytest.raises(ServerError) as ei:
        RawConn(s.port).startup(password="sluice-secret")
    assert ei.value.sqlstate == "28000"
    assert ei.value.fields["M"] == "TLS is required (client_tls_sslmode = require)"
    with pytest.raises(psycopg.OperationalError) as ei2:
        psycopg.connect(s.dsn(password="sluice-secret", sslmode="disable"))
    assert "TLS is required" in str(ei2.value)
    # sslmode=prefer (libpq's default) simply upgrades
    with psycopg.connect(s.dsn(password="sluice-secret", sslmode="prefer")) as c:
        assert c.pgconn.ssl_in_use


def test_prefer_lets_both_plain_and_tls_clients_in(start_sluice, pki):
    s = start_sluice(tls_keys(pki, "prefer"), auth_file=USERS)
    with psycopg.connect(s.dsn(password="sluice-secret", sslmode="disable")) as c:
        assert not c.pgconn.ssl_in_use
        assert c.execute("SELECT 1").fetchone()[0] == 1
    with psycopg.connect(tls_dsn(s, pki, password="sluice-secret")) as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("SELECT 2").fetchone()[0] == 2


def test_tls_disabled_answers_sslrequest_with_N(start_sluice):
    s = start_sluice({"auth_type": "trust"})
    c = RawConn(s.port)
    try:
        c.send(ssl_request())
        assert c.read_byte() == b"N"
        c.startup()
        assert c.query("SELECT 1")[0] == [["1"]]
    finally:
        c.close()
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(s.dsn(sslmode="require"))
    assert "SSL" in str(ei.value) or "ssl" in str(ei.value)


def test_plaintext_sent_after_sslrequest_is_refused_with_08P01(start_sluice, pki):
    """CVE-2021-23214: bytes that arrive after SSLRequest and before the handshake were sent in
    the clear; taking them as the first encrypted bytes would let them be injected."""
    s = start_sluice(tls_keys(pki, "prefer"), auth_file=USERS)
    c = RawConn(s.port)
    try:
        c.send(ssl_request() + startup_packet())
        b = c.read_byte()
        assert b == b"E", b
        c.buf = b"E" + c.buf
        mtype, payload = c.read_message()
        f = parse_fields(payload)
        assert f["C"] == "08P01", f
        assert "unencrypted data after SSL request" in f["M"]
        assert c.is_closed(5)
    finally:
        c.close()


def _tls_raw(s, pki):
    """A RawConn whose socket is TLS after SSLRequest / 'S'."""
    c = RawConn(s.port)
    c.send(ssl_request())
    assert c.read_byte() == b"S"
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
    c.sock.settimeout(10)
    return c


def test_pipelined_startup_and_query_over_tls_are_both_answered(start_sluice, pki):
    s = start_sluice(tls_keys(pki, auth_type="trust"))
    c = _tls_raw(s, pki)
    try:
        c.send(startup_packet() + query_msg("SELECT 'pipelined'"))
        c.finish_login()
        rows, _ = c.read_results()
        assert rows == [["pipelined"]]
    finally:
        c.close()


def test_decrypted_bytes_left_inside_openssl_during_auth_are_read(start_sluice, pki):
    """A TLS record larger than the free buffer leaves its tail inside OpenSSL (SSL_pending)
    with no socket event to announce it. Here: record 1 is the first 10 bytes of the startup
    packet; record 2 is exactly 16384 bytes, the rest of the startup packet plus a cleartext
    password message. sluice reads 16374 of them into its 16384-byte buffer; the last 10 bytes
    of the password stay in OpenSSL and must be read without waiting for the socket."""
    password = "p" * 7388
    s = start_sluice(tls_keys(pki, ignore_startup_parameters="pad", auth_type="plain"),
                     auth_file={"app": password})
    pad_len = 9000 - len(startup_packet(pad=""))
    start = startup_packet(pad="x" * pad_len)
    assert len(start) == 9000
    pw = password_msg(password)
    assert len(start) - 10 + len(pw) == 16384
    c = _tls_raw(s, pki)
    try:
        c.sock.sendall(start[:10])
        c.sock.sendall(start[10:] + pw)  # one 16384-byte TLS record
        # the password went out unasked: read the request and the welcome, answer nothing
        mtype, payload = c.read_message()
        assert (mtype, payload) == ("R", b"\0\0\0\x03")
        c.read_until("Z")
        assert c.query("SELECT 'read it all'")[0] == [["read it all"]]
    finally:
        c.close()


def test_many_tls_clients_move_large_queries_and_results(start_sluice, pki):
    s = start_sluice(tls_keys(pki, pool_mode="transaction", default_pool_size=3), auth_file=USERS)
    big_literal = "y" * 300_000
    errors = []

    def worker(n):
        try:
            with psycopg.connect(tls_dsn(s, pki, password="sluice-secret")) as c:
                for i in range(5):
                    rows = c.execute("SELECT repeat(%s, 50000) FROM generate_series(1, 40)",
                                     [chr(97 + (n + i) % 26)]).fetchall()
                    assert len(rows) == 40 and all(len(r[0]) == 50000 for r in rows)
                    (digest,) = c.execute("SELECT md5(%s)", [big_literal]).fetchone()
                    assert digest == hashlib.md5(big_literal.encode()).hexdigest()
        except Exception as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


# ---- client certificates ------------------------------------------------------------------------


def test_verify_ca_requires_a_client_certificate_signed_by_the_ca(start_sluice, pki, other_pki):
    s = start_sluice(tls_keys(pki, "verify-ca", client_tls_ca_file=str(pki.ca)), auth_file=USERS)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(tls_dsn(s, pki, password="sluice-secret"))
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(tls_dsn(s, pki, password="sluice-secret",
                                sslcert=str(other_pki.client_cert("app")),
                                sslkey=str(other_pki.client_key("app"))))
    with psycopg.connect(tls_dsn(s, pki, password="sluice-secret",
                                 sslcert=str(pki.client_cert("app")),
                                 sslkey=str(pki.client_key("app")))) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    s.wait_for_log(r"TLS handshake failed")


def test_cert_auth_logs_in_the_user_named_by_the_certificate_cn(start_sluice, pki):
    s = start_sluice(tls_keys(pki, "verify-full", client_tls_ca_file=str(pki.ca),
                              auth_type="cert"))
    cert = {"sslcert": str(pki.client_cert("app")), "sslkey": str(pki.client_key("app"))}
    ci = conninfo(s, sslmode="verify-full", sslrootcert=pki.ca, **cert)
    p = psql_tls(s, "SELECT 'cert ok'", ci)
    assert p.returncode == 0 and p.stdout.strip() == "cert ok", p.stderr
    # the CN=app certificate does not make its holder app2
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(tls_dsn(s, pki, user="app2", password=None, **cert))
    assert 'certificate authentication failed for user "app2"' in str(ei.value)
    s.wait_for_log(r"is not the user name")


def test_cert_auth_without_a_certificate_fails_with_28000(start_sluice, pki):
    # require + a CA: a certificate is asked for but optional; cert auth then needs one
    s = start_sluice(tls_keys(pki, "require", client_tls_ca_file=str(pki.ca), auth_type="cert"))
    c = _tls_raw(s, pki)
    try:
        c.send(startup_packet())
        err = c.expect_error()
        assert err["C"] == "28000"
        assert err["M"] == 'certificate authentication failed for user "app"'
    finally:
        c.close()


# ---- SCRAM channel binding ----------------------------------------------------------------------


def test_scram_with_channel_binding_required_over_tls(start_sluice, pki):
    s = start_sluice(tls_keys(pki, auth_type="scram-sha-256", log_level="debug"),
                     auth_file=USERS)
    with psycopg.connect(tls_dsn(s, pki, password="sluice-secret",
                                 channel_binding="require")) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    s.wait_for_log(r"SCRAM-SHA-256-PLUS login")
    with psycopg.connect(tls_dsn(s, pki, password="sluice-secret",
                                 channel_binding="disable")) as c:
        assert c.execute("SELECT 2").fetchone()[0] == 2
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(tls_dsn(s, pki, password="wrong", channel_binding="require"))
    assert 'password authentication failed for user "app"' in str(ei.value)
    p = psql_tls(s, "SELECT 'psql plus'", conninfo(s, sslmode="verify-full", sslrootcert=pki.ca,
                                                   channel_binding="require"),
                 password="sluice-secret")
    assert p.returncode == 0 and p.stdout.strip() == "psql plus", p.stderr


def test_channel_binding_require_without_tls_is_refused_by_the_client(start_sluice, pki):
    s = start_sluice(tls_keys(pki, "prefer", auth_type="scram-sha-256"), auth_file=USERS)
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(s.dsn(password="sluice-secret", sslmode="disable",
                              channel_binding="require"))
    assert "channel binding" in str(ei.value)


# ---- reload ------------------------------------------------------------------------------------


def test_certificates_are_reloaded_on_sighup(start_sluice, pki, other_pki, tmp_path):
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    s = start_sluice({"client_tls_sslmode": "require", "client_tls_cert_file": str(cert),
                      "client_tls_key_file": str(key)}, auth_file=USERS)
    with psycopg.connect(tls_dsn(s, pki, password="sluice-secret")) as held:
        shutil.copy(other_pki.server_cert, cert)
        shutil.copy(other_pki.server_key, key)
        mark = s.mark()
        s.send_signal(signal.SIGHUP)
        s.wait_for_log(r"client TLS: require, certificate .* reloaded", since=mark)
        with psycopg.connect(tls_dsn(s, other_pki, password="sluice-secret")) as c:
            assert c.execute("SELECT 1").fetchone()[0] == 1
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(tls_dsn(s, pki, password="sluice-secret"))
        # a session that began under the old certificate goes on
        assert held.execute("SELECT 'still here'").fetchone()[0] == "still here"
        # a broken pair (key of the other certificate) keeps the working settings
        shutil.copy(pki.server_key, key)
        mark = s.mark()
        s.send_signal(signal.SIGHUP)
        s.wait_for_log(r"keeping the previous TLS settings", since=mark)
        with psycopg.connect(tls_dsn(s, other_pki, password="sluice-secret")) as c:
            assert c.execute("SELECT 1").fetchone()[0] == 1


def test_a_console_set_of_client_tls13_ciphers_puts_the_suites_in_force(start_sluice, pki):
    """Before, the console's SET rebuilt the client TLS context only for keys starting
    client_tls_: SET client_tls13_ciphers answered SET and SHOW CONFIG showed the new suites,
    while every new TLS 1.3 client still got OpenSSL's."""
    from test_admin import CONSOLE_MAIN, console
    s = start_sluice(dict(CONSOLE_MAIN, **tls_keys(pki, "prefer")))
    suite = "TLS_CHACHA20_POLY1305_SHA256"  # never OpenSSL's first choice

    def negotiated():
        c = _tls_raw(s, pki)
        try:
            return c.sock.cipher()[0]
        finally:
            c.close()
    assert negotiated() != suite
    with console(s) as adm:
        assert adm.execute(f"SET client_tls13_ciphers = '{suite}'").statusmessage == "SET"
    assert negotiated() == suite


def test_a_missing_certificate_stops_sluice_from_starting(start_sluice, pki, tmp_path):
    s = start_sluice({"client_tls_sslmode": "require",
                      "client_tls_cert_file": str(tmp_path / "nope.pem"),
                      "client_tls_key_file": str(pki.server_key)}, wait=False)
    s.expected_exit_codes = (1,)
    assert s.wait_exit(10) == 1
    assert any("client TLS: client_tls_cert_file" in line for line in s.log), s.log_tail()


# ---- upstream TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_pg(pki):
    """A cluster that accepts only TLS (hostssl) over TCP, with the test CA's server cert."""
    cluster = PgCluster()
    try:
        cluster.start()
        pw = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        for src, name in ((pki.server_cert, "server.crt"), (pki.server_key, "server.key")):
            dst = cluster.data / name
            shutil.copy(src, dst)
            os.chmod(dst, 0o600)
            if pw:
                os.chown(dst, pw.pw_uid, pw.pw_gid)
        with (cluster.data / "postgresql.conf").open("a") as f:
            f.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        (cluster.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostnossl all all all reject\n")
        cluster.query("SELECT pg_reload_conf()")
        wait_until(lambda: cluster.query("SHOW ssl")[0][0] == "on", 10, what="ssl = on")
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


def _upstream_ssl(s):
    with s.connect(password=None) as c:
        return c.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                         ).fetchone()


def test_server_tls_keys_take_sluice_to_a_hostssl_only_server(start_sluice, tls_pg, pki):
    entry = tls_pg.db_entry()
    s = start_sluice({"auth_type": "trust", "server_tls_sslmode": "verify-full",
                      "server_tls_ca_file": str(pki.ca)},
                     databases={APP_DB: dict(entry, host="localhost", hostaddr="127.0.0.1")})
    ssl_on, version = _upstream_ssl(s)
    assert ssl_on is True and version.startswith("TLSv1"), (ssl_on, version)
    s.wait_for_log(r"connected to backend pid \d+ \(TLS\)")


def test_server_tls_verify_full_checks_the_host_name_sluice_resolved(start_sluice, tls_pg, pki):
    """host=localhost alone: sluice resolves it off the loop and gives libpq the address, and the
    certificate is still checked against the name (issue 18 item 10)."""
    s = start_sluice({"auth_type": "trust", "server_tls_sslmode": "verify-full",
                      "server_tls_ca_file": str(pki.ca), "log_level": "debug"},
                     databases={APP_DB: dict(tls_pg.db_entry(), host="localhost")})
    assert _upstream_ssl(s)[0] is True
    s.wait_for_log(r"resolving the host name off the loop")


def test_without_server_tls_the_hostssl_only_server_refuses(start_sluice, tls_pg):
    s = start_sluice({"auth_type": "trust", "server_tls_sslmode": "disable"},
                     databases={APP_DB: tls_pg.db_entry()})
    with pytest.raises(psycopg.OperationalError) as ei:
        s.connect(password=None)
    assert "no pg_hba.conf entry" in str(ei.value) or "rejects" in str(ei.value)


def test_a_database_entrys_sslmode_wins_over_server_tls_sslmode(start_sluice, tls_pg, pki):
    s = start_sluice({"auth_type": "trust", "server_tls_sslmode": "disable"},
                     databases={APP_DB: tls_pg.db_entry(sslmode="require")})
    assert _upstream_ssl(s)[0] is True


def test_server_tls_verify_full_with_the_wrong_ca_fails(start_sluice, tls_pg, other_pki):
    s = start_sluice({"auth_type": "trust", "server_tls_sslmode": "verify-ca",
                      "server_tls_ca_file": str(other_pki.ca)},
                     databases={APP_DB: tls_pg.db_entry()})
    with pytest.raises(psycopg.OperationalError) as ei:
        s.connect(password=None)
    assert "certificate verify failed" in str(ei.value)


def test_database_url_with_sslmode_require_and_a_provider_ca_file(start_sluice, tls_pg, pki):
    """The managed-database setup (DigitalOcean and the like): DATABASE_URL with
    ?sslmode=require, the provider's CA file in SLUICE_SERVER_TLS_CA_FILE, and TLS to the
    clients too; no config file at all."""
    s = start_sluice(config=False, env={
        "DATABASE_URL": (f"postgresql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{tls_pg.port}/"
                         f"{APP_DB}?sslmode=require"),
        "SLUICE_SERVER_TLS_CA_FILE": str(pki.ca),
        "SLUICE_LISTEN_ADDR": "127.0.0.1",
        "SLUICE_LISTEN_PORT": "0",
        "SLUICE_AUTH_TYPE": "scram-sha-256",
        "SLUICE_CLIENT_TLS_SSLMODE": "require",
        "SLUICE_CLIENT_TLS_CERT_FILE": str(pki.server_cert),
        "SLUICE_CLIENT_TLS_KEY_FILE": str(pki.server_key),
    })
    with psycopg.connect(tls_dsn(s, pki, password=APP_PASSWORD, channel_binding="require")) as c:
        row = c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row[0] is True


PAD = "x" * 14000


@pytest.mark.parametrize("sql, prepare, count, expected_row", [
    # libpq pipeline mode sends many transactions without waiting: over TLS, bytes of the next
    # ones may sit decrypted inside OpenSSL whenever sluice hands the server back.
    pytest.param("SELECT %s::int, repeat('z', 3000)", None, 400, lambda i: (i, "z" * 3000),
                 id="transactions"),
    # Transaction mode holds a Parse until it is whole in the buffer: statements of 14 kB leave
    # a 16 kB buffer little room, so a client's TLS record comes out of OpenSSL over several
    # reads and rounds. (Coverage: the round cap removed in f83176d did not make this case fail
    # in three tries; the record sniffer test below is the one that discriminates.)
    pytest.param(f"SELECT %s::int, length('{PAD}')", False, 150, lambda i: (i, len(PAD)),
                 id="long-statements"),
])
def test_pipelined_over_tls_in_transaction_mode(start_sluice, pki, sql, prepare, count,
                                                expected_row):
    """Every pipelined statement is answered, in order, with nothing left waiting for a socket
    event that will not come."""
    s = start_sluice(tls_keys(pki, pool_mode="transaction", default_pool_size=2),
                     auth_file=USERS)
    with psycopg.connect(tls_dsn(s, pki, password="sluice-secret"), autocommit=True) as c:
        with c.pipeline():
            curs = [c.execute(sql, [i], prepare=prepare) for i in range(count)]
        assert [cur.fetchone() for cur in curs] == [expected_row(i) for i in range(count)]


class RecordSniffer:
    """A TCP relay between one client and sluice that notes the length of every TLS record sluice
    sends (the 5-byte record header: type, version, length)."""

    def __init__(self, target_port):
        import socket
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.record_lengths = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import socket
        down, _ = self.listener.accept()
        up = socket.create_connection(("127.0.0.1", self.target_port))
        threading.Thread(target=self._pump, args=(down, up, False), daemon=True).start()
        self._pump(up, down, True)

    def _pump(self, src, dst, sniff):
        pending = b""
        tls = paused = False
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                dst.close()
                return
            if sniff:  # before passing them on: the client cannot see bytes not yet noted
                if not paused and sum(self.record_lengths) > 50000:
                    # A slow reader for a moment: sluice's buffers fill, so what it writes
                    # next is as large as it ever writes, not what one read of the server gave.
                    time.sleep(0.5)
                    paused = True
                pending += data
                if not tls and pending[:1] == b"S":  # the answer to SSLRequest, then records
                    pending, tls = pending[1:], True
                while tls and len(pending) >= 5:
                    length = int.from_bytes(pending[3:5], "big")
                    if len(pending) < 5 + length:
                        break
                    if pending[0] == 23:  # application data
                        self.record_lengths.append(length)
                    pending = pending[5 + length:]
            try:
                dst.sendall(data)
            except OSError:
                return


def test_tls_records_to_clients_are_at_most_8kb_as_postgres_sends(start_sluice, pki):
    """libpq reads with 8 kB of room: a larger record can stay half-read inside the client's
    OpenSSL, and psycopg 3.1 (pipeline, non-blocking) then waits on a socket with nothing more to
    say. sluice sends records no larger than Postgres does."""
    s = start_sluice(tls_keys(pki, pool_mode="transaction"), auth_file=USERS)
    sniffer = RecordSniffer(s.port)
    with psycopg.connect(tls_dsn(s, pki, password="sluice-secret", port=sniffer.port)) as c:
        assert c.execute("SELECT length(repeat('x', 3000000))").fetchone()[0] == 3000000
        assert len(c.execute("SELECT repeat('x', 3000000)").fetchone()[0]) == 3000000
    assert sum(sniffer.record_lengths) > 3000000, "the sniffer saw the answer"
    # 8 kB of data plus the AEAD overhead (TLS 1.3: type byte and 16-byte tag)
    assert max(sniffer.record_lengths) <= 8192 + 64, sorted(sniffer.record_lengths)[-5:]


# ---- upstream TLS on a passthrough login (sluice's own TLS client, not libpq's) -------------------


def _passthrough_role(cluster):
    with cluster.superuser() as c:
        c.execute("SET password_encryption = 'scram-sha-256'")
        c.execute("DROP ROLE IF EXISTS tlspass")
        c.execute("CREATE ROLE tlspass LOGIN PASSWORD 'tls-pass'")
    return cluster.stored_secret("tlspass")


def test_passthrough_login_verify_full_over_tls(start_sluice, tls_pg, pki):
    """A user known only by its SCRAM secret, behind a hostssl-only server: sluice's own login
    (the client's keys) does TLS with verify-full against the CA, by host name."""
    secret = _passthrough_role(tls_pg)
    entry = {"host": "localhost", "hostaddr": "127.0.0.1", "port": tls_pg.port, "dbname": APP_DB}
    s = start_sluice({"auth_type": "scram-sha-256", "server_tls_sslmode": "verify-full",
                      "server_tls_ca_file": str(pki.ca), "log_level": "debug"},
                     auth_file={"tlspass": secret}, databases={APP_DB: entry})
    with s.connect(user="tlspass", password="tls-pass") as c:
        row = c.execute("SELECT current_user, ssl, version FROM pg_stat_ssl "
                        "WHERE pid = pg_backend_pid()").fetchone()
    assert row[0] == "tlspass" and row[1] is True and row[2].startswith("TLSv1"), row
    s.wait_for_log(r'connecting \(passthrough login as "tlspass"\)')
    s.wait_for_log(r"connected to backend pid \d+ \(TLS\)")
    tls_pg.clear_backends("tlspass")


def test_passthrough_login_with_the_wrong_ca_fails_verification(start_sluice, tls_pg, other_pki):
    secret = _passthrough_role(tls_pg)
    entry = {"host": "127.0.0.1", "port": tls_pg.port, "dbname": APP_DB}
    s = start_sluice({"auth_type": "scram-sha-256", "server_tls_sslmode": "verify-ca",
                      "server_tls_ca_file": str(other_pki.ca)},
                     auth_file={"tlspass": secret}, databases={APP_DB: entry})
    with pytest.raises(psycopg.OperationalError) as ei:
        s.connect(user="tlspass", password="tls-pass")
    assert "certificate verify failed" in str(ei.value), str(ei.value)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_tls_handshake_in_progress_at_shutdown_is_closed_as_postgres_does(start_sluice, pki,
                                                                            sig):
    """Postgres closes a connection whose SSL negotiation is in progress when it shuts down
    (backend_startup.c process_startup_packet_die: _exit(1) until the startup packet is read):
    half a TLS handshake cannot carry an ErrorResponse. sluice does the same, at once: the
    client sees the connection end, no 57P01 in clear text, and the shutdown is not held."""
    s = start_sluice(tls_keys(pki, auth_type="trust"))
    c = RawConn(s.port)
    try:
        c.send(ssl_request())
        assert c.read_byte() == b"S"
        # the client's hello: sluice's SSL_accept has it and waits for the rest
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        c.sock.sendall(outgoing.read())
        time.sleep(0.3)
        started = time.monotonic()
        s.send_signal(sig)
        c.sock.settimeout(10)
        data = b""
        try:
            while chunk := c.sock.recv(65536):
                data += chunk  # the server's hello flight, then the end
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 5
        assert b"57P01" not in data  # nothing in clear text inside a TLS stream
        assert s.wait_exit(20) == 0
    finally:
        c.close()


def test_stalled_tls_handshakes_give_their_login_places_up_before_a_password_exchange(
        start_sluice, pki):
    """Past max_client_logins the stalled logins without a whole startup packet give way first
    (config.md): a connection that stopped half-way through its TLS handshake has none, so it
    goes before an older client in its password exchange. Before, a flood of half-open
    handshakes counted as logins past their startup packet and evicted that client (53300)."""
    s = start_sluice(tls_keys(pki, "prefer", workers=1, max_client_logins=4), auth_file=USERS)
    waiting = RawConn(s.port)
    stalled = []
    try:
        waiting.send(startup_packet())  # answered with AuthenticationMD5Password, kept unanswered
        for _ in range(3):
            c = RawConn(s.port)
            stalled.append(c)
            c.send(ssl_request())
            assert c.read_byte() == b"S"  # and no ClientHello follows
        time.sleep(1.5)  # every login older than the 1 s grace a login has to send its bytes
        stalled.append(RawConn(s.port))  # the fifth login: one of the others must give way
        wait_until(lambda: any(c.is_closed(0.1) for c in stalled[:3]), 20,
                   what="a stalled TLS handshake gives its place up")
        waiting.finish_login(password="sluice-secret")
        assert waiting.query("SELECT 1")[0] == [["1"]]
    finally:
        for c in stalled + [waiting]:
            c.close()


def test_a_direct_tls_handshake_without_sslrequest_is_refused_naming_the_cause(start_sluice, pki):
    """A TLS ClientHello as the first bytes (libpq 17's sslnegotiation=direct) is refused, as
    Postgres 15 refuses it: sluice needs an SSLRequest first. Before, the log said only "length
    outside 8..10004 bytes", which names neither the client's TLS nor the way out."""
    s = start_sluice(tls_keys(pki, "prefer"), auth_file=USERS)
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    with pytest.raises((ssl.SSLError, OSError)):
        ctx.wrap_socket(sock, server_hostname="localhost").close()
    sock.close()
    s.wait_for_log(r"bad_startup: closing: a TLS handshake without an SSLRequest first "
                   r"\(direct TLS, libpq's sslnegotiation=direct\) is not supported: connect "
                   r"with sslnegotiation=postgres")
    with psycopg.connect(tls_dsn(s, pki, password="sluice-secret")) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_encryption_requests_are_answered_once_each_as_postgres_answers_them(start_sluice, pki):
    """Postgres answers an SSLRequest and a GSSENCRequest once each, in either order, and reads
    a second (or either inside TLS) as a startup packet of protocol 1234.5679 / 1234.5680, which
    it refuses with 0A000."""
    s = start_sluice(tls_keys(pki, "prefer"), auth_file=USERS)
    c = RawConn(s.port)
    try:
        c.send(gssenc_request())
        assert c.read_byte() == b"N"
        c.send(ssl_request())  # after an N, the client may still ask for TLS
        assert c.read_byte() == b"S"
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
        c.send(gssenc_request())
        err = c.expect_error()
        assert (err["C"], err["M"]) == ("0A000", "unsupported frontend protocol 1234.5680")
    finally:
        c.close()
    c = _tls_raw(s, pki)
    try:
        c.send(ssl_request())
        err = c.expect_error()
        assert (err["C"], err["M"]) == ("0A000", "unsupported frontend protocol 1234.5679")
    finally:
        c.close()


def test_tls_renegotiation_and_old_protocols_are_refused(start_sluice, pki):
    """Postgres 15 refuses TLS renegotiation and, by default, TLS older than 1.2; so does
    sluice with client_tls_protocols = secure (the default). The refusals leave it serving."""
    s = start_sluice(tls_keys(pki, "prefer"), auth_file=USERS)
    p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{s.port}", "-starttls",
                        "postgres", "-tls1_2", "-CAfile", str(pki.ca)], input=b"R\n",
                       capture_output=True, timeout=30)
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert "RENEGOTIATING" in out and "no renegotiation" in out, out
    c = RawConn(s.port)
    try:
        c.send(ssl_request())
        assert c.read_byte() == b"S"
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.set_ciphers("ALL:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(ssl.SSLError, match="protocol version|UNSUPPORTED_PROTOCOL|NO_PROTOCOLS"):
            old.wrap_socket(c.sock)
    finally:
        c.close()
    with psycopg.connect(tls_dsn(s, pki, password="sluice-secret")) as cn:
        assert cn.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_verify_modes_refuse_a_client_without_a_certificate_with_28000(start_sluice, pki, mode):
    """Postgres's clientcert finishes the TLS handshake of a client that sent no certificate and
    refuses its login: FATAL 28000 "connection requires a valid client certificate". Before,
    sluice failed the handshake, and the client saw only a TLS alert (libpq: "SSL error: tlsv13
    alert certificate required"), no ErrorResponse. A certificate that is sent and does not
    verify still fails the handshake, on both."""
    s = start_sluice(tls_keys(pki, mode, client_tls_ca_file=str(pki.ca)), auth_file=USERS)
    c = _tls_raw(s, pki)
    try:
        c.send(startup_packet())
        err = c.expect_error()
        assert (err["C"], err["M"]) == ("28000", "connection requires a valid client certificate")
        assert "sslcert" in err["H"], err
    finally:
        c.close()
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(tls_dsn(s, pki, password="sluice-secret"))
    assert "connection requires a valid client certificate" in str(ei.value)
    with psycopg.connect(tls_dsn(s, pki, password="sluice-secret",
                                 sslcert=str(pki.client_cert("app")),
                                 sslkey=str(pki.client_key("app")))) as cn:
        assert cn.execute("SELECT 1").fetchone()[0] == 1


def test_a_tls_handshake_sent_a_byte_at_a_time_is_bounded_by_client_startup_timeout(start_sluice,
                                                                                    pki):
    """The clock runs from the connection, not from the last byte: a client dribbling its
    ClientHello cannot hold its login place past client_startup_timeout."""
    s = start_sluice(tls_keys(pki, "prefer", client_startup_timeout=1, client_login_timeout=60),
                     auth_file=USERS)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context(cafile=str(pki.ca)).wrap_bio(incoming, outgoing,
                                                                  server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    c = RawConn(s.port)
    try:
        c.send(ssl_request())
        assert c.read_byte() == b"S"
        started = time.monotonic()
        with pytest.raises(OSError):
            for b in hello:  # 0.2 s a byte: the whole hello would take minutes
                c.sock.sendall(bytes([b]))
                time.sleep(0.2)
        assert time.monotonic() - started < 30
    finally:
        c.close()


def test_verify_full_towards_clients_checks_no_name_as_pgbouncers(start_sluice, pki):
    """security.md: client_tls_sslmode = verify-full is PgBouncer's, the same check as
    verify-ca; a certificate with CN=app lets its holder log in as app2 with app2's password.
    auth_type = cert is the way to CN = user (test_cert_auth_logs_in_the_user_named_...)."""
    s = start_sluice(tls_keys(pki, "verify-full", client_tls_ca_file=str(pki.ca)),
                     auth_file=USERS)
    with psycopg.connect(tls_dsn(s, pki, user="app2", password="other-secret",
                                 sslcert=str(pki.client_cert("app")),
                                 sslkey=str(pki.client_key("app")))) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_default_client_tls_ciphers_are_aead_only_as_documented(start_sluice, pki):
    """client_tls_ciphers = default (PgBouncer's "secure") is AEAD suites with ECDHE or DHE
    only, no CBC (security.md). Before, its string, written for OpenSSL 1.0 where the
    AES-SHA1 CBC suites counted as SSLv3 (!SSLv3), let ECDHE-ECDSA-AES128-SHA through on
    OpenSSL 1.1 and later."""
    s = start_sluice(tls_keys(pki, "prefer"), auth_file=USERS)

    def offer(ciphers):
        c = RawConn(s.port)
        try:
            c.send(ssl_request())
            assert c.read_byte() == b"S"
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(str(pki.ca))
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers(ciphers)
            with ctx.wrap_socket(c.sock, server_hostname="localhost") as t:
                return t.cipher()[0]
        finally:
            c.close()

    for cbc in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA"):
        with pytest.raises(ssl.SSLError, match="handshake failure|NO_SHARED_CIPHER"):
            offer(cbc)
    assert offer("ECDHE-ECDSA-AES128-GCM-SHA256") == "ECDHE-ECDSA-AES128-GCM-SHA256"
