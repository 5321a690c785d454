"""A loopback TCP forwarder to Postgres, for tests that need to see or disturb what sluice sends
upstream: each accepted connection is counted and served in its own thread; a CancelRequest is
handed to `serve_cancel`, which subclasses override to hold, delay or watch it."""

import socket
import struct
import threading

from conftest import forward_both_ways

CANCEL_CODE = 80877102


def recv_exactly(sock, n):
    """n bytes from sock, or fewer if it closes first."""
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            break
        data += part
    return data


class ForwardingProxy:
    """Passes every connection on to Postgres at target_port; counts them in `accepted`."""

    def __init__(self, target_port, host="127.0.0.1"):
        self.target_port = target_port
        self.accepted = 0
        self.lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        # (accepted sockets inherit it: a subclass can bind the port again while they live)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(128)
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(a,), daemon=True).start()

    def upstream_or_close(self, a):
        """A new connection to Postgres, or None with a closed (Postgres is not there)."""
        try:
            return socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            a.close()
            return None

    def _serve(self, a):
        try:
            head = recv_exactly(a, 8)
        except OSError:
            head = b""
        if len(head) < 8:
            a.close()
            return
        length, code = struct.unpack("!II", head)
        if length == 16 and code == CANCEL_CODE:
            self.serve_cancel(a, head + recv_exactly(a, 8))
            return
        b = self.upstream_or_close(a)
        if b:
            b.sendall(head)
            self.serve_session(a, b)

    def serve_session(self, a, b):
        """Any other connection, its first 8 bytes passed on to b: joined both ways."""
        forward_both_ways(a, b)

    def serve_cancel(self, a, packet):
        """A whole CancelRequest read from a: by default passed on as it came."""
        b = self.upstream_or_close(a)
        if b:
            b.sendall(packet)
            forward_both_ways(a, b)

    def close(self):
        self.lsock.close()
