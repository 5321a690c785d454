"""The authentication exchange as a careless client drives it: messages sent before they are
asked for. Postgres reads a client's answer to an Authentication request from its buffer when it
asks, so a password (or anything else) sent along with the startup packet is read then: the login
goes on, or is refused at once. sluice must do the same, never leave it unread until
client_login_timeout, and must not read it while the secret is still being looked up
(auth_query): the client has not been asked yet.
"""

import contextlib
import os
import socket
import struct
import time

import psycopg
import pytest

from conftest import APP_PASSWORD
from pgwire import PeerClosed, RawConn, ServerError, message, password_msg, query_msg, \
    raw_login, startup_packet
from test_auth import auth_query_sluice, auth_roles  # noqa: F401 - a fixture

ANSWER_WITHIN = 10.0  # far below client_login_timeout (60 s): the answer is not a timeout's


def login_in_one_write(port, user, password, database="appdb"):
    """Startup packet and cleartext password in one write, before AuthenticationCleartextPassword
    arrives; then read what comes back. (auth codes seen, conn) once logged in."""
    c = RawConn(port, timeout=ANSWER_WITHIN)
    c.send(startup_packet(user=user, database=database) + password_msg(password))
    codes = []
    while True:
        mtype, payload = c.read_message()
        if mtype == "R":
            codes.append(struct.unpack_from("!I", payload)[0])
        elif mtype == "E":
            raise AssertionError(f"login refused: {payload!r}")
        elif mtype == "Z":
            return codes, c


def test_a_password_sent_with_the_startup_packet_is_read_when_asked(start_sluice):
    """auth_type = plain: the client knows it will be asked for its password in clear and sends
    it at once. Before the fix sluice sent AuthenticationCleartextPassword and then waited for a
    read that never came: the password sat in its buffer until client_login_timeout."""
    s = start_sluice(main={"auth_type": "plain"}, auth_file={"app": APP_PASSWORD})
    codes, c = login_in_one_write(s.port, "app", APP_PASSWORD)
    try:
        assert codes == [3, 0]
        assert c.query("SELECT 'pipelined password'")[0] == [["pipelined password"]]
    finally:
        c.close()


def test_a_password_sent_while_auth_query_looks_up_the_secret_is_read_once_asked(
        start_sluice, pg, auth_roles):  # noqa: F811 - the imported fixture
    """The secret comes from auth_query: the password arrives while the lookup runs, before the
    client was asked. It waits for the request (before: refused as a message 'before the
    authentication request', or left unread), then logs the client in."""
    s = auth_query_sluice(start_sluice, pg, method="plain")
    for _ in range(3):  # the first lookup also opens the auth_user's connection
        codes, c = login_in_one_write(s.port, "qscram", "qpass")
        c.close()
        assert codes == [3, 0]


def answer_to_startup_and_stray_message(port, stray):
    """(message types, SQLSTATE of the ErrorResponse, closed) for a startup packet with a stray
    message in the same write, a SCRAM login (Postgres's hba and sluice's auth_type)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN)
    c = RawConn.__new__(RawConn)
    c._adopt(sock, ANSWER_WITHIN)
    try:
        c.send(startup_packet(user="app", database="appdb") + stray)
        seen, sqlstate = [], None
        while True:
            mtype, payload = c.read_message()
            seen.append(mtype)
            if mtype == "E":
                sqlstate = dict((f[:1], f[1:]) for f in payload.decode().split("\0") if f)["C"]
                break
        return seen, sqlstate, c.is_closed(timeout=ANSWER_WITHIN)
    finally:
        c.close()


def test_a_stray_message_with_the_startup_packet_is_refused_at_once_as_postgres_does(
        pg, start_sluice):
    """A Query (or a password that is not a SASLInitialResponse) sent with the startup packet:
    Postgres reads it as the answer to AuthenticationSASL and refuses it with 08P01 at once.
    Before the fix sluice left it unread and the client waited for client_login_timeout."""
    s = start_sluice(main={"auth_type": "scram-sha-256"}, auth_file={"app": APP_PASSWORD})
    for stray in (query_msg("SELECT 1"), password_msg(APP_PASSWORD),
                  message(b"p", b"SCRAM-SHA-1\0" + struct.pack("!i", 5) + b"n,,n=")):
        direct = answer_to_startup_and_stray_message(pg.port, stray)
        through = answer_to_startup_and_stray_message(s.port, stray)
        assert direct == (["R", "E"], "08P01", True), direct
        assert through == direct, (stray, through)


LONG_ROLE = "long_role_" + "r" * 53  # 63 bytes: Postgres's longest name (NAMEDATALEN - 1)


def test_a_user_name_past_63_bytes_is_cut_as_postgres_cuts_it(pg, start_sluice):
    """Postgres cuts the user (and database) name of a startup packet at 63 bytes before it looks
    the role up: "<63-byte role>zz" logs in as that role (SCRAM: md5 hashes the name the client
    sent, which fails there as here). Through sluice the same name must find
    the same auth_file entry, and count against the same per-user cap: before, sluice kept the
    whole name, refused the login (no such user in auth_file) and, where it let the name in,
    gave every longer spelling a pool and caps of its own."""
    assert len(LONG_ROLE) == 63
    with pg.superuser() as su:
        su.execute(f"DROP ROLE IF EXISTS {LONG_ROLE}")
        su.execute(f"CREATE ROLE {LONG_ROLE} LOGIN PASSWORD 'longpass'")
    try:
        direct = RawConn(pg.port).startup(user=LONG_ROLE + "zz", password="longpass")
        assert direct.query("SELECT current_user")[0] == [[LONG_ROLE]]
        direct.close()
        s = start_sluice(main={"auth_type": "scram-sha-256", "max_user_client_connections": 1},
                         auth_file={LONG_ROLE: "longpass"})
        first = RawConn(s.port).startup(user=LONG_ROLE + "zz", password="longpass")
        try:
            assert first.query("SELECT 1")[0] == [["1"]]
            second = RawConn(s.port)
            try:
                second.send(startup_packet(user=LONG_ROLE + "yy", database="appdb"))
                try:
                    second.finish_login(user=LONG_ROLE + "yy", password="longpass")
                    raise AssertionError("a second spelling of the user passed its client cap")
                except ServerError as e:
                    assert e.sqlstate == "53300", e.fields
                    assert "max_user_client_connections" in e.fields["M"] + e.fields.get("D", "")
            finally:
                second.close()
        finally:
            first.close()
    finally:
        pg.clear_backends(LONG_ROLE)
        with pg.superuser() as su:
            su.execute(f"DROP ROLE IF EXISTS {LONG_ROLE}")


def cpu_seconds(pid):
    """User + system CPU time of a process and its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_bytes_sent_while_the_secret_is_looked_up_wait_without_spinning(
        start_sluice, pg, auth_roles):  # noqa: F811 - the imported fixture
    """A client that sends more than sluice's read buffer holds while auth_query looks its
    secret up: since such bytes now wait to be read once the client is asked (they were refused
    at once before), the full buffer must stop the reading (backpressure), not leave a poll that
    fires again and again, burning a CPU for as long as the lookup takes."""
    slow_lookup = ("SELECT usename, passwd FROM pg_shadow, pg_sleep(3) "
                   "WHERE usename = $1")
    s = auth_query_sluice(start_sluice, pg, method="plain", auth_query=slow_lookup)
    c = RawConn(s.port, timeout=ANSWER_WITHIN)
    try:
        c.send(startup_packet(user="qscram", database="appdb"))
        s.wait_for_log(r'auth_query: looking up user "qscram"')
        before = cpu_seconds(s.pid)
        c.sock.setblocking(False)
        flood, sent = password_msg("x" * 100) * 2000, 0
        try:  # far more than the read buffer: what the kernel takes of it
            while sent < len(flood):
                sent += c.sock.send(flood[sent:])
        except BlockingIOError:
            pass
        time.sleep(1.5)  # well inside the 3 s lookup
        used = cpu_seconds(s.pid) - before
        assert used < 0.5, f"sluice used {used:.2f} s of CPU in 1.5 s while the lookup ran"
    finally:
        c.close()


def sasl_initial(first):
    return message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)


def test_an_authorization_identity_or_a_mandatory_extension_is_0a000_as_in_postgres(
        pg, start_sluice):
    """A SCRAM client-first-message with an authorization identity (n,a=...) or a mandatory
    extension (m=...): Postgres refuses it as a feature it does not support, 0A000 with its own
    words; sluice said 08P01, as if the message were malformed."""
    s = start_sluice(main={"auth_type": "scram-sha-256"}, auth_file={"app": APP_PASSWORD})
    for first, words in ((b"n,a=someone,n=,r=abcdefgh", "authorization identity"),
                         (b"n,,m=ext,n=,r=abcdefgh", "unsupported SCRAM extension")):
        for port in (pg.port, s.port):
            c = RawConn(port)
            try:
                c.send(startup_packet(user="app", database="appdb"))
                mtype, _ = c.read_message()
                assert mtype == "R"
                c.send(sasl_initial(first))
                err = c.expect_error()
                assert (err["S"], err["C"]) == ("FATAL", "0A000"), (port, err)
                assert words in err["M"], (port, err)
            finally:
                c.close()


def test_a_scram_first_message_ending_in_a_comma_logs_in_as_in_postgres(pg, start_sluice,
                                                                         monkeypatch):
    """'n,,n=,r=<nonce>,': Postgres's read_attr_value takes the comma with the nonce, and no
    extension follows, so the login goes on. sluice refused it as malformed (08P01) once it
    began to check the extensions after the nonce."""
    import pgwire

    class TrailingCommaScram(pgwire.ScramClient):
        def __init__(self, password):
            super().__init__(password)
            self.first_bare += ","  # part of the AuthMessage both sides sign

    monkeypatch.setattr(pgwire, "ScramClient", TrailingCommaScram)
    s = start_sluice(main={"auth_type": "scram-sha-256"}, auth_file={"app": APP_PASSWORD})
    for port in (pg.port, s.port):
        c = raw_login(port, password=APP_PASSWORD, timeout=ANSWER_WITHIN)
        try:
            assert c.query("SELECT 'trailing comma'")[0] == [["trailing comma"]], port
        finally:
            c.close()


def test_a_password_longer_than_8_kb_is_read_as_postgres_reads_it(start_sluice):
    """Postgres reads a password message of up to 65535 bytes (PG_MAX_AUTH_TOKEN_LENGTH): a long
    cleartext password, or a cloud provider's access token used as one. sluice refused one past
    8192 bytes with 08P01 'bad length'; now it reads one up to Postgres's limit (one longer than
    its read buffer too: test_a_30_kb_token_as_a_password_logs_in_as_on_postgres): the right one
    logs in, a wrong one is 28P01 as on Postgres."""
    long_password = "t" * 12000
    s = start_sluice(main={"auth_type": "plain"},
                     auth_file={"app": APP_PASSWORD, "tokenuser": long_password})
    c = RawConn(s.port)
    try:
        c.send(startup_packet(user="tokenuser", database="appdb"))
        mtype, payload = c.read_message()
        assert mtype == "R" and struct.unpack_from("!I", payload)[0] == 3  # cleartext
        c.send(password_msg(long_password))
        while True:
            mtype, payload = c.read_message()
            assert mtype != "E", payload
            if mtype == "Z":
                break
    finally:
        c.close()
    c = RawConn(s.port)
    try:
        c.send(startup_packet(user="tokenuser", database="appdb"))
        c.read_message()
        c.send(password_msg("x" * 12000))
        err = c.expect_error()
        assert err["C"] == "28P01", err
    finally:
        c.close()


TOKEN = "iam-token." + "t" * 29990  # a cloud provider's token used as a password: 30 kB
AUTH_TOKEN_MAX = 65535  # Postgres's PG_MAX_AUTH_TOKEN_LENGTH, the length word included


@contextlib.contextmanager
def role_asked_for_its_password_in_clear(pg, role, password):
    """role, with a SCRAM secret, asked by Postgres for its password in clear (pg_hba.conf
    'password'), as sluice asks with auth_type = plain."""
    hba = pg.data / "pg_hba.conf"
    before = hba.read_text()
    with pg.superuser() as su:
        su.execute("SET password_encryption = 'scram-sha-256'")
        su.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    hba.write_text(f"host all {role} 127.0.0.1/32 password\n" + before)
    pg.query("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        hba.write_text(before)
        pg.query("SELECT pg_reload_conf()")
        pg.clear_backends(role)
        with pg.superuser() as su:
            su.execute(f"DROP ROLE IF EXISTS {role}")


def answer_to_password_message(port, user, body):
    """What a server answers a cleartext login whose PasswordMessage carries body: the
    ErrorResponse's fields, or None when it closes without one."""
    c = RawConn(port, timeout=ANSWER_WITHIN)
    try:
        c.send(startup_packet(user=user, database="appdb"))
        mtype, payload = c.read_message()
        assert (mtype, struct.unpack_from("!I", payload)[0]) == ("R", 3), (mtype, payload)
        c.send(message(b"p", body))
        try:
            return c.expect_error(timeout=ANSWER_WITHIN)
        except PeerClosed:
            return None
    finally:
        c.close()


def test_a_30_kb_token_as_a_password_logs_in_as_on_postgres(pg, start_sluice,
                                                           auth_roles):  # noqa: F811
    """A PasswordMessage longer than sluice's read buffer (pkt_buf - 5 bytes, 16379 by default):
    Postgres reads up to 65535 bytes, so a cloud token used as a password (20-40 kB) logs in
    there, and sluice refused it with 08P01 'bad length'. It is now gathered in a block of its
    own: the role logs in through sluice (auth_query, auth_type = plain) as directly; the longest
    message Postgres reads is read (a wrong password then: 28P01 on both), and one byte more is
    refused. Postgres closes without a word there (it logs 08P01 "invalid message length");
    sluice says so with the same SQLSTATE and words."""
    with role_asked_for_its_password_in_clear(pg, "tokenrole", TOKEN):
        s = auth_query_sluice(start_sluice, pg, method="plain")
        with psycopg.connect(pg.direct_dsn(user="tokenrole", password=TOKEN)) as direct:
            assert direct.execute("SELECT current_user").fetchone() == ("tokenrole",)
        with s.connect(user="tokenrole", password=TOKEN) as c:
            assert c.execute("SELECT 'in with a 30 kB token'").fetchone() == (
                "in with a 30 kB token",)
        longest = b"w" * (AUTH_TOKEN_MAX - 4 - 1) + b"\0"
        for port in (pg.port, s.port):
            err = answer_to_password_message(port, "tokenrole", longest)
            assert err and (err["C"], err["M"]) == (
                "28P01", 'password authentication failed for user "tokenrole"'), (port, err)
        for too_long in (longest + b"\0", b"w" * 70000 + b"\0"):
            assert answer_to_password_message(pg.port, "tokenrole", too_long) is None
            err = answer_to_password_message(s.port, "tokenrole", too_long)
            assert err and (err["S"], err["C"]) == ("FATAL", "08P01"), err
            assert "invalid message length" in err["M"] and str(AUTH_TOKEN_MAX) in err["M"], err


def test_a_30_kb_token_sent_while_the_secret_is_looked_up_is_read_once_asked(
        pg, start_sluice, auth_roles):  # noqa: F811 - the imported fixture
    """A client that sends its startup packet and a 30 kB token as its password in one write,
    while auth_query looks its secret up: the token fills sluice's read buffer, which stops the
    reading until it is asked for. Postgres reads it once it asks and logs the role in. sluice
    began gathering it then, but never read the socket again: the login hung until
    client_login_timeout."""
    slow_lookup = "SELECT usename, passwd FROM pg_shadow, pg_sleep(1) WHERE usename = $1"
    with role_asked_for_its_password_in_clear(pg, "tokenrole", TOKEN):
        s = auth_query_sluice(start_sluice, pg, method="plain", auth_query=slow_lookup)
        for port in (pg.port, s.port):
            c = RawConn(port, timeout=ANSWER_WITHIN)
            try:
                c.send(startup_packet(user="tokenrole", database="appdb") + password_msg(TOKEN))
                codes = []
                while True:
                    mtype, payload = c.read_message()
                    assert mtype != "E", (port, payload)
                    if mtype == "R":
                        codes.append(struct.unpack_from("!I", payload)[0])
                    if mtype == "Z":
                        break
                assert codes == [3, 0], (port, codes)
            finally:
                c.close()


def test_a_sasl_message_past_1024_bytes_fails_the_login_as_on_postgres(pg, start_sluice):
    """Postgres reads a SASL message of at most 1024 bytes (PG_MAX_SASL_MESSAGE_LENGTH) and
    fails a longer one as a wrong password (28P01); sluice read it (up to its buffer) and
    refused it as malformed (08P01)."""
    s = start_sluice(main={"auth_type": "scram-sha-256"}, auth_file={"app": APP_PASSWORD})
    first = b"n,,n=,r=" + b"a" * 2000
    for port in (pg.port, s.port):
        c = RawConn(port, timeout=ANSWER_WITHIN)
        try:
            c.send(startup_packet(user="app", database="appdb"))
            assert c.read_message()[0] == "R"
            c.send(sasl_initial(first))
            err = c.expect_error()
            assert (err["C"], err["M"]) == (
                "28P01", 'password authentication failed for user "app"'), (port, err)
        finally:
            c.close()


@pytest.mark.timeout(60)
def test_long_passwords_in_progress_are_capped_at_max_client_logins(start_sluice):
    """Each login sending a password longer than the read buffer holds a block of up to 64 kB
    until it is read: at most max_client_logins of them in the whole process, so strangers
    cannot make sluice hold 64 kB per connection it accepts. Logins over max_client_logins
    give way once stalled a second; those that come faster than that, each with a long
    password, are refused (53300) past the cap, and the one the cap left in still logs in."""
    logins = 2
    s = start_sluice(main={"auth_type": "plain", "max_client_logins": logins,
                           "client_login_timeout": 60},
                     auth_file={"app": APP_PASSWORD, "tokenuser": TOKEN})
    conns = []
    try:
        t0 = time.monotonic()
        for _ in range(6):
            c = RawConn(s.port, timeout=ANSWER_WITHIN)
            conns.append(c)
            c.send(startup_packet(user="tokenuser", database="appdb"))
        for c in conns:
            assert c.read_message()[0] == "R"
        for c in conns:  # the header and a part: a long password on its way
            c.send(password_msg(TOKEN)[:20000])
        # no login old enough to give way (1 s) before sluice read the headers
        quick = time.monotonic() - t0 < 0.5
        answers = []
        for c in conns:
            try:
                answers.append(c.expect_error(timeout=1.5))
            except socket.timeout:
                answers.append(None)  # holding its place: gathering its password
        holding = [c for c, a in zip(conns, answers) if a is None]
        refused = [a for a in answers if a is not None]
        assert all(a["C"] == "53300" for a in refused), refused
        assert len(holding) <= logins, answers
        if quick:  # none gave way: the cap on long passwords refused the rest
            assert len(refused) == len(conns) - logins, answers
            assert all("longer than pkt_buf" in a["M"] for a in refused), refused
        holding[0].send(password_msg(TOKEN)[20000:])
        while holding[0].read_message()[0] != "Z":
            pass
    finally:
        for c in conns:
            c.close()
