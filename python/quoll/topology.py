"""Flatten a Wallaroo application tuple into the typed topology the engine runs.

`build_application` returns `(app_name, root_idx, vs, es)`: a tree of nodes
whose leaves start with a source and whose root ends with the sinks. The
engine wants something flatter: stages with one successor each, sources
that name the stage they enter at, and sinks by index. Merges become two
chains whose last stages both link to the same stage.

The result is a `Topology` of dataclasses, one per source kind, sink kind
and stage kind, which `quoll._engine.run_worker` reads by attribute name
(see `crates/quoll-py/src/app.rs`). Wallaroo's config tuples are read here
and nowhere else, and every set-up error names the pipeline, and the source
or sink by its kind and name or address, as the application wrote them.

This is also where the Python callables the engine will invoke are resolved,
once, at start-up: for objects made by wallaroo's decorators the raw user
function (`_quoll_func`) is called directly, saving a Python frame per
message; any other duck-typed object is called through its methods.
"""

from __future__ import annotations

import operator
import sys
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple, Optional, Sequence, TypeVar, Union

_T = TypeVar("_T")


class TopologyError(Exception):
    """The application tuple can't be run; the message says where and why."""


# The key of every message until the first key_by, by source kind.
IMPLICIT_KEYS = {
    "tcp": "tcp-source-key",
    "gen": "gen-source-key",
    "file": "file-source-key",
}

SUPPORTED_SOURCES = "TCP, generator, file, connector and Kafka sources"
SUPPORTED_SINKS = "TCP, file, Kafka and connector sinks"


# --------------------------------------------------------------------------
# What the engine reads. Every `kind` is the tag app.rs dispatches on.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TcpSource:
    """`wallaroo.TCPSourceConfig`: a listener whose frames are split by the
    decoder's length header (`header_length` bytes, struct `length_fmt`)."""

    kind: ClassVar[str] = "tcp"
    host: str
    port: str
    header_length: int
    length_fmt: str
    decode: Callable[[bytes], Any]
    # False: this worker opens no listener.
    valid: bool
    # Concurrent connections accepted per worker.
    parallelism: int


@dataclass(frozen=True)
class GenSource:
    """`wallaroo.GenSourceConfig`: `initial_value()`, then `apply(last)`
    until it returns None."""

    kind: ClassVar[str] = "gen"
    initial_value: Callable[[], Any]
    apply: Callable[[Any], Any]


@dataclass(frozen=True)
class FileSource:
    """`wallaroo.FileSourceConfig`: a file of framed records."""

    kind: ClassVar[str] = "file"
    path: str
    header_length: int
    length_fmt: str
    decode: Callable[[bytes], Any]


@dataclass(frozen=True)
class ConnectorSource:
    """`wallaroo.experimental.SourceConnectorConfig`: a connector protocol
    listener; the worker frames the protocol itself and calls only
    `decode`."""

    kind: ClassVar[str] = "source_connector"
    host: str
    port: str
    decode: Callable[[bytes], Any]
    cookie: str
    max_credits: int
    refill_credits: int


Broker = tuple[str, str]


@dataclass(frozen=True)
class KafkaSource:
    """A Kafka source (`KafkaSourceConfig`, `CustomKafkaSourceCLIParser`,
    or `DefaultKafkaSourceCLIParser` with its `--<name>_*` flags read from
    the worker's arguments): `decode` gets each record's value, unframed.
    Each worker reads its share of the topic's partitions (docs/kafka.md)."""

    kind: ClassVar[str] = "kafka"
    name: str
    topic: str
    # (host, port) pairs, ports as strings; at least one, none empty.
    brokers: list[Broker]
    # Fine, Info, Warn or Error.
    log_level: str
    decode: Callable[[bytes], Any]


SourceSpec = Union[TcpSource, GenSource, FileSource, ConnectorSource, KafkaSource]


@dataclass
class Source:
    """One source of the application."""

    # The config's own name (e.g. `TCPSourceConfig(name, ...)`).
    name: str
    # The pipeline name given to `wallaroo.source(name, config)`.
    pipeline: str
    # How errors name this source.
    place: str
    spec: SourceSpec
    # The stage the source's messages enter at (set while flattening).
    entry: int = -1

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def implicit_key(self) -> str:
        return IMPLICIT_KEYS.get(self.kind, f"{self.kind}-source-key")


@dataclass(frozen=True)
class TcpSink:
    """`wallaroo.TCPSinkConfig`: each worker connects to `host:port`."""

    kind: ClassVar[str] = "tcp"
    host: str
    port: str
    encode: Callable[[Any], Any]


@dataclass(frozen=True)
class FileSink:
    """`wallaroo.FileSinkConfig`: output appended to a file."""

    kind: ClassVar[str] = "file"
    path: str
    encode: Callable[[Any], Any]


@dataclass(frozen=True)
class KafkaSink:
    """A Kafka sink (`KafkaSinkConfig`, `CustomKafkaSinkCLIParser`, or
    `DefaultKafkaSinkCLIParser` with its `--<name>_*` flags read from the
    worker's arguments). `encode(data)` returns `(payload, key, partition)`
    (bytes, bytes or None, int or None) or None for no output: the user's
    encoder may return that 3-tuple, `(payload, key)` or a bare payload, with
    str for bytes; a wrong result raises TypeError/ValueError from `encode`,
    which the worker handles like any user error."""

    kind: ClassVar[str] = "kafka"
    # The config's name, or `kafka_sink_<index>` when it has none (Wallaroo
    # sinks are unnamed): unique in the app and stable across restarts, so
    # it can name the sink's transactional id and files.
    name: str
    topic: str
    brokers: list[Broker]
    log_level: str
    max_produce_buffer_ms: int
    max_message_size: int
    encode: Callable[[Any], Optional[tuple[bytes, Optional[bytes], Optional[int]]]]


@dataclass(frozen=True)
class ConnectorSink:
    """`wallaroo.experimental.SinkConnectorConfig`: each worker connects to
    the sink connector process at `host:port` and speaks connector protocol
    v3 to it, with two-phase commit under resilience (docs/connectors.md).
    `name` is unique in the app and names the sink's stream."""

    kind: ClassVar[str] = "sink_connector"
    name: str
    host: str
    port: str
    encode: Callable[[Any], Any]
    cookie: str


SinkSpec = Union[TcpSink, FileSink, KafkaSink, ConnectorSink]


@dataclass(frozen=True)
class Sink:
    """One sink of the application; sink stages refer to it by index."""

    place: str
    spec: SinkSpec


@dataclass(frozen=True)
class StatelessStage:
    """A `@computation` (`multi`: `@computation_multi`)."""

    kind: ClassVar[str] = "stateless"
    call: Callable[[Any], Any]
    multi: bool


@dataclass(frozen=True)
class KeyByStage:
    """`key_by(extractor)`; `call` returns the raw key (int keys are mapped
    to `chr(n)` by the engine)."""

    kind: ClassVar[str] = "key_by"
    call: Callable[[Any], Any]


@dataclass(frozen=True)
class CollectStage:
    """`collect()`: every message gets the same `key`."""

    kind: ClassVar[str] = "collect"
    key: str


@dataclass(frozen=True)
class StateStage:
    """A `@state_computation` (`multi`: `@state_computation_multi`)."""

    kind: ClassVar[str] = "state"
    call: Callable[[Any, Any], Any]
    initial_state: Any
    multi: bool


@dataclass(frozen=True)
class AggregationCalls:
    """The bound methods of a window's `Aggregation` instance."""

    initial_accumulator: Callable[[], Any]
    update: Callable[[Any, Any], Any]
    combine: Callable[[Any, Any], Any]
    output: Callable[[Any, Any], Any]


@dataclass(frozen=True)
class RangeWindowsStage:
    """`range_windows(range)...over(Aggregation)`, durations in ns."""

    kind: ClassVar[str] = "range_windows"
    aggregation: AggregationCalls
    range: int
    slide: int
    delay: int
    late_data_policy: str


@dataclass(frozen=True)
class CountWindowsStage:
    """`count_windows(count).over(Aggregation)`."""

    kind: ClassVar[str] = "count_windows"
    aggregation: AggregationCalls
    count: int


@dataclass(frozen=True)
class SinksStage:
    """`to_sink`/`to_sinks`: indices into `Topology.sinks`."""

    kind: ClassVar[str] = "sinks"
    sinks: list[int]


StageSpec = Union[StatelessStage, KeyByStage, CollectStage, StateStage,
                  RangeWindowsStage, CountWindowsStage, SinksStage]


@dataclass
class Stage:
    """One stage; `next` is the stage its output goes to (None: the last)."""

    name: str
    place: str
    spec: StageSpec
    next: Optional[int] = None


class Topology(NamedTuple):
    """The flattened application, as `quoll._engine.run_worker` takes it.

    A named tuple because `run_worker` takes a tuple; the engine reads its
    fields (and those of everything in it) by name.
    """

    app_name: str
    sources: list[Source]
    stages: list[Stage]
    sinks: list[Sink]


# --------------------------------------------------------------------------
# Naming things as the application named them
# --------------------------------------------------------------------------


def _quoted(names: Sequence[str]) -> str:
    quoted = [f"'{n}'" for n in names]
    if len(quoted) < 2:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _pipeline_label(pipelines: Sequence[str]) -> str:
    """`pipeline 'P'`, or for a stage after a merge `pipelines 'A' and 'B'`."""
    if len(pipelines) == 1:
        return f"pipeline {_quoted(pipelines)}"
    if not pipelines:
        return "the pipeline"
    return f"pipelines {_quoted(pipelines)}"


def _short_repr(obj: object) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<unrepresentable {type(obj).__name__}>"
    return text if len(text) <= 120 else text[:117] + "..."


def _field(cfg: Sequence[Any], index: int) -> str:
    return str(cfg[index]) if len(cfg) > index else "?"


def _brokers(value: Any) -> str:
    try:
        return ",".join(f"{host}:{port}" for host, port in value)
    except (TypeError, ValueError):
        return str(value)


def describe_config(cfg: Any, role: str) -> str:
    """A source or sink ("role") config tuple as the application wrote it,
    e.g. `connector sink 'out' at 127.0.0.1:7200`."""
    if not isinstance(cfg, (tuple, list)) or not cfg or not isinstance(cfg[0], str):
        return f"{role} config {_short_repr(cfg)}"
    kind = cfg[0]
    name = str(cfg[1]) if len(cfg) > 1 else ""
    named = f" '{name}'" if name else ""
    if kind == "tcp":
        return f"tcp {role}{named} at {_field(cfg, 2)}:{_field(cfg, 3)}"
    if kind == "file":
        verb = "reading" if role == "source" else "writing"
        return f"file {role}{named} {verb} {_field(cfg, 2)}"
    if kind == "gen":
        return f"generator {role}{named}"
    if kind == "source_connector":
        return f"connector source{named} at {_field(cfg, 2)}:{_field(cfg, 3)}"
    if kind == "sink_connector":
        return f"connector sink{named} at {_field(cfg, 2)}:{_field(cfg, 3)}"
    if kind == "kafka":
        topic = _field(cfg, 2)
        brokers = _brokers(cfg[3]) if len(cfg) > 3 else "?"
        return f"kafka {role}{named} on topic '{topic}' at {brokers}"
    if kind == "kafka-internal":
        return f"kafka {role}{named} configured from the command line"
    return f"'{kind}' {role}{named}"


def _unsupported(kind: Any, role: str, supported: str) -> str:
    if kind == f"{role}_connector":
        what = f"connector {role}s are"
    else:
        what = f"the {role} kind {kind!r} is"
    return f"{what} not supported yet by quoll (supported: {supported})"


# --------------------------------------------------------------------------
# Resolving the callables
# --------------------------------------------------------------------------


def _name_of(obj: Any, default: str = "undefined-name") -> str:
    name = getattr(obj, "name", None)
    if callable(name):
        try:
            value = name()
        except Exception as e:  # a broken name() is a set-up error, said clearly
            raise TopologyError(f"calling name() on {obj!r} failed: {e!r}") from e
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return str(value)
    return default


def direct(obj: Any, method: str) -> Callable[..., Any]:
    """The raw user function of a decorator-made object, else the bound method.

    Only the generated classes themselves (module `wallaroo`) qualify; a user
    subclass may have changed the method, so it is called as a method.
    Raises AttributeError when `obj` has no such method.
    """
    cls = type(obj)
    func = getattr(cls, "_quoll_func", None)
    if func is not None and cls.__module__ == "wallaroo":
        return func
    bound = getattr(obj, method, None)
    if not callable(bound):
        raise AttributeError(f"{_short_repr(obj)} has no {method}() method")
    return bound


def _multi(obj: Any) -> bool:
    return hasattr(obj, "compute_multi")


def _bind_aggregation(agg: Any) -> AggregationCalls:
    for m in ("initial_accumulator", "update", "combine", "output"):
        if not callable(getattr(agg, m, None)):
            raise TopologyError(f"aggregation {agg!r} has no {m}() method")
    return AggregationCalls(agg.initial_accumulator, agg.update, agg.combine, agg.output)


# --------------------------------------------------------------------------
# Sources and sinks from Wallaroo's config tuples
# --------------------------------------------------------------------------


def _decoder_framing(decoder: Any) -> tuple[int, str, Callable[[bytes], Any]]:
    """`(header_length, length_fmt, decode)` of a Wallaroo decoder: quoll
    splits frames natively, so it needs the struct format the
    `wallaroo.decoder` decorator recorded."""
    try:
        header_length = decoder.header_length()
    except Exception as e:
        raise TopologyError(f"decoder.header_length() failed: {type(e).__name__}: {e}") from e
    if isinstance(header_length, bool) or not isinstance(header_length, int):
        raise TopologyError(f"decoder.header_length() returned {_short_repr(header_length)}, not an int")
    fmt = getattr(decoder, "_quoll_length_fmt", None)
    if fmt is None:
        raise TopologyError(
            "the decoder was not made with @wallaroo.decoder(header_length, length_fmt); "
            "quoll splits TCP frames natively and needs the struct format of the length header"
        )
    if not isinstance(fmt, str):
        raise TopologyError(f"decoder length format: expected a str, got {_short_repr(fmt)}")
    return header_length, fmt, _resolve(decoder, "decode", "decoder")


def _resolve(obj: Any, method: str, what: str) -> Callable[..., Any]:
    try:
        return direct(obj, method)
    except AttributeError as e:
        raise TopologyError(f"{what}: {e}") from e


def _parallelism(value: Any) -> int:
    """A TCP source's connections per worker: a non-negative int, else the
    default 10; at least 1."""
    try:
        n = operator.index(value)
    except TypeError:
        return 10
    return max(n, 1) if 0 <= n < 2**64 else 10


def _credits(value: Any, what: str) -> int:
    try:
        n = operator.index(value)
    except TypeError:
        raise TopologyError(f"{what} must be an int, got {_short_repr(value)}") from None
    if not 0 <= n <= 0xFFFF_FFFF:
        raise TopologyError(f"{what} must be between 0 and 4294967295, got {n}")
    return n


def _item(cfg: Sequence[Any], index: int, what: str) -> Any:
    if len(cfg) <= index:
        raise TopologyError(f"the config tuple has no {what} (item {index})")
    return cfg[index]


def _source_spec(cfg: Sequence[Any], args: Sequence[str]) -> SourceSpec:
    kind = cfg[0]
    if kind == "tcp":
        header_length, fmt, decode = _decoder_framing(_item(cfg, 4, "decoder"))
        return TcpSource(
            host=str(_item(cfg, 2, "host")),
            port=str(_item(cfg, 3, "port")),
            header_length=header_length,
            length_fmt=fmt,
            decode=decode,
            valid=bool(cfg[5]) if len(cfg) > 5 else True,
            parallelism=_parallelism(cfg[6]) if len(cfg) > 6 else 10,
        )
    if kind == "gen":
        gen = _item(cfg, 2, "generator")
        try:
            initial_value, apply = gen.initial_value, gen.apply
        except AttributeError as e:
            raise TopologyError(f"generator: {e}") from e
        return GenSource(initial_value=initial_value, apply=apply)
    if kind == "file":
        header_length, fmt, decode = _decoder_framing(_item(cfg, 3, "decoder"))
        return FileSource(path=str(_item(cfg, 2, "path")), header_length=header_length,
                          length_fmt=fmt, decode=decode)
    if kind == "source_connector":
        # ("source_connector", name, host, port, encoder, decoder, cookie,
        #  max_credits, refill_credits); the encoder is the external client's.
        return ConnectorSource(
            host=str(_item(cfg, 2, "host")),
            port=str(_item(cfg, 3, "port")),
            decode=_resolve(_item(cfg, 5, "decoder"), "decode", "decoder"),
            cookie=str(_item(cfg, 6, "cookie")),
            max_credits=_credits(_item(cfg, 7, "max_credits"), "max_credits"),
            refill_credits=_credits(_item(cfg, 8, "refill_credits"), "refill_credits"),
        )
    if kind in ("kafka", "kafka-internal"):
        return kafka_source_spec(cfg, args)
    raise TopologyError(_unsupported(kind, "source", SUPPORTED_SOURCES))


def _sink_spec(cfg: Sequence[Any], index: int, args: Sequence[str]) -> SinkSpec:
    kind = cfg[0]
    if kind == "tcp":
        return TcpSink(
            host=str(_item(cfg, 2, "host")),
            port=str(_item(cfg, 3, "port")),
            encode=_resolve(_item(cfg, 4, "encoder"), "encode", "encoder"),
        )
    if kind == "file":
        return FileSink(
            path=str(_item(cfg, 2, "path")),
            encode=_resolve(_item(cfg, 3, "encoder"), "encode", "encoder"),
        )
    if kind in ("kafka", "kafka-internal"):
        return kafka_sink_spec(cfg, index, args)
    if kind == "sink_connector":
        # ("sink_connector", name, host, port, encoder, decoder, cookie); the
        # decoder is the external sink process's.
        return ConnectorSink(
            name=str(_item(cfg, 1, "name")) or f"sink_connector_{index}",
            host=str(_item(cfg, 2, "host")),
            port=str(_item(cfg, 3, "port")),
            encode=_resolve(_item(cfg, 4, "encoder"), "encode", "encoder"),
            cookie=str(_item(cfg, 6, "cookie")),
        )
    raise TopologyError(_unsupported(kind, "sink", SUPPORTED_SINKS))


# --------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------


def _kafka_brokers(brokers: Any, flag: str) -> list[Broker]:
    try:
        pairs = [(str(h), str(p)) for h, p in brokers]
    except (TypeError, ValueError):
        raise TopologyError(f"brokers must be (host, port) pairs, got {_short_repr(brokers)}") from None
    if not pairs or any(not h for h, _ in pairs):
        raise TopologyError(f"no broker address given (host[:port],...; {flag})")
    for h, p in pairs:
        if not p.isdigit() or not 0 < int(p) < 65536:
            raise TopologyError(f"broker '{h}:{p}': the port is not 1-65535 ({flag})")
    return pairs


def _kafka_topic(topic: Any, flag: str) -> str:
    if not isinstance(topic, str) or not topic:
        raise TopologyError(f"no topic given ({flag})")
    return topic


def _kafka_level(level: Any) -> str:
    from wallaroo._kafka import _KAFKA_LOG_LEVELS

    if level not in _KAFKA_LOG_LEVELS:
        raise TopologyError(f"log level {_short_repr(level)} is not one of {', '.join(_KAFKA_LOG_LEVELS)}")
    return str(level)


def _kafka_int(value: Any, what: str, lowest: int) -> int:
    try:
        n = operator.index(value)
    except TypeError:
        raise TopologyError(f"{what} must be an int, got {_short_repr(value)}") from None
    if not lowest <= n < 2**31:
        raise TopologyError(f"{what} must be between {lowest} and 2147483647, got {n}")
    return n


def kafka_source_spec(cfg: Sequence[Any], args: Sequence[str]) -> KafkaSource:
    """The `KafkaSource` of a `"kafka"` or `"kafka-internal"` source tuple;
    `args` are the worker's arguments (`wallaroo._ARGS`), where a
    `DefaultKafkaSourceCLIParser`'s flags are."""
    from wallaroo._kafka import _kafka_cli_prefix, _kafka_internal_source_options

    name = str(_item(cfg, 1, "name"))
    if cfg[0] == "kafka-internal":
        flag = f"--{_kafka_cli_prefix(name)}_topic/_brokers"
        topic, brokers, level = _kafka_internal_source_options(name, args)
        decoder = _item(cfg, 2, "decoder")
    else:
        # ("kafka", name, topic, brokers, log_level, decoder)
        flag = "the config's topic and brokers"
        topic, brokers, level = _item(cfg, 2, "topic"), _item(cfg, 3, "brokers"), _item(cfg, 4, "log_level")
        decoder = _item(cfg, 5, "decoder")
    return KafkaSource(
        name=name,
        topic=_kafka_topic(topic, flag),
        brokers=_kafka_brokers(brokers, flag),
        log_level=_kafka_level(level),
        decode=_resolve(decoder, "decode", "decoder"),
    )


def kafka_sink_spec(cfg: Sequence[Any], index: int, args: Sequence[str]) -> KafkaSink:
    """The `KafkaSink` of sink `index`'s `"kafka"` or `"kafka-internal"`
    tuple (see `kafka_source_spec`)."""
    from wallaroo._kafka import _kafka_cli_prefix, _kafka_internal_sink_options

    name = str(_item(cfg, 1, "name"))
    if cfg[0] == "kafka-internal":
        flag = f"--{_kafka_cli_prefix(name)}_topic/_brokers"
        topic, brokers, level, buffer_ms, max_size = _kafka_internal_sink_options(name, args)
        encoder = _item(cfg, 2, "encoder")
    else:
        # ("kafka", "", topic, brokers, log_level, max_produce_buffer_ms,
        #  max_message_size, encoder)
        flag = "the config's topic and brokers"
        topic, brokers, level = _item(cfg, 2, "topic"), _item(cfg, 3, "brokers"), _item(cfg, 4, "log_level")
        buffer_ms, max_size = _item(cfg, 5, "max_produce_buffer_ms"), _item(cfg, 6, "max_message_size")
        encoder = _item(cfg, 7, "encoder")
    return KafkaSink(
        name=name or f"kafka_sink_{index}",
        topic=_kafka_topic(topic, flag),
        brokers=_kafka_brokers(brokers, flag),
        log_level=_kafka_level(level),
        max_produce_buffer_ms=_kafka_int(buffer_ms, "max_produce_buffer_ms", 0),
        max_message_size=_kafka_int(max_size, "max_message_size", 1),
        encode=_kafka_encode(_resolve(encoder, "encode", "encoder")),
    )


def _kafka_encode(encode: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`encode` followed by the reading of its result as a Kafka record."""
    from wallaroo._kafka import _kafka_record

    def kafka_encode(data: Any) -> Any:
        return _kafka_record(encode(data))

    return kafka_encode


def _well_formed(cfg: Any) -> bool:
    return isinstance(cfg, (tuple, list)) and bool(cfg) and isinstance(cfg[0], str)


def _in_place(place: str, build: Callable[[], _T]) -> _T:
    """Runs `build`, prefixing a set-up error with where it happened."""
    try:
        return build()
    except TopologyError as e:
        raise TopologyError(f"{place}: {e}") from e


# --------------------------------------------------------------------------
# Flattening
# --------------------------------------------------------------------------


def flatten(app: Any, args: Optional[Sequence[str]] = None) -> Topology:
    """The `Topology` of the tuple `wallaroo.build_application` returned.

    `args` are the worker's arguments, where `Default*` Kafka parsers'
    flags are; by default `wallaroo._ARGS` (which the worker sets before
    `application_setup`)."""
    if args is None:
        wallaroo = sys.modules.get("wallaroo")
        args = tuple(getattr(wallaroo, "_ARGS", ()))
    try:
        app_name, root, vs, es = app
    except (TypeError, ValueError) as e:
        raise TopologyError(
            "application_setup must return wallaroo.build_application(name, pipeline); "
            f"got {type(app).__name__}"
        ) from e
    topo = Topology(app_name=str(app_name), sources=[], stages=[], sinks=[])

    def pipelines_under(i: int) -> list[str]:
        names = [str(t[1]) for t in vs[i] if t and t[0] == "source"]
        for child in es[i]:
            names += pipelines_under(child)
        return names

    def add_stage(stage: Stage, dangling: list[tuple[str, int]]) -> list[tuple[str, int]]:
        sid = len(topo.stages)
        topo.stages.append(stage)
        for kind, idx in dangling:
            if kind == "source":
                topo.sources[idx].entry = sid
            else:
                topo.stages[idx].next = sid
        return [("stage", sid)]

    def add_sinks(configs: Sequence[Any], pipeline: str) -> list[int]:
        ids = []
        for cfg in configs:
            index = len(topo.sinks)
            place = f"sink {index} of {pipeline} ({describe_config(cfg, 'sink')})"
            if not _well_formed(cfg):
                raise TopologyError(f"{place}: a sink config's to_tuple() must start with its kind")
            topo.sinks.append(Sink(place=place, spec=_in_place(place, lambda: _sink_spec(cfg, index, args))))
            ids.append(index)
        return ids

    def stage_for(t: Sequence[Any], index: int, pipeline: str) -> Stage:
        op = t[0]

        def place(name: str) -> str:
            return f"stage {index} ('{name}') of {pipeline}"

        def name_of(obj: Any, default: str = "undefined-name") -> str:
            return _in_place(f"stage {index} of {pipeline}", lambda: _name_of(obj, default))

        if op == "to":
            c = t[1]
            name = name_of(c)
            if _multi(c):
                call = _in_place(place(name), lambda: _resolve(c, "compute_multi", "computation"))
                return Stage(name, place(name), StatelessStage(call=call, multi=True))
            if not hasattr(c, "compute"):
                raise TopologyError(
                    f"{place(name)}: to() got {c!r}, which has neither compute() nor compute_multi()")
            call = _in_place(place(name), lambda: _resolve(c, "compute", "computation"))
            return Stage(name, place(name), StatelessStage(call=call, multi=False))
        if op == "to_state":
            c = t[1]
            name = name_of(c)
            method = "compute_multi" if _multi(c) else "compute"
            call = _in_place(place(name), lambda: _resolve(c, method, "state computation"))
            return Stage(name, place(name),
                         StateStage(call=call, initial_state=c.initial_state, multi=_multi(c)))
        if op == "key_by":
            ke = t[1]
            name = getattr(getattr(ke, "_quoll_func", None), "__name__", "key_by")
            call = _in_place(place(name), lambda: _resolve(ke, "extract_key", "key extractor"))
            return Stage(name, place(name), KeyByStage(call=call))
        if op == "collect":
            return Stage("collect", place("collect"), CollectStage(key=f"collect-key-{index}"))
        if op == "to_range_windows":
            _, rng, slide, delay, agg, policy = t[:6]
            name = name_of(agg, type(agg).__name__)
            aggregation = _in_place(place(name), lambda: _bind_aggregation(agg))
            return Stage(name, place(name), RangeWindowsStage(
                aggregation=aggregation, range=int(rng), slide=int(slide), delay=int(delay),
                late_data_policy=str(policy)))
        if op == "to_count_windows":
            _, count, agg = t[:3]
            name = name_of(agg, type(agg).__name__)
            aggregation = _in_place(place(name), lambda: _bind_aggregation(agg))
            return Stage(name, place(name), CountWindowsStage(aggregation=aggregation, count=int(count)))
        if op == "to_sink":
            return Stage("sink", place("sink"), SinksStage(sinks=add_sinks([t[1]], pipeline)))
        if op == "to_sinks":
            return Stage("sinks", place("sinks"), SinksStage(sinks=add_sinks(t[1], pipeline)))
        raise TopologyError(f"{place(str(op))}: unknown stage {op!r} in the application tuple")

    def build(i: int) -> list[tuple[str, int]]:
        stages = list(vs[i])
        dangling: list[tuple[str, int]] = []
        if stages and stages[0][0] == "source":
            _, pipeline_name, cfg = stages[0]
            pipeline = str(pipeline_name)
            place = f"source of {_pipeline_label([pipeline])} ({describe_config(cfg, 'source')})"
            if not _well_formed(cfg):
                raise TopologyError(f"{place}: a source config's to_tuple() must start with its kind")
            spec = _in_place(place, lambda: _source_spec(cfg, args))
            topo.sources.append(Source(name=_field(cfg, 1), pipeline=pipeline, place=place, spec=spec))
            dangling = [("source", len(topo.sources) - 1)]
            stages = stages[1:]
        for child in es[i]:
            dangling += build(child)
        pipeline = _pipeline_label(pipelines_under(i))
        for t in stages:
            dangling = add_stage(stage_for(t, len(topo.stages), pipeline), dangling)
        return dangling

    build(root)
    if not topo.sinks:
        raise TopologyError("An application must end with to_sink/s.")
    return topo
