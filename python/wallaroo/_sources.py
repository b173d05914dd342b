"""Source configurations: TCP, generator and file sources.

Each config's ``to_tuple()`` is the config tuple the engine reads, whose
first item is the source kind and second the source name (see
``_pipeline``).  Kafka sources are in ``_kafka``, connector sources in
``wallaroo.experimental``.
"""

from typing import Any, Union

from ._errors import _port_str, _require_methods

_FRAMED_DECODER_METHODS = ("header_length", "payload_length", "decode")


class TCPSourceConfig(object):
    """A TCP listener on ``host:port`` reading frames decoded by ``decoder``.

    ``valid=False`` means this worker opens no listener; ``parallelism`` is
    the number of concurrent connections accepted per worker; ``max_size``
    the read-buffer size in bytes; ``max_received_count`` the number of
    messages handled per read burst.  ``port`` may be a str or an int.
    """

    def __init__(self, name: str, host: str, port: Union[str, int],
                 decoder: Any, valid: bool = True, parallelism: int = 10,
                 max_size: int = 16384, max_received_count: int = 50) -> None:
        _require_methods(decoder, _FRAMED_DECODER_METHODS, "TCPSourceConfig")
        self._name = name
        self._host = host
        self._port = _port_str(port, "TCPSourceConfig")
        self._decoder = decoder
        self._valid = valid
        self._parallelism = parallelism
        self._max_size = max_size
        self._max_received_count = max_received_count

    def to_tuple(self) -> tuple[Any, ...]:
        return ("tcp", self._name, self._host, self._port, self._decoder,
                self._valid, self._parallelism, self._max_size,
                self._max_received_count)


class GenSourceConfig(object):
    """An internal generator source: ``gen_instance.initial_value()`` once,
    then ``gen_instance.apply(last)`` for every emitted value until ``None``.
    Runs on every worker."""

    def __init__(self, name: str, gen_instance: Any) -> None:
        _require_methods(gen_instance, ("initial_value", "apply"),
                         "GenSourceConfig")
        self._name = name
        self._gen = gen_instance

    def to_tuple(self) -> tuple[Any, ...]:
        return ("gen", self._name, self._gen)


class FileSourceConfig(object):
    """(quoll extension, not in Wallaroo.) Read the file at ``path`` as a
    sequence of framed records, each a header of ``decoder.header_length()``
    bytes whose ``decoder.payload_length(header)`` gives the payload size,
    followed by the payload, which ``decoder.decode(payload)`` turns into a
    message.  The byte offset is the source's replay position, so input is
    replayed after a rollback.

    ``to_tuple()`` is ``("file", name, path, decoder)``.
    """

    def __init__(self, name: str, path: Any, decoder: Any) -> None:
        _require_methods(decoder, _FRAMED_DECODER_METHODS, "FileSourceConfig")
        self._name = name
        self._path = str(path)
        self._decoder = decoder

    def to_tuple(self) -> tuple[Any, ...]:
        return ("file", self._name, self._path, self._decoder)
