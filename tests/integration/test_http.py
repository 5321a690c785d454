"""The HTTP listener (http_listen_port): GET /health (JSON, 503 when the database cannot be
reached; test_health.py has caps and readiness), GET /livez and GET /metrics (Prometheus text format 0.0.4); malformed requests get 400, slow
ones are cut off, and nothing an HTTP client does holds up the proxy."""

import json
import re
import socket
import struct
import time

import pytest

from conftest import Background, pick_port, wait_until
from pgwire import RawConn, query_msg

# Prometheus text exposition format 0.0.4, one regex per kind of line.
METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
VALUE = r"(?:[-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9]+)|[-+]?Inf|NaN)"
SAMPLE_RE = re.compile(rf"^({METRIC_NAME})(?:\{{({LABEL}(?:,{LABEL})*)?\}})? ({VALUE})(?: -?[0-9]+)?$")
HELP_RE = re.compile(rf"^# HELP ({METRIC_NAME}) .*$")
TYPE_RE = re.compile(rf"^# TYPE ({METRIC_NAME}) (counter|gauge|histogram|summary|untyped)$")


def start(start_sluice, **main):
    port = pick_port()
    m = {"http_listen_port": port, "http_listen_addr": "127.0.0.1", "pool_mode": "transaction",
         "admin_users": "admin"}
    m.update(main)
    s = start_sluice(m)
    s.http_port = port
    s.wait_for_log(rf"HTTP .* listening on 127\.0\.0\.1:{port}")
    return s


def http_raw(port, request, timeout=10.0):
    """Send raw bytes, read until the server closes; return (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"^HTTP/1\.1 (\d{3}) ", lines[0])
    assert m, f"bad status line {lines[0]!r}"
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(m.group(1)), headers, body


def get(port, path, method="GET"):
    req = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: sluice-tests\r\n\r\n"
    status, headers, body = http_raw(port, req.encode())
    assert int(headers["content-length"]) == len(body) or method == "HEAD"
    return status, headers, body


def health(s):
    status, headers, body = get(s.http_port, "/health")
    assert headers["content-type"] == "application/json"
    return status, json.loads(body)


def pool_of(doc, db="appdb", user="app"):
    pools = [p for p in doc["pools"] if p["database"] == db and p["user"] == user]
    assert len(pools) == 1, doc
    return pools[0]


def metrics(s):
    status, headers, body = get(s.http_port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return body.decode()


def parse_metrics(text):
    """Check every line against the grammar; return {(name, frozenset(labels)): value} and the
    declared types. Samples of a family must follow its TYPE line, uninterrupted."""
    assert text.endswith("\n")
    samples, types, seen_families = {}, {}, []
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP"):
            assert HELP_RE.match(line), f"bad HELP line: {line!r}"
            continue
        m = TYPE_RE.match(line)
        if m:
            assert m.group(1) not in types, f"family {m.group(1)} declared twice"
            types[m.group(1)] = m.group(2)
            current = m.group(1)
            seen_families.append(current)
            continue
        assert not line.startswith("#"), f"unexpected comment: {line!r}"
        m = SAMPLE_RE.match(line)
        assert m, f"line does not match the exposition grammar: {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        assert current and (name == current or (types[current] == "histogram" and name in (
            current + "_bucket", current + "_sum", current + "_count"))), \
            f"sample {name} outside its family ({current})"
        lab = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels))
        key = (name, lab)
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(value)
    return samples, types


def sample(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def hold_transaction(s, **kw):
    c = s.connect(**kw)
    c.execute("BEGIN")
    c.execute("SELECT 1")
    return c


# ---- /health -------------------------------------------------------------------------------------


def test_health_reports_three_clients_holding_transactions_in_a_pool_of_five(start_sluice):
    s = start(start_sluice, default_pool_size=5, max_client_conn=50)
    holders = [hold_transaction(s, application_name="etl") for _ in range(3)]
    idle = s.connect()
    idle.execute("SELECT 1")
    try:
        # other workers' pools are as they published them at their last tick (100 ms), each
        # worker's at its own moment: wait for the whole picture, not its first number
        def settled(r):
            sv = pool_of(r[1])["servers"]
            return sv["total"] == 4 and sv["active"] == 3 and sv["idle"] + sv["used"] == 1
        status, doc = wait_until(lambda: (lambda r: r if settled(r) else None)(health(s)), 5,
                                 what="3 active and 1 idle server in /health")
        assert status == 200 and doc["status"] == "ok"
        p = pool_of(doc)
        assert p["status"] == "ok" and p["pool_mode"] == "transaction" and p["paused"] is False
        assert p["servers"]["active"] == 3
        assert p["servers"]["total"] == 4  # the idle client's transaction left one idle server
        assert p["servers"]["idle"] + p["servers"]["used"] == 1
        assert p["clients"] == {"active": 3, "waiting": 0, "idle": 1}
        assert p["pool_size"] == 5 and p["max_client_conn"] == 50
        assert p["usage_pct"] == pytest.approx(60.0)
        assert p["client_usage_pct"] == pytest.approx(8.0)
        assert p["longest_wait_ms"] == 0
        assert p["top_application"] == {"name": "etl", "servers": 3}
        assert p["last_connect_error"] is None
        t = doc["total"]
        assert t["servers"]["active"] == 3 and t["clients"]["active"] == 3
        assert t["pool_size"] == 5 and t["usage_pct"] == pytest.approx(60.0)
        assert t["client_connections"] == 4 and t["server_connections"] == 4
        assert doc["warnings"] == []
    finally:
        for c in holders + [idle]:
            c.close()


def test_health_warns_about_waiting_clients_naming_the_key_and_the_application(start_sluice):
    s = start(start_sluice, default_pool_size=1)
    hog = hold_transaction(s, application_name="nightly-report")
    waiter = s.connect(application_name="web")
    bg = Background(waiter.execute, "SELECT 'served'")
    try:
        def waiting():
            _, doc = health(s)
            return doc if pool_of(doc)["clients"]["waiting"] == 1 else None
        time.sleep(0.05)
        doc = wait_until(waiting, 5, what="a waiting client in /health")
        p = pool_of(doc)
        assert p["usage_pct"] == pytest.approx(100.0)
        assert p["longest_wait_ms"] >= 1
        assert doc["total"]["longest_wait_ms"] == p["longest_wait_ms"]
        text = " ".join(doc["warnings"])
        assert "1 client waiting" in text, doc["warnings"]
        assert "default_pool_size" in text
        assert '"nightly-report"' in text
        hog.execute("COMMIT")
        assert bg.result(5).fetchone() == ("served",)
        # another worker's pool is as it published it at its last tick (100 ms)
        doc = wait_until(lambda: (lambda d: d if d["warnings"] == [] else None)(health(s)[1]), 5,
                         what="no warning once the waiter is served")
        assert doc["warnings"] == []
    finally:
        hog.close()
        waiter.close()


def test_health_warns_when_a_pool_is_above_80_percent(start_sluice, pg):
    s = start_sluice_with_pool_size(start_sluice, pg, 4)
    holders = [hold_transaction(s, application_name=f"app{i % 2}") for i in range(4)]
    try:
        # another worker's pool is as it published it at its last tick (100 ms)
        doc = wait_until(lambda: (lambda d: d if pool_of(d)["cap"]["in_use"] == 4 else None)(
            health(s)[1]), 5, what="4 servers in use")
        p = pool_of(doc)
        assert p["usage_pct"] == pytest.approx(100.0)
        (w,) = doc["warnings"]
        assert "uses 4 of 4 servers" in w and "pool_size of [databases] appdb" in w, w
    finally:
        for c in holders:
            c.close()


def start_sluice_with_pool_size(start_sluice, pg, size):
    port = pick_port()
    s = start_sluice({"http_listen_port": port, "pool_mode": "transaction"},
                     databases={"appdb": pg.db_entry(pool_size=size)})
    s.http_port = port
    s.wait_for_log(rf"HTTP .* listening on 127\.0\.0\.1:{port}")
    return s


@pytest.mark.timeout(40)
def test_health_is_503_when_the_database_cannot_be_reached(start_sluice, pg):
    dead_port = pick_port()
    port = pick_port()
    s = start_sluice({"http_listen_port": port, "pool_mode": "transaction",
                      "server_connect_timeout": 2},
                     databases={"appdb": pg.db_entry(port=dead_port)})
    s.http_port = port
    s.wait_for_log(r"HTTP .* listening")
    status, doc = health(s)
    # nothing has tried the database yet: ready (200), but not known to be "ok"
    assert status == 200 and doc["status"] == "unknown"
    with pytest.raises(Exception):
        s.connect()  # the login fails: nothing listens on the upstream port
    status, doc = health(s)
    assert status == 503, doc
    assert doc["status"] == "down"
    p = pool_of(doc)
    assert p["status"] == "down" and p["last_connect_error"]
    assert any("cannot reach the database" in w for w in doc["warnings"]), doc["warnings"]
    samples, _ = parse_metrics(metrics(s))
    assert sample(samples, "sluice_up") == 0


# ---- /metrics ------------------------------------------------------------------------------------


def test_metrics_match_the_exposition_grammar_and_the_pool_numbers(start_sluice):
    s = start(start_sluice, default_pool_size=5, max_client_conn=40)
    with s.connect() as c:
        for _ in range(7):
            c.execute("SELECT 1")
    holders = [hold_transaction(s) for _ in range(2)]
    try:
        lab = {"database": "appdb", "user": "app"}
        # other workers' pools are as they published them at their last tick (100 ms)
        samples, types = wait_until(
            lambda: (lambda m: m if sample(m[0], "sluice_clients", state="active", **lab) == 2
                     else None)(parse_metrics(metrics(s))), 5, what="both holders in /metrics")
        assert types["sluice_transactions_total"] == "counter"
        assert types["sluice_queries_total"] == "counter"
        assert types["sluice_bytes_received_total"] == "counter"
        assert types["sluice_bytes_sent_total"] == "counter"
        assert types["sluice_client_wait_seconds_total"] == "counter"
        assert types["sluice_clients"] == "gauge" and types["sluice_servers"] == "gauge"
        assert types["sluice_query_duration_seconds"] == "histogram"
        assert sample(samples, "sluice_up") == 1
        assert sample(samples, "sluice_queries_total", **lab) >= 7 + 2
        assert sample(samples, "sluice_transactions_total", **lab) >= 7
        assert sample(samples, "sluice_bytes_received_total", **lab) > 0
        assert sample(samples, "sluice_bytes_sent_total", **lab) > 0
        assert sample(samples, "sluice_client_wait_seconds_total", **lab) >= 0
        assert sample(samples, "sluice_clients", state="active", **lab) == 2
        assert sample(samples, "sluice_clients", state="waiting", **lab) == 0
        assert sample(samples, "sluice_servers", state="active", **lab) == 2
        assert sample(samples, "sluice_pool_size", **lab) == 5
        assert sample(samples, "sluice_max_client_conn") == 40
        # histogram: cumulative buckets ending in +Inf == _count
        buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in samples.items()
                          if k[0] == "sluice_query_duration_seconds_bucket"
                          and dict(k[1])["database"] == "appdb"))
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and buckets[-1][0] == float("inf")
        assert buckets[-1][1] == sample(samples, "sluice_query_duration_seconds_count", **lab)
        assert buckets[-1][1] == sample(samples, "sluice_queries_total", **lab)
        before = sample(samples, "sluice_queries_total", **lab)
        holders[0].execute("SELECT 2")
        samples, _ = parse_metrics(metrics(s))
        assert sample(samples, "sluice_queries_total", **lab) == before + 1
    finally:
        for c in holders:
            c.close()


def test_metrics_count_what_each_kind_of_session_state_costs_the_servers(start_sluice):
    """sluice_server_cleanups_total{kind} counts the statements sluice runs on a server before
    it serves again: an operator sees what an application's session state costs (each is a
    round trip the next client waits behind), summed over every worker."""
    s = start(start_sluice, default_pool_size=1)
    lab = {"database": "appdb", "user": "app"}

    def cleanups():
        samples, types = parse_metrics(metrics(s))
        assert types["sluice_server_cleanups_total"] == "counter"
        return {k: sample(samples, "sluice_server_cleanups_total", kind=k, **lab)
                for k in ("rollback", "server_reset_query", "discard_all", "discard_temp")}

    def after(steps, want):
        c = s.connect()
        for sql in steps:
            c.execute(sql)
        c.close()  # as it is: a with block would commit an open transaction
        wait_until(lambda: cleanups() == want, 5, what=f"{want} in /metrics")

    zero = {"rollback": 0, "server_reset_query": 0, "discard_all": 0, "discard_temp": 0}
    assert cleanups() == zero
    after(["CREATE TEMP TABLE tt ON COMMIT DROP AS SELECT 1 AS a"], zero)
    after(["BEGIN", "SELECT 1"], dict(zero, rollback=1))  # left inside its transaction
    after(["CREATE TEMP TABLE tt (a int)"], dict(zero, rollback=1, discard_temp=1))
    after(["LISTEN a_channel"], dict(zero, rollback=1, discard_temp=1, discard_all=1))


def test_metrics_escape_label_values(start_sluice, pg):
    port = pick_port()
    s = start_sluice({"http_listen_port": port, "pool_mode": "transaction"},
                     databases={'we"ird\\db': pg.db_entry()})
    s.http_port = port
    s.wait_for_log(r"HTTP .* listening")
    with s.connect(dbname='we"ird\\db') as c:
        c.execute("SELECT 1")
    text = metrics(s)
    samples, _ = parse_metrics(text)
    assert 'database="we\\"ird\\\\db"' in text
    _, doc = health(s)
    assert pool_of(doc, db='we"ird\\db')["servers"]["total"] == 1


# ---- bad and slow requests -----------------------------------------------------------------------


def test_malformed_request_gets_400(start_sluice):
    s = start(start_sluice)
    for bad in (b"GARBAGE\r\n\r\n", b"GET /health\r\n\r\n", b"GET health HTTP/1.1\r\n\r\n",
                b"GET /health HTTP/1.1\r\nNo colon here\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01",
                b"GET /health HTTP/9.9\r\n\r\n"):
        status, _, _ = http_raw(s.http_port, bad)
        assert status == 400, bad
    # and the listener still answers properly afterwards
    assert health(s)[0] == 200


def test_unknown_path_gets_404_and_other_methods_405(start_sluice):
    s = start(start_sluice)
    assert get(s.http_port, "/nope")[0] == 404
    status, headers, _ = get(s.http_port, "/health", method="POST")
    assert status == 405 and "GET" in headers["allow"]
    assert get(s.http_port, "/metrics", method="DELETE")[0] == 405
    status, headers, body = get(s.http_port, "/health", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    status, _, body = get(s.http_port, "/health?verbose=1")
    assert status == 200 and json.loads(body)["status"] == "unknown"  # no pool has a server yet
    status, headers, body = get(s.http_port, "/livez", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    assert get(s.http_port, "/livez", method="POST")[0] == 405


def test_oversized_request_head_gets_431(start_sluice):
    s = start(start_sluice)
    req = b"GET /health HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n"
    status, _, _ = http_raw(s.http_port, req)
    assert status == 431


def test_half_sent_request_does_not_block_the_proxy(start_sluice):
    s = start(start_sluice)
    slow = socket.create_connection(("127.0.0.1", s.http_port), timeout=10)
    try:
        slow.sendall(b"GET /hea")  # and nothing more for now
        t0 = time.monotonic()
        with s.connect() as c:
            assert c.execute("SELECT 'through sluice'").fetchone() == ("through sluice",)
        assert health(s)[0] == 200
        assert time.monotonic() - t0 < 2.0
        slow.sendall(b"lth HTTP/1.1\r\n\r\n")
        data = slow.recv(65536)
        assert data.startswith(b"HTTP/1.1 200 ")
    finally:
        slow.close()


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_a_client_that_never_finishes_its_request_is_cut_off(start_sluice):
    s = start(start_sluice)
    slow = socket.create_connection(("127.0.0.1", s.http_port), timeout=15)
    try:
        t0 = time.monotonic()
        slow.sendall(b"GET /health HTTP/1.1\r\n")
        for _ in range(3):  # trickling bytes does not extend the deadline
            time.sleep(1)
            slow.sendall(b"X: y\r\n")
        assert slow.recv(1024) == b""  # closed by sluice
        assert 4.0 <= time.monotonic() - t0 < 10.0
    finally:
        slow.close()


def test_more_than_64_connections_are_refused_and_the_rest_still_work(start_sluice):
    s = start(start_sluice)
    socks = []
    try:
        for _ in range(70):
            socks.append(socket.create_connection(("127.0.0.1", s.http_port), timeout=10))
        closed = 0
        for sk in socks:
            sk.settimeout(0.2)
            try:
                if sk.recv(1) == b"":
                    closed += 1
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed >= 6
        with s.connect() as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
    finally:
        for sk in socks:
            sk.close()
    wait_until(lambda: health(s)[0] == 200, 5, what="/health after the crowd left")


@pytest.mark.timeout(60)
def test_health_answers_while_70_connections_trickle_requests(start_sluice):
    """Slowloris: more connections than the HTTP cap, each sending a byte now and then and
    reconnecting when cut off, must not keep /health from answering (an orchestrator would
    restart a healthy sluice). A new connection takes the place of the oldest unfinished one."""
    s = start(start_sluice)
    stop = False
    trickle = b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 4000

    def open_slow():
        sk = socket.create_connection(("127.0.0.1", s.http_port), timeout=5)
        sk.setblocking(False)
        return [sk, 0]

    def attacker():
        conns = []
        while not stop:
            while len(conns) < 70 and not stop:
                try:
                    conns.append(open_slow())
                except OSError:
                    break
            for c in list(conns):
                sk, sent = c
                try:
                    if sk.recv(1024) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    pass
                except OSError:
                    sk.close()
                    conns.remove(c)
                    continue
                try:
                    sk.send(trickle[sent % len(trickle):sent % len(trickle) + 1])
                    c[1] += 1
                except OSError:
                    sk.close()
                    conns.remove(c)
            time.sleep(0.1)
        for sk, _ in conns:
            sk.close()

    bg = Background(attacker)
    try:
        time.sleep(1.0)  # the crowd is in
        failures = []
        for _ in range(20):
            try:
                assert health(s)[0] == 200
            except (OSError, AssertionError) as e:
                failures.append(repr(e))
            time.sleep(0.2)
        assert not failures, f"{len(failures)} of 20 /health checks failed: {failures[:3]}"
    finally:
        stop = True
        bg.result(10)

def test_request_from_a_client_that_half_closes_still_gets_its_answer(start_sluice):
    s = start(start_sluice)
    with socket.create_connection(("127.0.0.1", s.http_port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    assert json.loads(data.partition(b"\r\n\r\n")[2])["status"] == "unknown"  # no pool yet


def test_names_that_are_not_utf8_keep_json_and_metrics_valid(start_sluice):
    s = start(start_sluice)
    body = struct.pack("!I", 196608)
    for k, v in ((b"user", b"app"), (b"database", b"appdb"), (b"application_name", b"bad\xff\xfe")):
        body += k + b"\0" + v + b"\0"
    body += b"\0"
    c = RawConn(s.port)
    try:
        c.send(struct.pack("!I", len(body) + 4) + body)
        while c.read_message()[0] != "Z":  # (its ParameterStatus echoes the bytes back)
            pass
        c.send(query_msg("BEGIN"))
        while c.read_message()[0] != "Z":
            pass
        _, doc = health(s)  # json.loads of bytes that must be UTF-8
        top = pool_of(doc)["top_application"]
        # Postgres cleans the name at login ('?' for each byte that is not printable ASCII, on
        # Postgres 15), and sluice reports the name as the server spelled it
        assert top["name"] == "bad??" and top["servers"] == 1
        text = metrics(s)
        text.encode("utf-8")
        parse_metrics(text)
        import psycopg
        with psycopg.connect(s.dsn(dbname="sluice", user="admin", password=None),
                             autocommit=True) as adm:
            cur = adm.execute("SHOW CLIENTS")
            col = [d.name for d in cur.description].index("application_name")
            names = [r[col] for r in cur.fetchall()]
            assert "bad??" in names
    finally:
        c.close()


def test_connections_queued_at_shutdown_are_answered_not_reset(start_sluice):
    """At shutdown the HTTP listener drains its accept queue as the client listener does
    (listener.c, DRAINING): a health check that connected and sent its request while sluice
    could not accept (stopped, here) gets an answer with Connection: close, not a reset."""
    import signal
    s = start(start_sluice)
    assert get(s.http_port, "/livez")[0] == 200
    socks = []
    s.send_signal(signal.SIGSTOP)
    try:
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", s.http_port), timeout=10)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            socks.append(sock)
        s.send_signal(signal.SIGTERM)
    finally:
        s.send_signal(signal.SIGCONT)
    answers = []
    for sock in socks:
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError as e:
            data = repr(e).encode()
        sock.close()
        answers.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
    assert all(re.match(r"HTTP/1\.1 (200|503) ", a) for a in answers), answers
    assert s.wait_exit(20) == 0
