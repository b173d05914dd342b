"""The sink connector side of connector protocol v3 with two-phase commit,
shared by ``wallaroo.experimental.SinkConnector`` and quoll's file sink
connector (``python -m quoll.sink_connector``).

A ``SinkServer`` listens; every worker connects with HELLO, NOTIFY (one
stream per worker and sink) and, when the worker runs with resilience,
LIST_UNCOMMITTED. Each output arrives as MESSAGE on stream 1 with its byte
offset in the stream as message id. The rules (docs/connectors.md):

- Bytes are *pending* until a PHASE2 commit covers them. A new connection
  drops the stream's pending bytes (the worker resends from its committed
  offset), and so does every PHASE2.
- A MESSAGE below what the stream holds rewinds: pending bytes from its
  offset on are replaced (regenerated output after a rollback overwrites
  the same byte range). Bytes already committed are skipped. A MESSAGE
  beyond what the stream holds leaves a gap: the next vote is abort.
- PHASE1 ``(1, start, end)`` gets a commit vote only if ``start`` is the
  committed offset and ``end`` the end of the pending bytes, and only once
  the store has made those bytes durable as the prepared transaction.
- PHASE2 commit makes the prepared bytes committed (``on_commit``); abort
  drops them. REPLY_UNCOMMITTED lists the stream's prepared transaction.
- A stream without LIST_UNCOMMITTED on its connection has no 2PC (the
  worker runs without resilience): bytes are committed on arrival.
- WORKERS_LEFT (a shrink) names workers that left the cluster: they are
  logged and kept in ``workers_left``; their streams' committed bytes stay.

Invariant: a stream's committed bytes are a prefix of the worker's output
stream, each byte once; the store's committed length is the offset.
"""

import os
import select
import socket
import struct
from typing import Any, Callable, Optional

from . import connector_wire_messages as cwm

_DATA_STREAM = 1
_CONTROL_STREAM = 0
# Credits granted in OK. quoll's worker does not spend credits; a large
# grant keeps Wallaroo-style workers from waiting on ACKs.
_CREDITS = 1 << 20
_LIST_UNCOMMITTED, _REPLY_UNCOMMITTED = 201, 202
_PHASE1, _REPLY, _PHASE2 = 203, 204, 205
_WORKERS_LEFT = 206


def _text(value: Any) -> str:
    """A short string field as text (the wire classes give bytes for some)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


class MemoryStore(object):
    """Keeps committed offsets and prepared transactions in memory: exactly
    once while the sink connector process lives; a restarted process
    starts each stream at the offset the worker names in NOTIFY."""

    def __init__(self) -> None:
        self._committed: dict[str, int] = {}
        self._prepared: dict[str, tuple[str, int, bytes]] = {}

    def open(self, stream: str, notified_offset: int) -> int:
        return self._committed.setdefault(stream, notified_offset)

    def prepared(self, stream: str) -> Optional[tuple[str, int, bytes]]:
        return self._prepared.get(stream)

    def prepare(self, stream: str, txn: str, start: int, data: bytes) -> None:
        self._prepared[stream] = (txn, start, data)

    def commit(self, stream: str) -> bytes:
        txn, start, data = self._prepared.pop(stream)
        self._committed[stream] = start + len(data)
        return data

    def abort(self, stream: str) -> None:
        self._prepared.pop(stream, None)

    def append(self, stream: str, data: bytes) -> None:
        self._committed[stream] = self._committed.get(stream, 0) + len(data)


class DirectoryStore(object):
    """Keeps each stream in a directory: ``<stream>.out`` holds exactly the
    committed bytes (its length is the committed offset) and
    ``<stream>.prepared`` the prepared transaction (txn id, start offset,
    bytes), written to a temporary file, fsynced and renamed. A commit
    interrupted by a crash is finished by the next one: the output file is
    cut back to the transaction's start and the bytes appended again."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def _path(self, stream: str, ext: str) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stream)
        return os.path.join(self.directory, safe + ext)

    def open(self, stream: str, notified_offset: int) -> int:
        try:
            return os.path.getsize(self._path(stream, ".out"))
        except FileNotFoundError:
            return 0

    def prepared(self, stream: str) -> Optional[tuple[str, int, bytes]]:
        try:
            with open(self._path(stream, ".prepared"), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        (n,) = struct.unpack(">H", raw[:2])
        txn = raw[2:2 + n].decode("utf-8", "replace")
        (start,) = struct.unpack(">Q", raw[2 + n:10 + n])
        return (txn, start, raw[10 + n:])

    def prepare(self, stream: str, txn: str, start: int, data: bytes) -> None:
        path = self._path(stream, ".prepared")
        t = txn.encode()
        with open(path + ".tmp", "wb") as f:
            f.write(struct.pack(">H", len(t)) + t + struct.pack(">Q", start) + data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        self._sync_dir()

    def commit(self, stream: str) -> bytes:
        prepared = self.prepared(stream)
        assert prepared is not None
        _txn, start, data = prepared
        with open(self._path(stream, ".out"), "ab") as f:
            if f.tell() != start + len(data):
                f.truncate(start)
                f.seek(start)
                f.write(data)
                f.flush()
            os.fsync(f.fileno())
        self.abort(stream)
        return data

    def abort(self, stream: str) -> None:
        try:
            os.remove(self._path(stream, ".prepared"))
        except FileNotFoundError:
            return
        self._sync_dir()

    def append(self, stream: str, data: bytes) -> None:
        with open(self._path(stream, ".out"), "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Conn(object):
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.stream: Optional[str] = None
        self.two_pc = False
        self.hello = False


class _Stream(object):
    def __init__(self, name: str, committed: int) -> None:
        self.name = name
        self.committed = committed
        self.pending = bytearray()
        self.broken = False
        self.conn: Optional[_Conn] = None


class SinkServer(object):
    """Serves sink connections. ``on_commit(stream, data)`` receives each
    stream's committed bytes, in order, once; ``vote(stream, txn)`` may veto
    a transaction (False: abort vote)."""

    def __init__(self, host: str, port: int, cookie: str, store: Any,
                 on_commit: Callable[[str, bytes], None],
                 vote: Optional[Callable[[str, str], bool]] = None,
                 log: Callable[[str], None] = lambda s: None) -> None:
        self.cookie = cookie
        self.store = store
        self.on_commit = on_commit
        self.vote = vote or (lambda stream, txn: True)
        self.log = log
        self.acceptor = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.acceptor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.acceptor.bind((host, int(port)))
        self.acceptor.listen(64)
        self.conns: dict[socket.socket, _Conn] = {}
        self.streams: dict[str, _Stream] = {}
        self.workers_left: set[str] = set()

    def close(self) -> None:
        for c in list(self.conns.values()):
            self._drop(c)
        self.acceptor.close()

    def poll(self, timeout: Optional[float]) -> None:
        """Serves what arrives within `timeout` seconds (None: until
        something does)."""
        socks = [self.acceptor] + list(self.conns)
        readable, _, _ = select.select(socks, [], [], timeout)
        for s in readable:
            if s is self.acceptor:
                sock, _addr = s.accept()
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.conns[sock] = _Conn(sock)
                continue
            conn = self.conns.get(s)
            if conn is None:
                continue
            try:
                data = s.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                self._drop(conn)
                continue
            conn.buf += data
            try:
                self._frames(conn)
            except (ValueError, IndexError, struct.error, UnicodeDecodeError) as e:
                self._refuse(conn, "Invalid message: {}".format(e))

    def _frames(self, conn: _Conn) -> None:
        while len(conn.buf) >= 4 and conn.sock in self.conns:
            (n,) = struct.unpack(">I", conn.buf[:4])
            if len(conn.buf) < 4 + n:
                return
            body, conn.buf = conn.buf[4:4 + n], conn.buf[4 + n:]
            self._handle(conn, cwm.Frame.decode(body))

    def _send(self, conn: _Conn, msg: Any) -> None:
        try:
            conn.sock.sendall(cwm.Frame.encode(msg))
        except OSError:
            self._drop(conn)

    def _send_2pc(self, conn: _Conn, tag: int, body: bytes) -> None:
        self._send(conn, cwm.Message(_CONTROL_STREAM, 0, 0, None,
                                     struct.pack(">B", tag) + body))

    def _refuse(self, conn: _Conn, why: str) -> None:
        self.log("refused a worker connection: " + why)
        self._send(conn, cwm.Error(why))
        self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        self.conns.pop(conn.sock, None)
        try:
            conn.sock.close()
        except OSError:
            pass
        stream = self.streams.get(conn.stream or "")
        if stream is not None and stream.conn is conn:
            stream.conn = None

    def _handle(self, conn: _Conn, msg: Any) -> None:
        if isinstance(msg, cwm.Hello):
            version, cookie = _text(msg.version), _text(msg.cookie)
            if version != "v0.0.1":
                return self._refuse(conn, "Unknown protocol version: {}".format(version))
            if cookie != self.cookie:
                return self._refuse(conn, "Bad cookie: {}, wanted: {}".format(cookie, self.cookie))
            conn.hello = True
            return self._send(conn, cwm.Ok(_CREDITS))
        if not conn.hello:
            return self._refuse(conn, "Invalid message: expected HELLO")
        if isinstance(msg, cwm.Notify):
            if msg.stream_id != _DATA_STREAM or conn.stream is not None:
                self._send(conn, cwm.NotifyAck(False, msg.stream_id, 0))
                return
            name = _text(msg.stream_name)
            stream = self.streams.get(name)
            if stream is None:
                stream = _Stream(name, self.store.open(name, msg.point_of_ref))
                self.streams[name] = stream
            if stream.conn is not None:
                # A worker's newer connection replaces its older one.
                self._drop(stream.conn)
            stream.conn = conn
            stream.pending = bytearray()
            stream.broken = False
            conn.stream = name
            return self._send(conn, cwm.NotifyAck(True, msg.stream_id, stream.committed))
        if isinstance(msg, cwm.Message):
            stream = self.streams.get(conn.stream or "")
            if stream is None or stream.conn is not conn:
                return self._refuse(conn, "Bad/unregistered stream_id {}".format(msg.stream_id))
            if msg.stream_id == _CONTROL_STREAM:
                return self._two_pc(conn, stream, bytes(msg.message or b""))
            return self._data(conn, stream, msg.message_id, bytes(msg.message or b""))
        if isinstance(msg, cwm.Error):
            self.log("worker sent ERROR: {}".format(_text(msg.message)))
            return self._drop(conn)
        return self._refuse(conn, "Invalid message: {}".format(type(msg).__name__))

    def _data(self, conn: _Conn, stream: _Stream, offset: int, data: bytes) -> None:
        if not conn.two_pc:
            # No 2PC: final on arrival; offsets skip what is already there.
            skip = stream.committed - offset
            if skip >= len(data):
                return
            data = data[max(skip, 0):]
            stream.committed += len(data)
            self.store.append(stream.name, data)
            self.on_commit(stream.name, data)
            return
        have = stream.committed + len(stream.pending)
        if offset + len(data) <= stream.committed:
            return
        if offset < stream.committed or offset > have:
            stream.broken = True
            return
        del stream.pending[offset - stream.committed:]
        stream.pending += data

    def _two_pc(self, conn: _Conn, stream: _Stream, payload: bytes) -> None:
        tag, body = payload[0], payload[1:]
        if tag == _LIST_UNCOMMITTED:
            conn.two_pc = True
            rtag = cwm.ListUncommitted.decode(body).rtag
            prepared = self.store.prepared(stream.name)
            txns = [prepared[0]] if prepared else []
            self._send_2pc(conn, _REPLY_UNCOMMITTED,
                           cwm.ReplyUncommitted(rtag, txns).encode())
        elif tag == _PHASE1:
            p1 = cwm.TwoPCPhase1.decode(body)
            where = [tuple(w) for w in p1.where_list]
            end = stream.committed + len(stream.pending)
            ok = (not stream.broken
                  and self.store.prepared(stream.name) is None
                  and where == [(_DATA_STREAM, stream.committed, end)]
                  and self.vote(stream.name, _text(p1.txn_id)))
            if ok:
                self.store.prepare(stream.name, _text(p1.txn_id), stream.committed,
                                   bytes(stream.pending))
            self._send_2pc(conn, _REPLY, cwm.encode_phase2r(p1.txn_id, ok))
        elif tag == _PHASE2:
            txn_raw, commit = cwm.decode_phase2r(body)
            txn = _text(txn_raw)
            prepared = self.store.prepared(stream.name)
            if prepared is not None and prepared[0] == txn:
                if commit:
                    data = self.store.commit(stream.name)
                    stream.committed = prepared[1] + len(data)
                    self.on_commit(stream.name, data)
                else:
                    self.store.abort(stream.name)
            # The worker sends again from its committed offset.
            stream.pending = bytearray()
            stream.broken = False
        elif tag == _WORKERS_LEFT:
            names = [_text(n) for n in cwm.WorkersLeft.decode(body).leaving_workers]
            self.workers_left.update(names)
            self.log("worker(s) {} left the cluster".format(", ".join(names)))
        else:
            self._refuse(conn, "Invalid message: 2PC tag {}".format(tag))
