"""Sink configurations: TCP and file sinks.

Each config's ``to_tuple()`` is the config tuple the engine reads, whose
first item is the sink kind and second the sink name (always ``""`` here).
Kafka sinks are in ``_kafka``, connector sinks in ``wallaroo.experimental``.
"""

from typing import Any, Union

from ._errors import _port_str, _require_methods


class TCPSinkConfig(object):
    """Each worker connects to ``host:port`` and writes ``encoder.encode(out)``
    verbatim (``str`` as UTF-8, ``None`` writes nothing)."""

    def __init__(self, host: str, port: Union[str, int], encoder: Any) -> None:
        _require_methods(encoder, ("encode",), "TCPSinkConfig")
        self._host = host
        self._port = _port_str(port, "TCPSinkConfig")
        self._encoder = encoder
        self._name = ""

    def to_tuple(self) -> tuple[Any, ...]:
        return ("tcp", self._name, self._host, self._port, self._encoder)


class FileSinkConfig(object):
    """(quoll extension, not in Wallaroo.) Append ``encoder.encode(out)``
    (bytes, or str as UTF-8; ``None`` writes nothing) to the file at
    ``path``, with no framing added.  With resilience the file is truncated
    back to its checkpointed length on rollback.

    ``to_tuple()`` is ``("file", "", path, encoder)``.
    """

    def __init__(self, path: Any, encoder: Any) -> None:
        _require_methods(encoder, ("encode",), "FileSinkConfig")
        self._path = str(path)
        self._encoder = encoder
        self._name = ""

    def to_tuple(self) -> tuple[Any, ...]:
        return ("file", self._name, self._path, self._encoder)
