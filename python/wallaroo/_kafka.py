"""Kafka source and sink configurations and their command-line options.

The configs are accepted when the application is built, so that Kafka
applications build; the quoll engine refuses them when a worker starts.
Brokers are normalised to ``[(host, port_str), ...]``.
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
    parser = argparse.ArgumentParser(prog="wallaroo")
    parser.add_argument("--kafka_source_name", dest="name")
    parser.add_argument("--kafka_source_topic", dest="topic", default="")
    parser.add_argument("--kafka_source_brokers", dest="brokers", default="")
    parser.add_argument("--kafka_source_log_level", dest="log_level",
                        default="Warn", choices=list(_KAFKA_LOG_LEVELS))
    known = parser.parse_known_args(args)[0]
    brokers = [_kafka_parse_broker(b) for b in known.brokers.split(",")]
    return (known.name, known.topic, brokers, known.log_level)


def kafka_parse_sink_options(
        args: Sequence[str]
) -> tuple[str, str, list[Broker], str, int, int]:
    """Return ``(name, topic, brokers, log_level, max_produce_buffer_ms,
    max_message_size)`` from the ``--kafka_sink_*`` flags; the message size
    may be spelt ``--kafka_sink_max_message_size`` or
    ``--kafka_sink_max_produce_message_size``."""
    parser = argparse.ArgumentParser(prog="wallaroo")
    parser.add_argument("--kafka_sink_topic", dest="topic", default="")
    parser.add_argument("--kafka_sink_brokers", dest="brokers", default="")
    parser.add_argument("--kafka_sink_log_level", dest="log_level",
                        default="Warn", choices=list(_KAFKA_LOG_LEVELS))
    parser.add_argument("--kafka_sink_max_produce_buffer_ms",
                        dest="max_produce_buffer_ms", type=int, default=0)
    parser.add_argument("--kafka_sink_max_message_size",
                        "--kafka_sink_max_produce_message_size",
                        dest="max_message_size", type=int, default=100000)
    known = parser.parse_known_args(args)[0]
    brokers = [_kafka_parse_broker(b) for b in known.brokers.split(",")]
    return ("", known.topic, brokers, known.log_level,
            known.max_produce_buffer_ms, known.max_message_size)


def _kafka_parse_broker(broker: str) -> Broker:
    """``host[:port]`` -> ``(host, port)``, port defaulting to ``"9092"``."""
    parts = broker.split(":")
    host = parts[0]
    port = parts[1] if len(parts) == 2 else "9092"
    return (host, port)
