"""Reaching a server inside a node's network namespace from the test process."""

from __future__ import annotations

import contextlib
import socket
import threading

from sandbox.testkit.hosts import Node, NodeError
from services.common.netns import socket_in

__all__ = ["Forwarder"]


class Forwarder:
    """127.0.0.1:port in the test process -> (host, port) inside `node`'s network namespace: each
    upstream connection uses a socket born in that namespace."""

    def __init__(self, node: Node, target: tuple[str, int]) -> None:
        self.node, self.target = node, target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="api-forwarder", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            up = socket_in(f"/proc/{self.node.pid}/ns/net", socket.AF_INET, socket.SOCK_STREAM)
        except (OSError, NodeError):
            conn.close()
            return
        try:
            up.settimeout(3)
            up.connect(self.target)
            up.settimeout(None)
        except OSError:
            up.close()
            conn.close()
            return
        with self._lock:
            self._socks |= {conn, up}
        t = threading.Thread(target=self._pump, args=(up, conn), daemon=True)
        t.start()
        self._pump(conn, up)
        t.join()
        with self._lock:
            self._socks -= {conn, up}
        conn.close()
        up.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                src.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
