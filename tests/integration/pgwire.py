"""Raw PostgreSQL wire-protocol helpers for tests that must send exactly the bytes they mean.

Protocol reference: PostgreSQL docs, chapter 55 "Frontend/Backend Protocol", sections 55.2
(message flow) and 55.7 (message formats). Every socket here has a timeout, so a test never
hangs on a silent peer.
"""

import base64
import hashlib
import hmac
import os
import socket
import struct
import time

PROTOCOL_3_0 = 196608  # (3 << 16) | 0
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

DEFAULT_TIMEOUT = 10.0


class ProtocolError(AssertionError):
    pass


class PeerClosed(ProtocolError):
    """The peer closed the connection (EOF or reset) before a whole message arrived."""


# ---- building messages -------------------------------------------------------------------------


def startup_packet(user="app", database="appdb", protocol=PROTOCOL_3_0, **params):
    """StartupMessage: int32 length, int32 protocol, then name\\0value\\0 pairs and a final \\0."""
    body = struct.pack("!I", protocol)
    pairs = {"user": user, "database": database}
    pairs.update(params)
    for k, v in pairs.items():
        if v is None:
            continue
        body += k.encode() + b"\0" + str(v).encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def ssl_request():
    return struct.pack("!II", 8, SSL_REQUEST_CODE)


def gssenc_request():
    return struct.pack("!II", 8, GSSENC_REQUEST_CODE)


def cancel_request(pid, key):
    return struct.pack("!IIii", 16, CANCEL_REQUEST_CODE, pid, key)


def message(mtype, payload=b""):
    """A regular message: one type byte, int32 length (counting itself), payload."""
    if isinstance(mtype, str):
        mtype = mtype.encode()
    return mtype + struct.pack("!I", len(payload) + 4) + payload


def query_msg(sql):
    return message(b"Q", sql.encode() + b"\0")


def terminate_msg():
    return message(b"X")


def password_msg(text):
    return message(b"p", text.encode() + b"\0")


def copy_data_msg(data):
    return message(b"d", data)


def copy_done_msg():
    return message(b"c")


def parse_msg(name, sql, param_oids=()):
    payload = name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", len(param_oids))
    for oid in param_oids:
        payload += struct.pack("!I", oid)
    return message(b"P", payload)


def bind_msg(portal, stmt, params=()):
    payload = portal.encode() + b"\0" + stmt.encode() + b"\0"
    payload += struct.pack("!H", 0)  # all parameters in text
    payload += struct.pack("!H", len(params))
    for p in params:
        if p is None:
            payload += struct.pack("!i", -1)
        else:
            b = str(p).encode()
            payload += struct.pack("!i", len(b)) + b
    payload += struct.pack("!H", 0)  # all results in text
    return message(b"B", payload)


def describe_msg(kind, name):
    return message(b"D", kind.encode() + name.encode() + b"\0")


def close_msg(kind, name):
    return message(b"C", kind.encode() + name.encode() + b"\0")


def execute_msg(portal="", max_rows=0):
    return message(b"E", portal.encode() + b"\0" + struct.pack("!I", max_rows))


def sync_msg():
    return message(b"S")


def md5_password(user, password, salt):
    """'md5' + md5(md5(password + user) + salt), the AuthenticationMD5Password answer."""
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


# ---- reading messages --------------------------------------------------------------------------


def parse_fields(payload):
    """Fields of an ErrorResponse/NoticeResponse: {'S': 'ERROR', 'C': '08P01', 'M': ...}."""
    fields = {}
    i = 0
    while i < len(payload) and payload[i] != 0:
        code = chr(payload[i])
        end = payload.index(b"\0", i + 1)
        fields[code] = payload[i + 1:end].decode("utf-8", "replace")
        i = end + 1
    return fields


def parse_data_row(payload, value=lambda raw: raw.decode("utf-8", "replace")):
    """A DataRow's columns, each None (NULL) or value(its bytes)."""
    (n,) = struct.unpack_from("!H", payload, 0)
    off = 2
    cols = []
    for _ in range(n):
        (ln,) = struct.unpack_from("!i", payload, off)
        off += 4
        if ln < 0:
            cols.append(None)
        else:
            cols.append(value(payload[off:off + ln]))
            off += ln
    return cols


class ServerError(AssertionError):
    def __init__(self, fields):
        self.fields = fields
        self.sqlstate = fields.get("C")
        super().__init__(f"{fields.get('S')} {fields.get('C')}: {fields.get('M')}")


class RawConn:
    """One client socket to sluice, speaking the protocol by hand."""

    def __init__(self, port, host="127.0.0.1", timeout=DEFAULT_TIMEOUT):
        self._adopt(socket.create_connection((host, port), timeout=timeout), timeout)

    @classmethod
    def over_unix_socket(cls, path, timeout=DEFAULT_TIMEOUT):
        """A RawConn to sluice's unix socket (unix_socket_dir/.s.PGSQL.<port>)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        c = cls.__new__(cls)
        c._adopt(sock, timeout)
        return c

    def _adopt(self, sock, timeout):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = b""
        self.params = {}
        self.backend_key = None  # (pid, key)
        self.notices = []
        self.notifications = []
        self.last_status = None

    # -- plumbing
    def send(self, data):
        self.sock.sendall(data)

    def settimeout(self, t):
        self.sock.settimeout(t)

    def _fill(self, n):
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError) as e:
                raise PeerClosed(f"connection reset: {e}") from e
            if not chunk:
                raise PeerClosed(f"EOF after {len(self.buf)} of {n} bytes")
            self.buf += chunk

    def recv_exact(self, n):
        self._fill(n)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_byte(self):
        return self.recv_exact(1)

    def read_message(self):
        """(type as str, payload bytes). Raises PeerClosed on EOF, socket.timeout on silence."""
        head = self.recv_exact(5)
        mtype = chr(head[0])
        (length,) = struct.unpack("!I", head[1:])
        if length < 4 or length > 64 * 1024 * 1024:
            raise ProtocolError(f"bad length {length} for message {mtype!r}")
        return mtype, self.recv_exact(length - 4)

    def expect_error(self, timeout=DEFAULT_TIMEOUT):
        """Read until an ErrorResponse; return its fields."""
        self.sock.settimeout(timeout)
        while True:
            mtype, payload = self.read_message()
            if mtype == "E":
                return parse_fields(payload)
            self._note(mtype, payload)

    def is_closed(self, timeout=5.0):
        """True when the peer closes the connection within timeout (data before EOF is drained)."""
        deadline = time.monotonic() + timeout
        self.buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return True
            except socket.timeout:
                return False
            if not chunk:
                return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def close_abruptly(self, reset=False):
        """Go away without a Terminate message: FIN (shutdown), or RST when reset=True."""
        try:
            if reset:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close()

    def _note(self, mtype, payload):
        if mtype == "S":
            k, v, _ = payload.split(b"\0", 2)
            self.params[k.decode()] = v.decode()
        elif mtype == "K":
            self.backend_key = struct.unpack("!ii", payload)
        elif mtype == "N":
            self.notices.append(parse_fields(payload))
        elif mtype == "A":
            (pid,) = struct.unpack_from("!i", payload)
            chan, rest, _ = payload[4:].split(b"\0", 2)
            self.notifications.append((pid, chan.decode(), rest.decode()))
        elif mtype == "Z":
            self.last_status = chr(payload[0])

    # -- login
    def startup(self, user="app", database="appdb", password=None, **params):
        """Send a StartupMessage and answer the authentication request. Returns after
        ReadyForQuery; raises ServerError if the server sends an ErrorResponse."""
        self.send(startup_packet(user=user, database=database, **params))
        return self.finish_login(user=user, password=password)

    def finish_login(self, user="app", password=None):
        scram = None
        while True:
            mtype, payload = self.read_message()
            if mtype == "R":
                (code,) = struct.unpack_from("!I", payload)
                if code == 0:  # AuthenticationOk
                    continue
                if code == 3:  # AuthenticationCleartextPassword
                    self.send(password_msg(password or ""))
                elif code == 5:  # AuthenticationMD5Password
                    self.send(password_msg(md5_password(user, password or "", payload[4:8])))
                elif code == 10:  # AuthenticationSASL
                    mechs = payload[4:].split(b"\0")
                    if b"SCRAM-SHA-256" not in mechs:
                        raise ProtocolError(f"no SCRAM-SHA-256 among {mechs}")
                    scram = ScramClient(password or "")
                    first = scram.client_first()
                    self.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
                elif code == 11:  # AuthenticationSASLContinue
                    self.send(message(b"p", scram.client_final(payload[4:])))
                elif code == 12:  # AuthenticationSASLFinal
                    scram.verify_server_final(payload[4:])
                else:
                    raise ProtocolError(f"unsupported authentication request {code}")
            elif mtype == "E":
                raise ServerError(parse_fields(payload))
            elif mtype == "Z":
                self._note(mtype, payload)
                return self
            else:
                self._note(mtype, payload)

    # -- simple query
    def query(self, sql):
        """Simple Query. Returns (rows, command tags); raises ServerError (after draining to
        ReadyForQuery) on an ErrorResponse."""
        self.send(query_msg(sql))
        return self.read_results()

    def read_results(self):
        rows, tags, error = [], [], None
        while True:
            try:
                mtype, payload = self.read_message()
            except PeerClosed:
                if error:  # a FATAL error is followed by the connection closing
                    raise ServerError(error) from None
                raise
            if mtype == "D":
                rows.append(parse_data_row(payload))
            elif mtype == "C":
                tags.append(payload.rstrip(b"\0").decode())
            elif mtype == "E":
                error = parse_fields(payload)
            elif mtype == "Z":
                self._note(mtype, payload)
                if error:
                    raise ServerError(error)
                return rows, tags
            elif mtype in ("G", "H", "W"):
                raise ProtocolError(f"unexpected COPY response {mtype!r}; use copy helpers")
            else:
                self._note(mtype, payload)

    def read_until(self, wanted):
        """Read messages until one of type in wanted; return (type, payload)."""
        while True:
            mtype, payload = self.read_message()
            if mtype in wanted:
                return mtype, payload
            if mtype == "E":
                raise ServerError(parse_fields(payload))
            self._note(mtype, payload)


def raw_login(port, user="app", database="appdb", password=None, timeout=DEFAULT_TIMEOUT, **params):
    c = RawConn(port, timeout=timeout)
    try:
        c.startup(user=user, database=database, password=password, **params)
    except BaseException:
        c.close()
        raise
    return c


def recorded_login(port, user="app", database="appdb", password=None, timeout=30, **params):
    """Log in over a new RawConn and record what the client sees up to the end of its login:
    message types, each once, in the order they first came, R split into "password asked" and
    "auth ok" (Postgres's refusals after authentication come after AuthenticationOk; sluice's
    must too). (conn, seen, error): error is the ErrorResponse's fields when the login was
    refused, else None and conn is logged in. The caller closes conn."""
    c = RawConn(port, timeout=timeout)
    seen = []
    read = c.read_message

    def recording_read():
        mtype, payload = read()
        if mtype == "R":
            seen.append("password asked" if struct.unpack_from("!I", payload)[0] else "auth ok")
        else:
            seen.append(mtype)
        return mtype, payload

    c.read_message = recording_read
    error = None
    try:
        c.send(startup_packet(user=user, database=database, **params))
        c.finish_login(user=user, password=password)
    except ServerError as e:
        error = e.fields
    except BaseException:
        c.close()
        raise
    finally:
        c.read_message = read
    return c, list(dict.fromkeys(seen)), error


# ---- SCRAM-SHA-256 client (RFC 5802 / RFC 7677), for auth_type = scram-sha-256 tests ---------


class ScramClient:
    def __init__(self, password):
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self.server_signature = None

    def client_first(self):
        return ("n,," + self.first_bare).encode()

    def client_final(self, server_first):
        sf = server_first.decode()
        attrs = dict(kv.split("=", 1) for kv in sf.split(","))
        rnonce, salt, iters = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not rnonce.startswith(self.nonce):
            raise ProtocolError("server nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iters)
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        without_proof = f"c=biws,r={rnonce}"
        auth_msg = f"{self.first_bare},{sf},{without_proof}".encode()
        client_sig = hmac.new(stored_key, auth_msg, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, client_sig))
        self.server_signature = hmac.new(server_key, auth_msg, "sha256").digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_server_final(self, data):
        attrs = dict(kv.split("=", 1) for kv in data.decode().split(","))
        if base64.b64decode(attrs.get("v", "")) != self.server_signature:
            raise ProtocolError("bad SCRAM server signature")
