"""Host names are resolved off the event loop (issue 18 item 10): a slow DNS answer for one
database's host must not stall the clients of another database.

The slow resolver: a tiny UDP DNS server on 127.0.0.x:53 that answers after SLOW_S seconds, and
sluice started in its own mount namespace (`unshare -m`) with a resolv.conf naming that server
bind-mounted over /etc/resolv.conf, so only sluice's lookups go there. The tests skip when that
cannot be arranged (not root, no unshare, mount namespaces refused, port 53 taken), and say so."""
import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, sluice_bin
from pgwire import RawConn, startup_packet

SLOW_S = 4.0
SLOW_NAME = "slowdb.sluice-test"
# a stall of the loop shows as a query that waits for the whole DNS answer
STALL_S = 2.0


class SlowDNS:
    """Answers A queries for SLOW_NAME with 127.0.0.1 after SLOW_S seconds (AAAA: no records,
    also late); every other name: NXDOMAIN at once."""

    def __init__(self, addr):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, 53))
        self.sock.settimeout(0.2)
        self.addr = addr
        self.queries = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(data, peer), daemon=True).start()

    def _answer(self, data, peer):
        if len(data) < 12:
            return
        qid, _flags, qdcount = struct.unpack("!HHH", data[:6])
        if qdcount != 1:
            return
        pos, labels = 12, []
        while pos < len(data) and data[pos] != 0:
            n = data[pos]
            labels.append(data[pos + 1:pos + 1 + n].decode("ascii", "replace"))
            pos += 1 + n
        question = data[12:pos + 5]
        qtype = struct.unpack("!H", data[pos + 1:pos + 3])[0]
        name = ".".join(labels).lower()
        self.queries.append((name, qtype))
        if name != SLOW_NAME:
            self._send(struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question, peer)
            return
        time.sleep(SLOW_S)
        answers = b""
        if qtype == 1:  # A
            answers = (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4)
                       + socket.inet_aton("127.0.0.1"))
        self._send(struct.pack("!HHHHHH", qid, 0x8180, 1, 1 if answers else 0, 0, 0)
                   + question + answers, peer)

    def _send(self, packet, peer):
        try:
            self.sock.sendto(packet, peer)
        except OSError:
            pass

    def close(self):
        self._stop.set()
        self.sock.close()
        self._thread.join(2)


@pytest.fixture
def slow_dns(tmp_path, monkeypatch):
    """Must come before start_sluice in a test's arguments: it points SLUICE_BIN at a wrapper
    that runs sluice with the slow resolver."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to give sluice its own /etc/resolv.conf")
    probe_file = tmp_path / "probe.conf"
    probe_file.write_text("# probe\n")
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            f"mount --bind '{probe_file}' /etc/resolv.conf && "
                            "grep -q probe /etc/resolv.conf"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip("cannot bind-mount a resolv.conf in a mount namespace: "
                    f"{probe.stderr.decode().strip()}")
    dns = None
    for _ in range(10):
        addr = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        try:
            dns = SlowDNS(addr)
            break
        except OSError:
            continue
    if dns is None:
        pytest.skip("no free 127.x.y.z:53 for the slow DNS server")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {dns.addr}\noptions timeout:{int(SLOW_S) + 6} attempts:1\n")
    real = sluice_bin()
    wrapper = tmp_path / "sluice-slow-dns"
    wrapper.write_text("#!/bin/sh\n"
                       f"exec unshare -m sh -c 'mount --bind \"$0\" /etc/resolv.conf && "
                       f"exec \"$@\"' '{resolv}' '{real}' \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("SLUICE_BIN", str(wrapper))
    yield dns
    dns.close()


def slowest_select_during(s, login):
    """Keep a client of appdb (its server connected: only a stalled loop can delay it) running
    SELECT 1 while login(result) runs in a thread through the slow lookup; returns (the longest
    SELECT in seconds, what login put in result)."""
    result = {}

    def run():
        t0 = time.monotonic()
        try:
            login(result)
        except Exception as e:  # noqa: BLE001 - the test checks result
            result["error"] = e
        result["took"] = time.monotonic() - t0

    with s.connect() as fast:
        fast.execute("SELECT 1")
        t = threading.Thread(target=run)
        t.start()
        worst = 0.0
        end = time.monotonic() + SLOW_S + 1
        while time.monotonic() < end:
            t0 = time.monotonic()
            fast.execute("SELECT 1").fetchone()
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.02)
        t.join(30)
    return worst, result


def test_a_slow_dns_answer_for_one_database_stalls_no_other(slow_dns, start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction"},
                     databases={APP_DB: pg.db_entry(),
                                "slowdb": pg.db_entry(host=SLOW_NAME)})
    assert "sluice-slow-dns" in s.proc.args[0], "slow_dns must come before start_sluice"

    def slow_login(result):
        with s.connect(dbname="slowdb") as c:
            result["db"] = c.execute("SELECT current_database()").fetchone()[0]

    worst, result = slowest_select_during(s, slow_login)
    assert (SLOW_NAME, 1) in slow_dns.queries, "sluice never asked the slow DNS server"
    assert worst < STALL_S, f"a query of another database took {worst:.1f} s during the lookup"
    assert result.get("db") == APP_DB, result
    assert result["took"] >= SLOW_S - 0.5, result  # it did wait for the answer


def test_a_host_that_cannot_be_resolved_is_skipped_like_libpq_does(slow_dns, start_sluice,
                                                                   pg):
    s = start_sluice(databases={APP_DB: pg.db_entry(host="nosuch.sluice-test,127.0.0.1",
                                                    port=f"{pg.port},{pg.port}"),
                                "nowhere": pg.db_entry(host="nosuch.sluice-test")})
    with s.connect() as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    with pytest.raises(Exception) as ei:
        s.connect(dbname="nowhere")
    assert 'could not translate host name "nosuch.sluice-test"' in str(ei.value)


def test_a_slow_dns_answer_for_auth_query_stalls_no_other(slow_dns, start_sluice, pg):
    with pg.superuser() as c:
        c.execute("CREATE ROLE dns_auth LOGIN SUPERUSER PASSWORD 'authpass'")
        c.execute("SET password_encryption = 'scram-sha-256'")
        c.execute("CREATE ROLE dns_user LOGIN PASSWORD 'userpass'")
    try:
        s = start_sluice({"auth_type": "scram-sha-256", "auth_user": "dns_auth",
                          "auth_dbname": "authdb", "pool_mode": "transaction"},
                         auth_file={"dns_auth": "authpass", APP_USER: APP_PASSWORD},
                         databases={APP_DB: pg.db_entry(),
                                    "authdb": pg.db_entry(host=SLOW_NAME, dbname="postgres")})
        assert "sluice-slow-dns" in s.proc.args[0], "slow_dns must come before start_sluice"

        def lookup_login(result):
            with s.connect(user="dns_user", password="userpass") as c:
                result["user"] = c.execute("SELECT 1").fetchone()[0]

        worst, result = slowest_select_during(s, lookup_login)
        assert (SLOW_NAME, 1) in slow_dns.queries, "sluice never asked the slow DNS server"
        assert worst < STALL_S, f"a query took {worst:.1f} s during auth_query's lookup"
        assert result.get("user") == 1, result
    finally:
        with pg.superuser() as c:
            c.execute("DROP ROLE IF EXISTS dns_auth")
            c.execute("DROP ROLE IF EXISTS dns_user")


def test_shutdown_during_a_slow_lookup_exits_cleanly(slow_dns, start_sluice, pg):
    """The lookup cannot be stopped once the thread pool runs it: sluice waits for it, frees
    it, and exits 0 (ASan builds: no leak)."""
    s = start_sluice(databases={"slowdb": pg.db_entry(host=SLOW_NAME)})
    c = RawConn(s.port, timeout=30)
    c.send(startup_packet(user=APP_USER, database="slowdb"))
    deadline = time.monotonic() + 5
    while (SLOW_NAME, 1) not in slow_dns.queries and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (SLOW_NAME, 1) in slow_dns.queries
    assert s.stop(timeout=SLOW_S + 10) == 0
    c.close()
