"""Resources come back: file descriptors and memory after many short-lived clients, and many
idle clients served by a few servers."""

import ctypes
import errno
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from conftest import BackendSampler, wait_until
from pgwire import RawConn, query_msg, raw_login, ssl_request, startup_packet, terminate_msg


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def holds_connection_from(pid, client_port):
    """Does the process hold the accepted socket of the TCP connection from client_port? By the
    socket's inode (/proc/net/tcp*), so other descriptors the process opens or closes meanwhile
    (a thread pool's eventfd, a log file) cannot hide or fake it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                    if remote_port == client_port and fields[9] != "0":
                        inodes.add(f"socket:[{fields[9]}]")
        except FileNotFoundError:
            continue
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


def traced_by(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_short_lived_clients_leave_no_file_descriptors_behind(start_sluice, mode):
    s = start_sluice({"pool_mode": mode, "default_pool_size": 2, "log_connections": 0,
                      "log_disconnections": 0})
    warm = raw_login(s.port)
    warm.query("SELECT 1")
    warm.send(terminate_msg())
    warm.close()
    time.sleep(0.3)
    base = fd_count(s.pid)
    for i in range(150):
        kind = i % 5
        c = RawConn(s.port)
        try:
            if kind == 0:  # polite: login, query, Terminate
                c.startup()
                c.query("SELECT 1")
                c.send(terminate_msg())
            elif kind == 1:  # login, query, FIN without Terminate
                c.startup()
                c.query("SELECT 1")
                c.close_abruptly()
            elif kind == 2:  # RST in the middle of a query
                c.startup()
                c.send(query_msg("SELECT pg_sleep(0.05)"))
                c.close_abruptly(reset=True)
            elif kind == 3:  # SSLRequest then gone
                c.send(ssl_request())
                c.recv_exact(1)
                c.close_abruptly()
            else:  # half a startup packet then gone
                c.send(startup_packet()[:6])
                c.close_abruptly(reset=True)
        finally:
            c.close()
    try:
        wait_until(lambda: fd_count(s.pid) <= base + 2, timeout=10, interval=0.2,
                   what="sluice's open files to return to the baseline")
    except AssertionError:
        raise AssertionError(f"sluice has {fd_count(s.pid)} open files after 150 short clients;"
                             f" {base} before: descriptors leak")
    with s.connect() as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.timeout(120)
def test_300_idle_clients_share_3_servers_and_all_get_answers(start_sluice, pg):
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 3, "max_client_conn": 400,
                      "log_connections": 0, "log_disconnections": 0})
    conns = []
    try:
        for _ in range(300):
            conns.append(raw_login(s.port))
        with BackendSampler(pg, "app") as sampler:
            for c in conns:  # send all, then read all: 300 queued transactions
                c.send(query_msg("SELECT 41 + 1"))
            for c in conns:
                rows, _ = c.read_results()
                assert rows == [["42"]]
        assert sampler.max <= 3
    finally:
        for c in conns:
            c.close()


def trace_new_clients(s, tmp_path, syscalls, clients=40):
    """strace sluice (only `syscalls`) while `clients` clients log in, query, and leave one after
    another over a warm pool; returns (name, args, result) per completed call, in order."""
    warm = raw_login(s.port)  # opens the pool's server and checks the inherited options
    warm.query("SELECT 1")
    warm.send(terminate_msg())
    warm.close()
    base = fd_count(s.pid)
    wait_until(lambda: fd_count(s.pid) <= base, timeout=10, what="the warm-up client to go")
    trace = tmp_path / "strace.txt"
    tracer = subprocess.Popen(["strace", "-f", "-o", str(trace), "-p", str(s.pid), "-e",
                               "trace=" + ",".join(syscalls)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: traced_by(s.pid) != 0, timeout=10, what="strace to attach")
        for _ in range(clients):
            c = raw_login(s.port)
            assert c.query("SELECT 1")
            c.send(terminate_msg())
            c.close()
        wait_until(lambda: fd_count(s.pid) <= base, timeout=10,
                   what="sluice to close the clients' sockets")
        time.sleep(0.3)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=10)
    calls = []
    for line in trace.read_text().splitlines():
        m = re.match(r"(?:\d+\s+)?(\w+)\((.*)\)\s+=\s+(-?\d+)", line)
        if m:
            calls.append((m.group(1), m.group(2), int(m.group(3))))
        elif "epoll_wait" in line:  # interrupted or split by another thread: still a wait
            calls.append(("epoll_wait", line, 0))
    accepted = sum(1 for name, _, result in calls if name == "accept4" and result >= 0)
    accepted = sum(1 for name, _, result in calls if name == "accept4" and result >= 0)
    assert accepted == clients, f"strace saw {accepted} accepted sockets"
    return calls


@pytest.mark.timeout(120)
def test_a_new_client_costs_few_system_calls_beyond_its_traffic(start_sluice, tmp_path):
    """What a connection storm costs is mostly system calls. Per accepted client, sluice makes no
    setsockopt (TCP_NODELAY and SO_KEEPALIVE come from the listening socket), no ioctl, and at
    most three epoll_ctl (poll handles are reused by descriptor number instead of libuv's
    uv_poll_init checks: ADD, DEL and FIONBIO for every socket). Counted with strace."""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "log_connections": 0,
                      "log_disconnections": 0})
    clients = 40
    calls = trace_new_clients(s, tmp_path, ["accept4", "epoll_ctl", "ioctl", "setsockopt"],
                              clients)
    count = {}
    for name, _, _ in calls:
        count[name] = count.get(name, 0) + 1
    assert count.get("setsockopt", 0) == 0, count
    assert count.get("ioctl", 0) == 0, count
    assert count.get("epoll_ctl", 0) <= 3 * clients, count


@pytest.mark.timeout(120)
def test_a_new_clients_first_packet_is_read_without_waiting_for_the_loop(start_sluice, tmp_path):
    """With tcp_defer_accept (default 1 s) the kernel hands sluice a connection only once its
    first packet is there, and sluice reads it right after accept4: no epoll_wait reports the
    socket before its first recvfrom, and that recvfrom returns data. (With several workers the
    accepting one may hand the socket to another, which reads it as it takes it: its own loop
    wakes for the hand-off message, never for the socket.)"""
    s = start_sluice({"pool_mode": "transaction", "default_pool_size": 1, "log_connections": 0,
                      "log_disconnections": 0})
    calls = trace_new_clients(s, tmp_path, ["accept4", "recvfrom", "epoll_wait"])
    checked = 0
    for i, (name, _, fd) in enumerate(calls):
        if name != "accept4" or fd < 0:
            continue
        reported = re.compile(rf"\bu32={fd}\b")  # libuv's epoll data is the descriptor
        waited = False
        for later_name, later_args, result in calls[i + 1:]:
            if later_name == "epoll_wait" and reported.search(later_args):
                waited = True
            elif later_name == "recvfrom" and later_args.startswith(f"{fd},"):
                assert not waited, f"sluice waited in epoll_wait before reading client fd {fd}"
                assert result > 0, f"the first read of client fd {fd} found nothing ({result})"
                checked += 1
                break
    assert checked == 40


@pytest.mark.timeout(60)
@pytest.mark.parametrize("defer", [1, 0])
def test_tcp_defer_accept_holds_a_silent_connection_until_it_speaks(start_sluice, defer):
    """tcp_defer_accept = 1: a TCP connection that has sent nothing is not handed to sluice yet
    (sluice has no socket for it), one that sends part of its startup packet is at once, and the
    silent one is still accepted after about a second (then client_login_timeout applies).
    tcp_defer_accept = 0: accepted at once."""
    s = start_sluice({"tcp_defer_accept": defer})

    def accepted(conn):
        return holds_connection_from(s.pid, conn.sock.getsockname()[1])

    silent = RawConn(s.port)
    try:
        if defer:
            time.sleep(0.5)
            assert not accepted(silent), "a silent connection was accepted before its time"
            speaking = RawConn(s.port)
            speaking.send(startup_packet()[:6])  # half a startup packet: it has spoken
            wait_until(lambda: accepted(speaking), timeout=5,
                       what="the connection that spoke to be accepted")
            assert not accepted(silent), "the silent connection was accepted with the other"
            wait_until(lambda: accepted(silent), timeout=10,
                       what="the silent connection to be accepted after tcp_defer_accept")
            speaking.close()
        else:
            wait_until(lambda: accepted(silent), timeout=5,
                       what="the silent connection to be accepted at once")
    finally:
        silent.close()


def sockets_of(pid):
    """Copies (pidfd_getfd) of the process's TCP sockets, as Python sockets: the options sluice
    set on them are read from the outside, on the very sockets it uses."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    found = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(438, pidfd, int(name), 0)  # pidfd_getfd (Linux 5.6)
            if fd < 0:
                err = ctypes.get_errno()
                if err == errno.EBADF:
                    continue  # closed meanwhile
                raise OSError(err, "pidfd_getfd")
            sock = socket.socket(fileno=fd)
            if sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET,
                                                                    socket.AF_INET6):
                found.append(sock)
            else:
                sock.close()
    finally:
        os.close(pidfd)
    return found


@pytest.mark.timeout(60)
def test_tcp_keepalive_timing_and_user_timeout_reach_client_and_server_sockets(start_sluice, pg):
    """PgBouncer's tcp_keepidle, tcp_keepintvl, tcp_keepcnt and tcp_user_timeout (ms) were
    ignored with a warning: behind a NAT or load balancer that drops flows idle for minutes
    (an AWS NLB: 350 s), the OS's two hours of keepalive silence let pooled connections be cut
    unseen. Now both sides carry them: the socket of a client sluice accepted and the socket of
    the server it opened (libpq's keepalives_* and tcp_user_timeout)."""
    s = start_sluice({"tcp_keepidle": 42, "tcp_keepintvl": 7, "tcp_keepcnt": 3,
                      "tcp_user_timeout": 12345})
    with s.connect() as c:
        c.execute("SELECT 1")
        socks = sockets_of(s.pid)
        try:
            by_side = {"client": [], "server": []}
            for sock in socks:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue  # a listening socket
                peer_port = sock.getpeername()[1]
                local_port = sock.getsockname()[1]
                if local_port == s.port:
                    by_side["client"].append(sock)
                elif peer_port == pg.port:
                    by_side["server"].append(sock)
            assert by_side["client"] and by_side["server"], by_side
            for side, found in by_side.items():
                for sock in found:
                    got = (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
                           sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                           sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                           sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                           sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
                    assert got == (True, 42, 7, 3, 12345), (side, got)
        finally:
            for sock in socks:
                sock.close()


@pytest.mark.timeout(60)
def test_a_database_entrys_keepalive_keywords_win_for_its_servers(start_sluice, pg):
    """A [databases] entry's own libpq keepalive keywords are its servers' (as libpq takes
    them), over the main section's tcp_* settings; its clients keep the main section's."""
    s = start_sluice({"tcp_keepidle": 42, "tcp_keepintvl": 7, "tcp_keepcnt": 3},
                     databases={"appdb": pg.db_entry(keepalives_idle=17, keepalives_count=5)})
    with s.connect() as c:
        c.execute("SELECT 1")
        socks = sockets_of(s.pid)
        try:
            seen = set()
            for sock in socks:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue
                side = ("client" if sock.getsockname()[1] == s.port else
                        "server" if sock.getpeername()[1] == pg.port else None)
                if side is None:
                    continue
                got = (sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                       sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                       sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))
                assert got == ((42, 7, 3) if side == "client" else (17, 7, 5)), (side, got)
                seen.add(side)
            assert seen == {"client", "server"}, seen
        finally:
            for sock in socks:
                sock.close()


def fd_numbers(pid):
    return [int(n) for n in os.listdir(f"/proc/{pid}/fd")]


@pytest.mark.timeout(90)
def test_accepting_resumes_when_descriptors_come_back_from_elsewhere(start_sluice):
    """Out of descriptors because of HTTP connections (not clients), the listener pauses; when
    the HTTP connections go, it must resume by itself: before, only a client leaving did, so with
    no client to leave a waiting login was never answered. The shortage is logged once."""
    import resource
    import socket

    from conftest import pick_port
    http_port = pick_port()
    s = start_sluice({"http_listen_port": http_port, "http_listen_addr": "127.0.0.1"})
    raw_login(s.port).close()  # one login first: the pool, its server and libpq are set up
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = max(fd_numbers(s.pid)) + 4
    resource.prlimit(s.pid, resource.RLIMIT_NOFILE, (limit, hard))

    def full():
        return set(range(limit)) <= set(fd_numbers(s.pid))
    held = []
    try:
        # Fill every free descriptor number below the limit with idle HTTP connections
        while not full():
            assert len(held) < 40, "sluice kept accepting HTTP connections over the limit"
            held.append(socket.create_connection(("127.0.0.1", http_port), timeout=5))
            time.sleep(0.2)
        mark = s.mark()
        c = RawConn(s.port, timeout=10)
        c.send(startup_packet(user="app", database="appdb"))
        c.settimeout(1.5)
        with pytest.raises(socket.timeout):  # not accepted: no descriptor for it
            c.read_message()
        for h in held:
            h.close()
        held.clear()
        c.settimeout(15)
        while True:
            mtype, _ = c.read_message()
            if mtype == "Z":
                break
        c.close()
        log = s.log_since(mark)
        failed = [line for line in log if "accept failed" in line]
        assert len(failed) == 1 and "Too many open files" in failed[0], log  # logged once
        assert any("accepting again" in line for line in log), log
    finally:
        for h in held:
            h.close()
        resource.prlimit(s.pid, resource.RLIMIT_NOFILE, (soft, hard))
