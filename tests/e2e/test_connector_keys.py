"""The connector source keys each message by its MESSAGE key (UTF-8) and
falls back to one constant key per source, never a per-message key."""

import socket
import struct
from pathlib import Path

from harness import free_port

APPS = Path(__file__).parent / "apps"


def short(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def frame(kind, body):
    return struct.pack(">IB", len(body) + 1, kind) + body


def test_message_keys_partition_state(make_cluster, make_receiver):
    out = make_receiver()
    port = free_port()
    make_cluster("connector_keys_app", APPS, 1,
                 app_args=lambda c, i: ["--connector-port", str(port), "--out", out.addr])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(frame(0, short("0.0.1") + short("cookie") + short("test") + short("one")))
        s.sendall(frame(3, struct.pack(">Q", 1) + short("stream") + struct.pack(">Q", 2**64 - 1)))
        msgs = [("a", "a1"), ("b", "b1"), ("a", "a2"), ("", "n1"), ("", "n2"), ("b", "b2")]
        for i, (key, payload) in enumerate(msgs, start=1):
            s.sendall(frame(5, struct.pack(">QQq", 1, i, 0) + short(key) + payload.encode()))
        lines = out.wait_for_lines(len(msgs))
    assert lines == ["a1 1", "b1 1", "a2 2", "n1 1", "n2 2", "b2 2"]
