"""Kafka source and sink configurations and their command-line options.

Every form Wallaroo documents or ships builds: the documented
``KafkaSourceConfig``/``KafkaSinkConfig``, the ``Custom*CLIParser`` classes
(reading ``--kafka_source_*``/``--kafka_sink_*``), the ``Default*CLIParser``
classes (whose ``--<name>_*`` flags the worker reads, see
``_kafka_internal_source_options``) and the ``kafka_parse_*_options``
helpers, with Wallaroo's defaults and parsing quirks (argparse prefixes,
``host[:port]`` brokers where anything but one ``:`` means port 9092, an
empty broker list giving ``[("", "9092")]``, sinks named ``""``).
``CustomKafkaSourceCLIParser`` is fixed (Wallaroo unpacked the options in
the wrong order). Brokers are normalised to ``[(host, port_str), ...]``.
``_kafka_record`` reads what a Kafka encoder returns. See
``docs/kafka.md``.
"""

import argparse
from typing import Any, Iterable, Optional, Sequence, Union

from ._errors import _api_error, _describe, _port_str, _require_methods

_KAFKA_LOG_LEVELS = ("Fine", "Info", "Warn", "Error")

Broker = tuple[str, str]
# What the Kafka configs accept as brokers: "h1:p1,h2" or a list of
# "host[:port]" strings and (host, port) pairs.
BrokersArg = Union[str, Iterable[Union[str, Sequence[Any]]]]


def _kafka_brokers(brokers: BrokersArg, what: str) -> list[Broker]:
    """Normalise ``brokers`` to ``[(host, port_str), ...]``: accepts the
    ``"h1:p1,h2"`` string form, a list of such strings or (host, port)
    pairs."""
    if isinstance(brokers, str):
        return [_kafka_parse_broker(b) for b in brokers.split(",")]
    try:
        items = list(brokers)
    except TypeError:
        raise _api_error("{} brokers must be a list of (host, port) pairs or "
                         "a 'host:port,...' string, got {}."
                         .format(what, _describe(brokers)))
    out = []
    for b in items:
        if isinstance(b, str):
            out.append(_kafka_parse_broker(b))
        elif isinstance(b, (tuple, list)) and len(b) == 2:
            out.append((str(b[0]), _port_str(b[1], what)))
        else:
            raise _api_error("{} broker entries must be 'host[:port]' or "
                             "(host, port), got {}."
                             .format(what, _describe(b)))
    return out


def _kafka_log_level(level: str, what: str) -> str:
    if level not in _KAFKA_LOG_LEVELS:
        raise _api_error("{} log_level must be one of {}, got {!r}."
                         .format(what, "|".join(_KAFKA_LOG_LEVELS), level))
    return level


class KafkaSourceConfig(object):
    """The documented Kafka source config: consume ``topic`` from
    ``brokers`` (list of ``(host, port)``) and ``decoder.decode(value)``
    every message value."""

    def __init__(self, name: str, topic: str, brokers: BrokersArg,
                 log_level: str, decoder: Any) -> None:
        _require_methods(decoder, ("decode",), "KafkaSourceConfig")
        self._name = name
        self.topic = topic
        self.brokers = _kafka_brokers(brokers, "KafkaSourceConfig")
        self.log_level = _kafka_log_level(log_level, "KafkaSourceConfig")
        self.decoder = decoder

    def to_tuple(self) -> tuple[Any, ...]:
        return ("kafka", self._name, self.topic, self.brokers, self.log_level,
                self.decoder)


class KafkaSinkConfig(object):
    """The documented Kafka sink config; ``encoder.encode(out)`` returns
    ``(payload, key, partition)``, ``(payload, key)`` or a bare payload."""

    def __init__(self, topic: str, brokers: BrokersArg, log_level: str,
                 max_produce_buffer_ms: int, max_message_size: int,
                 encoder: Any) -> None:
        _require_methods(encoder, ("encode",), "KafkaSinkConfig")
        self._name = ""
        self.topic = topic
        self.brokers = _kafka_brokers(brokers, "KafkaSinkConfig")
        self.log_level = _kafka_log_level(log_level, "KafkaSinkConfig")
        self.max_produce_buffer_ms = max_produce_buffer_ms
        self.max_message_size = max_message_size
        self.encoder = encoder

    def to_tuple(self) -> tuple[Any, ...]:
        return ("kafka", self._name, self.topic, self.brokers, self.log_level,
                self.max_produce_buffer_ms, self.max_message_size,
                self.encoder)


class CustomKafkaSourceCLIParser(object):
    """Kafka source configured from ``--kafka_source_*`` flags in ``args``.
    Without ``--kafka_source_name`` the source is named ``kafka_source``."""

    def __init__(self, args: Sequence[str], decoder: Any) -> None:
        (name, topic, brokers, log_level) = kafka_parse_source_options(args)
        self._name = name if name is not None else "kafka_source"
        self.topic = topic
        self.brokers = brokers
        self.log_level = log_level
        self.decoder = decoder

    def to_tuple(self) -> tuple[Any, ...]:
        return ("kafka", self._name, self.topic, self.brokers, self.log_level,
                self.decoder)


class CustomKafkaSinkCLIParser(object):
    """Kafka sink configured from ``--kafka_sink_*`` flags in ``args``."""

    def __init__(self, args: Sequence[str], encoder: Any) -> None:
        (name, topic, brokers, log_level, max_produce_buffer_ms,
         max_message_size) = kafka_parse_sink_options(args)
        self._name = name
        self.topic = topic
        self.brokers = brokers
        self.log_level = log_level
        self.max_produce_buffer_ms = max_produce_buffer_ms
        self.max_message_size = max_message_size
        self.encoder = encoder

    def to_tuple(self) -> tuple[Any, ...]:
        return ("kafka", self._name, self.topic, self.brokers, self.log_level,
                self.max_produce_buffer_ms, self.max_message_size,
                self.encoder)


class DefaultKafkaSourceCLIParser(object):
    """Kafka source whose options the worker reads from the command line
    (``--<name>_topic``, ``--<name>_brokers``, ``--<name>_log_level``)."""

    def __init__(self, decoder: Any, name: str = "kafka_source") -> None:
        self.decoder = decoder
        self.name = name

    def to_tuple(self) -> tuple[Any, ...]:
        return ("kafka-internal", self.name, self.decoder)


class DefaultKafkaSinkCLIParser(object):
    """Kafka sink whose options the worker reads from the command line."""

    def __init__(self, encoder: Any, name: str = "kafka_sink") -> None:
        self.encoder = encoder
        self.name = name

    def to_tuple(self) -> tuple[Any, ...]:
        return ("kafka-internal", self.name, self.encoder)


def kafka_parse_source_options(
        args: Sequence[str]) -> tuple[Optional[str], str, list[Broker], str]:
    """Return ``(name, topic, brokers, log_level)`` from the
    ``--kafka_source_*`` flags."""
    return _parse_source_options("kafka_source", args)


def kafka_parse_sink_options(
        args: Sequence[str]
) -> tuple[str, str, list[Broker], str, int, int]:
    """Return ``(name, topic, brokers, log_level, max_produce_buffer_ms,
    max_message_size)`` from the ``--kafka_sink_*`` flags; the message size
    may be spelt ``--kafka_sink_max_message_size`` or
    ``--kafka_sink_max_produce_message_size``. The name is always ``""``
    (Wallaroo has no ``--kafka_sink_name``)."""
    return _parse_sink_options("kafka_sink", args)


def _parse_source_options(
        prefix: str,
        args: Sequence[str]) -> tuple[Optional[str], str, list[Broker], str]:
    # Wallaroo's parser exactly: default argparse, so unknown flags are
    # ignored, `--x=v` works and unambiguous prefixes are accepted.
    parser = argparse.ArgumentParser(prog="wallaroo")
    parser.add_argument("--{}_name".format(prefix), dest="name")
    parser.add_argument("--{}_topic".format(prefix), dest="topic", default="")
    parser.add_argument("--{}_brokers".format(prefix), dest="brokers",
                        default="")
    parser.add_argument("--{}_log_level".format(prefix), dest="log_level",
                        default="Warn", choices=list(_KAFKA_LOG_LEVELS))
    known = parser.parse_known_args(list(args))[0]
    brokers = [_kafka_parse_broker(b) for b in known.brokers.split(",")]
    return (known.name, known.topic, brokers, known.log_level)


def _parse_sink_options(
        prefix: str, args: Sequence[str]
) -> tuple[str, str, list[Broker], str, int, int]:
    parser = argparse.ArgumentParser(prog="wallaroo")
    parser.add_argument("--{}_topic".format(prefix), dest="topic", default="")
    parser.add_argument("--{}_brokers".format(prefix), dest="brokers",
                        default="")
    parser.add_argument("--{}_log_level".format(prefix), dest="log_level",
                        default="Warn", choices=list(_KAFKA_LOG_LEVELS))
    parser.add_argument("--{}_max_produce_buffer_ms".format(prefix),
                        dest="max_produce_buffer_ms", type=int, default=0)
    parser.add_argument("--{}_max_message_size".format(prefix),
                        dest="max_message_size", type=int, default=100000)
    known = parser.parse_known_args(
        _message_size_alias(prefix, args))[0]
    brokers = [_kafka_parse_broker(b) for b in known.brokers.split(",")]
    return ("", known.topic, brokers, known.log_level,
            known.max_produce_buffer_ms, known.max_message_size)


def _message_size_alias(prefix: str, args: Sequence[str]) -> list[str]:
    """``--<prefix>_max_produce_message_size`` (pony-kafka's spelling) as
    ``--<prefix>_max_message_size``. Rewritten rather than registered, so
    that abbreviations such as ``--kafka_sink_max_produce`` mean what they
    meant to Wallaroo's parser."""
    alias = "--{}_max_produce_message_size".format(prefix)
    real = "--{}_max_message_size".format(prefix)
    out = []
    for a in args:
        if a == alias:
            a = real
        elif a.startswith(alias + "="):
            a = real + a[len(alias):]
        out.append(a)
    return out


def _kafka_cli_prefix(name: str) -> str:
    """The flag prefix a ``Default*`` Kafka parser named ``name`` reads:
    lower-cased, stripped to ``[a-z0-9_]``."""
    return "".join(c for c in str(name).lower()
                   if c.isascii() and (c.isalnum() or c == "_"))


def _kafka_internal_source_options(
        name: str,
        args: Sequence[str]) -> tuple[str, list[Broker], str]:
    """``(topic, brokers, log_level)`` of a ``DefaultKafkaSourceCLIParser``
    named ``name``, from ``--<prefix>_topic``, ``--<prefix>_brokers`` and
    ``--<prefix>_log_level`` (the worker's side of that parser)."""
    _, topic, brokers, level = _parse_source_options(
        _kafka_cli_prefix(name), args)
    return (topic, brokers, level)


def _kafka_internal_sink_options(
        name: str,
        args: Sequence[str]) -> tuple[str, list[Broker], str, int, int]:
    """``(topic, brokers, log_level, max_produce_buffer_ms,
    max_message_size)`` of a ``DefaultKafkaSinkCLIParser`` named ``name``."""
    return _parse_sink_options(_kafka_cli_prefix(name), args)[1:]


KafkaRecord = tuple[bytes, Optional[bytes], Optional[int]]


def _kafka_record(encoded: Any) -> Optional[KafkaRecord]:
    """A Kafka encoder's result as ``(payload, key, partition)``.

    Accepted: ``(payload, key, partition)``, ``(payload, key)`` or a bare
    payload; payload ``bytes`` or ``str`` (UTF-8), key ``bytes``, ``str`` or
    ``None``, partition a 32-bit ``int`` or ``None`` (librdkafka picks).
    ``None`` means send nothing. Anything else is a ``TypeError`` or
    ``ValueError`` saying what was wrong.
    """
    if encoded is None:
        return None
    if isinstance(encoded, (bytes, str, bytearray)):
        return (_kafka_bytes(encoded, "payload"), None, None)
    if not isinstance(encoded, tuple) or len(encoded) not in (2, 3):
        raise TypeError(
            "a Kafka encoder must return (payload, key, partition), "
            "(payload, key) or a payload (bytes or str); got {}"
            .format(_describe(encoded)))
    payload = _kafka_bytes(encoded[0], "payload")
    key = None if encoded[1] is None else _kafka_bytes(encoded[1], "key")
    partition = encoded[2] if len(encoded) == 3 else None
    if partition is not None:
        if isinstance(partition, bool) or not isinstance(partition, int):
            raise TypeError(
                "a Kafka encoder's partition must be an int or None; got {}"
                .format(_describe(partition)))
        if not 0 <= partition < 2**31:
            raise ValueError(
                "a Kafka encoder's partition must be between 0 and "
                "2147483647; got {}".format(partition))
    return (payload, key, partition)


def _kafka_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError("a Kafka encoder's {} must be bytes or str; got {}"
                    .format(what, _describe(value)))


def _kafka_parse_broker(broker: str) -> Broker:
    """``host[:port]`` -> ``(host, port)``, port defaulting to ``"9092"``."""
    parts = broker.split(":")
    host = parts[0]
    port = parts[1] if len(parts) == 2 else "9092"
    return (host, port)
