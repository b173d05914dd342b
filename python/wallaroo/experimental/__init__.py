"""Wallaroo connector API: source/sink connector configs used by
applications, connector decorators, and client helpers for external
connector processes.

This module imports nothing from ``asyncore``/``asynchat`` (both removed in
Python 3.12), so it imports on every supported Python version.

``AtLeastOnceSourceConnector`` is quoll's own client of connector
protocol v3 (a thread and blocking sockets, no asyncore) with Wallaroo's
methods and hooks; ``connectors.MultiSourceConnector`` builds on it.
"""

from abc import ABCMeta, abstractmethod
import argparse
from collections import namedtuple
import logging
import select as _select
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence, Union

import wallaroo
from wallaroo import dt_to_timestamp  # noqa: F401  (re-exported, as in Wallaroo)

from . import connector_wire_messages  # noqa: F401
from . import connector_wire_messages as cwm  # noqa: F401
from . import _sink


class ConnectorError(Exception):
    pass


class ProtocolError(Exception):
    pass


class UnexpectedSocketError(Exception):
    pass


##############################################################################
# Decorators
##############################################################################

def stream_message_decoder(
        func: Callable[[bytes], Any]) -> wallaroo.ConnectorDecoder:
    """Decorate ``f(payload: bytes) -> object | None`` as a connector decoder
    (``header_length()`` 4, ``payload_length`` ``>I``)."""
    name = wallaroo._func_name(func)
    wallaroo._validate_arity_compatability(name, func, 1)
    C = wallaroo._wallaroo_wrap(name, func, wallaroo.ConnectorDecoder)
    return C()


def stream_message_encoder(
        func: Callable[[Any], Any]) -> wallaroo.ConnectorEncoder:
    """Decorate ``f(data) -> bytes`` as a connector encoder whose
    ``encode(data, event_time=0, key=None)`` returns the legacy framed
    record ``>IqI{k}s{n}s``."""
    name = wallaroo._func_name(func)
    wallaroo._validate_arity_compatability(name, func, 1)
    C = wallaroo._wallaroo_wrap(name, func, wallaroo.ConnectorEncoder)
    return C()


def octet_message_encoder(
        func: Callable[[Any], Any]) -> wallaroo.OctetEncoder:
    """Same as ``wallaroo.encoder``."""
    name = wallaroo._func_name(func)
    wallaroo._validate_arity_compatability(name, func, 1)
    C = wallaroo._wallaroo_wrap(name, func, wallaroo.OctetEncoder)
    return C()


def octet_message_decoder(
        func: Any = None, header_length: Any = 4, length_fmt: Any = ">I"
) -> Union[wallaroo.OctetDecoder,
           Callable[[Callable[[bytes], Any]], wallaroo.OctetDecoder]]:
    """Same as ``wallaroo.decoder``; usable bare (``@octet_message_decoder``,
    with the defaults ``header_length=4, length_fmt=">I"``) or with
    arguments (``@octet_message_decoder(header_length=2, length_fmt=">H")``).
    """
    if func is None:
        return wallaroo.decoder(header_length, length_fmt)
    if isinstance(func, int) and not isinstance(func, bool):
        # positional header_length: octet_message_decoder(2, ">H")
        if length_fmt == ">I" and header_length != 4:
            length_fmt = header_length
        return wallaroo.decoder(func, length_fmt)
    return wallaroo.decoder(header_length, length_fmt)(func)


##############################################################################
# Configs
##############################################################################

class SourceConnectorConfig(object):
    """The worker listens on ``host:port`` for connector protocol v3
    clients; MESSAGE payloads go through ``decoder.decode``.  ``encoder`` is
    used only by external connector scripts."""

    def __init__(self, name: str, encoder: Any, decoder: Any,
                 port: Union[str, int], cookie: str, max_credits: int,
                 refill_credits: int, host: str = '127.0.0.1') -> None:
        if not callable(getattr(decoder, "decode", None)):
            raise wallaroo._api_error(
                "SourceConnectorConfig needs a decoder with a decode() "
                "method; got {}.".format(wallaroo._describe(decoder)))
        self._name = name
        self._encoder = encoder
        self._decoder = decoder
        self._port = port
        self._cookie = cookie
        self._max_credits = max_credits
        self._refill_credits = refill_credits
        self._host = host

    def to_tuple(self) -> tuple[Any, ...]:
        return ("source_connector", self._name, self._host, str(self._port),
                self._encoder, self._decoder, self._cookie,
                self._max_credits, self._refill_credits)


class SinkConnectorConfig(object):
    """The worker connects to ``host:port`` and sends
    ``encoder.encode(data)`` as MESSAGE payloads.  ``decoder`` is used only
    by the external sink process."""

    def __init__(self, name: str, encoder: Any, decoder: Any,
                 port: Union[str, int], cookie: str,
                 host: str = '127.0.0.1') -> None:
        if not callable(getattr(encoder, "encode", None)):
            raise wallaroo._api_error(
                "SinkConnectorConfig needs an encoder with an encode() "
                "method; got {}.".format(wallaroo._describe(encoder)))
        self._name = name
        self._host = host
        self._port = port
        self._cookie = cookie
        self._encoder = encoder
        self._decoder = decoder

    def to_tuple(self) -> tuple[Any, ...]:
        return ("sink_connector", self._name, self._host, str(self._port),
                self._encoder, self._decoder, self._cookie)


##############################################################################
# Connector process helpers
##############################################################################

def _parse_connector_prefix(args: Sequence[str]) -> Optional[str]:
    parser = argparse.ArgumentParser()
    parser.add_argument('--connector', dest='connector_name')
    return parser.parse_known_args(args)[0].connector_name


def parse_connector_args(args: Sequence[str],
                         required_params: Sequence[str] = (),
                         optional_params: Sequence[str] = ()
                         ) -> argparse.Namespace:
    """Parse ``--application-module``, ``--connector NAME`` and the
    connector's parameters, spelt ``--NAME-<param>``."""
    prefix = _parse_connector_prefix(args) or 'CONNECTOR_NAME'
    parser = argparse.ArgumentParser()
    parser.add_argument('--application-module', dest='application',
                        required=True)
    parser.add_argument('--connector', dest='connector_name', required=True)
    for key in required_params:
        parser.add_argument('--{}-{}'.format(prefix, key), dest=key,
                            required=True)
    for key in optional_params:
        parser.add_argument('--{}-{}'.format(prefix, key), dest=key)
    return parser.parse_known_args(args)[0]


def _load_application(params: argparse.Namespace,
                      args: Sequence[str]) -> Any:
    import importlib
    module = importlib.import_module(params.application)
    return module.application_setup(args)


class BaseConnector(object):
    """Runs the application's ``application_setup`` and finds the source
    connector named by ``--connector`` in the application tuple."""

    def __init__(self, args: Optional[Sequence[str]] = None,
                 required_params: Sequence[str] = (),
                 optional_params: Sequence[str] = ()) -> None:
        args = args or sys.argv
        params = parse_connector_args(args, required_params, optional_params)
        application = _load_application(params, args)
        found = None
        for stages in application[2]:
            for stage in stages:
                if (stage[0] == 'source' and stage[2][0] == 'source_connector'
                        and stage[2][1] == params.connector_name):
                    found = stage[2]
        if found is None:
            raise RuntimeError("Unable to find a source connector with the "
                               "name " + str(params.connector_name))
        (_, _name, host, port, encoder, _decoder, cookie, max_credits,
         refill_credits) = found[:9]
        self.params = params
        self._encoder = encoder
        self._host = host
        self._port = port
        self._cookie = cookie
        self._max_credits = max_credits
        self._refill_credits = refill_credits


class SourceConnector(BaseConnector):
    """The legacy (pre-v3) source connector protocol is not supported."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise Exception(
            "SourceConnector uses the unsupported legacy connector protocol; "
            "use wallaroo.experimental.AtLeastOnceSourceConnector (or "
            "connectors.MultiSourceConnector) in a script, or send a file "
            "with `quoll send --connector` (both speak protocol v3).")


Stream = namedtuple('Stream', ['id', 'name', 'point_of_ref', 'is_open'])


def _text(value: Union[str, bytes]) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class _ConnectionLost(Exception):
    """The link to the worker broke, or the worker asked for a restart."""


class AtLeastOnceSourceConnector(metaclass=ABCMeta):
    """A client of connector protocol v3 (docs/formats.md) for a source
    whose input can be replayed from a point of reference.

    ``connect()`` says HELLO and waits for OK on the caller's thread, then
    starts one background thread, the loop, which reads the worker's
    frames and calls the stream hooks, and which, for a subclass that
    defines ``__next__``, sends what ``__next__`` returns while credits
    last (``None``: nothing now; ``StopIteration``: done, shut down). The
    hooks and ``__next__`` run under the client's lock, as do ``notify``,
    ``write`` and ``end_of_stream``, so a script may also call those from
    its own thread; ``write`` from another thread waits for credits.

    Hooks: ``stream_added`` (``notify`` registered a stream),
    ``stream_opened``/``stream_closed`` (the worker opened it / it is no
    longer open), ``stream_acked`` (the worker acknowledged a point of
    reference: with resilience, a committed checkpoint covers it), and
    ``handle_restarted(streams)``.

    At least once across crashes: on RESTART (the cluster rolled back) or
    when the connection drops (the worker died), every open stream is
    closed, the client reconnects (retrying for ``reconnect_timeout``
    seconds, the worker's restart included) and ``handle_restarted``
    notifies every stream again from its last acknowledged point; the
    worker's NOTIFY_ACK then says where to resume. Wallaroo's client
    reconnected only on RESTART.
    """

    #: Seconds to keep retrying a lost worker before giving up.
    reconnect_timeout = 60.0
    #: Seconds to wait for the worker's answer to HELLO.
    handshake_timeout = 10.0

    def __init__(self, version: str, cookie: str, program_name: str,
                 instance_name: str, host: str, port: Union[str, int],
                 delay: float = 0) -> None:
        self.version = version
        self.cookie = cookie
        self.program_name = program_name
        self.instance_name = instance_name
        self._host = host
        self._port = int(port)
        # Pause after each message sent from __next__ (pacing; 0: none).
        self.delay = float(delay)
        self.credits = 0
        self.handshake_complete = False
        self.error: Optional[BaseException] = None
        self.stopped = threading.Event()
        self._streams: dict[int, Stream] = {}
        self._lock = threading.RLock()
        self._credit = threading.Condition(self._lock)
        self._conn: Optional[socket.socket] = None
        self._in = bytearray()
        self._loop: Optional[threading.Thread] = None
        # Streams the worker refused: when to notify them again.
        self._retry: dict[int, float] = {}

    # ---- the session

    def connect(self) -> None:
        """HELLO, OK, and the loop started. Raises ConnectorError if the
        worker can't be reached or refuses (a wrong cookie, for one)."""
        with self._lock:
            self._open_session(deadline=None)
        if self._loop is None:
            self._loop = threading.Thread(target=self._run, daemon=True,
                                          name="connector-client")
            self._loop.start()

    def _where(self) -> str:
        return "the worker at {}:{}".format(self._host, self._port)

    def _open_session(self, deadline: Optional[float]) -> None:
        """Connects and greets, retrying a refused or dropped connection
        until `deadline` (None: one attempt)."""
        self.handshake_complete = False
        self.credits = 0
        self._in = bytearray()
        while True:
            try:
                self._greet()
                return
            except (OSError, _ConnectionLost) as e:
                self._close_socket()
                if deadline is None or time.monotonic() > deadline:
                    raise ConnectorError("can't reach {}: {}".format(
                        self._where(), e)) from None
                time.sleep(0.2)

    def _greet(self) -> None:
        conn = socket.create_connection((self._host, self._port),
                                        timeout=self.handshake_timeout)
        self._conn = conn
        conn.sendall(cwm.Frame.encode(cwm.Hello(
            self.version, self.cookie, self.program_name,
            self.instance_name)))
        (length,) = struct.unpack(">I", self._recv_exact(4))
        msg = cwm.Frame.decode(self._recv_exact(length))
        if isinstance(msg, cwm.Error):
            self._close_socket()
            raise ConnectorError("{} sent ERROR: {}".format(
                self._where(), _text(msg.message)))
        if not isinstance(msg, cwm.Ok):
            self._close_socket()
            raise ProtocolError("{} answered HELLO with {}".format(
                self._where(), msg))
        conn.settimeout(None)
        self.credits = msg.initial_credits
        self.handshake_complete = True

    def _recv_exact(self, n: int) -> bytes:
        assert self._conn is not None
        buf = bytearray()
        while len(buf) < n:
            chunk = self._conn.recv(n - len(buf))
            if not chunk:
                raise _ConnectionLost("the worker closed the connection")
            buf += chunk
        return bytes(buf)

    def _close_socket(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._step()
            except (OSError, _ConnectionLost) as e:
                if not self.stopped.is_set():
                    try:
                        self._restart(str(e))
                    except BaseException as err:
                        self._fail(err)
            except BaseException as e:
                self._fail(e)

    def _step(self) -> None:
        with self._lock:
            conn = self._conn
            self._notify_refused()
            sent = self._produce()
        if conn is None or self.stopped.is_set():
            return
        readable, _, _ = _select.select([conn], [], [], 0 if sent else 0.05)
        if not readable:
            return
        data = conn.recv(1 << 16)
        if not data:
            raise _ConnectionLost("the worker closed the connection")
        with self._lock:
            self._in += data
            while len(self._in) >= 4:
                (length,) = struct.unpack_from(">I", self._in)
                if len(self._in) < 4 + length:
                    break
                frame = bytes(self._in[4:4 + length])
                del self._in[:4 + length]
                self._handle(cwm.Frame.decode(frame))

    def _notify_refused(self) -> None:
        now = time.monotonic()
        for stream_id, when in list(self._retry.items()):
            stream = self._streams.get(stream_id)
            if stream is None or stream.is_open:
                del self._retry[stream_id]
            elif when <= now:
                self._retry[stream_id] = now + 1.0  # until its NOTIFY_ACK
                self.write(cwm.Notify(stream.id, stream.name,
                                      stream.point_of_ref))

    def _produce(self) -> int:
        """Sends what __next__ gives while credits last; the count sent."""
        if not hasattr(self, "__next__") or not self.handshake_complete:
            return 0
        sent = 0
        while self.credits > 0 and not self.stopped.is_set():
            try:
                msg = self.__next__()
            except StopIteration:
                self.shutdown()
                break
            if not msg:
                break
            self.write(msg)
            sent += 1
            if self.delay:
                time.sleep(self.delay)
        return sent

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, cwm.NotifyAck):
            old = self._streams.get(msg.stream_id)
            if old is None:
                logging.warning("NOTIFY_ACK for stream %s, which was never "
                                "notified", msg.stream_id)
                return
            if old.is_open and not msg.notify_success:
                # A repeated NOTIFY of a stream this connection holds.
                return
            new = Stream(old.id, old.name, msg.point_of_ref,
                         msg.notify_success)
            self._streams[new.id] = new
            if new.is_open:
                self._retry.pop(new.id, None)
                self.stream_opened(new)
            else:
                # Held by another connection: after a restart, most often
                # this client's old one, which the worker has not yet seen
                # close. Ask again shortly.
                if new.id not in self._retry:
                    logging.warning("%s refused stream %s for now (open on "
                                    "another connection); asking again",
                                    self._where(), new.id)
                self._retry[new.id] = time.monotonic() + 0.2
        elif isinstance(msg, cwm.Ack):
            self.credits += msg.credits
            self._credit.notify_all()
            for stream_id, point_of_ref in msg.acks:
                old = self._streams.get(stream_id)
                if old is not None:
                    new = old._replace(point_of_ref=point_of_ref)
                    self._streams[stream_id] = new
                    self.stream_acked(new)
        elif isinstance(msg, cwm.Restart):
            if msg.address:
                host, _, port = _text(msg.address).rpartition(":")
                self._host, self._port = host, int(port)
            raise _ConnectionLost("the worker sent RESTART")
        elif isinstance(msg, cwm.Error):
            raise ConnectorError("{} sent ERROR: {}".format(
                self._where(), _text(msg.message)))
        else:
            raise ProtocolError("{} sent {}, which only a client may send "
                                "or which comes only in a handshake"
                                .format(self._where(), msg))

    def _restart(self, reason: str) -> None:
        with self._lock:
            logging.warning("%s: %s; reconnecting", self._where(), reason)
            self._close_socket()
            self._retry.clear()
            for sid, stream in list(self._streams.items()):
                if stream.is_open:
                    closed = stream._replace(is_open=False)
                    self._streams[sid] = closed
                    self.stream_closed(closed)
            self._open_session(time.monotonic() + self.reconnect_timeout)
            self.handle_restarted(dict(self._streams))

    def _fail(self, error: BaseException) -> None:
        logging.error("connector client stops: %s", error)
        self.error = error
        self.shutdown()

    def shutdown(self, error: Optional[Any] = None) -> None:
        """Closes the connection (after sending `error` if it is a
        ``connector_wire_messages.Error``) and ends ``join``."""
        with self._lock:
            if isinstance(error, cwm.Error) and self._conn is not None:
                try:
                    self._conn.sendall(cwm.Frame.encode(error))
                except OSError:
                    pass
            self.stopped.set()
            self._close_socket()
            self._credit.notify_all()

    def join(self, timeout: Optional[float] = None) -> None:
        """Waits until the client stops (``__next__`` ran out, ``shutdown``
        or a failure); raises the failure, if any."""
        self.stopped.wait(timeout)
        if self.error is not None:
            raise self.error

    # ---- sending

    def write(self, msg: Any) -> None:
        """Sends a NOTIFY, MESSAGE (its stream must be open), EOS or ERROR
        frame. NOTIFY and MESSAGE cost a credit: from a thread other than
        the loop's, this waits for one."""
        with self._lock:
            if isinstance(msg, cwm.Message):
                stream = self._streams.get(msg.stream_id)
                if stream is None or not stream.is_open:
                    raise ProtocolError(
                        "Message cannot be sent. Stream ({}) is not in an "
                        "open state. Use notify() to open it."
                        .format(msg.stream_id))
                cost = 1
            elif isinstance(msg, cwm.Notify):
                cost = 1
            elif isinstance(msg, (cwm.EosMessage, cwm.Error)):
                cost = 0
            else:
                raise ProtocolError("a client sends only Notify, Message, "
                                    "EosMessage or Error, not {}".format(msg))
            if cost and threading.current_thread() is not self._loop:
                while self.credits <= 0 and not self.stopped.is_set():
                    self._credit.wait(0.1)
            if self.stopped.is_set():
                raise self.error or ConnectorError(
                    "the connection to {} is shut down".format(self._where()))
            self.credits -= cost
            if self._conn is not None:
                try:
                    self._conn.sendall(cwm.Frame.encode(msg))
                except OSError:
                    # The loop sees the broken link and reconnects; the
                    # stream is notified again and resumes from its ack.
                    pass

    def notify(self, stream_id: int, stream_name: Optional[Any] = None,
               point_of_ref: Optional[int] = None) -> None:
        """Asks the worker to open a stream (registering it here, which
        calls ``stream_added``); NOTIFY_ACK then calls ``stream_opened``."""
        with self._lock:
            old = self._streams.get(stream_id)
            if old is not None:
                if point_of_ref is None:
                    raise ConnectorError("Cannot update a stream without a "
                                         "valid point_of_ref value")
                new = Stream(stream_id, old.name, point_of_ref, old.is_open)
            else:
                if stream_name is None:
                    raise ConnectorError("Cannot notify a new stream without "
                                         "a Stream name!")
                new = Stream(stream_id, stream_name,
                             0 if point_of_ref is None else point_of_ref,
                             False)
            self._streams[stream_id] = new
            self.stream_added(new)
            self.write(cwm.Notify(new.id, new.name, new.point_of_ref))

    def end_of_stream(self, stream_id: int, point_of_ref: Optional[int] = None,
                      event_time: Any = None, key: Any = None) -> None:
        """Ends a stream: the worker closes it once a checkpoint covers
        its last message, with a final ACK. (``point_of_ref``,
        ``event_time`` and ``key`` are accepted for Wallaroo's signature;
        protocol v3's EOS carries only the stream id.)"""
        self.write(cwm.EosMessage(stream_id))

    # ---- hooks

    def handle_restarted(self, streams: dict[int, Stream]) -> None:
        """After a reconnect: notify every stream again from its last
        acknowledged point of reference."""
        for stream in streams.values():
            self.notify(stream.id, stream.name, stream.point_of_ref)

    def stream_added(self, stream: Stream) -> None:
        """``notify`` registered `stream` (optional)."""

    @abstractmethod
    def stream_opened(self, stream: Stream) -> None:
        """The worker opened `stream`; resume after ``stream.point_of_ref``
        (``U64_MAX``: the worker has nothing of it, start over)."""

    @abstractmethod
    def stream_closed(self, stream: Stream) -> None:
        """`stream` is no longer open (restart, lost link, refused)."""

    @abstractmethod
    def stream_acked(self, stream: Stream) -> None:
        """The worker acknowledged ``stream.point_of_ref``."""


class SinkConnector(object):
    """A sink connector endpoint: listens where the application's
    ``SinkConnectorConfig`` named ``--connector`` points, speaks connector
    protocol v3 with the workers (two-phase commit when they run with
    resilience, see ``_sink``), and ``read()`` returns the committed output,
    cut and decoded with that config's decoder (``header_length``,
    ``payload_length``, ``decode``), each message once while this process
    lives. Streams are read one after the other, in the order their bytes
    were committed."""

    def __init__(self, args: Optional[Sequence[str]] = None,
                 required_params: Sequence[str] = (),
                 optional_params: Sequence[str] = ()) -> None:
        args = args or sys.argv
        params = parse_connector_args(args, required_params, optional_params)
        application = _load_application(params, args)
        found = None
        for stages in application[2]:
            for stage in stages:
                if (stage[0] == 'to_sink' and stage[1][0] == 'sink_connector'
                        and stage[1][1] == params.connector_name):
                    found = stage[1]
        if found is None:
            raise RuntimeError("Unable to find a sink connector with the "
                               "name " + str(params.connector_name))
        (_, _name, host, port, _encoder, decoder, cookie) = found[:7]
        self.params = params
        self._decoder = decoder
        self._host = host
        self._port = port
        self._cookie = cookie
        self._server: Optional[_sink.SinkServer] = None
        # Committed bytes not yet cut into messages, per stream.
        self._buffers: dict[str, bytes] = {}

    def listen(self, host: Optional[str] = None,
               port: Union[str, int, None] = None, backlog: int = 0) -> None:
        self._server = _sink.SinkServer(
            host or self._host, int(port or self._port), str(self._cookie),
            _sink.MemoryStore(), self._committed,
            log=lambda s: logging.getLogger(__name__).warning(s))

    def _committed(self, stream: str, data: bytes) -> None:
        self._buffers[stream] = self._buffers.get(stream, b"") + data

    def read(self, timeout: Optional[float] = None) -> Any:
        """Return the next decoded message (blocking)."""
        if self._server is None:
            raise ConnectorError("call listen() before read()")
        while True:
            for stream, buffered in self._buffers.items():
                ok, message = self._read_one(stream, buffered)
                if ok:
                    return message
            self._server.poll(timeout)

    def _read_one(self, stream: str, buffered: bytes) -> tuple[bool, Any]:
        header_len = self._decoder.header_length()
        if len(buffered) < header_len:
            return (False, None)
        expected = self._decoder.payload_length(buffered[:header_len])
        if len(buffered) < header_len + expected:
            return (False, None)
        data = buffered[header_len:header_len + expected]
        self._buffers[stream] = buffered[header_len + expected:]
        return (True, self._decoder.decode(data))


logging.getLogger(__name__).addHandler(logging.NullHandler())
