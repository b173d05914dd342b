"""`wallaroo.experimental.SinkConnector` and quoll's file sink connector,
driven over real loopback sockets by a client that speaks what a quoll
worker sends (docs/connectors.md): HELLO, NOTIFY, LIST_UNCOMMITTED, data at
byte offsets, PHASE1/PHASE2. The worker side itself is tested in
tests/e2e/test_connector_sink.py."""

import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from quoll.ports import free_port
from wallaroo.experimental import SinkConnector
from wallaroo.experimental import connector_wire_messages as cwm

STREAM = "app-w-w1-id-out"


class Worker:
    """A worker's end of one sink connection."""

    def __init__(self, port, two_pc=True, cookie="c"):
        deadline = time.time() + 10
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.buf = b""
        self.send(cwm.Hello("v0.0.1", cookie, "app", "w1"))

    def send(self, msg):
        self.sock.sendall(cwm.Frame.encode(msg))

    def recv(self):
        while len(self.buf) < 4 or len(self.buf) < 4 + struct.unpack(">I", self.buf[:4])[0]:
            data = self.sock.recv(4096)
            if not data:
                raise EOFError
            self.buf += data
        (n,) = struct.unpack(">I", self.buf[:4])
        frame, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return cwm.Frame.decode(frame)

    def two_pc(self, tag, body):
        self.send(cwm.Message(0, 0, 0, None, bytes([tag]) + body))

    def reply_2pc(self):
        m = self.recv()
        assert isinstance(m, cwm.Message) and m.stream_id == 0
        return m.message[0], m.message[1:]

    def open(self, offset=0, two_pc=True):
        assert isinstance(self.recv(), cwm.Ok)
        self.send(cwm.Notify(1, STREAM, offset))
        ack = self.recv()
        assert isinstance(ack, cwm.NotifyAck) and ack.notify_success
        if two_pc:
            self.two_pc(201, struct.pack(">Q", 7))
            tag, body = self.reply_2pc()
            assert tag == 202
            return cwm.ReplyUncommitted.decode(body).txn_ids
        return []

    def data(self, offset, payload):
        self.send(cwm.Message(1, offset, 0, None, payload))

    def phase1(self, c_id, start, end):
        txn = f"{STREAM}:c_id={c_id}"
        self.two_pc(203, cwm.TwoPCPhase1(txn, [(1, start, end)]).encode())
        tag, body = self.reply_2pc()
        assert tag == 204
        got_txn, vote = cwm.decode_phase2r(body)
        assert got_txn == txn
        return vote

    def phase2(self, c_id, commit):
        self.two_pc(205, cwm.encode_phase2r(f"{STREAM}:c_id={c_id}", commit))


def frame(text):
    b = text.encode()
    return struct.pack(">I", len(b)) + b


@pytest.fixture
def connector(tmp_path, monkeypatch):
    port = free_port()
    module = f"sink_app_{port}"  # a new module per test: imports are cached
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(f"""
        import wallaroo, wallaroo.experimental as wx

        @wx.stream_message_decoder
        def dec(bs):
            return bs.decode()

        @wx.stream_message_encoder
        def enc(x):
            return x

        @wallaroo.decoder(header_length=4, length_fmt=">I")
        def src(bs):
            return bs

        def application_setup(args):
            p = wallaroo.source("P", wallaroo.TCPSourceConfig("in", "127.0.0.1", 7999, src))
            return wallaroo.build_application("app", p.to_sink(
                wx.SinkConnectorConfig("out", enc, dec, {port}, "c")))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    c = SinkConnector(["x", "--application-module", module, "--connector", "out"])
    c.listen()
    yield c, port
    c._server.close()


class Serving:
    """Runs the connector's server on a thread while a test's worker talks
    to it (the test's client blocks on answers); `read()` is called only
    after `stop()`, as it polls the same server."""

    def __init__(self, c):
        self.c = c
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            self.c._server.poll(0.02)

    def stop(self):
        self.running = False
        self.thread.join()


def read_all(c, n):
    return [c.read(0.05) for _ in range(n)]


def test_read_returns_committed_output_once(connector):
    c, port = connector
    serving = Serving(c)
    w = Worker(port)
    assert w.open() == []
    a, b = frame("one"), frame("two")
    w.data(0, a)
    w.data(len(a), b)
    end = len(a) + len(b)
    # A checkpoint that aborts: nothing is read, and the worker resends.
    assert w.phase1(1, 0, end)
    w.phase2(1, False)
    # A rewind below the end overwrites; then commit.
    w.data(0, a)
    w.data(len(a), frame("TWO"))
    assert w.phase1(2, 0, end)
    w.phase2(2, True)
    # A gap (bytes missing) gets an abort vote.
    w.data(end + 5, frame("x"))
    assert not w.phase1(3, end, end + 5 + len(frame("x")))
    serving.stop()
    assert read_all(c, 2) == ["one", "TWO"]
    assert c._buffers[STREAM] == b""


def test_without_list_uncommitted_data_is_final_on_arrival(connector):
    c, port = connector
    serving = Serving(c)
    w = Worker(port)
    w.open(two_pc=False)
    a = frame("hello")
    w.data(0, a)
    w.data(0, a)  # below what the stream holds: skipped
    w.data(len(a), frame("again"))
    w.sock.close()
    time.sleep(0.3)
    serving.stop()
    assert read_all(c, 2) == ["hello", "again"]


def test_workers_left_is_taken_and_the_connection_goes_on(connector):
    c, port = connector
    serving = Serving(c)
    w = Worker(port)
    w.open()
    w.two_pc(206, cwm.WorkersLeft(3, ["w2", "w3"]).encode())
    a = frame("after")
    w.data(0, a)
    # The vote comes after WORKERS_LEFT was handled (one connection, in order).
    assert w.phase1(1, 0, len(a))
    w.phase2(1, True)
    serving.stop()
    assert c._server.workers_left == {"w2", "w3"}
    assert read_all(c, 1) == ["after"]


def test_a_wrong_cookie_gets_error(connector):
    c, port = connector
    serving = Serving(c)
    w = Worker(port, cookie="nope")
    m = w.recv()
    serving.stop()
    assert isinstance(m, cwm.Error) and m.message == "Bad cookie: nope, wanted: c"


def test_the_file_connector_keeps_prepared_bytes_across_a_kill(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "quoll.sink_connector", "--listen", f"127.0.0.1:{port}", "--cookie", "c",
           "--dir", str(tmp_path / "out")]
    p = subprocess.Popen(cmd)
    try:
        w = Worker(port)
        w.open()
        w.data(0, b"abc")
        w.data(3, b"def")
        assert w.phase1(1, 0, 6)
        p.kill()
        p.wait()
        p = subprocess.Popen(cmd)
        w = Worker(port)
        # The prepared transaction survived; committing it writes the file.
        assert w.open() == [f"{STREAM}:c_id=1"]
        w.phase2(1, True)
        w.data(6, b"gh")
        assert w.phase1(2, 6, 8)
        w.phase2(2, False)
        w.sock.close()
        out = tmp_path / "out" / f"{STREAM}.out"
        prepared = tmp_path / "out" / f"{STREAM}.prepared"

        def done():
            return out.exists() and out.read_bytes() == b"abcdef" and not prepared.exists()
        deadline = time.time() + 5
        while not done() and time.time() < deadline:
            time.sleep(0.05)
        assert out.read_bytes() == b"abcdef"
        assert not prepared.exists()
    finally:
        p.kill()
        p.wait()
