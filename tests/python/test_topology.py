"""Tests of `quoll.topology`: the typed topology handed to the engine, the
resolution of raw user functions, and set-up errors that name things as the
application named them."""

import os
import pickle
import subprocess
import sys
import textwrap

import pytest

import wallaroo
import wallaroo.experimental as wx
from quoll import topology
from quoll.topology import TopologyError, flatten


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------

def raw_decode(bs):
    return bs.decode()


def raw_encode(data):
    return (str(data) + "\n").encode()


def raw_double(data):
    return data * 2


def raw_split(data):
    return data.split()


def raw_count(data, state):
    state.append(data)
    return len(state)


def raw_key(data):
    return data[0]


decode = wallaroo.decoder(header_length=4, length_fmt=">I")(raw_decode)
encode = wallaroo.encoder(raw_encode)
double = wallaroo.computation(name="double")(raw_double)
split = wallaroo.computation_multi(name="split")(raw_split)
count = wallaroo.state_computation(name="count", state=list)(raw_count)
key = wallaroo.key_extractor(raw_key)


class Total(wallaroo.Aggregation):
    def initial_accumulator(self):
        return 0

    def update(self, data, acc):
        return acc + 1

    def combine(self, a, b):
        return a + b

    def output(self, key, acc):
        return acc


def tcp_source(name="in", port=7000, decoder=decode):
    return wallaroo.TCPSourceConfig(name, "127.0.0.1", port, decoder)


def tcp_sink(port=7002):
    return wallaroo.TCPSinkConfig("127.0.0.1", port, encode)


def app_with_sink(sink_config, pipeline="P"):
    p = wallaroo.source(pipeline, tcp_source()).to_sink(sink_config)
    return wallaroo.build_application("app", p)


def app_with_source(source_config, pipeline="P"):
    p = wallaroo.source(pipeline, source_config).to_sink(tcp_sink())
    return wallaroo.build_application("app", p)


def setup_error(app):
    with pytest.raises(TopologyError) as e:
        flatten(app)
    return str(e.value)


# --------------------------------------------------------------------------
# Generated classes and raw functions
# --------------------------------------------------------------------------

def decorated_objects():
    """(object, method, the callable the engine must call) per decorator."""
    sdec = wx.stream_message_decoder(raw_decode)
    senc = wx.stream_message_encoder(raw_encode)
    multi_count = wallaroo.state_computation_multi(name="m", state=list)(
        raw_count)
    return [
        (double, "compute", raw_double),
        (split, "compute_multi", raw_split),
        (count, "compute", raw_count),
        (multi_count, "compute_multi", raw_count),
        (key, "extract_key", raw_key),
        (decode, "decode", raw_decode),
        (encode, "encode", raw_encode),
        (wx.octet_message_decoder(raw_decode), "decode", raw_decode),
        (wx.octet_message_encoder(raw_encode), "encode", raw_encode),
        (sdec, "decode", raw_decode),
        # A connector encoder's fast path frames the record, as encode() does.
        (senc, "encode", type(senc)._quoll_func),
    ]


@pytest.mark.parametrize("obj,method,raw", decorated_objects())
def test_generated_classes_are_globals_of_wallaroo(obj, method, raw):
    cls = type(obj)
    assert cls.__module__ == "wallaroo"
    assert getattr(wallaroo, cls.__name__) is cls
    assert pickle.loads(pickle.dumps(obj)).__class__ is cls
    # The engine calls the raw user function, not the generated method.
    assert topology.direct(obj, method) is raw


def test_connector_encoder_fast_path_frames_like_encode():
    senc = wx.stream_message_encoder(raw_encode)
    assert topology.direct(senc, "encode")(5) == senc.encode(5)


def test_user_subclass_is_called_through_its_method():
    class Tripled(type(double)):
        def compute(self, data):
            return data * 3

    obj = Tripled()
    call = topology.direct(obj, "compute")
    assert call.__func__ is Tripled.compute
    assert call(2) == 6


def test_foreign_quoll_func_is_ignored():
    class Impostor(object):
        _quoll_func = staticmethod(raw_double)

        def compute(self, data):
            return "method"

    assert topology.direct(Impostor(), "compute")(1) == "method"


def test_missing_method_is_an_attribute_error():
    with pytest.raises(AttributeError, match=r"has no compute\(\) method"):
        topology.direct(object(), "compute")


PUBLIC_NAMES = sorted("""
    Aggregation BaseWrapped Computation ComputationMulti ConnectorDecoder
    ConnectorEncoder CountWindows CountWindowsBuilder Counter
    CustomKafkaSinkCLIParser CustomKafkaSourceCLIParser Decoder
    DefaultKafkaSinkCLIParser DefaultKafkaSourceCLIParser Encoder
    FileSinkConfig FileSourceConfig GenSourceConfig KafkaSinkConfig
    KafkaSourceConfig KeyExtractor OctetDecoder OctetEncoder Pipeline
    RangeWindows RangeWindowsBuilder StateComputation StateComputationMulti
    TCPSinkConfig TCPSourceConfig Unbuffered WallarooParameterError argparse
    attach_to_module build_application computation computation_multi
    count_windows datetime decoder deserialize dt_to_timestamp encoder hours
    inspect kafka_parse_sink_options kafka_parse_source_options key_extractor
    microseconds milliseconds minutes nanoseconds pickle range_windows
    seconds serialize source state_computation state_computation_multi struct
    sys tcp_parse_input_addrs tcp_parse_output_addrs threading
""".split())


def test_public_names_of_a_fresh_wallaroo():
    env = dict(os.environ)
    code = ("import wallaroo; print(' '.join(sorted(n for n in vars(wallaroo) "
            "if not n.startswith('_'))))")
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert out.split() == PUBLIC_NAMES


def test_package_classes_and_functions_report_module_wallaroo():
    own = [obj for name, obj in vars(wallaroo).items()
           if (isinstance(obj, type) or callable(obj))
           and getattr(obj, "__module__", "").startswith("wallaroo")]
    assert len(own) > 60
    for obj in own:
        assert obj.__module__ == "wallaroo", obj
    # Reprs and pickles name `wallaroo`, not its private submodules.
    assert repr(tcp_sink()).startswith("<wallaroo.TCPSinkConfig object")
    blob = pickle.dumps(wallaroo.count_windows(3).over(Total))
    assert b"wallaroo._" not in blob and b"wallaroo" in blob


# --------------------------------------------------------------------------
# The typed topology
# --------------------------------------------------------------------------

def test_flatten_merge_app():
    left = wallaroo.source("Left", tcp_source("l", 7000)).to(double)
    right = wallaroo.source("Right", tcp_source("r", 7001)).to(split)
    p = (left.merge(right).key_by(key).to(count)
         .to(wallaroo.count_windows(2).over(Total))
         .to_sinks([tcp_sink(), wallaroo.FileSinkConfig("/tmp/out", encode)]))
    topo = flatten(wallaroo.build_application("Merged", p))

    assert isinstance(topo, tuple) and topo.app_name == "Merged"
    assert [(s.kind, s.name, s.pipeline, s.implicit_key)
            for s in topo.sources] == [
        ("tcp", "l", "Left", "tcp-source-key"),
        ("tcp", "r", "Right", "tcp-source-key")]
    l_src, r_src = topo.sources
    assert l_src.spec == topology.TcpSource(
        host="127.0.0.1", port="7000", header_length=4, length_fmt=">I",
        decode=raw_decode, valid=True, parallelism=10)

    specs = [type(st.spec) for st in topo.stages]
    assert specs == [topology.StatelessStage, topology.StatelessStage,
                     topology.KeyByStage, topology.StateStage,
                     topology.CountWindowsStage, topology.SinksStage]
    # Both chains enter the key_by after the merge.
    assert topo.stages[l_src.entry].spec.call is raw_double
    assert topo.stages[r_src.entry].spec.call is raw_split
    assert topo.stages[r_src.entry].spec.multi is True
    assert topo.stages[0].next == topo.stages[1].next == 2
    assert [st.next for st in topo.stages[2:]] == [3, 4, 5, None]
    assert [st.name for st in topo.stages] == [
        "double", "split", "raw_key", "count", "Total", "sinks"]
    assert topo.stages[3].spec.call is raw_count
    assert topo.stages[3].spec.initial_state() == []
    assert topo.stages[4].spec.count == 2
    assert topo.stages[5].spec.sinks == [0, 1]
    assert topo.stages[0].place == "stage 0 ('double') of pipeline 'Left'"
    assert topo.stages[3].place == \
        "stage 3 ('count') of pipelines 'Left' and 'Right'"

    assert topo.sinks[0].spec == topology.TcpSink(
        host="127.0.0.1", port="7002", encode=raw_encode)
    assert topo.sinks[1].spec == topology.FileSink(
        path="/tmp/out", encode=raw_encode)
    assert topo.sinks[0].place == ("sink 0 of pipelines 'Left' and 'Right' "
                                   "(tcp sink at 127.0.0.1:7002)")
    assert topo.sinks[1].place == ("sink 1 of pipelines 'Left' and 'Right' "
                                   "(file sink writing /tmp/out)")


def test_flatten_gen_file_and_connector_sources():
    class Gen(object):
        def initial_value(self):
            return 0

        def apply(self, last):
            return None

    sdec = wx.stream_message_decoder(raw_decode)
    g = wallaroo.source("G", wallaroo.GenSourceConfig("gen", Gen()))
    f = wallaroo.source("F", wallaroo.FileSourceConfig("file", "/x", decode))
    c = wallaroo.source("C", wx.SourceConnectorConfig(
        "conn", encode, sdec, 7100, "cookie", 20, 5))
    p = g.merge(f).merge(c).to_sink(tcp_sink())
    topo = flatten(wallaroo.build_application("Sources", p))
    gen, file_, conn = topo.sources
    assert gen.spec.initial_value() == 0 and gen.implicit_key == "gen-source-key"
    assert file_.spec == topology.FileSource(
        path="/x", header_length=4, length_fmt=">I", decode=raw_decode)
    assert conn.spec == topology.ConnectorSource(
        host="127.0.0.1", port="7100", decode=raw_decode, cookie="cookie",
        max_credits=20, refill_credits=5)
    assert conn.implicit_key == "source_connector-source-key"
    assert conn.place == ("source of pipeline 'C' "
                          "(connector source 'conn' at 127.0.0.1:7100)")


def test_range_windows_and_collect_stages():
    p = (wallaroo.source("P", tcp_source()).collect()
         .to(wallaroo.range_windows(wallaroo.seconds(2))
             .with_slide(wallaroo.seconds(1)).over(Total))
         .to_sink(tcp_sink()))
    topo = flatten(wallaroo.build_application("W", p))
    collect, windows, _ = topo.stages
    assert collect.spec == topology.CollectStage(key="collect-key-0")
    assert (windows.spec.range, windows.spec.slide, windows.spec.delay,
            windows.spec.late_data_policy) == (2 * 10**9, 10**9, 0, "drop")
    assert windows.spec.aggregation.combine(1, 2) == 3


# --------------------------------------------------------------------------
# Set-up errors name the pipeline and the source or sink
# --------------------------------------------------------------------------

def test_connector_sink_is_read():
    sink = wx.SinkConnectorConfig("fahrenheit_conversion", encode, decode,
                                  7200, "cookie", host="127.0.0.2")
    spec = flatten(app_with_sink(sink, "Celsius Conversion")).sinks[0].spec
    assert isinstance(spec, topology.ConnectorSink)
    assert (spec.name, spec.host, spec.port, spec.cookie) == (
        "fahrenheit_conversion", "127.0.0.2", "7200", "cookie")


def test_kafka_sources_and_sinks_are_read_and_their_errors_name_them():
    kafka = wallaroo.KafkaSourceConfig("orders", "topic-a",
                                       [("127.0.0.1", 9092), "h2:9093"],
                                       "Warn", decode)
    topo = flatten(app_with_source(kafka, "Orders"))
    assert topo.sources[0].spec.brokers == [("127.0.0.1", "9092"), ("h2", "9093")]
    sink = wallaroo.KafkaSinkConfig("out", "k:9092", "Warn", 0, 1000, encode)
    assert flatten(app_with_sink(sink)).sinks[0].spec.name == "kafka_sink_0"
    # Without their flags the Default* parsers have no topic.
    default = wallaroo.DefaultKafkaSourceCLIParser(decode)
    assert setup_error(app_with_source(default)).startswith(
        "source of pipeline 'P' (kafka source 'kafka_source' configured from "
        "the command line): no topic")
    default = wallaroo.DefaultKafkaSinkCLIParser(encode)
    assert setup_error(app_with_sink(default)).startswith(
        "sink 0 of pipeline 'P' (kafka sink 'kafka_sink' configured from the "
        "command line): no topic")


def test_unknown_kinds_and_the_sink_index():
    class Queue(object):
        def to_tuple(self):
            return ("mq", "jobs", "127.0.0.1", 5672)

    left = wallaroo.source("A", tcp_source("a", 7000))
    right = wallaroo.source("B", tcp_source("b", 7001))
    p = left.merge(right).to_sinks([tcp_sink(), Queue()])
    assert setup_error(wallaroo.build_application("app", p)) == (
        "sink 1 of pipelines 'A' and 'B' ('mq' sink 'jobs'): the sink kind "
        "'mq' is not supported yet by quoll (supported: TCP, file, Kafka and "
        "connector sinks)")
    assert setup_error(app_with_source(Queue())) == (
        "source of pipeline 'P' ('mq' source 'jobs'): the source kind 'mq' "
        "is not supported yet by quoll (supported: TCP, generator, file, "
        "connector and Kafka sources)")


def test_decoder_without_length_format_is_named_by_its_source():
    class Framed(object):
        def header_length(self):
            return 4

        def payload_length(self, bs):
            return 0

        def decode(self, bs):
            return bs

    src = wallaroo.TCPSourceConfig("lines", "127.0.0.1", 7005, Framed())
    assert setup_error(app_with_source(src, "Lines")).startswith(
        "source of pipeline 'Lines' (tcp source 'lines' at 127.0.0.1:7005): "
        "the decoder was not made with @wallaroo.decoder(header_length, "
        "length_fmt)")


def test_connector_credits_out_of_range():
    src = wx.SourceConnectorConfig("conn", encode, decode, 7100, "c",
                                   2 ** 32, 5)
    assert setup_error(app_with_source(src, "C")) == (
        "source of pipeline 'C' (connector source 'conn' at 127.0.0.1:7100): "
        "max_credits must be between 0 and 4294967295, got 4294967296")


def test_broken_name_is_named_by_its_stage():
    class Broken(object):
        def name(self):
            raise ValueError("no name")

        def compute(self, data):
            return data

    p = wallaroo.source("P", tcp_source()).to(double).to(Broken())
    assert setup_error(wallaroo.build_application("app", p.to_sink(
        tcp_sink()))).startswith(
        "stage 1 of pipeline 'P': calling name() on ")


# --------------------------------------------------------------------------
# The same errors from a worker process (no sockets are opened: the
# topology is refused before anything binds)
# --------------------------------------------------------------------------

def run_worker(tmp_path, app_source):
    (tmp_path / "setup_app.py").write_text(textwrap.dedent(app_source))
    return subprocess.run(
        [sys.executable, "-m", "quoll.worker", "--application-module",
         "setup_app"], cwd=tmp_path, capture_output=True, text=True,
        timeout=60)


def test_engine_setup_error_names_the_source(tmp_path):
    # The wallaroo package accepts any 4-byte struct format; the engine's
    # native frame splitter needs an integer one.
    proc = run_worker(tmp_path, """
        import wallaroo

        @wallaroo.decoder(header_length=4, length_fmt=">f")
        def dec(bs):
            return bs

        @wallaroo.encoder
        def enc(x):
            return x

        def application_setup(args):
            p = wallaroo.source("Floats", wallaroo.TCPSourceConfig(
                "in", "127.0.0.1", 7999, dec))
            p = p.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", 7998, enc))
            return wallaroo.build_application("F", p)
    """)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(
        "quoll: error: worker 'initializer': source of pipeline 'Floats' "
        "(tcp source 'in' at 127.0.0.1:7999): decoder header: "), proc.stderr
