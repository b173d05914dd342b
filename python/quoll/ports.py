"""Free TCP ports on loopback, for `quoll run`, the demo, tests and benchmarks.

A port is picked below the kernel's ephemeral range (32768 and up on
Linux), so no outgoing connection can take it between now and the worker's
bind, and it is never handed out twice by one process, so two workers
started in a row never get the same one.
"""

import random
import socket

_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that nothing listens on now and this process has
    not handed out before."""
    while True:
        port = random.randint(20000, 32000)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
