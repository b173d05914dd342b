"""The Wallaroo Kafka API: every config form, every ``--kafka_*`` flag with
its default and Wallaroo's parsing quirks, encoder results, and the typed
`KafkaSource`/`KafkaSink` that `quoll.topology` builds from them."""

import pytest

import wallaroo
from quoll import topology
from quoll.topology import KafkaSink, KafkaSource, TopologyError
from wallaroo._kafka import (
    _kafka_cli_prefix,
    _kafka_internal_sink_options,
    _kafka_internal_source_options,
    _kafka_record,
)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs.decode()


@wallaroo.encoder
def encode(data):
    return (data, "key", 1)


class DuckDecoder(object):
    def decode(self, bs):
        return bs


# --------------------------------------------------------------------------
# The documented configs
# --------------------------------------------------------------------------

@pytest.mark.parametrize("brokers, expect", [
    ([("h", "9092")], [("h", "9092")]),
    ([("h", 9093), ("g", "1")], [("h", "9093"), ("g", "1")]),
    ("a:1,b", [("a", "1"), ("b", "9092")]),
    (["a:1", ("b", 2), "c"], [("a", "1"), ("b", "2"), ("c", "9092")]),
])
def test_kafka_source_config_broker_forms(brokers, expect):
    src = wallaroo.KafkaSourceConfig("orders", "topic", brokers, "Info", decode)
    assert src.to_tuple() == ("kafka", "orders", "topic", expect, "Info", decode)


def test_kafka_sink_config_and_its_tuple():
    sink = wallaroo.KafkaSinkConfig("out", "h:1,g", "Fine", 10, 2000, encode)
    assert sink.to_tuple() == ("kafka", "", "out", [("h", "1"), ("g", "9092")],
                               "Fine", 10, 2000, encode)


@pytest.mark.parametrize("level", ["Fine", "Info", "Warn", "Error"])
def test_every_log_level_is_accepted(level):
    assert wallaroo.KafkaSourceConfig("n", "t", "h", level, decode).to_tuple()[4] == level
    assert wallaroo.KafkaSinkConfig("t", "h", level, 0, 1, encode).to_tuple()[4] == level


def test_config_errors_name_the_config(capsys):
    with pytest.raises(wallaroo.WallarooParameterError, match="KafkaSourceConfig log_level"):
        wallaroo.KafkaSourceConfig("n", "t", "h", "warn", decode)
    with pytest.raises(wallaroo.WallarooParameterError, match=r"KafkaSinkConfig needs .*encode\(\)"):
        wallaroo.KafkaSinkConfig("t", "h", "Warn", 0, 1, object())
    with pytest.raises(wallaroo.WallarooParameterError, match="KafkaSourceConfig brokers"):
        wallaroo.KafkaSourceConfig("n", "t", 5, "Warn", decode)
    with pytest.raises(wallaroo.WallarooParameterError, match="broker entries"):
        wallaroo.KafkaSourceConfig("n", "t", [("h", "1", "x")], "Warn", decode)
    assert "API_Error" in capsys.readouterr().out


# --------------------------------------------------------------------------
# kafka_parse_source_options / CustomKafkaSourceCLIParser
# --------------------------------------------------------------------------

def test_source_options_defaults():
    assert wallaroo.kafka_parse_source_options([]) == (None, "", [("", "9092")], "Warn")


def test_source_options_every_flag_both_forms():
    spaced = ["prog", "--kafka_source_name", "n", "--kafka_source_topic", "t",
              "--kafka_source_brokers", "h1:1,h2", "--kafka_source_log_level", "Error"]
    joined = ["prog", "--kafka_source_name=n", "--kafka_source_topic=t",
              "--kafka_source_brokers=h1:1,h2", "--kafka_source_log_level=Error"]
    expect = ("n", "t", [("h1", "1"), ("h2", "9092")], "Error")
    assert wallaroo.kafka_parse_source_options(spaced) == expect
    assert wallaroo.kafka_parse_source_options(joined) == expect


def test_source_options_quirks():
    parse = wallaroo.kafka_parse_source_options
    # Anything but exactly one ':' gives the default port (Wallaroo splits
    # on ':' and takes a port only from two parts).
    assert parse(["--kafka_source_brokers", "h:1:2"])[2] == [("h", "9092")]
    assert parse(["--kafka_source_brokers", "[::1]:9092"])[2] == [("[", "9092")]
    assert parse(["--kafka_source_brokers", "h:"])[2] == [("h", "")]
    assert parse(["--kafka_source_brokers", ",h"])[2] == [("", "9092"), ("h", "9092")]
    # argparse takes unambiguous prefixes and ignores unknown flags.
    assert parse(["--kafka_source_top", "t", "--other", "x", "-q"])[1] == "t"
    with pytest.raises(SystemExit):
        parse(["--kafka_source_log_level", "Loud"])


def test_custom_source_parser():
    args = ["prog", "--kafka_source_topic", "in", "--kafka_source_brokers", "b:1"]
    # Without --kafka_source_name the source is named kafka_source.
    assert wallaroo.CustomKafkaSourceCLIParser(args, decode).to_tuple() == \
        ("kafka", "kafka_source", "in", [("b", "1")], "Warn", decode)
    named = wallaroo.CustomKafkaSourceCLIParser(args + ["--kafka_source_name=ks"], decode)
    assert named.to_tuple()[1] == "ks"


# --------------------------------------------------------------------------
# kafka_parse_sink_options / CustomKafkaSinkCLIParser
# --------------------------------------------------------------------------

def test_sink_options_defaults():
    assert wallaroo.kafka_parse_sink_options([]) == ("", "", [("", "9092")], "Warn", 0, 100000)


def test_sink_options_every_flag():
    args = ["--kafka_sink_topic", "o", "--kafka_sink_brokers", "s:2",
            "--kafka_sink_log_level", "Info", "--kafka_sink_max_produce_buffer_ms", "7",
            "--kafka_sink_max_message_size", "300"]
    assert wallaroo.kafka_parse_sink_options(args) == ("", "o", [("s", "2")], "Info", 7, 300)


@pytest.mark.parametrize("args", [
    ["--kafka_sink_max_message_size", "55"],
    ["--kafka_sink_max_message_size=55"],
    ["--kafka_sink_max_produce_message_size", "55"],
    ["--kafka_sink_max_produce_message_size=55"],
])
def test_both_spellings_of_the_message_size(args):
    assert wallaroo.kafka_parse_sink_options(args)[5] == 55


def test_sink_options_quirks():
    parse = wallaroo.kafka_parse_sink_options
    # Sinks have no name option: always "".
    assert parse(["--kafka_sink_name", "x"])[0] == ""
    # Wallaroo's parser read this prefix as --kafka_sink_max_produce_buffer_ms;
    # the extra spelling of the size option must not make it ambiguous.
    assert parse(["--kafka_sink_max_produce", "5"])[4] == 5
    with pytest.raises(SystemExit):
        parse(["--kafka_sink_max_message_size", "big"])


def test_custom_sink_parser():
    args = ["--kafka_sink_topic", "o", "--kafka_sink_brokers", "s:2,t",
            "--kafka_sink_max_produce_message_size", "9"]
    assert wallaroo.CustomKafkaSinkCLIParser(args, encode).to_tuple() == \
        ("kafka", "", "o", [("s", "2"), ("t", "9092")], "Warn", 0, 9, encode)


# --------------------------------------------------------------------------
# Default*CLIParser: the worker reads --<name>_* flags
# --------------------------------------------------------------------------

def test_default_parsers_tuples():
    assert wallaroo.DefaultKafkaSourceCLIParser(decode).to_tuple() == \
        ("kafka-internal", "kafka_source", decode)
    assert wallaroo.DefaultKafkaSinkCLIParser(encode, name="Out").to_tuple() == \
        ("kafka-internal", "Out", encode)


def test_default_parser_prefix():
    assert _kafka_cli_prefix("kafka_source") == "kafka_source"
    assert _kafka_cli_prefix("My-Source 2!") == "mysource2"
    assert _kafka_cli_prefix("Ünï_x") == "n_x"


def test_default_parser_options():
    args = ["prog", "--mysource_topic", "in", "--mysource_brokers=b:1",
            "--mysource_log_level", "Fine", "--mysink_topic", "out",
            "--mysink_brokers", "c", "--mysink_max_produce_buffer_ms", "3",
            "--mysink_max_produce_message_size=77", "--kafka_source_topic", "other"]
    assert _kafka_internal_source_options("My-Source", args) == ("in", [("b", "1")], "Fine")
    assert _kafka_internal_sink_options("MySink", args) == ("out", [("c", "9092")], "Warn", 3, 77)
    assert _kafka_internal_source_options("kafka_source", args) == \
        ("other", [("", "9092")], "Warn")


# --------------------------------------------------------------------------
# Encoder results
# --------------------------------------------------------------------------

@pytest.mark.parametrize("result, expect", [
    ((b"p", b"k", 3), (b"p", b"k", 3)),
    (("p", "k", None), (b"p", b"k", None)),
    ((b"p", None, 0), (b"p", None, 0)),
    ((b"p", "k"), (b"p", b"k", None)),
    (("p\u00e9", None), (b"p\xc3\xa9", None, None)),
    (b"bare", (b"bare", None, None)),
    ("bare", (b"bare", None, None)),
    (bytearray(b"ba"), (b"ba", None, None)),
    (None, None),
])
def test_encoder_results(result, expect):
    assert _kafka_record(result) == expect


@pytest.mark.parametrize("result, error, match", [
    ([b"p", b"k"], TypeError, "must return"),
    ((b"p",), TypeError, "must return"),
    ((b"p", b"k", 1, 2), TypeError, "must return"),
    ((1, b"k"), TypeError, "payload must be bytes or str"),
    ((b"p", 5), TypeError, "key must be bytes or str"),
    ((b"p", b"k", "1"), TypeError, "partition must be an int"),
    ((b"p", b"k", True), TypeError, "partition must be an int"),
    ((b"p", b"k", -1), ValueError, "between 0 and 2147483647"),
    ((b"p", b"k", 2**31), ValueError, "between 0 and 2147483647"),
    (42, TypeError, "must return"),
])
def test_bad_encoder_results(result, error, match):
    with pytest.raises(error, match=match):
        _kafka_record(result)


# --------------------------------------------------------------------------
# The typed topology
# --------------------------------------------------------------------------

def test_source_specs_of_every_form():
    cfg = wallaroo.KafkaSourceConfig("orders", "t", "h:1", "Info", decode).to_tuple()
    spec = topology.kafka_source_spec(cfg, [])
    assert spec == KafkaSource(name="orders", topic="t", brokers=[("h", "1")],
                               log_level="Info", decode=spec.decode)
    assert spec.decode(b"x") == "x"
    cli = wallaroo.CustomKafkaSourceCLIParser(
        ["--kafka_source_topic", "t2", "--kafka_source_brokers", "h"], DuckDecoder()).to_tuple()
    spec = topology.kafka_source_spec(cli, [])
    assert (spec.name, spec.topic, spec.brokers) == ("kafka_source", "t2", [("h", "9092")])
    assert spec.decode(b"y") == b"y"
    default = wallaroo.DefaultKafkaSourceCLIParser(decode, name="src").to_tuple()
    spec = topology.kafka_source_spec(default, ["--src_topic", "t3", "--src_brokers", "b:5"])
    assert (spec.name, spec.topic, spec.brokers, spec.log_level) == ("src", "t3", [("b", "5")], "Warn")


def test_sink_specs_of_every_form():
    cfg = wallaroo.KafkaSinkConfig("out", [("h", 1)], "Error", 4, 500, encode).to_tuple()
    spec = topology.kafka_sink_spec(cfg, 2, [])
    assert isinstance(spec, KafkaSink)
    assert (spec.name, spec.topic, spec.brokers, spec.log_level, spec.max_produce_buffer_ms,
            spec.max_message_size) == ("kafka_sink_2", "out", [("h", "1")], "Error", 4, 500)
    assert spec.encode("v") == (b"v", b"key", 1)
    default = wallaroo.DefaultKafkaSinkCLIParser(wallaroo.encoder(lambda d: d)).to_tuple()
    spec = topology.kafka_sink_spec(default, 0, [
        "--kafka_sink_topic", "o", "--kafka_sink_brokers", "b", "--kafka_sink_max_message_size=9"])
    assert (spec.name, spec.topic, spec.max_message_size) == ("kafka_sink", "o", 9)
    assert spec.encode("bare") == (b"bare", None, None)
    with pytest.raises(TypeError, match="must return"):
        spec.encode(42)


def test_spec_errors_say_what_is_missing():
    with pytest.raises(TopologyError, match=r"no topic given \(--kafka_source_topic/_brokers\)"):
        topology.kafka_source_spec(wallaroo.DefaultKafkaSourceCLIParser(decode).to_tuple(), [])
    with pytest.raises(TopologyError, match=r"no broker address given .*--kafka_sink_topic/_brokers"):
        topology.kafka_sink_spec(wallaroo.DefaultKafkaSinkCLIParser(encode).to_tuple(), 0,
                                 ["--kafka_sink_topic", "o"])
    with pytest.raises(TopologyError, match="the port is not 1-65535"):
        topology.kafka_source_spec(
            wallaroo.KafkaSourceConfig("n", "t", "h:x", "Warn", decode).to_tuple(), [])
    with pytest.raises(TopologyError, match="max_message_size must be between 1"):
        topology.kafka_sink_spec(wallaroo.KafkaSinkConfig("t", "h", "Warn", 0, 0, encode).to_tuple(),
                                 0, [])


def kafka_app():
    src = wallaroo.DefaultKafkaSourceCLIParser(decode, name="in")
    p = wallaroo.source("P", src).to_sinks([
        wallaroo.KafkaSinkConfig("out", "h:1", "Warn", 0, 100, encode),
        wallaroo.DefaultKafkaSinkCLIParser(encode, name="audit"),
    ])
    return wallaroo.build_application("app", p)


ARGS = ["prog", "--in_topic", "t", "--in_brokers", "h:1", "--audit_topic", "a",
        "--audit_brokers", "h:1"]


def test_flatten_builds_kafka_specs(monkeypatch):
    topo = topology.flatten(kafka_app(), ARGS)
    (source,) = topo.sources
    assert source.kind == "kafka" and source.spec.topic == "t" and source.name == "in"
    assert [s.spec.name for s in topo.sinks] == ["kafka_sink_0", "audit"]
    assert [s.spec.topic for s in topo.sinks] == ["out", "a"]
    # Without explicit args, the worker's wallaroo._ARGS are read.
    monkeypatch.setattr(wallaroo, "_ARGS", tuple(ARGS))
    assert topology.flatten(kafka_app()).sources[0].spec.brokers == [("h", "1")]
    # Set-up errors name the place.
    monkeypatch.setattr(wallaroo, "_ARGS", ("prog",))
    with pytest.raises(TopologyError, match=r"source of pipeline 'P' \(kafka source 'in' "
                                            r"configured from the command line\): no topic"):
        topology.flatten(kafka_app())


# --------------------------------------------------------------------------
# The examples
# --------------------------------------------------------------------------

def load_example(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "kafka" / name
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_celsius_example_flattens_into_kafka_specs():
    app = load_example("celsius_kafka.py")
    args = ["prog", "--kafka_source_topic", "celsius", "--kafka_source_brokers", "127.0.0.1:9092",
            "--kafka_sink_topic", "fahrenheit", "--kafka_sink_brokers", "127.0.0.1:9092",
            "--kafka_sink_max_produce_buffer_ms", "10"]
    topo = topology.flatten(app.application_setup(args), args)
    (source,) = topo.sources
    (sink,) = topo.sinks
    assert (source.spec.topic, sink.spec.topic, sink.spec.max_produce_buffer_ms) == \
        ("celsius", "fahrenheit", 10)
    value = source.spec.decode(b"100")
    for stage in topo.stages[:2]:
        value = stage.spec.call(value)
    assert sink.spec.encode(value) == (b"212.00", None, None)
    assert source.spec.decode(b"warm") is None


def test_word_count_example_flattens_into_kafka_specs():
    app = load_example("word_count_kafka.py")
    args = ["prog", "--lines_topic", "lines", "--lines_brokers", "127.0.0.1:9092",
            "--counts_topic", "counts", "--counts_brokers", "127.0.0.1:9092"]
    topo = topology.flatten(app.application_setup(args), args)
    assert topo.sources[0].spec.name == "lines" and topo.sinks[0].spec.name == "counts"
    assert topo.sinks[0].spec.encode(("cat", 2)) == (b"cat => 2", b"cat", None)
