"""Connector protocol v3 messages (frames exchanged between a worker and an
external source or sink connector process).

Frame on the wire: ``u32 length`` (bytes after itself), ``u8 type``, body.
All integers are big-endian; a "short string" is ``u16 length`` + bytes.

==== ============ =========================================================
Type Class        Body
==== ============ =========================================================
0    Hello        short version, short cookie, short program_name,
                  short instance_name
1    Ok           u32 initial_credits
2    Error        short message
3    Notify       u64 stream_id, short stream_name, u64 point_of_ref
4    NotifyAck    u8 success, u64 stream_id, u64 point_of_ref
5    Message      u64 stream_id, u64 message_id, i64 event_time, short key
                  (length 0 = no key), payload = rest of the frame
6    Ack          u32 credits, u32 n, n x (u64 stream_id, u64 point_of_ref)
7    Restart      u32 length + "host:port" (empty: same address)
8    EosMessage   u64 stream_id
==== ============ =========================================================

Two-phase-commit messages (sink connector) travel inside ``Message`` frames
on stream 0 as ``u8 tag`` + body (no inner length), see ``TwoPCFrame``:

=== ================= ===================================================
Tag Class             Body
=== ================= ===================================================
201 ListUncommitted   u64 rtag
202 ReplyUncommitted  u64 rtag, u32 n, n x short txn_id
203 TwoPCPhase1       short txn_id, u32 n, n x (u64 stream_id,
                      u64 start_por, u64 end_por)
204 TwoPCReply        short txn_id, u8 commit
205 TwoPCPhase2       short txn_id, u8 commit
206 WorkersLeft       u64 rtag, u32 n, n x short worker_name
=== ================= ===================================================

Text fields may be given as ``str`` or ``bytes`` when encoding; decoding
yields ``str`` except ``Notify.stream_name`` (``bytes``, as in Wallaroo) and
``Message.key``/``Message.message`` (``bytes`` or ``None``).
"""

import struct
from typing import Any, Iterable, Optional, Union

# A text field: str (sent as UTF-8) or bytes.
_Text = Union[str, bytes]

U64_MAX = 18446744073709551615

__all__ = [
    "Hello", "Ok", "Error", "Notify", "NotifyAck", "Message", "Ack",
    "Restart", "EosMessage", "Frame", "ListUncommitted", "ReplyUncommitted",
    "TwoPCPhase1", "TwoPCReply", "TwoPCPhase2", "WorkersLeft", "TwoPCFrame",
    "encode_phase2r", "decode_phase2r", "U64_MAX",
]


def _b(value: Any) -> bytes:
    """str (UTF-8) or bytes -> bytes."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError("expected str or bytes, got {}".format(type(value).__name__))


def _short(value: Any) -> bytes:
    data = _b(value)
    if len(data) > 0xFFFF:
        raise ValueError("short string longer than 65535 bytes")
    return struct.pack(">H", len(data)) + data


class _Reader(object):
    __slots__ = ("_bs", "_pos")

    def __init__(self, bs: bytes) -> None:
        self._bs = bytes(bs)
        self._pos = 0

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._bs):
            raise ValueError("truncated connector message: need {} bytes at "
                             "offset {}, have {}".format(n, self._pos,
                                                         len(self._bs)))
        out = self._bs[self._pos:end]
        self._pos = end
        return out

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def u8(self) -> int:
        return self.unpack(">B")[0]

    def u16(self) -> int:
        return self.unpack(">H")[0]

    def u32(self) -> int:
        return self.unpack(">I")[0]

    def u64(self) -> int:
        return self.unpack(">Q")[0]

    def i64(self) -> int:
        return self.unpack(">q")[0]

    def short_bytes(self) -> bytes:
        return self.take(self.u16())

    def short_str(self) -> str:
        return self.short_bytes().decode("utf-8")

    def rest(self) -> bytes:
        out = self._bs[self._pos:]
        self._pos = len(self._bs)
        return out


class _Msg(object):
    _fields: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __ne__(self, other: object) -> bool:
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        return "{}({})".format(type(self).__name__, ", ".join(
            "{}={!r}".format(f, getattr(self, f)) for f in self._fields))

    __repr__ = __str__


class Hello(_Msg):
    """Hello(version, cookie, program_name, instance_name)"""
    _fields = ("version", "cookie", "program_name", "instance_name")

    def __init__(self, version: _Text, cookie: _Text, program_name: _Text,
                 instance_name: _Text) -> None:
        self.version = version
        self.cookie = cookie
        self.program_name = program_name
        self.instance_name = instance_name

    def encode(self) -> bytes:
        return b"".join(_short(v) for v in (self.version, self.cookie,
                                             self.program_name,
                                             self.instance_name))

    @staticmethod
    def decode(bs: bytes) -> "Hello":
        r = _Reader(bs)
        return Hello(r.short_str(), r.short_str(), r.short_str(),
                     r.short_str())


class Ok(_Msg):
    """Ok(initial_credits: u32)"""
    _fields = ("initial_credits",)

    def __init__(self, initial_credits: int) -> None:
        self.initial_credits = initial_credits

    def encode(self) -> bytes:
        return struct.pack(">I", self.initial_credits)

    @staticmethod
    def decode(bs: bytes) -> "Ok":
        return Ok(_Reader(bs).u32())


class Error(_Msg):
    """Error(message)"""
    _fields = ("message",)

    def __init__(self, msg: _Text) -> None:
        self.message = msg

    def encode(self) -> bytes:
        return _short(self.message)

    @staticmethod
    def decode(bs: bytes) -> "Error":
        return Error(_Reader(bs).short_str())


class Notify(_Msg):
    """Notify(stream_id: u64, stream_name, point_of_ref: u64)"""
    _fields = ("stream_id", "stream_name", "point_of_ref")

    def __init__(self, stream_id: int, stream_name: _Text,
                 point_of_ref: int = 0) -> None:
        self.stream_id = stream_id
        self.stream_name = stream_name
        self.point_of_ref = point_of_ref

    def encode(self) -> bytes:
        return (struct.pack(">Q", self.stream_id) + _short(self.stream_name) +
                struct.pack(">Q", self.point_of_ref))

    @staticmethod
    def decode(bs: bytes) -> "Notify":
        r = _Reader(bs)
        return Notify(r.u64(), r.short_bytes(), r.u64())


class NotifyAck(_Msg):
    """NotifyAck(notify_success: bool, stream_id: u64, point_of_ref: u64)"""
    _fields = ("notify_success", "stream_id", "point_of_ref")

    def __init__(self, notify_success: bool, stream_id: int,
                 point_of_ref: int) -> None:
        self.notify_success = notify_success
        self.stream_id = stream_id
        self.point_of_ref = point_of_ref

    def encode(self) -> bytes:
        return struct.pack(">BQQ", 1 if self.notify_success else 0,
                           self.stream_id, self.point_of_ref)

    @staticmethod
    def decode(bs: bytes) -> "NotifyAck":
        r = _Reader(bs)
        return NotifyAck(r.u8() != 0, r.u64(), r.u64())


class Message(_Msg):
    """Message(stream_id, message_id, event_time, key=None, message=None)

    ``key`` and ``message`` are ``bytes`` or ``None``; an empty key or payload
    decodes as ``None``.
    """
    _fields = ("stream_id", "message_id", "event_time", "key", "message")

    def __init__(self, stream_id: int, message_id: int, event_time: int,
                 key: Optional[bytes] = None,
                 message: Optional[bytes] = None) -> None:
        self.stream_id = stream_id
        self.message_id = message_id
        self.event_time = event_time
        if key is not None and not isinstance(key, bytes):
            raise TypeError("Parameter key must be either None or bytes")
        if message is not None and not isinstance(message, bytes):
            raise TypeError("Parameter message must be either None or bytes")
        self.key = key
        self.message = message

    def encode(self) -> bytes:
        return (struct.pack(">QQq", self.stream_id, self.message_id,
                            self.event_time) +
                _short(self.key or b"") + (self.message or b""))

    @classmethod
    def decode(cls, bs: bytes) -> "Message":
        r = _Reader(bs)
        stream_id, message_id, event_time = r.u64(), r.u64(), r.i64()
        key = r.short_bytes() or None
        message = r.rest() or None
        return cls(stream_id, message_id, event_time, key, message)


class Ack(_Msg):
    """Ack(credits: u32, acks: [(stream_id: u64, point_of_ref: u64)])"""
    _fields = ("credits", "acks")

    def __init__(self, credits: int,
                 acks: Iterable[tuple[int, int]]) -> None:
        self.credits = credits
        self.acks = acks

    def encode(self) -> bytes:
        acks = list(self.acks)
        return (struct.pack(">II", self.credits, len(acks)) +
                b"".join(struct.pack(">QQ", sid, por) for sid, por in acks))

    @staticmethod
    def decode(bs: bytes) -> "Ack":
        r = _Reader(bs)
        credits = r.u32()
        n = r.u32()
        return Ack(credits, [(r.u64(), r.u64()) for _ in range(n)])


class Restart(_Msg):
    """Restart(address=None): reconnect (to ``"host:port"`` if given)."""
    _fields = ("address",)

    def __init__(self, address: Optional[_Text] = None) -> None:
        self.address = address

    def encode(self) -> bytes:
        addr = _b(self.address) if self.address else b""
        return struct.pack(">I", len(addr)) + addr

    @staticmethod
    def decode(bs: bytes) -> "Restart":
        if len(bs) == 0:
            return Restart(None)
        r = _Reader(bs)
        n = r.u32()
        return Restart(r.take(n).decode("utf-8") if n else None)


class EosMessage(_Msg):
    """EosMessage(stream_id: u64): end of stream."""
    _fields = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id

    def encode(self) -> bytes:
        return struct.pack(">Q", self.stream_id)

    @classmethod
    def decode(cls, bs: bytes) -> "EosMessage":
        return cls(_Reader(bs).u64())


class Frame(object):
    """Frame encoding: ``>IB`` header (length = body length + 1) + body."""

    _FRAME_TYPE_TUPLES = [(0, Hello), (1, Ok), (2, Error), (3, Notify),
                          (4, NotifyAck), (5, Message), (6, Ack),
                          (7, Restart), (8, EosMessage)]
    _FRAME_TYPE_MAP: dict[Any, Any] = dict(
        [(v, t) for v, t in _FRAME_TYPE_TUPLES] +
        [(t, v) for v, t in _FRAME_TYPE_TUPLES])

    @classmethod
    def encode(cls, msg: Any) -> bytes:
        tag = cls._FRAME_TYPE_MAP[type(msg)]
        data = msg.encode()
        return struct.pack(">IB", len(data) + 1, tag) + data

    @classmethod
    def decode(cls, bs: bytes) -> Any:
        """Decode a frame without its 4-byte length header."""
        if len(bs) < 1:
            raise ValueError("empty connector frame")
        tag = bs[0]
        try:
            msg_cls = cls._FRAME_TYPE_MAP[tag]
        except KeyError:
            raise ValueError("unknown connector frame type {}".format(tag))
        return msg_cls.decode(bs[1:])

    @staticmethod
    def read_header(bs: bytes) -> int:
        return struct.unpack(">I", bs[:4])[0]


####
#### 2PC (inside Message frames on stream 0)
####

class ListUncommitted(_Msg):
    """ListUncommitted(rtag: u64)"""
    _fields = ("rtag",)

    def __init__(self, rtag: int) -> None:
        self.rtag = rtag

    def encode(self) -> bytes:
        return struct.pack(">Q", self.rtag)

    @staticmethod
    def decode(bs: bytes) -> "ListUncommitted":
        return ListUncommitted(_Reader(bs).u64())


class ReplyUncommitted(_Msg):
    """ReplyUncommitted(rtag: u64, txn_ids: [str])"""
    _fields = ("rtag", "txn_ids")

    def __init__(self, rtag: int, txn_ids: Iterable[_Text]) -> None:
        self.rtag = rtag
        self.txn_ids = txn_ids

    def encode(self) -> bytes:
        txn_ids = list(self.txn_ids)
        return (struct.pack(">QI", self.rtag, len(txn_ids)) +
                b"".join(_short(t) for t in txn_ids))

    @staticmethod
    def decode(bs: bytes) -> "ReplyUncommitted":
        r = _Reader(bs)
        rtag = r.u64()
        n = r.u32()
        return ReplyUncommitted(rtag, [r.short_str() for _ in range(n)])


def encode_phase2r(txn_id: _Text, commit: bool) -> bytes:
    """Body shared by TwoPCReply and TwoPCPhase2: short txn_id, u8 commit."""
    return _short(txn_id) + (b"\x01" if commit else b"\x00")


def decode_phase2r(bs: bytes) -> tuple[str, bool]:
    r = _Reader(bs)
    txn_id = r.short_str()
    return (txn_id, r.u8() == 1)


class TwoPCPhase1(_Msg):
    """TwoPCPhase1(txn_id, where_list: [(stream_id, start_por, end_por)])"""
    _fields = ("txn_id", "where_list")

    def __init__(self, txn_id: _Text,
                 where_list: Iterable[tuple[int, int, int]]) -> None:
        self.txn_id = txn_id
        self.where_list = where_list

    def encode(self) -> bytes:
        where = list(self.where_list)
        return (_short(self.txn_id) + struct.pack(">I", len(where)) +
                b"".join(struct.pack(">QQQ", sid, start, end)
                         for (sid, start, end) in where))

    @staticmethod
    def decode(bs: bytes) -> "TwoPCPhase1":
        r = _Reader(bs)
        txn_id = r.short_str()
        n = r.u32()
        return TwoPCPhase1(txn_id,
                           [(r.u64(), r.u64(), r.u64()) for _ in range(n)])


class TwoPCReply(_Msg):
    """TwoPCReply(txn_id, commit: bool): the sink's phase-1 vote."""
    _fields = ("txn_id", "commit")

    def __init__(self, txn_id: _Text, commit: bool) -> None:
        self.txn_id = txn_id
        self.commit = commit

    def encode(self) -> bytes:
        return encode_phase2r(self.txn_id, self.commit)

    @staticmethod
    def decode(bs: bytes) -> "TwoPCReply":
        return TwoPCReply(*decode_phase2r(bs))


class TwoPCPhase2(_Msg):
    """TwoPCPhase2(txn_id, commit: bool): the global decision."""
    _fields = ("txn_id", "commit")

    def __init__(self, txn_id: _Text, commit: bool) -> None:
        self.txn_id = txn_id
        self.commit = commit

    def encode(self) -> bytes:
        return encode_phase2r(self.txn_id, self.commit)

    @staticmethod
    def decode(bs: bytes) -> "TwoPCPhase2":
        return TwoPCPhase2(*decode_phase2r(bs))


class WorkersLeft(_Msg):
    """WorkersLeft(rtag: u64, leaving_workers: [str])"""
    _fields = ("rtag", "leaving_workers")

    def __init__(self, rtag: int, leaving_workers: Iterable[_Text]) -> None:
        self.rtag = rtag
        self.leaving_workers = leaving_workers

    def encode(self) -> bytes:
        workers = list(self.leaving_workers)
        return (struct.pack(">QI", self.rtag, len(workers)) +
                b"".join(_short(w) for w in workers))

    @staticmethod
    def decode(bs: bytes) -> "WorkersLeft":
        r = _Reader(bs)
        rtag = r.u64()
        n = r.u32()
        return WorkersLeft(rtag, [r.short_str() for _ in range(n)])


class TwoPCFrame(object):
    """2PC payload encoding: ``u8 tag`` + body, no length."""

    _FRAME_TYPE_TUPLES = [(201, ListUncommitted), (202, ReplyUncommitted),
                          (203, TwoPCPhase1), (204, TwoPCReply),
                          (205, TwoPCPhase2), (206, WorkersLeft)]
    _FRAME_TYPE_MAP: dict[Any, Any] = dict(
        [(v, t) for v, t in _FRAME_TYPE_TUPLES] +
        [(t, v) for v, t in _FRAME_TYPE_TUPLES])

    @classmethod
    def encode(cls, msg: Any) -> bytes:
        return struct.pack(">B", cls._FRAME_TYPE_MAP[type(msg)]) + msg.encode()

    @classmethod
    def decode(cls, bs: bytes) -> Any:
        """Decode a 2PC payload (tag + body), e.g. ``Message.message``."""
        if len(bs) < 1:
            raise ValueError("empty 2PC message")
        tag = bs[0]
        try:
            msg_cls = cls._FRAME_TYPE_MAP[tag]
        except KeyError:
            raise ValueError("unknown 2PC message tag {}".format(tag))
        return msg_cls.decode(bs[1:])

    @staticmethod
    def read_header(bs: bytes) -> int:
        return struct.unpack(">I", bs[:4])[0]
