"""Wallaroo connector API: source/sink connector configs used by
applications, connector decorators, and client helpers for external
connector processes.

This module imports nothing from ``asyncore``/``asynchat`` (both removed in
Python 3.12), so it imports on every supported Python version.

Not provided yet by quoll: the asyncore-based ``AtLeastOnceSourceConnector``
client (and ``connectors.MultiSourceConnector`` built on it).  The names
exist so that imports keep working, but instantiating them raises
``NotImplementedError``.
"""

import argparse
from collections import namedtuple
import logging
import select as _select
import socket
import sys
from typing import Any, Callable, Optional, Sequence, Union

import wallaroo
from wallaroo import dt_to_timestamp  # noqa: F401  (re-exported, as in Wallaroo)

from . import connector_wire_messages  # noqa: F401
from . import connector_wire_messages as cwm  # noqa: F401


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
            "please use AtLeastOnceSourceConnector (connector protocol v3) "
            "instead.")


Stream = namedtuple('Stream', ['id', 'name', 'point_of_ref', 'is_open'])


class AtLeastOnceSourceConnector(object):
    """Placeholder: the asyncore-based at-least-once source connector client
    is not provided by quoll yet.  Speak connector protocol v3 with the
    message classes of ``wallaroo.experimental.connector_wire_messages``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "AtLeastOnceSourceConnector is not implemented in quoll's "
            "wallaroo package yet; use "
            "wallaroo.experimental.connector_wire_messages to speak "
            "connector protocol v3 directly.")


class SinkConnector(object):
    """A simple sink connector endpoint: listens where the application's
    ``SinkConnectorConfig`` named ``--connector`` points and decodes framed
    data with that config's decoder.  (Legacy framing; no protocol v3.)"""

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
        self._acceptor: Optional[socket.socket] = None
        self._connections: list[socket.socket] = []
        self._buffers: dict[socket.socket, bytes] = {}
        self._pending: list[socket.socket] = []

    def listen(self, host: Optional[str] = None,
               port: Union[str, int, None] = None, backlog: int = 0) -> None:
        acceptor = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        acceptor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        acceptor.bind((host or self._host, int(port or self._port)))
        acceptor.listen(backlog)
        self._acceptor = acceptor
        self._connections.append(acceptor)

    def read(self, timeout: Optional[float] = None) -> Any:
        """Return the next decoded message from any connection (blocking)."""
        while True:
            for conn in list(self._pending):
                ok, message = self._read_one(conn)
                if ok:
                    return message
            self._select_any(timeout)

    def _select_any(self, timeout: Optional[float] = None) -> None:
        readable, _, exceptional = _select.select(
            self._connections, [], self._connections, timeout)
        for conn in exceptional:
            if conn is self._acceptor:
                conn.close()
                raise UnexpectedSocketError()
            self._teardown_connection(conn)
        for conn in readable:
            if conn is self._acceptor:
                new_conn, _addr = conn.accept()
                self._setup_connection(new_conn)
            elif conn in self._buffers:
                data = conn.recv(4096)
                if not data:
                    self._teardown_connection(conn)
                    continue
                self._buffers[conn] += data
                if conn not in self._pending:
                    self._pending.append(conn)

    def _read_one(self, conn: socket.socket) -> tuple[bool, Any]:
        buffered = self._buffers.get(conn, b"")
        header_len = self._decoder.header_length()
        if len(buffered) < header_len:
            self._pending.remove(conn)
            return (False, None)
        expected = self._decoder.payload_length(buffered[:header_len])
        if len(buffered) < header_len + expected:
            self._pending.remove(conn)
            return (False, None)
        data = buffered[header_len:header_len + expected]
        self._buffers[conn] = buffered[header_len + expected:]
        return (True, self._decoder.decode(data))

    def _setup_connection(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        self._connections.append(conn)
        self._buffers[conn] = b""

    def _teardown_connection(self, conn: socket.socket) -> None:
        if conn in self._connections:
            self._connections.remove(conn)
        self._buffers.pop(conn, None)
        if conn in self._pending:
            self._pending.remove(conn)
        conn.close()


logging.getLogger(__name__).addHandler(logging.NullHandler())
