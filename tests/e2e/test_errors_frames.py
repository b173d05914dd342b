"""Bad frames on a TCP source (docs/formats.md, "Source framing
(Wallaroo's)"), sent as raw bytes: an oversized frame is reported and
skipped and later frames are still decoded; a connection that ends
mid-frame is reported with how much of the frame arrived, other connections
unaffected; a negative signed length closes that connection only. Plus
2-byte big-endian and 8-byte little-endian headers end to end.

The app (apps/frames_app.py) echoes each payload as a line; its header
format comes from `--header-length` / `--length-fmt`.
"""

import socket
import struct
import time
from pathlib import Path

import pytest

from harness import error_lines, wait_report, wait_until

APPS = Path(__file__).resolve().parent / "apps"


def frame(payload, fmt=">I"):
    if isinstance(payload, str):
        payload = payload.encode("ascii")
    return struct.pack(fmt, len(payload)) + payload


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def local_addr(s):
    host, port = s.getsockname()[:2]
    return f"{host}:{port}"


def start(make_cluster, make_receiver, header_length=4, length_fmt=">I", extra_flags=()):
    out = make_receiver()
    cluster = make_cluster(
        "frames_app", APPS, 1, extra_flags=extra_flags,
        app_args=lambda c, i: ["--in", f"frames@127.0.0.1:{c.in_ports[i]}", "--out", out.addr,
                               "--header-length", str(header_length), "--length-fmt", length_fmt])
    return cluster, out


def place(conn):
    return f"quoll: error: worker 'initializer', source 'frames', connection from {local_addr(conn)}"


def test_oversized_frame_is_skipped_and_later_frames_decoded(make_cluster, make_receiver):
    cluster, out = start(make_cluster, make_receiver, extra_flags=["--max-frame-size", "1000"])
    at_limit = "x" * 1000
    with connect(cluster.in_ports[0]) as c:
        c.sendall(frame("before") + frame(at_limit))
        # The oversized frame arrives in pieces, the next good frame right behind it.
        c.sendall(struct.pack(">I", 5000) + b"y" * 2000)
        time.sleep(0.1)
        c.sendall(b"y" * 3000 + frame("after"))
        lines = out.wait_for_lines(3, timeout=10)
        assert lines == ["before", at_limit, "after"], cluster.describe()
        expected = (f"{place(c)}: frame declares 5000 bytes, more than the limit of 1000 (--max-frame-size); "
                    "frame skipped, later frames still read")
        # The same connection keeps working.
        c.sendall(frame("still here"))
        out.wait_for_lines(4, timeout=10)
    report = wait_report(cluster.external_ports[0], lambda r: r.get("frames_in") == 4, "4 frames in")
    assert report["bad_frames"] == 1, report
    assert report["dropped"] == 0, report
    assert error_lines(cluster.workers[0].stderr()) == [expected], cluster.describe()
    assert out.settle(quiet=0.3) == ["before", at_limit, "after", "still here"]
    assert cluster.workers[0].alive(), cluster.describe()
    cluster.shutdown()


def test_truncated_frames_are_reported_and_other_connections_unaffected(make_cluster, make_receiver):
    cluster, out = start(make_cluster, make_receiver)
    port = cluster.in_ports[0]
    with connect(port) as a:
        a.sendall(frame("a1"))
        out.wait_for_lines(1, timeout=10)

        # Ends in the middle of a payload: 30 of 100 bytes.
        b = connect(port)
        b_place = place(b)
        b.sendall(frame("b1") + struct.pack(">I", 100) + b"z" * 30)
        out.wait_for_lines(2, timeout=10)
        b.close()
        # Ends in the middle of a header: 2 of 4 bytes.
        c = connect(port)
        c_place = place(c)
        c.sendall(frame("c1") + b"\x00\x00")
        out.wait_for_lines(3, timeout=10)
        c.close()

        wait_report(cluster.external_ports[0], lambda r: r.get("bad_frames") == 2, "2 bad frames")
        a.sendall(frame("a2"))
        out.wait_for_lines(4, timeout=10)
    assert out.settle(quiet=0.3) == ["a1", "b1", "c1", "a2"], cluster.describe()
    assert error_lines(cluster.workers[0].stderr()) == [
        f"{b_place}: input ended in the middle of a frame (30 of 100 payload bytes received); "
        "that truncated frame is dropped",
        f"{c_place}: input ended in the middle of a frame (2 of 4 header bytes received); "
        "that truncated frame is dropped",
    ], cluster.describe()
    # And new connections are served.
    with connect(port) as d:
        d.sendall(frame("d1"))
        out.wait_for_lines(5, timeout=10)
    assert out.lines()[-1] == "d1"
    assert cluster.workers[0].alive()
    cluster.shutdown()


def closed_by_peer(conn, timeout=5):
    """True once the worker has closed `conn` (EOF or reset)."""
    conn.settimeout(timeout)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_negative_signed_length_closes_only_that_connection(make_cluster, make_receiver):
    cluster, out = start(make_cluster, make_receiver, 2, ">h")
    port = cluster.in_ports[0]
    with connect(port) as other, connect(port) as bad:
        other.sendall(frame("o1", ">h"))
        bad.sendall(frame("s1", ">h"))
        out.wait_for_lines(2, timeout=10)
        bad.sendall(struct.pack(">h", -2) + b"more bytes that can't be framed")
        assert closed_by_peer(bad), "the worker did not close the connection with the negative length"
        expected = (f"{place(bad)}: bad frame header: negative payload length -2; "
                    "the stream can't be re-synchronised, connection closed")
        other.sendall(frame("o2", ">h"))
        out.wait_for_lines(3, timeout=10)
    # A new connection is served.
    with connect(port) as again:
        again.sendall(frame("n1", ">h"))
        out.wait_for_lines(4, timeout=10)
    lines = out.settle(quiet=0.3)
    assert sorted(lines[:2]) == ["o1", "s1"] and lines[2:] == ["o2", "n1"], cluster.describe()
    assert error_lines(cluster.workers[0].stderr()) == [expected], cluster.describe()
    report = wait_report(cluster.external_ports[0], lambda r: r.get("frames_in") == 4, "4 frames in")
    assert report["bad_frames"] == 1, report
    assert cluster.workers[0].alive()
    cluster.shutdown()


def test_frames_before_a_bad_header_in_the_same_write_are_kept(make_cluster, make_receiver):
    """Good frames that arrive in the same read as a negative length are
    decoded, not lost with the connection."""
    cluster, out = start(make_cluster, make_receiver, 2, ">h")
    with connect(cluster.in_ports[0]) as bad:
        bad.sendall(frame("g1", ">h") + frame("g2", ">h") + struct.pack(">h", -1))
        assert closed_by_peer(bad)
    wait_until(lambda: "negative payload length -1" in cluster.workers[0].stderr(), 5, "the error")
    try:
        out.wait_for_lines(2, timeout=3)
    except AssertionError:
        pass
    assert out.settle(quiet=0.3) == ["g1", "g2"], cluster.describe()
    cluster.shutdown()


@pytest.mark.parametrize("header_length,fmt", [(2, ">H"), (8, "<Q")])
def test_other_header_formats_end_to_end(header_length, fmt, make_cluster, make_receiver):
    cluster, out = start(make_cluster, make_receiver, header_length, fmt)
    big = 300 if fmt == ">H" else 70000  # needs more than one byte / more than 16 bits of length
    payloads = ["one", "", "x" * big, "two", "z" * 255, "three"]
    data = b"".join(frame(p, fmt) for p in payloads)
    with connect(cluster.in_ports[0]) as c:
        # The first header byte by byte, the rest in uneven chunks.
        for i in range(header_length):
            c.sendall(data[i:i + 1])
            time.sleep(0.01)
        rest = data[header_length:]
        for i in range(0, len(rest), 777):
            c.sendall(rest[i:i + 777])
        out.wait_for_lines(len(payloads), timeout=10)
    assert out.settle(quiet=0.3) == payloads
    assert error_lines(cluster.workers[0].stderr()) == []
    report = wait_report(cluster.external_ports[0], lambda r: r.get("frames_in") == len(payloads), "all frames")
    assert report["bad_frames"] == 0 and report["dropped"] == 0, report
    cluster.shutdown()
