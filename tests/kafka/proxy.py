"""Test harness: a TCP proxy on 127.0.0.1 that can cut a broker off.

A broker that advertises the proxy's port (`Broker(..., advertised_port=)`)
is reached only through it, so `cut()` makes the broker unreachable to
every client (connections reset, new ones refused) without losing its
memory-stored topics, and `restore()` lets clients back in. Only threads
of this process are involved; nothing is killed.
"""

from __future__ import annotations

import socket
import threading


class Proxy:
    def __init__(self, port: int, target: int) -> None:
        self.port = port
        self.target = target
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        """Accepts connections again (no-op if it does)."""
        with self.lock:
            if self.listener is not None:
                return
            lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lst.bind(("127.0.0.1", self.port))
            lst.listen(64)
            self.listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def cut(self) -> None:
        """Closes the listener and every open connection."""
        with self.lock:
            doomed = self.sockets + ([self.listener] if self.listener else [])
            self.sockets, self.listener = [], None
        for s in doomed:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.listener is not lst:
                    client.close()
                    upstream.close()
                    return
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "Proxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
