"""Client and wait limits: max_client_conn and query_wait_timeout answer with 53300, and a
client that waited too long is told what actually held it back."""

import socket
import time

import psycopg
import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, Background, wait_until
from pgwire import RawConn, ServerError, password_msg, raw_login, startup_packet
import test_auth
from test_auth import auth_query_sluice
from test_resources import holds_connection_from

auth_roles = test_auth.auth_roles  # a fixture: roles auth_query finds


def test_max_client_conn_reached_sends_53300_and_frees_up_after_a_disconnect(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "max_client_conn": 2})
    a = raw_login(s.port)
    b = raw_login(s.port)
    try:
        c = RawConn(s.port)
        try:
            c.send(startup_packet())
            err = c.expect_error(timeout=10)
            assert err.get("C") == "53300", err
            assert c.is_closed(5)
        finally:
            c.close()
        rows, _ = a.query("SELECT 1")
        assert rows == [["1"]]
        b.send(b"X\x00\x00\x00\x04")  # Terminate
        b.close()

        def login_again():
            d = raw_login(s.port)
            d.close()
            return True
        # the slot is released once sluice has seen the disconnect
        deadline = time.monotonic() + 5
        while True:
            try:
                assert login_again()
                break
            except ServerError as e:
                if e.sqlstate != "53300" or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(60)
def test_query_wait_timeout_sends_53300_naming_the_pool(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "query_wait_timeout": 1})
    with s.connect() as a:
        a.execute("BEGIN")
        a.execute("SELECT 1")
        b = raw_login(s.port)
        try:
            t0 = time.monotonic()
            with pytest.raises(ServerError) as ei:
                b.query("SELECT 'b ran'")
            waited = time.monotonic() - t0
            assert ei.value.sqlstate == "53300", ei.value.fields
            assert "appdb" in ei.value.fields.get("M", "") + ei.value.fields.get("D", ""), \
                f"the message should name the pool: {ei.value.fields}"
            assert 0.8 <= waited < 5, f"waited {waited:.2f} s with query_wait_timeout = 1"
        finally:
            b.close()
        a.execute("COMMIT")
    with s.connect() as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.timeout(60)
def test_pool_timeout_alias_sets_the_wait_limit(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "pool_timeout": 1})
    with s.connect() as a:
        a.execute("BEGIN")
        a.execute("SELECT 1")
        b = raw_login(s.port)
        try:
            t0 = time.monotonic()
            with pytest.raises(ServerError) as ei:
                b.query("SELECT 1")
            assert ei.value.sqlstate == "53300", ei.value.fields
            assert time.monotonic() - t0 < 5
        finally:
            b.close()
        a.execute("COMMIT")


@pytest.mark.timeout(60)
def test_waiting_clients_are_served_in_arrival_order(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1,
                      "query_wait_timeout": 30})
    with s.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        conns = [s.connect() for _ in range(4)]
        try:
            jobs = []
            for c in conns:
                jobs.append(Background(
                    lambda c=c: c.execute("SELECT clock_timestamp()").fetchone()[0]))
                time.sleep(0.3)  # arrivals well apart
            holder.execute("COMMIT")
            ran_at = [j.result(20) for j in jobs]
            order = sorted(range(4), key=lambda i: ran_at[i])
            assert order == [0, 1, 2, 3], f"waiters served in order {order}, expected FIFO"
        finally:
            for c in conns:
                c.close()


def half_sent_startups(port, n):
    """n connections that send 4 bytes of a startup packet and then nothing."""
    socks = []
    for _ in range(n):
        c = RawConn(port, timeout=10)
        c.send(startup_packet()[:4])
        socks.append(c)
    return socks


@pytest.mark.timeout(90)
def test_a_flood_of_half_sent_startups_locks_out_neither_logged_in_users_nor_new_logins(
        start_sluice):
    """60 strangers each sending part of a startup packet, with max_client_conn = 50 and the
    default 60 s client_login_timeout: logins in progress have their own cap
    (max_client_logins), a new connection takes the place of the oldest one still logging in,
    and only logged-in clients count against max_client_conn."""
    s = start_sluice({"pool_mode": "transaction", "max_client_conn": 50,
                      "max_client_logins": 20, "client_login_timeout": 60,
                      "client_startup_timeout": 60})
    users = [raw_login(s.port) for _ in range(3)]
    strangers = half_sent_startups(s.port, 60)
    try:
        for i in range(5):
            with s.connect(connect_timeout=10) as c:
                assert c.execute("SELECT %s::int", [i]).fetchone() == (i,)
        for u in users:
            assert u.query("SELECT 1")[0] == [["1"]]
        # the strangers beyond the cap are told so (53300, naming it) once they have stalled
        # for a moment, long before client_login_timeout; with several workers each gives way
        # its own oldest, so which 40 is not the arrival order (how many is)
        deadline = time.monotonic() + 15
        errors = []
        while len(errors) < 60 - 20 and time.monotonic() < deadline:
            for c in strangers:
                if c not in (e[0] for e in errors):
                    try:
                        errors.append((c, c.expect_error(timeout=0.05)))
                    except OSError:
                        pass
        errors = [e for _, e in errors]
        assert len(errors) == 60 - 20, f"only {len(errors)} of 60 half-sent logins were closed"
        assert all(e["C"] == "53300" and "max_client_logins (20)" in e["M"] for e in errors), \
            errors[:3]
    finally:
        for c in strangers + users:
            c.close()


@pytest.mark.timeout(90)
def test_logins_stalled_in_the_password_exchange_at_the_accept_limit_do_not_lock_out_new_ones(
        start_sluice):
    """Strangers that send a whole startup packet and never answer the password request, as
    many as sluice accepts (max_client_conn + max_client_logins + 100): sluice stops accepting,
    so no newcomer arrives to take a stalled login's place. They must give way on their own
    once they have stalled for a moment, over max_client_logins, as half-sent startups do;
    before, they held every place until client_login_timeout (60 s) and no one, not even the
    admin console, could log in, again and again for as long as the strangers came back."""
    s = start_sluice({"max_client_conn": 10, "max_client_logins": 5, "client_login_timeout": 60},
                     auth_file={APP_USER: APP_PASSWORD})
    accept_limit = 10 + 5 + 100
    strangers = []
    try:
        for _ in range(accept_limit):
            c = RawConn(s.port, timeout=10)
            c.send(startup_packet())
            strangers.append(c)
        s.wait_for_log(r"client connections: not accepting more until some leave")
        t0 = time.monotonic()
        user = raw_login(s.port, password=APP_PASSWORD, timeout=30)
        try:
            assert user.query("SELECT 1")[0] == [["1"]]
        finally:
            user.close()
        assert time.monotonic() - t0 < 30, "the login waited for client_login_timeout"
        err = strangers[0].expect_error(timeout=10)
        assert err["C"] == "53300" and "max_client_logins (5)" in err["M"], err
    finally:
        for c in strangers:
            c.close()


@pytest.mark.timeout(60)
def test_over_the_login_cap_half_sent_startups_give_way_before_password_exchanges(start_sluice):
    """Over max_client_logins with no newcomer to make room, the maintenance tick lets stalled
    logins go in make_room_for_a_login's order: those that have not sent a whole startup packet
    first. The tick went down its list instead, so the older connections waiting for their
    password prompt to be answered (a human at psql, a slow driver) went before half-sent
    strangers. The prompted ones connect first (first in the list) but enter the password
    exchange only once sluice holds the strangers, so whenever one of them has stalled a
    second, the strangers have too, and must go first."""
    s = start_sluice({"workers": 1, "max_client_logins": 3, "client_login_timeout": 60,
                      "auth_type": "plain", "client_startup_timeout": 60,
                      "tcp_defer_accept": 0}, auth_file={APP_USER: APP_PASSWORD})
    prompted = [RawConn(s.port, timeout=10) for _ in range(3)]
    half = []
    try:
        for c in prompted:
            wait_until(lambda: holds_connection_from(s.pid, c.sock.getsockname()[1]), 10,
                       interval=0.01, what="sluice to accept the connection")
        half = half_sent_startups(s.port, 2)  # over the cap by 2 once they are accepted
        for c in half:
            wait_until(lambda: holds_connection_from(s.pid, c.sock.getsockname()[1]), 10,
                       interval=0.01, what="sluice to accept the half-sent startup")
        for c in prompted:
            c.send(startup_packet())
            assert c.read_message()[0] == "R"  # asked for its password: in the exchange
        for c in half:
            err = c.expect_error(timeout=15)
            assert err["C"] == "53300", err
        for c in prompted:  # still asked for a password, and still able to answer it
            c.sock.settimeout(0.5)
            with pytest.raises(socket.timeout):
                c.sock.recv(1)
        prompted[0].send(password_msg(APP_PASSWORD))
        while prompted[0].read_message()[0] != "Z":
            pass
    finally:
        for c in prompted + half:
            c.close()


@pytest.mark.timeout(30)
def test_a_half_sent_startup_packet_is_dropped_after_client_startup_timeout(start_sluice):
    s = start_sluice({"client_startup_timeout": 1, "client_login_timeout": 60})
    c = half_sent_startups(s.port, 1)[0]
    try:
        t0 = time.monotonic()
        err = c.expect_error(timeout=10)
        assert err["C"] == "08P01" and "client_startup_timeout" in err["M"], err
        assert time.monotonic() - t0 < 8
    finally:
        c.close()


# ---- what held a waiter back --------------------------------------------------------------------

ADMIN = "admin"


def console(s):
    return psycopg.connect(s.dsn(dbname="sluice", user=ADMIN, password=None), autocommit=True,
                           prepare_threshold=None)


def wait_error(conn, sql="SELECT 1"):
    with pytest.raises(psycopg.Error) as ei:
        conn.execute(sql)
    return str(ei.value)


@pytest.mark.timeout(60)
def test_waiter_during_pause_is_told_the_pool_is_paused_not_full(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "admin_users": ADMIN, "query_wait_timeout": 1})
    with s.connect() as c, console(s) as adm:
        c.execute("SELECT 1")
        adm.execute(f"PAUSE {APP_DB}")
        msg = wait_error(c)
        assert "paused" in msg and "RESUME" in msg and "is full" not in msg, msg
        adm.execute(f"RESUME {APP_DB}")
        assert c.execute("SELECT 2").fetchone()[0] == 2


@pytest.mark.timeout(60)
def test_waiter_after_kill_is_told_the_database_was_killed(start_sluice):
    s = start_sluice({"pool_mode": "transaction", "admin_users": ADMIN, "query_wait_timeout": 1})
    with console(s) as adm:
        with s.connect() as c:
            c.execute("SELECT 1")
            adm.execute(f"KILL {APP_DB}")
        with s.connect() as c:
            msg = wait_error(c)
            assert "KILL" in msg and "RESUME" in msg and "is full" not in msg, msg
        adm.execute(f"RESUME {APP_DB}")


@pytest.mark.timeout(60)
def test_waiter_under_a_shared_cap_is_told_which_cap_and_who_holds_it(start_sluice, pg):
    users = {APP_USER: APP_PASSWORD, "app2": "app2pass"}
    s = start_sluice({"pool_mode": "transaction", "max_db_connections": 1,
                      "query_wait_timeout": 1},
                     databases={APP_DB: {"host": "127.0.0.1", "port": pg.port, "dbname": APP_DB}},
                     auth_file=users)
    with s.connect() as holder, s.connect(user="app2", password="app2pass") as other:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        msg = wait_error(other)
        assert "max_db_connections = 1" in msg and f'"{APP_DB}/{APP_USER}"' in msg, msg
        assert "0 of 0" not in msg and "pool_size" not in msg, msg
        holder.execute("COMMIT")


@pytest.mark.timeout(60)
def test_login_waiter_while_the_server_is_still_logging_in_is_told_so(start_sluice):
    """A database that accepts TCP and never answers the login: the client's wait ends with the
    server still logging in, and the message says so (no pool is full)."""
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(16)
    try:
        s = start_sluice({"pool_mode": "transaction", "query_wait_timeout": 1,
                          "server_connect_timeout": 30},
                         databases={APP_DB: {"host": "127.0.0.1", "port": mute.getsockname()[1],
                                             "dbname": APP_DB, "user": APP_USER,
                                             "password": APP_PASSWORD, "sslmode": "disable"}})
        with pytest.raises(psycopg.Error) as ei:
            s.connect()
        msg = str(ei.value)
        assert "logging in" in msg and "is full" not in msg, msg
    finally:
        mute.close()


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("auth_roles")
def test_a_login_waiting_on_sluices_own_auth_query_lookup_does_not_give_way(start_sluice, pg):
    """Over max_client_logins the logins that keep sluice waiting give way; one whose secret
    sluice is still looking up (auth_query in flight) keeps no one waiting but sluice, and was
    evicted as stalled (53300) once older than a second. It must log in, and once its lookup
    is done and it is asked for its password, it has the same second to answer as any login,
    however long the lookup took."""
    slow_lookup = "SELECT usename, passwd FROM pg_shadow, pg_sleep(3) WHERE usename = $1"
    s = auth_query_sluice(start_sluice, pg, method="plain", auth_query=slow_lookup, workers=1,
                          max_client_logins=1, client_login_timeout=60,
                          client_startup_timeout=60, tcp_defer_accept=0)

    def stranger():
        """A connection that sends nothing: one login more, a newcomer to make room for."""
        c = RawConn(s.port, timeout=10)
        strangers.append(c)
        wait_until(lambda: holds_connection_from(s.pid, c.sock.getsockname()[1]), 10,
                   interval=0.01, what="sluice to accept the stranger")

    waiting = RawConn(s.port, timeout=15)
    strangers = []
    try:
        waiting.send(startup_packet(user="qscram", database=APP_DB))
        s.wait_for_log(r'auth_query: looking up user "qscram"')
        time.sleep(1.2)  # in the password exchange past the grace a stalled login has
        stranger()  # over the cap: the oldest login that keeps sluice waiting gives way
        mtype, payload = waiting.read_message()
        assert mtype == "R", waiting_error(mtype, payload)
        asked = time.monotonic()
        stranger()  # over the cap again, just after it was asked
        waiting.send(password_msg("qpass"))
        answered_within_its_second = time.monotonic() - asked < 0.8
        while True:
            mtype, payload = waiting.read_message()
            if mtype == "E" and not answered_within_its_second:
                pytest.skip("the test took a second to answer the password request")
            assert mtype != "E", waiting_error(mtype, payload)
            if mtype == "Z":
                break
        assert waiting.query("SELECT current_user")[0] == [[APP_USER]]
    finally:
        for c in strangers + [waiting]:
            c.close()


def waiting_error(mtype, payload):
    return payload.decode(errors="replace") if mtype == "E" else mtype
