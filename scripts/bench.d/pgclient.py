#!/usr/bin/python3
"""Raw-socket Postgres clients for scripts/bench (no libpq, so 10,000 connections are cheap).

  pgclient.py idle --host H --port P --user U --password PW --db D --n N [--parallel K]
      Opens N connections, finishes startup + authentication (trust, cleartext, md5 or
      SCRAM-SHA-256) on each, prints one JSON line {"ready": N, "failed": F, "first_error": ...,
      "seconds": S} and then holds every connection idle until stdin is closed (or a line is read).

  pgclient.py copy --host H --port P --user U --password PW --db D --bytes B --rate MBPS
      Logs in with a small receive buffer, sends COPY (SELECT ...) TO STDOUT producing about B
      bytes, reads the result no faster than MBPS megabytes per second and prints one JSON line
      {"bytes": ..., "rows": ..., "seconds": ..., "error": ...}.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import selectors
import socket
import struct
import sys
import time

PROTOCOL_3 = 196608


def startup_message(user, db):
    body = struct.pack("!i", PROTOCOL_3)
    for k, v in (("user", user), ("database", db), ("application_name", "bench-pgclient")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def msg(kind, payload):
    return kind + struct.pack("!i", len(payload) + 4) + payload


def error_text(payload):
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return f'{fields.get("S", "ERROR")} {fields.get("C", "")} {fields.get("M", "")}'.strip()


_salted_cache = {}


def salted_password(password, salt, iterations):
    key = (password, salt, iterations)
    if key not in _salted_cache:
        _salted_cache[key] = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return _salted_cache[key]


class Login:
    """State machine for one connection's startup and authentication."""

    def __init__(self, user, password, db):
        self.user, self.password = user, password
        self.inbuf = b""
        self.out = startup_message(user, db)
        self.done = False
        self.error = None
        self.nonce = None
        self.first_bare = None

    def feed(self, data):
        self.inbuf += data
        while len(self.inbuf) >= 5:
            kind = self.inbuf[:1]
            (length,) = struct.unpack("!i", self.inbuf[1:5])
            if len(self.inbuf) < 1 + length:
                return
            payload = self.inbuf[5 : 1 + length]
            self.inbuf = self.inbuf[1 + length :]
            self.handle(kind, payload)
            if self.done or self.error:
                return

    def handle(self, kind, payload):
        if kind == b"E":
            self.error = error_text(payload)
        elif kind == b"Z":
            self.done = True
        elif kind == b"R":
            (code,) = struct.unpack("!i", payload[:4])
            rest = payload[4:]
            if code == 0:
                pass
            elif code == 3:
                self.out += msg(b"p", self.password.encode() + b"\0")
            elif code == 5:
                inner = hashlib.md5(self.password.encode() + self.user.encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + rest[:4]).hexdigest()
                self.out += msg(b"p", b"md5" + outer.encode() + b"\0")
            elif code == 10:
                mechs = [m for m in rest.split(b"\0") if m]
                if b"SCRAM-SHA-256" not in mechs:
                    self.error = f"no supported SASL mechanism in {mechs}"
                    return
                self.nonce = base64.b64encode(os.urandom(18)).decode()
                self.first_bare = f"n=,r={self.nonce}"
                first = ("n,," + self.first_bare).encode()
                self.out += msg(
                    b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first
                )
            elif code == 11:
                server_first = rest.decode()
                attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
                if not attrs["r"].startswith(self.nonce):
                    self.error = "SCRAM nonce mismatch"
                    return
                salt = base64.b64decode(attrs["s"])
                salted = salted_password(self.password, salt, int(attrs["i"]))
                client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
                stored_key = hashlib.sha256(client_key).digest()
                final_bare = f"c=biws,r={attrs['r']}"
                auth_message = f"{self.first_bare},{server_first},{final_bare}".encode()
                sig = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
                proof = bytes(a ^ b for a, b in zip(client_key, sig))
                final = f"{final_bare},p={base64.b64encode(proof).decode()}".encode()
                self.out += msg(b"p", final)
            elif code == 12:
                pass  # server signature; not verified (benchmark client)
            else:
                self.error = f"unsupported authentication request {code}"
        # S (ParameterStatus), K (BackendKeyData), N (notice): ignored


def connect_nonblocking(host, port, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setblocking(False)
    try:
        s.connect((host, port))
    except BlockingIOError:
        pass
    return s


def cmd_idle(a):
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    deadline = t0 + a.timeout
    pending = list(range(a.n))
    pending.reverse()
    ready = []
    failed = 0
    first_error = None
    inflight = 0
    while (pending or inflight) and time.monotonic() < deadline:
        while pending and inflight < a.parallel:
            pending.pop()
            try:
                s = connect_nonblocking(a.host, a.port)
            except OSError as e:
                failed += 1
                first_error = first_error or f"connect: {e}"
                continue
            st = Login(a.user, a.password, a.db)
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, st)
            inflight += 1
        for key, ev in sel.select(timeout=1.0):
            s, st = key.fileobj, key.data
            err = None
            try:
                if ev & selectors.EVENT_WRITE and st.out:
                    n = s.send(st.out)
                    st.out = st.out[n:]
                if ev & selectors.EVENT_READ:
                    data = s.recv(65536)
                    if not data:
                        err = "connection closed by server during login"
                    else:
                        st.feed(data)
                        err = st.error
            except BlockingIOError:
                pass
            except OSError as e:
                err = f"socket: {e}"
            if err:
                failed += 1
                first_error = first_error or err
                sel.unregister(s)
                s.close()
                inflight -= 1
            elif st.done:
                sel.unregister(s)
                ready.append(s)
                inflight -= 1
            else:
                sel.modify(s, selectors.EVENT_READ | (selectors.EVENT_WRITE if st.out else 0), st)
    if pending or inflight:
        failed += len(pending) + inflight
        first_error = first_error or "timed out during login"
    out = {
        "ready": len(ready),
        "failed": failed,
        "first_error": first_error,
        "seconds": round(time.monotonic() - t0, 3),
    }
    print(json.dumps(out), flush=True)
    # Hold the connections until told to stop, then say goodbye politely.
    try:
        sys.stdin.readline()
    except KeyboardInterrupt:
        pass
    for s in ready:
        try:
            s.setblocking(True)
            s.send(msg(b"X", b""))
        except OSError:
            pass
        s.close()
    return 0 if failed == 0 else 1


def blocking_login(a, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(a.timeout)
    s.connect((a.host, a.port))
    st = Login(a.user, a.password, a.db)
    while not st.done:
        if st.out:
            s.sendall(st.out)
            st.out = b""
        data = s.recv(65536)
        if not data:
            raise RuntimeError("connection closed during login")
        st.feed(data)
        if st.error:
            raise RuntimeError(st.error)
    if st.inbuf:
        raise RuntimeError("unexpected data after ReadyForQuery")
    return s


def cmd_copy(a):
    row_len = 1000
    rows = max(1, a.bytes // (row_len + 1))
    sql = (
        f"COPY (SELECT repeat('x', {row_len}) FROM generate_series(1, {rows})) TO STDOUT"
    )
    result = {"bytes": 0, "rows": 0, "seconds": 0.0, "error": None}
    t0 = time.monotonic()
    try:
        s = blocking_login(a, rcvbuf=a.rcvbuf)
        s.sendall(msg(b"Q", sql.encode() + b"\0"))
        chunk = a.chunk
        rate = a.rate * 1e6  # bytes per second
        t_start = time.monotonic()
        received = 0
        buf = b""
        got_ready = False
        copied = 0
        nrows = 0
        while not got_ready:
            data = s.recv(chunk)
            if not data:
                raise RuntimeError("connection closed during COPY")
            received += len(data)
            buf += data
            # parse complete messages
            pos = 0
            while len(buf) - pos >= 5:
                kind = buf[pos : pos + 1]
                (length,) = struct.unpack("!i", buf[pos + 1 : pos + 5])
                if len(buf) - pos < 1 + length:
                    break
                if kind == b"d":
                    copied += length - 4
                    nrows += 1
                elif kind == b"E":
                    result["error"] = error_text(buf[pos + 5 : pos + 1 + length])
                elif kind == b"Z":
                    got_ready = True
                pos += 1 + length
            buf = buf[pos:]
            # throttle: never faster than `rate`
            ahead = received / rate - (time.monotonic() - t_start)
            if ahead > 0:
                time.sleep(ahead)
        result["bytes"] = copied
        result["rows"] = nrows
        s.sendall(msg(b"X", b""))
        s.close()
    except Exception as e:  # noqa: BLE001 - reported to the caller
        result["error"] = result["error"] or f"{type(e).__name__}: {e}"
    result["seconds"] = round(time.monotonic() - t0, 3)
    print(json.dumps(result), flush=True)
    return 0 if not result["error"] else 1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["idle", "copy"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", default="")
    p.add_argument("--db", required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--parallel", type=int, default=200)
    p.add_argument("--bytes", type=int, default=50 * 1000 * 1000)
    p.add_argument("--rate", type=float, default=64.0, help="MB/s the COPY reader allows")
    p.add_argument("--chunk", type=int, default=65536)
    p.add_argument("--rcvbuf", type=int, default=65536)
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args()
    if a.mode == "idle":
        return cmd_idle(a)
    return cmd_copy(a)


if __name__ == "__main__":
    sys.exit(main())
